//! `cmh data convert`: dataset bundles from the common public releases of the cross-modal
//! benchmarks (MATLAB `.mat` files, v5/v7 or v7.3/HDF5, read by [`mat`]).
//!
//! # Formats (`--format`) and the variables they read
//! Key names were checked against the loaders of the public code that ships or uses each release
//! (repository and file named at each entry). Any role's variable can be renamed with
//! `--key ROLE=NAME` (or `--key ROLE=FILE.mat:NAME` when several inputs hold that name).
//!
//! - `wiki` — Rasiwasia et al.'s Wikipedia release, `--input DIR` holding `raw_features.mat`
//!   (`I_tr`/`I_te` 128-d SIFT BoVW, `T_tr`/`T_te` 10-d LDA), `trainset_txt_img_cat.list` /
//!   `testset_txt_img_cat.list` (`text_id  image_id  category(1..10)`, row i = row i of the
//!   matrices) and `categories.list` (class names); as read by DJSRH-style configs
//!   (`LABEL_DIR = …/raw_features.mat`, `TRAIN_LABEL = …/trainset_txt_img_cat.list`).
//! - `wiki-mat` — the `wikiData.mat` copies (`I_tr, T_tr, L_tr, I_te, T_te, L_te`; labels as
//!   1-based class indices or one-hot; v5 or v7.3), e.g. the MTFH/RFDH copies in
//!   BMC-SDNU/Cross-Modal-Retrieval and lichuanxiang/SCRATCH `wiki_data.mat`. Class names come from
//!   `--classes FILE` (e.g. the release's `categories.list`: art, biology, …, warfare), else
//!   `class1..class10` since these files carry no names.
//! - `uci` — UCI "Multiple Features" digits as two views (`uci_all.mat` of FSH, in
//!   BMC-SDNU/Cross-Modal-Retrieval): image = `I_tr`/`I_te` (76 Fourier coefficients), text =
//!   `T_tr`/`T_te` (64 Karhunen–Loève coefficients), labels `L_tr`/`L_te` 1..10. `L = k` is the
//!   digit `k − 1` (checked by drawing the `P_*` pixel view: class 1 draws a 0, class 2 a 1,
//!   class 3 a 2), so the classes are named `zero` … `nine`. The pixel view is used instead of
//!   the Fourier one with `--key image_train=P_tr --key image_test=P_te`.
//! - `mirflickr` — MIRFlickr-25K as DCMH released it: one `FLICKR-25K.mat` (v7.3) with
//!   `images` (MATLAB 224×224×3×N uint8), `YAll` (N×1386 tag BoW), `LAll` (N×24) — the DCMH MATLAB
//!   demo does `load ./data/FLICKR-25K.mat YAll images LAll` and its TensorFlow loader reads
//!   `file['images'][:].transpose(0,3,2,1)` and `file['LAll'][:].transpose(1,0)`
//!   (jiangqy/DCMH-CVPR2017, `DCMH_matlab/DCMH_release/DCMH_demo.m`,
//!   `DCMH_tensorflow/DCMH_tensorflow/load_data.py`); or the same variables split into
//!   `mirflickr25k-iall.mat` (`IAll`, v7.3), `mirflickr25k-yall.mat` (`YAll`) and
//!   `mirflickr25k-lall.mat` (`LAll`) as DJSRH/JDSH-style code loads them
//!   (`h5py.File(IMG_DIR)['IAll']`, `scio.loadmat(TXT_DIR)['YAll']`); `XAll` (e.g.
//!   `mirflickr25k-xall-vgg.mat`) gives precomputed image features instead of images.
//!   `tags`/`labels` are accepted as the text/label names too. No fixed split: the split module
//!   draws DCMH's 2000 queries / 18015 database / 10000 training items at train time, or
//!   `--split-seed S` stores one such random split in the bundle.
//! - `nus-wide` — NUS-WIDE TC10/TC21: `nus-wide-tc{10,21}-{iall,yall,lall}.mat` (`IAll`, `YAll`
//!   1000-d, `LAll`), as in the loaders above; or the DCMH-style `nus-wide-tc10.mat` (v7.3) with
//!   `YAll`, `LAll` and the fixed split `param.indexTest/indexTrain/indexDatabase` (1-based; DCMH
//!   TensorFlow `loading_NUS`), with `IAll` from the separate iall file. Random split sizes
//!   2100 / 10500 (DCMH's NUS-WIDE setting).
//! - `iapr` — IAPR-TC12 as `iapr-tc12.mat` with `XDatabase, YDatabase, databaseL, XTest, YTest,
//!   testL` (`VDatabase`/`VTest` hold VGG features: `--key image_train=VDatabase --key
//!   image_test=VTest`), as jiangqy/DLFH-TIP2019 `matlab_version/load_data.m` loads it (the same
//!   loader reads `flickr-25k.mat` and `nus-wide-tc10.mat` in this layout, so `mirflickr` and
//!   `nus-wide` accept it too); or a DCMH-style `IAPR-TC12.mat` with `IAll`/`YAll`/`LAll`.
//! - `generic` — any `.mat` with user-given names: `--key image=NAME --key text=NAME
//!   --key labels=NAME` (optional `--key train= / query= / database=` index vectors, 1-based
//!   unless `--mat-index-base 0`, or `--split ROLE=FILE.npy` 0-based), or the six roles
//!   `image_train, image_test, text_train, text_test, labels_train, labels_test` for a release
//!   stored in a training and a test part (e.g. penghu-cs/DSCMR's `train_img`/`test_img`/
//!   `train_img_lab`…, whose labels are 0-based: `--label-base auto` detects that).
//!
//! # Conventions
//! - Two-part releases (`*_train`/`*_test`, `*Database`/`*Test`) keep their split: items are the
//!   training (database) part then the test part; split train = database = the first part, query
//!   = the second. Wiki: 2173 + 693, UCI: 1500 + 500.
//! - Images become `N × H × W × 3` uint8; HDF5 arrays are transposed back to MATLAB's orientation
//!   by the reader, then MATLAB's `H × W × 3 × N` is reordered. Features become float32 and must be
//!   finite (NaN/Inf refused, naming file, variable, row and column).
//! - Labels: class indices (1-based in MATLAB releases; `--label-base` overrides) or 0/1 matrices.
//!   A row with no label is refused unless `--allow-unlabelled`, which keeps it declared
//!   unlabelled in the bundle (the bundle format requires the declaration; silently dropping
//!   rows would break the pairing with the release's own index files).
//! - Random splits (`--split-seed`) draw queries, then the training items from the rest, with
//!   ChaCha8 seeded by the given seed; index lists are stored sorted.
//! - The output is written through a temporary folder and renamed at the end
//!   ([`BundleWriter::write`]), so a failed conversion leaves nothing behind (the `.npy` dumps
//!   of the reader go to a scratch folder beside the output, removed on every path).
//! - Memory: a bundle is held in memory, and an image stack is held about three times while it
//!   is reordered and written (MIRFlickr-25K's 20015 × 224 × 224 × 3 = 3 GB needs ~10 GB). The
//!   full NUS-WIDE image stack (195834 images, 29 GB) does not fit; convert its precomputed image
//!   features (`XAll` / `*-xall-vgg.mat`) instead.
//!
//! # Example
//! The Wikipedia bundle from the release folder:
//! `cmh data convert --format wiki --input ../shared/data/wiki/raw_features_rasiwasia --out data/wiki`

pub mod mat;

mod arrays;

pub use arrays::LabelBase;

use crate::bundle::{Bundle, BundleWriter, FixedSplit, NewModality};
use anyhow::{anyhow, bail, Context, Result};
use arrays::RawLabels;
use mat::{Candidate, MatRead, MatVar};
use ndarray::{concatenate, Array2, Array4, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The release layouts `cmh data convert` reads (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// Wikipedia: raw_features.mat + the .list files + categories.list (give the folder).
    #[default]
    Wiki,
    /// Wikipedia wikiData.mat variants (I_tr, T_tr, L_tr, I_te, T_te, L_te), v5 or v7.3.
    WikiMat,
    /// UCI digits two-view uci_all.mat (Fourier = image, Karhunen-Loève = text).
    Uci,
    /// MIRFlickr-25K: FLICKR-25K.mat or mirflickr25k-{iall,yall,lall}.mat.
    Mirflickr,
    /// NUS-WIDE TC10/TC21: nus-wide-tc{10,21}-{iall,yall,lall}.mat or the DCMH single file.
    NusWide,
    /// IAPR-TC12: iapr-tc12.mat (XDatabase/XTest…) or IAll/YAll/LAll.
    Iapr,
    /// Any .mat with the variable names given by --key.
    Generic,
}

impl Format {
    fn cli_name(self) -> &'static str {
        match self {
            Format::Wiki => "wiki",
            Format::WikiMat => "wiki-mat",
            Format::Uci => "uci",
            Format::Mirflickr => "mirflickr",
            Format::NusWide => "nus-wide",
            Format::Iapr => "iapr",
            Format::Generic => "generic",
        }
    }
}

/// `cmh data convert` arguments.
#[derive(Debug, Clone)]
pub struct ConvertArgs {
    /// Release layout.
    pub format: Format,
    /// Input .mat file(s), or a folder (wiki: the folder of raw_features.mat and the .list files;
    /// other formats: every .mat file in it).
    pub input: Vec<PathBuf>,
    /// Bundle folder to write.
    pub out: PathBuf,
    /// Bundle name (default: from the format, e.g. "wiki").
    pub name: Option<String>,
    /// Class names, one per line (e.g. the Wikipedia release's categories.list).
    pub classes: Option<PathBuf>,
    /// Variable name for a role, ROLE=NAME or ROLE=FILE.mat:NAME (repeatable). Roles: image,
    /// text, labels, train, query, database, or image_train, image_test, text_train, text_test,
    /// labels_train, labels_test.
    pub keys: Vec<String>,
    /// Replace an existing bundle folder.
    pub force: bool,
    /// Keep rows without any label, declared unlabelled (refused otherwise).
    pub allow_unlabelled: bool,
    /// Base of class-index labels (MATLAB releases default to 1; generic detects).
    pub label_base: LabelBase,
    /// Base of index-list variables inside .mat files (train/query/database).
    pub mat_index_base: i64,
    /// A fixed split from 0-based int .npy files, ROLE=FILE.npy with ROLE train, query or
    /// database (repeatable; train defaults to the database).
    pub split: Vec<String>,
    /// Store a random split drawn with this seed (for releases without a fixed split).
    pub split_seed: Option<u64>,
    /// Queries in the random split (default: 2000 MIRFlickr / IAPR, 2100 NUS-WIDE).
    pub query_size: Option<usize>,
    /// Training items in the random split, drawn from the database (default: 10000 MIRFlickr /
    /// IAPR, 10500 NUS-WIDE).
    pub train_size: Option<usize>,
}

impl ConvertArgs {
    /// Arguments with every option at its default.
    pub fn new(format: Format, input: Vec<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            format,
            input,
            out: out.into(),
            name: None,
            classes: None,
            keys: vec![],
            force: false,
            allow_unlabelled: false,
            label_base: LabelBase::Auto,
            mat_index_base: 1,
            split: vec![],
            split_seed: None,
            query_size: None,
            train_size: None,
        }
    }
}

/// A written bundle and a one-line summary of it.
pub struct Converted {
    pub bundle: Bundle,
    pub summary: String,
}

const ALL_ROLES: [&str; 6] = ["image", "text", "labels", "train", "query", "database"];
const PART_ROLES: [&str; 6] = ["image_train", "image_test", "text_train", "text_test", "labels_train", "labels_test"];

/// Default candidate variable names per role.
fn default_roles(format: Format) -> Vec<(&'static str, Vec<&'static str>)> {
    let wiki = vec![("image_train", vec!["I_tr"]), ("image_test", vec!["I_te"]), ("text_train", vec!["T_tr"]), ("text_test", vec!["T_te"])];
    match format {
        Format::Wiki => wiki,
        Format::WikiMat | Format::Uci => {
            let mut r = wiki;
            r.push(("labels_train", vec!["L_tr"]));
            r.push(("labels_test", vec!["L_te"]));
            r
        }
        Format::Mirflickr | Format::NusWide | Format::Iapr => vec![
            ("image", vec!["IAll", "images", "XAll"]),
            ("text", vec!["YAll", "tags"]),
            ("labels", vec!["LAll", "labels"]),
            ("train", vec!["param.indexTrain"]),
            ("query", vec!["param.indexTest", "param.indexQuery"]),
            ("database", vec!["param.indexDatabase", "param.indexRetrieval"]),
            ("image_train", vec!["XDatabase"]),
            ("image_test", vec!["XTest"]),
            ("text_train", vec!["YDatabase"]),
            ("text_test", vec!["YTest"]),
            ("labels_train", vec!["databaseL"]),
            ("labels_test", vec!["testL"]),
        ],
        Format::Generic => vec![],
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// One set of arrays for all items (optional split index lists).
    All,
    /// A training (database) part and a test (query) part.
    Parts,
}

/// The `.mat` inputs (folders expanded) and, for `wiki`, the release folder.
fn resolve_inputs(args: &ConvertArgs) -> Result<(Vec<PathBuf>, Option<PathBuf>)> {
    if args.input.is_empty() {
        bail!("--input: give at least one input file or folder");
    }
    for p in &args.input {
        if !p.exists() {
            bail!("{}: no such file or folder (--input)", p.display());
        }
    }
    if args.format == Format::Wiki {
        if args.input.len() != 1 {
            bail!("--format wiki takes one --input: the folder holding raw_features.mat and the .list files");
        }
        let p = &args.input[0];
        let dir = if p.is_dir() { p.clone() } else { p.parent().map(Path::to_path_buf).unwrap_or_default() };
        let feats = dir.join("raw_features.mat");
        if !feats.is_file() {
            bail!("{}: no such file; --format wiki expects the folder of raw_features.mat, trainset_txt_img_cat.list, testset_txt_img_cat.list and categories.list", feats.display());
        }
        return Ok((vec![feats], Some(dir)));
    }
    let mut files = Vec::new();
    for p in &args.input {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("{}: cannot list folder", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|e| e.eq_ignore_ascii_case("mat")))
                .collect();
            if found.is_empty() {
                bail!("{}: the folder holds no .mat files", p.display());
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    Ok((files, None))
}

/// Candidate variables per role.
type RoleCandidates = BTreeMap<String, Vec<Candidate>>;

/// The candidates of every role after `--key` overrides, and the roles the user named.
fn plan_roles(args: &ConvertArgs, files: &[PathBuf]) -> Result<(RoleCandidates, Vec<String>)> {
    let defaults = default_roles(args.format);
    let allowed: Vec<&str> = if args.format == Format::Generic {
        ALL_ROLES.iter().chain(PART_ROLES.iter()).copied().collect()
    } else {
        defaults.iter().map(|(r, _)| *r).collect()
    };
    let mut roles: RoleCandidates =
        defaults.iter().map(|(r, ks)| (r.to_string(), ks.iter().map(|k| Candidate { key: k.to_string(), file: None }).collect())).collect();
    let mut overridden = Vec::new();
    for kv in &args.keys {
        let (role, value) = kv.split_once('=').ok_or_else(|| anyhow!("--key {kv:?}: expected ROLE=NAME"))?;
        let (role, value) = (role.trim(), value.trim());
        if !allowed.contains(&role) {
            bail!("--key {kv:?}: --format {} has no role {role:?}; its roles are {}", args.format.cli_name(), allowed.join(", "));
        }
        if value.is_empty() {
            bail!("--key {kv:?}: empty variable name");
        }
        let cand = match value.rsplit_once(':') {
            Some((file, key)) => {
                let i = files
                    .iter()
                    .position(|f| f == Path::new(file) || f.file_name().is_some_and(|n| n == std::ffi::OsStr::new(file)))
                    .ok_or_else(|| {
                    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                    anyhow!("--key {kv:?}: {file} is not one of the inputs ({})", names.join(", "))
                })?;
                Candidate { key: key.to_string(), file: Some(i) }
            }
            None => Candidate { key: value.to_string(), file: None },
        };
        roles.insert(role.to_string(), vec![cand]);
        overridden.push(role.to_string());
    }
    Ok((roles, overridden))
}

fn choose_layout(args: &ConvertArgs, overridden: &[String], read: &MatRead) -> Result<Layout> {
    let is_part = |r: &String| PART_ROLES.contains(&r.as_str());
    let over_parts = overridden.iter().any(is_part);
    let over_all = overridden.iter().any(|r| !is_part(r));
    match args.format {
        Format::Wiki | Format::WikiMat | Format::Uci => Ok(Layout::Parts),
        Format::Generic => match (over_all, over_parts) {
            (true, true) => bail!("--format generic: give either the roles image, text, labels (one set of items) or image_train, image_test, text_train, text_test, labels_train, labels_test (a training and a test part), not both"),
            (true, false) => Ok(Layout::All),
            (false, true) => Ok(Layout::Parts),
            (false, false) => bail!("--format generic needs the variable names: --key image=NAME --key text=NAME --key labels=NAME (or the six *_train/*_test roles); the input holds: {}", read.describe_contents()),
        },
        _ => {
            if over_parts && !over_all {
                return Ok(Layout::Parts);
            }
            if over_all && !over_parts {
                return Ok(Layout::All);
            }
            let all = read.vars.contains_key("labels") || read.vars.contains_key("image");
            let parts = read.vars.contains_key("labels_train") || read.vars.contains_key("image_train");
            if all {
                Ok(Layout::All)
            } else if parts {
                Ok(Layout::Parts)
            } else {
                bail!(
                    "--format {}: found neither IAll/images/XAll + YAll + LAll nor XDatabase/XTest + YDatabase/YTest + databaseL/testL; {} (name the variables with --key, or use --format generic)",
                    args.format.cli_name(),
                    read.describe_contents()
                )
            }
        }
    }
}

/// Reads a class-name file: one name per line, blank lines ignored.
fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the class names", path.display()))?;
    let names: Vec<String> = text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    if names.is_empty() {
        bail!("{}: no class names (expected one per line)", path.display());
    }
    for (i, a) in names.iter().enumerate() {
        if names[..i].contains(a) {
            bail!("{}: class name {a:?} appears twice", path.display());
        }
    }
    Ok(names)
}

/// The category column of a Wikipedia `.list` file as a label "variable".
fn wiki_list_labels(path: &Path) -> Result<MatVar> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read (--format wiki needs it)", path.display()))?;
    let mut cats = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != 3 {
            bail!("{}: line {}: expected `text_id image_id category`, found {} fields", path.display(), i + 1, fields.len());
        }
        let c: i64 =
            fields[2].parse().map_err(|_| anyhow!("{}: line {}: category {:?} is not a whole number", path.display(), i + 1, fields[2]))?;
        if c < 1 {
            bail!("{}: line {}: category {c} (categories are 1-based)", path.display(), i + 1);
        }
        cats.push(c);
    }
    let n = cats.len();
    Ok(MatVar {
        file: path.to_path_buf(),
        key: "category column".into(),
        data: crate::npy::NpyData::I64(ndarray::Array1::from(cats).into_shape_with_order(ndarray::IxDyn(&[n, 1]))?),
    })
}

/// One set of items: image (features or images), text features, labels.
struct PartVars {
    image: MatVar,
    text: MatVar,
    labels: MatVar,
}

enum ImageData {
    Features(Array2<f32>),
    Images(Array4<u8>),
}

struct Assembled {
    image: ImageData,
    text: Array2<f32>,
    labels: Array2<u8>,
    unlabelled: Vec<bool>,
    classes: Vec<String>,
    part_sizes: Vec<usize>,
    label_kind: String,
}

fn assemble(
    parts: &mut [PartVars],
    args: &ConvertArgs,
    class_names: Option<Vec<String>>,
    default_names: &dyn Fn(usize) -> Vec<String>,
) -> Result<Assembled> {
    let mut images = Vec::new();
    let mut texts = Vec::new();
    let mut raws = Vec::new();
    let mut sizes = Vec::new();
    for p in parts.iter_mut() {
        let n = arrays::item_count(&[&p.image, &p.text, &p.labels])?;
        let im = match p.image.shape().len() {
            4 => ImageData::Images(arrays::images(&mut p.image, n)?),
            _ => ImageData::Features(arrays::features(&p.image, n)?),
        };
        images.push(im);
        texts.push(arrays::features(&p.text, n)?);
        raws.push(arrays::raw_labels(&p.labels, n)?);
        sizes.push(n);
    }
    // Labels: base, class count, matrices.
    let default_one = args.format != Format::Generic;
    let raw_refs: Vec<&RawLabels> = raws.iter().collect();
    let base = arrays::resolve_base(args.label_base, default_one, &raw_refs);
    let pairs: Vec<(&RawLabels, &MatVar)> = raws.iter().zip(parts.iter().map(|p| &p.labels)).collect();
    let implied = arrays::implied_classes(&pairs, base)?;
    let named = class_names.is_some();
    let classes = match class_names {
        Some(names) => {
            if implied > names.len() {
                let src = args.classes.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                let kind = if raws.iter().any(|r| matches!(r, RawLabels::Index(_))) {
                    format!(" (class indices read as {base}-based; see --label-base)")
                } else {
                    String::new()
                };
                bail!("{src}: {} class names, but the labels use {implied} classes{kind}", names.len());
            }
            names
        }
        None => {
            if implied == 0 {
                bail!("{}: no labels found (every row is empty)", parts[0].labels.what());
            }
            default_names(implied)
        }
    };
    let c = classes.len();
    let mut label_parts = Vec::new();
    let mut unlabelled = Vec::new();
    let mut offset = 0;
    for ((raw, p), &n) in raws.iter().zip(parts.iter()).zip(&sizes) {
        let l = arrays::label_matrix(raw, &p.labels, base, c, named)?;
        let empty = arrays::rows_without_label(&l);
        if !empty.is_empty() && !args.allow_unlabelled {
            bail!(
                "{}: {} of {n} rows have no label (first: row {}, item {} of the bundle); pass --allow-unlabelled to keep them, declared unlabelled",
                p.labels.what(),
                empty.len(),
                empty[0],
                offset + empty[0]
            );
        }
        let mut u = vec![false; n];
        for i in empty {
            u[i] = true;
        }
        unlabelled.extend(u);
        label_parts.push(l);
        offset += n;
    }
    let label_kind = match &raws[0] {
        RawLabels::Index(_) => format!("class indices ({base}-based)"),
        RawLabels::MultiHot(_) => "0/1 matrix".to_string(),
    };
    // Concatenate the parts (training part first).
    let views: Vec<_> = label_parts.iter().map(|a| a.view()).collect();
    let labels = concatenate(Axis(0), &views)?;
    if texts.windows(2).any(|w| w[0].ncols() != w[1].ncols()) {
        bail!(
            "{} and {}: the text parts have different widths ({} and {})",
            parts[0].text.what(),
            parts[1].text.what(),
            texts[0].ncols(),
            texts[1].ncols()
        );
    }
    let views: Vec<_> = texts.iter().map(|a| a.view()).collect();
    let text = concatenate(Axis(0), &views)?;
    let image = if images.iter().all(|i| matches!(i, ImageData::Features(_))) {
        let fs: Vec<&Array2<f32>> = images.iter().map(|i| if let ImageData::Features(f) = i { f } else { unreachable!() }).collect();
        if fs.windows(2).any(|w| w[0].ncols() != w[1].ncols()) {
            bail!("{} and {}: the image feature parts have different widths", parts[0].image.what(), parts[1].image.what());
        }
        let views: Vec<_> = fs.iter().map(|a| a.view()).collect();
        ImageData::Features(concatenate(Axis(0), &views)?)
    } else if images.iter().all(|i| matches!(i, ImageData::Images(_))) {
        if images.len() == 1 {
            images.pop().unwrap()
        } else {
            let ims: Vec<&Array4<u8>> = images.iter().map(|i| if let ImageData::Images(a) = i { a } else { unreachable!() }).collect();
            if ims.windows(2).any(|w| w[0].shape()[1..] != w[1].shape()[1..]) {
                bail!("{} and {}: the image parts have different sizes", parts[0].image.what(), parts[1].image.what());
            }
            let views: Vec<_> = ims.iter().map(|a| a.view()).collect();
            ImageData::Images(concatenate(Axis(0), &views)?)
        }
    } else {
        bail!("{} and {}: one part holds images, the other features", parts[0].image.what(), parts[1].image.what());
    };
    Ok(Assembled { image, text, labels, unlabelled, classes, part_sizes: sizes, label_kind })
}

fn range(a: usize, b: usize) -> Vec<usize> {
    (a..b).collect()
}

/// A random split: `q` queries, the rest the database, `t` training items drawn from it.
fn random_split(n: usize, q: usize, t: usize, seed: u64) -> Result<FixedSplit> {
    if q == 0 || q >= n {
        bail!("--query-size {q}: must be between 1 and {} (the items minus one)", n.saturating_sub(1));
    }
    if t == 0 || t > n - q {
        bail!("--train-size {t}: must be between 1 and {} (the database size)", n - q);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut rng);
    let mut query = perm[..q].to_vec();
    let mut database = perm[q..].to_vec();
    let mut train = perm[q..q + t].to_vec();
    query.sort_unstable();
    database.sort_unstable();
    train.sort_unstable();
    Ok(FixedSplit { train, query, database })
}

fn split_from_npy(args: &ConvertArgs, n: usize) -> Result<Option<FixedSplit>> {
    if args.split.is_empty() {
        return Ok(None);
    }
    let mut got: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for kv in &args.split {
        let (role, file) = kv.split_once('=').ok_or_else(|| anyhow!("--split {kv:?}: expected ROLE=FILE.npy"))?;
        if !["train", "query", "database"].contains(&role) {
            bail!("--split {kv:?}: the role must be train, query or database");
        }
        got.insert(role.to_string(), crate::npy::read_indices(Path::new(file), n)?);
    }
    let query = got.remove("query").ok_or_else(|| anyhow!("--split: give query=FILE.npy too"))?;
    let database = got.remove("database").ok_or_else(|| anyhow!("--split: give database=FILE.npy too"))?;
    let train = got.remove("train").unwrap_or_else(|| database.clone());
    Ok(Some(FixedSplit { train, query, database }))
}

fn default_name(format: Format, n_classes: usize, out: &Path) -> String {
    match format {
        Format::Wiki | Format::WikiMat => "wiki".into(),
        Format::Uci => "uci-digits".into(),
        Format::Mirflickr => "mirflickr25k".into(),
        Format::NusWide => format!("nus-wide-tc{n_classes}"),
        Format::Iapr => "iapr-tc12".into(),
        Format::Generic => out.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "bundle".into()),
    }
}

/// What a modality's features are, where the format tells.
fn describe(format: Format, modality: &str, key: &str, dim: usize) -> Option<&'static str> {
    match (format, modality, dim) {
        (Format::Wiki | Format::WikiMat, "image", 128) => Some("128-word SIFT bag-of-visual-words histograms (L1-normalised)"),
        (Format::Wiki | Format::WikiMat, "text", 10) => Some("10-topic LDA topic proportions"),
        (Format::Uci, "image", 76) if key.starts_with('I') => Some("76 Fourier coefficients of the character shapes (mfeat-fou)"),
        (Format::Uci, "image", 240) if key.starts_with('P') => Some("240 pixel averages in 2x3 windows, values 0..6 (mfeat-pix)"),
        (Format::Uci, "text", 64) => Some("64 Karhunen-Loeve coefficients (mfeat-kar)"),
        (Format::Mirflickr | Format::NusWide | Format::Iapr, "text", _) if key.contains('Y') || key == "tags" => Some("bag of tags"),
        _ => None,
    }
}

fn file_label(p: &Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

/// Converts per `args` and writes the bundle; returns it with the summary line.
pub fn convert(args: &ConvertArgs, py: &dyn crate::helpers::PythonHelpers) -> Result<Converted> {
    if args.out.exists() && !args.force {
        bail!("{} already exists; pass --force to replace it", args.out.display());
    }
    crate::bundle::check_replaceable(&args.out)?;
    if args.split_seed.is_none() && (args.query_size.is_some() || args.train_size.is_some()) {
        bail!("--query-size / --train-size set the random split drawn with --split-seed; give --split-seed too");
    }
    let (files, wiki_dir) = resolve_inputs(args)?;
    let (roles, overridden) = plan_roles(args, &files)?;
    let class_names = match &args.classes {
        Some(p) => Some(read_class_names(p)?),
        None => match &wiki_dir {
            Some(d) => Some(
                read_class_names(&d.join("categories.list"))
                    .context("--format wiki takes the class names from categories.list (or --classes FILE)")?,
            ),
            None => None,
        },
    };
    // Scratch folder for the .npy dumps: beside the output (same disk) when its parent exists.
    let parent = args.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let work = if parent.is_dir() {
        tempfile::Builder::new().prefix(&crate::outdir::partial_prefix(&args.out, "convert")?).tempdir_in(parent)
    } else {
        tempfile::Builder::new().prefix("cmh-convert-").tempdir()
    }
    .context("cannot create a scratch folder")?;
    let mut read = mat::read_roles(&files, &roles, work.path(), py)?;
    let layout = choose_layout(args, &overridden, &read)?;
    let cand = |r: &str| roles.get(r).cloned().unwrap_or_default();

    let mut parts = Vec::new();
    let mut split_vars: Vec<(String, MatVar)> = Vec::new();
    match layout {
        Layout::All => {
            let image = read.take("image", &cand("image"))?;
            let text = read.take("text", &cand("text"))?;
            let labels = read.take("labels", &cand("labels"))?;
            parts.push(PartVars { image, text, labels });
            for r in ["train", "query", "database"] {
                if let Some(v) = read.vars.remove(r) {
                    split_vars.push((r.to_string(), v));
                } else if overridden.iter().any(|o| o == r) {
                    read.take(r, &cand(r))?; // fails naming the missing variable
                }
            }
        }
        Layout::Parts => {
            for part in ["train", "test"] {
                let image = read.take(&format!("image_{part}"), &cand(&format!("image_{part}")))?;
                let text = read.take(&format!("text_{part}"), &cand(&format!("text_{part}")))?;
                let labels = match &wiki_dir {
                    Some(d) => wiki_list_labels(&d.join(format!("{part}set_txt_img_cat.list")))?,
                    None => read.take(&format!("labels_{part}"), &cand(&format!("labels_{part}")))?,
                };
                parts.push(PartVars { image, text, labels });
            }
        }
    }
    let fmt = args.format;
    let default_names = move |c: usize| -> Vec<String> {
        if fmt == Format::Uci && c == 10 {
            ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"].iter().map(|s| s.to_string()).collect()
        } else {
            (1..=c).map(|k| format!("class{k}")).collect()
        }
    };
    let a = assemble(&mut parts, args, class_names, &default_names)?;
    let n: usize = a.part_sizes.iter().sum();

    // The split.
    let from_file = !split_vars.is_empty();
    let fixed = layout == Layout::Parts || from_file;
    if fixed && (args.split_seed.is_some() || !args.split.is_empty()) {
        bail!(
            "the input already has a fixed split ({}); --split / --split-seed are for releases without one",
            if layout == Layout::Parts { "its training and test parts" } else { "index lists in the file" }
        );
    }
    if args.split_seed.is_some() && !args.split.is_empty() {
        bail!("give either --split files or --split-seed, not both");
    }
    let split = if layout == Layout::Parts {
        let n0 = a.part_sizes[0];
        Some(FixedSplit { train: range(0, n0), query: range(n0, n), database: range(0, n0) })
    } else if from_file {
        let mut got: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (r, v) in &split_vars {
            got.insert(r.clone(), arrays::indices(v, n, args.mat_index_base)?);
        }
        let what = split_vars.iter().map(|(r, v)| format!("{r} = {}", v.what())).collect::<Vec<_>>().join(", ");
        let query = got
            .remove("query")
            .ok_or_else(|| anyhow!("the input has split index lists ({what}) but no query list; name it with --key query=NAME"))?;
        let database = got
            .remove("database")
            .ok_or_else(|| anyhow!("the input has split index lists ({what}) but no database list; name it with --key database=NAME"))?;
        let train = got.remove("train").unwrap_or_else(|| database.clone());
        Some(FixedSplit { train, query, database })
    } else if let Some(seed) = args.split_seed {
        let (dq, dt) = match fmt {
            Format::NusWide => (Some(2100), Some(10500)),
            Format::Mirflickr | Format::Iapr => (Some(2000), Some(10000)),
            _ => (None, None),
        };
        let q = args
            .query_size
            .or(dq)
            .ok_or_else(|| anyhow!("--split-seed with --format {}: give --query-size and --train-size", fmt.cli_name()))?;
        let t = args.train_size.or(dt).ok_or_else(|| anyhow!("--split-seed with --format {}: give --train-size", fmt.cli_name()))?;
        Some(random_split(n, q, t, seed)?)
    } else {
        split_from_npy(args, n)?
    };

    // Modalities and provenance.
    let keys_of = |m: &str| -> (String, String) {
        let vs: Vec<&MatVar> = parts.iter().map(|p| if m == "image" { &p.image } else { &p.text }).collect();
        let keys: Vec<&str> = vs.iter().map(|v| v.key.as_str()).collect();
        let mut fs: Vec<String> = vs.iter().map(|v| file_label(&v.file)).collect();
        fs.dedup();
        (keys.join(" + "), fs.join(", "))
    };
    let mut modalities = Vec::new();
    let mut dims_text = Vec::new();
    let Assembled { image, text, labels, unlabelled, classes, part_sizes: _, label_kind } = a;
    let image_data = match image {
        ImageData::Images(im) => (None, Some(im)),
        ImageData::Features(f) => (Some(f), None),
    };
    for (m, (features, images)) in [("image", image_data), ("text", (Some(text), None))] {
        let (keys, fs) = keys_of(m);
        let dim = features.as_ref().map(|f| f.ncols()).unwrap_or(0);
        let desc = match images {
            Some(ref im) => {
                dims_text.push(format!("{m} {}x{} RGB images", im.shape()[1], im.shape()[2]));
                format!("{}x{} RGB images, {keys} of {fs}", im.shape()[1], im.shape()[2])
            }
            None => {
                dims_text.push(format!("{m} {dim}-d features"));
                match describe(fmt, m, &keys, dim) {
                    Some(d) => format!("{d}, {keys} of {fs}"),
                    None => format!("{dim}-d features, {keys} of {fs}"),
                }
            }
        };
        modalities.push(NewModality { name: m.to_string(), features, description: Some(desc), images });
    }
    let mut inputs: Vec<String> = files.iter().zip(&read.formats).map(|(f, v)| format!("{} ({v})", f.display())).collect();
    if let Some(d) = &wiki_dir {
        for l in ["trainset_txt_img_cat.list", "testset_txt_img_cat.list", "categories.list"] {
            inputs.push(d.join(l).display().to_string());
        }
    }
    if let Some(c) = &args.classes {
        inputs.push(format!("class names {}", c.display()));
    }
    let name = args.name.clone().unwrap_or_else(|| default_name(fmt, classes.len(), &args.out));
    let source = format!("cmh data convert --format {} from {}; labels: {label_kind}", fmt.cli_name(), inputs.join(", "));
    let n_unlabelled = unlabelled.iter().filter(|&&u| u).count();
    let n_classes = classes.len();
    let writer = BundleWriter {
        name: name.clone(),
        source,
        classes,
        modalities,
        labels: vec![labels],
        unlabelled: if n_unlabelled > 0 { Some(unlabelled) } else { None },
        class_embeddings: None,
        split: split.clone(),
    };
    let bundle = writer.write(&args.out, args.force)?;
    drop(writer);
    drop(work);
    let split_text = match &split {
        Some(s) => format!("fixed split train {} / query {} / database {}", s.train.len(), s.query.len(), s.database.len()),
        None => "no fixed split (drawn at train time)".to_string(),
    };
    let unl = if n_unlabelled > 0 { format!(", {n_unlabelled} unlabelled") } else { String::new() };
    let versions: Vec<String> = files.iter().zip(&read.formats).map(|(f, v)| format!("{} {v}", file_label(f))).collect();
    let summary = format!(
        "wrote bundle {} ({name}): {n} items{unl}, {n_classes} classes, {}, {split_text}; labels from {label_kind}; read {}",
        args.out.display(),
        dims_text.join(", "),
        versions.join(", ")
    );
    Ok(Converted { bundle, summary })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_split_is_seeded_disjoint_and_sized() {
        let a = random_split(50, 10, 15, 7).unwrap();
        assert_eq!(a, random_split(50, 10, 15, 7).unwrap());
        assert_ne!(a, random_split(50, 10, 15, 8).unwrap());
        assert_eq!((a.query.len(), a.database.len(), a.train.len()), (10, 40, 15));
        let mut all: Vec<usize> = a.query.iter().chain(&a.database).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..50).collect::<Vec<_>>(), "queries and database partition the items");
        assert!(a.train.iter().all(|i| a.database.binary_search(i).is_ok()), "train ⊂ database");
        assert!(random_split(50, 50, 1, 0).is_err());
        assert!(random_split(50, 10, 41, 0).is_err());
    }

    #[test]
    fn key_overrides_are_checked() {
        let files = vec![PathBuf::from("/d/a.mat"), PathBuf::from("/d/b.mat")];
        let mut args = ConvertArgs::new(Format::Generic, files.clone(), "/tmp/x");
        args.keys = vec!["image=X".into(), "labels=b.mat:L".into()];
        let (roles, over) = plan_roles(&args, &files).unwrap();
        assert_eq!(roles["image"], vec![Candidate { key: "X".into(), file: None }]);
        assert_eq!(roles["labels"], vec![Candidate { key: "L".into(), file: Some(1) }]);
        assert_eq!(over, vec!["image".to_string(), "labels".to_string()]);
        args.keys = vec!["picture=X".into()];
        let err = format!("{:#}", plan_roles(&args, &files).unwrap_err());
        assert!(err.contains("no role \"picture\"") && err.contains("image_train"), "{err}");
        args.keys = vec!["labels=c.mat:L".into()];
        assert!(format!("{:#}", plan_roles(&args, &files).unwrap_err()).contains("c.mat is not one of the inputs"));
        let mut args = ConvertArgs::new(Format::Wiki, files.clone(), "/tmp/x");
        args.keys = vec!["labels_train=L".into()];
        assert!(plan_roles(&args, &files).is_err(), "wiki labels come from the .list files");
    }
}
