//! Forwarding threads.
