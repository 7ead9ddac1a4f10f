//! Seeded splits under the four protocols. A [`Split`] is recorded in every run's report.
//!
//! Conventions (README "Protocols"):
//! - standard: the bundle's fixed split, or random query / database / train sizes with
//!   train ⊂ database (MIRFlickr: 2000 / 18015 / 10000).
//! - zero-shot: unseen classes given by name or as a fraction of the classes (at least one class
//!   each side). An item is *seen* when all its labels are seen classes, *unseen* when it has at
//!   least one unseen label (so a multi-label item touching both sides is never trained on).
//!   Training uses seen items only; queries and database come from unseen items. With a fixed split
//!   the bundle's train / query / database roles are kept and filtered; otherwise the unseen items
//!   are split randomly into queries and database. Relevance still uses the full label sets.
//! - semi-supervised: a fraction of the training rows have their labels masked; they stay in the
//!   training set as unlabelled rows. Combined with zero-shot for protocol (c).
//! - label spaces: protocol (d), each modality sees its own random subset of the seen classes;
//!   labels outside that subset are dropped from that modality's training labels.

use crate::bundle::Bundle;
use crate::method::{TrainSet, View};
use anyhow::{bail, Context, Result};
use ndarray::{Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// (a) the standard split.
    #[default]
    Standard,
    /// (b) zero-shot: train on seen classes, retrieve unseen ones.
    ZeroShot,
    /// (c) zero-shot with a fraction of the training labels masked.
    SemiSupervised,
    /// (d) (c) with a different random subset of seen classes per modality.
    LabelSpaces,
}

/// Everything that defines a split; recorded in reports.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SplitConfig {
    pub protocol: Protocol,
    pub seed: u64,
    /// Random standard split sizes (used when the bundle has no fixed split, or when given).
    pub query_size: Option<usize>,
    pub database_size: Option<usize>,
    pub train_size: Option<usize>,
    /// Unseen classes by name (zero-shot protocols); empty = draw `unseen_fraction` of them.
    pub unseen_classes: Vec<String>,
    pub unseen_fraction: f64,
    /// Fraction of training labels masked (semi-supervised, label-spaces).
    pub mask_fraction: f64,
    /// Fraction of the seen classes each modality sees (label-spaces).
    pub modality_class_fraction: f64,
    /// Query fraction of the unseen items when the bundle has no fixed split (zero-shot).
    pub zero_shot_query_fraction: f64,
    /// Evaluate on a validation split carved from the training items only (see
    /// [`validation_split`]); the split's queries and database are then never read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationConfig>,
}

/// How a validation split is carved from a split's training items.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Standard protocol: the fraction of the (labelled) training items held out as validation
    /// queries, stratified by class. Zero-shot protocols: the fraction of the seen classes held
    /// out as validation-unseen classes (at least one).
    pub fraction: f64,
    /// Seed of the carving (independent of the split's own seed).
    pub seed: u64,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self { fraction: 0.2, seed: 12345 }
    }
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            protocol: Protocol::Standard,
            seed: 0,
            query_size: None,
            database_size: None,
            train_size: None,
            unseen_classes: vec![],
            unseen_fraction: 0.2,
            mask_fraction: 0.7,
            modality_class_fraction: 0.8,
            zero_shot_query_fraction: 0.2,
            validation: None,
        }
    }
}

/// A realised split: item indices into the bundle, and what training may see.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Split {
    pub config: SplitConfig,
    pub train: Vec<usize>,
    pub query: Vec<usize>,
    pub database: Vec<usize>,
    pub seen_classes: Vec<usize>,
    pub unseen_classes: Vec<usize>,
    /// Per modality, per training row: whether its label is visible.
    pub train_labelled: Vec<Vec<bool>>,
    /// Per modality, the classes whose labels training sees.
    pub modality_classes: Vec<Vec<usize>>,
}

impl Split {
    /// Whether the retrieval database is exactly the training set (same items, same order), so the
    /// learned unified codes B can serve as database codes.
    pub(crate) fn database_is_train(&self) -> bool {
        self.database == self.train
    }

    /// A short record for reports (sizes and classes, not the index lists).
    pub fn summary(&self, bundle: &Bundle) -> serde_json::Value {
        let names = |v: &[usize]| v.iter().map(|&c| bundle.class_names()[c].clone()).collect::<Vec<_>>();
        serde_json::json!({
            "protocol": self.config.protocol,
            "seed": self.config.seed,
            "n_train": self.train.len(),
            "n_query": self.query.len(),
            "n_database": self.database.len(),
            "database_is_train": self.database_is_train(),
            "seen_classes": names(&self.seen_classes),
            "unseen_classes": names(&self.unseen_classes),
            "labelled_train_rows": self.train_labelled.iter().map(|l| l.iter().filter(|&&b| b).count()).collect::<Vec<_>>(),
            "modality_classes": self.modality_classes.iter().map(|c| names(c)).collect::<Vec<_>>(),
            "config": self.config,
        })
    }

    /// The training set this split gives a method.
    pub fn train_set(&self, bundle: &Bundle, prefer_images: bool) -> Result<TrainSet> {
        let views = bundle_views(bundle, &self.train, prefer_images)?;
        let mut labels = Vec::new();
        for (m, l) in bundle.labels.iter().enumerate() {
            let mut lm = l.select(Axis(0), &self.train);
            let visible: Vec<bool> = (0..bundle.n_classes()).map(|c| self.modality_classes[m].contains(&c)).collect();
            for (r, mut row) in lm.outer_iter_mut().enumerate() {
                if !self.train_labelled[m][r] {
                    row.fill(0);
                } else {
                    for (c, v) in row.iter_mut().enumerate() {
                        if !visible[c] {
                            *v = 0;
                        }
                    }
                }
            }
            labels.push(lm);
        }
        // A row whose visible labels all fell outside its modality's classes counts as unlabelled.
        let labelled = labels
            .iter()
            .zip(&self.train_labelled)
            .map(|(l, tl)| l.outer_iter().zip(tl).map(|(row, &t)| t && row.iter().any(|&v| v != 0)).collect())
            .collect();
        Ok(TrainSet {
            views,
            labels,
            labelled,
            class_names: bundle.class_names().to_vec(),
            modality_classes: self.modality_classes.clone(),
            class_embeddings: bundle.class_embeddings.clone(),
        })
    }
}

/// Each modality's view of the items `idx`: raw images when asked and present, else features
/// (refused, naming the file, row and column, when a value is NaN or infinite).
pub fn bundle_views(bundle: &Bundle, idx: &[usize], prefer_images: bool) -> Result<Vec<View>> {
    bundle
        .modalities
        .iter()
        .enumerate()
        .map(|(k, m)| {
            let has_images = m.images.is_some() || m.mapped_images.is_some();
            let has_features = m.features.is_some() || m.mapped_features.is_some();
            if !has_images && !has_features {
                bail!("modality {} has no data", m.name);
            }
            // Mapped arrays stay mapped: the selection only records the rows (their values were
            // checked when the bundle was mapped).
            Ok(if has_images && (prefer_images || !has_features) {
                match (&m.images, &m.mapped_images) {
                    (Some(im), _) => View::Images(im.select(Axis(0), idx)),
                    (None, Some(mp)) => View::Mapped(mp.select(idx)),
                    (None, None) => unreachable!("has images"),
                }
            } else {
                match (&m.features, &m.mapped_features) {
                    (Some(x), _) => {
                        let v = x.select(Axis(0), idx);
                        if let Some(((r, j), val)) = v.indexed_iter().find(|(_, v)| !v.is_finite()) {
                            let file = bundle.manifest.modalities[k].features.clone().unwrap_or_default();
                            bail!(
                                "{}: features must be finite; found {val} at row {}, column {j} (an item this run reads)",
                                bundle.dir.join(file).display(),
                                idx[r]
                            );
                        }
                        View::Features(v)
                    }
                    (None, Some(mp)) => View::Mapped(mp.select(idx)),
                    (None, None) => unreachable!("has features"),
                }
            })
        })
        .collect()
}

/// Rows `idx` of the union labels (what relevance is judged on).
pub fn eval_labels(bundle: &Bundle, idx: &[usize]) -> Array2<u8> {
    bundle.union_labels().select(Axis(0), idx)
}

fn draw(rng: &mut ChaCha8Rng, pool: &[usize], k: usize) -> Vec<usize> {
    let mut p = pool.to_vec();
    p.shuffle(rng);
    p.truncate(k);
    p
}

/// Realises a split of `bundle` under `cfg` (the validation split of it when `cfg.validation`
/// is set).
pub fn make_split(bundle: &Bundle, cfg: &SplitConfig) -> Result<Split> {
    let split = make_test_split(bundle, &SplitConfig { validation: None, ..cfg.clone() })?;
    match &cfg.validation {
        None => Ok(split),
        Some(v) => {
            let mut val = validation_split(bundle, &split, v)?;
            val.config = cfg.clone();
            Ok(val)
        }
    }
}

/// The primary class of an item for stratification: its rarest label among `classes`.
fn primary_class(labels: ndarray::ArrayView1<u8>, counts: &[usize]) -> Option<usize> {
    labels.iter().enumerate().filter(|&(_, &v)| v != 0).map(|(c, _)| c).min_by_key(|&c| (counts[c], c))
}

/// Carves a validation split from `split`'s training items only; its queries and database are
/// never looked at, so settings chosen on the result never see the test queries.
///
/// - Standard protocol: a class-stratified `fraction` of the labelled training items (grouped by
///   each item's rarest label, at least one item of every group with two or more) become the
///   validation queries; the remaining training items are both the validation training set and
///   its retrieval database.
/// - Zero-shot protocols: a `fraction` of the seen classes (at least one, at least one left) become
///   validation-unseen classes. The training items whose labels are all still seen train; the
///   training items touching a held-out class are split into queries (`zero_shot_query_fraction`)
///   and database, as in a zero-shot split without a fixed split. Label masks and per-modality
///   class subsets carry over, restricted to the remaining seen classes.
pub fn validation_split(bundle: &Bundle, split: &Split, v: &ValidationConfig) -> Result<Split> {
    if !(v.fraction > 0.0 && v.fraction < 1.0) {
        bail!("validation split: fraction must be in (0, 1), found {}", v.fraction);
    }
    let labels = bundle.union_labels();
    let c = bundle.n_classes();
    let n_mod = split.train_labelled.len();
    // Positions (into split.train) that every modality sees labelled: the only candidates for
    // validation queries (their relevance is judged on labels training must not lose).
    let labelled_pos = |r: usize| split.train_labelled.iter().all(|l| l[r]);
    let zero_shot = split.config.protocol != Protocol::Standard;
    let (train_pos, query_pos, database_pos, seen, held_out) = if !zero_shot {
        let query = stratified_holdout(labels.view(), &split.train, &labelled_pos, v)?;
        let train: Vec<usize> = (0..split.train.len()).filter(|r| query.binary_search(r).is_err()).collect();
        (train.clone(), query, train, split.seen_classes.clone(), vec![])
    } else {
        let mut rng = ChaCha8Rng::seed_from_u64(v.seed);
        let s = &split.seen_classes;
        if s.len() < 2 {
            bail!("validation split: zero-shot validation holds out seen classes, but only {} class is seen", s.len());
        }
        let k = ((s.len() as f64 * v.fraction).round() as usize).clamp(1, s.len() - 1);
        let mut held = draw(&mut rng, s, k);
        held.sort_unstable();
        let is_held: Vec<bool> = (0..c).map(|x| held.contains(&x)).collect();
        let touches = |i: usize| labels.row(i).iter().enumerate().any(|(k, &x)| x != 0 && is_held[k]);
        let train: Vec<usize> = (0..split.train.len()).filter(|&r| !touches(split.train[r])).collect();
        let mut pool: Vec<usize> = (0..split.train.len()).filter(|&r| touches(split.train[r]) && labelled_pos(r)).collect();
        pool.shuffle(&mut rng);
        let q = ((pool.len() as f64 * split.config.zero_shot_query_fraction).round() as usize).max(1).min(pool.len());
        let mut query = pool[..q].to_vec();
        let mut database = pool[q..].to_vec();
        query.sort_unstable();
        database.sort_unstable();
        if query.is_empty() || database.is_empty() || train.is_empty() {
            bail!(
                "validation split: holding out the seen classes {:?} leaves {} training items, {} queries and {} database items; each needs at least one",
                held.iter().map(|&k| &bundle.class_names()[k]).collect::<Vec<_>>(),
                train.len(),
                query.len(),
                database.len()
            );
        }
        let seen: Vec<usize> = s.iter().copied().filter(|x| !is_held[*x]).collect();
        (train, query, database, seen, held)
    };
    let pick = |pos: &[usize]| pos.iter().map(|&r| split.train[r]).collect::<Vec<_>>();
    let mut modality_classes: Vec<Vec<usize>> =
        split.modality_classes.iter().map(|mc| mc.iter().copied().filter(|x| !held_out.contains(x)).collect()).collect();
    for mc in modality_classes.iter_mut() {
        if mc.is_empty() {
            // A modality whose classes were all held out keeps the remaining seen classes.
            *mc = seen.clone();
        }
    }
    debug_assert_eq!(modality_classes.len(), n_mod);
    Ok(Split {
        config: split.config.clone(),
        train: pick(&train_pos),
        query: pick(&query_pos),
        database: pick(&database_pos),
        seen_classes: seen,
        unseen_classes: held_out,
        train_labelled: split.train_labelled.iter().map(|l| train_pos.iter().map(|&r| l[r]).collect()).collect(),
        modality_classes,
    })
}

/// The standard-protocol carving of [`validation_split`]: of the training items `train` (indices
/// into `labels`), the positions (into `train`, sorted) held out as validation queries — a
/// class-stratified `v.fraction` of the items with `labelled(position)`, grouped by each item's
/// rarest label, at least one of every group with two or more items and never a whole group.
pub(crate) fn stratified_holdout(
    labels: ArrayView2<u8>,
    train: &[usize],
    labelled: &dyn Fn(usize) -> bool,
    v: &ValidationConfig,
) -> Result<Vec<usize>> {
    if !(v.fraction > 0.0 && v.fraction < 1.0) {
        bail!("validation split: fraction must be in (0, 1), found {}", v.fraction);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(v.seed);
    let mut counts = vec![0usize; labels.ncols()];
    for &i in train {
        for (k, &x) in labels.row(i).iter().enumerate() {
            counts[k] += (x != 0) as usize;
        }
    }
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (r, &i) in train.iter().enumerate() {
        if labelled(r) {
            if let Some(k) = primary_class(labels.row(i), &counts) {
                groups.entry(k).or_default().push(r);
            }
        }
    }
    let mut query = Vec::new();
    for rows in groups.values() {
        if rows.len() < 2 {
            continue;
        }
        let k = ((rows.len() as f64 * v.fraction).round() as usize).clamp(1, rows.len() - 1);
        query.extend(draw(&mut rng, rows, k));
    }
    if query.is_empty() {
        bail!("validation split: no class has two labelled training items to hold one out");
    }
    query.sort_unstable();
    Ok(query)
}

/// `stratified_holdout` over a fully labelled training matrix (one row per training item):
/// (training positions, validation query positions), both sorted. For callers holding arrays
/// rather than a bundle (benchmarks).
pub fn validation_positions(labels: ArrayView2<u8>, v: &ValidationConfig) -> Result<(Vec<usize>, Vec<usize>)> {
    let all: Vec<usize> = (0..labels.nrows()).collect();
    let query = stratified_holdout(labels, &all, &|_| true, v)?;
    let train = all.into_iter().filter(|r| query.binary_search(r).is_err()).collect();
    Ok((train, query))
}

/// Writes a validation bundle of `bundle` into `out`: the same data files (linked, not copied) and
/// a fixed split carved by [`validation_split`] from the training items of `bundle`'s standard
/// split (validation queries; the other training items are training set and database). Training on
/// it under any protocol never reads the test items. `out` must not exist; it appears complete or
/// not at all.
pub fn write_validation_bundle(bundle: &Bundle, v: &ValidationConfig, out: &Path) -> Result<Split> {
    if out.exists() {
        bail!("{}: already exists; choose another --out or remove it", out.display());
    }
    let split = make_split(bundle, &SplitConfig { validation: Some(v.clone()), ..SplitConfig::default() })?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&crate::outdir::partial_prefix(out, "validation")?)
        .tempdir_in(parent)
        .with_context(|| format!("{}: cannot write here", parent.display()))?;
    let src = bundle.dir.canonicalize().with_context(|| format!("{}: cannot resolve", bundle.dir.display()))?;
    let mut m = bundle.manifest.clone();
    let names = ["split_train.npy", "split_query.npy", "split_database.npy"];
    let old_split: Vec<String> = m.split.iter().flat_map(|s| [s.train.clone(), s.query.clone(), s.database.clone()]).collect();
    for e in std::fs::read_dir(&src).with_context(|| format!("{}: cannot list", src.display()))? {
        let name = e?.file_name().to_string_lossy().to_string();
        if name == crate::bundle::MANIFEST || name.starts_with('.') || old_split.contains(&name) || names.contains(&name.as_str()) {
            continue;
        }
        std::os::unix::fs::symlink(src.join(&name), tmp.path().join(&name)).with_context(|| format!("linking {name}"))?;
    }
    for (f, idx) in names.iter().zip([&split.train, &split.query, &split.database]) {
        crate::npy::write_npy(&tmp.path().join(f), &ndarray::Array1::from_iter(idx.iter().map(|&i| i as i64)))?;
    }
    m.split = Some(crate::bundle::SplitSpec { train: names[0].into(), query: names[1].into(), database: names[2].into() });
    m.name = format!("{}-validation", m.name);
    m.source = format!(
        "validation split of {}: {} of its {} training items as queries (class-stratified, fraction {}, seed {}), the other {} as training set and database; its test items are not used",
        src.display(),
        split.query.len(),
        split.query.len() + split.train.len(),
        v.fraction,
        v.seed,
        split.train.len()
    );
    crate::npy::write_text_atomic(&tmp.path().join(crate::bundle::MANIFEST), &(serde_json::to_string_pretty(&m)? + "\n"))?;
    crate::npy::set_mode(tmp.path(), 0o755)?;
    std::fs::rename(tmp.keep(), out).with_context(|| format!("{}: cannot create", out.display()))?;
    Ok(split)
}

/// Realises the evaluation split of `bundle` under `cfg` (ignores `cfg.validation`).
fn make_test_split(bundle: &Bundle, cfg: &SplitConfig) -> Result<Split> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let n = bundle.n_items();
    let c = bundle.n_classes();
    let labels = bundle.union_labels();
    let n_mod = bundle.modalities.len();
    for (name, f) in [("unseen_fraction", cfg.unseen_fraction), ("mask_fraction", cfg.mask_fraction)] {
        if !(0.0..1.0).contains(&f) {
            bail!("split: {name} must be in [0, 1), found {f}");
        }
    }
    if !(cfg.modality_class_fraction > 0.0 && cfg.modality_class_fraction <= 1.0) {
        bail!("split: modality_class_fraction must be in (0, 1], found {}", cfg.modality_class_fraction);
    }
    let random_sizes = cfg.query_size.is_some() || cfg.database_size.is_some() || cfg.train_size.is_some();
    let fixed = if random_sizes { None } else { bundle.split.clone() };
    let zero_shot = cfg.protocol != Protocol::Standard;

    let (seen, unseen) = if zero_shot {
        if cfg.unseen_classes.is_empty() && cfg.unseen_fraction == 0.0 {
            bail!(
                "zero-shot split: unseen_fraction is 0 and no unseen classes are named, so no class would be unseen; \
                 use the standard protocol, or set unseen_fraction > 0 (or name the unseen classes)"
            );
        }
        let unseen: Vec<usize> = if !cfg.unseen_classes.is_empty() {
            let mut u = cfg.unseen_classes.iter().map(|s| bundle.class_index(s)).collect::<Result<Vec<_>>>()?;
            u.sort_unstable();
            u.dedup();
            u
        } else {
            let k = ((c as f64 * cfg.unseen_fraction).round() as usize).max(1);
            let mut u = draw(&mut rng, &(0..c).collect::<Vec<_>>(), k);
            u.sort_unstable();
            u
        };
        if unseen.is_empty() {
            bail!("zero-shot split: no unseen classes (unseen_fraction {} of {c} classes)", cfg.unseen_fraction);
        }
        if unseen.len() >= c {
            bail!("zero-shot split: every class is unseen; at least one class must be seen");
        }
        let seen = (0..c).filter(|x| !unseen.contains(x)).collect::<Vec<_>>();
        (seen, unseen)
    } else {
        ((0..c).collect::<Vec<_>>(), vec![])
    };
    let is_unseen_class: Vec<bool> = (0..c).map(|x| unseen.contains(&x)).collect();
    let item_unseen = |i: usize| labels.row(i).iter().enumerate().any(|(k, &v)| v != 0 && is_unseen_class[k]);
    let item_labelled = |i: usize| labels.row(i).iter().any(|&v| v != 0);

    let (mut train, mut query, mut database) = match &fixed {
        Some(f) => (f.train.clone(), f.query.clone(), f.database.clone()),
        None => {
            let all: Vec<usize> = (0..n).collect();
            if zero_shot {
                (all.clone(), vec![], vec![])
            } else {
                let q = cfg.query_size.unwrap_or((n / 10).max(1));
                if q >= n {
                    bail!("split: query size {q} leaves no database among {n} items");
                }
                let mut perm = all;
                perm.shuffle(&mut rng);
                let query = perm[..q].to_vec();
                let rest = &perm[q..];
                let db = cfg.database_size.unwrap_or(rest.len());
                if db > rest.len() {
                    bail!("split: database size {db} exceeds the {} items left after {q} queries", rest.len());
                }
                let database = rest[..db].to_vec();
                let t = cfg.train_size.unwrap_or(db);
                if t > db || t == 0 {
                    bail!("split: train size {t} must be between 1 and the database size {db} (train ⊂ database)");
                }
                let train = database[..t].to_vec();
                (train, query, database)
            }
        }
    };
    if zero_shot {
        let pool_train = train.clone();
        train = pool_train.iter().copied().filter(|&i| !item_unseen(i)).collect();
        if fixed.is_some() {
            query.retain(|&i| item_unseen(i));
            database.retain(|&i| item_unseen(i));
        } else {
            let mut pool: Vec<usize> = (0..n).filter(|&i| item_unseen(i)).collect();
            pool.shuffle(&mut rng);
            let q = ((pool.len() as f64 * cfg.zero_shot_query_fraction).round() as usize).max(1);
            query = pool[..q.min(pool.len())].to_vec();
            database = pool[q.min(pool.len())..].to_vec();
        }
        if query.is_empty() || database.is_empty() {
            bail!(
                "zero-shot split: the unseen classes {:?} leave no queries or no database items",
                unseen.iter().map(|&k| &bundle.class_names()[k]).collect::<Vec<_>>()
            );
        }
        if train.is_empty() {
            bail!("zero-shot split: no training item has only seen classes");
        }
    }
    // Label visibility.
    let masked = matches!(cfg.protocol, Protocol::SemiSupervised | Protocol::LabelSpaces);
    let base_labelled: Vec<bool> = train.iter().map(|&i| item_labelled(i) && !bundle.unlabelled[i]).collect();
    let train_labelled: Vec<Vec<bool>> = (0..n_mod)
        .map(|_| {
            if masked {
                let nl = base_labelled.iter().filter(|&&b| b).count();
                let k = (nl as f64 * cfg.mask_fraction).round() as usize;
                let labelled_rows: Vec<usize> = (0..train.len()).filter(|&r| base_labelled[r]).collect();
                let hide = draw(&mut rng, &labelled_rows, k);
                let mut l = base_labelled.clone();
                for r in hide {
                    l[r] = false;
                }
                l
            } else {
                base_labelled.clone()
            }
        })
        .collect();
    // With one shared mask per item for protocol (c), all modalities share the first draw.
    let train_labelled = if cfg.protocol == Protocol::SemiSupervised { vec![train_labelled[0].clone(); n_mod] } else { train_labelled };
    let modality_classes: Vec<Vec<usize>> = (0..n_mod)
        .map(|_| {
            if cfg.protocol == Protocol::LabelSpaces {
                let k = ((seen.len() as f64 * cfg.modality_class_fraction).round() as usize).clamp(1, seen.len());
                let mut s = draw(&mut rng, &seen, k);
                s.sort_unstable();
                s
            } else {
                seen.clone()
            }
        })
        .collect();
    let _ = rng.gen::<u32>();
    Ok(Split { config: cfg.clone(), train, query, database, seen_classes: seen, unseen_classes: unseen, train_labelled, modality_classes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(dir: &std::path::Path, fixed: bool) -> Bundle {
        crate::bundle::test_bundle(dir, "b", fixed, false)
    }

    #[test]
    fn zero_shot_keeps_unseen_out_of_training() {
        let d = tempfile::tempdir().unwrap();
        let b = bundle(d.path(), true);
        let cfg = SplitConfig { protocol: Protocol::ZeroShot, seed: 3, unseen_classes: vec!["c1".into()], ..Default::default() };
        let s = make_split(&b, &cfg).unwrap();
        assert!(s.train.iter().all(|&i| i % 5 != 1));
        assert!(s.query.iter().chain(&s.database).all(|&i| i % 5 == 1));
        assert_eq!(s.unseen_classes, vec![1]);
        assert_eq!(make_split(&b, &cfg).unwrap(), s, "seeded");
        let all_unseen = SplitConfig { unseen_classes: (0..5).map(|k| format!("c{k}")).collect(), ..cfg.clone() };
        assert!(make_split(&b, &all_unseen).unwrap_err().to_string().contains("every class is unseen"));
        // A zero-shot protocol with no unseen class is refused, not silently given one.
        for protocol in [Protocol::ZeroShot, Protocol::SemiSupervised, Protocol::LabelSpaces] {
            let none = SplitConfig { protocol, unseen_classes: vec![], unseen_fraction: 0.0, ..cfg.clone() };
            let e = make_split(&b, &none).unwrap_err().to_string();
            assert!(e.contains("no class would be unseen"), "{e}");
        }
        let unknown = SplitConfig { unseen_classes: vec!["c9".into()], ..cfg.clone() };
        assert!(make_split(&b, &unknown).is_err());
    }

    #[test]
    fn semi_supervised_masks_the_fraction() {
        let d = tempfile::tempdir().unwrap();
        let b = bundle(d.path(), false);
        let cfg = SplitConfig { protocol: Protocol::SemiSupervised, seed: 1, ..Default::default() };
        let s = make_split(&b, &cfg).unwrap();
        let labelled = s.train_labelled[0].iter().filter(|&&v| v).count();
        assert_eq!(labelled, s.train.len() - (s.train.len() as f64 * 0.7).round() as usize);
        let ts = s.train_set(&b, false).unwrap();
        assert_eq!(ts.labels[0].outer_iter().filter(|r| r.iter().any(|&v| v != 0)).count(), labelled);
        let cfg = SplitConfig { protocol: Protocol::LabelSpaces, seed: 1, ..Default::default() };
        let s = make_split(&b, &cfg).unwrap();
        assert_eq!(s.modality_classes[0].len(), 3); // 80% of the 4 seen classes
    }

    #[test]
    fn random_standard_split_has_train_in_database() {
        let d = tempfile::tempdir().unwrap();
        let b = bundle(d.path(), false);
        let cfg = SplitConfig { query_size: Some(10), database_size: Some(80), train_size: Some(50), ..Default::default() };
        let s = make_split(&b, &cfg).unwrap();
        assert_eq!((s.query.len(), s.database.len(), s.train.len()), (10, 80, 50));
        assert!(s.train.iter().all(|i| s.database.contains(i)));
        assert!(s.query.iter().all(|i| !s.database.contains(i)));
    }

    #[test]
    fn validation_split_reads_training_items_only() {
        let d = tempfile::tempdir().unwrap();
        let b = bundle(d.path(), true);
        let v = ValidationConfig { fraction: 0.25, seed: 7 };
        // Standard: stratified queries from the 80 training items, database = the rest.
        let test = make_split(&b, &SplitConfig::default()).unwrap();
        let cfg = SplitConfig { validation: Some(v.clone()), ..Default::default() };
        let s = make_split(&b, &cfg).unwrap();
        assert!(s.query.iter().chain(&s.train).all(|i| test.train.contains(i)));
        assert!(s.query.iter().all(|i| !s.train.contains(i)));
        assert_eq!(s.train, s.database);
        assert_eq!(s.train.len() + s.query.len(), test.train.len());
        // 16 training items per class (i % 5), a quarter of each held out.
        for k in 0..5 {
            assert_eq!(s.query.iter().filter(|&&i| i % 5 == k).count(), 4, "class {k}");
        }
        assert_eq!(s.config.validation, Some(v.clone()));
        assert_eq!(make_split(&b, &cfg).unwrap(), s, "seeded");
        // Zero-shot: a quarter of the 4 seen classes (one) is held out; the test's unseen class
        // and its items never appear.
        let zs = SplitConfig {
            protocol: Protocol::ZeroShot,
            unseen_classes: vec!["c1".into()],
            validation: Some(v.clone()),
            ..Default::default()
        };
        let s = make_split(&b, &zs).unwrap();
        assert_eq!(s.unseen_classes.len(), 1);
        let held = s.unseen_classes[0];
        assert_ne!(held, 1);
        assert_eq!(s.seen_classes.len(), 3);
        assert!(!s.seen_classes.contains(&1) && !s.seen_classes.contains(&held));
        assert!(s.train.iter().all(|&i| i >= 20 && i % 5 != 1 && i % 5 != held));
        assert!(s.query.iter().chain(&s.database).all(|&i| i >= 20 && i % 5 == held));
        assert!(!s.query.is_empty() && !s.database.is_empty());
        assert_eq!(s.train_labelled[0].len(), s.train.len());
        // Bad fractions are refused.
        let bad = SplitConfig { validation: Some(ValidationConfig { fraction: 1.0, seed: 0 }), ..Default::default() };
        assert!(make_split(&b, &bad).unwrap_err().to_string().contains("fraction"));
    }
}
