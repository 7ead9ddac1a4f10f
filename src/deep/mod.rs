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

/// Helpers shared by the tests: the project's Python (scripts/), temporary folders and the checks
/// common to the zero-shot models.
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

    /// Asserts that `r` solves the ridge normal equations (XᵀX + λI)R = XᵀT, each sum computed
    /// plainly in f64.
    pub fn assert_ridge_normal_equations(
        x: &ndarray::Array2<f32>,
        t: &ndarray::Array2<f32>,
        r: &ndarray::Array2<f32>,
        lam: f64,
        what: &str,
    ) {
        let (n, d) = x.dim();
        assert_eq!(r.dim(), (d, t.ncols()), "{what}");
        for a in 0..d {
            for k in 0..t.ncols() {
                let mut lhs = lam * r[[a, k]] as f64;
                for b in 0..d {
                    lhs += (0..n).map(|i| x[[i, a]] as f64 * x[[i, b]] as f64).sum::<f64>() * r[[b, k]] as f64;
                }
                let rhs: f64 = (0..n).map(|i| x[[i, a]] as f64 * t[[i, k]] as f64).sum();
                assert!((lhs - rhs).abs() < 1e-3 * (1.0 + rhs.abs()), "{what} ({a}, {k}): {lhs} vs {rhs}");
            }
        }
    }

    /// Saves `model`, loads it back with `load` and asserts the same codes for both modalities of
    /// `data`; then overwrites `{bad_ridge}_ridge.npy` with a 2 × 2 map and asserts that loading
    /// refuses it, naming the file.
    pub fn assert_round_trip_and_bad_ridge<M: crate::method::HashModel>(
        model: &M,
        data: &crate::method::TrainSet,
        load: impl Fn(&std::path::Path) -> anyhow::Result<M>,
        bad_ridge: &str,
    ) {
        let d = tempfile::tempdir().unwrap();
        let md = d.path().join("model");
        model.save(&md).unwrap();
        let back = load(&md).unwrap();
        for m in [crate::method::IMAGE, crate::method::TEXT] {
            assert_eq!(back.encode(m, &data.views[m]).unwrap(), model.encode(m, &data.views[m]).unwrap());
        }
        let file = format!("{bad_ridge}_ridge.npy");
        crate::npy::write_npy(&md.join(&file), &ndarray::Array2::<f32>::zeros((2, 2))).unwrap();
        let e = format!("{:#}", load(&md).err().expect("a 2 × 2 ridge map is refused"));
        assert!(e.contains(&file) && e.contains("expected"), "{e}");
    }

    /// Runs a script under scripts/ with `py`, panicking with its stderr when it fails.
    pub fn run_script(py: &std::path::Path, script: &str, args: &[&str]) -> String {
        let out = std::process::Command::new(py).arg(repo().join("scripts").join(script)).args(args).output().expect("python runs");
        assert!(out.status.success(), "{script} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}
