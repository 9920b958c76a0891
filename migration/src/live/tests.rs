//! The orchestrator against fake hosts that record every call and fail on demand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// Time that only moves when an operation takes some.
struct FakeClock {
    base: Instant,
    offset: Mutex<Duration>,
}

impl FakeClock {
    fn new() -> Self {
        FakeClock {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }

    fn advance(&self, d: Duration) {
        *self.offset.lock().unwrap() += d;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.base + *self.offset.lock().unwrap()
    }
}

/// How the fake source VMM migrates.
#[derive(Clone)]
enum MigrateMode {
    /// Two progress reports, then completed.
    Complete,
    /// One progress report, then this error.
    Fail(OpError),
    /// One progress report, then the operator cancels (the token), and the
    /// migration ends once `cancel_migration` is called.
    OperatorCancels(CancelToken),
}

struct FakeHost {
    side: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    clock: Arc<FakeClock>,
    /// Calls (as logged, without the side) that fail, and how.
    fail: Mutex<HashMap<String, OpError>>,
    attached: Mutex<bool>,
    guest_traffic: Mutex<GuestUse>,
    migrate: Mutex<MigrateMode>,
    cancelled: tokio::sync::Notify,
    /// Parts taken out of the held frames so far.
    taken: Mutex<usize>,
}

impl FakeHost {
    fn new(
        side: &'static str,
        log: &Arc<Mutex<Vec<String>>>,
        clock: &Arc<FakeClock>,
        attached: bool,
    ) -> Self {
        FakeHost {
            side,
            log: log.clone(),
            clock: clock.clone(),
            fail: Mutex::new(HashMap::new()),
            attached: Mutex::new(attached),
            guest_traffic: Mutex::new(GuestUse::Direct),
            migrate: Mutex::new(MigrateMode::Complete),
            cancelled: tokio::sync::Notify::new(),
            taken: Mutex::new(0),
        }
    }

    fn fail(&self, op: &str, e: OpError) {
        self.fail.lock().unwrap().insert(op.to_string(), e);
    }

    /// Logs `op`, takes 1 ms, fails if told to.
    fn call(&self, op: impl Into<String>) -> Result<(), OpError> {
        let op = op.into();
        self.log.lock().unwrap().push(format!("{}.{op}", self.side));
        self.clock.advance(Duration::from_millis(1));
        match self.fail.lock().unwrap().get(&op) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl VmmOps for FakeHost {
    async fn start_incoming(&self, vm: &VmNet) -> Result<IncomingEndpoint, OpError> {
        self.call("vmm.start_incoming")?;
        Ok(IncomingEndpoint {
            uri: format!("tcp:{}:4444#{}", self.side, vm.name),
        })
    }

    async fn unplug_direct(&self, _vm: &VmNet, timeout: Duration) -> Result<(), OpError> {
        self.call(format!("vmm.unplug_direct {}s", timeout.as_secs()))?;
        *self.attached.lock().unwrap() = false;
        Ok(())
    }

    async fn direct_attached(&self, _vm: &VmNet) -> Result<bool, OpError> {
        self.call("vmm.direct_attached")?;
        Ok(*self.attached.lock().unwrap())
    }

    async fn plug_direct(&self, _vm: &VmNet, direct: &DirectGrant) -> Result<(), OpError> {
        self.call(format!("vmm.plug_direct {}", direct.id))?;
        *self.attached.lock().unwrap() = true;
        Ok(())
    }

    async fn migrate(
        &self,
        _vm: &VmNet,
        to: &IncomingEndpoint,
        progress: ProgressFn<'_>,
    ) -> Result<MigrationStats, OpError> {
        self.call(format!("vmm.migrate {}", to.uri))?;
        let p = |transferred: u64, status: &str| MigrationProgress {
            status: status.to_string(),
            transferred,
            remaining: 1000 - transferred,
            total: 1000,
            dirty_rate: Some(50),
            elapsed_ms: transferred / 2,
        };
        progress(&p(400, "active"));
        self.clock.advance(Duration::from_millis(200));
        let mode = self.migrate.lock().unwrap().clone();
        match mode {
            MigrateMode::Complete => {
                progress(&p(1000, "completed"));
                self.clock.advance(Duration::from_millis(300));
                Ok(MigrationStats {
                    total_ms: 500,
                    downtime_ms: Some(42),
                    transferred: 1000,
                })
            }
            MigrateMode::Fail(e) => Err(e),
            MigrateMode::OperatorCancels(token) => {
                token.cancel();
                self.cancelled.notified().await;
                Err(OpError::cancelled("migration status: cancelled"))
            }
        }
    }

    async fn cancel_migration(&self, _vm: &VmNet) -> Result<(), OpError> {
        self.call("vmm.cancel_migration")?;
        self.cancelled.notify_one();
        Ok(())
    }

    async fn confirm_running(&self, _vm: &VmNet) -> Result<(), OpError> {
        self.call("vmm.confirm_running")
    }

    async fn resume(&self, _vm: &VmNet) -> Result<(), OpError> {
        self.call("vmm.resume")
    }

    async fn stop(&self, _vm: &VmNet) -> Result<(), OpError> {
        self.call("vmm.stop")
    }
}

#[async_trait::async_trait]
impl VfOps for FakeHost {
    async fn reserve(&self, _vm: &VmNet) -> Result<DirectGrant, OpError> {
        self.call("vf.reserve")?;
        Ok(grant(self.side))
    }

    async fn route(&self, _vm: &VmNet, route: Route) -> Result<(), OpError> {
        self.call(format!("vf.route {route}"))
    }

    async fn wait_guest_traffic(&self, _vm: &VmNet, settle: Duration) -> Result<GuestUse, OpError> {
        self.call(format!("vf.wait_guest_traffic {}s", settle.as_secs()))?;
        Ok(*self.guest_traffic.lock().unwrap())
    }

    async fn release(&self, _vm: &VmNet) -> Result<(), OpError> {
        self.call("vf.release")
    }
}

#[async_trait::async_trait]
impl SwitchOps for FakeHost {
    async fn prepare_port(&self, vm: &VmNet) -> Result<(), OpError> {
        self.call(format!("switch.prepare_port {}", vm.mac))
    }

    async fn hold(&self, _vm: &VmNet) -> Result<(), OpError> {
        self.call("switch.hold")
    }

    async fn release_hold(&self, _vm: &VmNet, onto: PathKind) -> Result<u64, OpError> {
        self.call(format!("switch.release_hold {onto}"))?;
        Ok(3)
    }

    async fn announce(&self, _vm: &VmNet) -> Result<(), OpError> {
        self.call("switch.announce")
    }

    async fn remove_port(&self, _vm: &VmNet) -> Result<(), OpError> {
        self.call("switch.remove_port")
    }

    async fn hold_on_stop(&self, _vm: &VmNet, max: Duration) -> Result<(), OpError> {
        self.call(format!("switch.hold_on_stop {}s", max.as_secs()))
    }

    /// Two parts: two frames, then one.
    async fn take_held(&self, _vm: &VmNet) -> Result<HeldPart, OpError> {
        self.call("switch.take_held")?;
        let mut taken = self.taken.lock().unwrap();
        *taken += 1;
        let frame = |n: usize| CarriedFrame {
            frame: format!("{n:02x}"),
            vnet: None,
        };
        Ok(match *taken {
            1 => HeldPart {
                frames: vec![frame(1), frame(2)],
                more: true,
            },
            2 => HeldPart {
                frames: vec![frame(3)],
                more: false,
            },
            _ => HeldPart::default(),
        })
    }

    async fn inject(&self, _vm: &VmNet, frames: &[CarriedFrame]) -> Result<u64, OpError> {
        let names: Vec<&str> = frames.iter().map(|f| f.frame.as_str()).collect();
        self.call(format!("switch.inject {}", names.join(",")))?;
        Ok(frames.len() as u64)
    }
}

fn grant(side: &str) -> DirectGrant {
    DirectGrant {
        id: format!("vf:{side}-0000:3b:02.1"),
        label: format!("VF {side}-0000:3b:02.1"),
    }
}

fn plan(source_direct: bool, destination_direct: bool) -> MigrationPlan {
    MigrationPlan {
        vm: VmNet {
            name: "vm1".to_string(),
            mac: "52:54:00:12:34:56".to_string(),
            queue_pairs: 2,
            tier: Some("low".to_string()),
        },
        source_direct: source_direct.then(|| grant("src")),
        destination_direct,
    }
}

struct World {
    log: Arc<Mutex<Vec<String>>>,
    clock: Arc<FakeClock>,
    src: FakeHost,
    dst: FakeHost,
    events: Mutex<Vec<Event>>,
    registry: InFlight,
    cancel: CancelToken,
}

impl World {
    fn new(source_direct: bool) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let clock = Arc::new(FakeClock::new());
        World {
            src: FakeHost::new("src", &log, &clock, source_direct),
            dst: FakeHost::new("dst", &log, &clock, false),
            log,
            clock,
            events: Mutex::new(Vec::new()),
            registry: InFlight::new(),
            cancel: CancelToken::new(),
        }
    }

    async fn run(&self, plan: &MigrationPlan) -> Result<MigrationReport, MigrationError> {
        let guard = self
            .registry
            .begin(&plan.vm.name, "migration")
            .expect("VM free");
        let events = |e: &Event| self.events.lock().unwrap().push(e.clone());
        let m = LiveMigration {
            plan,
            options: MigrationOptions {
                unplug_timeout: Duration::from_secs(20),
                settle: Duration::from_secs(10),
            },
            source: Host {
                name: "hostA",
                vmm: &self.src,
                vf: &self.src,
                switch: &self.src,
            },
            destination: Host {
                name: "hostB",
                vmm: &self.dst,
                vf: &self.dst,
                switch: &self.dst,
            },
            clock: &*self.clock,
            events: &events,
            cancel: self.cancel.clone(),
        };
        m.run(&guard).await
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The calls from the first one equal to `from` on.
    fn log_from(&self, from: &str) -> Vec<String> {
        let log = self.log();
        let i = log
            .iter()
            .position(|c| c == from)
            .unwrap_or_else(|| panic!("{from} not called: {log:#?}"));
        log[i..].to_vec()
    }
}

const ADMIT: [&str; 3] = [
    "dst.vf.reserve",
    "dst.switch.prepare_port 52:54:00:12:34:56",
    "dst.vmm.start_incoming",
];

const STEER_UNPLUG: [&str; 4] = [
    "src.switch.hold",
    "src.vf.route synthetic",
    "src.vmm.unplug_direct 20s",
    "src.switch.release_hold synthetic",
];

const DEST_TEARDOWN: [&str; 3] = ["dst.vmm.stop", "dst.vf.release", "dst.switch.remove_port"];

/// The source's hold for the switch-over (armed before the migration).
const ARM: &str = "src.switch.hold_on_stop 30s";

/// What the source held from the switch-over, taken in two parts and delivered at
/// the destination.
const FORWARD: [&str; 4] = [
    "src.switch.take_held",
    "dst.switch.inject 01,02",
    "src.switch.take_held",
    "dst.switch.inject 03",
];

/// The rollback delivers what the source held to its guest again.
const SRC_HOLD_BACK: &str = "src.switch.release_hold synthetic";

const SRC_REPLUG: [&str; 6] = [
    "src.switch.hold",
    "src.vf.route both",
    "src.vmm.plug_direct vf:src-0000:3b:02.1",
    "src.vf.wait_guest_traffic 10s",
    "src.vf.route direct",
    "src.switch.release_hold direct",
];

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn concat(parts: &[&[&str]]) -> Vec<String> {
    parts.iter().flat_map(|p| strs(p)).collect()
}

fn src_direct() -> FinalState {
    FinalState::Source {
        host: "hostA".to_string(),
        path: PathKind::Direct,
    }
}

#[tokio::test]
async fn migrates_with_every_step_in_order() {
    let w = World::new(true);
    let report = w.run(&plan(true, true)).await.expect("migrates");
    assert_eq!(
        w.log(),
        concat(&[
            &ADMIT,
            &STEER_UNPLUG,
            &[
                ARM,
                "src.vmm.migrate tcp:dst:4444#vm1",
                "dst.vmm.confirm_running",
                "dst.switch.announce",
            ],
            &FORWARD,
            &[
                "dst.switch.hold",
                "dst.vf.route both",
                "dst.vmm.plug_direct vf:dst-0000:3b:02.1",
                "dst.vf.wait_guest_traffic 10s",
                "dst.vf.route direct",
                "dst.switch.release_hold direct",
                "src.vmm.stop",
                "src.vf.release",
                "src.switch.remove_port",
            ],
        ])
    );
    assert_eq!(
        report.final_state,
        FinalState::Destination {
            host: "hostB".to_string(),
            path: PathKind::Direct
        }
    );
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(report.downtime_ms, Some(42));
    assert_eq!(report.forwarded_frames, 3);
    assert_eq!(report.migration_ms, 500);
    assert_eq!(report.transferred_bytes, 1000);
    assert_eq!(
        report.last_progress.as_ref().map(|p| p.status.as_str()),
        Some("completed")
    );
    // Every call takes 1 ms of fake time, the migration 500 ms more.
    let steps: Vec<(Step, StepOutcome, u64, u64)> = report
        .steps
        .iter()
        .map(|s| (s.step, s.outcome, s.start_ms, s.duration_ms))
        .collect();
    assert_eq!(
        steps,
        vec![
            (Step::Admit, StepOutcome::Done, 0, 3),
            (Step::Steer, StepOutcome::Done, 3, 2),
            (Step::Unplug, StepOutcome::Done, 5, 2),
            (Step::Migrate, StepOutcome::Done, 7, 503),
            (Step::Announce, StepOutcome::Done, 510, 5),
            (Step::Plug, StepOutcome::Done, 515, 6),
            (Step::Release, StepOutcome::Done, 521, 3),
        ]
    );
    assert_eq!(report.total_ms, 524);

    let events = w.events.lock().unwrap().clone();
    let started: Vec<Step> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted { step } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(started, Step::ALL.to_vec());
    let progress: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Progress(p) => Some(p.transferred),
            _ => None,
        })
        .collect();
    assert_eq!(progress, vec![400, 1000]);

    let json = serde_json::to_value(&report).expect("serializes");
    assert_eq!(json["final_state"]["runs_on"], "destination");
    assert_eq!(json["final_state"]["path"], "direct");
    assert_eq!(json["steps"][3]["step"], "migrate");
    assert_eq!(json["steps"][3]["duration_ms"], 503);
    assert_eq!(json["downtime_ms"], 42);
    assert_eq!(json["forwarded_frames"], 3);
}

#[tokio::test]
async fn admit_fails_when_the_destination_switch_does_not_run() {
    let w = World::new(true);
    w.dst.fail(
        "switch.prepare_port 52:54:00:12:34:56",
        OpError::unavailable("switch control socket /run/accelnet/switch.sock: connection refused"),
    );
    let err = w.run(&plan(true, true)).await.expect_err("fails");
    assert_eq!(err.step, Step::Admit);
    assert_eq!(err.cause.kind, OpErrorKind::Unavailable);
    assert_eq!(
        err.cause.message,
        "the switch at the destination hostB: switch control socket /run/accelnet/switch.sock: connection refused"
    );
    assert_eq!(
        err.rolled_back,
        vec!["VF dst-0000:3b:02.1 released on hostB"]
    );
    assert!(err.rollback_errors.is_empty());
    assert_eq!(err.final_state, src_direct());
    assert_eq!(
        w.log(),
        strs(&[
            "dst.vf.reserve",
            "dst.switch.prepare_port 52:54:00:12:34:56",
            "dst.vf.release"
        ])
    );
    assert_eq!(
        err.to_string(),
        "migration of VM vm1 failed at the admit step: the switch at the destination hostB: \
         switch control socket /run/accelnet/switch.sock: connection refused; \
         rolled back: VF dst-0000:3b:02.1 released on hostB; \
         the VM runs on the source host hostA on the direct path"
    );
    assert_eq!(err.steps.len(), 1);
    assert_eq!(err.steps[0].outcome, StepOutcome::Failed);
}

#[tokio::test]
async fn admit_fails_without_a_free_vf_and_passes_the_pool_reason() {
    let w = World::new(true);
    w.dst.fail(
        "vf.reserve",
        OpError::unavailable(
            "[sriov-017] no free VF carries the high tier (2 free, 1 queue pair each)",
        ),
    );
    let err = w.run(&plan(true, true)).await.expect_err("fails");
    assert_eq!(err.step, Step::Admit);
    assert_eq!(err.cause.kind, OpErrorKind::Unavailable);
    assert!(
        err.cause
            .message
            .ends_with("[sriov-017] no free VF carries the high tier (2 free, 1 queue pair each)"),
        "{}",
        err.cause
    );
    assert!(err.rolled_back.is_empty());
    assert_eq!(w.log(), strs(&["dst.vf.reserve"]));
    assert!(err.to_string().contains("nothing to roll back"), "{err}");
    assert_eq!(err.final_state, src_direct());
}

#[tokio::test]
async fn admit_fails_when_the_destination_vmm_does_not_start() {
    let w = World::new(true);
    w.dst.fail(
        "vmm.start_incoming",
        OpError::failed("qemu exited with status 1: could not open /dev/kvm"),
    );
    let err = w.run(&plan(true, true)).await.expect_err("fails");
    assert_eq!(err.step, Step::Admit);
    assert!(err.cause.message.contains("could not open /dev/kvm"));
    assert_eq!(w.log(), concat(&[&ADMIT, &DEST_TEARDOWN]));
    assert_eq!(
        err.rolled_back,
        vec![
            "destination VMM stopped on hostB",
            "VF dst-0000:3b:02.1 released on hostB",
            "destination switch port removed on hostB"
        ]
    );
    assert_eq!(err.final_state, src_direct());
}

#[tokio::test]
async fn steer_failure_puts_the_mac_back_on_the_source_vf() {
    let w = World::new(true);
    w.src.fail(
        "vf.route synthetic",
        OpError::failed("RTM_SETLINK IFLA_VF_MAC on enp59s0f0 vf 1: Operation not permitted"),
    );
    let err = w.run(&plan(true, true)).await.expect_err("fails");
    assert_eq!(err.step, Step::Steer);
    assert!(err
        .cause
        .message
        .starts_with("cannot steer the VM's MAC to the synthetic path at the source hostA"));
    assert_eq!(
        w.log(),
        concat(&[
            &ADMIT,
            &["src.switch.hold", "src.vf.route synthetic"],
            &DEST_TEARDOWN,
            &[
                "src.vmm.direct_attached",
                "src.vf.route direct",
                "src.switch.release_hold direct"
            ],
        ])
    );
    assert_eq!(
        err.rolled_back[3..],
        [
            "MAC steered back to the source direct path on hostA",
            "source switch hold released on hostA"
        ]
    );
    assert_eq!(err.final_state, src_direct());
}

#[tokio::test]
async fn unplug_never_acknowledged_keeps_the_vm_on_its_source_vf() {
    let w = World::new(true);
    w.src.fail(
        "vmm.unplug_direct 20s",
        OpError::timeout("timed out after 20.0 s waiting for DEVICE_DELETED of vf0"),
    );
    let err = w.run(&plan(true, true)).await.expect_err("fails");
    assert_eq!(err.step, Step::Unplug);
    assert_eq!(err.cause.kind, OpErrorKind::Timeout);
    assert_eq!(
        err.cause.message,
        "the guest did not release its direct path at the source hostA: timed out after 20.0 s waiting for DEVICE_DELETED of vf0"
    );
    assert_eq!(
        w.log_from("src.vmm.unplug_direct 20s"),
        concat(&[
            &["src.vmm.unplug_direct 20s"],
            &DEST_TEARDOWN,
            &[
                "src.vmm.direct_attached",
                "src.vf.route direct",
                "src.switch.release_hold direct"
            ],
        ])
    );
    assert_eq!(err.final_state, src_direct());
    assert!(
        err.to_string().contains(
            "rolled back: destination VMM stopped on hostB, VF dst-0000:3b:02.1 released on hostB, \
             destination switch port removed on hostB, MAC steered back to the source direct path on hostA, \
             source switch hold released on hostA"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn unplug_error_after_the_guest_let_go_replugs_the_source_vf() {
    let w = World::new(true);
    w.src.fail(
        "vmm.unplug_direct 20s",
        OpError::failed("QMP connection reset"),
    );
    // The guest did release it: the VMM no longer has the device.
    *w.src.attached.lock().unwrap() = false;
    let err = w.run(&plan(true, true)).await.expect_err("fails");
    assert_eq!(err.step, Step::Unplug);
    assert_eq!(
        w.log_from("src.vmm.unplug_direct 20s"),
        concat(&[
            &["src.vmm.unplug_direct 20s"],
            &DEST_TEARDOWN,
            &[
                "src.vmm.direct_attached",
                "src.switch.release_hold synthetic"
            ],
            &SRC_REPLUG,
        ])
    );
    assert_eq!(
        err.rolled_back.last().map(String::as_str),
        Some("source direct path re-plugged on hostA (VF src-0000:3b:02.1)")
    );
    assert_eq!(err.final_state, src_direct());
}

#[tokio::test]
async fn migration_failure_keeps_the_vm_on_the_source_and_replugs_its_vf() {
    let w = World::new(true);
    *w.src.migrate.lock().unwrap() = MigrateMode::Fail(OpError::failed(
        "migration failed: Unable to write to socket: Broken pipe",
    ));
    let err = w.run(&plan(true, true)).await.expect_err("fails");
    assert_eq!(err.step, Step::Migrate);
    assert_eq!(
        err.cause.message,
        "the migration failed: migration failed: Unable to write to socket: Broken pipe"
    );
    assert_eq!(
        w.log(),
        concat(&[
            &ADMIT,
            &STEER_UNPLUG,
            &[ARM, "src.vmm.migrate tcp:dst:4444#vm1"],
            &DEST_TEARDOWN,
            &[SRC_HOLD_BACK],
            &SRC_REPLUG,
        ])
    );
    assert!(!w.log().contains(&"dst.vmm.confirm_running".to_string()));
    assert_eq!(err.final_state, src_direct());
    let events = w.events.lock().unwrap().clone();
    assert!(events.contains(&Event::RollingBack {
        step: Step::Migrate
    }));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Progress(p) if p.transferred == 400)));
}

#[tokio::test]
async fn cancel_mid_migration_rolls_back_to_the_source() {
    let w = World::new(true);
    *w.src.migrate.lock().unwrap() = MigrateMode::OperatorCancels(w.cancel.clone());
    let err = w.run(&plan(true, true)).await.expect_err("cancelled");
    assert_eq!(err.step, Step::Migrate);
    assert_eq!(err.cause.kind, OpErrorKind::Cancelled);
    assert_eq!(
        err.cause.message,
        "the migration was cancelled: migration status: cancelled"
    );
    assert_eq!(
        w.log_from("src.vmm.migrate tcp:dst:4444#vm1"),
        concat(&[
            &[
                "src.vmm.migrate tcp:dst:4444#vm1",
                "src.vmm.cancel_migration"
            ],
            &DEST_TEARDOWN,
            &[SRC_HOLD_BACK],
            &SRC_REPLUG,
        ])
    );
    assert!(w.events.lock().unwrap().contains(&Event::CancelRequested));
    assert_eq!(err.final_state, src_direct());
}

#[tokio::test]
async fn cancel_before_the_start_touches_nothing() {
    let w = World::new(true);
    w.cancel.cancel();
    let err = w.run(&plan(true, true)).await.expect_err("cancelled");
    assert_eq!(err.step, Step::Admit);
    assert_eq!(err.cause.kind, OpErrorKind::Cancelled);
    assert_eq!(err.cause.message, "cancelled before the admit step");
    assert!(w.log().is_empty());
}

#[tokio::test]
async fn destination_vmm_dying_during_migration_leaves_the_vm_on_the_source() {
    let w = World::new(true);
    *w.src.migrate.lock().unwrap() =
        MigrateMode::Fail(OpError::gone("migration failed: Connection reset by peer"));
    w.dst
        .fail("vmm.stop", OpError::gone("no such process (pid 4242)"));
    let err = w.run(&plan(true, true)).await.expect_err("fails");
    assert_eq!(err.step, Step::Migrate);
    assert_eq!(err.cause.kind, OpErrorKind::Gone);
    assert_eq!(
        err.rollback_errors,
        vec!["destination VMM stopped on hostB: failed: no such process (pid 4242)"]
    );
    // The rest of the rollback still happens.
    assert_eq!(
        w.log_from("dst.vmm.stop"),
        concat(&[&DEST_TEARDOWN, &[SRC_HOLD_BACK], &SRC_REPLUG])
    );
    assert_eq!(err.final_state, src_direct());
    assert!(err
        .to_string()
        .contains("rollback errors: destination VMM stopped on hostB: failed: no such process"));
}

#[tokio::test]
async fn destination_not_running_after_the_switch_over_resumes_the_source() {
    let w = World::new(true);
    w.dst.fail(
        "vmm.confirm_running",
        OpError::gone("qemu exited: Segmentation fault"),
    );
    let err = w.run(&plan(true, true)).await.expect_err("fails");
    assert_eq!(err.step, Step::Migrate);
    assert_eq!(
        err.cause.message,
        "the migration completed but the VM does not run at the destination hostB: qemu exited: Segmentation fault"
    );
    assert_eq!(
        w.log_from("dst.vmm.confirm_running"),
        concat(&[
            &["dst.vmm.confirm_running"],
            &DEST_TEARDOWN,
            &["src.vmm.resume", SRC_HOLD_BACK],
            &SRC_REPLUG,
        ])
    );
    assert!(err
        .rolled_back
        .contains(&"source VM resumed on hostA".to_string()));
    assert_eq!(err.final_state, src_direct());
}

#[tokio::test]
async fn a_source_that_cannot_resume_is_reported_lost() {
    let w = World::new(true);
    w.dst
        .fail("vmm.confirm_running", OpError::gone("qemu exited"));
    w.src
        .fail("vmm.resume", OpError::failed("QMP: cont: not allowed"));
    let err = w.run(&plan(true, true)).await.expect_err("fails");
    assert!(matches!(err.final_state, FinalState::Unknown { .. }));
    assert_eq!(err.final_state.path(), None);
    assert!(!w
        .log()
        .contains(&"src.vmm.plug_direct vf:src-0000:3b:02.1".to_string()));
    assert!(
        err.to_string().ends_with(
            "the VM is not known to run anywhere: the destination hostB does not run the VM and the source hostA could not resume it"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn announce_failure_after_the_switch_over_is_a_warning() {
    let w = World::new(true);
    w.dst
        .fail("switch.announce", OpError::unavailable("no uplink is up"));
    let report = w.run(&plan(true, true)).await.expect("migrates");
    assert_eq!(
        report.warnings,
        vec!["could not announce the VM's MAC at the destination hostB: no uplink is up; the wire learns it from the guest's next frame"]
    );
    assert_eq!(report.steps[4].outcome, StepOutcome::Warning);
    assert_eq!(report.final_state.path(), Some(PathKind::Direct));
    assert!(report.final_state.on_destination());
    // Still plugged and released.
    assert_eq!(
        w.log().last().map(String::as_str),
        Some("src.switch.remove_port")
    );
}

#[tokio::test]
async fn destination_plug_failure_leaves_the_vm_on_the_synthetic_path() {
    let w = World::new(true);
    w.dst.fail(
        "vmm.plug_direct vf:dst-0000:3b:02.1",
        OpError::failed("device_add: vfio 0000:3b:02.1: group 42 is not viable"),
    );
    let report = w.run(&plan(true, true)).await.expect("migrates");
    assert_eq!(
        w.log_from("dst.switch.hold"),
        strs(&[
            "dst.switch.hold",
            "dst.vf.route both",
            "dst.vmm.plug_direct vf:dst-0000:3b:02.1",
            "dst.vf.route synthetic",
            "dst.switch.release_hold synthetic",
            "dst.vf.release",
            "src.vmm.stop",
            "src.vf.release",
            "src.switch.remove_port",
        ])
    );
    assert_eq!(
        report.final_state,
        FinalState::Destination {
            host: "hostB".to_string(),
            path: PathKind::Synthetic
        }
    );
    assert_eq!(
        report.warnings,
        vec!["the VM stays on the synthetic path at the destination hostB: plugging VF dst-0000:3b:02.1 failed: device_add: vfio 0000:3b:02.1: group 42 is not viable"]
    );
    assert_eq!(report.steps[5].outcome, StepOutcome::Warning);
}

#[tokio::test]
async fn guest_not_using_the_destination_primary_goes_back_to_synthetic() {
    let w = World::new(true);
    *w.dst.guest_traffic.lock().unwrap() = GuestUse::SyntheticOnly;
    let report = w.run(&plan(true, true)).await.expect("migrates");
    assert_eq!(
        w.log_from("dst.vmm.plug_direct vf:dst-0000:3b:02.1"),
        strs(&[
            "dst.vmm.plug_direct vf:dst-0000:3b:02.1",
            "dst.vf.wait_guest_traffic 10s",
            "dst.vmm.unplug_direct 20s",
            "dst.vf.route synthetic",
            "dst.switch.release_hold synthetic",
            "dst.vf.release",
            "src.vmm.stop",
            "src.vf.release",
            "src.switch.remove_port",
        ])
    );
    assert_eq!(report.final_state.path(), Some(PathKind::Synthetic));
    assert_eq!(
        report.warnings,
        vec!["the VM stays on the synthetic path at the destination hostB: the guest sent over the synthetic path only, nothing over VF dst-0000:3b:02.1 within 10.0 s"]
    );
}

/// An idle guest (nothing over either path while the host waited) stays on its
/// new primary, unverified, with a warning: no evidence it cannot use it.
#[tokio::test]
async fn idle_guest_keeps_the_destination_primary_unverified() {
    let w = World::new(true);
    *w.dst.guest_traffic.lock().unwrap() = GuestUse::Silent;
    let report = w.run(&plan(true, true)).await.expect("migrates");
    assert_eq!(
        w.log_from("dst.vmm.plug_direct vf:dst-0000:3b:02.1")[..4],
        strs(&[
            "dst.vmm.plug_direct vf:dst-0000:3b:02.1",
            "dst.vf.wait_guest_traffic 10s",
            "dst.vf.route direct",
            "dst.switch.release_hold direct",
        ])
    );
    assert!(!w.log().contains(&"dst.vmm.unplug_direct 20s".to_string()));
    assert!(!w.log().contains(&"dst.vf.release".to_string()));
    assert_eq!(report.final_state.path(), Some(PathKind::Direct));
    assert_eq!(
        report.warnings,
        vec!["the direct path at the destination hostB is not verified: the guest sent nothing over either path within 10.0 s (idle); the MAC follows VF dst-0000:3b:02.1"]
    );
    assert_eq!(report.steps[5].outcome, StepOutcome::Warning);
}

#[tokio::test]
async fn unverified_primary_that_cannot_be_unplugged_keeps_the_mac() {
    let w = World::new(true);
    *w.dst.guest_traffic.lock().unwrap() = GuestUse::SyntheticOnly;
    w.dst.fail(
        "vmm.unplug_direct 20s",
        OpError::timeout("no DEVICE_DELETED"),
    );
    let report = w.run(&plan(true, true)).await.expect("migrates");
    assert_eq!(
        w.log_from("dst.vmm.unplug_direct 20s")[..3],
        strs(&[
            "dst.vmm.unplug_direct 20s",
            "dst.vf.route direct",
            "dst.switch.release_hold direct"
        ])
    );
    assert!(!w.log().contains(&"dst.vf.release".to_string()));
    assert_eq!(report.final_state.path(), Some(PathKind::Direct));
    assert!(report.warnings[0].contains("could not be unplugged again (no DEVICE_DELETED)"));
}

#[tokio::test]
async fn source_release_failures_are_warnings() {
    let w = World::new(true);
    w.src.fail(
        "vf.release",
        OpError::failed("FLR of 0000:3b:02.1 timed out"),
    );
    w.src.fail("vmm.stop", OpError::failed("SIGKILL: EPERM"));
    let report = w.run(&plan(true, true)).await.expect("migrates");
    assert_eq!(
        report.warnings,
        vec![
            "could not stop the migrated-away VMM at the source hostA: SIGKILL: EPERM",
            "could not release the VF at the source hostA: FLR of 0000:3b:02.1 timed out"
        ]
    );
    assert_eq!(report.steps[6].outcome, StepOutcome::Warning);
    assert_eq!(report.final_state.path(), Some(PathKind::Direct));
    assert_eq!(
        w.log().last().map(String::as_str),
        Some("src.switch.remove_port")
    );
}

#[tokio::test]
async fn switch_without_hold_is_a_warning_not_a_failure() {
    let w = World::new(true);
    w.src
        .fail("switch.hold", OpError::failed("unknown request hold"));
    let report = w.run(&plan(true, true)).await.expect("migrates");
    assert_eq!(report.steps[1].outcome, StepOutcome::Warning);
    // No hold taken at the source: none released there.
    assert!(!w
        .log()
        .iter()
        .any(|l| l.starts_with("src.switch.release_hold")));
    assert!(report.warnings[0].starts_with("the switch at the source hostA cannot hold"));
}

#[tokio::test]
async fn vm_without_direct_paths_skips_steer_unplug_and_plug() {
    let w = World::new(false);
    let report = w.run(&plan(false, false)).await.expect("migrates");
    assert_eq!(
        w.log(),
        strs(&[
            "dst.switch.prepare_port 52:54:00:12:34:56",
            "dst.vmm.start_incoming",
            ARM,
            "src.vmm.migrate tcp:dst:4444#vm1",
            "dst.vmm.confirm_running",
            "dst.switch.announce",
            FORWARD[0],
            FORWARD[1],
            FORWARD[2],
            FORWARD[3],
            "src.vmm.stop",
            "src.switch.remove_port",
        ])
    );
    let outcomes: Vec<StepOutcome> = report.steps.iter().map(|s| s.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            StepOutcome::Done,
            StepOutcome::Skipped,
            StepOutcome::Skipped,
            StepOutcome::Done,
            StepOutcome::Done,
            StepOutcome::Skipped,
            StepOutcome::Done
        ]
    );
    assert_eq!(report.final_state.path(), Some(PathKind::Synthetic));
}

#[tokio::test]
async fn migration_failure_without_a_source_direct_path_touches_no_vf() {
    let w = World::new(false);
    *w.src.migrate.lock().unwrap() = MigrateMode::Fail(OpError::failed("boom"));
    let err = w.run(&plan(false, true)).await.expect_err("fails");
    assert_eq!(
        w.log_from("dst.vmm.stop"),
        concat(&[&DEST_TEARDOWN, &[SRC_HOLD_BACK]])
    );
    assert_eq!(
        err.final_state,
        FinalState::Source {
            host: "hostA".to_string(),
            path: PathKind::Synthetic
        }
    );
}

#[test]
fn a_second_migration_of_the_same_vm_is_refused() {
    let reg = InFlight::new();
    let mut guard = reg.begin("vm1", "migration").expect("free");
    guard.keep(String::from("pretend file lock"));
    let err = reg.begin("vm1", "drill").expect_err("busy");
    assert_eq!(
        err.to_string(),
        "VM vm1 is busy: a migration is in progress; wait for it to finish or cancel it"
    );
    assert_eq!(reg.current("vm1").as_deref(), Some("migration"));
    // Another VM is independent.
    let other = reg.begin("vm2", "drill").expect("free");
    assert_eq!(
        reg.list(),
        vec![
            ("vm1".to_string(), "migration".to_string()),
            ("vm2".to_string(), "drill".to_string())
        ]
    );
    drop(other);
    drop(guard);
    assert_eq!(reg.current("vm1"), None);
    assert!(reg.begin("vm1", "migration").is_ok());
}

#[tokio::test]
async fn a_guard_for_another_vm_is_refused() {
    let w = World::new(true);
    let guard = w.registry.begin("vm2", "migration").expect("free");
    let p = plan(true, true);
    let m = LiveMigration::new(
        &p,
        Host {
            name: "hostA",
            vmm: &w.src,
            vf: &w.src,
            switch: &w.src,
        },
        Host {
            name: "hostB",
            vmm: &w.dst,
            vf: &w.dst,
            switch: &w.dst,
        },
    );
    let err = m.run(&guard).await.expect_err("refused");
    assert_eq!(
        err.cause.message,
        "the in-flight guard held is for VM vm2, not vm1"
    );
    assert!(w.log().is_empty());
}

#[test]
fn the_run_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let w = World::new(true);
    let p = plan(true, true);
    let guard = w.registry.begin("vm1", "migration").expect("free");
    let m = LiveMigration::new(
        &p,
        Host {
            name: "hostA",
            vmm: &w.src,
            vf: &w.src,
            switch: &w.src,
        },
        Host {
            name: "hostB",
            vmm: &w.dst,
            vf: &w.dst,
            switch: &w.dst,
        },
    );
    let fut = m.run(&guard);
    assert_send(&fut);
}

#[test]
fn op_error_from_error_keeps_the_chain() {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);
    let e = Outer(std::io::Error::other("inner"));
    let op = OpError::from_error(OpErrorKind::Gone, &e);
    assert_eq!(op, OpError::gone("outer: inner"));
}

#[tokio::test]
async fn held_frames_that_cannot_be_delivered_are_a_warning_not_a_failure() {
    let w = World::new(true);
    w.dst.fail(
        "switch.inject 01,02",
        OpError::unavailable("no VM port named vm1"),
    );
    let report = w.run(&plan(true, true)).await.expect("migrates");
    assert_eq!(report.steps[4].step, Step::Announce);
    assert_eq!(report.steps[4].outcome, StepOutcome::Warning);
    assert_eq!(report.forwarded_frames, 0);
    assert_eq!(
        report.warnings,
        vec![
            "could not deliver 2 frame(s) held at the source hostA to the destination hostB: no VM port named vm1"
        ]
    );
    // No second part is taken; the source's port goes with what is left.
    assert_eq!(
        w.log()
            .iter()
            .filter(|l| *l == "src.switch.take_held")
            .count(),
        1
    );
    assert_eq!(report.final_state.path(), Some(PathKind::Direct));
}

#[tokio::test]
async fn a_source_switch_that_cannot_arm_its_hold_is_a_warning_and_nothing_is_taken() {
    let w = World::new(true);
    w.src.fail(
        ARM.trim_start_matches("src."),
        OpError::failed("unknown field on_stop"),
    );
    let report = w.run(&plan(true, true)).await.expect("migrates");
    assert_eq!(report.steps[3].outcome, StepOutcome::Done);
    assert_eq!(report.forwarded_frames, 0);
    assert_eq!(
        report.warnings,
        vec![
            "could not arm the source switch's hold for the switch-over on hostA: unknown field on_stop; frames reaching it meanwhile are lost"
        ]
    );
    assert!(!w
        .log()
        .iter()
        .any(|l| l.contains("take_held") || l.contains("inject")));
}
