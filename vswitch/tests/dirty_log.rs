#![allow(clippy::tests_outside_test_module)]
//! Live migration's dirty-page log (VHOST_F_LOG_ALL + LOG_SHMFD) against the switch,
//! driven by MockFrontend as QEMU drives it.
//!
//! Run: `cargo test -p vswitch --features test-utils --test dirty_log`.
#![cfg(feature = "test-utils")]

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use vswitch::test_utils::{
    MockError, MockFrontend, TestSwitch, LOG_PAGE_SIZE, RX_QUEUE, TX_QUEUE, VHOST_F_LOG_ALL,
};
use vswitch::{PortConfig, SwitchConfig};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(200);
const TEST_ETHERTYPE: u16 = 0x88b5;

fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x00, 0x00, n]
}

fn frame(dst: u8, src: u8, len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&mac(dst));
    f.extend_from_slice(&mac(src));
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.extend((f.len()..len).map(|i| (i as u8).wrapping_mul(7) ^ seed));
    f
}

/// Receives test frames addressed to `dst` (floods to others are skipped) until `n`
/// arrived or [`WAIT`] passed.
fn recv_n(m: &mut MockFrontend, dst: u8, n: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match m.recv(left) {
            Some(f)
                if f.len() >= 14
                    && f[..6] == mac(dst)
                    && f[12..14] == TEST_ETHERTYPE.to_be_bytes() =>
            {
                got.push(f)
            }
            Some(_) => {}
            None => break,
        }
    }
    got
}

/// `from` sends `n` frames of `len` bytes to `to`, which must receive exactly them; waits
/// until `from`'s TX chains are back.
fn forward(from: &mut MockFrontend, to: &mut MockFrontend, src: u8, dst: u8, n: u8, len: usize) {
    let frames: Vec<Vec<u8>> = (0..n).map(|i| frame(dst, src, len, i)).collect();
    from.send_burst(&frames).expect("send frames");
    let got = recv_n(to, dst, frames.len());
    assert!(
        got == frames,
        "frames {src:#x} -> {dst:#x}: got {} frames, want {} of {len} bytes, or contents differ",
        got.len(),
        frames.len()
    );
    assert!(from.wait_tx_all_completed(WAIT), "TX chains not returned");
}

/// A running switch with server-mode VM ports `names` (default settings).
fn start_switch(names: &[&str]) -> TestSwitch {
    TestSwitch::start("dl", |dir| SwitchConfig {
        ports: names
            .iter()
            .map(|p| PortConfig::new(dir.join(format!("{p}.sock"))))
            .collect(),
        ..SwitchConfig::default()
    })
}

fn page_of(gpa: u64) -> u64 {
    gpa & !(LOG_PAGE_SIZE - 1)
}

/// Pages of `[start, end)`.
fn pages(start: u64, end: u64) -> BTreeSet<u64> {
    (page_of(start)..end)
        .step_by(LOG_PAGE_SIZE as usize)
        .collect()
}

/// Pages of a queue's used ring (flags, idx, elements, avail_event).
fn used_ring_pages(m: &MockFrontend, queue: usize) -> BTreeSet<u64> {
    let used = m.ring_addrs(queue).used;
    pages(used, used + 6 + 8 * u64::from(m.options().queue_size))
}

/// Pages of a queue's descriptor table.
fn desc_pages(m: &MockFrontend, queue: usize) -> BTreeSet<u64> {
    let desc = m.ring_addrs(queue).desc;
    pages(desc, desc + 16 * u64::from(m.options().queue_size))
}

/// Pages of the TX buffers.
fn tx_buffer_pages(m: &MockFrontend) -> BTreeSet<u64> {
    pages(m.tx_buf_addr(0), m.tx_buf_addr(m.options().queue_size))
}

/// Pages of the RX buffers behind the used entries `from..to`, and whether every entry
/// names a buffer of the mock.
fn rx_data_pages(m: &MockFrontend, from: u16, to: u16) -> BTreeSet<u64> {
    let mut set = BTreeSet::new();
    let mut i = from;
    while i != to {
        let (id, len) = m.used_entry(RX_QUEUE, i).expect("read RX used entry");
        let id = u16::try_from(id).expect("RX used id");
        let addr = m.rx_buf_addr(id);
        set.extend(pages(addr, addr + u64::from(len)));
        i = i.wrapping_add(1);
    }
    set
}

fn dirty(m: &MockFrontend) -> BTreeSet<u64> {
    m.take_dirty_pages()
        .expect("read dirty log")
        .into_iter()
        .collect()
}

fn hex(set: &BTreeSet<u64>) -> Vec<String> {
    set.iter().map(|p| format!("{p:#x}")).collect()
}

/// A and B connected, MACs learned both ways, both logging with a log covering all of
/// their memory. A acks LOG_ALL before SET_LOG_BASE, B after (QEMU does both, at device
/// start and when migration starts). Logs are clean when this returns.
fn two_logging_ports() -> (TestSwitch, MockFrontend, MockFrontend) {
    let sw = start_switch(&["a", "b"]);
    let mut a = sw.connect("a");
    let mut b = sw.connect("b");
    assert_ne!(
        a.offered_features() & VHOST_F_LOG_ALL,
        0,
        "LOG_ALL not offered"
    );
    forward(&mut a, &mut b, 0xa, 0xb, 1, 60);
    forward(&mut b, &mut a, 0xb, 0xa, 1, 60);

    a.set_log_all(true).expect("A: LOG_ALL");
    let size = a.log_size_needed();
    a.set_log_base(size).expect("A: SET_LOG_BASE");
    let size = b.log_size_needed();
    b.set_log_base(size).expect("B: SET_LOG_BASE");
    b.set_log_all(true).expect("B: LOG_ALL");
    // Let the forwarding threads go idle (they may move avail_event on the way).
    thread::sleep(QUIET);
    dirty(&a);
    dirty(&b);
    (sw, a, b)
}

#[test]
fn dirty_log_marks_rx_buffers_and_used_rings_not_tx_data() {
    let (_sw, mut a, mut b) = two_logging_ports();
    let rx_from = b.rx_used();
    forward(&mut a, &mut b, 0xa, 0xb, 5, 1000);
    let rx_to = b.rx_used();
    assert_eq!(rx_to.wrapping_sub(rx_from), 5, "one RX buffer per frame");
    thread::sleep(QUIET);
    let (da, db) = (dirty(&a), dirty(&b));

    // B: the written RX buffers and its RX used ring must be dirty.
    let b_data = rx_data_pages(&b, rx_from, rx_to);
    let b_rx_used = used_ring_pages(&b, RX_QUEUE);
    assert!(!b_data.is_empty());
    assert!(
        b_data.is_subset(&db),
        "B's RX buffer pages {:?} not all dirty: {:?}",
        hex(&b_data),
        hex(&db)
    );
    assert!(
        b_rx_used.is_subset(&db),
        "B's RX used ring {:?} not dirty: {:?}",
        hex(&b_rx_used),
        hex(&db)
    );
    // Nothing else of B but its used rings (avail_event moves as threads sleep).
    let b_allowed: BTreeSet<u64> = b_data
        .iter()
        .chain(&b_rx_used)
        .chain(&used_ring_pages(&b, TX_QUEUE))
        .copied()
        .collect();
    assert!(
        db.is_subset(&b_allowed),
        "B pages dirty beyond its RX buffers and used rings: {:?}",
        hex(&db.difference(&b_allowed).copied().collect())
    );
    // The untouched RX buffers stay clean.
    let next_buf = b.rx_buf_addr(rx_to % b.options().queue_size);
    assert!(!db.contains(&page_of(next_buf + 2 * LOG_PAGE_SIZE)));

    // A: its TX used ring is dirty; TX data and descriptor tables never are.
    let a_tx_used = used_ring_pages(&a, TX_QUEUE);
    assert!(
        a_tx_used.is_subset(&da),
        "A's TX used ring {:?} not dirty: {:?}",
        hex(&a_tx_used),
        hex(&da)
    );
    for (what, set) in [
        ("TX data", tx_buffer_pages(&a)),
        ("TX descriptors", desc_pages(&a, TX_QUEUE)),
        ("RX descriptors", desc_pages(&a, RX_QUEUE)),
    ] {
        assert!(
            da.is_disjoint(&set),
            "A's {what} pages logged: {:?}",
            hex(&da.intersection(&set).copied().collect())
        );
    }
    let a_allowed: BTreeSet<u64> = a_tx_used
        .union(&used_ring_pages(&a, RX_QUEUE))
        .copied()
        .collect();
    assert!(
        da.is_subset(&a_allowed),
        "A pages dirty beyond its used rings: {:?}",
        hex(&da.difference(&a_allowed).copied().collect())
    );
    for set in [desc_pages(&b, RX_QUEUE), desc_pages(&b, TX_QUEUE)] {
        assert!(db.is_disjoint(&set), "B's descriptor table logged");
    }

    // The other direction logs symmetrically.
    forward(&mut b, &mut a, 0xb, 0xa, 2, 200);
    thread::sleep(QUIET);
    let (da, db) = (dirty(&a), dirty(&b));
    assert!(used_ring_pages(&a, RX_QUEUE).is_subset(&da));
    assert!(used_ring_pages(&b, TX_QUEUE).is_subset(&db));
    assert!(db.is_disjoint(&tx_buffer_pages(&b)));
}

#[test]
fn dirty_log_stops_when_log_all_is_cleared_and_resumes() {
    let (_sw, mut a, mut b) = two_logging_ports();
    forward(&mut a, &mut b, 0xa, 0xb, 2, 300);
    thread::sleep(QUIET);
    assert!(!dirty(&b).is_empty(), "nothing logged while migrating");

    // Migration done (or cancelled): SET_FEATURES without LOG_ALL.
    a.set_log_all(false).expect("A: clear LOG_ALL");
    b.set_log_all(false).expect("B: clear LOG_ALL");
    thread::sleep(QUIET);
    dirty(&a);
    dirty(&b);
    forward(&mut a, &mut b, 0xa, 0xb, 4, 1000);
    forward(&mut b, &mut a, 0xb, 0xa, 4, 1000);
    thread::sleep(QUIET);
    assert_eq!(
        hex(&dirty(&a)),
        Vec::<String>::new(),
        "A logged after LOG_ALL cleared"
    );
    assert_eq!(
        hex(&dirty(&b)),
        Vec::<String>::new(),
        "B logged after LOG_ALL cleared"
    );

    // A second migration attempt may ack LOG_ALL again on the same log.
    b.set_log_all(true).expect("B: LOG_ALL again");
    let rx_from = b.rx_used();
    forward(&mut a, &mut b, 0xa, 0xb, 1, 100);
    thread::sleep(QUIET);
    let db = dirty(&b);
    assert!(rx_data_pages(&b, rx_from, b.rx_used()).is_subset(&db));
    assert!(dirty(&a).is_empty(), "A did not ask to log again");
}

#[test]
fn dirty_log_too_small_closes_connection_and_switch_keeps_forwarding() {
    let sw = start_switch(&["a", "b", "c"]);
    let mut b = sw.connect("b");
    let mut c = sw.connect("c");
    let mut a = sw.connect("a");
    forward(&mut a, &mut b, 0xa, 0xb, 1, 60);
    let errors = sw.drops("a", "protocol_error");

    a.set_log_all(true).expect("A: LOG_ALL");
    // 8 bytes cover 256 KiB of guest physical addresses; A's memory starts at 1 GiB.
    assert!(a.log_size_needed() > 8);
    let e = a
        .set_log_base(8)
        .expect_err("a log too small must be refused");
    assert!(matches!(e, MockError::Vhost { .. }), "{e:?}");
    assert!(a.wait_closed(WAIT), "connection kept after a bad log");
    a.disconnect();
    assert!(
        sw.wait_drops("a", "protocol_error", errors + 1) > errors,
        "bad log not counted as protocol_error"
    );
    sw.wait_connected("a", false);

    // The switch and the other ports carry on; A can come back.
    forward(&mut b, &mut c, 0xb, 0xc, 3, 500);
    forward(&mut c, &mut b, 0xc, 0xb, 3, 500);
    let mut a = sw.connect("a");
    forward(&mut a, &mut b, 0xa, 0xb, 1, 60);
    forward(&mut b, &mut a, 0xb, 0xa, 1, 60);
    let size = a.log_size_needed();
    a.set_log_base(size).expect("A: a log of the right size");
}

#[test]
fn dirty_log_survives_a_memory_table_change() {
    let (_sw, mut a, mut b) = two_logging_ports();
    // QEMU resends SET_MEM_TABLE on memory map changes during migration, and
    // SET_LOG_BASE only if the log had to grow: the new mapping must stay logged.
    b.resend_mem_table().expect("B: SET_MEM_TABLE");
    a.resend_mem_table().expect("A: SET_MEM_TABLE");
    thread::sleep(QUIET);
    dirty(&a);
    dirty(&b);
    let rx_from = b.rx_used();
    forward(&mut a, &mut b, 0xa, 0xb, 3, 1000);
    thread::sleep(QUIET);
    let (da, db) = (dirty(&a), dirty(&b));
    let b_data = rx_data_pages(&b, rx_from, b.rx_used());
    assert!(
        b_data.is_subset(&db),
        "B's RX buffer pages {:?} not all dirty after SET_MEM_TABLE: {:?}",
        hex(&b_data),
        hex(&db)
    );
    assert!(used_ring_pages(&b, RX_QUEUE).is_subset(&db));
    assert!(used_ring_pages(&a, TX_QUEUE).is_subset(&da));
    assert!(da.is_disjoint(&tx_buffer_pages(&a)));
}
