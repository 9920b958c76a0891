//! A constant-rate, sequence-numbered ICMP echo probe for measuring traffic gaps.
//!
//! `ping` stretches its interval while replies are missing and says little about *when*
//! packets were lost; [`Probe`] sends echo requests on a fixed schedule of absolute
//! deadlines (request `n` is due at `n / rate` seconds after the start, whatever happened
//! before), keeps sending through an outage, and records for every request when it was
//! sent and when its reply came back. [`Probe::stop`] turns that into a [`ProbeReport`]:
//! losses, duplicates, reordering, the longest gap between answered requests (how long the
//! path was broken), the longest silence between replies, the lost sequence ranges with their
//! send times, and the offsets of the events the test [`Probe::mark`]ed (`"kill"`, ...).
//!
//! Gap and silence differ when requests are delayed rather than lost: a request queued during
//! an outage (e.g. behind an unresolved ARP entry, or in a ring nobody drains) and delivered
//! later counts as answered, so it shortens the gap, but its late reply does not shorten the
//! silence. Compare both, and the RTT maximum, when judging an outage.
//!
//! ```no_run
//! # use std::time::Duration;
//! # use migration::probe::Probe;
//! let probe = Probe::start("anw-1234-0", "10.99.0.2".parse().unwrap(), 100).unwrap();
//! probe.wait_for_replies(10, Duration::from_secs(10)).unwrap();
//! probe.mark("kill");
//! // ... kill and restart the switch ...
//! probe.mark("restarted");
//! probe.wait_for_replies(10, Duration::from_secs(30)).unwrap();
//! let report = probe.stop();
//! println!("{report}");
//! assert!(report.outage() < Duration::from_secs(2));
//! ```
//!
//! The probe uses a raw ICMP socket (root), opened by a short-lived thread that entered the
//! network namespace (`setns` on `/run/netns/<name>`): the socket stays in that namespace,
//! while the probe's sender and receiver threads stay in the caller's ([`Probe::start_here`]
//! probes from the caller's own namespace). A socket filter passes only echo replies with
//! the probe's ICMP identifier; a random token in the payload tells probes of different
//! processes apart, so several probes (and pings) can run in one namespace. Sequence numbers
//! are counted in a `u64`: the 16-bit ICMP sequence field wraps (after 65 s at 1000/s), the
//! full number travels in the payload.
//!
//! Progress (start, marks, the closing summary) is logged with the `log` crate at `info`.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::info;
use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
use socket2::{Domain, Protocol, SockAddr, SockFilter, Socket, Type};

/// Why a [`Probe`] could not start, or did not see the replies it waited for.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The requested rate is 0 or above [`MAX_RATE`].
    #[error("probe: rate {rate}/s out of range 1..={MAX_RATE}")]
    Rate {
        /// The rate asked for.
        rate: u32,
    },
    /// The raw socket could not be opened (not root, no such namespace, ...).
    #[error("probe: raw ICMP socket in netns {netns:?} to {target}: {source}")]
    Socket {
        /// The namespace asked for (empty: the caller's).
        netns: String,
        /// The target.
        target: Ipv4Addr,
        /// What failed.
        source: io::Error,
    },
    /// A probe thread could not be started.
    #[error("probe: spawn {thread}: {source}")]
    Spawn {
        /// `sender` or `receiver`.
        thread: &'static str,
        /// What failed.
        source: io::Error,
    },
    /// [`Probe::wait_for_replies`] timed out (or the receiver ended).
    #[error(
        "probe {ident} to {target}: {got} of {wanted} replies within {:.1} s ({sent} sent, {answered} answered in all{})",
        timeout.as_secs_f64(),
        recv_error.as_ref().map(|e| format!(", receive error: {e}")).unwrap_or_default()
    )]
    NoReplies {
        /// The probe's ICMP identifier.
        ident: u16,
        /// The probe's target.
        target: Ipv4Addr,
        /// Replies seen while waiting.
        got: u64,
        /// Replies waited for.
        wanted: u64,
        /// How long it waited.
        timeout: Duration,
        /// Requests sent since the start.
        sent: u64,
        /// Requests answered since the start.
        answered: u64,
        /// The last receive error, if any.
        recv_error: Option<String>,
    },
}

/// Result of probe operations.
pub type Result<T> = std::result::Result<T, ProbeError>;

/// Highest supported rate (requests per second).
pub const MAX_RATE: u32 = 100_000;
/// How long [`Probe::stop`] waits for the replies still outstanding.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(1);

/// ICMP message types.
const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;
/// ICMP header + 56 bytes of payload, like `ping`'s default.
const PACKET_LEN: usize = 64;
/// Payload: token (8), 64-bit sequence (8), due time in ns (8), then a fixed pattern.
const PAYLOAD_HEAD: usize = 24;
/// How often the receiver looks at its stop condition while no packet arrives.
const RECV_POLL: Duration = Duration::from_millis(20);
/// Socket receive buffer asked for (bursts after an outage; capped by `rmem_max`).
const RECV_BUFFER: usize = 1 << 20;

static NEXT_PROBE: AtomicU16 = AtomicU16::new(0);

/// A running probe; see the [module docs](self). Dropping it without [`Probe::stop`] stops
/// its threads without a report.
#[derive(Debug)]
pub struct Probe {
    netns: String,
    target: Ipv4Addr,
    rate: u32,
    ident: u16,
    start: Instant,
    /// Wall-clock time at `start`, seconds since the UNIX epoch.
    start_unix: f64,
    shared: Arc<Shared>,
    stop_tx: Option<mpsc::Sender<()>>,
    sender: Option<JoinHandle<()>>,
    receiver: Option<JoinHandle<()>>,
}

/// State shared by the probe's threads.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Signalled on every matched reply and when the receiver ends.
    replied: Condvar,
}

#[derive(Debug, Default)]
struct State {
    samples: Vec<Sample>,
    marks: Vec<Mark>,
    /// Requests that got at least one reply.
    answered: u64,
    /// Highest sequence number answered so far (for reordering).
    highest: Option<u64>,
    reordered: u64,
    /// Replies with our identifier and token whose checksum or payload was wrong.
    corrupt: u64,
    recv_errors: u64,
    last_recv_error: Option<String>,
    /// Set by `stop`: the receiver ends at this time, or earlier once nothing is outstanding.
    recv_until: Option<Instant>,
    receiver_done: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking probe thread cannot leave the counters inconsistent: keep using them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One echo request and what became of it. Times are offsets from the probe's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When the schedule said to send it (`seq / rate`).
    pub due: Duration,
    /// When it was actually handed to the kernel.
    pub sent: Duration,
    /// When its first reply arrived.
    pub reply: Option<Duration>,
    /// Number of replies (more than 1: duplicates).
    pub replies: u32,
    /// The send call failed (e.g. `ENETUNREACH`); the request counts as lost.
    pub send_failed: bool,
}

impl Sample {
    /// Round-trip time of the first reply.
    pub fn rtt(&self) -> Option<Duration> {
        self.reply.map(|r| r.saturating_sub(self.sent))
    }
}

/// An event recorded with [`Probe::mark`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The label given by the test.
    pub label: String,
    /// Offset from the probe's start.
    pub at: Duration,
}

/// A run of consecutive unanswered requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostRange {
    /// First lost sequence number.
    pub first_seq: u64,
    /// Last lost sequence number (inclusive).
    pub last_seq: u64,
    /// Send time of the first lost request.
    pub from: Duration,
    /// Send time of the last lost request.
    pub to: Duration,
}

impl LostRange {
    /// Number of requests lost in this run.
    pub fn count(&self) -> u64 {
        self.last_seq - self.first_seq + 1
    }
}

/// The time between two consecutive answered requests (by sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The answered request before the gap.
    pub after_seq: u64,
    /// The next answered request.
    pub before_seq: u64,
    /// Send time of `after_seq`.
    pub from: Duration,
    /// Send time of `before_seq`.
    pub to: Duration,
}

impl Gap {
    /// `to - from`: one period when nothing was lost in between.
    pub fn len(&self) -> Duration {
        self.to.saturating_sub(self.from)
    }

    /// Number of requests lost in the gap.
    pub fn lost(&self) -> u64 {
        self.before_seq - self.after_seq - 1
    }
}

/// The time between two consecutive replies, by arrival time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Silence {
    /// Arrival of the reply before the silence.
    pub from: Duration,
    /// Arrival of the next reply.
    pub to: Duration,
    /// The request answered by the reply at `from`.
    pub after_seq: u64,
    /// The request answered by the reply at `to`.
    pub before_seq: u64,
}

impl Silence {
    /// `to - from`: about one period while replies flow.
    pub fn len(&self) -> Duration {
        self.to.saturating_sub(self.from)
    }
}

/// Round-trip time statistics of the answered requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttStats {
    /// Smallest.
    pub min: Duration,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

/// Every request of a run (kept out of `Debug`, which would print thousands of lines).
#[derive(Clone, Default, PartialEq, Eq)]
struct Samples(Vec<Sample>);

impl fmt::Debug for Samples {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} samples]", self.0.len())
    }
}

/// Loss within a part of a run ([`ProbeReport::window`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Longest time between the send times of two consecutive answered requests.
    pub gap: Duration,
    /// Longest time between two reply arrivals.
    pub silence: Duration,
    /// Requests lost.
    pub lost: u64,
}

/// What a [`Probe`] saw; `Display` prints a summary and the [`ProbeReport::timeline`].
/// Times are offsets from the probe's start ([`ProbeReport::start_unix`] places it on the
/// wall clock; the probe's `info` log line at the start places it in a log).
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReport {
    /// Network namespace the probe ran in (empty: the test's own).
    pub netns: String,
    /// Where it sent to.
    pub target: Ipv4Addr,
    /// Requests per second.
    pub rate: u32,
    /// ICMP identifier used.
    pub ident: u16,
    /// Wall-clock time of the probe's start, in seconds since the UNIX epoch.
    pub start_unix: f64,
    /// Send time of the last request.
    pub duration: Duration,
    /// Requests sent (including those whose send call failed).
    pub sent: u64,
    /// Requests answered at least once.
    pub received: u64,
    /// Requests never answered (`sent - received`).
    pub lost: u64,
    /// Extra replies to already answered requests.
    pub duplicates: u64,
    /// Replies that arrived after a reply to a later request.
    pub reordered: u64,
    /// Replies (ours by identifier and token) with a bad checksum or payload.
    pub corrupt: u64,
    /// Send calls that failed (counted in `lost`).
    pub send_errors: u64,
    /// Failed receive calls (other than timeouts), and the last such error.
    pub recv_errors: u64,
    /// The last receive error, if any.
    pub last_recv_error: Option<String>,
    /// The longest [`Gap`] between answered requests (`None` with fewer than 2 replies).
    pub longest_gap: Option<Gap>,
    /// The longest [`Silence`] between replies (`None` with fewer than 2 replies).
    pub longest_silence: Option<Silence>,
    /// Every run of lost requests, in order.
    pub lost_ranges: Vec<LostRange>,
    /// Send time of the first lost request.
    pub first_loss: Option<Duration>,
    /// Send time of the last lost request.
    pub last_loss: Option<Duration>,
    /// Round-trip times (`None` without replies).
    pub rtt: Option<RttStats>,
    /// Largest delay between a request's due time and its send (the probe's own
    /// scheduling lag: if this is large, the machine starved the probe, not the network).
    pub max_send_lag: Duration,
    /// The events recorded with [`Probe::mark`], in order.
    pub marks: Vec<Mark>,
    samples: Samples,
}

impl Probe {
    /// Starts probing `target` from network namespace `netns` (a name under `/run/netns`, as
    /// made by `ip netns add`; empty: the caller's namespace) at `rate_per_sec` requests per
    /// second. Needs root (raw socket, setns).
    pub fn start(netns: &str, target: Ipv4Addr, rate_per_sec: u32) -> Result<Probe> {
        if rate_per_sec == 0 || rate_per_sec > MAX_RATE {
            return Err(ProbeError::Rate { rate: rate_per_sec });
        }
        let n = NEXT_PROBE.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Distinct within the process; across processes the payload token tells probes apart.
        #[allow(clippy::cast_possible_truncation)] // the low bits are all we want
        let ident = (pid as u16).wrapping_mul(251).wrapping_add(n);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        #[allow(clippy::cast_possible_truncation)]
        let token = (nanos as u64) ^ (u64::from(pid) << 32) ^ (u64::from(n) << 16) ^ 0x5a5a;
        let socket =
            Arc::new(
                open_socket(netns, target, ident).map_err(|source| ProbeError::Socket {
                    netns: netns.to_string(),
                    target,
                    source,
                })?,
            );
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                samples: Vec::with_capacity((rate_per_sec as usize * 30).min(1 << 16)),
                ..State::default()
            }),
            replied: Condvar::new(),
        });
        let (stop_tx, stop_rx) = mpsc::channel();
        let start = Instant::now();
        let start_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let receiver = {
            let (socket, shared) = (Arc::clone(&socket), Arc::clone(&shared));
            thread::Builder::new()
                .name(format!("probe-rx-{ident}"))
                .spawn(move || receive_loop(&socket, &shared, ident, token, start))
                .map_err(|source| ProbeError::Spawn {
                    thread: "receiver",
                    source,
                })?
        };
        let sender = {
            let shared = Arc::clone(&shared);
            let schedule = Schedule {
                start,
                rate: rate_per_sec,
            };
            thread::Builder::new()
                .name(format!("probe-tx-{ident}"))
                .spawn(move || send_loop(&socket, &shared, ident, token, schedule, &stop_rx))
        };
        let mut probe = Probe {
            netns: netns.to_string(),
            target,
            rate: rate_per_sec,
            ident,
            start,
            start_unix,
            shared,
            stop_tx: Some(stop_tx),
            sender: None,
            receiver: Some(receiver),
        };
        // On error, dropping `probe` stops the receiver.
        probe.sender = Some(sender.map_err(|source| ProbeError::Spawn {
            thread: "sender",
            source,
        })?);
        info!(
            "probe {ident}: {rate_per_sec}/s to {target} from netns {:?} (t0 = {start_unix:.3} s since the UNIX epoch)",
            probe.netns
        );
        Ok(probe)
    }

    /// [`Probe::start`] from the caller's own network namespace (no `setns`).
    pub fn start_here(target: Ipv4Addr, rate_per_sec: u32) -> Result<Probe> {
        Probe::start("", target, rate_per_sec)
    }

    /// The network namespace the probe runs in (empty: the caller's).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The address probed.
    pub fn target(&self) -> Ipv4Addr {
        self.target
    }

    /// Requests per second.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// The ICMP identifier of this probe.
    pub fn ident(&self) -> u16 {
        self.ident
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records event `label` at the current offset (also logged); returns the offset.
    pub fn mark(&self, label: &str) -> Duration {
        let at = self.start.elapsed();
        self.shared.lock().marks.push(Mark {
            label: label.to_string(),
            at,
        });
        info!(
            "probe {}: mark {label:?} at +{:.3} s",
            self.ident,
            at.as_secs_f64()
        );
        at
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.shared.lock().samples.len() as u64
    }

    /// Requests answered so far.
    pub fn received(&self) -> u64 {
        self.shared.lock().answered
    }

    /// Waits until `count` more requests have been answered than when called (e.g. to
    /// know that the path works, before or after a disruption); returns how long it took.
    pub fn wait_for_replies(&self, count: u64, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        let deadline = t0 + timeout;
        let mut g = self.shared.lock();
        let goal = g.answered + count;
        while g.answered < goal {
            let now = Instant::now();
            if now >= deadline || g.receiver_done {
                return Err(ProbeError::NoReplies {
                    ident: self.ident,
                    target: self.target,
                    got: count - (goal - g.answered),
                    wanted: count,
                    timeout,
                    sent: g.samples.len() as u64,
                    answered: g.answered,
                    recv_error: g.last_recv_error.clone(),
                });
            }
            g = self
                .shared
                .replied
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(t0.elapsed())
    }

    /// Stops sending, waits up to [`DEFAULT_LINGER`] for outstanding replies and reports.
    pub fn stop(self) -> ProbeReport {
        self.stop_with_linger(DEFAULT_LINGER)
    }

    /// [`Probe::stop`], waiting up to `linger` for outstanding replies (less if every
    /// request has been answered).
    pub fn stop_with_linger(mut self, linger: Duration) -> ProbeReport {
        self.shutdown(linger);
        let report = {
            let g = self.shared.lock();
            analyze(
                &g.samples,
                Counters {
                    reordered: g.reordered,
                    corrupt: g.corrupt,
                    recv_errors: g.recv_errors,
                    last_recv_error: g.last_recv_error.clone(),
                },
                &g.marks,
                self.header(),
            )
        };
        info!("probe {}: {}", self.ident, report.summary());
        report
    }

    fn header(&self) -> ProbeReport {
        ProbeReport {
            netns: self.netns.clone(),
            target: self.target,
            rate: self.rate,
            ident: self.ident,
            start_unix: self.start_unix,
            ..ProbeReport::empty()
        }
    }

    /// Stops the sender, lets the receiver run for up to `linger`, joins both.
    fn shutdown(&mut self, linger: Duration) {
        self.stop_tx.take();
        if let Some(h) = self.sender.take() {
            let _ = h.join();
        }
        self.shared.lock().recv_until = Some(Instant::now() + linger);
        if let Some(h) = self.receiver.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

/// Classic BPF opcodes (linux/filter.h; `BPF_LD | BPF_B | BPF_ABS` and so on).
mod bpf {
    /// `BPF_LDX | BPF_B | BPF_MSH`: X = 4 * (P[k] & 0xf).
    pub const LDX_B_MSH: u16 = 0xb1;
    /// `BPF_LD | BPF_B | BPF_IND`: A = P[X + k] (byte).
    pub const LD_B_IND: u16 = 0x50;
    /// `BPF_LD | BPF_H | BPF_IND`: A = P[X + k .. X + k + 2] (big endian).
    pub const LD_H_IND: u16 = 0x48;
    /// `BPF_JMP | BPF_JEQ | BPF_K`.
    pub const JEQ_K: u16 = 0x15;
    /// `BPF_RET | BPF_K`: accept k bytes (0: drop).
    pub const RET_K: u16 = 0x06;
}

/// A socket filter for a raw IPv4 ICMP socket (packets start at the IP header) that passes
/// only echo replies with identifier `ident`: X = IP header length, then ICMP type and
/// identifier.
fn reply_filter(ident: u16) -> [SockFilter; 7] {
    [
        SockFilter::new(bpf::LDX_B_MSH, 0, 0, 0),
        SockFilter::new(bpf::LD_B_IND, 0, 0, 0),
        SockFilter::new(bpf::JEQ_K, 0, 3, u32::from(ECHO_REPLY)),
        SockFilter::new(bpf::LD_H_IND, 0, 0, 4),
        SockFilter::new(bpf::JEQ_K, 0, 1, u32::from(ident)),
        SockFilter::new(bpf::RET_K, 0, 0, u32::MAX),
        SockFilter::new(bpf::RET_K, 0, 0, 0),
    ]
}

/// Opens the raw ICMP socket, connected to `target`, inside `netns` (empty: the caller's):
/// a helper thread enters the namespace, so the caller's threads never change namespace.
fn open_socket(netns: &str, target: Ipv4Addr, ident: u16) -> io::Result<Socket> {
    let path = (!netns.is_empty()).then(|| Path::new("/run/netns").join(netns));
    let open = move || -> io::Result<Socket> {
        if let Some(path) = path {
            let ns = File::open(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            // Only this (helper) thread changes namespace.
            move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network)).map_err(
                |e| {
                    let e = io::Error::from(e);
                    io::Error::new(e.kind(), format!("setns: {e}"))
                },
            )?;
        }
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        s.attach_filter(&reply_filter(ident))?;
        // Best effort: the default buffer also works at moderate rates.
        let _ = s.set_recv_buffer_size(RECV_BUFFER);
        s.set_read_timeout(Some(RECV_POLL))?;
        s.connect(&SockAddr::from(SocketAddrV4::new(target, 0)))?;
        Ok(s)
    };
    thread::Builder::new()
        .name("probe-setns".to_string())
        .spawn(open)?
        .join()
        .map_err(|_| io::Error::other("socket thread panicked"))?
}

/// The sending schedule: request `n` is due at `start + n / rate`.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    start: Instant,
    rate: u32,
}

impl Schedule {
    /// Offset of request `n` (exact in nanoseconds: no accumulated drift).
    fn due(&self, n: u64) -> Duration {
        let nanos = u128::from(n) * 1_000_000_000 / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

fn send_loop(
    socket: &Socket,
    shared: &Shared,
    ident: u16,
    token: u64,
    schedule: Schedule,
    stop: &mpsc::Receiver<()>,
) {
    let mut packet = [0u8; PACKET_LEN];
    for n in 0u64.. {
        let due = schedule.due(n);
        let wait = (schedule.start + due).saturating_duration_since(Instant::now());
        // Sleeps until the deadline, or ends when `stop` (the Probe) drops its sender.
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        echo_request(&mut packet, ident, token, n, due);
        let sent = schedule.start.elapsed();
        // Recorded before sending, so the receiver always finds the sample.
        shared.lock().samples.push(Sample {
            due,
            sent,
            reply: None,
            replies: 0,
            send_failed: false,
        });
        if socket.send(&packet).is_err() {
            if let Some(s) = shared.lock().samples.last_mut() {
                s.send_failed = true;
            }
        }
    }
}

fn receive_loop(socket: &Socket, shared: &Shared, ident: u16, token: u64, start: Instant) {
    let mut buf = [0u8; 1500];
    loop {
        let got = (&*socket).read(&mut buf);
        let now = start.elapsed();
        let mut g = shared.lock();
        match got {
            Ok(len) => match parse_reply(&buf[..len], ident, token) {
                Reply::Ours(seq) => record_reply(&mut g, seq, now, &shared.replied),
                Reply::Corrupt => g.corrupt += 1,
                Reply::Foreign => {}
            },
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                g.recv_errors += 1;
                g.last_recv_error = Some(e.to_string());
                drop(g);
                // E.g. an ICMP error queued on the socket: do not spin on it.
                thread::sleep(Duration::from_millis(1));
                g = shared.lock();
            }
        }
        if let Some(until) = g.recv_until {
            if Instant::now() >= until || g.answered == g.samples.len() as u64 {
                g.receiver_done = true;
                shared.replied.notify_all();
                return;
            }
        }
    }
}

fn record_reply(g: &mut State, seq: u64, at: Duration, replied: &Condvar) {
    let Ok(i) = usize::try_from(seq) else { return };
    let Some(s) = g.samples.get_mut(i) else {
        // Not sent by us (a forged or stale token collision): ignore.
        return;
    };
    s.replies += 1;
    if s.replies > 1 {
        return;
    }
    s.reply = Some(at);
    g.answered += 1;
    match g.highest {
        Some(h) if seq < h => g.reordered += 1,
        _ => g.highest = Some(seq),
    }
    replied.notify_all();
}

/// Fills `packet` with echo request `n`.
fn echo_request(packet: &mut [u8; PACKET_LEN], ident: u16, token: u64, n: u64, due: Duration) {
    packet[0] = ECHO_REQUEST;
    packet[1] = 0;
    packet[2..4].fill(0);
    packet[4..6].copy_from_slice(&ident.to_be_bytes());
    #[allow(clippy::cast_possible_truncation)] // the 16-bit field wraps by design
    packet[6..8].copy_from_slice(&(n as u16).to_be_bytes());
    packet[8..16].copy_from_slice(&token.to_be_bytes());
    packet[16..24].copy_from_slice(&n.to_be_bytes());
    let due_ns = u64::try_from(due.as_nanos()).unwrap_or(u64::MAX);
    packet[24..32].copy_from_slice(&due_ns.to_be_bytes());
    for (i, b) in packet[8 + PAYLOAD_HEAD..].iter_mut().enumerate() {
        *b = pattern(i);
    }
    let sum = checksum(&packet[..]);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
}

/// The fixed payload filler after the header fields (checked in replies).
fn pattern(i: usize) -> u8 {
    #[allow(clippy::cast_possible_truncation)]
    let b = (i as u8).wrapping_mul(7).wrapping_add(0x20);
    b
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    #[allow(clippy::cast_possible_truncation)]
    let folded = sum as u16;
    !folded
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// A valid reply to request `seq` of this probe.
    Ours(u64),
    /// Ours by identifier and token, but damaged.
    Corrupt,
    /// Somebody else's, or not an echo reply.
    Foreign,
}

/// Classifies a datagram from the raw socket (IPv4 header + ICMP message).
fn parse_reply(ip: &[u8], ident: u16, token: u64) -> Reply {
    let Some(&v_ihl) = ip.first() else {
        return Reply::Foreign;
    };
    let ihl = usize::from(v_ihl & 0x0f) * 4;
    if v_ihl >> 4 != 4 || ihl < 20 || ip.len() < ihl + 8 + PAYLOAD_HEAD {
        return Reply::Foreign;
    }
    let icmp = &ip[ihl..];
    let be64 = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&icmp[o..o + 8]);
        u64::from_be_bytes(b)
    };
    if icmp[0] != ECHO_REPLY
        || icmp[1] != 0
        || u16::from_be_bytes([icmp[4], icmp[5]]) != ident
        || be64(8) != token
    {
        return Reply::Foreign;
    }
    let seq = be64(16);
    #[allow(clippy::cast_possible_truncation)]
    let seq16 = seq as u16;
    let pattern_ok = icmp.len() == PACKET_LEN
        && icmp[8 + PAYLOAD_HEAD..]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(i));
    if checksum(icmp) != 0 || u16::from_be_bytes([icmp[6], icmp[7]]) != seq16 || !pattern_ok {
        return Reply::Corrupt;
    }
    Reply::Ours(seq)
}

/// Receiver-side counts that are not derived from the samples.
#[derive(Debug, Default)]
struct Counters {
    reordered: u64,
    corrupt: u64,
    recv_errors: u64,
    last_recv_error: Option<String>,
}

/// Builds the report from the samples; `header` supplies the identification fields.
fn analyze(samples: &[Sample], c: Counters, marks: &[Mark], header: ProbeReport) -> ProbeReport {
    let sent = samples.len() as u64;
    let received = samples.iter().filter(|s| s.replies > 0).count() as u64;
    let duplicates = samples
        .iter()
        .map(|s| u64::from(s.replies.saturating_sub(1)))
        .sum();
    let mut lost_ranges: Vec<LostRange> = Vec::new();
    let mut longest_gap: Option<Gap> = None;
    let mut prev_answered: Option<(u64, Duration)> = None;
    for (seq, s) in (0u64..).zip(samples) {
        if s.replies == 0 {
            match lost_ranges.last_mut() {
                Some(r) if r.last_seq + 1 == seq => {
                    r.last_seq = seq;
                    r.to = s.sent;
                }
                _ => lost_ranges.push(LostRange {
                    first_seq: seq,
                    last_seq: seq,
                    from: s.sent,
                    to: s.sent,
                }),
            }
            continue;
        }
        if let Some((pseq, psent)) = prev_answered {
            let gap = Gap {
                after_seq: pseq,
                before_seq: seq,
                from: psent,
                to: s.sent,
            };
            if longest_gap.is_none_or(|g| gap.len() > g.len()) {
                longest_gap = Some(gap);
            }
        }
        prev_answered = Some((seq, s.sent));
    }
    let mut arrivals: Vec<(Duration, u64)> = (0u64..)
        .zip(samples)
        .filter_map(|(seq, s)| s.reply.map(|at| (at, seq)))
        .collect();
    arrivals.sort_unstable();
    let longest_silence = arrivals
        .windows(2)
        .map(|w| Silence {
            from: w[0].0,
            to: w[1].0,
            after_seq: w[0].1,
            before_seq: w[1].1,
        })
        .max_by_key(Silence::len);
    let mut rtts: Vec<Duration> = samples.iter().filter_map(Sample::rtt).collect();
    rtts.sort_unstable();
    let pct = |p: usize| rtts[(rtts.len() - 1) * p / 100];
    let rtt = (!rtts.is_empty()).then(|| RttStats {
        min: rtts[0],
        p50: pct(50),
        p99: pct(99),
        max: rtts[rtts.len() - 1],
    });
    ProbeReport {
        duration: samples.last().map(|s| s.sent).unwrap_or_default(),
        sent,
        received,
        lost: sent - received,
        duplicates,
        reordered: c.reordered,
        corrupt: c.corrupt,
        send_errors: samples.iter().filter(|s| s.send_failed).count() as u64,
        recv_errors: c.recv_errors,
        last_recv_error: c.last_recv_error,
        longest_gap,
        longest_silence,
        first_loss: lost_ranges.first().map(|r| r.from),
        last_loss: lost_ranges.last().map(|r| r.to),
        lost_ranges,
        rtt,
        max_send_lag: samples
            .iter()
            .map(|s| s.sent.saturating_sub(s.due))
            .max()
            .unwrap_or_default(),
        marks: marks.to_vec(),
        samples: Samples(samples.to_vec()),
        ..header
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

impl ProbeReport {
    fn empty() -> ProbeReport {
        ProbeReport {
            netns: String::new(),
            target: Ipv4Addr::UNSPECIFIED,
            rate: 1,
            ident: 0,
            start_unix: 0.0,
            duration: Duration::ZERO,
            sent: 0,
            received: 0,
            lost: 0,
            duplicates: 0,
            reordered: 0,
            corrupt: 0,
            send_errors: 0,
            recv_errors: 0,
            last_recv_error: None,
            longest_gap: None,
            longest_silence: None,
            lost_ranges: Vec::new(),
            first_loss: None,
            last_loss: None,
            rtt: None,
            max_send_lag: Duration::ZERO,
            marks: Vec::new(),
            samples: Samples::default(),
        }
    }

    /// A report built from recorded samples (request `n` is `samples[n]`) and marks, as
    /// [`Probe::stop`] builds it: for replays, tests and reports on synthetic runs.
    /// Reordering is counted from the reply times (a first reply that arrived after the
    /// first reply to a later request); corrupt replies and receive errors are zero.
    pub fn from_samples(
        target: Ipv4Addr,
        rate: u32,
        samples: Vec<Sample>,
        marks: Vec<Mark>,
    ) -> ProbeReport {
        let mut arrivals: Vec<(Duration, u64)> = (0u64..)
            .zip(&samples)
            .filter_map(|(seq, s)| s.reply.map(|at| (at, seq)))
            .collect();
        arrivals.sort_unstable();
        let mut highest: Option<u64> = None;
        let mut reordered = 0;
        for (_, seq) in arrivals {
            match highest {
                Some(h) if seq < h => reordered += 1,
                _ => highest = Some(seq),
            }
        }
        let header = ProbeReport {
            target,
            rate: rate.max(1),
            ..ProbeReport::empty()
        };
        let counters = Counters {
            reordered,
            ..Counters::default()
        };
        analyze(&samples, counters, &marks, header)
    }

    /// The scheduled time between two requests (`1 / rate`).
    pub fn period(&self) -> Duration {
        Duration::from_secs(1) / self.rate.max(1)
    }

    /// Every request, in sequence order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples.0
    }

    /// Length of the [`ProbeReport::longest_gap`] (zero with fewer than 2 replies).
    pub fn gap(&self) -> Duration {
        self.longest_gap.map(|g| g.len()).unwrap_or_default()
    }

    /// How long the path was broken during the longest gap: its length less one period
    /// (zero when nothing was lost). Losses before the first or after the last reply are
    /// not gaps: see [`ProbeReport::recovered`] and [`ProbeReport::lost_ranges`].
    pub fn outage(&self) -> Duration {
        self.gap().saturating_sub(self.period())
    }

    /// Length of the [`ProbeReport::longest_silence`] (zero with fewer than 2 replies).
    pub fn silence(&self) -> Duration {
        self.longest_silence.map(|g| g.len()).unwrap_or_default()
    }

    /// True if the last request was answered (the path worked at the end).
    pub fn recovered(&self) -> bool {
        self.samples().last().is_some_and(|s| s.replies > 0)
    }

    /// Offset of the first mark labelled `label`.
    pub fn mark(&self, label: &str) -> Option<Duration> {
        self.marks.iter().find(|m| m.label == label).map(|m| m.at)
    }

    /// What the probe saw of the requests sent in `[from, to)` (offsets), e.g. around
    /// one kill or one migration: lost requests, the longest send-time gap between
    /// answered ones (counted from the last answered request before `from`), and the
    /// longest time between the arrivals of their replies.
    pub fn window(&self, from: Duration, to: Duration) -> Window {
        let mut last_answered = self
            .samples()
            .iter()
            .filter(|s| s.sent < from && s.replies > 0)
            .map(|s| s.sent)
            .next_back();
        let mut gap = self.period();
        let mut lost = 0;
        let mut arrivals = Vec::new();
        for s in self
            .samples()
            .iter()
            .filter(|s| s.sent >= from && s.sent < to)
        {
            if s.replies == 0 {
                lost += 1;
                continue;
            }
            if let Some(prev) = last_answered {
                gap = gap.max(s.sent.saturating_sub(prev));
            }
            last_answered = Some(s.sent);
            arrivals.extend(s.reply);
        }
        arrivals.sort();
        let silence = arrivals
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .max()
            .unwrap_or_default();
        Window { gap, silence, lost }
    }

    /// Requests sent in `[from, to)` (offsets) that were lost.
    pub fn lost_between(&self, from: Duration, to: Duration) -> u64 {
        self.samples()
            .iter()
            .filter(|s| s.replies == 0 && s.sent >= from && s.sent < to)
            .count() as u64
    }

    /// `sent 400, received 300, lost 100 (1 range), dup 0, reordered 0, longest gap 0.505 s
    /// (seq 139..240), rtt min/p50/p99/max ...`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}/s to {}: sent {} in {} s, received {}, lost {} ({} range{}), dup {}, reordered {}",
            self.rate,
            self.target,
            self.sent,
            secs(self.duration),
            self.received,
            self.lost,
            self.lost_ranges.len(),
            if self.lost_ranges.len() == 1 { "" } else { "s" },
            self.duplicates,
            self.reordered
        );
        if let Some(g) = self.longest_gap {
            s += &format!(
                ", longest gap {} s (seq {}..{}, +{}..+{} s)",
                secs(g.len()),
                g.after_seq,
                g.before_seq,
                secs(g.from),
                secs(g.to)
            );
        }
        if let Some(q) = self.longest_silence {
            s += &format!(
                ", longest silence {} s (+{}..+{} s)",
                secs(q.len()),
                secs(q.from),
                secs(q.to)
            );
        }
        if let Some(r) = self.rtt {
            s += &format!(
                ", rtt min/p50/p99/max {:.2}/{:.2}/{:.2}/{:.2} ms",
                r.min.as_secs_f64() * 1e3,
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3,
                r.max.as_secs_f64() * 1e3
            );
        }
        for (what, n) in [
            ("corrupt", self.corrupt),
            ("send errors", self.send_errors),
            ("receive errors", self.recv_errors),
        ] {
            if n > 0 {
                s += &format!(", {what} {n}");
            }
        }
        if let Some(e) = &self.last_recv_error {
            s += &format!(" (last: {e})");
        }
        s += &format!(", max send lag {} ms", self.max_send_lag.as_millis());
        s
    }

    /// The marks, lost ranges, longest gap and longest silence in time order, one per line:
    /// `+0.700 s  mark "kill"`, `+0.702 s  lost seq 140..=239 (100 requests, sent
    /// +0.702..+1.197 s)`.
    pub fn timeline(&self) -> String {
        let mut events: Vec<(Duration, String)> = self
            .marks
            .iter()
            .map(|m| (m.at, format!("mark {:?}", m.label)))
            .collect();
        events.extend(self.lost_ranges.iter().map(|r| {
            (
                r.from,
                format!(
                    "lost seq {}..={} ({} request{}, sent +{}..+{} s)",
                    r.first_seq,
                    r.last_seq,
                    r.count(),
                    if r.count() == 1 { "" } else { "s" },
                    secs(r.from),
                    secs(r.to)
                ),
            )
        }));
        if let Some(g) = self.longest_gap.filter(|g| g.lost() > 0) {
            events.push((
                g.from,
                format!(
                    "longest gap: {} s from seq {} (sent +{} s) to seq {} (sent +{} s)",
                    secs(g.len()),
                    g.after_seq,
                    secs(g.from),
                    g.before_seq,
                    secs(g.to)
                ),
            ));
        }
        if let Some(q) = self.longest_silence.filter(|q| q.len() > self.period() * 2) {
            events.push((
                q.from,
                format!(
                    "longest silence: {} s without replies, +{}..+{} s",
                    secs(q.len()),
                    secs(q.from),
                    secs(q.to)
                ),
            ));
        }
        events.push((
            self.duration,
            format!("last request (seq {})", self.sent.saturating_sub(1)),
        ));
        events.sort_by_key(|(t, _)| *t);
        events
            .into_iter()
            .map(|(t, e)| format!("  +{:>8} s  {e}\n", secs(t)))
            .collect()
    }
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "probe {}: {}", self.ident, self.summary())?;
        write!(f, "{}", self.timeline())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// `n` samples 10 ms apart, answered after 1 ms unless listed in `lost`.
    fn samples(n: u64, lost: &[u64]) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                due: ms(10 * i),
                sent: ms(10 * i),
                reply: (!lost.contains(&i)).then(|| ms(10 * i + 1)),
                replies: u32::from(!lost.contains(&i)),
                send_failed: false,
            })
            .collect()
    }

    fn report(s: &[Sample], marks: &[Mark]) -> ProbeReport {
        let header = ProbeReport {
            rate: 100,
            ..ProbeReport::empty()
        };
        analyze(s, Counters::default(), marks, header)
    }

    #[test]
    fn test_no_loss() {
        let r = report(&samples(100, &[]), &[]);
        assert_eq!((r.sent, r.received, r.lost, r.duplicates), (100, 100, 0, 0));
        assert_eq!(r.gap(), ms(10));
        assert_eq!(r.outage(), Duration::ZERO);
        assert!(r.lost_ranges.is_empty() && r.first_loss.is_none());
        assert!(r.recovered());
        assert_eq!(r.rtt.unwrap().max, ms(1));
    }

    #[test]
    fn test_gap_and_ranges() {
        let lost: Vec<u64> = (20..70).chain([80, 81]).chain([98, 99]).collect();
        let marks = [Mark {
            label: "kill".into(),
            at: ms(195),
        }];
        let r = report(&samples(100, &lost), &marks);
        assert_eq!(r.lost, 54);
        let g = r.longest_gap.unwrap();
        assert_eq!((g.after_seq, g.before_seq, g.lost()), (19, 70, 50));
        assert_eq!(r.gap(), ms(510));
        assert_eq!(r.outage(), ms(500));
        let q = r.longest_silence.unwrap();
        assert_eq!((q.after_seq, q.before_seq, q.len()), (19, 70, ms(510)));
        assert_eq!(r.lost_ranges.len(), 3);
        assert_eq!(r.lost_ranges[0].count(), 50);
        assert_eq!(
            (r.lost_ranges[0].from, r.lost_ranges[0].to),
            (ms(200), ms(690))
        );
        assert_eq!(r.first_loss, Some(ms(200)));
        assert_eq!(r.last_loss, Some(ms(990)));
        assert!(!r.recovered());
        assert_eq!(r.mark("kill"), Some(ms(195)));
        assert_eq!(r.lost_between(ms(0), ms(500)), 30);
        let t = r.timeline();
        let kill = t.find("mark \"kill\"").unwrap();
        let range = t.find("lost seq 20..=69 (50 requests").unwrap();
        assert!(kill < range, "{t}");
    }

    #[test]
    fn test_delayed_replies_shorten_the_gap_not_the_silence() {
        // Requests 20..50 are held back and all answered at 600 ms.
        let mut s = samples(100, &[]);
        for x in &mut s[20..50] {
            x.reply = Some(ms(600));
        }
        let r = report(&s, &[]);
        assert_eq!((r.lost, r.gap()), (0, ms(10)));
        let q = r.longest_silence.unwrap();
        assert_eq!((q.from, q.to, q.after_seq), (ms(191), ms(501), 19));
        assert_eq!(r.silence(), ms(310));
        assert_eq!(r.rtt.unwrap().max, ms(400));
    }

    #[test]
    fn test_duplicates() {
        let mut s = samples(10, &[]);
        s[3].replies = 3;
        let r = report(&s, &[]);
        assert_eq!((r.received, r.duplicates, r.lost), (10, 2, 0));
    }

    #[test]
    fn test_start_here_probes_loopback() {
        // Needs a raw socket: skipped where it cannot be had (not root, no CAP_NET_RAW).
        let probe = match Probe::start_here(Ipv4Addr::LOCALHOST, 200) {
            Ok(p) => p,
            Err(ProbeError::Socket { source, .. })
                if source.kind() == io::ErrorKind::PermissionDenied =>
            {
                eprintln!("skipped: {source}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!((probe.netns(), probe.rate()), ("", 200));
        probe.wait_for_replies(20, Duration::from_secs(5)).unwrap();
        let at = probe.mark("here");
        let r = probe.stop();
        assert_eq!(r.mark("here"), Some(at));
        assert!(r.sent >= 20 && r.received + 1 >= r.sent, "{r}");
        assert_eq!((r.duplicates, r.corrupt), (0, 0), "{r}");
    }

    #[test]
    fn test_rate_out_of_range() {
        for rate in [0, MAX_RATE + 1] {
            let e = Probe::start_here(Ipv4Addr::LOCALHOST, rate).unwrap_err();
            assert!(
                matches!(e, ProbeError::Rate { rate: r } if r == rate),
                "{e}"
            );
        }
    }

    #[test]
    fn test_reordering_from_samples() {
        let mut s = samples(10, &[4]);
        s[2].reply = Some(ms(35));
        let r = ProbeReport::from_samples(Ipv4Addr::LOCALHOST, 100, s, Vec::new());
        assert_eq!((r.reordered, r.lost, r.received), (1, 1, 9));
        assert_eq!(r.rtt.unwrap().max, ms(15));
    }

    #[test]
    fn test_schedule_has_no_drift() {
        let s = Schedule {
            start: Instant::now(),
            rate: 300,
        };
        assert_eq!(s.due(300), Duration::from_secs(1));
        assert_eq!(s.due(300 * 3600), Duration::from_secs(3600));
        assert_eq!(s.due(1), Duration::from_nanos(3_333_333));
    }

    #[test]
    fn test_packet_roundtrip() {
        let mut p = [0u8; PACKET_LEN];
        echo_request(&mut p, 0xbeef, 42, 70_000, ms(5));
        assert_eq!(checksum(&p), 0);
        assert_eq!(u16::from_be_bytes([p[6], p[7]]), (70_000 % 65_536) as u16);
        // The peer answers: type 0, checksum adjusted, behind a 20-byte IPv4 header.
        let mut ip = vec![0x45u8];
        ip.extend_from_slice(&[0; 19]);
        let mut reply = p;
        reply[0] = ECHO_REPLY;
        reply[2..4].fill(0);
        let sum = checksum(&reply);
        reply[2..4].copy_from_slice(&sum.to_be_bytes());
        ip.extend_from_slice(&reply);
        assert_eq!(parse_reply(&ip, 0xbeef, 42), Reply::Ours(70_000));
        assert_eq!(parse_reply(&ip, 0xbeee, 42), Reply::Foreign);
        assert_eq!(parse_reply(&ip, 0xbeef, 43), Reply::Foreign);
        let last = ip.len() - 1;
        ip[last] ^= 1;
        assert_eq!(parse_reply(&ip, 0xbeef, 42), Reply::Corrupt);
        assert_eq!(parse_reply(&ip[..30], 0xbeef, 42), Reply::Foreign);
    }
}
