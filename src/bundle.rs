//! The dataset bundle: the one on-disk format everything in cmh reads.
//!
//! A bundle is a folder holding `bundle.json` (the manifest) and `.npy` files:
//! - per modality, a feature matrix (float32, items × dim) and/or raw images (uint8 N×H×W×3);
//! - `labels.npy`: uint8 multi-hot, items × classes (or one file per modality when the label
//!   spaces differ, `modality_labels`);
//! - optionally `unlabelled.npy` (bool, items): rows declared unlabelled (their label rows are 0);
//! - optionally class embeddings (float32, classes × E);
//! - optionally a fixed split: `train`, `query`, `database` index files (int64).
//!
//! Loading validates everything and each error names the file and what was expected; feature
//! values are checked for NaN/Inf on the rows a run reads ([`crate::split::bundle_views`]), so a
//! bundle whose unused rows (say, held-out test items) are not finite still serves.

pub use crate::mapped::MappedArray;
use crate::mapped::{MappedKind, MappedRows};
use crate::npy::{read_binary_matrix, read_features, read_float_matrix, read_indices, read_npy, write_npy, write_text_atomic, NpyData};
use anyhow::{anyhow, bail, Context, Result};
use ndarray::{Array1, Array2, Array4};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) const MANIFEST: &str = "bundle.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModalitySpec {
    /// `image` or `text` (modality 0 is the image side, 1 the text side).
    pub name: String,
    /// Feature file (float32 items × dim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    /// How the features were made (e.g. "128-word SIFT bag of visual words").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Raw images (uint8 N×H×W×3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_shape: Option<[usize; 3]>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassEmbeddingSpec {
    pub file: String,
    pub dim: usize,
    /// e.g. "all-MiniLM-L6-v2 sentence embeddings of the class names".
    pub source: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    pub train: String,
    pub query: String,
    pub database: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// Where the data came from.
    pub source: String,
    pub n_items: usize,
    pub classes: Vec<String>,
    pub modalities: Vec<ModalitySpec>,
    /// Labels shared by every modality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// One label file per modality, when the label spaces differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modality_labels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlabelled: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_embeddings: Option<ClassEmbeddingSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitSpec>,
}

/// One modality's loaded data.
#[derive(Clone, Debug)]
pub struct ModalityData {
    pub name: String,
    pub features: Option<Array2<f32>>,
    pub images: Option<Array4<u8>>,
    /// The features, memory-mapped instead of loaded ([`Bundle::load_mapped`]).
    pub mapped_features: Option<MappedRows>,
    /// The images, memory-mapped instead of loaded.
    pub mapped_images: Option<MappedRows>,
}

/// The fixed split stored with a bundle.
#[derive(Clone, Debug, PartialEq)]
pub struct FixedSplit {
    pub train: Vec<usize>,
    pub query: Vec<usize>,
    pub database: Vec<usize>,
}

/// A loaded, validated bundle.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub modalities: Vec<ModalityData>,
    /// One label matrix per modality (identical when the bundle has shared labels).
    pub labels: Vec<Array2<u8>>,
    /// Rows declared unlabelled.
    pub unlabelled: Vec<bool>,
    pub class_embeddings: Option<Array2<f32>>,
    pub split: Option<FixedSplit>,
}

/// One modality's files memory-mapped and checked like [`Bundle::load`] checks them.
fn map_modality(dir: &Path, spec: &ModalitySpec, m: usize, n: usize) -> Result<ModalityData> {
    let open = |f: &str, field: String| -> Result<(PathBuf, MappedRows)> {
        let p = file_in(dir, f, &field)?;
        let a = MappedArray::open(&p)?;
        Ok((p, MappedRows::new(Arc::new(a))))
    };
    let mapped_features = match &spec.features {
        Some(f) => {
            let (p, x) = open(f, format!("modalities[{m}].features"))?;
            let a = x.array();
            if a.kind() != MappedKind::F32 || a.shape().len() != 2 {
                bail!("{}: features must be a 2-d float32 matrix, found shape {:?}", p.display(), a.shape());
            }
            if a.nrows() != n {
                bail!("{}: expected {n} rows (n_items), found {}", p.display(), a.nrows());
            }
            if let Some(d) = spec.dim {
                if a.row_len() != d {
                    bail!("{}: expected {d} columns (modalities[{m}].dim), found {}", p.display(), a.row_len());
                }
            }
            a.check_finite()?;
            Some(x)
        }
        None => None,
    };
    let mapped_images = match &spec.images {
        Some(f) => {
            let (p, x) = open(f, format!("modalities[{m}].images"))?;
            let a = x.array();
            if a.kind() != MappedKind::U8 || a.shape().len() != 4 || a.shape()[3] != 3 || a.nrows() != n {
                bail!("{}: images must be {n}×H×W×3 uint8, found shape {:?}", p.display(), a.shape());
            }
            Some(x)
        }
        None => None,
    };
    Ok(ModalityData { name: spec.name.clone(), features: None, images: None, mapped_features, mapped_images })
}

fn file_in(dir: &Path, name: &str, field: &str) -> Result<PathBuf> {
    if name.contains('/') || name.contains('\\') || name.starts_with('.') {
        bail!("{}: field {field}: file names must be plain names inside the bundle, found {name:?}", dir.join(MANIFEST).display());
    }
    let p = dir.join(name);
    if !p.is_file() {
        bail!("{}: field {field} names {name}, which does not exist in {}", dir.join(MANIFEST).display(), dir.display());
    }
    Ok(p)
}

/// The modality names a bundle may use, in role order (modality 0 is the image side).
pub(crate) const MODALITY_NAMES: [&str; 2] = ["image", "text"];

/// Puts the manifest's modalities (and per-modality label files) in role order by their names:
/// roles follow the names, never the order in the file. Unknown or repeated names, and a bundle
/// without an image modality, are refused.
fn order_modalities(mpath: &Path, manifest: &mut Manifest) -> Result<()> {
    let names: Vec<&str> = manifest.modalities.iter().map(|m| m.name.as_str()).collect();
    for (i, name) in names.iter().enumerate() {
        if !MODALITY_NAMES.contains(name) {
            bail!(
                "{}: modalities[{i}].name is {name:?}; expected \"image\" or \"text\" (the name gives the modality's role)",
                mpath.display()
            );
        }
        if names[..i].contains(name) {
            bail!("{}: modalities[{i}].name {name:?} appears twice; a bundle has at most one image and one text modality", mpath.display());
        }
    }
    if names[0] != "image" {
        if names.len() == 1 {
            bail!(
                "{}: the only modality is \"text\"; cmh's methods pair an image modality with a text modality: add the image modality",
                mpath.display()
            );
        }
        manifest.modalities.swap(0, 1);
        if let Some(l) = manifest.modality_labels.as_mut() {
            if l.len() == 2 {
                l.swap(0, 1);
            }
        }
    }
    Ok(())
}

/// Refuses an index file that lists an item twice.
fn refuse_duplicates(path: &Path, field: &str, idx: &[usize]) -> Result<()> {
    let mut seen = std::collections::HashMap::with_capacity(idx.len());
    for (k, &i) in idx.iter().enumerate() {
        if let Some(first) = seen.insert(i, k) {
            bail!(
                "{}: field {field}: item {i} is listed twice (entries {first} and {k}); each item may appear once in a split part",
                path.display()
            );
        }
    }
    Ok(())
}

/// SHA-256 (hex) of a bundle's contents: `bundle.json` and every file it names, in name order
/// (names and bytes). Run folders record it so that a resume on changed data is refused.
pub(crate) fn content_hash(dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mpath = dir.join(MANIFEST);
    let text = std::fs::read(&mpath).with_context(|| format!("{}: cannot read the bundle manifest", mpath.display()))?;
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| anyhow!("{}: invalid manifest: {e}", mpath.display()))?;
    let mut files: Vec<&String> = m.modalities.iter().flat_map(|s| s.features.iter().chain(s.images.iter())).collect();
    files.extend(m.labels.iter().chain(m.modality_labels.iter().flatten()).chain(m.unlabelled.iter()));
    files.extend(m.class_embeddings.iter().map(|e| &e.file));
    files.extend(m.split.iter().flat_map(|s| [&s.train, &s.query, &s.database]));
    files.sort();
    files.dedup();
    let mut h = Sha256::new();
    h.update((text.len() as u64).to_le_bytes());
    h.update(&text);
    for f in files {
        let p = file_in(dir, f, "files")?;
        let mut r = std::fs::File::open(&p).with_context(|| format!("{}: cannot open", p.display()))?;
        h.update((f.len() as u64).to_le_bytes());
        h.update(f.as_bytes());
        std::io::copy(&mut r, &mut h).with_context(|| format!("{}: cannot read", p.display()))?;
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl Bundle {
    /// Loads and validates a bundle folder.
    ///
    /// ```
    /// use cmh::bundle::{one_hot, Bundle, BundleWriter, NewModality};
    /// use ndarray::Array2;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let features = |d| Some(Array2::from_shape_fn((4, d), |(i, j)| (i + j) as f32));
    /// BundleWriter {
    ///     name: "tiny".into(),
    ///     source: "doc example".into(),
    ///     classes: vec!["cat".into(), "dog".into()],
    ///     modalities: vec![
    ///         NewModality { name: "image".into(), features: features(3), ..Default::default() },
    ///         NewModality { name: "text".into(), features: features(2), ..Default::default() },
    ///     ],
    ///     labels: vec![one_hot(&[0, 1, 0, 1], 2)],
    ///     ..Default::default()
    /// }
    /// .write(&dir.path().join("tiny"), false)?;
    ///
    /// let b = Bundle::load(&dir.path().join("tiny"))?;
    /// assert_eq!((b.n_items(), b.n_classes()), (4, 2));
    /// assert_eq!(b.modalities[1].features.as_ref().unwrap().ncols(), 2);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn load(dir: &Path) -> Result<Self> {
        let mpath = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&mpath).with_context(|| format!("{}: cannot read the bundle manifest", mpath.display()))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid manifest: {e}", mpath.display()))?;
        Self::load_with(dir, manifest, false)
    }

    /// Loads a bundle with its feature matrices and image stacks memory-mapped rather than read
    /// (`crate::mapped`): they are validated (shape, dtype, finiteness) in one streaming pass and
    /// read row by row when used, so a bundle larger than memory can be trained on by the deep
    /// methods. Labels, masks, embeddings and the split are loaded as by [`Bundle::load`].
    pub fn load_mapped(dir: &Path) -> Result<Self> {
        let mpath = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&mpath).with_context(|| format!("{}: cannot read the bundle manifest", mpath.display()))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid manifest: {e}", mpath.display()))?;
        Self::load_with(dir, manifest, true)
    }

    fn load_with(dir: &Path, mut manifest: Manifest, mapped: bool) -> Result<Self> {
        let mpath = dir.join(MANIFEST);
        let n = manifest.n_items;
        let c = manifest.classes.len();
        if manifest.modalities.is_empty() {
            bail!("{}: field modalities: at least one modality is needed", mpath.display());
        }
        if c == 0 {
            bail!("{}: field classes: at least one class is needed", mpath.display());
        }
        if let Some((i, name)) = manifest.classes.iter().enumerate().find(|(i, name)| manifest.classes[..*i].contains(name)) {
            let first = manifest.classes.iter().position(|x| x == name).unwrap_or(0);
            bail!("{}: field classes: {name:?} appears twice (classes {first} and {i}); class names must be unique", mpath.display());
        }
        order_modalities(&mpath, &mut manifest)?;
        let mut modalities = Vec::new();
        for (m, spec) in manifest.modalities.iter().enumerate() {
            if spec.features.is_none() && spec.images.is_none() {
                bail!("{}: modality {m} ({}) names neither features nor images", mpath.display(), spec.name);
            }
            if mapped {
                modalities.push(map_modality(dir, spec, m, n)?);
                continue;
            }
            let features = match &spec.features {
                Some(f) => {
                    let p = file_in(dir, f, &format!("modalities[{m}].features"))?;
                    let x = read_float_matrix(&p)?;
                    if x.nrows() != n {
                        bail!("{}: expected {n} rows (n_items), found {}", p.display(), x.nrows());
                    }
                    if let Some(d) = spec.dim {
                        if x.ncols() != d {
                            bail!("{}: expected {d} columns (modalities[{m}].dim), found {}", p.display(), x.ncols());
                        }
                    }
                    Some(x)
                }
                None => None,
            };
            let images = match &spec.images {
                Some(f) => {
                    let p = file_in(dir, f, &format!("modalities[{m}].images"))?;
                    let a = match read_npy(&p)? {
                        NpyData::U8(a) => a,
                        other => bail!("{}: images must be uint8, found {}", p.display(), other.dtype_name()),
                    };
                    if a.ndim() != 4 || a.shape()[3] != 3 || a.shape()[0] != n {
                        bail!("{}: images must be {n}×H×W×3 uint8, found shape {}", p.display(), crate::npy::shape_str(a.shape()));
                    }
                    Some(a.into_dimensionality()?)
                }
                None => None,
            };
            modalities.push(ModalityData { name: spec.name.clone(), features, images, mapped_features: None, mapped_images: None });
        }
        let label_files: Vec<(String, String)> = match (&manifest.labels, &manifest.modality_labels) {
            (Some(f), None) => vec![(f.clone(), "labels".into()); manifest.modalities.len()],
            (None, Some(fs)) => {
                if fs.len() != manifest.modalities.len() {
                    bail!(
                        "{}: field modality_labels: one file per modality expected ({}), found {}",
                        mpath.display(),
                        manifest.modalities.len(),
                        fs.len()
                    );
                }
                fs.iter().enumerate().map(|(m, f)| (f.clone(), format!("modality_labels[{m}]"))).collect()
            }
            (Some(_), Some(_)) => bail!("{}: give either labels or modality_labels, not both", mpath.display()),
            (None, None) => bail!("{}: field labels: a label file is required", mpath.display()),
        };
        let unlabelled = match &manifest.unlabelled {
            Some(f) => {
                let p = file_in(dir, f, "unlabelled")?;
                let a = read_npy(&p)?
                    .to_i64()
                    .ok_or_else(|| anyhow!("{}: unlabelled must be bool (items), found a float array", p.display()))?;
                if a.shape() != [n] || a.iter().any(|&v| v != 0 && v != 1) {
                    bail!(
                        "{}: unlabelled must be a bool vector of {n} entries (0/1), found shape {}",
                        p.display(),
                        crate::npy::shape_str(a.shape())
                    );
                }
                a.iter().map(|&v| v == 1).collect()
            }
            None => vec![false; n],
        };
        let mut labels = Vec::new();
        let mut cache: Option<(String, Array2<u8>)> = None;
        for (f, field) in &label_files {
            if let Some((cf, l)) = &cache {
                if cf == f {
                    labels.push(l.clone());
                    continue;
                }
            }
            let p = file_in(dir, f, field)?;
            let l = read_binary_matrix(&p, "labels")?;
            if l.dim() != (n, c) {
                bail!("{}: labels must be {n}×{c} (items × classes), found {}×{}", p.display(), l.nrows(), l.ncols());
            }
            for (i, row) in l.outer_iter().enumerate() {
                let has = row.iter().any(|&v| v != 0);
                if !has && !unlabelled[i] && manifest.modality_labels.is_none() {
                    bail!("{}: row {i} has no label and is not declared unlabelled", p.display());
                }
                if has && unlabelled[i] {
                    bail!("{}: row {i} is declared unlabelled but has labels", p.display());
                }
            }
            cache = Some((f.clone(), l.clone()));
            labels.push(l);
        }
        if manifest.modality_labels.is_some() {
            for (i, &unl) in unlabelled.iter().enumerate() {
                if !unl && labels.iter().all(|l| l.row(i).iter().all(|&v| v == 0)) {
                    bail!("{}: item {i} has no label in any modality and is not declared unlabelled", mpath.display());
                }
            }
        }
        let class_embeddings = match &manifest.class_embeddings {
            Some(spec) => {
                let p = file_in(dir, &spec.file, "class_embeddings.file")?;
                let e = read_features(&p)?;
                if e.dim() != (c, spec.dim) {
                    bail!(
                        "{}: class embeddings must be {c}×{} (classes × class_embeddings.dim), found {}×{}",
                        p.display(),
                        spec.dim,
                        e.nrows(),
                        e.ncols()
                    );
                }
                Some(e)
            }
            None => None,
        };
        let split = match &manifest.split {
            Some(s) => {
                let train = read_indices(&file_in(dir, &s.train, "split.train")?, n)?;
                let query = read_indices(&file_in(dir, &s.query, "split.query")?, n)?;
                let database = read_indices(&file_in(dir, &s.database, "split.database")?, n)?;
                if query.is_empty() || database.is_empty() || train.is_empty() {
                    bail!("{}: field split: train, query and database must each hold at least one item", mpath.display());
                }
                for (field, file, idx) in
                    [("split.train", &s.train, &train), ("split.query", &s.query, &query), ("split.database", &s.database, &database)]
                {
                    refuse_duplicates(&dir.join(file), field, idx)?;
                }
                Some(FixedSplit { train, query, database })
            }
            None => None,
        };
        Ok(Self { dir: dir.to_path_buf(), manifest, modalities, labels, unlabelled, class_embeddings, split })
    }

    pub fn n_items(&self) -> usize {
        self.manifest.n_items
    }
    pub fn n_classes(&self) -> usize {
        self.manifest.classes.len()
    }
    pub fn class_names(&self) -> &[String] {
        &self.manifest.classes
    }
    /// Whether modalities carry different label files.
    pub(crate) fn has_modality_labels(&self) -> bool {
        self.manifest.modality_labels.is_some()
    }
    /// Union of every modality's labels (items × classes).
    pub(crate) fn union_labels(&self) -> Array2<u8> {
        let mut u = self.labels[0].clone();
        for l in &self.labels[1..] {
            u.zip_mut_with(l, |a, &b| *a |= b);
        }
        u
    }

    /// Class index by name (exact match), with the list of names in the error.
    pub fn class_index(&self, name: &str) -> Result<usize> {
        self.manifest
            .classes
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| anyhow!("no class named {name:?} in bundle {}; classes are {:?}", self.dir.display(), self.manifest.classes))
    }

    /// Replaces (or adds) the class embeddings and rewrites the manifest, atomically per file.
    pub(crate) fn set_class_embeddings(&mut self, emb: Array2<f32>, source: &str) -> Result<()> {
        if emb.nrows() != self.n_classes() {
            bail!("class embeddings need one row per class ({}), found {}", self.n_classes(), emb.nrows());
        }
        if let Some(((i, j), v)) = emb.indexed_iter().find(|(_, v)| !v.is_finite()) {
            bail!("class embeddings must be finite; found {v} at class {i}, column {j}");
        }
        let file = "class_embeddings.npy".to_string();
        write_npy(&self.dir.join(&file), &emb)?;
        self.manifest.class_embeddings = Some(ClassEmbeddingSpec { file, dim: emb.ncols(), source: source.to_string() });
        write_manifest(&self.dir, &self.manifest)?;
        self.class_embeddings = Some(emb);
        Ok(())
    }
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    write_text_atomic(&dir.join(MANIFEST), &(serde_json::to_string_pretty(m)? + "\n"))
}

/// Everything needed to write a new bundle; converters fill one and call [`BundleWriter::write`].
#[derive(Clone, Debug, Default)]
pub struct BundleWriter {
    pub name: String,
    pub source: String,
    pub classes: Vec<String>,
    /// (name, features, description, images)
    pub modalities: Vec<NewModality>,
    /// Shared labels, or one per modality.
    pub labels: Vec<Array2<u8>>,
    pub unlabelled: Option<Vec<bool>>,
    pub class_embeddings: Option<(Array2<f32>, String)>,
    pub split: Option<FixedSplit>,
}

#[derive(Clone, Debug, Default)]
pub struct NewModality {
    pub name: String,
    pub features: Option<Array2<f32>>,
    pub description: Option<String>,
    pub images: Option<Array4<u8>>,
}

impl BundleWriter {
    /// Writes the bundle into `dir` through a temporary sibling folder renamed at the end, then
    /// loads it back (so everything written is validated). An existing `dir` is replaced only
    /// when `overwrite` is set.
    pub fn write(&self, dir: &Path, overwrite: bool) -> Result<Bundle> {
        if dir.exists() && !overwrite {
            bail!("{} already exists; pass --force to replace it", dir.display());
        }
        check_replaceable(dir)?;
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create folder", parent.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(&crate::outdir::partial_prefix(dir, "bundle")?)
            .tempdir_in(parent)
            .with_context(|| format!("{}: cannot write in {}", dir.display(), parent.display()))?;
        let t = tmp.path();
        let n = self.labels.first().map(|l| l.nrows()).ok_or_else(|| anyhow!("a bundle needs labels"))?;
        let mut specs = Vec::new();
        for (m, md) in self.modalities.iter().enumerate() {
            let mut spec = ModalitySpec {
                name: md.name.clone(),
                features: None,
                dim: None,
                description: md.description.clone(),
                images: None,
                image_shape: None,
            };
            if let Some(x) = &md.features {
                let f = format!("{}_features.npy", md.name);
                write_npy(&t.join(&f), x)?;
                spec.features = Some(f);
                spec.dim = Some(x.ncols());
            }
            if let Some(im) = &md.images {
                let f = format!("{}_images.npy", md.name);
                write_npy(&t.join(&f), im)?;
                spec.images = Some(f);
                let s = im.shape();
                spec.image_shape = Some([s[1], s[2], s[3]]);
            }
            if spec.features.is_none() && spec.images.is_none() {
                bail!("modality {m} ({}) has neither features nor images", md.name);
            }
            specs.push(spec);
        }
        let (labels, modality_labels) = if self.labels.len() == 1 {
            write_npy(&t.join("labels.npy"), &self.labels[0])?;
            (Some("labels.npy".to_string()), None)
        } else {
            let mut fs = Vec::new();
            for (m, l) in self.labels.iter().enumerate() {
                let f = format!("labels_{}.npy", self.modalities[m].name);
                write_npy(&t.join(&f), l)?;
                fs.push(f);
            }
            (None, Some(fs))
        };
        let unlabelled = match &self.unlabelled {
            Some(u) if u.iter().any(|&b| b) => {
                write_npy(&t.join("unlabelled.npy"), &Array1::from_iter(u.iter().copied()))?;
                Some("unlabelled.npy".to_string())
            }
            _ => None,
        };
        let class_embeddings = match &self.class_embeddings {
            Some((e, source)) => {
                write_npy(&t.join("class_embeddings.npy"), e)?;
                Some(ClassEmbeddingSpec { file: "class_embeddings.npy".into(), dim: e.ncols(), source: source.clone() })
            }
            None => None,
        };
        let split = match &self.split {
            Some(s) => {
                for (name, idx) in [("split_train.npy", &s.train), ("split_query.npy", &s.query), ("split_database.npy", &s.database)] {
                    write_npy(&t.join(name), &Array1::from_iter(idx.iter().map(|&i| i as i64)))?;
                }
                Some(SplitSpec { train: "split_train.npy".into(), query: "split_query.npy".into(), database: "split_database.npy".into() })
            }
            None => None,
        };
        let manifest = Manifest {
            name: self.name.clone(),
            source: self.source.clone(),
            n_items: n,
            classes: self.classes.clone(),
            modalities: specs,
            labels,
            modality_labels,
            unlabelled,
            class_embeddings,
            split,
        };
        write_manifest(t, &manifest)?;
        crate::outdir::mark(t, crate::outdir::Kind::Bundle)?;
        // Validate before the folder becomes visible under its final name.
        Bundle::load_with(t, manifest, false).context("the converted bundle failed validation")?;
        crate::npy::set_mode(tmp.path(), 0o755)?;
        let tmp_path = tmp.keep();
        if dir.exists() {
            let old = parent.join(format!(".old-{}", std::process::id()));
            std::fs::rename(dir, &old)?;
            std::fs::rename(&tmp_path, dir)?;
            std::fs::remove_dir_all(&old)?;
        } else {
            std::fs::rename(&tmp_path, dir)?;
        }
        Bundle::load(dir)
    }
}

/// Refuses to replace `dir` unless it is absent, empty, or a bundle: marked as written by cmh, or
/// holding a `bundle.json` that reads as a bundle manifest. cmh never deletes other folders.
pub(crate) fn check_replaceable(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        bail!("{}: is a file, not a bundle folder; give a folder path", dir.display());
    }
    let empty = std::fs::read_dir(dir).with_context(|| format!("{}: cannot list the folder", dir.display()))?.next().is_none();
    let manifest_ok = std::fs::read_to_string(dir.join(MANIFEST)).ok().is_some_and(|t| serde_json::from_str::<Manifest>(&t).is_ok());
    if empty || manifest_ok || crate::outdir::is_marked(dir, crate::outdir::Kind::Bundle) {
        return Ok(());
    }
    bail!(
        "{}: exists and is not a cmh bundle (no readable {MANIFEST}); --force replaces only bundles, and cmh never deletes \
         other folders: choose another output folder",
        dir.display()
    )
}

/// One-hot labels from 0-based class indices.
pub fn one_hot(idx: &[usize], n_classes: usize) -> Array2<u8> {
    let mut l = Array2::zeros((idx.len(), n_classes));
    for (i, &c) in idx.iter().enumerate() {
        l[[i, c]] = 1;
    }
    l
}

/// A 100-item, 5-class, two-modality bundle for tests (items 0–19 queries, 20–99 training =
/// database when `fixed_split`; class embeddings when `embeddings`), written to `dir/name`.
#[cfg(test)]
pub(crate) fn test_bundle(dir: &std::path::Path, name: &str, fixed_split: bool, embeddings: bool) -> Bundle {
    let n = 100;
    let cls: Vec<usize> = (0..n).map(|i| i % 5).collect();
    let x = Array2::from_shape_fn((n, 3), |(i, j)| ((i * 7 + j * 3) % 11) as f32);
    BundleWriter {
        name: "t".into(),
        source: "test".into(),
        classes: (0..5).map(|k| format!("c{k}")).collect(),
        modalities: vec![
            NewModality { name: "image".into(), features: Some(x.clone()), ..Default::default() },
            NewModality { name: "text".into(), features: Some(x), ..Default::default() },
        ],
        labels: vec![one_hot(&cls, 5)],
        class_embeddings: embeddings.then(|| (Array2::from_shape_fn((5, 4), |(i, j)| (i + j) as f32 + 1.0), "test".to_string())),
        split: fixed_split.then(|| FixedSplit { train: (20..100).collect(), query: (0..20).collect(), database: (20..100).collect() }),
        ..Default::default()
    }
    .write(&dir.join(name), false)
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn tiny() -> BundleWriter {
        BundleWriter {
            name: "tiny".into(),
            source: "test".into(),
            classes: vec!["a".into(), "b".into()],
            modalities: vec![
                NewModality { name: "image".into(), features: Some(array![[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]]), ..Default::default() },
                NewModality { name: "text".into(), features: Some(array![[1.0f32], [2.0], [3.0]]), ..Default::default() },
            ],
            labels: vec![array![[1u8, 0], [0, 1], [1, 1]]],
            split: Some(FixedSplit { train: vec![0, 1], query: vec![2], database: vec![0, 1] }),
            ..Default::default()
        }
    }

    #[test]
    fn write_then_load_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let b = tiny().write(&d.path().join("b"), false).unwrap();
        assert_eq!(b.n_items(), 3);
        assert_eq!(b.labels[1], array![[1u8, 0], [0, 1], [1, 1]]);
        assert_eq!(b.split.as_ref().unwrap().query, vec![2]);
        assert_eq!(b.modalities[1].features.as_ref().unwrap().ncols(), 1);
        assert!(tiny().write(&d.path().join("b"), false).is_err(), "refuses to overwrite");
    }

    #[test]
    fn refuses_unlabelled_rows_and_bad_shapes() {
        let d = tempfile::tempdir().unwrap();
        let mut w = tiny();
        w.labels = vec![array![[1u8, 0], [0, 0], [1, 1]]];
        let err = format!("{:#}", w.write(&d.path().join("b"), false).unwrap_err());
        assert!(err.contains("row 1 has no label"), "{err}");
        assert!(!d.path().join("b").exists(), "nothing half-written");
        let mut w = tiny();
        w.unlabelled = Some(vec![false, true, false]);
        w.labels = vec![array![[1u8, 0], [0, 0], [1, 1]]];
        w.write(&d.path().join("ok"), false).unwrap();
        // A feature file with the wrong row count is named in the error.
        let b = d.path().join("ok");
        write_npy(&b.join("text_features.npy"), &array![[1.0f32], [2.0]]).unwrap();
        let err = format!("{:#}", Bundle::load(&b).unwrap_err());
        assert!(err.contains("text_features.npy") && err.contains("expected 3 rows"), "{err}");
    }
}
