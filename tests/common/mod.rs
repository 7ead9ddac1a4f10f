//! Helpers shared by the integration tests.
#![allow(dead_code)]
use std::path::PathBuf;

/// The binary's Python helpers (the scripts it carries, run by the project's Python), for tests
/// that call the library functions that take a `PythonHelpers`.
#[path = "../../src/cli/python.rs"]
pub mod python;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The project venv's python (`scripts/setup.sh` makes it), when present.
pub fn python() -> Option<PathBuf> {
    let p = repo().join(".venv/bin/python");
    p.is_file().then_some(p)
}

/// The `cmh` binary under test: the one cargo built, or `$CMH_BIN` (to run these checks against
/// another build or an installed binary).
pub fn cmh() -> std::process::Command {
    match std::env::var_os("CMH_BIN") {
        Some(b) => std::process::Command::new(b),
        None => std::process::Command::new(env!("CARGO_BIN_EXE_cmh")),
    }
}
