//! `ping` output parsing (busybox and iputils formats).

/// The outcome of one `ping -c N` run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PingStats {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// Round-trip time of every reply, in milliseconds, in arrival order.
    pub rtts_ms: Vec<f64>,
}

impl PingStats {
    /// Parses the summary line (`3 packets transmitted, 3 packets received, ...` or
    /// `3 packets transmitted, 3 received, ...`) and the per-reply `time=` values.
    /// `None` if there is no summary line.
    pub fn parse(output: &str) -> Option<PingStats> {
        let mut stats = None;
        let mut rtts = Vec::new();
        for line in output.lines() {
            if let Some(pos) = line.find(" packets transmitted, ") {
                let transmitted = line[..pos].trim().rsplit(' ').next()?.parse().ok()?;
                let rest = &line[pos + " packets transmitted, ".len()..];
                let received = rest.split(' ').next()?.parse().ok()?;
                stats = Some((transmitted, received));
            } else if line.contains("bytes from") {
                if let Some(t) = line.split("time=").nth(1) {
                    if let Ok(v) = t.trim_end_matches(" ms").trim().parse::<f64>() {
                        rtts.push(v);
                    }
                }
            }
        }
        let (transmitted, received) = stats?;
        Some(PingStats {
            transmitted,
            received,
            rtts_ms: rtts,
        })
    }

    /// True if every request got a reply.
    pub fn all_replied(&self) -> bool {
        self.transmitted > 0 && self.received == self.transmitted
    }

    /// Average RTT in ms (`None` without replies).
    pub fn avg_ms(&self) -> Option<f64> {
        (!self.rtts_ms.is_empty())
            .then(|| self.rtts_ms.iter().sum::<f64>() / self.rtts_ms.len() as f64)
    }

    /// Smallest RTT in ms.
    pub fn min_ms(&self) -> Option<f64> {
        self.rtts_ms.iter().copied().reduce(f64::min)
    }

    /// Largest RTT in ms.
    pub fn max_ms(&self) -> Option<f64> {
        self.rtts_ms.iter().copied().reduce(f64::max)
    }

    /// `3/3 replies, rtt min/avg/max 1.20/2.30/3.40 ms` (or `0/3 replies`).
    pub fn summary(&self) -> String {
        match (self.min_ms(), self.avg_ms(), self.max_ms()) {
            (Some(mn), Some(avg), Some(mx)) => format!(
                "{}/{} replies, rtt min/avg/max {mn:.2}/{avg:.2}/{mx:.2} ms",
                self.received, self.transmitted
            ),
            _ => format!("{}/{} replies", self.received, self.transmitted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_busybox() {
        let out = "PING 10.0.2.2 (10.0.2.2): 56 data bytes\n\
                   64 bytes from 10.0.2.2: seq=0 ttl=255 time=42.471 ms\n\
                   64 bytes from 10.0.2.2: seq=1 ttl=255 time=10.525 ms\n\n\
                   --- 10.0.2.2 ping statistics ---\n\
                   2 packets transmitted, 2 packets received, 0% packet loss\n\
                   round-trip min/avg/max = 10.525/26.498/42.471 ms\n";
        let s = PingStats::parse(out).unwrap();
        assert_eq!((s.transmitted, s.received), (2, 2));
        assert_eq!(s.rtts_ms, vec![42.471, 10.525]);
        assert!(s.all_replied());
        assert_eq!(s.max_ms(), Some(42.471));
    }

    #[test]
    fn test_parse_iputils_and_loss() {
        let out = "3 packets transmitted, 0 received, 100% packet loss, time 2040ms\n";
        let s = PingStats::parse(out).unwrap();
        assert_eq!((s.transmitted, s.received), (3, 0));
        assert!(!s.all_replied());
        assert_eq!(s.summary(), "0/3 replies");
        assert!(PingStats::parse("ping: bad address").is_none());
    }
}
