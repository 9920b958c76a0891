//! Test helpers: MockFrontend (being written).
