//! A process's output as timestamped lines: filled by reader threads, waited on by tests,
//! mirrored into a log file.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::lab::since_epoch;

/// One output line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Arrival time, seconds since the harness started (shared by every guest and log).
    pub t: f64,
    /// The text, without the line ending.
    pub text: String,
}

#[derive(Debug)]
struct Inner {
    lines: Vec<Line>,
    /// Open streams; 0 = the process closed its output (it exited).
    open: usize,
    log: Option<File>,
}

/// Why a wait ended without a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitError {
    /// The deadline passed.
    Timeout,
    /// The output ended (the process exited).
    Closed,
}

/// Timestamped output lines of one process.
#[derive(Debug)]
pub(crate) struct Console {
    name: String,
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl Console {
    /// A console fed by `streams` reader threads, logging into `log`.
    pub(crate) fn new(name: &str, streams: usize, log: Option<File>) -> Self {
        Console {
            name: name.to_string(),
            inner: Mutex::new(Inner {
                lines: Vec::new(),
                open: streams,
                log,
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking reader cannot leave the buffer inconsistent: keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one line (also to the log, prefixed with its time and `tag`).
    pub(crate) fn push(&self, tag: &str, text: &str) {
        let line = Line {
            t: since_epoch(),
            text: text.to_string(),
        };
        let mut g = self.lock();
        if let Some(f) = g.log.as_mut() {
            // Logging is best effort.
            let _ = writeln!(f, "{:9.3} [{}{}] {}", line.t, self.name, tag, line.text);
        }
        g.lines.push(line);
        self.cv.notify_all();
    }

    /// Writes a line to the log only (e.g. the commands typed into the guest).
    pub(crate) fn note(&self, tag: &str, text: &str) {
        let mut g = self.lock();
        if let Some(f) = g.log.as_mut() {
            let _ = writeln!(f, "{:9.3} [{}{}] {}", since_epoch(), self.name, tag, text);
        }
    }

    /// Reads `stream` line by line until EOF (run on a reader thread); `\r` and escape
    /// sequences are dropped.
    pub(crate) fn pump(&self, tag: &str, stream: impl Read) {
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => self.push(tag, &clean(&buf)),
            }
        }
        let mut g = self.lock();
        g.open = g.open.saturating_sub(1);
        self.cv.notify_all();
    }

    /// Number of lines so far: an index to wait from.
    pub(crate) fn len(&self) -> usize {
        self.lock().lines.len()
    }

    /// True once every stream reached EOF.
    pub(crate) fn closed(&self) -> bool {
        self.lock().open == 0
    }

    /// Waits until `f` returns `Some` for a line with index >= `from`; returns the index
    /// of that line and the value.
    pub(crate) fn wait_match<T>(
        &self,
        from: usize,
        timeout: Duration,
        mut f: impl FnMut(&Line) -> Option<T>,
    ) -> Result<(usize, T), WaitError> {
        let deadline = Instant::now() + timeout;
        let mut i = from;
        let mut g = self.lock();
        loop {
            while i < g.lines.len() {
                if let Some(v) = f(&g.lines[i]) {
                    return Ok((i, v));
                }
                i += 1;
            }
            if g.open == 0 {
                return Err(WaitError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::Timeout);
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Lines `from..to` (clamped).
    pub(crate) fn lines(&self, from: usize, to: usize) -> Vec<Line> {
        let g = self.lock();
        let to = to.min(g.lines.len());
        g.lines[from.min(to)..to].to_vec()
    }

    /// The last `n` lines, one per line, with their times.
    pub(crate) fn tail(&self, n: usize) -> String {
        let g = self.lock();
        let start = g.lines.len().saturating_sub(n);
        g.lines[start..]
            .iter()
            .map(|l| format!("{:9.3} {}\n", l.t, l.text))
            .collect()
    }
}

/// Decodes a raw line: lossy UTF-8, no line ending, no `\r`, no ANSI escape sequences.
fn clean(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' | '\n' => {}
            '\x1b' => {
                // CSI: ESC [ params final-byte(0x40..=0x7e); other escapes: drop ESC + 1 char.
                if chars.next_if_eq(&'[').is_some() {
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_clean_strips_cr_and_escapes() {
        assert_eq!(clean(b"abc\r\n"), "abc");
        assert_eq!(clean(b"\x1b[2J\x1b[1;1Hhello\n"), "hello");
    }

    #[test]
    fn test_wait_match_sees_lines_and_close() {
        let c = Console::new("t", 1, None);
        c.push("", "one");
        c.push("", "two");
        let (i, v) = c
            .wait_match(0, Duration::from_millis(10), |l| {
                (l.text == "two").then_some(7)
            })
            .unwrap();
        assert_eq!((i, v), (1, 7));
        let e = c.wait_match(2, Duration::from_millis(10), |_| Some(()));
        assert_eq!(e, Err(WaitError::Timeout));
        c.pump("", &b"three\n"[..]);
        assert!(c.closed());
        assert_eq!(
            c.wait_match(2, Duration::from_secs(5), |l| Some(l.text.clone()))
                .unwrap()
                .1,
            "three"
        );
        assert_eq!(
            c.wait_match(3, Duration::from_secs(5), |_| Some(())),
            Err(WaitError::Closed)
        );
    }
}
