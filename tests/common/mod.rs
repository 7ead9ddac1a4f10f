//! Helpers shared by the integration tests.
#![allow(dead_code)]
use std::path::PathBuf;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The project venv's python (`scripts/setup.sh` makes it), when present.
pub fn python() -> Option<PathBuf> {
    let p = repo().join(".venv/bin/python");
    p.is_file().then_some(p)
}
