//! `cmh tune`: fits a method's settings to a bundle on a validation split carved from the training
//! items only ([`crate::split::validation_split`]); the test queries are never read.
//!
//! - Trials: trial 0 is the starting point (defaults, preset, config file and `--param`s), trial
//!   1 the `paper` preset when it differs, the rest random draws from the method's search space
//!   ([`crate::params::SearchSpace`]) over the starting point, seeded. Keys set explicitly
//!   (config file, `--param`) are not varied.
//! - Score: the mean of image→text and text→image validation mAP with the database encoded by the
//!   hash functions, averaged over the code lengths asked for.
//! - Search: when the method declares a fidelity parameter (deep methods: `epochs`), successive
//!   halving: every trial is trained with 1/η² of its epochs, the best third with 1/η, the best
//!   third of those in full (η = 3; rungs shrink with the budget). Otherwise every trial is fitted
//!   in full (random search).
//! - Output folder: `tune.json` (the search's configuration and every result), `trials.jsonl`
//!   (one line per finished fit, appended as it finishes), `trials.tsv` and `best.toml`
//!   (`cmh train --config best.toml`). Run again with the same folder to resume: finished trials
//!   are read back, not re-run.

use crate::bundle::Bundle;
use crate::method::{DeviceChoice, FitContext, IMAGE, TEXT};
use crate::metrics::map;
use crate::params::{inline, MethodInfo, Range};
use crate::registry::{fit_method, is_deep, method_info};
use crate::report::write_json;
use crate::split::{bundle_views, eval_labels, make_split, SplitConfig, ValidationConfig};
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How trials are spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Successive halving when the method has a fidelity parameter, else random search.
    #[default]
    Auto,
    /// Every trial fitted in full.
    Random,
    /// Successive halving over the fidelity parameter (refused for methods without one).
    Halving,
}

/// One search.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TuneConfig {
    pub method: String,
    pub data: PathBuf,
    pub bits: Vec<usize>,
    /// The protocol of the split the validation split is carved from (its `validation` is set
    /// from [`TuneConfig::validation`]).
    pub split: SplitConfig,
    pub validation: ValidationConfig,
    /// Number of trials (configurations).
    pub budget: usize,
    /// Seed of the draws and of every fit.
    pub seed: u64,
    pub strategy: Strategy,
    /// The starting point: every parameter.
    pub base: toml::Table,
    /// Parameters set explicitly, never varied.
    pub fixed: Vec<String>,
    pub device: DeviceChoice,
    /// Deep methods train on raw images when the bundle has them.
    pub images: bool,
}

/// Scores of one code length.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BitsScore {
    pub bits: usize,
    pub i2t: f64,
    pub t2i: f64,
}

/// One finished fit of a trial at a rung.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrialResult {
    pub trial: usize,
    pub rung: usize,
    /// The parameters trained with (the fidelity parameter already scaled for the rung).
    pub params: toml::Table,
    /// Mean of both directions over the code lengths; −∞ in JSON as null when the fit failed.
    pub score: Option<f64>,
    pub scores: Vec<BitsScore>,
    /// Why the fit failed (bad combination of parameters, divergence …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub fit_s: f64,
}

/// What [`tune`] returns.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TuneOutcome {
    pub config: TuneConfig,
    /// The trials' parameters (full fidelity), by trial number.
    pub trials: Vec<toml::Table>,
    pub results: Vec<TrialResult>,
    /// The best trial at the last rung.
    pub best_trial: usize,
    pub best_score: f64,
    pub best_params: toml::Table,
    /// Rungs (1 = every trial fitted in full).
    pub rungs: usize,
}

fn draw_value(rng: &mut ChaCha8Rng, range: &Range) -> toml::Value {
    match *range {
        Range::Float { lo, hi, log } => {
            let u: f64 = rng.gen();
            let v = if log { (lo.ln() + u * (hi.ln() - lo.ln())).exp() } else { lo + u * (hi - lo) };
            // Three significant digits: readable settings, no false precision.
            toml::Value::Float(format!("{v:.2e}").parse().unwrap())
        }
        Range::Int { lo, hi, log } => {
            let v = if log {
                let u: f64 = rng.gen();
                ((lo as f64).ln() + u * ((hi as f64).ln() - (lo as f64).ln())).exp().round() as i64
            } else {
                rng.gen_range(lo..=hi)
            };
            toml::Value::Integer(v.clamp(lo, hi))
        }
        Range::Choice(vs) => {
            let s = vs[rng.gen_range(0..vs.len())];
            format!("v = {s}").parse::<toml::Table>().expect("search-space choices are TOML")["v"].clone()
        }
    }
}

/// The trials' parameters: the starting point, the paper preset, then seeded random draws.
pub(crate) fn trial_params(info: &MethodInfo, cfg: &TuneConfig) -> Result<Vec<toml::Table>> {
    let mut trials = vec![cfg.base.clone()];
    if let Ok(paper) = info.preset("paper") {
        let mut t = cfg.base.clone();
        for (k, v) in paper {
            if !cfg.fixed.contains(k) {
                t.insert(k.clone(), v.clone());
            }
        }
        if t != trials[0] {
            trials.push(t);
        }
    }
    let dims: Vec<_> = info.space.dims.iter().filter(|d| !cfg.fixed.iter().any(|f| f == d.name)).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x7475_6e65);
    let mut tries = 0;
    while trials.len() < cfg.budget && !dims.is_empty() && tries < 100 * cfg.budget {
        tries += 1;
        let mut t = cfg.base.clone();
        for d in &dims {
            t.insert(d.name.to_string(), draw_value(&mut rng, &d.range));
        }
        if !trials.contains(&t) {
            trials.push(t);
        }
    }
    trials.truncate(cfg.budget.max(1));
    for t in &trials {
        (info.canonical)(t).map_err(|e| anyhow!("internal: a drawn setting of {} does not parse: {e}", info.method))?;
    }
    Ok(trials)
}

/// Number of rungs and η for `n` trials: successive halving keeps the best 1/η at each rung.
fn rung_plan(n: usize, halving: bool) -> (usize, usize) {
    const ETA: usize = 3;
    if !halving {
        return (1, ETA);
    }
    let mut rungs = 1;
    while ETA.pow(rungs as u32) <= n && rungs < 3 {
        rungs += 1;
    }
    (rungs, ETA)
}

/// The rung's copy of `params`: the fidelity parameter scaled by η^(rung − last).
fn at_rung(params: &toml::Table, fidelity: Option<&str>, rung: usize, rungs: usize, eta: usize) -> toml::Table {
    let mut t = params.clone();
    if let Some(f) = fidelity {
        if let Some(v) = t.get(f).and_then(|v| v.as_integer()) {
            let scale = (eta as f64).powi(rung as i32 - (rungs as i32 - 1));
            t.insert(f.to_string(), toml::Value::Integer(((v as f64 * scale).round() as i64).max(1)));
        }
    }
    t
}

/// The validation data of a search, loaded once.
struct Validation {
    bundle: Bundle,
    split: crate::split::Split,
    train: crate::method::TrainSet,
    query: Vec<crate::method::View>,
    ql: ndarray::Array2<u8>,
    dl: ndarray::Array2<u8>,
}

fn load_validation(cfg: &TuneConfig) -> Result<Validation> {
    let bundle = Bundle::load(&cfg.data)?;
    let split_cfg = SplitConfig { validation: Some(cfg.validation.clone()), ..cfg.split.clone() };
    let split = make_split(&bundle, &split_cfg)?;
    let images = cfg.images && is_deep(&cfg.method);
    let train = split.train_set(&bundle, images)?;
    let query = bundle_views(&bundle, &split.query, images)?;
    let (ql, dl) = (eval_labels(&bundle, &split.query), eval_labels(&bundle, &split.database));
    Ok(Validation { bundle, split, train, query, ql, dl })
}

/// Fits `params` at every code length and scores it on the validation split.
fn evaluate_trial(v: &Validation, cfg: &TuneConfig, params: &toml::Table) -> Result<Vec<BitsScore>> {
    let images = cfg.images && is_deep(&cfg.method);
    let db_views = if v.split.database_is_train() { None } else { Some(bundle_views(&v.bundle, &v.split.database, images)?) };
    let mut out = Vec::new();
    for &bits in &cfg.bits {
        let ctx = FitContext { device: cfg.device, ..FitContext::new(bits, cfg.seed) };
        let (model, _) = fit_method(&cfg.method, params, &v.train, &ctx)?;
        let db = db_views.as_ref().unwrap_or(&v.train.views);
        let (qi, qt) = (model.encode(IMAGE, &v.query[IMAGE])?, model.encode(TEXT, &v.query[TEXT])?);
        let (di, dt) = (model.encode(IMAGE, &db[IMAGE])?, model.encode(TEXT, &db[TEXT])?);
        out.push(BitsScore {
            bits,
            i2t: map(qi.view(), dt.view(), v.ql.view(), v.dl.view())?,
            t2i: map(qt.view(), di.view(), v.ql.view(), v.dl.view())?,
        });
    }
    Ok(out)
}

fn mean_score(scores: &[BitsScore]) -> f64 {
    scores.iter().map(|s| (s.i2t + s.t2i) / 2.0).sum::<f64>() / scores.len().max(1) as f64
}

const TRIALS_FILE: &str = "trials.jsonl";
const CONFIG_FILE: &str = "tune.json";

/// Finished fits in `out`. A last line cut short by an interruption is dropped from the file.
fn read_finished(out: &Path) -> Result<Vec<TrialResult>> {
    let p = out.join(TRIALS_FILE);
    if !p.is_file() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut done = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str::<TrialResult>(l) {
            Ok(r) => done.push(r),
            Err(_) if i + 1 == lines.len() => {
                let kept: String = lines[..i].iter().map(|l| format!("{l}\n")).collect();
                crate::npy::write_text_atomic(&p, &kept)?;
            }
            Err(e) => bail!("{}: line {}: not a trial record: {e}", p.display(), i + 1),
        }
    }
    Ok(done)
}

fn append_finished(out: &Path, r: &TrialResult) -> Result<()> {
    let p = out.join(TRIALS_FILE);
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&p).with_context(|| format!("{}: cannot open", p.display()))?;
    f.write_all((serde_json::to_string(r)? + "\n").as_bytes()).with_context(|| format!("{}: cannot write", p.display()))?;
    f.sync_data().ok();
    Ok(())
}

/// Runs the search into `out` (resuming what it holds) and writes `best.toml`.
pub fn tune(cfg: &TuneConfig, out: &Path, progress: bool) -> Result<TuneOutcome> {
    crate::pipeline::check_bits(&cfg.bits)?;
    if cfg.budget == 0 {
        bail!("--budget must be at least 1 trial");
    }
    let info = method_info(&cfg.method)?;
    crate::pipeline::note_device(&cfg.method, cfg.device);
    if info.space.dims.is_empty() {
        bail!("{} has no hyper-parameters to tune", cfg.method);
    }
    let halving = match cfg.strategy {
        Strategy::Auto => info.space.fidelity.is_some(),
        Strategy::Random => false,
        Strategy::Halving => {
            if info.space.fidelity.is_none() {
                bail!("{} has no fidelity parameter (such as epochs) to halve; use --strategy random", cfg.method);
            }
            true
        }
    };
    // A folder of this search is continued (its settings are compared below); a non-empty folder
    // cmh did not create is refused.
    crate::outdir::prepare(out, crate::outdir::Kind::Tune, "--out", false)?;
    crate::outdir::clean_partials(out)?;
    let cfg_path = out.join(CONFIG_FILE);
    if cfg_path.is_file() {
        let text = std::fs::read_to_string(&cfg_path)?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", cfg_path.display()))?;
        let old: TuneConfig = serde_json::from_value(v.get("config").cloned().unwrap_or(v.clone()))
            .map_err(|e| anyhow!("{}: not a tune configuration: {e}", cfg_path.display()))?;
        if &old != cfg {
            bail!(
                "{}: this folder holds a search with other settings (method, data, bits, budget, seed or parameters); \
                 run with the same settings to resume it, or choose another --out",
                cfg_path.display()
            );
        }
    }
    write_json(&cfg_path, &serde_json::json!({ "config": cfg }))?;
    let trials = trial_params(&info, cfg)?;
    let (rungs, eta) = rung_plan(trials.len(), halving);
    let mut finished = read_finished(out)?;
    let sizes: Vec<usize> = (0..rungs).map(|r| trials.len().div_ceil(eta.pow(r as u32))).collect();
    let total: usize = sizes.iter().sum::<usize>() * cfg.bits.len();
    let pb = progress.then(|| {
        let pb = ProgressBar::new(total as u64);
        pb.set_style(
            ProgressStyle::with_template("tune {prefix} [{bar:30}] {pos}/{len} fits {msg} ({elapsed} / ~{duration})")
                .unwrap()
                .progress_chars("=> "),
        );
        pb.set_prefix(cfg.method.clone());
        pb
    });
    let mut validation: Option<Validation> = None;
    let fidelity = if halving { info.space.fidelity } else { None };
    let mut alive: Vec<usize> = (0..trials.len()).collect();
    let mut best_so_far = f64::NEG_INFINITY;
    for rung in 0..rungs {
        let mut rung_results: Vec<(usize, f64)> = Vec::new();
        for &t in &alive {
            let params = at_rung(&trials[t], fidelity, rung, rungs, eta);
            let r = match finished.iter().find(|r| r.trial == t && r.rung == rung) {
                Some(r) if r.params == params => r.clone(),
                Some(_) => bail!(
                    "{}: trial {t} at rung {rung} was run with other parameters; the folder belongs to another search",
                    out.join(TRIALS_FILE).display()
                ),
                None => {
                    if validation.is_none() {
                        validation = Some(load_validation(cfg)?);
                    }
                    let t0 = Instant::now();
                    let res = evaluate_trial(validation.as_ref().unwrap(), cfg, &params);
                    let fit_s = t0.elapsed().as_secs_f64();
                    let r = match res {
                        Ok(scores) => TrialResult { trial: t, rung, params, score: Some(mean_score(&scores)), scores, error: None, fit_s },
                        Err(e) => TrialResult { trial: t, rung, params, score: None, scores: vec![], error: Some(format!("{e:#}")), fit_s },
                    };
                    append_finished(out, &r)?;
                    finished.push(r.clone());
                    r
                }
            };
            let score = r.score.filter(|s| s.is_finite()).unwrap_or(f64::NEG_INFINITY);
            if rung + 1 == rungs {
                best_so_far = best_so_far.max(score);
            }
            rung_results.push((t, score));
            if let Some(pb) = &pb {
                pb.inc(cfg.bits.len() as u64);
                let best = if best_so_far.is_finite() { format!("best {best_so_far:.4}") } else { String::new() };
                pb.set_message(format!("rung {}/{rungs} trial {t} {best}", rung + 1));
            }
        }
        if rung + 1 < rungs {
            rung_results.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            alive = rung_results.iter().take(sizes[rung + 1]).map(|&(t, _)| t).collect();
            alive.sort_unstable();
        }
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let last: Vec<&TrialResult> = finished.iter().filter(|r| r.rung + 1 == rungs && r.trial < trials.len()).collect();
    let best = last
        .iter()
        .filter(|r| r.score.is_some_and(f64::is_finite))
        .max_by(|a, b| a.score.unwrap().total_cmp(&b.score.unwrap()).then(b.trial.cmp(&a.trial)))
        .ok_or_else(|| anyhow!("every trial failed; the errors are in {}", out.join(TRIALS_FILE).display()))?;
    let outcome = TuneOutcome {
        config: cfg.clone(),
        trials: trials.clone(),
        results: finished.clone(),
        best_trial: best.trial,
        best_score: best.score.unwrap(),
        best_params: trials[best.trial].clone(),
        rungs,
    };
    write_json(
        &cfg_path,
        &serde_json::json!({ "config": cfg, "best_trial": outcome.best_trial, "best_score": outcome.best_score, "rungs": rungs, "results": finished }),
    )?;
    crate::npy::write_text_atomic(&out.join("best.toml"), &best_toml(&outcome))?;
    crate::npy::write_text_atomic(&out.join("trials.tsv"), &format_trials(&outcome, &info, '\t'))?;
    Ok(outcome)
}

/// `best.toml`: the best trial's parameters as a `[method]` section (valid `--config` input).
pub(crate) fn best_toml(o: &TuneOutcome) -> String {
    let bits: Vec<String> = o.config.bits.iter().map(|b| b.to_string()).collect();
    let mut s = format!(
        "# cmh tune: trial {} of {} for {} on {} (validation split of the training items: fraction {}, seed {}),\n\
         # score {:.4} = mean validation mAP of image→text and text→image, database encoded, at {} bits.\n",
        o.best_trial,
        o.trials.len(),
        o.config.method,
        o.config.data.display(),
        o.config.validation.fraction,
        o.config.validation.seed,
        o.best_score,
        bits.join(", ")
    );
    s += &format!("[{}]\n", o.config.method);
    for (k, v) in &o.best_params {
        s += &format!("{k} = {}\n", inline(v));
    }
    s
}

/// A table of every trial: its rung, score at each code length, fit time and the searched values.
pub fn format_trials(o: &TuneOutcome, info: &MethodInfo, sep: char) -> String {
    let dims: Vec<&str> = info.space.dims.iter().map(|d| d.name).filter(|n| !o.config.fixed.iter().any(|f| f == n)).collect();
    let cell = |s: String, w: usize| if sep == '\t' { s } else { format!("{s:>w$}") };
    let mut head = vec![cell("trial".into(), 5), cell("rung".into(), 4), cell("score".into(), 7)];
    for b in &o.config.bits {
        head.push(cell(format!("I→T@{b}"), 7));
        head.push(cell(format!("T→I@{b}"), 7));
    }
    head.push(cell("fit s".into(), 7));
    head.extend(dims.iter().map(|d| d.to_string()));
    let mut s = head.join(&sep.to_string()) + "\n";
    for t in 0..o.trials.len() {
        let Some(r) = o.results.iter().filter(|r| r.trial == t).max_by_key(|r| r.rung) else { continue };
        let mark = if t == o.best_trial { "*" } else { "" };
        let mut row = vec![
            cell(format!("{t}{mark}"), 5),
            cell(format!("{}/{}", r.rung + 1, o.rungs), 4),
            cell(r.score.map_or("failed".into(), |v| format!("{v:.4}")), 7),
        ];
        for b in &o.config.bits {
            let sc = r.scores.iter().find(|x| x.bits == *b);
            row.push(cell(sc.map_or("-".into(), |x| format!("{:.4}", x.i2t)), 7));
            row.push(cell(sc.map_or("-".into(), |x| format!("{:.4}", x.t2i)), 7));
        }
        row.push(cell(format!("{:.1}", o.results.iter().filter(|x| x.trial == t).map(|x| x.fit_s).sum::<f64>()), 7));
        row.extend(dims.iter().map(|d| r.params.get(*d).map_or("-".into(), inline)));
        if let Some(e) = &r.error {
            row.push(format!("error: {}", e.lines().next().unwrap_or("")));
        }
        s += &(row.join(&sep.to_string()) + "\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(method: &str, budget: usize) -> TuneConfig {
        let info = method_info(method).unwrap();
        TuneConfig {
            method: method.into(),
            data: "b".into(),
            bits: vec![8],
            split: SplitConfig::default(),
            validation: ValidationConfig::default(),
            budget,
            seed: 1,
            strategy: Strategy::Auto,
            base: info.defaults.clone(),
            fixed: vec!["anchors".into()],
            device: DeviceChoice::Cpu,
            images: false,
        }
    }

    #[test]
    fn trials_start_from_the_defaults_and_the_paper_and_draw_inside_the_space() {
        let c = cfg("sch", 12);
        let info = method_info("sch").unwrap();
        let t = trial_params(&info, &c).unwrap();
        assert_eq!(t.len(), 12);
        assert_eq!(t[0], info.defaults);
        assert_eq!(t[1]["rho"], info.preset("paper").unwrap()["rho"]);
        assert_eq!(t, trial_params(&info, &c).unwrap(), "seeded");
        for x in &t[2..] {
            let rho = x["rho"].as_float().unwrap();
            assert!((1e-4..=0.1).contains(&rho), "{rho}");
            assert_eq!(x["anchors"], info.defaults["anchors"], "fixed keys are not varied");
            assert_eq!(x["max_iter"], info.defaults["max_iter"], "unsearched keys keep the starting point");
        }
        let distinct: std::collections::HashSet<String> = t.iter().map(|x| x.to_string()).collect();
        assert_eq!(distinct.len(), t.len());
    }

    /// A 120-item, 4-class bundle whose 20 test queries (items 0–19) hold NaN image features.
    fn nan_test_bundle(dir: &Path) -> PathBuf {
        use crate::bundle::{one_hot, BundleWriter, FixedSplit, NewModality};
        let n = 120;
        let cls: Vec<usize> = (0..n).map(|i| i % 4).collect();
        let noise = |i: usize, j: usize| (((i * 7919 + j * 104_729) % 1000) as f32 / 1000.0 - 0.5) * 0.8;
        let mut img = ndarray::Array2::from_shape_fn((n, 6), |(i, j)| if j == cls[i] { 1.0 } else { 0.0 } + noise(i, j));
        let txt = ndarray::Array2::from_shape_fn((n, 5), |(i, j)| if j == cls[i] { 1.0 } else { 0.0 } + noise(i + 500, j));
        for i in 0..20 {
            img[[i, 2]] = f32::NAN;
        }
        let b = dir.join("b");
        BundleWriter {
            name: "t".into(),
            source: "test".into(),
            classes: (0..4).map(|k| format!("c{k}")).collect(),
            modalities: vec![
                NewModality { name: "image".into(), features: Some(img), ..Default::default() },
                NewModality { name: "text".into(), features: Some(txt), ..Default::default() },
            ],
            labels: vec![one_hot(&cls, 4)],
            split: Some(FixedSplit { train: (20..n).collect(), query: (0..20).collect(), database: (20..n).collect() }),
            ..Default::default()
        }
        .write(&b, false)
        .unwrap();
        b
    }

    /// The test split is never read: a bundle whose test queries hold NaN tunes (training on its
    /// test split is refused, naming the row), the search resumes without re-running finished
    /// trials, and best.toml is a config `cmh train` takes.
    #[test]
    fn tunes_on_training_items_only_and_resumes() {
        let d = tempfile::tempdir().unwrap();
        let b = nan_test_bundle(d.path());
        let info = method_info("cca-itq").unwrap();
        let mut base = info.defaults.clone();
        base.insert("anchors".into(), toml::Value::Integer(20));
        let c = TuneConfig { data: b.clone(), budget: 4, base, fixed: vec!["anchors".into()], ..cfg("cca-itq", 4) };
        let out = d.path().join("tune");
        let o = tune(&c, &out, false).unwrap();
        assert_eq!(o.rungs, 1);
        assert_eq!(o.results.len(), 4);
        assert!(o.results.iter().all(|r| r.error.is_none() && r.score.unwrap() > 0.3), "{:?}", o.results);
        let best = o.results.iter().map(|r| r.score.unwrap()).fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(o.best_score, best);
        // best.toml parses as a config section and holds the best trial's parameters.
        let text = std::fs::read_to_string(out.join("best.toml")).unwrap();
        let section = crate::params::config_section("cca-itq", &out.join("best.toml"), &crate::registry::names()).unwrap();
        assert_eq!((info.canonical)(&section).unwrap(), o.best_params, "{text}");
        // Training on the bundle's own split reads the NaN test rows and is refused by name.
        let run = crate::pipeline::RunConfig {
            method: "cca-itq".into(),
            data: b.clone(),
            bits: vec![8],
            seed: 0,
            repeat: 1,
            split: SplitConfig::default(),
            params: o.best_params.clone(),
            device: DeviceChoice::Cpu,
            topk: None,
            images: false,
            same_modality: false,
            mmap: false,
        };
        let e = format!("{:#}", crate::pipeline::run(&run, &d.path().join("run"), false, false).unwrap_err());
        assert!(e.contains("image_features.npy") && e.contains("NaN at row 0, column 2"), "{e}");
        // Resume: an interrupted file (the last trial lost, a line cut short) runs only what is
        // missing; finished trials are read back as they were.
        let lines: Vec<String> = std::fs::read_to_string(out.join(TRIALS_FILE)).unwrap().lines().map(String::from).collect();
        std::fs::write(out.join(TRIALS_FILE), format!("{}\n{}\n{{\"trial\": 3, \"ru", lines[0], lines[1])).unwrap();
        let again = tune(&c, &out, false).unwrap();
        assert_eq!(again.results[..2], o.results[..2]);
        assert_eq!(again.results.len(), 4);
        assert_eq!(again.best_params, o.best_params);
        assert_eq!(std::fs::read_to_string(out.join(TRIALS_FILE)).unwrap().lines().count(), 4, "2 kept, the cut line dropped, 2 re-run");
        // Another search in the same folder is refused.
        let other = TuneConfig { budget: 5, ..c.clone() };
        assert!(tune(&other, &out, false).unwrap_err().to_string().contains("other settings"));
        // The table lists every trial.
        let table = format_trials(&again, &info, ' ');
        assert_eq!(table.lines().count(), 5, "{table}");
    }

    #[test]
    fn successive_halving_scales_the_fidelity_per_rung() {
        assert_eq!(rung_plan(20, true), (3, 3));
        assert_eq!(rung_plan(5, true), (2, 3));
        assert_eq!(rung_plan(2, true), (1, 3));
        assert_eq!(rung_plan(20, false), (1, 3));
        let mut p = toml::Table::new();
        p.insert("epochs".into(), toml::Value::Integer(60));
        let e = |r| at_rung(&p, Some("epochs"), r, 3, 3)["epochs"].as_integer().unwrap();
        assert_eq!((e(0), e(1), e(2)), (7, 20, 60));
        assert_eq!(at_rung(&p, None, 0, 3, 3), p);
    }
}
