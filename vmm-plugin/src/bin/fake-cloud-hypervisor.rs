//! `fake-cloud-hypervisor`: a stand-in for the `cloud-hypervisor` process, for tests
//! on machines without KVM (cloud-hypervisor needs it). It is a test double, built
//! only with the `test-utils` feature.
//!
//! It takes the command line [`vmm_plugin::ch::ch_argv`] builds:
//!
//! ```text
//! fake-cloud-hypervisor --api-socket path=<run_dir>/<name>.sock \
//!                       --event-monitor path=<run_dir>/<name>.events
//! ```
//!
//! (`--api-socket` and `--event-monitor` also take a bare path, as
//! cloud-hypervisor does; `fd=` is refused), serves
//! [`FakeChServer`](vmm_plugin::ch::fake::FakeChServer) on the API socket (an empty
//! VMM: the VM comes with `vm.create` and `vm.boot`), and writes event-monitor
//! records to the event file, starting with `vmm/starting` as cloud-hypervisor
//! does. Other options are ignored (the fake creates VMs only through the API) and
//! named on its output.
//!
//! Standard output carries, for the test to read: a line `fake-cloud-hypervisor:
//! pid <pid> argv <JSON array>`, then every API request as one JSON line
//! (`{"method", "endpoint", "body"}`), in order.
//!
//! It exits 0 after `vmm.shutdown` (answered first), after its VM migrated away,
//! and on SIGTERM or SIGINT (a booted VM shuts down first: events `vm/shutdown`,
//! `vmm/shutdown`); the API socket is removed. `--version` prints a
//! cloud-hypervisor-like version line. A bad command line exits 1 with the reason
//! on standard error.
//!
//! Migrations go between two fakes (see [`FakeChServer`]). The environment
//! variable `FAKE_CLOUD_HYPERVISOR_RECEIVE_FAULT` injects a destination fault
//! ([`ReceiveFault`](vmm_plugin::ch::fake::ReceiveFault)) once the source
//! connected: `refuse` (the migration is aborted, the VMM stays up), `crash` (the
//! process dies at once, exit status 1, no answer) or `crash-after` (it dies so
//! right after the migration completed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use vmm_plugin::ch::fake::{FakeChServer, ReceiveFault};

const NAME: &str = "fake-cloud-hypervisor";
const VERSION: &str = "cloud-hypervisor v48.0-fake";
/// The destination fault to inject, if any (`refuse`, `crash`, `crash-after`).
const RECEIVE_FAULT_ENV: &str = "FAKE_CLOUD_HYPERVISOR_RECEIVE_FAULT";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Version,
    Help,
    Serve(ServeArgs),
}

#[derive(Debug, PartialEq, Eq)]
struct ServeArgs {
    api_socket: PathBuf,
    event_monitor: Option<PathBuf>,
    /// Options the fake does not act on, with their values.
    ignored: Vec<String>,
}

fn usage() -> String {
    format!(
        "usage: {NAME} --api-socket path=<FILE> [--event-monitor path=<FILE>] [OPTIONS...]\n\
         A fake cloud-hypervisor for tests (no KVM): serves the REST API on the socket,\n\
         writes event-monitor records, ignores other options.\n"
    )
}

/// The file of an option value `path=<FILE>[,...]` or `<FILE>`.
fn path_value(option: &str, value: &str) -> Result<PathBuf, String> {
    let mut bare = None;
    for part in value.split(',') {
        if let Some(p) = part.strip_prefix("path=") {
            return non_empty(option, p);
        }
        if part.starts_with("fd=") {
            return Err(format!(
                "{option} {value}: fd= is not supported by the fake; give path=<FILE>"
            ));
        }
        if !part.contains('=') && bare.is_none() {
            bare = Some(part);
        }
    }
    match bare {
        Some(p) => non_empty(option, p),
        None => Err(format!("{option} {value}: want path=<FILE>")),
    }
}

fn non_empty(option: &str, p: &str) -> Result<PathBuf, String> {
    if p.is_empty() {
        Err(format!("{option}: empty path"))
    } else {
        Ok(PathBuf::from(p))
    }
}

fn parse(args: &[String]) -> Result<Command, String> {
    let mut api_socket = None;
    let mut event_monitor = None;
    let mut ignored = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        match arg.as_str() {
            "--version" | "-V" => return Ok(Command::Version),
            "--help" | "-h" => return Ok(Command::Help),
            _ => {}
        }
        let Some(option) = arg.strip_prefix("--") else {
            if arg.len() > 1 && arg.starts_with('-') {
                // A short flag (-v: verbosity).
                ignored.push(arg.clone());
                continue;
            }
            return Err(format!("unexpected argument {arg:?}"));
        };
        let (name, inline) = match option.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (option, None),
        };
        let value = match inline {
            Some(v) => Some(v),
            None if args.get(i).is_some_and(|v| !v.starts_with('-')) => {
                i += 1;
                Some(args[i - 1].clone())
            }
            None => None,
        };
        match (name, value) {
            ("api-socket", Some(v)) => api_socket = Some(path_value("--api-socket", &v)?),
            ("event-monitor", Some(v)) => {
                event_monitor = Some(path_value("--event-monitor", &v)?);
            }
            ("api-socket" | "event-monitor", None) => {
                return Err(format!("--{name} needs a value"));
            }
            (_, Some(v)) => ignored.push(format!("--{name} {v}")),
            (_, None) => ignored.push(format!("--{name}")),
        }
    }
    let api_socket = api_socket.ok_or_else(|| {
        "--api-socket path=<FILE> is required: the fake is driven through its API".to_owned()
    })?;
    Ok(Command::Serve(ServeArgs {
        api_socket,
        event_monitor,
        ignored,
    }))
}

async fn serve(args: ServeArgs, argv: &[String]) -> Result<&'static str, String> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    let fault = match std::env::var(RECEIVE_FAULT_ENV) {
        Ok(v) => Some(
            v.parse::<ReceiveFault>()
                .map_err(|e| format!("{RECEIVE_FAULT_ENV}: {e}"))?,
        ),
        Err(_) => None,
    };
    let argv_json = serde_json::to_string(argv).unwrap_or_default();
    println!("{NAME}: pid {} argv {argv_json}", std::process::id());
    for option in &args.ignored {
        println!("{NAME}: ignoring {option} (the fake creates VMs only through the API)");
    }
    if let Some(events) = &args.event_monitor {
        // cloud-hypervisor opens (creates) the file at start.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(events)
            .map_err(|e| format!("--event-monitor {}: {e}", events.display()))?;
    }
    let fake = FakeChServer::start_as_vmm(
        &args.api_socket,
        args.event_monitor.clone(),
        Some(Box::new(std::io::stdout())),
    )
    .await
    .map_err(|e| format!("cannot listen on {}: {e}", args.api_socket.display()))?;
    if let Some(f) = fault {
        println!("{NAME}: incoming migrations fail: {f:?} ({RECEIVE_FAULT_ENV})");
        fake.set_receive_fault(Some(f));
    }
    let why = tokio::select! {
        () = fake.wait_exit() => {
            if fake.crashed() {
                // Dead at once: no answer goes out, nothing is cleaned up.
                return Err(format!("crashed receiving a migration ({RECEIVE_FAULT_ENV})"));
            }
            if fake.config().is_none() && !fake.bodies("vm.send-migration").is_empty() {
                "migrated"
            } else {
                "vmm.shutdown"
            }
        }
        _ = term.recv() => {
            fake.terminate();
            "SIGTERM"
        }
        _ = int.recv() => {
            fake.terminate();
            "SIGINT"
        }
    };
    // Let the answer to vmm.shutdown go out before the process ends.
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(fake);
    Ok(why)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let command = match parse(argv.get(1..).unwrap_or_default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{NAME}: {e}\n{}", usage());
            return ExitCode::FAILURE;
        }
    };
    let args = match command {
        Command::Version => {
            println!("{VERSION}");
            return ExitCode::SUCCESS;
        }
        Command::Help => {
            print!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Command::Serve(a) => a,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{NAME}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, &argv)) {
        Ok(why) => {
            println!("{NAME}: exiting ({why})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{NAME}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn parses_the_argv_of_ch_argv() {
        let c = parse(&args(&[
            "--api-socket",
            "path=/run/vm1.sock",
            "--event-monitor",
            "path=/run/vm1.events",
        ]));
        assert_eq!(
            c,
            Ok(Command::Serve(ServeArgs {
                api_socket: PathBuf::from("/run/vm1.sock"),
                event_monitor: Some(PathBuf::from("/run/vm1.events")),
                ignored: Vec::new(),
            }))
        );
    }

    #[test]
    fn bare_paths_inline_values_and_ignored_options() {
        let c = parse(&args(&[
            "--api-socket=/run/a.sock",
            "--kernel",
            "/boot/vmlinux",
            "-V",
        ]));
        assert_eq!(c, Ok(Command::Version));
        let c = parse(&args(&[
            "--api-socket=/run/a.sock",
            "--kernel",
            "/boot/vmlinux",
            "stray",
        ]));
        assert_eq!(c, Err("unexpected argument \"stray\"".to_owned()));
        let c = parse(&args(&[
            "--api-socket=/run/a.sock",
            "--kernel",
            "/boot/vmlinux",
            "--serial",
            "tty",
            "-v",
        ]));
        assert_eq!(
            c,
            Ok(Command::Serve(ServeArgs {
                api_socket: PathBuf::from("/run/a.sock"),
                event_monitor: None,
                ignored: vec![
                    "--kernel /boot/vmlinux".into(),
                    "--serial tty".into(),
                    "-v".into(),
                ],
            }))
        );
    }

    #[test]
    fn refuses_a_missing_socket_or_fd() {
        let e = parse(&args(&["--event-monitor", "path=/x"])).unwrap_err();
        assert!(e.contains("--api-socket path=<FILE> is required"), "{e}");
        let e = parse(&args(&["--api-socket", "fd=3"])).unwrap_err();
        assert!(e.contains("fd= is not supported"), "{e}");
        let e = parse(&args(&["--api-socket"])).unwrap_err();
        assert!(e.contains("needs a value"), "{e}");
        let e = parse(&args(&["--api-socket", "path="])).unwrap_err();
        assert!(e.contains("empty path"), "{e}");
    }
}
