//! Micro-benchmarks of the switch's per-packet costs: FDB operations and one
//! forwarding batch between two in-process "guests" (real vrings over real guest
//! memory, driven through the same `Forwarder::poll_vm_port` the threads run).
//!
//! Run: `cargo bench -p vswitch --bench forward`
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation, missing_docs)]

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vhost_user_backend::VringT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic};
use vswitch::config::PortMode;
use vswitch::fdb::Fdb;
use vswitch::forward::{Forwarder, PortTable, Shared, VNET_HDR_LEN};
use vswitch::policy::{PolicyConfig, PortPolicy, VlanMode};
use vswitch::port::{Attached, Port, PortBackend, QueuePair, VhostPort, Waker, OFFERED_FEATURES};
use vswitch::ring::{GuestMem, Vring};
use vswitch::MacAddr;

const BASE: u64 = 0x10_0000;
const QSIZE: u16 = 256;
const BUF: u64 = 2048;
const BATCH: u16 = 64;

/// One simulated guest: memory, an RX and a TX ring with all descriptors preset,
/// and a driver that only bumps avail indices (buffers are reused).
struct SimGuest {
    mem: GuestMemoryAtomic<GuestMem>,
    rx: Vring,
    tx: Vring,
    tx_avail: u16,
    rx_avail: u16,
}

impl SimGuest {
    fn new(mac: MacAddr, dst: MacAddr, frame_len: usize) -> Self {
        let gm = GuestMem::from_ranges(&[(GuestAddress(BASE), 16 << 20)]).unwrap();
        let rings = [(0x0u64, 0x800000u64, 2u16), (0x10000, 0x100000, 0)]; // (ring off, buf off, flags)
        let mut frame = vec![0u8; VNET_HDR_LEN + frame_len];
        frame[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&dst.0);
        frame[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&mac.0);
        frame[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&[0x08, 0x00]);
        for (ring_off, buf_off, flags) in rings {
            let desc = BASE + ring_off;
            for i in 0..u64::from(QSIZE) {
                let addr = BASE + buf_off + i * BUF;
                let len = if flags == 2 {
                    BUF as u32
                } else {
                    frame.len() as u32
                };
                let d = desc + 16 * i;
                gm.write_obj(addr, GuestAddress(d)).unwrap();
                gm.write_obj(len, GuestAddress(d + 8)).unwrap();
                gm.write_obj(flags, GuestAddress(d + 12)).unwrap();
                gm.write_obj(i as u16, GuestAddress(desc + 0x4000 + 4 + 2 * i))
                    .unwrap();
                if flags == 0 {
                    gm.write_slice(&frame, GuestAddress(addr)).unwrap();
                }
            }
        }
        let mem = GuestMemoryAtomic::new(gm);
        let mk = |off: u64| {
            let v = Vring::new(mem.clone(), QSIZE).unwrap();
            v.set_queue_size(QSIZE);
            v.set_queue_info(BASE + off, BASE + off + 0x4000, BASE + off + 0x8000)
                .unwrap();
            v.set_queue_ready(true);
            v.set_enabled(true);
            v
        };
        SimGuest {
            rx: mk(0),
            tx: mk(0x10000),
            mem,
            tx_avail: 0,
            rx_avail: 0,
        }
    }

    fn post(&mut self, tx: u16, rx: u16) {
        let m = self.mem.memory();
        self.tx_avail = self.tx_avail.wrapping_add(tx);
        self.rx_avail = self.rx_avail.wrapping_add(rx);
        m.write_obj(self.tx_avail, GuestAddress(BASE + 0x10000 + 0x4000 + 2))
            .unwrap();
        m.write_obj(self.rx_avail, GuestAddress(BASE + 0x4000 + 2))
            .unwrap();
    }
}

use vm_memory::GuestAddressSpace;

fn port(id: u16, g: &SimGuest, wakers: &Arc<[Arc<Waker>]>) -> Arc<Port> {
    port_on(id, g, wakers, 0)
}

fn port_on(id: u16, g: &SimGuest, wakers: &Arc<[Arc<Waker>]>, owner: usize) -> Arc<Port> {
    let vp = VhostPort::new(
        format!("/nonexistent/{id}.sock").into(),
        PortMode::Server,
        1,
    );
    vp.attached.store(Some(Arc::new(Attached::new(
        1,
        vec![QueuePair {
            rx: g.rx.clone(),
            tx: g.tx.clone(),
        }],
        g.mem.clone(),
        OFFERED_FEATURES & !(1 << 29),
    ))));
    Arc::new(Port::new(
        id,
        format!("p{id}"),
        1,
        owner,
        wakers.clone(),
        PortBackend::Vhost(vp),
        PortPolicy::new(&PolicyConfig::default(), &VlanMode::Access(1), 0).unwrap(),
    ))
}

fn bench_forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_batch64");
    for frame_len in [60usize, 1514] {
        let (ma, mb) = (MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2]));
        let mut a = SimGuest::new(ma, mb, frame_len);
        let mut b = SimGuest::new(mb, ma, frame_len);
        let waker = Arc::new(Waker::new().unwrap());
        let wakers: Arc<[Arc<Waker>]> = vec![waker.clone()].into();
        let fdb = Arc::new(Fdb::new(1024, 300));
        fdb.learn(1, mb, 1, 0);
        let shared = Arc::new(Shared {
            ports: ArcSwap::from_pointee(PortTable::new(vec![
                port(0, &a, &wakers),
                port(1, &b, &wakers),
            ])),
            wakers,
            fdb,
            max_frame: 1518,
            shutdown: AtomicBool::new(false),
            epoch: Instant::now(),
        });
        let mut fwd = Forwarder::new(0, shared.clone(), waker);
        let table = shared.ports.load_full();
        group.throughput(Throughput::Elements(u64::from(BATCH)));
        group.bench_with_input(
            BenchmarkId::from_parameter(frame_len + 4),
            &frame_len,
            |bn, _| {
                bn.iter(|| {
                    a.post(BATCH, 0);
                    b.post(0, BATCH);
                    let n = fwd.poll_vm_port(&table, 0, 0);
                    assert_eq!(n, usize::from(BATCH));
                })
            },
        );
        let s = table.get(1).unwrap().counters.snapshot("b");
        assert_eq!(
            s.drops.values().sum::<u64>(),
            0,
            "drops in benchmark: {:?}",
            s.drops
        );
    }
    group.finish();
}

fn bench_fdb(c: &mut Criterion) {
    let fdb = Fdb::new(8192, 300);
    let macs: Vec<MacAddr> = (0..1024u32)
        .map(|i| MacAddr([2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]))
        .collect();
    for (i, m) in macs.iter().enumerate() {
        fdb.learn(1, *m, (i % 16) as u16, 0);
    }
    let mut i = 0usize;
    c.bench_function("fdb_lookup_hit_1k_entries", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            std::hint::black_box(fdb.lookup(1, macs[i], 0))
        })
    });
    c.bench_function("fdb_learn_unchanged", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            std::hint::black_box(fdb.learn(1, macs[i], (i % 16) as u16, 0))
        })
    });
    c.bench_function("fdb_lookup_miss", |b| {
        b.iter(|| std::hint::black_box(fdb.lookup(7, macs[3], 0)))
    });
}

/// Two independent pairs (a -> b, c -> d), 64-byte frames, forwarded by one thread
/// (both pairs on forwarding thread 0) or by two threads in parallel (pair A on
/// thread 0, pair B on thread 1): how the data plane scales across forwarding
/// threads, without an external generator competing for the CPUs. Throughput is
/// frames of both pairs together.
fn bench_scaling(c: &mut Criterion) {
    let mut group = c.benchmark_group("two_pairs_batch64");
    group.throughput(Throughput::Elements(2 * u64::from(BATCH)));
    for threads in [1usize, 2] {
        let macs: Vec<MacAddr> = (1..=4).map(|n| MacAddr([2, 0, 0, 0, 0, n])).collect();
        let guests: Vec<SimGuest> = (0..4)
            .map(|i| SimGuest::new(macs[i], macs[i ^ 1], 60))
            .collect();
        let wakers: Arc<[Arc<Waker>]> = (0..threads)
            .map(|_| Arc::new(Waker::new().unwrap()))
            .collect::<Vec<_>>()
            .into();
        let fdb = Arc::new(Fdb::new(1024, 300));
        for (i, m) in macs.iter().enumerate() {
            fdb.learn(1, *m, i as u16, 0);
        }
        // Ports 0, 1 (pair A) on thread 0; ports 2, 3 (pair B) on the last thread.
        let ports = (0..4)
            .map(|i| port_on(i as u16, &guests[i], &wakers, (i / 2) % threads))
            .collect();
        let shared = Arc::new(Shared {
            ports: ArcSwap::from_pointee(PortTable::new(ports)),
            wakers: wakers.clone(),
            fdb,
            max_frame: 1518,
            shutdown: AtomicBool::new(false),
            epoch: Instant::now(),
        });
        let table = shared.ports.load_full();
        let mut guests = guests.into_iter();
        let mut pairs: Vec<(SimGuest, SimGuest)> = (0..2)
            .map(|_| (guests.next().unwrap(), guests.next().unwrap()))
            .collect();
        let mut fwds: Vec<Forwarder> = (0..threads)
            .map(|t| Forwarder::new(t, shared.clone(), wakers[t].clone()))
            .collect();
        group.bench_function(BenchmarkId::new("threads", threads), |bn| {
            bn.iter_custom(|iters| {
                let start = Instant::now();
                if threads == 1 {
                    let fwd = &mut fwds[0];
                    for _ in 0..iters {
                        for (k, (src, dst)) in pairs.iter_mut().enumerate() {
                            src.post(BATCH, 0);
                            dst.post(0, BATCH);
                            // Thread 0 owns ports 0..4 in id order: sources are 0 and 2.
                            let n = fwd.poll_vm_port(&table, 2 * k, 0);
                            assert_eq!(n, usize::from(BATCH));
                        }
                    }
                } else {
                    std::thread::scope(|s| {
                        for (fwd, (src, dst)) in fwds.iter_mut().zip(pairs.iter_mut()) {
                            let table = &table;
                            s.spawn(move || {
                                for _ in 0..iters {
                                    src.post(BATCH, 0);
                                    dst.post(0, BATCH);
                                    let n = fwd.poll_vm_port(table, 0, 0);
                                    assert_eq!(n, usize::from(BATCH));
                                }
                            });
                        }
                    });
                }
                start.elapsed()
            })
        });
        for id in [1u16, 3] {
            let s = table.get(id).unwrap().counters.snapshot("dst");
            assert_eq!(s.drops.values().sum::<u64>(), 0, "drops: {:?}", s.drops);
        }
    }
    group.finish();
}

criterion_group!(benches, bench_fdb, bench_forward, bench_scaling);
criterion_main!(benches);
