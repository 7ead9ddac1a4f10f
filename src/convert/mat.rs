//! Reading MATLAB `.mat` files (v5/v7 and v7.3/HDF5) through a Python helper.
//!
//! No Rust crate reads both MATLAB v5 (including compressed elements) and v7.3 (HDF5) reliably,
//! so the reading is done by scipy (v5) and h5py (v7.3) in the application's helper
//! ([`PythonHelpers::mat2npy`]; the `cmh` binary runs `scripts/mat2npy.py`). This module writes
//! the request (which variables to look for, per role), and reads back the helper's `index.json`
//! and the `.npy` dumps of each chosen variable, in MATLAB's orientation (HDF5 arrays transposed
//! back), with [`crate::npy::read_npy`].

use crate::helpers::PythonHelpers;
use crate::npy::{read_npy, NpyData};
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One variable picked for a role and read back from `.npy`.
#[derive(Debug, Clone)]
pub struct MatVar {
    /// The `.mat` file it came from.
    pub file: PathBuf,
    /// Its MATLAB name (`param.indexTest` for a struct field).
    pub key: String,
    pub data: NpyData,
}

impl MatVar {
    /// `FILE: KEY`, the prefix of every error about this variable.
    pub fn what(&self) -> String {
        format!("{}: {}", self.file.display(), self.key)
    }
    pub fn shape(&self) -> &[usize] {
        self.data.shape()
    }
}

/// A candidate variable for a role: its name, and optionally the one input file to look in.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub key: String,
    pub file: Option<usize>,
}

#[derive(Deserialize)]
struct VarInfo {
    shape: Vec<usize>,
    class: String,
}

#[derive(Deserialize)]
struct FileInfo {
    format: String,
    variables: BTreeMap<String, VarInfo>,
}

#[derive(Deserialize)]
struct RoleInfo {
    file: String,
    file_index: usize,
    key: String,
}

#[derive(Deserialize)]
struct Ambiguous {
    key: String,
    files: Vec<usize>,
}

#[derive(Deserialize)]
struct Index {
    files: Vec<FileInfo>,
    roles: BTreeMap<String, RoleInfo>,
    ambiguous: BTreeMap<String, Ambiguous>,
}

/// The result of one helper run: the chosen variable of each role found, plus every file's
/// variable listing (for error messages).
pub struct MatRead {
    pub files: Vec<PathBuf>,
    /// `v5`, `v7.3` or `hdf5` (a plain HDF5 file not written by MATLAB), per file.
    pub formats: Vec<String>,
    listings: Vec<BTreeMap<String, VarInfo>>,
    pub vars: BTreeMap<String, MatVar>,
}

impl MatRead {
    /// The variables of every input, for "it holds: …" in errors.
    pub(crate) fn describe_contents(&self) -> String {
        let mut parts = Vec::new();
        for (f, l) in self.files.iter().zip(&self.listings) {
            let vars: Vec<String> = l
                .iter()
                .map(|(k, v)| {
                    let dims: Vec<String> = v.shape.iter().map(|d| d.to_string()).collect();
                    format!("{k} ({} {})", dims.join("×"), v.class)
                })
                .collect();
            let vars = if vars.is_empty() { "no variables".to_string() } else { vars.join(", ") };
            parts.push(format!("{} holds {vars}", f.display()));
        }
        parts.join("; ")
    }

    /// Takes the variable of a role, or fails naming the variables tried and what the files hold.
    pub fn take(&mut self, role: &str, tried: &[Candidate]) -> Result<MatVar> {
        match self.vars.remove(role) {
            Some(v) => Ok(v),
            None => {
                let names: Vec<String> = tried
                    .iter()
                    .map(|c| match c.file {
                        Some(i) => format!("{}:{}", self.files[i].file_name().unwrap_or_default().to_string_lossy(), c.key),
                        None => c.key.clone(),
                    })
                    .collect();
                let which =
                    if names.len() == 1 { format!("variable {}", names[0]) } else { format!("any of the variables {}", names.join(", ")) };
                bail!(
                    "missing variable for {role}: no {which} in the input; {} (pick another with --key {role}=NAME)",
                    self.describe_contents()
                )
            }
        }
    }
}

/// Runs the helper once over `files`, picking for each role the first candidate present.
/// `work` is an empty scratch folder (the request and the `.npy` dumps go there).
pub fn read_roles(files: &[PathBuf], roles: &BTreeMap<String, Vec<Candidate>>, work: &Path, py: &dyn PythonHelpers) -> Result<MatRead> {
    for f in files {
        if !f.is_file() {
            bail!("{}: no such file", f.display());
        }
    }
    let out = work.join("dump");
    let abs: Vec<String> =
        files.iter().map(|f| std::fs::canonicalize(f).unwrap_or_else(|_| f.clone()).to_string_lossy().into_owned()).collect();
    let role_json: serde_json::Map<String, serde_json::Value> = roles
        .iter()
        .map(|(r, cands)| {
            let list: Vec<serde_json::Value> = cands.iter().map(|c| serde_json::json!([c.key, c.file])).collect();
            (r.clone(), serde_json::Value::Array(list))
        })
        .collect();
    let req = serde_json::json!({"files": abs, "out": out.to_string_lossy(), "roles": role_json});
    let req_path = work.join("request.json");
    std::fs::write(&req_path, serde_json::to_string(&req)?)?;
    py.mat2npy(files, &req_path)?;
    let idx_path = out.join("index.json");
    let text = std::fs::read_to_string(&idx_path).with_context(|| format!("{}: the .mat reader wrote no index", idx_path.display()))?;
    let index: Index = serde_json::from_str(&text).map_err(|e| {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        anyhow!("{}: the .mat reader described the contents in a form cmh cannot use ({e})", names.join(", "))
    })?;
    if let Some((role, a)) = index.ambiguous.iter().next() {
        let names: Vec<String> = a.files.iter().map(|&i| files[i].display().to_string()).collect();
        let first = files[a.files[0]].file_name().unwrap_or_default().to_string_lossy().into_owned();
        bail!("variable {} (for {role}) is in several inputs: {}; choose one with --key {role}={first}:{}", a.key, names.join(", "), a.key);
    }
    let mut vars = BTreeMap::new();
    for (role, info) in index.roles {
        let data = read_npy(&out.join(&info.file))
            .with_context(|| format!("reading variable {} of {}", info.key, files[info.file_index].display()))?;
        vars.insert(role, MatVar { file: files[info.file_index].clone(), key: info.key, data });
    }
    // The dumps are read; free the disk space now (large image stacks).
    let _ = std::fs::remove_dir_all(&out);
    Ok(MatRead {
        files: files.to_vec(),
        formats: index.files.iter().map(|f| f.format.clone()).collect(),
        listings: index.files.into_iter().map(|f| f.variables).collect(),
        vars,
    })
}
