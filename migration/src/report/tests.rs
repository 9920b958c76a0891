use std::collections::HashMap;

use quick_xml::events::Event;
use quick_xml::Reader;

use super::*;
use crate::probe::Mark;

const TARGET: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `n` requests at 100/s (10 ms apart), answered after 1 ms unless listed in `lost`.
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

fn probe(s: Vec<Sample>) -> ProbeReport {
    ProbeReport::from_samples(TARGET, 100, s, Vec::new())
}

fn marks() -> Vec<PhaseMark> {
    vec![
        PhaseMark::new("unplug", ms(200)),
        PhaseMark::new("replug", ms(500)),
    ]
}

fn seqs(pl: &PhaseLoss) -> Vec<u64> {
    pl.lost_seqs().collect()
}

#[test]
fn test_phases_cover_the_run_back_to_back() {
    let r = DrillReport::new(
        "vf-unplug",
        "vm1",
        &probe(samples(100, &[])),
        &marks(),
        vec![],
    );
    let names: Vec<&str> = r.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, [IMPLICIT_FIRST_PHASE, "unplug", "replug"]);
    let spans: Vec<(Duration, Duration)> = r
        .phases
        .iter()
        .map(|p| (p.start_offset, p.duration))
        .collect();
    // The last request is sent at 990 ms; the run ends one period later.
    assert_eq!(
        spans,
        [(ms(0), ms(200)), (ms(200), ms(300)), (ms(500), ms(500))]
    );
    assert_eq!(r.duration, ms(1000));
    let sent: Vec<u64> = r.phase_loss.iter().map(|p| p.sent).collect();
    assert_eq!(sent, [20, 30, 50]);
    assert_eq!(r.phase_index_at(ms(199)), 0);
    assert_eq!(r.phase_index_at(ms(200)), 1);
    assert_eq!(r.phase_index_at(ms(5000)), 2);
}

#[test]
fn test_no_marks_is_one_phase_and_a_mark_at_zero_adds_none() {
    let p = probe(samples(10, &[]));
    let r = DrillReport::new("s", "vm", &p, &[], vec![]);
    assert_eq!(r.phases.len(), 1);
    assert_eq!(r.phases[0].name, WHOLE_RUN_PHASE);
    assert_eq!(r.phase_loss[0].sent, 10);
    let r = DrillReport::new("s", "vm", &p, &[PhaseMark::new("a", ms(0))], vec![]);
    assert_eq!(r.phases.len(), 1);
    assert_eq!(r.phases[0].name, "a");
    // A mark after the last request stretches the run.
    let r = DrillReport::new("s", "vm", &p, &[PhaseMark::new("late", ms(500))], vec![]);
    assert_eq!(r.duration, ms(500));
    assert_eq!(
        (r.phases[1].name.as_str(), r.phase_loss[1].sent),
        ("late", 0)
    );
}

#[test]
fn test_losses_fall_into_the_phase_of_their_send_time() {
    // 30..=34 inside `unplug`; 48..=52 across the unplug/replug boundary (500 ms).
    let lost: Vec<u64> = (30..=34).chain(48..=52).collect();
    let r = DrillReport::new(
        "vf-unplug",
        "vm1",
        &probe(samples(100, &lost)),
        &marks(),
        vec![],
    );
    assert_eq!(r.probe.lost, 10);
    assert_eq!(r.probe.lost_ranges.len(), 2);
    let before = &r.phase_loss[0];
    let unplug = &r.phase_loss[1];
    let replug = &r.phase_loss[2];
    assert_eq!((before.lost, before.received), (0, 20));
    assert_eq!(seqs(unplug), [30, 31, 32, 33, 34, 48, 49]);
    assert_eq!(seqs(replug), [50, 51, 52]);
    assert_eq!(unplug.lost_ranges.len(), 2);
    let split = unplug.lost_ranges[1];
    assert_eq!((split.first_seq, split.last_seq, split.count), (48, 49, 2));
    assert_eq!((split.from, split.to), (ms(480), ms(490)));
    assert_eq!(replug.lost_ranges[0].from, ms(500));
    let total: u64 = r.phase_loss.iter().map(|p| p.lost).sum();
    assert_eq!(total, r.probe.lost);
    let (ph, pl) = r.phase("replug").unwrap();
    assert_eq!((ph.start_offset, pl.lost), (ms(500), 3));
    assert!(r.phase("nope").is_none());
}

#[test]
fn test_gaps_per_phase() {
    // One outage of 20 requests from 480 ms: the gap (470 -> 680 ms) overlaps both
    // `unplug` and `replug`; `before` only sees one-period gaps.
    let lost: Vec<u64> = (48..68).collect();
    let r = DrillReport::new(
        "vf-unplug",
        "vm1",
        &probe(samples(100, &lost)),
        &marks(),
        vec![],
    );
    let g = r.probe.longest_gap.unwrap();
    assert_eq!((g.after_seq, g.before_seq, g.lost), (47, 68, 20));
    assert_eq!(g.len, ms(210));
    assert_eq!(r.phase_loss[1].longest_gap, Some(g));
    assert_eq!(r.phase_loss[2].longest_gap, Some(g));
    let before = r.phase_loss[0].longest_gap.unwrap();
    assert_eq!((before.len, before.lost), (ms(10), 0));
    assert_eq!(r.phase_loss[1].lost + r.phase_loss[2].lost, 20);
    let q = r.probe.longest_silence.unwrap();
    assert_eq!((q.from, q.to, q.len), (ms(471), ms(681), ms(210)));
    assert!(r.probe.recovered);
}

#[test]
fn test_duplicates_and_reordering() {
    let mut s = samples(20, &[]);
    s[3].replies = 3;
    // Request 5's reply arrives after request 6's: one reordering.
    s[5].reply = Some(ms(65));
    s[6].reply = Some(ms(61));
    let r = DrillReport::new("s", "vm", &probe(s), &[], vec![]);
    assert_eq!(
        (r.probe.received, r.probe.duplicates, r.probe.reordered),
        (20, 2, 1)
    );
    let rtt = r.probe.rtt.unwrap();
    assert_eq!((rtt.min, rtt.max), (ms(1), ms(15)));
    // 18 of 1 ms, one of 15 ms, one of 1 ms (61 - 60).
    assert_eq!(rtt.avg, Duration::from_micros(1700));
}

#[test]
fn test_unanswered_tail_is_not_recovered() {
    let r = DrillReport::new("s", "vm", &probe(samples(10, &[8, 9])), &[], vec![]);
    assert!(!r.probe.recovered);
    assert_eq!(r.phase_loss[0].lost, 2);
    assert!(r.to_string().contains("NOT recovered"), "{r}");
}

#[test]
fn test_path_sampler_and_changes() {
    let mut ps = PathSampler::new();
    assert_eq!(ps.sample(ms(0), 100, 5000), None);
    let a = ps.sample(ms(100), 100, 5100).unwrap();
    assert_eq!(
        (a.path, a.synthetic_packets, a.direct_packets),
        (PathKind::Direct, 0, 100)
    );
    let b = ps.sample(ms(200), 150, 5150).unwrap();
    assert_eq!(b.path, PathKind::Both);
    let c = ps.sample(ms(300), 250, 5150).unwrap();
    assert_eq!(c.path, PathKind::Synthetic);
    // The direct path's counter restarted (VF re-created) and nothing moved.
    let d = ps.sample(ms(400), 250, 0).unwrap();
    assert_eq!((d.path, d.direct_packets), (PathKind::None, 0));
    let e = ps.sample(ms(500), 250, 40).unwrap();
    assert_eq!((e.path, e.direct_packets), (PathKind::Direct, 40));
    let f = ps.sample(ms(600), 250, 90).unwrap();
    // Given out of order: sorted by the report.
    let timeline = vec![f, e, d, c, b, a];
    let r = DrillReport::new("s", "vm", &probe(samples(70, &[])), &[], timeline);
    assert_eq!(
        r.path_changes(),
        [
            (ms(0), PathKind::Direct),
            (ms(100), PathKind::Both),
            (ms(200), PathKind::Synthetic),
            (ms(300), PathKind::None),
            (ms(400), PathKind::Direct),
        ]
    );
}

fn sample_report() -> DrillReport {
    let lost: Vec<u64> = (30..=34).chain(48..=52).collect();
    let mut s = samples(100, &lost);
    s[70].replies = 2;
    let mut p = ProbeReport::from_samples(
        TARGET,
        100,
        s,
        vec![Mark {
            label: "unplug".into(),
            at: ms(200),
        }],
    );
    p.start_unix = 1_700_000_000.5;
    let path = vec![
        PathSample::new(ms(250), 0, 25),
        PathSample::new(ms(500), 30, 0),
        PathSample::new(ms(1000), 0, 50),
    ];
    DrillReport::from_probe_marks("vf-unplug", "vm1", &p, path)
}

#[test]
fn test_from_probe_marks() {
    let r = sample_report();
    let names: Vec<&str> = r.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, [IMPLICIT_FIRST_PHASE, "unplug"]);
    assert_eq!(r.phase_loss[1].lost, 10);
    assert_eq!(r.probe.duplicates, 1);
    assert_eq!(r.samples().len(), 100);
}

#[test]
fn test_json() {
    let r = sample_report();
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["scenario"], "vf-unplug");
    assert_eq!(v["vm"], "vm1");
    assert_eq!(v["target"], "10.99.0.2");
    assert_eq!(v["rate"], 100);
    assert_eq!(v["start_unix"], 1_700_000_000.5);
    assert_eq!(v["duration"], 1.0);
    assert_eq!(v["phases"][1]["name"], "unplug");
    assert_eq!(v["phases"][1]["start_offset"], 0.2);
    assert_eq!(v["phases"][1]["duration"], 0.8);
    assert_eq!(v["probe"]["lost"], 10);
    assert_eq!(v["probe"]["lost_ranges"][0]["first_seq"], 30);
    assert_eq!(v["probe"]["lost_ranges"][0]["from"], 0.3);
    assert_eq!(v["probe"]["longest_gap"]["lost"], 5);
    assert_eq!(v["probe"]["rtt"]["avg"], 0.001);
    assert_eq!(v["path_timeline"][1]["path"], "synthetic");
    assert_eq!(v["path_timeline"][1]["synthetic_packets"], 30);
    assert_eq!(v["phase_loss"][1]["phase"], "unplug");
    assert_eq!(v["phase_loss"][1]["lost"], 10);
    assert!(v.get("samples").is_none());
}

#[test]
fn test_table() {
    let t = sample_report().to_string();
    assert!(
        t.starts_with("drill \"vf-unplug\" on vm \"vm1\": 100/s ICMP echo to 10.99.0.2, 1.000 s"),
        "{t}"
    );
    let rows: Vec<&str> = t.lines().collect();
    assert!(
        rows[1].contains("phase") && rows[1].contains("longest gap"),
        "{t}"
    );
    assert!(rows[2].starts_with("  before "), "{t}");
    assert!(
        rows[2].contains("+0.000 s") && rows[2].contains("0.200 s"),
        "{t}"
    );
    assert!(
        rows[3].starts_with("  unplug ") && rows[3].contains("0.060 s (seq 29..35)"),
        "{t}"
    );
    assert!(
        rows[4].starts_with("  total ") && rows[4].contains("1.000 s"),
        "{t}"
    );
    assert!(t.contains("duplicates 1"), "{t}");
    assert!(
        t.contains("lost seq 48..=52 (5, sent +0.480..+0.520 s) in unplug"),
        "{t}"
    );
    assert!(
        t.contains("path: +0.000 s direct, +0.250 s synthetic, +0.500 s direct"),
        "{t}"
    );
}

/// Parses `xml` with quick-xml, checking that tags balance and there is one root;
/// returns the number of elements per name and per `class` attribute.
fn parse_xml(xml: &str) -> (HashMap<String, usize>, HashMap<String, usize>) {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let (mut names, mut classes) = (HashMap::new(), HashMap::new());
    let mut depth = 0usize;
    let mut roots = 0;
    loop {
        let ev = reader
            .read_event()
            .unwrap_or_else(|e| panic!("XML error at {}: {e}", reader.buffer_position()));
        let (e, opens) = match ev {
            Event::Start(e) => (e, true),
            Event::Empty(e) => (e, false),
            Event::End(_) => {
                depth -= 1;
                continue;
            }
            Event::Text(t) => {
                let raw = std::str::from_utf8(&t).unwrap().to_string();
                quick_xml::escape::unescape(&raw).unwrap();
                assert!(
                    depth > 0 || raw.trim().is_empty(),
                    "text outside root: {raw:?}"
                );
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        if depth == 0 {
            roots += 1;
        }
        let name = std::str::from_utf8(e.name().as_ref()).unwrap().to_string();
        for a in e.attributes() {
            let a = a.unwrap();
            let v = a.unescape_value().unwrap();
            if a.key.as_ref() == b"class" {
                *classes.entry(v.to_string()).or_insert(0) += 1;
            }
        }
        *names.entry(name).or_insert(0) += 1;
        if opens {
            depth += 1;
        }
    }
    assert_eq!((depth, roots), (0, 1));
    (names, classes)
}

#[test]
fn test_svg_is_xml_with_the_expected_elements() {
    let r = sample_report();
    let svg = super::svg(&r);
    let (names, classes) = parse_xml(&svg);
    assert_eq!(names["svg"], 1, "{svg}");
    assert_eq!(classes["phase"], r.phases.len());
    assert_eq!(classes["phase-label"], r.phases.len());
    assert_eq!(classes["rtt"], 1);
    assert_eq!(classes["lost"], 1);
    assert_eq!(classes["longest-gap"], 1);
    assert_eq!(classes["path-direct"], 2);
    assert_eq!(classes["path-synthetic"], 1);
    assert!(svg.contains(r#"xmlns="http://www.w3.org/2000/svg""#));
    assert!(
        svg.contains("longest gap 0.060 s (seq 29..35, 5 lost)"),
        "{svg}"
    );
    // One red tick per lost request here (1 px per 1.36 ms at this width).
    let lost_d = svg.lines().find(|l| l.contains(r#"class="lost""#)).unwrap();
    assert_eq!(lost_d.matches('M').count(), 10, "{lost_d}");
}

#[test]
fn test_svg_escapes_and_copes_with_empty_and_long_runs() {
    let p = probe(Vec::new());
    let r = DrillReport::new("a<b & \"c\"", "vm'1>", &p, &[], vec![]);
    let svg = super::svg(&r);
    parse_xml(&svg);
    assert!(svg.contains("a&lt;b &amp; &quot;c&quot;"), "{svg}");
    assert!(!svg.contains("longest-gap"));
    // 60 s at 1000/s: bucketed per pixel column, so the chart stays small.
    let s: Vec<Sample> = (0..60_000u64)
        .map(|i| Sample {
            due: Duration::from_millis(i),
            sent: Duration::from_millis(i),
            reply: (i % 1000 != 0).then(|| Duration::from_millis(i) + Duration::from_micros(300)),
            replies: u32::from(i % 1000 != 0),
            send_failed: false,
        })
        .collect();
    let p = ProbeReport::from_samples(TARGET, 1000, s, Vec::new());
    let r = DrillReport::new("migrate", "vm", &p, &marks(), vec![]);
    let svg = super::svg(&r);
    let (_, classes) = parse_xml(&svg);
    assert_eq!(classes["phase"], 3);
    assert!(svg.len() < 200_000, "{} bytes", svg.len());
}
