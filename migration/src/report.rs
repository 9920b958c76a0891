//! The drill report: what a [`ProbeReport`] saw during a drill, cut into the drill's phases,
//! next to the path that carried the VM's traffic over time. Pure: no I/O.
//!
//! * [`DrillReport::new`] builds it from the probe's report, the phase boundaries
//!   ([`PhaseMark`]s, offsets on the probe's clock) and the path timeline
//!   ([`PathSample`]s, e.g. from a [`PathSampler`] fed with the switch port's and the direct
//!   path's packet counters); [`DrillReport::from_probe_marks`] takes the phases from the
//!   probe's own [`Probe::mark`](crate::probe::Probe::mark)s.
//! * `Serialize` gives the JSON for `--json`: every duration and offset is a number of
//!   **seconds** (`f64`), offsets count from the probe's start.
//! * `Display` is the human table: one row per phase (start, duration, sent, lost, longest
//!   gap), the totals, the lost runs and the path changes.
//! * [`svg`] draws the timeline chart for `--plot`.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Serialize;

use crate::probe::{Gap, LostRange, ProbeReport, Sample};

mod chart;

pub use chart::svg;

/// Serializes durations as seconds (`f64`).
mod secs {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// A phase boundary given to [`DrillReport::new`]: phase `name` starts at offset `at` (on
/// the probe's clock, e.g. the value [`Probe::mark`](crate::probe::Probe::mark) returned)
/// and lasts until the next mark, or the end of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseMark {
    /// Phase name (`"unplug"`, `"migrate"`, ...).
    pub name: String,
    /// Offset from the probe's start.
    pub at: Duration,
}

impl PhaseMark {
    /// Phase `name` starting at `at`.
    pub fn new(name: impl Into<String>, at: Duration) -> PhaseMark {
        PhaseMark {
            name: name.into(),
            at,
        }
    }
}

/// One phase of the drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Phase {
    /// Phase name; [`IMPLICIT_FIRST_PHASE`] for the time before the first mark.
    pub name: String,
    /// Offset of its start from the probe's start.
    #[serde(with = "secs")]
    pub start_offset: Duration,
    /// How long it lasted.
    #[serde(with = "secs")]
    pub duration: Duration,
}

impl Phase {
    /// Offset of its end (the next phase's start).
    pub fn end(&self) -> Duration {
        self.start_offset + self.duration
    }
}

/// Name of the phase [`DrillReport::new`] adds for requests sent before the first mark.
pub const IMPLICIT_FIRST_PHASE: &str = "before";
/// Name of the single phase of a report without marks.
pub const WHOLE_RUN_PHASE: &str = "run";

/// Which path carried the VM's traffic during an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// Only the direct path (the VF).
    Direct,
    /// Only the synthetic path (the switch port).
    Synthetic,
    /// Both carried packets.
    Both,
    /// Neither carried packets.
    None,
}

impl PathKind {
    /// The path from the packets each one carried in an interval.
    pub fn classify(synthetic_packets: u64, direct_packets: u64) -> PathKind {
        match (synthetic_packets > 0, direct_packets > 0) {
            (true, true) => PathKind::Both,
            (true, false) => PathKind::Synthetic,
            (false, true) => PathKind::Direct,
            (false, false) => PathKind::None,
        }
    }

    /// `direct`, `synthetic`, `both`, `none` (as in the JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Synthetic => "synthetic",
            PathKind::Both => "both",
            PathKind::None => "none",
        }
    }
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The packets each path carried in the interval that **ends** at `offset` (and starts at
/// the previous sample's offset, or at the probe's start for the first sample).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PathSample {
    /// End of the interval, as an offset from the probe's start.
    #[serde(with = "secs")]
    pub offset: Duration,
    /// The path that carried traffic ([`PathKind::classify`] of the two counts, unless the
    /// caller knows better).
    pub path: PathKind,
    /// Packets the synthetic path (the VM's switch port) carried in the interval.
    pub synthetic_packets: u64,
    /// Packets the direct path (the VF) carried in the interval.
    pub direct_packets: u64,
}

impl PathSample {
    /// A sample whose path is classified from the two counts.
    pub fn new(offset: Duration, synthetic_packets: u64, direct_packets: u64) -> PathSample {
        PathSample {
            offset,
            path: PathKind::classify(synthetic_packets, direct_packets),
            synthetic_packets,
            direct_packets,
        }
    }
}

/// Turns periodic readings of two cumulative packet counters (the switch port's and the
/// direct path's, e.g. rx + tx packets) into [`PathSample`]s of per-interval counts. A
/// counter that went down (reset, device re-created) counts from zero.
#[derive(Debug, Clone, Default)]
pub struct PathSampler {
    last: Option<(u64, u64)>,
}

impl PathSampler {
    /// A sampler without a baseline.
    pub fn new() -> PathSampler {
        PathSampler::default()
    }

    /// Records the counters read at `offset`. The first call only sets the baseline and
    /// returns `None`; later calls return the packets since the previous call.
    pub fn sample(
        &mut self,
        offset: Duration,
        synthetic_total: u64,
        direct_total: u64,
    ) -> Option<PathSample> {
        let delta = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
        let prev = self.last.replace((synthetic_total, direct_total))?;
        Some(PathSample::new(
            offset,
            delta(synthetic_total, prev.0),
            delta(direct_total, prev.1),
        ))
    }
}

/// A run of consecutive lost requests, by sequence number; `from`/`to` are send times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LostRun {
    /// First lost sequence number.
    pub first_seq: u64,
    /// Last lost sequence number (inclusive).
    pub last_seq: u64,
    /// Requests in the run.
    pub count: u64,
    /// Send time of the first.
    #[serde(with = "secs")]
    pub from: Duration,
    /// Send time of the last.
    #[serde(with = "secs")]
    pub to: Duration,
}

impl From<&LostRange> for LostRun {
    fn from(r: &LostRange) -> LostRun {
        LostRun {
            first_seq: r.first_seq,
            last_seq: r.last_seq,
            count: r.count(),
            from: r.from,
            to: r.to,
        }
    }
}

/// The time between the send times of two consecutive answered requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GapSummary {
    /// The answered request before the gap.
    pub after_seq: u64,
    /// The next answered request.
    pub before_seq: u64,
    /// Send time of `after_seq`.
    #[serde(with = "secs")]
    pub from: Duration,
    /// Send time of `before_seq`.
    #[serde(with = "secs")]
    pub to: Duration,
    /// `to - from` (one period when nothing was lost).
    #[serde(with = "secs")]
    pub len: Duration,
    /// Requests lost in between.
    pub lost: u64,
}

impl From<&Gap> for GapSummary {
    fn from(g: &Gap) -> GapSummary {
        GapSummary {
            after_seq: g.after_seq,
            before_seq: g.before_seq,
            from: g.from,
            to: g.to,
            len: g.len(),
            lost: g.lost(),
        }
    }
}

/// The longest time between two reply arrivals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SilenceSummary {
    /// The request answered by the reply at `from`.
    pub after_seq: u64,
    /// The request answered by the reply at `to`.
    pub before_seq: u64,
    /// Arrival of the reply before the silence.
    #[serde(with = "secs")]
    pub from: Duration,
    /// Arrival of the next reply.
    #[serde(with = "secs")]
    pub to: Duration,
    /// `to - from`.
    #[serde(with = "secs")]
    pub len: Duration,
}

/// Round-trip times of the answered requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RttSummary {
    /// Smallest.
    #[serde(with = "secs")]
    pub min: Duration,
    /// Mean.
    #[serde(with = "secs")]
    pub avg: Duration,
    /// Median.
    #[serde(with = "secs")]
    pub p50: Duration,
    /// 99th percentile.
    #[serde(with = "secs")]
    pub p99: Duration,
    /// Largest.
    #[serde(with = "secs")]
    pub max: Duration,
}

/// The probe's totals over the whole drill.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeSummary {
    /// Requests sent.
    pub sent: u64,
    /// Requests answered at least once.
    pub received: u64,
    /// Requests never answered.
    pub lost: u64,
    /// Every run of lost requests, in order, with send times.
    pub lost_ranges: Vec<LostRun>,
    /// Extra replies to already answered requests.
    pub duplicates: u64,
    /// Replies that arrived after a reply to a later request.
    pub reordered: u64,
    /// Damaged replies.
    pub corrupt: u64,
    /// Send calls that failed (counted in `lost`).
    pub send_errors: u64,
    /// The longest gap between answered requests (`None` with fewer than 2 replies).
    pub longest_gap: Option<GapSummary>,
    /// The longest time without replies (`None` with fewer than 2 replies).
    pub longest_silence: Option<SilenceSummary>,
    /// Round-trip times (`None` without replies).
    pub rtt: Option<RttSummary>,
    /// The last request was answered: the path worked at the end.
    pub recovered: bool,
    /// The probe's own worst scheduling lag (large: the machine starved the probe).
    #[serde(with = "secs")]
    pub max_send_lag: Duration,
}

/// What the probe saw of the requests sent during one phase (by send time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhaseLoss {
    /// The phase's name.
    pub phase: String,
    /// Requests sent during the phase.
    pub sent: u64,
    /// Of those, answered.
    pub received: u64,
    /// Of those, lost.
    pub lost: u64,
    /// The lost requests, as runs (a run that crosses a phase boundary is split).
    pub lost_ranges: Vec<LostRun>,
    /// The longest gap between consecutive answered requests that overlaps the phase (it may
    /// reach into the neighbouring phases); `None` if no gap overlaps it.
    pub longest_gap: Option<GapSummary>,
}

impl PhaseLoss {
    /// The lost sequence numbers, in order.
    pub fn lost_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.lost_ranges
            .iter()
            .flat_map(|r| r.first_seq..=r.last_seq)
    }
}

/// The report of one drill; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrillReport {
    /// The scenario (`vf-unplug`, `migrate`, ...).
    pub scenario: String,
    /// The VM's name.
    pub vm: String,
    /// The probe's target (the guest's address).
    pub target: Ipv4Addr,
    /// Probe requests per second.
    pub rate: u32,
    /// Wall-clock time of the probe's start, in seconds since the UNIX epoch.
    pub start_unix: f64,
    /// From the probe's start to the end of the last phase.
    #[serde(with = "secs")]
    pub duration: Duration,
    /// The phases, in time order, back to back from the probe's start.
    pub phases: Vec<Phase>,
    /// The probe's totals.
    pub probe: ProbeSummary,
    /// Which path carried the traffic, in time order.
    pub path_timeline: Vec<PathSample>,
    /// Per phase (same order as `phases`): the requests sent in it and what became of them.
    pub phase_loss: Vec<PhaseLoss>,
    /// Every request (not in the JSON: thousands of entries); drawn by [`svg`].
    #[serde(skip)]
    samples: Vec<Sample>,
}

impl DrillReport {
    /// Builds the report of drill `scenario` on `vm` from the probe's report, the phase
    /// boundaries and the path timeline.
    ///
    /// The phases run back to back: each mark starts a phase that ends at the next mark (in
    /// time order); the last one ends with the run (the last request's send time plus one
    /// period, or the last mark if later). Requests sent before the first mark fall in an
    /// extra first phase [`IMPLICIT_FIRST_PHASE`]; without marks, one phase
    /// [`WHOLE_RUN_PHASE`] covers the run. `path_timeline` is sorted by offset.
    pub fn new(
        scenario: impl Into<String>,
        vm: impl Into<String>,
        probe: &ProbeReport,
        phases: &[PhaseMark],
        mut path_timeline: Vec<PathSample>,
    ) -> DrillReport {
        let samples = probe.samples();
        let period = probe.period();
        let mut marks = phases.to_vec();
        marks.sort_by_key(|m| m.at);
        let run_end = if samples.is_empty() {
            Duration::ZERO
        } else {
            probe.duration + period
        };
        let end = marks.last().map_or(run_end, |m| m.at.max(run_end));
        let first_send = samples.first().map(|s| s.sent);
        let before_first_mark = match marks.first() {
            None => true,
            Some(m) => first_send.is_some_and(|t| t < m.at),
        };
        if before_first_mark {
            let name = if marks.is_empty() {
                WHOLE_RUN_PHASE
            } else {
                IMPLICIT_FIRST_PHASE
            };
            marks.insert(0, PhaseMark::new(name, Duration::ZERO));
        }
        let phases: Vec<Phase> = marks
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let next = marks.get(i + 1).map_or(end, |n| n.at);
                Phase {
                    name: m.name.clone(),
                    start_offset: m.at,
                    duration: next.saturating_sub(m.at),
                }
            })
            .collect();
        let phase_loss = phase_losses(&phases, samples);
        path_timeline.sort_by_key(|p| p.offset);
        DrillReport {
            scenario: scenario.into(),
            vm: vm.into(),
            target: probe.target,
            rate: probe.rate,
            start_unix: probe.start_unix,
            duration: end,
            phases,
            probe: summary(probe),
            path_timeline,
            phase_loss,
            samples: samples.to_vec(),
        }
    }

    /// [`DrillReport::new`] with the probe's own marks as the phase boundaries.
    pub fn from_probe_marks(
        scenario: impl Into<String>,
        vm: impl Into<String>,
        probe: &ProbeReport,
        path_timeline: Vec<PathSample>,
    ) -> DrillReport {
        let marks: Vec<PhaseMark> = probe
            .marks
            .iter()
            .map(|m| PhaseMark::new(m.label.clone(), m.at))
            .collect();
        DrillReport::new(scenario, vm, probe, &marks, path_timeline)
    }

    /// Every probe request, in sequence order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The scheduled time between two requests.
    pub fn period(&self) -> Duration {
        Duration::from_secs(1) / self.rate.max(1)
    }

    /// The phase named `name` (the first one, if several) and its losses.
    pub fn phase(&self, name: &str) -> Option<(&Phase, &PhaseLoss)> {
        self.phases
            .iter()
            .zip(&self.phase_loss)
            .find(|(p, _)| p.name == name)
    }

    /// The index of the phase a request sent at `sent` falls into.
    pub fn phase_index_at(&self, sent: Duration) -> usize {
        phase_index(&self.phases, sent)
    }

    /// The path timeline reduced to its changes: `(offset where the path's interval
    /// starts, path)`, the first entry at the start of the first interval.
    pub fn path_changes(&self) -> Vec<(Duration, PathKind)> {
        let mut out: Vec<(Duration, PathKind)> = Vec::new();
        let mut prev_end = Duration::ZERO;
        for p in &self.path_timeline {
            if out.last().is_none_or(|(_, k)| *k != p.path) {
                out.push((prev_end, p.path));
            }
            prev_end = p.offset;
        }
        out
    }
}

fn phase_index(phases: &[Phase], sent: Duration) -> usize {
    phases
        .partition_point(|p| p.start_offset <= sent)
        .saturating_sub(1)
}

fn phase_losses(phases: &[Phase], samples: &[Sample]) -> Vec<PhaseLoss> {
    let mut out: Vec<PhaseLoss> = phases
        .iter()
        .map(|p| PhaseLoss {
            phase: p.name.clone(),
            sent: 0,
            received: 0,
            lost: 0,
            lost_ranges: Vec::new(),
            longest_gap: None,
        })
        .collect();
    if out.is_empty() {
        return out;
    }
    let mut prev_answered: Option<(u64, Duration)> = None;
    for (seq, s) in (0u64..).zip(samples) {
        let pl = &mut out[phase_index(phases, s.sent)];
        pl.sent += 1;
        if s.replies == 0 {
            pl.lost += 1;
            match pl.lost_ranges.last_mut() {
                Some(r) if r.last_seq + 1 == seq => {
                    r.last_seq = seq;
                    r.count += 1;
                    r.to = s.sent;
                }
                _ => pl.lost_ranges.push(LostRun {
                    first_seq: seq,
                    last_seq: seq,
                    count: 1,
                    from: s.sent,
                    to: s.sent,
                }),
            }
            continue;
        }
        pl.received += 1;
        if let Some((pseq, psent)) = prev_answered {
            let gap = GapSummary::from(&Gap {
                after_seq: pseq,
                before_seq: seq,
                from: psent,
                to: s.sent,
            });
            for (p, pl) in phases.iter().zip(out.iter_mut()) {
                let overlaps = gap.from < p.end() && gap.to >= p.start_offset;
                if overlaps && pl.longest_gap.is_none_or(|g| gap.len > g.len) {
                    pl.longest_gap = Some(gap);
                }
            }
        }
        prev_answered = Some((seq, s.sent));
    }
    out
}

fn summary(r: &ProbeReport) -> ProbeSummary {
    let rtts: Vec<Duration> = r.samples().iter().filter_map(Sample::rtt).collect();
    let rtt = r.rtt.map(|x| {
        let total: Duration = rtts.iter().sum();
        RttSummary {
            min: x.min,
            avg: total / u32::try_from(rtts.len()).unwrap_or(u32::MAX).max(1),
            p50: x.p50,
            p99: x.p99,
            max: x.max,
        }
    });
    ProbeSummary {
        sent: r.sent,
        received: r.received,
        lost: r.lost,
        lost_ranges: r.lost_ranges.iter().map(LostRun::from).collect(),
        duplicates: r.duplicates,
        reordered: r.reordered,
        corrupt: r.corrupt,
        send_errors: r.send_errors,
        longest_gap: r.longest_gap.as_ref().map(GapSummary::from),
        longest_silence: r.longest_silence.map(|q| SilenceSummary {
            after_seq: q.after_seq,
            before_seq: q.before_seq,
            from: q.from,
            to: q.to,
            len: q.len(),
        }),
        rtt,
        recovered: r.recovered(),
        max_send_lag: r.max_send_lag,
    }
}

/// Seconds with 3 decimals.
fn secs3(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn ms2(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn gap_cell(g: Option<&GapSummary>) -> String {
    match g {
        None => "-".to_string(),
        Some(g) if g.lost == 0 => format!("{} s", secs3(g.len)),
        Some(g) => format!("{} s (seq {}..{})", secs3(g.len), g.after_seq, g.before_seq),
    }
}

impl fmt::Display for DrillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.probe;
        writeln!(
            f,
            "drill {:?} on vm {:?}: {}/s ICMP echo to {}, {} s",
            self.scenario,
            self.vm,
            self.rate,
            self.target,
            secs3(self.duration)
        )?;
        let w = self
            .phases
            .iter()
            .map(|p| p.name.chars().count())
            .chain([5])
            .max()
            .unwrap_or(5);
        writeln!(
            f,
            "  {:<w$}  {:>10}  {:>10}  {:>7}  {:>6}  longest gap",
            "phase", "start", "duration", "sent", "lost"
        )?;
        for (ph, pl) in self.phases.iter().zip(&self.phase_loss) {
            writeln!(
                f,
                "  {:<w$}  {:>10}  {:>10}  {:>7}  {:>6}  {}",
                ph.name,
                format!("+{} s", secs3(ph.start_offset)),
                format!("{} s", secs3(ph.duration)),
                pl.sent,
                pl.lost,
                gap_cell(pl.longest_gap.as_ref())
            )?;
        }
        writeln!(
            f,
            "  {:<w$}  {:>10}  {:>10}  {:>7}  {:>6}  {}",
            "total",
            "",
            format!("{} s", secs3(self.duration)),
            p.sent,
            p.lost,
            gap_cell(p.longest_gap.as_ref())
        )?;
        write!(
            f,
            "  received {}, duplicates {}, reordered {}",
            p.received, p.duplicates, p.reordered
        )?;
        if let Some(q) = &p.longest_silence {
            write!(
                f,
                ", longest silence {} s (+{}..+{} s)",
                secs3(q.len),
                secs3(q.from),
                secs3(q.to)
            )?;
        }
        if let Some(r) = &p.rtt {
            write!(
                f,
                ", rtt min/avg/max {}/{}/{} ms",
                ms2(r.min),
                ms2(r.avg),
                ms2(r.max)
            )?;
        }
        for (what, n) in [("corrupt", p.corrupt), ("send errors", p.send_errors)] {
            if n > 0 {
                write!(f, ", {what} {n}")?;
            }
        }
        if !p.recovered {
            write!(f, ", NOT recovered (last request unanswered)")?;
        }
        writeln!(f)?;
        for pl in &self.phase_loss {
            for r in &pl.lost_ranges {
                writeln!(
                    f,
                    "  lost seq {}..={} ({}, sent +{}..+{} s) in {}",
                    r.first_seq,
                    r.last_seq,
                    r.count,
                    secs3(r.from),
                    secs3(r.to),
                    pl.phase
                )?;
            }
        }
        let changes = self.path_changes();
        if !changes.is_empty() {
            let list: Vec<String> = changes
                .iter()
                .map(|(t, k)| format!("+{} s {k}", secs3(*t)))
                .collect();
            writeln!(f, "  path: {}", list.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
