//! Host-reserved failover: a per-VM state machine, fed with observations of the
//! VM's direct path, returning the actions that keep the VM's traffic flowing —
//! on the synthetic path while the direct path is gone, back on the direct path
//! once it has been stable for a while and the guest uses it again.
//!
//! Pure logic: the caller watches the host (VF removal, VF and PF link, the VMM's
//! events, the VF's counters), feeds [`Observation`]s with the instant they were
//! seen, and carries out the [`Action`]s in the order returned. Timers are
//! [`Observation::Tick`]s: the caller ticks at least as often as the shortest
//! duration of its [`FailoverConfig`].
//!
//! # States
//!
//! ```text
//!            DirectLost                    hold_down elapsed since DirectBack
//!  Direct ─────────────▶ Synthetic ───────────────────────────────────▶ Recovering
//!    ▲                    ▲   │ DirectLost (flap): wait for DirectBack again     │
//!    │                    │   └──────────────                                   │
//!    │                    └──────── verify_timeout, or RecoveryFailed ──────────┤
//!    │                               (after max_attempts: GaveUp)               │
//!    └──────────────────────────── GuestOnPrimary ──────────────────────────────┘
//! ```
//!
//! * Loss: [`Route::Synthetic`] (the embedded switch sends the MAC to the switch),
//!   then the guest's primary is taken out of the way (its link set down, or it is
//!   unplugged: `net_failover` ignores the standby while a primary is registered),
//!   then [`Action::Announce`].
//! * Debounce: the direct path must stay back for [`FailoverConfig::hold_down`]
//!   before a move back starts; a loss in between starts the wait again.
//! * Move back: [`Route::Both`], the primary's link up (or re-plug), and once the
//!   guest is seen sending over the primary, [`Route::Direct`]. Without that
//!   evidence within [`FailoverConfig::verify_timeout`] the attempt is undone;
//!   after [`FailoverConfig::max_attempts`] the machine gives up (the VM stays on
//!   the synthetic path) until [`FailoverMonitor::reset`].
//! * A VM without a direct path never acts.
//! * Planned operations (live migration, drills, `vm enable|disable`) own the VM:
//!   [`FailoverMonitor::suspend`] before, [`FailoverMonitor::resume`] after, saying
//!   where the operation left the VM. Observations while suspended produce no
//!   action; the last availability seen is taken into account on resume.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::live::{PathKind, Route};

/// Why the direct path is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// The host removed the VF (or the lab stand-in's tap is gone).
    VfRemoved,
    /// The VF's link went down (or the stand-in's tap).
    VfLinkDown,
    /// The PF lost its link to the wire.
    PfLinkDown,
    /// The VMM reports the primary gone from the guest (e.g. `DEVICE_DELETED`
    /// nobody asked for).
    PrimaryGone,
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Loss::VfRemoved => "VF removed",
            Loss::VfLinkDown => "VF link down",
            Loss::PfLinkDown => "PF link down",
            Loss::PrimaryGone => "primary gone from the guest",
        })
    }
}

/// What the caller saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "observation", rename_all = "kebab-case")]
pub enum Observation {
    /// The direct path stopped working.
    DirectLost {
        /// Why.
        cause: Loss,
    },
    /// The direct path works again (VF present, VF and PF link up).
    DirectBack,
    /// The guest sends over the primary (its counters moved).
    GuestOnPrimary,
    /// Carrying out a move back failed (e.g. the VMM refused the re-plug).
    RecoveryFailed {
        /// Why.
        reason: String,
    },
    /// Time passes.
    Tick,
}

/// How the guest's primary is taken out of the way on a loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrimaryControl {
    /// Set the primary's link down (and up on the way back): quick, where the VMM
    /// and `net_failover` handle it.
    LinkState,
    /// Unplug the primary (and re-plug it): always makes the guest use the standby.
    Replug,
}

/// What the caller must do, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Steer the VM's MAC in the embedded switch.
    Route {
        /// Where to.
        route: Route,
    },
    /// Announce the VM's MAC on the switch's uplinks (RARP / GUEST_ANNOUNCE).
    Announce,
    /// Tell the VMM to set the primary's link (QMP `set_link`, VF link state).
    PrimaryLink {
        /// Up or down.
        up: bool,
    },
    /// Tell the VMM to unplug the primary.
    UnplugPrimary,
    /// Tell the VMM to plug the primary again (with a VF that works).
    ReplugPrimary,
    /// Stop trying to move back; the VM stays on the synthetic path.
    GiveUp {
        /// Why, for the operator.
        reason: String,
    },
}

/// Tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverConfig {
    /// How long the direct path must stay back before moving back to it.
    pub hold_down: Duration,
    /// How long a move back may take until the guest is seen on the primary.
    pub verify_timeout: Duration,
    /// Moves back tried before giving up.
    pub max_attempts: u32,
    /// How the primary is taken out of the way.
    pub control: PrimaryControl,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            hold_down: Duration::from_secs(5),
            verify_timeout: Duration::from_secs(10),
            max_attempts: 3,
            control: PrimaryControl::Replug,
        }
    }
}

/// The guest's primary, as the machine left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Primary {
    /// Plugged, link up.
    Plugged,
    /// Plugged, link set down.
    LinkDown,
    /// Unplugged.
    Unplugged,
}

/// Where the machine is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailoverState {
    /// The VM has no direct path: nothing to do.
    NoDirect,
    /// The direct path carries the VM.
    Direct,
    /// The synthetic path carries the VM.
    Synthetic {
        /// Since when.
        since: Instant,
        /// Why (`None`: a planned operation left it there).
        cause: Option<Loss>,
        /// Since when the direct path is back, if it is.
        back_since: Option<Instant>,
        /// Failed moves back so far.
        attempts: u32,
    },
    /// Moving back: the primary is up again, waiting for the guest to use it.
    Recovering {
        /// Since when.
        since: Instant,
        /// Which attempt (1-based).
        attempt: u32,
        /// The loss this recovers from.
        cause: Option<Loss>,
    },
    /// Gave up moving back; the VM stays on the synthetic path.
    GaveUp {
        /// Why.
        reason: String,
    },
}

/// Where a planned operation left the VM, for [`FailoverMonitor::resume`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResumeAt {
    /// On its direct path.
    Direct,
    /// On the synthetic path, with its primary unplugged.
    Synthetic {
        /// Whether a direct path is available to move back to.
        direct_available: bool,
    },
    /// The VM has no direct path any more.
    NoDirect,
}

/// The failover state machine of one VM.
#[derive(Debug, Clone)]
pub struct FailoverMonitor {
    vm: String,
    config: FailoverConfig,
    state: FailoverState,
    primary: Primary,
    /// `Some`: suspended; holds the last direct-path availability seen meanwhile
    /// (`Some(Err(cause))` lost, `Some(Ok(()))` back).
    suspended: Option<Option<Result<(), Loss>>>,
    flaps: u64,
}

impl FailoverMonitor {
    /// A machine for `vm`, on its direct path (`has_direct`) or without one.
    pub fn new(vm: impl Into<String>, config: FailoverConfig, has_direct: bool) -> Self {
        FailoverMonitor {
            vm: vm.into(),
            config,
            state: if has_direct {
                FailoverState::Direct
            } else {
                FailoverState::NoDirect
            },
            primary: if has_direct {
                Primary::Plugged
            } else {
                Primary::Unplugged
            },
            suspended: None,
            flaps: 0,
        }
    }

    /// The VM.
    pub fn vm(&self) -> &str {
        &self.vm
    }

    /// The state.
    pub fn state(&self) -> &FailoverState {
        &self.state
    }

    /// The guest's primary as the machine left it.
    pub fn primary(&self) -> Primary {
        self.primary
    }

    /// Which path carries the VM (during a move back: still the synthetic one).
    pub fn path(&self) -> PathKind {
        match self.state {
            FailoverState::Direct => PathKind::Direct,
            _ => PathKind::Synthetic,
        }
    }

    /// Whether a planned operation owns the VM.
    pub fn is_suspended(&self) -> bool {
        self.suspended.is_some()
    }

    /// How often the direct path came back and was lost again before a move back.
    pub fn flaps(&self) -> u64 {
        self.flaps
    }

    /// A planned operation takes the VM: no actions until [`resume`](Self::resume).
    pub fn suspend(&mut self) {
        if self.suspended.is_none() {
            self.suspended = Some(None);
        }
    }

    /// The planned operation is over and left the VM `at`; returns what to do now
    /// (e.g. a loss seen while suspended, on a VM left on its direct path).
    pub fn resume(&mut self, now: Instant, at: ResumeAt) -> Vec<Action> {
        let seen = self.suspended.take().flatten();
        match at {
            ResumeAt::NoDirect => {
                self.state = FailoverState::NoDirect;
                self.primary = Primary::Unplugged;
                Vec::new()
            }
            ResumeAt::Direct => {
                self.state = FailoverState::Direct;
                self.primary = Primary::Plugged;
                match seen {
                    Some(Err(cause)) => self.lose(now, cause, 0),
                    _ => Vec::new(),
                }
            }
            ResumeAt::Synthetic { direct_available } => {
                self.primary = Primary::Unplugged;
                let available = match seen {
                    Some(r) => r.is_ok(),
                    None => direct_available,
                };
                self.state = FailoverState::Synthetic {
                    since: now,
                    cause: None,
                    back_since: available.then_some(now),
                    attempts: 0,
                };
                self.poll(now)
            }
        }
    }

    /// Starts over after giving up: the VM is on the synthetic path with its
    /// primary out of the way; the next [`Observation::DirectBack`] starts a move
    /// back.
    pub fn reset(&mut self, now: Instant) {
        if let FailoverState::GaveUp { .. } = self.state {
            self.state = FailoverState::Synthetic {
                since: now,
                cause: None,
                back_since: None,
                attempts: 0,
            };
        }
    }

    /// Feeds what was seen at `now`; returns what to do, in order.
    pub fn observe(&mut self, now: Instant, obs: Observation) -> Vec<Action> {
        if let Some(seen) = &mut self.suspended {
            match obs {
                Observation::DirectLost { cause } => *seen = Some(Err(cause)),
                Observation::DirectBack => *seen = Some(Ok(())),
                _ => {}
            }
            return Vec::new();
        }
        let mut actions = match (&mut self.state, obs) {
            (FailoverState::NoDirect | FailoverState::GaveUp { .. }, _) => Vec::new(),
            (FailoverState::Direct, Observation::DirectLost { cause }) => self.lose(now, cause, 0),
            (FailoverState::Direct, _) => Vec::new(),
            (
                FailoverState::Synthetic {
                    back_since, cause, ..
                },
                Observation::DirectLost { cause: c },
            ) => {
                if back_since.take().is_some() {
                    self.flaps += 1;
                }
                if cause.is_none() {
                    *cause = Some(c);
                }
                // A VF removed under a primary whose link is only down: unplug
                // what is left of it.
                if c == Loss::VfRemoved && self.primary == Primary::LinkDown {
                    self.primary = Primary::Unplugged;
                    vec![Action::UnplugPrimary]
                } else {
                    if c == Loss::PrimaryGone {
                        self.primary = Primary::Unplugged;
                    }
                    Vec::new()
                }
            }
            (FailoverState::Synthetic { back_since, .. }, Observation::DirectBack) => {
                back_since.get_or_insert(now);
                Vec::new()
            }
            (FailoverState::Synthetic { .. }, _) => Vec::new(),
            (FailoverState::Recovering { attempt, .. }, Observation::DirectLost { cause }) => {
                let attempt = *attempt;
                self.lose(now, cause, attempt)
            }
            (FailoverState::Recovering { .. }, Observation::GuestOnPrimary) => {
                self.state = FailoverState::Direct;
                self.primary = Primary::Plugged;
                vec![Action::Route {
                    route: Route::Direct,
                }]
            }
            (FailoverState::Recovering { .. }, Observation::RecoveryFailed { reason }) => {
                self.fail_attempt(now, reason)
            }
            (FailoverState::Recovering { .. }, _) => Vec::new(),
        };
        actions.extend(self.poll(now));
        actions
    }

    /// The primary out of the way for `cause`, MAC to the switch, announce.
    fn lose(&mut self, now: Instant, cause: Loss, attempts: u32) -> Vec<Action> {
        let mut actions = vec![Action::Route {
            route: Route::Synthetic,
        }];
        match (cause, self.config.control) {
            (Loss::PrimaryGone, _) => self.primary = Primary::Unplugged,
            (Loss::VfRemoved, _) | (_, PrimaryControl::Replug) => {
                if self.primary != Primary::Unplugged {
                    actions.push(Action::UnplugPrimary);
                }
                self.primary = Primary::Unplugged;
            }
            (Loss::VfLinkDown | Loss::PfLinkDown, PrimaryControl::LinkState) => {
                if self.primary == Primary::Plugged {
                    actions.push(Action::PrimaryLink { up: false });
                    self.primary = Primary::LinkDown;
                }
            }
        }
        actions.push(Action::Announce);
        self.state = FailoverState::Synthetic {
            since: now,
            cause: Some(cause),
            back_since: None,
            attempts,
        };
        actions
    }

    /// A move back did not work: undo it, retry later or give up.
    fn fail_attempt(&mut self, now: Instant, reason: String) -> Vec<Action> {
        let FailoverState::Recovering { attempt, cause, .. } = self.state else {
            return Vec::new();
        };
        let mut actions = vec![Action::Route {
            route: Route::Synthetic,
        }];
        match self.config.control {
            PrimaryControl::LinkState if self.primary == Primary::Plugged => {
                actions.push(Action::PrimaryLink { up: false });
                self.primary = Primary::LinkDown;
            }
            _ => {
                actions.push(Action::UnplugPrimary);
                self.primary = Primary::Unplugged;
            }
        }
        if attempt >= self.config.max_attempts {
            let reason = format!(
                "VM {}: gave up moving back to the direct path after {attempt} attempt(s): {reason}; the VM stays on the synthetic path",
                self.vm
            );
            actions.push(Action::GiveUp {
                reason: reason.clone(),
            });
            self.state = FailoverState::GaveUp { reason };
        } else {
            // The direct path is still there: try again after another hold-down.
            self.state = FailoverState::Synthetic {
                since: now,
                cause,
                back_since: Some(now),
                attempts: attempt,
            };
        }
        actions
    }

    /// Timers: start a move back, or fail one that takes too long.
    fn poll(&mut self, now: Instant) -> Vec<Action> {
        match self.state {
            FailoverState::Synthetic {
                back_since: Some(back),
                attempts,
                cause,
                ..
            } if now.saturating_duration_since(back) >= self.config.hold_down => {
                let attempt = attempts + 1;
                let mut actions = vec![Action::Route { route: Route::Both }];
                actions.push(if self.primary == Primary::LinkDown {
                    Action::PrimaryLink { up: true }
                } else {
                    Action::ReplugPrimary
                });
                self.primary = Primary::Plugged;
                self.state = FailoverState::Recovering {
                    since: now,
                    attempt,
                    cause,
                };
                actions
            }
            FailoverState::Recovering { since, .. }
                if now.saturating_duration_since(since) >= self.config.verify_timeout =>
            {
                let reason = format!(
                    "the guest sent nothing over the primary within {:.1} s",
                    self.config.verify_timeout.as_secs_f64()
                );
                self.fail_attempt(now, reason)
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
