//! Unix-socket JSON control API server and client (being written).
