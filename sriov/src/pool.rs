//! The VF pool: durable VF ownership, allocation, release with reset, reclaim.
