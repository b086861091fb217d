//! Running the built coremq-cli, and the client crate's scripted fake server.

#![allow(dead_code)]

// The client's tests own the fake server; the CLI speaks through the client,
// so the same script-driven stand-in serves both.
#[path = "../../../client/tests/common/fake_server.rs"]
pub mod fake_server;

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs coremq-cli with `args`, `stdin` as its standard input (so never a
/// terminal) and, of the COREMQ_ variables, only those in `env`.
pub fn cli(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coremq-cli"));
    for var in [
        "COREMQ_SERVER",
        "COREMQ_USER",
        "COREMQ_PASSWORD",
        "COREMQ_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run coremq-cli");
    // The command may exit without reading its input: a broken pipe is fine.
    let _ = child.stdin.take().expect("stdin").write_all(stdin);
    child.wait_with_output().expect("coremq-cli output")
}

/// Output bytes as text, for messages and searching.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
