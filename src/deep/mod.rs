//! Deep methods on tch (libtorch): AlexNet, SDCH, CZHash, AgNet.
//!
//! - [`alexnet`]: torchvision-compatible AlexNet; `mlp`: the bag-of-words / feature-mode MLP;
//! - [`pretrained`]: torchvision checkpoints (`.pth` via [`pth`], or safetensors);
//! - [`trainer`]: device choice, seeded batches, progress, logs, an optimiser whose state is
//!   checkpointed, and atomic resumable checkpoints — shared by every deep method;
//! - [`sdch`]: Semantic Deep Cross-modal Hashing;
//! - [`features`]: `cmh features` (fc7 image features into a new bundle).
//!
//! Loss sums are written `loss = loss + term`, not `loss += term`: on a tch `Tensor`, `+=` is the
//! in-place `add_`, which autograd refuses on a tensor an earlier operation saved for backward.
#![allow(clippy::assign_op_pattern)]

pub mod agnet;
pub mod alexnet;
pub mod czhash;
pub mod features;
pub(crate) mod mlp;
pub mod pretrained;
pub mod pth;
pub mod sdch;
pub mod tensors;
pub mod trainer;
pub(crate) mod zs_common;

/// A libtorch error as one line: its message without the C++ backtrace that libtorch appends
/// ("Exception raised from …" and the "frame #N" lines).
pub(crate) fn torch_message(e: &tch::TchError) -> String {
    strip_backtrace(&e.to_string())
}

/// Drops libtorch's C++ backtrace from a message and joins what is left into one line.
pub fn strip_backtrace(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Exception raised from") && !l.starts_with("frame #"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Helpers for tests that call the project's Python (scripts/ only).
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::PathBuf;

    /// Held by tests that draw from libtorch's process-wide generator outside a training (a
    /// [`super::trainer::Trainer`] holds the same lock itself, so a test must not hold it while it
    /// trains).
    pub use super::trainer::torch_rng_lock;

    /// The repository root.
    pub fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// `.venv/bin/python` when it exists and imports every module in `modules`; otherwise prints
    /// why the calling test is skipped and returns `None`.
    pub fn python_with(modules: &[&str]) -> Option<PathBuf> {
        let py = repo().join(".venv/bin/python");
        if !py.exists() {
            eprintln!("SKIPPED: {} not found (run scripts/setup.sh)", py.display());
            return None;
        }
        let code = modules.iter().map(|m| format!("import {m}")).collect::<Vec<_>>().join("; ");
        let ok = std::process::Command::new(&py).args(["-c", &code]).output().map(|o| o.status.success()).unwrap_or(false);
        if !ok {
            eprintln!("SKIPPED: {} cannot import {modules:?} (pip install torchvision==0.28.0 into .venv)", py.display());
            return None;
        }
        Some(py)
    }

    /// A temporary folder in RAM when the machine has /dev/shm (tests that write large checkpoints).
    pub fn big_tempdir() -> tempfile::TempDir {
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir() {
            if let Ok(d) = tempfile::tempdir_in(shm) {
                return d;
            }
        }
        tempfile::tempdir().unwrap()
    }

    /// Runs a script under scripts/ with `py`, panicking with its stderr when it fails.
    pub fn run_script(py: &std::path::Path, script: &str, args: &[&str]) -> String {
        let out = std::process::Command::new(py).arg(repo().join("scripts").join(script)).args(args).output().expect("python runs");
        assert!(out.status.success(), "{script} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}
