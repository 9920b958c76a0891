//! Learning FDB.
