//! The Python package's test suite (`python/tests`, pytest) against this build of cmh: the
//! package's metrics, encoders and readers are checked against `cmh eval`, `cmh encode`,
//! `cmh search` and `cmh train`'s run folders, and the scripts in `scripts/` that use it are run.

use std::process::Command;

mod common;
use common::{python, repo};

#[test]
fn python_package_tests_pass() {
    let Some(py) = python() else {
        eprintln!("skipped: no .venv (run scripts/setup.sh)");
        return;
    };
    let has_pytest = Command::new(&py).args(["-c", "import pytest"]).status().is_ok_and(|s| s.success());
    assert!(has_pytest, "pytest is not installed in .venv; run scripts/setup.sh");
    let out = Command::new(&py)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "python/tests"])
        .current_dir(repo())
        .env("CMH_BIN", env!("CARGO_BIN_EXE_cmh"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pytest python/tests failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{}", stdout.lines().last().unwrap_or_default());
}
