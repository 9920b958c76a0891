//! Rate-limited logging: guests control what arrives on the data path, so a bad
//! descriptor must never turn into one log line per packet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

fn epoch() -> &'static Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now)
}

/// True at most once per `interval_ms` for the call site owning `last_ms`.
pub(crate) fn interval_elapsed(last_ms: &AtomicU64, interval_ms: u64) -> bool {
    let now = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX) + interval_ms;
    let last = last_ms.load(Ordering::Relaxed);
    now >= last + interval_ms
        && last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// `log::warn!` at most once a second per call site.
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LAST_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        if $crate::logging::interval_elapsed(&LAST_MS, 1_000) {
            log::warn!($($arg)+);
        }
    }};
}
pub(crate) use warn_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_interval_elapsed_limits_to_once_per_interval() {
        let last = AtomicU64::new(0);
        assert!(interval_elapsed(&last, 60_000));
        assert!(!interval_elapsed(&last, 60_000));
    }
}
