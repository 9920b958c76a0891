//! The failover machine, fed by hand with observations at chosen instants.

use std::time::{Duration, Instant};

use super::*;

fn config(control: PrimaryControl) -> FailoverConfig {
    FailoverConfig {
        hold_down: Duration::from_secs(5),
        verify_timeout: Duration::from_secs(10),
        max_attempts: 2,
        control,
    }
}

fn at(t0: Instant, secs: f64) -> Instant {
    t0 + Duration::from_secs_f64(secs)
}

const fn route(route: Route) -> Action {
    Action::Route { route }
}

const LOST_LINK: Observation = Observation::DirectLost {
    cause: Loss::VfLinkDown,
};

#[test]
fn loss_then_recovery_with_replug() {
    let t0 = Instant::now();
    let mut m = FailoverMonitor::new("vm1", config(PrimaryControl::Replug), true);
    assert_eq!(m.path(), PathKind::Direct);

    let a = m.observe(at(t0, 0.0), LOST_LINK);
    assert_eq!(
        a,
        vec![
            route(Route::Synthetic),
            Action::UnplugPrimary,
            Action::Announce
        ]
    );
    assert_eq!(m.path(), PathKind::Synthetic);
    assert_eq!(m.primary(), Primary::Unplugged);

    assert!(m.observe(at(t0, 1.0), Observation::DirectBack).is_empty());
    // Not stable for the hold-down yet.
    assert!(m.observe(at(t0, 5.9), Observation::Tick).is_empty());
    let a = m.observe(at(t0, 6.0), Observation::Tick);
    assert_eq!(a, vec![route(Route::Both), Action::ReplugPrimary]);
    assert!(matches!(
        m.state(),
        FailoverState::Recovering {
            attempt: 1,
            cause: Some(Loss::VfLinkDown),
            ..
        }
    ));
    // Still synthetic until the guest uses the primary.
    assert_eq!(m.path(), PathKind::Synthetic);
    let a = m.observe(at(t0, 6.5), Observation::GuestOnPrimary);
    assert_eq!(a, vec![route(Route::Direct)]);
    assert_eq!(m.state(), &FailoverState::Direct);
    assert_eq!(m.primary(), Primary::Plugged);
    assert_eq!(m.flaps(), 0);
}

#[test]
fn loss_then_recovery_with_link_state() {
    let t0 = Instant::now();
    let mut m = FailoverMonitor::new("vm1", config(PrimaryControl::LinkState), true);
    let a = m.observe(
        at(t0, 0.0),
        Observation::DirectLost {
            cause: Loss::PfLinkDown,
        },
    );
    assert_eq!(
        a,
        vec![
            route(Route::Synthetic),
            Action::PrimaryLink { up: false },
            Action::Announce
        ]
    );
    assert_eq!(m.primary(), Primary::LinkDown);
    m.observe(at(t0, 2.0), Observation::DirectBack);
    let a = m.observe(at(t0, 7.0), Observation::Tick);
    assert_eq!(
        a,
        vec![route(Route::Both), Action::PrimaryLink { up: true }]
    );
    assert_eq!(
        m.observe(at(t0, 7.1), Observation::GuestOnPrimary),
        vec![route(Route::Direct)]
    );
}

#[test]
fn vf_removed_under_a_link_down_primary_is_unplugged() {
    let t0 = Instant::now();
    let mut m = FailoverMonitor::new("vm1", config(PrimaryControl::LinkState), true);
    m.observe(at(t0, 0.0), LOST_LINK);
    let a = m.observe(
        at(t0, 1.0),
        Observation::DirectLost {
            cause: Loss::VfRemoved,
        },
    );
    assert_eq!(a, vec![Action::UnplugPrimary]);
    assert_eq!(m.primary(), Primary::Unplugged);
    // Coming back means a re-plug now, not a link up.
    m.observe(at(t0, 2.0), Observation::DirectBack);
    assert_eq!(
        m.observe(at(t0, 7.0), Observation::Tick),
        vec![route(Route::Both), Action::ReplugPrimary]
    );
}

#[test]
fn primary_gone_needs_no_unplug() {
    let t0 = Instant::now();
    let mut m = FailoverMonitor::new("vm1", config(PrimaryControl::Replug), true);
    let a = m.observe(
        at(t0, 0.0),
        Observation::DirectLost {
            cause: Loss::PrimaryGone,
        },
    );
    assert_eq!(a, vec![route(Route::Synthetic), Action::Announce]);
    assert_eq!(m.primary(), Primary::Unplugged);
}

#[test]
fn flapping_direct_path_waits_for_a_stable_hold_down() {
    let t0 = Instant::now();
    let mut m = FailoverMonitor::new("vm1", config(PrimaryControl::Replug), true);
    m.observe(at(t0, 0.0), LOST_LINK);
    // Flaps every 2 s for 20 s: never stable for 5 s, never moves back.
    let mut t = 1.0;
    while t < 20.0 {
        assert!(m.observe(at(t0, t), Observation::DirectBack).is_empty());
        assert!(m.observe(at(t0, t + 1.0), Observation::Tick).is_empty());
        assert!(m.observe(at(t0, t + 1.5), LOST_LINK).is_empty());
        t += 2.0;
    }
    assert_eq!(m.flaps(), 10);
    assert_eq!(m.path(), PathKind::Synthetic);
    // Then it stays up: moves back 5 s after the last DirectBack only.
    m.observe(at(t0, 21.0), Observation::DirectBack);
    assert!(m.observe(at(t0, 25.0), Observation::Tick).is_empty());
    assert_eq!(
        m.observe(at(t0, 26.0), Observation::Tick),
        vec![route(Route::Both), Action::ReplugPrimary]
    );
    // A repeated DirectBack does not restart the hold-down.
    let mut m2 = FailoverMonitor::new("vm2", config(PrimaryControl::Replug), true);
    m2.observe(at(t0, 0.0), LOST_LINK);
    m2.observe(at(t0, 1.0), Observation::DirectBack);
    m2.observe(at(t0, 4.0), Observation::DirectBack);
    assert_eq!(
        m2.observe(at(t0, 6.0), Observation::Tick),
        vec![route(Route::Both), Action::ReplugPrimary]
    );
}

#[test]
fn loss_during_a_move_back_returns_to_synthetic() {
    let t0 = Instant::now();
    let mut m = FailoverMonitor::new("vm1", config(PrimaryControl::Replug), true);
    m.observe(at(t0, 0.0), LOST_LINK);
    m.observe(at(t0, 1.0), Observation::DirectBack);
    m.observe(at(t0, 6.0), Observation::Tick);
    let a = m.observe(at(t0, 6.2), LOST_LINK);
    assert_eq!(
        a,
        vec![
            route(Route::Synthetic),
            Action::UnplugPrimary,
            Action::Announce
        ]
    );
    assert!(matches!(
        m.state(),
        FailoverState::Synthetic {
            attempts: 1,
            back_since: None,
            ..
        }
    ));
}

#[test]
fn gives_up_after_max_attempts_without_guest_traffic() {
    let t0 = Instant::now();
    let mut m = FailoverMonitor::new("vm1", config(PrimaryControl::Replug), true);
    m.observe(at(t0, 0.0), LOST_LINK);
    m.observe(at(t0, 1.0), Observation::DirectBack);
    // Attempt 1 at 6 s, times out at 16 s.
    assert_eq!(
        m.observe(at(t0, 6.0), Observation::Tick),
        vec![route(Route::Both), Action::ReplugPrimary]
    );
    assert!(m.observe(at(t0, 15.9), Observation::Tick).is_empty());
    assert_eq!(
        m.observe(at(t0, 16.0), Observation::Tick),
        vec![route(Route::Synthetic), Action::UnplugPrimary]
    );
    assert!(matches!(
        m.state(),
        FailoverState::Synthetic { attempts: 1, .. }
    ));
    // Attempt 2 after another hold-down; the VMM refuses the re-plug.
    assert_eq!(
        m.observe(at(t0, 21.0), Observation::Tick),
        vec![route(Route::Both), Action::ReplugPrimary]
    );
    let a = m.observe(
        at(t0, 21.5),
        Observation::RecoveryFailed {
            reason: "device_add: Duplicate ID 'vf0'".to_string(),
        },
    );
    let reason = "VM vm1: gave up moving back to the direct path after 2 attempt(s): \
                  device_add: Duplicate ID 'vf0'; the VM stays on the synthetic path";
    assert_eq!(
        a,
        vec![
            route(Route::Synthetic),
            Action::UnplugPrimary,
            Action::GiveUp {
                reason: reason.to_string()
            }
        ]
    );
    assert_eq!(
        m.state(),
        &FailoverState::GaveUp {
            reason: reason.to_string()
        }
    );
    // Given up: nothing more until reset.
    assert!(m.observe(at(t0, 30.0), Observation::DirectBack).is_empty());
    assert!(m.observe(at(t0, 40.0), Observation::Tick).is_empty());
    m.reset(at(t0, 50.0));
    m.observe(at(t0, 50.0), Observation::DirectBack);
    assert_eq!(
        m.observe(at(t0, 55.0), Observation::Tick),
        vec![route(Route::Both), Action::ReplugPrimary]
    );
}

#[test]
fn verify_timeout_message_names_the_wait() {
    let t0 = Instant::now();
    let mut cfg = config(PrimaryControl::LinkState);
    cfg.max_attempts = 1;
    let mut m = FailoverMonitor::new("vm1", cfg, true);
    m.observe(at(t0, 0.0), LOST_LINK);
    m.observe(at(t0, 0.5), Observation::DirectBack);
    m.observe(at(t0, 5.5), Observation::Tick);
    let a = m.observe(at(t0, 15.5), Observation::Tick);
    assert_eq!(
        a,
        vec![
            route(Route::Synthetic),
            Action::PrimaryLink { up: false },
            Action::GiveUp {
                reason: "VM vm1: gave up moving back to the direct path after 1 attempt(s): \
                         the guest sent nothing over the primary within 10.0 s; \
                         the VM stays on the synthetic path"
                    .to_string()
            }
        ]
    );
}

#[test]
fn a_planned_operation_owns_the_vm() {
    let t0 = Instant::now();
    let mut m = FailoverMonitor::new("vm1", config(PrimaryControl::Replug), true);
    m.suspend();
    assert!(m.is_suspended());
    // The migration unplugs the VF: the monitor sees it go, and does nothing.
    assert!(m
        .observe(
            at(t0, 0.0),
            Observation::DirectLost {
                cause: Loss::PrimaryGone
            }
        )
        .is_empty());
    assert!(m.observe(at(t0, 100.0), Observation::Tick).is_empty());
    assert_eq!(m.state(), &FailoverState::Direct);
    // It ends on the direct path (the destination's VF) and that one works.
    assert!(m.observe(at(t0, 101.0), Observation::DirectBack).is_empty());
    assert!(m.resume(at(t0, 102.0), ResumeAt::Direct).is_empty());
    assert!(!m.is_suspended());
    assert_eq!(m.state(), &FailoverState::Direct);
}

#[test]
fn a_loss_seen_while_suspended_is_handled_on_resume() {
    let t0 = Instant::now();
    let mut m = FailoverMonitor::new("vm1", config(PrimaryControl::Replug), true);
    m.suspend();
    m.observe(
        at(t0, 1.0),
        Observation::DirectLost {
            cause: Loss::VfRemoved,
        },
    );
    let a = m.resume(at(t0, 2.0), ResumeAt::Direct);
    assert_eq!(
        a,
        vec![
            route(Route::Synthetic),
            Action::UnplugPrimary,
            Action::Announce
        ]
    );
}

#[test]
fn resumed_on_synthetic_moves_back_after_the_hold_down() {
    let t0 = Instant::now();
    let mut m = FailoverMonitor::new("vm1", config(PrimaryControl::Replug), true);
    m.suspend();
    // The operation left the VM on the synthetic path (e.g. the destination plug
    // was not verified) with a direct path available.
    assert!(m
        .resume(
            at(t0, 0.0),
            ResumeAt::Synthetic {
                direct_available: true
            }
        )
        .is_empty());
    assert!(matches!(
        m.state(),
        FailoverState::Synthetic { cause: None, .. }
    ));
    assert!(m.observe(at(t0, 4.0), Observation::Tick).is_empty());
    assert_eq!(
        m.observe(at(t0, 5.0), Observation::Tick),
        vec![route(Route::Both), Action::ReplugPrimary]
    );

    // Without one, it waits for DirectBack.
    let mut m = FailoverMonitor::new("vm1", config(PrimaryControl::Replug), true);
    m.suspend();
    m.resume(
        at(t0, 0.0),
        ResumeAt::Synthetic {
            direct_available: false,
        },
    );
    assert!(m.observe(at(t0, 60.0), Observation::Tick).is_empty());
}

#[test]
fn a_vm_without_a_direct_path_never_acts() {
    let t0 = Instant::now();
    let mut m = FailoverMonitor::new("vm1", config(PrimaryControl::Replug), false);
    assert_eq!(m.state(), &FailoverState::NoDirect);
    for (i, obs) in [
        LOST_LINK,
        Observation::DirectLost {
            cause: Loss::PfLinkDown,
        },
        Observation::DirectBack,
        Observation::GuestOnPrimary,
        Observation::RecoveryFailed {
            reason: "x".to_string(),
        },
        Observation::Tick,
    ]
    .into_iter()
    .enumerate()
    {
        assert!(m.observe(at(t0, i as f64 * 10.0), obs).is_empty());
    }
    assert_eq!(m.path(), PathKind::Synthetic);
    // A migration that ends without a direct path makes a VM one of these.
    let mut m = FailoverMonitor::new("vm2", config(PrimaryControl::Replug), true);
    m.suspend();
    assert!(m.resume(at(t0, 1.0), ResumeAt::NoDirect).is_empty());
    assert!(m.observe(at(t0, 2.0), LOST_LINK).is_empty());
}

#[test]
fn zero_hold_down_moves_back_on_direct_back() {
    let t0 = Instant::now();
    let mut cfg = config(PrimaryControl::Replug);
    cfg.hold_down = Duration::ZERO;
    let mut m = FailoverMonitor::new("vm1", cfg, true);
    m.observe(at(t0, 0.0), LOST_LINK);
    assert_eq!(
        m.observe(at(t0, 1.0), Observation::DirectBack),
        vec![route(Route::Both), Action::ReplugPrimary]
    );
}

#[test]
fn actions_serialize_for_logs() {
    let a = vec![
        route(Route::Synthetic),
        Action::PrimaryLink { up: false },
        Action::Announce,
    ];
    let json = serde_json::to_string(&a).expect("serializes");
    assert_eq!(
        json,
        r#"[{"action":"route","route":"synthetic"},{"action":"primary-link","up":false},{"action":"announce"}]"#
    );
}
