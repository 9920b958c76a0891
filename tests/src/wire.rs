//! The "wire": a private network namespace standing in for the physical network behind
//! the switch's uplink.
//!
//! ```text
//!  root netns                         wire netns anw-<pid>-<n>
//!  switch uplink = anw<pid>u<n> <--veth--> up0 -- br0 10.99.0.1/24 (02:00:00:00:99:01)
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::cmd::{run_cmd, run_ok, CmdOutput};
use crate::lab::log;
use crate::{LabError, PingStats, Result};

/// Address of the wire's bridge.
pub const WIRE_IP: &str = "10.99.0.1";
/// Fixed MAC of the wire's bridge (a changing bridge MAC silently breaks guests' ARP entries).
pub const WIRE_MAC: &str = "02:00:00:00:99:01";
/// Static busybox, for host-side `ping` (iputils is not installed on the lab machines).
pub(crate) const BUSYBOX: &str = "/bin/busybox";

const PEER: &str = "up0";
const IP_TIMEOUT: Duration = Duration::from_secs(20);
/// Default timeout of [`Wire::exec`].
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A private netns with bridge `br0` and a veth into the root namespace; removed on drop.
#[derive(Debug)]
pub struct Wire {
    netns: String,
    uplink: String,
}

impl Wire {
    /// Creates the netns, `br0` (10.99.0.1/24, fixed MAC, STP off, forward delay 0, no
    /// IPv6) and the veth pair. The root end ([`Wire::uplink`]) is up, without addresses.
    pub fn create() -> Result<Wire> {
        reap_stale();
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let wire = Wire {
            netns: format!("anw-{pid}-{n}"),
            uplink: format!("anw{pid}u{n}"),
        };
        if wire.uplink.len() > 15 {
            return Err(LabError(format!("interface name {} too long", wire.uplink)));
        }
        // From here on, Drop removes whatever was created.
        wire.setup()
            .map_err(|e| LabError(format!("wire setup: {e}")))?;
        log(format!(
            "wire: netns {} br0 {WIRE_IP}/24, uplink {} (root ns)",
            wire.netns, wire.uplink
        ));
        Ok(wire)
    }

    fn setup(&self) -> Result<()> {
        let ns = self.netns.as_str();
        let up = self.uplink.as_str();
        ip(&["netns", "add", ns])?;
        // Quiet wire: no IPv6 router solicitations or MLD reports on any of its interfaces.
        self.exec_ok(&[
            "sh",
            "-c",
            "for k in all default; do echo 1 > /proc/sys/net/ipv6/conf/$k/disable_ipv6; done 2>/dev/null; true",
        ])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            ns,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        ip(&["-n", ns, "link", "set", "br0", "address", WIRE_MAC])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{WIRE_IP}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", ns, "link", "set", "br0", "up"])?;
        ip(&[
            "link", "add", up, "type", "veth", "peer", "name", PEER, "netns", ns,
        ])?;
        let v6 = format!("/proc/sys/net/ipv6/conf/{up}/disable_ipv6");
        if Path::new(&v6).exists() {
            std::fs::write(&v6, "1").map_err(|e| LabError(format!("write {v6}: {e}")))?;
        }
        ip(&["link", "set", up, "up"])?;
        ip(&["-n", ns, "link", "set", PEER, "master", "br0"])?;
        ip(&["-n", ns, "link", "set", PEER, "up"])?;
        Ok(())
    }

    /// Name of the wire's network namespace.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The veth end in the root namespace: give it to the switch as its uplink.
    pub fn uplink(&self) -> &str {
        &self.uplink
    }

    /// Runs `args` inside the wire netns (60 s timeout), e.g.
    /// `["busybox", "ping", "-c", "3", "-W", "1", "10.99.0.2"]`.
    pub fn exec(&self, args: &[&str]) -> Result<CmdOutput> {
        self.exec_timeout(args, EXEC_TIMEOUT)
    }

    /// [`Wire::exec`] with an explicit timeout.
    pub fn exec_timeout(&self, args: &[&str], timeout: Duration) -> Result<CmdOutput> {
        let mut argv = vec!["ip", "netns", "exec", self.netns.as_str()];
        argv.extend_from_slice(args);
        run_cmd(&argv, timeout)
    }

    fn exec_ok(&self, args: &[&str]) -> Result<String> {
        let mut argv = vec!["ip", "netns", "exec", self.netns.as_str()];
        argv.extend_from_slice(args);
        run_ok(&argv, IP_TIMEOUT)
    }

    /// Pings `ip` from the bridge address: `count` requests 0.2 s apart, waiting `wait_s`
    /// seconds for late replies.
    pub fn ping(&self, ip: &str, count: u32, wait_s: u32) -> Result<PingStats> {
        let (c, w) = (count.to_string(), wait_s.to_string());
        let args = [BUSYBOX, "ping", "-c", &c, "-i", "0.2", "-W", &w, ip];
        let timeout = Duration::from_secs(u64::from(count) + u64::from(wait_s) + 10);
        let out = self.exec_timeout(&args, timeout)?;
        PingStats::parse(&out.output)
            .ok_or_else(|| LabError(format!("wire: no ping summary in: {}", out.output.trim())))
    }

    /// A "host": its own netns holding one end of a new veth (`uplink0`), the other
    /// end on the wire's bridge. Run a switch in it with that uplink to stand for a
    /// second hypervisor on the same wire. Removed on drop.
    pub fn add_host(&self) -> Result<Host> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let host = Host {
            netns: format!("anw-{pid}-{n}h"),
            uplink: "uplink0".to_string(),
        };
        let peer = format!("anw{pid}p{n}");
        if peer.len() > 15 {
            return Err(LabError(format!("interface name {peer} too long")));
        }
        let ns = host.netns.as_str();
        ip(&["netns", "add", ns])?;
        run_ok(
            &[
                "ip",
                "netns",
                "exec",
                ns,
                "sh",
                "-c",
                "for k in all default; do echo 1 > /proc/sys/net/ipv6/conf/$k/disable_ipv6; done 2>/dev/null; true",
            ],
            IP_TIMEOUT,
        )?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            ns,
            "link",
            "add",
            "uplink0",
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &self.netns,
        ])?;
        ip(&["-n", ns, "link", "set", "uplink0", "up"])?;
        ip(&["-n", &self.netns, "link", "set", &peer, "master", "br0"])?;
        ip(&["-n", &self.netns, "link", "set", &peer, "up"])?;
        log(format!("wire: host netns {ns}, uplink0 <-> {peer} on br0"));
        Ok(host)
    }

    /// `bridge fdb` of br0 without the permanent/multicast entries (for debugging).
    pub fn fdb(&self) -> String {
        self.exec(&["bridge", "fdb", "show", "br", "br0", "dynamic"])
            .map(|o| o.output)
            .unwrap_or_else(|e| e.0)
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        // Deleting either veth end deletes both; the netns may already hold none of them.
        let _ = ip(&["link", "del", &self.uplink]);
        let _ = ip(&["netns", "del", &self.netns]);
        log(format!(
            "wire: removed netns {} and {}",
            self.netns, self.uplink
        ));
    }
}

/// A host netns attached to the wire ([`Wire::add_host`]); deleted on drop.
#[derive(Debug)]
pub struct Host {
    netns: String,
    uplink: String,
}

impl Host {
    /// The host's netns.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Its uplink interface (inside its netns).
    pub fn uplink(&self) -> &str {
        &self.uplink
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Deleting the netns deletes its veth end, and with it the bridge's.
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

fn ip(args: &[&str]) -> Result<String> {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    run_ok(&argv, IP_TIMEOUT)
}

fn pid_alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

/// Removes wires left behind by test processes that no longer exist (killed before Drop).
fn reap_stale() {
    if let Ok(out) = run_cmd(&["ip", "netns", "list"], IP_TIMEOUT) {
        for ns in out
            .output
            .lines()
            .filter_map(|l| l.split_whitespace().next())
        {
            if let Some(pid) = ns.strip_prefix("anw-").and_then(|r| r.split('-').next()) {
                if !pid_alive(pid) {
                    let _ = ip(&["netns", "del", ns]);
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("anw").and_then(|r| r.split('u').next()) {
                if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !pid_alive(pid) {
                    let _ = ip(&["link", "del", &name]);
                }
            }
        }
    }
}
