//! Split virtqueue fast path.
