//! The whole flow for one method: bundle → split → fit → encode → evaluate → report, for every
//! code length and seed asked for, with outputs written atomically per run and resumable jobs.

use crate::bundle::Bundle;
use crate::codes::BinaryCodes;
use crate::health::{Health, HealthInput};
use crate::method::{DeviceChoice, FitContext, HashModel, IMAGE, TEXT};
use crate::metrics::{evaluate, DirectionMetrics, EvalOptions};
use crate::npy::write_npy;
use crate::report::{summarize, write_json, MapAtK, Report, Timings, Versions};
use crate::split::{bundle_views, eval_labels, make_split, Split, SplitConfig};
use anyhow::{anyhow, bail, Context, Result};
use ndarray::{Array1, ArrayView2};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use crate::random_codes::{RandomCodes, RandomModel};
pub use crate::registry::{fit_method, is_deep, load_model, method_info};

/// One training job: a method, its hyper-parameters, code lengths, seeds and the split protocol.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub method: String,
    pub data: PathBuf,
    pub bits: Vec<usize>,
    /// Seeds `seed, seed+1, …` (`repeat` of them); each seed draws its own split and model.
    pub seed: u64,
    pub repeat: usize,
    pub split: SplitConfig,
    /// The method's hyper-parameter table (TOML section merged with `--param` flags).
    pub params: toml::Table,
    pub device: DeviceChoice,
    pub topk: Option<usize>,
    /// Use raw images for deep methods when the bundle has them (else features).
    pub images: bool,
    /// Also evaluate same-modality retrieval (image→image, text→text, encoded database).
    #[serde(default)]
    pub same_modality: bool,
    /// Memory-map the bundle's feature and image files ([`Bundle::load_mapped`]) instead of reading them.
    #[serde(default)]
    pub mmap: bool,
}

/// Evaluation options used for every run: mAP@k when asked, a precision@N curve, PR by radius.
pub fn eval_options(topk: Option<usize>) -> EvalOptions {
    EvalOptions { topk, precision_at: vec![1, 5, 10, 20, 50, 100, 200, 500, 1000], pr_curve: true }
}

/// Codes of one evaluation: queries and database for each modality, and B when it applies.
pub struct EncodedSplit {
    pub query: [BinaryCodes; 2],
    pub database: [BinaryCodes; 2],
    pub learned_db: Option<BinaryCodes>,
}

fn encode_items(model: &dyn HashModel, bundle: &Bundle, idx: &[usize], images: bool) -> Result<[BinaryCodes; 2]> {
    let views = bundle_views(bundle, idx, images)?;
    if views.len() < 2 {
        bail!("cross-modal evaluation needs two modalities; the bundle has {}", views.len());
    }
    Ok([model.encode(IMAGE, &views[IMAGE])?, model.encode(TEXT, &views[TEXT])?])
}

/// Both directions under both database conventions.
pub struct Evaluation {
    pub convention: &'static str,
    pub i2t: DirectionMetrics,
    pub t2i: DirectionMetrics,
    pub i2t_encoded: DirectionMetrics,
    pub t2i_encoded: DirectionMetrics,
}

pub fn evaluate_split(enc: &EncodedSplit, bundle: &Bundle, split: &Split, opts: &EvalOptions) -> Result<Evaluation> {
    let ql = eval_labels(bundle, &split.query);
    let dl = eval_labels(bundle, &split.database);
    let i2t_encoded = evaluate(enc.query[IMAGE].view(), enc.database[TEXT].view(), ql.view(), dl.view(), opts)?;
    let t2i_encoded = evaluate(enc.query[TEXT].view(), enc.database[IMAGE].view(), ql.view(), dl.view(), opts)?;
    Ok(match &enc.learned_db {
        Some(b) => Evaluation {
            convention: "learned-B",
            i2t: evaluate(enc.query[IMAGE].view(), b.view(), ql.view(), dl.view(), opts)?,
            t2i: evaluate(enc.query[TEXT].view(), b.view(), ql.view(), dl.view(), opts)?,
            i2t_encoded,
            t2i_encoded,
        },
        None => Evaluation { convention: "encoded", i2t: i2t_encoded.clone(), t2i: t2i_encoded.clone(), i2t_encoded, t2i_encoded },
    })
}

/// The health check of one run's codes ([`crate::health`]).
#[allow(clippy::too_many_arguments)]
fn run_health<'a>(
    method: &'a str,
    data: &'a Path,
    bits: usize,
    seed: u64,
    enc: &'a EncodedSplit,
    ql: ArrayView2<'a, u8>,
    dl: ArrayView2<'a, u8>,
    ev: &Evaluation,
) -> Result<Health> {
    let mut sets = vec![
        ("query_image", &enc.query[IMAGE]),
        ("query_text", &enc.query[TEXT]),
        ("db_image", &enc.database[IMAGE]),
        ("db_text", &enc.database[TEXT]),
    ];
    if let Some(b) = &enc.learned_db {
        sets.push(("learned_b", b));
    }
    let classes = dl.columns().into_iter().filter(|c| c.iter().any(|&v| v != 0)).count();
    crate::health::check(&HealthInput {
        method,
        data,
        bits,
        seed,
        sets,
        query_labels: ql,
        db_labels: dl,
        classes,
        i2t: ev.i2t_encoded.map,
        t2i: ev.t2i_encoded.map,
    })
}

fn run_name(bits: usize, seed: u64) -> String {
    format!("bits{bits}-seed{seed}")
}

/// Trains and evaluates one (bits, seed) and writes `out/bitsB-seedS/` atomically.
pub(crate) fn run_one(
    bundle: &Bundle,
    cfg: &RunConfig,
    bits: usize,
    seed: u64,
    out: &Path,
    resume: bool,
    progress: bool,
) -> Result<Report> {
    let name = run_name(bits, seed);
    let split_cfg = SplitConfig { seed, ..cfg.split.clone() };
    let split = make_split(bundle, &split_cfg)?;
    let images = cfg.images && is_deep(&cfg.method);
    let train = split.train_set(bundle, images)?;
    let ctx = FitContext { bits, seed, device: cfg.device, checkpoint_dir: Some(out.join("checkpoints").join(&name)), resume, progress };
    let t0 = Instant::now();
    let (model, params) = fit_method(&cfg.method, &cfg.params, &train, &ctx)
        .with_context(|| format!("training {} at {bits} bits (seed {seed})", cfg.method))?;
    let fit_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let query = encode_items(model.as_ref(), bundle, &split.query, images)?;
    let database = encode_items(model.as_ref(), bundle, &split.database, images)?;
    let learned_db = match model.train_codes() {
        Some(b) if split.database_is_train() => {
            if b.len() != split.train.len() || b.bits() != bits {
                bail!("{}: learned codes are {}×{}, expected {}×{bits}", cfg.method, b.len(), b.bits(), split.train.len());
            }
            Some(b.clone())
        }
        _ => None,
    };
    let encode_s = t1.elapsed().as_secs_f64();
    let enc = EncodedSplit { query, database, learned_db };
    let t2 = Instant::now();
    let opts = eval_options(cfg.topk);
    let ev = evaluate_split(&enc, bundle, &split, &opts)?;
    let ql = eval_labels(bundle, &split.query);
    let dl = eval_labels(bundle, &split.database);
    let (i2i, t2i2) = if cfg.same_modality {
        (
            Some(evaluate(enc.query[IMAGE].view(), enc.database[IMAGE].view(), ql.view(), dl.view(), &opts)?),
            Some(evaluate(enc.query[TEXT].view(), enc.database[TEXT].view(), ql.view(), dl.view(), &opts)?),
        )
    } else {
        (None, None)
    };
    let health = run_health(&cfg.method, &cfg.data, bits, seed, &enc, ql.view(), dl.view(), &ev)?;
    let eval_s = t2.elapsed().as_secs_f64();
    let report = Report {
        method: cfg.method.clone(),
        bits,
        seed,
        protocol: serde_json::to_value(split.config.protocol)?.as_str().unwrap_or("").to_string(),
        split: split.summary(bundle),
        database_convention: ev.convention.to_string(),
        map_at_k: cfg.topk.map(|k| MapAtK { k, i2t: ev.i2t.map_at_k.unwrap_or(f64::NAN), t2i: ev.t2i.map_at_k.unwrap_or(f64::NAN) }),
        i2t: ev.i2t,
        t2i: ev.t2i,
        i2t_encoded: ev.i2t_encoded,
        t2i_encoded: ev.t2i_encoded,
        i2i,
        t2t: t2i2,
        params,
        history: model.history().to_vec(),
        health: Some(health),
        timings: Timings { fit_s, encode_s, eval_s },
        versions: Versions::current(),
    };
    // Write everything into a hidden folder, then rename it into place.
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create the run folder", out.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".partial-{name}-"))
        .tempdir_in(out)
        .with_context(|| format!("{}: cannot write into the run folder", out.display()))?;
    let t = tmp.path();
    model.save(&t.join("model"))?;
    for (m, mname) in [(IMAGE, "image"), (TEXT, "text")] {
        enc.query[m].save_npy(t, &format!("query_{mname}"))?;
        enc.database[m].save_npy(t, &format!("db_{mname}"))?;
    }
    if let Some(b) = &enc.learned_db {
        b.save_npy(t, "train_B")?;
    }
    write_npy(&t.join("query_labels.npy"), &ql)?;
    write_npy(&t.join("db_labels.npy"), &dl)?;
    for (f, idx) in [("split_train.npy", &split.train), ("split_query.npy", &split.query), ("split_database.npy", &split.database)] {
        write_npy(&t.join(f), &Array1::from_iter(idx.iter().map(|&i| i as i64)))?;
    }
    write_json(&t.join("report.json"), &report)?;
    let final_dir = out.join(&name);
    if final_dir.exists() {
        // An unfinished run's folder never exists under the final name; this is a finished run
        // of the same configuration being redone (a resume whose report.json was removed).
        std::fs::remove_dir_all(&final_dir).with_context(|| format!("{}: cannot replace the earlier result", final_dir.display()))?;
    }
    crate::npy::set_mode(tmp.path(), 0o755)?;
    std::fs::rename(tmp.keep(), &final_dir).with_context(|| format!("{}: cannot move the finished run into place", final_dir.display()))?;
    // The run is complete: its checkpoint is no longer needed (train.log stays).
    if let Some(ck) = &ctx.checkpoint_dir {
        let f = ck.join(crate::deep::trainer::CHECKPOINT_FILE);
        if f.is_file() {
            std::fs::remove_file(&f).with_context(|| format!("{}: cannot remove the finished run's checkpoint", f.display()))?;
        }
    }
    Ok(report)
}

/// How [`run_with`] treats the output folder.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Continue the run in the folder (its `run.json` gave the configuration): finished runs are
    /// read back, unfinished ones continue from their checkpoints.
    pub resume: bool,
    /// Replace an existing run folder of another configuration (only a folder cmh created).
    pub force: bool,
    /// Progress bars and per-run lines on stderr.
    pub progress: bool,
}

/// Runs every (bits, seed) of `cfg` into `out`; with `resume`, finished runs are read back and
/// unfinished ones continue from their checkpoints. Writes `out/run.json` and `out/report.json`.
pub fn run(cfg: &RunConfig, out: &Path, resume: bool, progress: bool) -> Result<Vec<Report>> {
    run_with(cfg, out, &RunOptions { resume, force: false, progress })
}

/// The largest code length cmh trains: far beyond what cross-modal hashing uses (16–128 bits),
/// and small enough that every method's bits × bits matrices fit in memory.
pub use crate::method::MAX_BITS;

/// Checks a `--bits` list: one or more code lengths in `1..=MAX_BITS`, each given once.
pub(crate) fn check_bits(bits: &[usize]) -> Result<()> {
    if bits.is_empty() || bits.contains(&0) {
        bail!("--bits needs one or more code lengths >= 1");
    }
    if let Some(&b) = bits.iter().find(|&&b| b > MAX_BITS) {
        bail!(
            "--bits {b}: code lengths above {MAX_BITS} bits are not supported (cross-modal hashing uses 16 to 128); use at most {MAX_BITS}"
        );
    }
    if let Some(&b) = bits.iter().enumerate().find(|(i, b)| bits[..*i].contains(b)).map(|(_, b)| b) {
        bail!("--bits lists {b} more than once; give each code length once");
    }
    Ok(())
}

/// Says so when `--device cuda` is given to a method that runs on the CPU.
pub(crate) fn note_device(method: &str, device: DeviceChoice) {
    if device == DeviceChoice::Cuda && !is_deep(method) {
        log::info!("note: {method} runs on the CPU; --device cuda applies to the deep methods (sdch, czhash, agnet)");
    }
}

/// Checks the parts of a configuration that need no data: code lengths, seeds, method.
pub(crate) fn check_config(cfg: &RunConfig) -> Result<()> {
    check_bits(&cfg.bits)?;
    if cfg.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if cfg.seed.checked_add(cfg.repeat as u64 - 1).is_none() {
        bail!("--seed {} with --repeat {} needs seeds past {} (the largest seed); use a smaller --seed", cfg.seed, cfg.repeat, u64::MAX);
    }
    crate::registry::get(&cfg.method)?;
    Ok(())
}

/// The key of `run.json` holding the bundle's content hash ([`crate::bundle::content_hash`]).
const DATA_HASH_KEY: &str = "data_sha256";

/// Top-level keys whose values differ between two run descriptions.
fn differing_keys(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let (Some(x), Some(y)) = (a.as_object(), b.as_object()) else { return vec!["(everything)".into()] };
    let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().filter(|k| x.get(*k) != y.get(*k)).cloned().collect()
}

/// [`run`] with [`RunOptions`]. A new run (`resume` false) goes into a new or empty folder, which
/// is marked as cmh's; a folder holding a run of the same configuration (and the same bundle
/// contents) is continued; any other existing run folder is refused unless `force`, which
/// replaces it; a non-empty folder cmh did not create is always refused. Resuming refuses a
/// bundle whose contents changed since the run started.
pub fn run_with(cfg: &RunConfig, out: &Path, opts: &RunOptions) -> Result<Vec<Report>> {
    check_config(cfg)?;
    note_device(&cfg.method, cfg.device);
    let data = std::fs::canonicalize(&cfg.data).with_context(|| format!("--data {}: no such bundle folder", cfg.data.display()))?;
    let bundle = if cfg.mmap { Bundle::load_mapped(&data)? } else { Bundle::load(&data)? };
    let hash = crate::bundle::content_hash(&data)?;
    let cfg = RunConfig { data, ..cfg.clone() };
    let mut description = serde_json::to_value(&cfg)?;
    description[DATA_HASH_KEY] = serde_json::Value::String(hash.clone());
    let run_json = out.join("run.json");
    let stored = || -> Result<serde_json::Value> {
        let text =
            std::fs::read_to_string(&run_json).with_context(|| format!("{}: cannot read the run description", run_json.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: invalid run description", run_json.display()))
    };
    let resume = if opts.resume {
        let old = stored()?;
        if let Some(h) = old.get(DATA_HASH_KEY).and_then(|h| h.as_str()) {
            if h != hash {
                bail!(
                    "{}: the bundle {} changed since this run started (contents SHA-256 {h}, now {hash}); resume with the bundle the run \
                     started on, or start a new run with --out",
                    run_json.display(),
                    cfg.data.display()
                );
            }
        }
        if crate::outdir::marked_kind(out).is_none() {
            crate::outdir::mark(out, crate::outdir::Kind::Run)?;
        }
        true
    } else {
        match crate::outdir::prepare(out, crate::outdir::Kind::Run, "--out", opts.force)? {
            crate::outdir::Prepared::Fresh => false,
            crate::outdir::Prepared::Existing => {
                let old = stored().map_err(|e| {
                    anyhow!(
                        "--out {}: holds an unfinished cmh run without a readable run.json ({e:#}); use --force to replace it",
                        out.display()
                    )
                })?;
                let diff = differing_keys(&old, &description);
                if !diff.is_empty() {
                    bail!(
                        "--out {}: holds a run of another configuration (differs in {}); use --force to replace it, --resume {} to continue it, or another --out",
                        out.display(),
                        diff.join(", "),
                        out.display()
                    );
                }
                if opts.progress {
                    log::info!("continuing the run in {} (same configuration and data; --force starts it again)", out.display());
                }
                true
            }
        }
    };
    crate::outdir::clean_partials(out)?;
    write_json(&run_json, &description)?;
    let mut reports = Vec::new();
    let last_seed = cfg.seed + (cfg.repeat as u64 - 1);
    for &bits in &cfg.bits {
        for seed in cfg.seed..=last_seed {
            let done = out.join(run_name(bits, seed)).join("report.json");
            if resume && done.is_file() {
                let r: Report = serde_json::from_str(&std::fs::read_to_string(&done)?)
                    .with_context(|| format!("{}: unreadable report", done.display()))?;
                reports.push(r);
                continue;
            }
            if crate::deep::trainer::stop_requested() {
                return Err(Stopped { finished: reports.len(), out: out.to_path_buf() }.into());
            }
            let r = run_one(&bundle, &cfg, bits, seed, out, resume, opts.progress).map_err(|e| {
                if e.chain().any(|c| c.is::<crate::deep::trainer::Interrupted>()) {
                    e.context(format!("continue with `cmh train --resume {}`", out.display()))
                } else {
                    e
                }
            })?;
            for w in r.health.iter().flat_map(|h| &h.warnings) {
                log::warn!("{w}");
            }
            if opts.progress {
                log::info!(
                    "{} {bits} bits seed {seed}: I→T {:.4}  T→I {:.4} ({}), encoded {:.4} / {:.4}, fit {:.1}s",
                    cfg.method,
                    r.i2t.map,
                    r.t2i.map,
                    r.database_convention,
                    r.i2t_encoded.map,
                    r.t2i_encoded.map,
                    r.timings.fit_s
                );
            }
            reports.push(r);
        }
    }
    write_summary(out, &reports)?;
    crate::outdir::clean_partials(out)?;
    Ok(reports)
}

/// A run stopped by SIGINT / SIGTERM between two (bits, seed) runs: the finished ones are saved.
#[derive(Debug)]
pub struct Stopped {
    pub finished: usize,
    pub out: PathBuf,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped by a signal after {} finished runs (saved in {}); continue with `cmh train --resume {}`",
            self.finished,
            self.out.display(),
            self.out.display()
        )
    }
}
impl std::error::Error for Stopped {}

/// Whether an error is a stop asked for by a signal or a [`crate::deep::trainer::RunControl`]
/// (the `cmh` command then exits with 130, the convention for an interrupted program).
pub fn is_stop(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Stopped>() || c.is::<crate::deep::trainer::Interrupted>())
}

/// `report.json` at the top of a run folder: the summary table and every run's report. With a single
/// run, that run's keys also stand at the top level.
pub(crate) fn write_summary(out: &Path, reports: &[Report]) -> Result<()> {
    let summary = summarize(reports);
    let mut top = serde_json::json!({ "summary": summary, "runs": reports });
    if reports.len() == 1 {
        if let (Some(obj), serde_json::Value::Object(r)) = (top.as_object_mut(), serde_json::to_value(&reports[0])?) {
            obj.extend(r);
        }
    }
    write_json(&out.join("report.json"), &top)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{one_hot, BundleWriter, FixedSplit, NewModality};

    #[test]
    fn random_codes_end_to_end_writes_a_complete_run() {
        let d = tempfile::tempdir().unwrap();
        let n = 60;
        let cls: Vec<usize> = (0..n).map(|i| i % 3).collect();
        let x = ndarray::Array2::from_shape_fn((n, 4), |(i, j)| ((i * 7 + j) % 5) as f32);
        let b = d.path().join("b");
        BundleWriter {
            name: "t".into(),
            source: "test".into(),
            classes: vec!["a".into(), "b".into(), "c".into()],
            modalities: vec![
                NewModality { name: "image".into(), features: Some(x.clone()), ..Default::default() },
                NewModality { name: "text".into(), features: Some(x), ..Default::default() },
            ],
            labels: vec![one_hot(&cls, 3)],
            split: Some(FixedSplit { train: (10..n).collect(), query: (0..10).collect(), database: (10..n).collect() }),
            ..Default::default()
        }
        .write(&b, false)
        .unwrap();
        let cfg = RunConfig {
            method: "random".into(),
            data: b,
            bits: vec![8, 16],
            seed: 0,
            repeat: 2,
            split: SplitConfig::default(),
            params: toml::Table::new(),
            device: DeviceChoice::Cpu,
            topk: Some(5),
            images: false,
            same_modality: true,
            mmap: false,
        };
        let out = d.path().join("run");
        let reports = run(&cfg, &out, false, false).unwrap();
        assert_eq!(reports.len(), 4);
        let r = &reports[0];
        assert_eq!(r.database_convention, "encoded");
        // Same-modality retrieval was asked for: image→image and text→text are reported.
        assert!(r.i2i.as_ref().unwrap().map > 0.0 && r.t2t.as_ref().unwrap().map > 0.0);
        assert!(r.i2t.map > 0.0 && r.i2t.map <= 1.0);
        let dir = out.join("bits8-seed0");
        for f in ["report.json", "query_image.npy", "db_text_packed.npy", "query_labels.npy", "model/model.json"] {
            assert!(dir.join(f).is_file(), "{f}");
        }
        // The exported codes reproduce the report's mAP.
        let q = BinaryCodes::load_npy(&dir.join("query_image.npy"), None).unwrap();
        let db = BinaryCodes::load_npy(&dir.join("db_text_packed.npy"), Some(8)).unwrap();
        let ql = crate::npy::read_binary_matrix(&dir.join("query_labels.npy"), "labels").unwrap();
        let dl = crate::npy::read_binary_matrix(&dir.join("db_labels.npy"), "labels").unwrap();
        assert_eq!(crate::metrics::map(q.view(), db.view(), ql.view(), dl.view()).unwrap(), r.i2t.map);
        // Resume reads finished runs back instead of training again.
        let again = run(&cfg, &out, true, false).unwrap();
        assert_eq!(again[3].i2t.map, reports[3].i2t.map);
        let top: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        assert_eq!(top["summary"].as_array().unwrap().len(), 2);
    }
}
