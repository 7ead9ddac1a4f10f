//! Zero-shot measurement: every method under protocols (a) standard, (b) zero-shot,
//! (c) semi-supervised zero-shot, (d) per-modality label spaces, over random class splits, with a
//! random-code floor per split; prints the table (mean over splits, both directions, one column
//! per code length), mean ± std, the random floor of every split, the targets with their margins,
//! CZHash's divergence count, and the wall and CPU seconds; writes everything (per-run figures, fit
//! times, histories) as JSON.
//!
//! The whole benchmark, one command (emoji zero-shot over class splits 0–4, Wikipedia (b)–(d) over
//! class splits 0–9, every method at its defaults, 32 and 64 bits):
//!   nice -n 10 cargo bench --bench zeroshot_wiki -- --suite --out runs/zs_suite.json
//! The same on validation splits carved from the training classes only (what settings are chosen
//! on; `split::validation_split`, 20% of the seen classes held out as validation-unseen classes):
//!   nice -n 10 cargo bench --bench zeroshot_wiki -- --suite --validation --out runs/zs_suite_val.json
//! (`--validation-seed N` picks another carving of the same training classes; default 12345.)
//! One bundle: `--data data/emoji --protocols b --repeat 5` (any bundle with class embeddings; the
//! emoji figures of class split s are those of `cmh demo --seed s`, which fits with the same
//! split and seed: equal for the shallow methods, within 0.012 for the deep ones).
//!
//! Without `--data` or `--suite` it runs a bundle built from a `.npy` folder of Wikipedia
//! (`--npy data/wiki_npy`, written by `.venv/bin/python scripts/wiki_to_npy.py --src … --out
//! data/wiki_npy`; `--emb onehot|minilm` picks the class attributes, the MiniLM ones read from
//! `data/wiki_npy/minilm.npy`, e.g. a copy of `data/wiki/class_embeddings.npy`).
//!
//!   options: --methods czhash,czhash-nfs,agnet,attr-ridge,sch,cca-itq,segh,sdch,random,cca-ref
//!            (default: all but cca-ref)  --bits 32,64 (default)  --protocols a,b,c,d (default)
//!            --seed0 0  --repeat 10  --device cpu  --param czhash.epochs=40 (any hyper-parameter,
//!            TOML value)
//!            --out FILE.json (rewritten after every split, so an interrupted run keeps its figures)
//!            --resume FILE.json (keep the runs of an earlier, possibly interrupted, JSON; run the rest)
//!            --table-only (with --resume: print that JSON's table, run nothing)
//!            --threads 1 (torch intra-op threads)
//!
//! Split: the bundle keeps Wikipedia's standard roles (2173 training = database rows, 693 test =
//! query rows). (a) trains on all 2173 training rows, queries = the 693 test rows, database = the
//! 2173 training rows encoded by the hash functions. For split seed s, `make_split` draws 2 of the
//! 10 classes as unseen (20%); (b) trains on the training rows of the 8 seen classes, queries are
//! the test rows of the unseen classes, the database is the training rows of the unseen classes
//! (encoded by the hash functions). (c) masks 70% of the training labels (one mask for both
//! modalities); (d) masks 70% per modality independently and lets each modality see its own random
//! 80% of the seen classes (6 of 8). CZHash-nFS runs under (c) and (d) only (elsewhere it is CZHash).
//!
//! SCH's anchor count is capped at the number of training rows labelled in every modality (SCH
//! trains on those only). A method that fails on a split is reported and left out of the means.
//!
//! `cca-ref` is a bench-local reference only (regularised CCA to min(bits, 10) dimensions, then
//! ITQ), so that a run can be read without the shallow methods; the project's CCA-ITQ lives in
//! src/shallow.

use anyhow::{anyhow, bail, Context, Result};
use cmh::bundle::{one_hot, Bundle, BundleWriter, FixedSplit, NewModality};
use cmh::codes::BinaryCodes;
use cmh::deep::agnet::AgnetParams;
use cmh::deep::czhash::CzhashParams;
use cmh::method::{DeviceChoice, Fit, FitContext, HashModel, View, IMAGE, TEXT};
use cmh::metrics::EvalOptions;
use cmh::pipeline::{evaluate_split, EncodedSplit, RandomCodes};
use cmh::split::{bundle_views, make_split, Protocol, Split, SplitConfig, ValidationConfig};
use ndarray::{Array1, Array2, Axis};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Args {
    npy: PathBuf,
    /// A bundle to run instead of the Wikipedia `.npy` folder.
    data: Option<PathBuf>,
    /// The whole benchmark (emoji (b) seeds 0–4, Wikipedia (b)–(d) seeds 0–9).
    suite: bool,
    /// Score on validation splits carved from the training classes.
    validation: bool,
    /// Seed of the validation carving (`--validation-seed`, implies `--validation`).
    validation_seed: u64,
    emb: String,
    protocols: Vec<Protocol>,
    bits: Vec<usize>,
    seed0: u64,
    repeat: usize,
    methods: Vec<String>,
    params: BTreeMap<String, toml::Table>,
    device: DeviceChoice,
    out: Option<PathBuf>,
    threads: i32,
    /// A JSON this bench wrote earlier (possibly partial): its runs are kept, not run again.
    resume: Option<PathBuf>,
    /// Print the table of the `--resume` JSON without running anything.
    table_only: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        npy: PathBuf::from("data/wiki_npy"),
        data: None,
        suite: false,
        validation: false,
        validation_seed: ValidationConfig::default().seed,
        emb: "onehot".into(),
        protocols: vec![Protocol::Standard, Protocol::ZeroShot, Protocol::SemiSupervised, Protocol::LabelSpaces],
        bits: vec![32, 64],
        seed0: 0,
        repeat: 10,
        methods: ["czhash", "czhash-nfs", "agnet", "attr-ridge", "sch", "cca-itq", "segh", "sdch", "random"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        params: BTreeMap::new(),
        device: DeviceChoice::Cpu,
        out: None,
        threads: 1,
        resume: None,
        table_only: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).filter(|s| s != "--bench").collect();
    let mut it = argv.into_iter();
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or_else(|| anyhow!("{k} needs a value"));
        match k.as_str() {
            "--npy" => a.npy = PathBuf::from(val()?),
            "--data" => a.data = Some(PathBuf::from(val()?)),
            "--suite" => a.suite = true,
            "--validation" => a.validation = true,
            "--validation-seed" => {
                a.validation = true;
                a.validation_seed = val()?.parse().map_err(|e| anyhow!("--validation-seed: {e}"))?;
            }
            "--emb" => a.emb = val()?,
            "--protocols" => {
                a.protocols = val()?
                    .split(',')
                    .map(|p| match p {
                        "a" => Ok(Protocol::Standard),
                        "b" => Ok(Protocol::ZeroShot),
                        "c" => Ok(Protocol::SemiSupervised),
                        "d" => Ok(Protocol::LabelSpaces),
                        o => Err(anyhow!("unknown protocol {o:?} (a, b, c, d)")),
                    })
                    .collect::<Result<_>>()?
            }
            "--bits" => a.bits = val()?.split(',').map(|b| b.parse().map_err(|e| anyhow!("--bits: {e}"))).collect::<Result<_>>()?,
            "--seed0" => a.seed0 = val()?.parse()?,
            "--repeat" => a.repeat = val()?.parse()?,
            "--methods" => a.methods = val()?.split(',').map(String::from).collect(),
            "--device" => {
                a.device = match val()?.as_str() {
                    "cpu" => DeviceChoice::Cpu,
                    "cuda" => DeviceChoice::Cuda,
                    "auto" => DeviceChoice::Auto,
                    o => bail!("--device {o}: cpu, cuda or auto"),
                }
            }
            "--param" => {
                let p = val()?;
                let (key, value) = p.split_once('=').ok_or_else(|| anyhow!("--param {p}: expected method.key=value"))?;
                let (method, key) = key.split_once('.').ok_or_else(|| anyhow!("--param {p}: expected method.key=value"))?;
                let t: toml::Table = toml::from_str(&format!("{key} = {value}")).map_err(|e| anyhow!("--param {p}: {e}"))?;
                a.params.entry(method.to_string()).or_default().extend(t);
            }
            "--out" => a.out = Some(PathBuf::from(val()?)),
            "--threads" => a.threads = val()?.parse()?,
            "--resume" => a.resume = Some(PathBuf::from(val()?)),
            "--table-only" => a.table_only = true,
            o => bail!("unknown option {o}"),
        }
    }
    Ok(a)
}

fn read_npy_f32(p: &Path) -> Result<Array2<f32>> {
    cmh::npy::read_features(p)
}

/// Builds (or reuses) the Wikipedia bundle with the chosen class embeddings.
fn wiki_bundle(npy: &Path, emb: &str) -> Result<Bundle> {
    // One cached bundle per source folder and embedding (data/wiki_npy → data/wiki_bundle_EMB,
    // any other folder X → X_bundle_EMB).
    let stem = match npy.file_name().and_then(|s| s.to_str()) {
        Some("wiki_npy") | None => "wiki".to_string(),
        Some(other) => other.to_string(),
    };
    let dir = npy.parent().unwrap_or(Path::new(".")).join(format!("{stem}_bundle_{emb}"));
    if dir.join("bundle.json").is_file() {
        return Bundle::load(&dir);
    }
    let img = read_npy_f32(&npy.join("image.npy"))?;
    let txt = read_npy_f32(&npy.join("text.npy"))?;
    let y = cmh::npy::read_indices(&npy.join("labels.npy"), 10)?;
    let train = cmh::npy::read_indices(&npy.join("train.npy"), y.len())?;
    let test = cmh::npy::read_indices(&npy.join("test.npy"), y.len())?;
    let classes: Vec<String> = serde_json::from_str(&std::fs::read_to_string(npy.join("classes.json"))?)?;
    let k = classes.len();
    let embeddings = match emb {
        "onehot" => (Array2::from_shape_fn((k, k), |(i, j)| if i == j { 1.0 } else { 0.0 }), "one-hot class indicators".to_string()),
        "minilm" => (
            read_npy_f32(&npy.join("minilm.npy")).context("MiniLM embeddings (see the header of this bench)")?,
            "all-MiniLM-L6-v2 sentence embeddings of the class names".to_string(),
        ),
        o => bail!("--emb {o}: onehot or minilm"),
    };
    BundleWriter {
        name: "wikipedia".into(),
        source: "Rasiwasia et al., ACM MM 2010: 128-word SIFT BoVW images, 10-topic LDA texts (raw_features.mat)".into(),
        classes,
        modalities: vec![
            NewModality { name: "image".into(), features: Some(img), description: Some("128-d SIFT BoVW".into()), images: None },
            NewModality { name: "text".into(), features: Some(txt), description: Some("10-topic LDA".into()), images: None },
        ],
        labels: vec![one_hot(&y, k)],
        class_embeddings: Some(embeddings),
        split: Some(FixedSplit { train: train.clone(), query: test, database: train }),
        ..Default::default()
    }
    .write(&dir, false)
}

fn encode(model: &dyn HashModel, views: &[View]) -> Result<[BinaryCodes; 2]> {
    Ok([model.encode(IMAGE, &views[IMAGE])?, model.encode(TEXT, &views[TEXT])?])
}

/// Bench-local reference: regularised CCA (min(bits, dims) components) followed by ITQ.
struct CcaRef {
    mean: [Array1<f64>; 2],
    proj: [Array2<f64>; 2],
    bits: usize,
}

impl CcaRef {
    fn fit(x: &Array2<f32>, y: &Array2<f32>, bits: usize, seed: u64) -> Result<Self> {
        use ndarray_linalg::{Eigh, SVD, UPLO};
        let x = x.mapv(|v| v as f64);
        let y = y.mapv(|v| v as f64);
        let (mx, my) = (x.mean_axis(Axis(0)).unwrap(), y.mean_axis(Axis(0)).unwrap());
        let (xc, yc) = (&x - &mx, &y - &my);
        let n = x.nrows() as f64;
        let reg = |c: Array2<f64>| {
            let tr = c.diag().sum() / c.nrows() as f64;
            let mut c = c;
            for i in 0..c.nrows() {
                c[[i, i]] += 1e-4 * tr + 1e-8;
            }
            c
        };
        let cxx = reg(xc.t().dot(&xc) / n);
        let cyy = reg(yc.t().dot(&yc) / n);
        let cxy = xc.t().dot(&yc) / n;
        let isqrt = |c: &Array2<f64>| -> Result<Array2<f64>> {
            let (e, v) = c.eigh(UPLO::Lower)?;
            Ok(v.dot(&Array2::from_diag(&e.mapv(|l| 1.0 / l.max(1e-12).sqrt()))).dot(&v.t()))
        };
        let (wx, wy) = (isqrt(&cxx)?, isqrt(&cyy)?);
        let m = wx.dot(&cxy).dot(&wy);
        let (u, _s, vt) = m.svd(true, true)?;
        let k = bits.min(x.ncols()).min(y.ncols());
        let px = wx.dot(&u.unwrap().slice(ndarray::s![.., ..k]));
        let py = wy.dot(&vt.unwrap().t().slice(ndarray::s![.., ..k]));
        // ITQ on the stacked projections.
        let v = ndarray::concatenate![Axis(0), xc.dot(&px), yc.dot(&py)];
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let g = Array2::from_shape_fn((k, k), |_| Normal::new(0.0, 1.0).unwrap().sample(&mut rng));
        let (q, _, _) = g.svd(true, false)?;
        let mut r = q.unwrap();
        for _ in 0..50 {
            let b = v.dot(&r).mapv(|t| if t >= 0.0 { 1.0 } else { -1.0 });
            let (u, _, vt) = b.t().dot(&v).svd(true, true)?;
            r = vt.unwrap().t().dot(&u.unwrap().t());
        }
        Ok(Self { mean: [mx, my], proj: [px.dot(&r), py.dot(&r)], bits: k })
    }
}

impl HashModel for CcaRef {
    fn method(&self) -> &'static str {
        "cca-ref"
    }
    fn bits(&self) -> usize {
        self.bits
    }
    fn encode(&self, m: usize, view: &View) -> Result<BinaryCodes> {
        let x = view.features("cca-ref", m)?.mapv(|v| v as f64);
        Ok(BinaryCodes::from_signs((&x - &self.mean[m]).dot(&self.proj[m]).view()))
    }
    fn save(&self, _: &Path) -> Result<()> {
        Ok(())
    }
}

fn fit_one(method: &str, a: &Args, split: &Split, bundle: &Bundle, bits: usize, seed: u64) -> Result<Box<dyn HashModel>> {
    let train = split.train_set(bundle, false)?;
    let ctx = FitContext { device: a.device, ..FitContext::new(bits, seed) };
    let table = |name: &str| a.params.get(name).cloned().unwrap_or_default();
    let from = |name: &str| -> Result<toml::Value> { Ok(toml::Value::Table(table(name))) };
    Ok(match method {
        "czhash" => Box::new(from("czhash")?.try_into::<CzhashParams>()?.fit(&train, &ctx)?),
        "czhash-nfs" => {
            let mut t = table("czhash");
            t.extend(table("czhash-nfs"));
            t.insert("use_unlabelled".into(), toml::Value::Boolean(false));
            Box::new(toml::Value::Table(t).try_into::<CzhashParams>()?.fit(&train, &ctx)?)
        }
        "agnet" => Box::new(from("agnet")?.try_into::<AgnetParams>()?.fit(&train, &ctx)?),
        "random" => Box::new(RandomCodes::default().fit(&train, &ctx)?),
        "sch" | "cca-itq" | "segh" | "sdch" | "attr-ridge" => cmh::pipeline::fit_method(method, &table(method), &train, &ctx)?.0,
        "cca-ref" => {
            let x = train.views[0].features("cca-ref", 0)?;
            let y = train.views[1].features("cca-ref", 1)?;
            Box::new(CcaRef::fit(x, y, bits, seed)?)
        }
        o => bail!("unknown method {o}"),
    })
}

/// CPU seconds (user + system) this process has used so far, from /proc/self/stat (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, i.e. 11 and 12 after the ')'.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Mean over seeds of (I→T, T→I).
fn means(v: &[(f64, f64)]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    (v.iter().map(|x| x.0).sum::<f64>() / n, v.iter().map(|x| x.1).sum::<f64>() / n)
}

/// Mean mAP pairs (I→T, T→I) per (protocol, method, bits), one per split seed.
type Table = BTreeMap<(String, String, usize), Vec<(f64, f64)>>;

/// Whether a CZHash run diverged: its eq. 7 history rose more than tenfold above its lowest value.
fn diverged(history: &[f64]) -> bool {
    let mut low = f64::INFINITY;
    for &h in history {
        if !h.is_finite() || h > 10.0 * low {
            return true;
        }
        low = low.min(h);
    }
    false
}

/// The targets: on emoji (b), CZHash and AgNet ≥ max(SCH, SeGH, SDCH, CCA-ITQ) + 0.03 and ≥
/// attr-ridge in both directions; on Wikipedia (b)–(d), the margins against SCH and CCA-ITQ
/// (reported, no threshold). Mean mAP per code length; margin = method − rival.
fn print_targets(table: &Table, bits: &[usize]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    println!("\nTargets (mean mAP; margin = method − rival):");
    let groups: std::collections::BTreeSet<String> = table.keys().map(|k| k.0.clone()).collect();
    for g in &groups {
        for &b in bits {
            let get = |m: &str| table.get(&(g.clone(), m.to_string(), b)).map(|v| means(v));
            let emoji = g.starts_with("emoji");
            for m in ["czhash", "agnet"] {
                let Some((ai, at)) = get(m) else { continue };
                let mut rivals: Vec<(String, (f64, f64), f64)> = Vec::new();
                if emoji {
                    let best = ["sch", "segh", "sdch", "cca-itq"]
                        .iter()
                        .filter_map(|r| get(r))
                        .fold((f64::NAN, f64::NAN), |acc, x| (acc.0.max(x.0), acc.1.max(x.1)));
                    if best.0.is_finite() {
                        rivals.push(("max(sch,segh,sdch,cca-itq)".into(), best, 0.03));
                    }
                    if let Some(r) = get("attr-ridge") {
                        rivals.push(("attr-ridge".into(), r, 0.0));
                    }
                } else {
                    for r in ["sch", "cca-itq", "czhash-nfs"] {
                        if let Some(v) = get(r) {
                            rivals.push((r.into(), v, 0.0));
                        }
                    }
                }
                for (r, (bi, bt), need) in rivals {
                    let ok = ai - bi >= need && at - bt >= need;
                    println!(
                        "{g:<9} {b:>3} bits {m:>7} vs {r:<27} I→T {:+.4}  T→I {:+.4}  (need ≥ {need:+.2}) {}",
                        ai - bi,
                        at - bt,
                        if ok { "met" } else { "NOT met" }
                    );
                    out.push(serde_json::json!({ "group": g, "bits": b, "method": m, "rival": r, "i2t_margin": ai - bi, "t2i_margin": at - bt, "need": need, "met": ok }));
                }
            }
        }
    }
    out
}

/// One block of the benchmark: a bundle, its protocols and split seeds.
struct Job {
    name: String,
    bundle: Bundle,
    protocols: Vec<Protocol>,
    seeds: std::ops::Range<u64>,
}

fn main() -> Result<()> {
    let a = parse_args()?;
    cmh::shallow::common::set_blas_threads(1);
    // One torch thread: on a shared 2-core machine libgomp's spinning workers otherwise burn most
    // of the CPU time (measured: 5 CZHash epochs 60 s → 9.5 s wall).
    tch::set_num_threads(a.threads);
    let seeds = a.seed0..a.seed0 + a.repeat as u64;
    let jobs: Vec<Job> = if a.suite {
        let load = |p: &str| {
            Bundle::load(Path::new(p))
                .with_context(|| format!("{p}: the suite needs the emoji bundle (`cmh demo` builds it) and the Wikipedia bundle"))
        };
        vec![
            Job { name: "emoji".into(), bundle: load("data/emoji")?, protocols: vec![Protocol::ZeroShot], seeds: 0..5 },
            Job {
                name: "wiki".into(),
                bundle: load("data/wiki")?,
                protocols: vec![Protocol::ZeroShot, Protocol::SemiSupervised, Protocol::LabelSpaces],
                seeds: 0..10,
            },
        ]
    } else if let Some(d) = &a.data {
        let name = d.file_name().and_then(|s| s.to_str()).unwrap_or("data").to_string();
        vec![Job { name, bundle: Bundle::load(d)?, protocols: a.protocols.clone(), seeds: seeds.clone() }]
    } else {
        if !a.npy.join("image.npy").is_file() {
            eprintln!(
                "{} not found: run `.venv/bin/python scripts/wiki_to_npy.py --src ../shared/data/wiki --out {}` first, or pass --data BUNDLE / --suite; skipping",
                a.npy.join("image.npy").display(),
                a.npy.display()
            );
            return Ok(());
        }
        vec![Job { name: "wiki".into(), bundle: wiki_bundle(&a.npy, &a.emb)?, protocols: a.protocols.clone(), seeds: seeds.clone() }]
    };
    let opts = EvalOptions::default();
    let (run_t0, run_c0) = (Instant::now(), cpu_seconds());
    let mut rows: Vec<serde_json::Value> = Vec::new();
    // (dataset/protocol, method, bits) → per seed (i2t, t2i)
    let mut table: Table = BTreeMap::new();
    // Runs of an earlier (possibly interrupted) invocation: kept, and not run again.
    let mut done: std::collections::BTreeSet<(String, u64, usize, String)> = Default::default();
    if let Some(r) = &a.resume {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(r).with_context(|| format!("{}: cannot read", r.display()))?)
                .with_context(|| format!("{}: invalid JSON", r.display()))?;
        for run in v["runs"].as_array().cloned().unwrap_or_default() {
            let (Some(p), Some(seed), Some(bits), Some(m)) =
                (run["protocol"].as_str(), run["seed"].as_u64(), run["bits"].as_u64(), run["method"].as_str())
            else {
                bail!("{}: a run lacks protocol, seed, bits or method", r.display());
            };
            // Older files name the protocol only (Wikipedia).
            let g = match run["dataset"].as_str() {
                Some(d) => format!("{d}/{p}"),
                None => format!("wiki/{p}"),
            };
            if let (Some(i), Some(t)) = (run["i2t"].as_f64(), run["t2i"].as_f64()) {
                table.entry((g.clone(), m.to_string(), bits as usize)).or_default().push((i, t));
                done.insert((g, seed, bits as usize, m.to_string()));
                rows.push(run.clone());
            }
        }
        eprintln!("{}: {} earlier runs kept", r.display(), done.len());
    }
    let pname = |p: Protocol| match p {
        Protocol::Standard => "a",
        Protocol::ZeroShot => "b",
        Protocol::SemiSupervised => "c",
        Protocol::LabelSpaces => "d",
    };
    // Random floor of each split (group, seed, bits) → (i2t, t2i).
    let mut floors: BTreeMap<(String, u64, usize), (f64, f64)> = BTreeMap::new();
    let mut divergences: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for job in &jobs {
        let bundle = &job.bundle;
        for &protocol in &job.protocols {
            let group = format!("{}/{}", job.name, pname(protocol));
            for seed in job.seeds.clone() {
                let validation = a.validation.then(|| ValidationConfig { seed: a.validation_seed, ..ValidationConfig::default() });
                let split = make_split(bundle, &SplitConfig { protocol, seed, validation, ..Default::default() })?;
                let qv = bundle_views(bundle, &split.query, false)?;
                let dv = bundle_views(bundle, &split.database, false)?;
                let unseen: Vec<&str> = split.unseen_classes.iter().map(|&c| bundle.class_names()[c].as_str()).collect();
                for &bits in &a.bits {
                    for method in &a.methods {
                        // Without masked labels CZHash-nFS trains on exactly what CZHash trains on.
                        if method == "czhash-nfs" && matches!(protocol, Protocol::Standard | Protocol::ZeroShot) {
                            continue;
                        }
                        if a.table_only || done.contains(&(group.clone(), seed, bits, method.clone())) {
                            continue;
                        }
                        let t0 = Instant::now();
                        let c0 = cpu_seconds();
                        let model = match fit_one(method, &a, &split, bundle, bits, seed) {
                            Ok(m) => m,
                            Err(e) => {
                                eprintln!("{group} seed {seed} {method} {bits} bits FAILED: {e:#}");
                                rows.push(serde_json::json!({ "dataset": job.name, "protocol": pname(protocol), "seed": seed, "method": method, "bits": bits, "error": format!("{e:#}") }));
                                continue;
                            }
                        };
                        let fit_s = t0.elapsed().as_secs_f64();
                        let fit_cpu_s = cpu_seconds() - c0;
                        let enc =
                            EncodedSplit { query: encode(model.as_ref(), &qv)?, database: encode(model.as_ref(), &dv)?, learned_db: None };
                        let ev = evaluate_split(&enc, bundle, &split, &opts)?;
                        eprintln!(
                            "{group} seed {seed} unseen {} {method:>10} {bits:>3} bits: I→T {:.4} T→I {:.4}  [{} queries, {} db, fit {fit_s:.1}s wall, {fit_cpu_s:.1}s CPU]",
                            if unseen.len() > 3 { format!("{} classes", unseen.len()) } else { format!("{unseen:?}") },
                            ev.i2t.map,
                            ev.t2i.map,
                            split.query.len(),
                            split.database.len()
                        );
                        table.entry((group.clone(), method.clone(), bits)).or_default().push((ev.i2t.map, ev.t2i.map));
                        rows.push(serde_json::json!({
                            "dataset": job.name, "protocol": pname(protocol), "validation": a.validation.then_some(a.validation_seed), "seed": seed, "unseen": unseen, "method": method, "bits": bits,
                            "i2t": ev.i2t.map, "t2i": ev.t2i.map, "fit_s": fit_s, "fit_cpu_s": fit_cpu_s, "history": model.history(),
                        }));
                    }
                }
                // After each split, so an interrupted run keeps what it measured (see --resume).
                if let Some(out) = &a.out {
                    let json = serde_json::json!({ "emb": a.emb, "params": a.params, "partial": true, "runs": rows });
                    cmh::npy::write_text_atomic(out, &serde_json::to_string_pretty(&json)?)?;
                }
            }
        }
    }
    for r in &rows {
        let (Some(d), Some(p), Some(seed), Some(bits), Some(m)) =
            (r["dataset"].as_str(), r["protocol"].as_str(), r["seed"].as_u64(), r["bits"].as_u64(), r["method"].as_str())
        else {
            continue;
        };
        let g = format!("{d}/{p}");
        if m == "random" {
            if let (Some(i), Some(t)) = (r["i2t"].as_f64(), r["t2i"].as_f64()) {
                floors.insert((g.clone(), seed, bits as usize), (i, t));
            }
        }
        if m.starts_with("czhash") {
            let h: Vec<f64> = r["history"].as_array().map(|v| v.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default();
            let e = divergences.entry(format!("{g} {m} {bits} bits")).or_default();
            e.0 += diverged(&h) as usize;
            e.1 += 1;
        }
    }
    println!(
        "\n{}mean mAP over class splits (database encoded by the hash functions; I→T / T→I)",
        if a.validation { "VALIDATION splits carved from the training classes: " } else { "" }
    );
    print!("{:<9} {:<11} {:>3}", "group", "method", "n");
    for bits in &a.bits {
        print!(" {:>15}", format!("{bits} bits"));
    }
    println!();
    let groups: std::collections::BTreeSet<String> = table.keys().map(|k| k.0.clone()).collect();
    for g in &groups {
        for m in &a.methods {
            let cells: Vec<Option<&Vec<(f64, f64)>>> = a.bits.iter().map(|&b| table.get(&(g.clone(), m.clone(), b))).collect();
            if cells.iter().all(|c| c.is_none()) {
                continue;
            }
            let n = cells.iter().flatten().map(|v| v.len()).min().unwrap_or(0);
            print!("{g:<9} {m:<11} {n:>3}");
            for c in &cells {
                match c {
                    Some(v) => {
                        let (i, t) = means(v);
                        print!("   {i:.4} / {t:.4}");
                    }
                    None => print!(" {:>15}", "—"),
                }
            }
            println!();
        }
    }
    println!("\n(mean ± std over class splits)");
    for ((g, m, bits), v) in &table {
        let (i, t): (Vec<f64>, Vec<f64>) = v.iter().copied().unzip();
        let (mi, si) = cmh::report::mean_std(&i);
        let (mt, st) = cmh::report::mean_std(&t);
        println!("{g:<9} {m:<11} {bits:>5} {mi:>9.4} ± {si:.4} {mt:>9.4} ± {st:.4}");
    }
    if !floors.is_empty() {
        println!("\nRandom-code floor per split (I→T / T→I):");
        for ((g, seed, bits), (i, t)) in &floors {
            println!("{g:<9} split {seed:>2} {bits:>3} bits  {i:.4} / {t:.4}");
        }
    }
    if !divergences.is_empty() {
        println!("\nCZHash fits whose eq. 7 rose more than tenfold above its minimum (diverged / fits):");
        for (k, (d, n)) in &divergences {
            println!("{k:<36} {d} / {n}");
        }
    }
    let targets = print_targets(&table, &a.bits);
    let (wall, cpu) = (run_t0.elapsed().as_secs_f64(), cpu_seconds() - run_c0);
    let fits_cpu: f64 = rows.iter().filter_map(|r| r["fit_cpu_s"].as_f64()).sum();
    let fits_wall: f64 = rows.iter().filter_map(|r| r["fit_s"].as_f64()).sum();
    println!("\nthis invocation: {wall:.0} s wall, {cpu:.0} s CPU (user + system)");
    println!("all fits in the table (resumed runs included): {fits_wall:.0} s wall, {fits_cpu:.0} s CPU");
    let summary: Vec<serde_json::Value> = table
        .iter()
        .map(|((g, m, b), v)| {
            let (i, t) = means(v);
            serde_json::json!({ "group": g, "method": m, "bits": b, "seeds": v.len(), "i2t": i, "t2i": t })
        })
        .collect();
    if let Some(out) = &a.out {
        let json = serde_json::json!({
            "emb": a.emb, "params": a.params, "bits": a.bits, "validation": a.validation, "suite": a.suite,
            "wall_s": wall, "cpu_s": cpu, "fits_wall_s": fits_wall, "fits_cpu_s": fits_cpu, "mean": summary, "targets": targets, "runs": rows,
        });
        cmh::npy::write_text_atomic(out, &serde_json::to_string_pretty(&json)?)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
