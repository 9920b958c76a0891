//! The SVG timeline of a [`DrillReport`]: hand-written, self-contained SVG 1.1.

use std::fmt::Write as _;
use std::time::Duration;

use super::{DrillReport, PathKind};

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const PLOT_TOP: f64 = 50.0;
const PLOT_H: f64 = 220.0;
/// The row of red ticks for lost requests.
const LOSS_TOP: f64 = PLOT_TOP + PLOT_H + 6.0;
const LOSS_H: f64 = 16.0;
/// The path strip.
const PATH_TOP: f64 = LOSS_TOP + LOSS_H + 8.0;
const PATH_H: f64 = 16.0;
const AXIS_Y: f64 = PATH_TOP + PATH_H + 6.0;
const LEGEND_Y: f64 = AXIS_Y + 34.0;
const HEIGHT: f64 = LEGEND_Y + 16.0;

const LOST_COLOUR: &str = "#d62728";
const GAP_COLOUR: &str = "#ff7f0e";

fn path_colour(k: PathKind) -> &'static str {
    match k {
        PathKind::Direct => "#2ca02c",
        PathKind::Synthetic => "#1f77b4",
        PathKind::Both => "#9467bd",
        PathKind::None => "#7f7f7f",
    }
}

/// Escapes text for XML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A "nice" step (1, 2 or 5 times a power of ten) of at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// The timeline chart of `report` as an SVG document: x is the time since the probe's
/// start; the upper plot shows each answered request's round-trip time (one vertical
/// stroke per pixel column, from the smallest to the largest RTT sent in it) and a red tick
/// below it for every column with a lost request; the phases are labelled bands; the
/// longest gap is shaded and annotated; the strip under the plot shows the path that
/// carried the traffic (green direct, blue synthetic, purple both, grey none).
///
/// Elements carry classes for tools and tests: `phase` (band `rect`s), `phase-label`,
/// `rtt` and `lost` (`path`s), `longest-gap` (`g`), `path-<kind>` (strip `rect`s).
pub fn svg(report: &DrillReport) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let end = report.duration.max(Duration::from_millis(1)).as_secs_f64();
    let x = |t: Duration| LEFT + (t.as_secs_f64() / end).min(1.0) * plot_w;
    let samples = report.samples();
    let rtt_max_ms = samples
        .iter()
        .filter_map(|s| s.rtt())
        .max()
        .map_or(1.0, |d| d.as_secs_f64() * 1e3);
    let y_step = nice_step(rtt_max_ms / 4.0);
    let y_max = (rtt_max_ms / y_step).ceil().max(1.0) * y_step;
    let y = |rtt_ms: f64| PLOT_TOP + PLOT_H - (rtt_ms / y_max).min(1.0) * PLOT_H;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let p = &report.probe;
    let title = format!(
        "drill {} on vm {}: {}/s to {}, sent {}, lost {}, longest gap {:.3} s",
        report.scenario,
        report.vm,
        report.rate,
        report.target,
        p.sent,
        p.lost,
        p.longest_gap.map_or(0.0, |g| g.len.as_secs_f64())
    );
    let _ = writeln!(s, "<title>{}</title>", esc(&title));
    let _ = writeln!(
        s,
        r##"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="18" font-size="13" font-weight="bold">{}</text>"#,
        esc(&title)
    );

    // Phase bands, labelled.
    let _ = writeln!(s, r#"<g id="phases">"#);
    for (i, (ph, pl)) in report.phases.iter().zip(&report.phase_loss).enumerate() {
        let (x0, x1) = (x(ph.start_offset), x(ph.end()));
        let fill = if i % 2 == 0 { "#f4f4f4" } else { "#e6ecf5" };
        let _ = writeln!(
            s,
            r#"<rect class="phase" x="{x0:.1}" y="{PLOT_TOP}" width="{:.1}" height="{:.1}" fill="{fill}"><title>{}</title></rect>"#,
            (x1 - x0).max(0.0),
            PATH_TOP + PATH_H - PLOT_TOP,
            esc(&format!(
                "{}: +{:.3} s, {:.3} s, sent {}, lost {}",
                ph.name,
                ph.start_offset.as_secs_f64(),
                ph.duration.as_secs_f64(),
                pl.sent,
                pl.lost
            ))
        );
        let _ = writeln!(
            s,
            r#"<text class="phase-label" x="{:.1}" y="{:.1}">{}</text>"#,
            x0 + 2.0,
            PLOT_TOP - 4.0 - if i % 2 == 0 { 0.0 } else { 12.0 },
            esc(&ph.name)
        );
    }
    let _ = writeln!(s, "</g>");

    // Axes: RTT (left), time (bottom).
    let _ = writeln!(
        s,
        r##"<g id="axes" stroke="#444444" stroke-width="1"><path d="M{LEFT} {PLOT_TOP}V{:.1}H{:.1}" fill="none"/></g>"##,
        PLOT_TOP + PLOT_H,
        LEFT + plot_w
    );
    let mut v = 0.0;
    while v <= y_max + y_step / 2.0 {
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><path d="M{:.1} {yy:.1}h4" stroke="#444444"/>"##,
            LEFT - 6.0,
            yy + 4.0,
            trim(v),
            LEFT - 4.0
        );
        v += y_step;
    }
    let _ = writeln!(
        s,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">RTT (ms)</text>"#,
        PLOT_TOP + PLOT_H / 2.0,
        PLOT_TOP + PLOT_H / 2.0
    );
    let t_step = nice_step(end / 10.0);
    let mut t = 0.0;
    while t <= end + 1e-9 {
        let xx = LEFT + t / end * plot_w;
        let _ = writeln!(
            s,
            r##"<path d="M{xx:.1} {AXIS_Y}v4" stroke="#444444"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            AXIS_Y + 15.0,
            trim(t)
        );
        t += t_step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">time since start (s)</text>"#,
        LEFT + plot_w,
        AXIS_Y + 28.0
    );

    // Requests, bucketed per pixel column.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let cols = plot_w as usize;
    let mut rtt_cols: Vec<Option<(f64, f64)>> = vec![None; cols + 1];
    let mut lost_cols = vec![false; cols + 1];
    for smp in samples {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let c = ((x(smp.sent) - LEFT).round().max(0.0) as usize).min(cols);
        match smp.rtt() {
            Some(r) if smp.replies > 0 => {
                let ms = r.as_secs_f64() * 1e3;
                let e = rtt_cols[c].get_or_insert((ms, ms));
                e.0 = e.0.min(ms);
                e.1 = e.1.max(ms);
            }
            _ => lost_cols[c] = true,
        }
    }
    let mut d = String::new();
    for (c, v) in rtt_cols.iter().enumerate() {
        if let Some((lo, hi)) = v {
            let (y_lo, y_hi) = (y(*lo), y(*hi));
            let _ = write!(
                d,
                "M{:.1} {:.1}V{:.1}",
                LEFT + c as f64,
                y_lo + 0.5,
                (y_hi - 0.5).min(y_lo - 0.5)
            );
        }
    }
    let _ = writeln!(
        s,
        r##"<path class="rtt" d="{d}" stroke="#1f77b4" stroke-width="1.2" fill="none"><title>answered requests: RTT</title></path>"##
    );
    let mut d = String::new();
    for (c, _) in lost_cols.iter().enumerate().filter(|(_, l)| **l) {
        let _ = write!(d, "M{:.1} {LOSS_TOP}v{LOSS_H}", LEFT + c as f64);
    }
    let _ = writeln!(
        s,
        r#"<path class="lost" d="{d}" stroke="{LOST_COLOUR}" stroke-width="1.2" fill="none"><title>lost requests: {}</title></path>"#,
        p.lost
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="{LOST_COLOUR}">lost</text>"#,
        LEFT - 6.0,
        LOSS_TOP + 12.0
    );

    // The longest gap.
    if let Some(g) = p.longest_gap.filter(|g| g.lost > 0) {
        let (x0, x1) = (x(g.from), x(g.to));
        let label = format!(
            "longest gap {:.3} s (seq {}..{}, {} lost)",
            g.len.as_secs_f64(),
            g.after_seq,
            g.before_seq,
            g.lost
        );
        let anchor_end = x0 > LEFT + plot_w * 0.6;
        let _ = writeln!(
            s,
            r#"<g class="longest-gap"><rect x="{x0:.1}" y="{PLOT_TOP}" width="{:.1}" height="{:.1}" fill="{GAP_COLOUR}" fill-opacity="0.3" stroke="{GAP_COLOUR}"/><text x="{:.1}" y="{:.1}" text-anchor="{}" fill="{GAP_COLOUR}" font-weight="bold">{}</text></g>"#,
            (x1 - x0).max(1.0),
            LOSS_TOP + LOSS_H - PLOT_TOP,
            if anchor_end { x1 } else { x0 },
            PLOT_TOP + 14.0,
            if anchor_end { "end" } else { "start" },
            esc(&label)
        );
    }

    // The path strip.
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">path</text>"#,
        LEFT - 6.0,
        PATH_TOP + 12.0
    );
    let _ = writeln!(s, r#"<g id="path-timeline">"#);
    let mut prev = Duration::ZERO;
    for ps in &report.path_timeline {
        let (x0, x1) = (x(prev), x(ps.offset));
        let _ = writeln!(
            s,
            r#"<rect class="path-{}" x="{x0:.1}" y="{PATH_TOP}" width="{:.1}" height="{PATH_H}" fill="{}"><title>{}</title></rect>"#,
            ps.path,
            (x1 - x0).max(0.0),
            path_colour(ps.path),
            esc(&format!(
                "+{:.3}..+{:.3} s: {} (synthetic {}, direct {} packets)",
                prev.as_secs_f64(),
                ps.offset.as_secs_f64(),
                ps.path,
                ps.synthetic_packets,
                ps.direct_packets
            ))
        );
        prev = ps.offset;
    }
    let _ = writeln!(s, "</g>");

    // Legend.
    let mut lx = LEFT;
    let _ = writeln!(s, r#"<g id="legend">"#);
    let items = [
        ("#1f77b4", "RTT of answered requests"),
        (LOST_COLOUR, "lost request"),
        (GAP_COLOUR, "longest gap"),
        (path_colour(PathKind::Direct), "direct"),
        (path_colour(PathKind::Synthetic), "synthetic"),
        (path_colour(PathKind::Both), "both"),
        (path_colour(PathKind::None), "no traffic"),
    ];
    for (colour, text) in items {
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{colour}"/><text x="{:.1}" y="{LEGEND_Y}">{text}</text>"#,
            LEGEND_Y - 9.0,
            lx + 14.0
        );
        #[allow(clippy::cast_precision_loss)]
        let w = text.len() as f64 * 6.2 + 30.0;
        lx += w;
    }
    let _ = writeln!(s, "</g>");
    s.push_str("</svg>\n");
    s
}

/// `v` without trailing zeros (`0.5`, `2`, `0.25`).
fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}
