//! Running the `accelnet` binary from the CLI test files.

use std::process::{Command, Output};

/// Runs `accelnet ARGS...` to completion (without RUST_LOG, so stderr holds only
/// what a user sees).
pub fn accelnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_accelnet"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the accelnet binary runs")
}

/// Its standard output.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Its standard error.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
