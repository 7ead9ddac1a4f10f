//! Training at scale: SCH or SeGH on a seeded synthetic bundle of n = 250,000, 500,000 and
//! 1,000,000 items at 64 bits, each size fitted in its own child process so that its peak memory
//! (VmHWM from /proc/self/status) is its own. Prints, per size, the wall-clock and CPU time of the
//! fit, the peak RSS of the process (data included) and the ratios t(2n)/t(n) between successive
//! sizes (goal ≤ 2.2, i.e. linear in n; peak RSS goal ≤ 4 GB at 10⁶).
//!
//! Data ([`mixture`]): 100 classes, multi-label (each item has a primary class, a second class with
//! probability 0.3 and a third with probability 0.1); modality 0 ("image", 128-d) and modality 1
//! ("text", 64-d) are Gaussian mixtures: row = mean of its classes' centres + Gaussian noise
//! (centres N(0, 1), noise N(0, 1) for the image side and N(0, 0.7²) for the text side); class
//! embeddings (SeGH) are 384-d Gaussian. Generated in parallel from one seeded stream per block of
//! rows, so the data depend only on the seed and n.
//!
//! Settings: SCH with 1000 RBF anchors (the paper's), SeGH with `SeghParams::default()` (1000 RBF
//! anchors); a fixed number of iterations (`--sweeps`, no early stop) so that every size does the
//! same work. OpenBLAS one thread per call, rayon over row blocks (as the CLI sets up).
//!
//! `--method sdch` measures streaming from a memory-mapped bundle instead: for each size a child
//! writes the bundle (`--scratch` folder, kept for later runs; features of `--sdch-dims`) and a
//! second child loads it with `Bundle::load_mapped` and trains SDCH for one epoch (small networks:
//! one 256-wide hidden layer, 64-d features, batches of 256). Its peak RSS is then compared with
//! the size of the bundle's feature files: a bundle larger than the memory a process may use
//! trains when the peak stays below it. `--method agnet` does the same with AgNet (one epoch,
//! one 256-wide hidden layer, batches of 256, the PCA hashing layer over every row), on the same
//! bundle with random 8-d class vectors.
//!
//! ```text
//! nice -n 10 cargo bench --bench train_scale -- --method sch
//! nice -n 10 cargo bench --bench train_scale -- --method segh
//! nice -n 10 cargo bench --bench train_scale -- --method sdch --sizes 1000000
//! nice -n 10 cargo bench --bench train_scale -- --method agnet --sizes 1000000
//! ... -- --sizes 20000,40000 --sweeps 2        (a quick run)
//! ```
use anyhow::{bail, Context, Result};
use clap::Parser;
use cmh::method::{Fit, FitContext, HashModel, TrainSet, View};
use cmh::shallow::common::{seeded_rng, set_blas_threads};
use cmh::shallow::sch::SchParams;
use cmh::shallow::segh::SeghParams;
use ndarray::{Array2, Axis};
use rand::Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use std::time::Instant;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// `sch`, `segh`, `sdch` or `agnet`.
    #[arg(long, default_value = "sch")]
    method: String,
    #[arg(long, default_value = "250000,500000,1000000", value_delimiter = ',')]
    sizes: Vec<usize>,
    #[arg(long, default_value_t = 64)]
    bits: usize,
    /// SCH sweeps / SeGH iterations (fixed: no early stop).
    #[arg(long, default_value_t = 3)]
    sweeps: usize,
    #[arg(long, default_value = "128,64", value_delimiter = ',')]
    dims: Vec<usize>,
    #[arg(long, default_value_t = 100)]
    classes: usize,
    #[arg(long, default_value_t = 384)]
    embedding_dim: usize,
    /// Feature dimensions of the SDCH bundle (image, text).
    #[arg(long, default_value = "512,256", value_delimiter = ',')]
    sdch_dims: Vec<usize>,
    /// Where the SDCH bundles are written.
    #[arg(long, default_value = "runs/train_scale")]
    scratch: std::path::PathBuf,
    /// Internal: write the SDCH bundle of this size.
    #[arg(long, hide = true)]
    generate: Option<usize>,
    /// Internal: fit one size in this process and print its figures.
    #[arg(long, hide = true)]
    child: Option<usize>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The synthetic training set of the module docs.
fn mixture(n: usize, dims: &[usize], classes: usize, embedding_dim: usize, seed: u64) -> TrainSet {
    const BLOCK: usize = 4096;
    let mut labels = Array2::<u8>::zeros((n, classes));
    labels.axis_chunks_iter_mut(Axis(0), BLOCK).into_par_iter().enumerate().for_each(|(b, mut lb)| {
        let mut r = seeded_rng(seed, 1_000_000 + b as u64);
        for mut row in lb.outer_iter_mut() {
            row[r.gen_range(0..classes)] = 1;
            for p in [0.3, 0.1] {
                if r.gen::<f64>() < p {
                    row[r.gen_range(0..classes)] = 1;
                }
            }
        }
    });
    let views = dims
        .iter()
        .enumerate()
        .map(|(t, &d)| {
            let mut crng = seeded_rng(seed, 1 + t as u64);
            let centres = Array2::from_shape_simple_fn((classes, d), || crng.sample::<f32, _>(StandardNormal));
            let noise = if t == 0 { 1.0 } else { 0.7 };
            let mut x = Array2::<f32>::zeros((n, d));
            x.axis_chunks_iter_mut(Axis(0), BLOCK).into_par_iter().enumerate().for_each(|(b, mut xb)| {
                let mut r = seeded_rng(seed, 2_000_000 * (t as u64 + 1) + b as u64);
                for (i, mut row) in xb.outer_iter_mut().enumerate() {
                    let l = labels.row(b * BLOCK + i);
                    let cls: Vec<usize> = (0..classes).filter(|&c| l[c] != 0).collect();
                    for c in &cls {
                        row.scaled_add(1.0 / cls.len() as f32, &centres.row(*c));
                    }
                    row.iter_mut().for_each(|v| *v += noise * r.sample::<f32, _>(StandardNormal));
                }
            });
            View::Features(x)
        })
        .collect();
    let mut erng = seeded_rng(seed, 99);
    let emb =
        Array2::from_shape_simple_fn((classes, embedding_dim), || erng.sample::<f32, _>(StandardNormal) / (embedding_dim as f32).sqrt());
    let mut data = TrainSet::supervised(views, labels, (0..classes).map(|c| format!("class{c}")).collect());
    data.class_embeddings = Some(emb);
    data
}

/// CPU seconds (user + system, all threads) this process has used so far (/proc/self/stat).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0 // utime, stime (fields 14, 15 of stat(5)); USER_HZ = 100
}

/// Peak resident set size of this process so far, in bytes (VmHWM).
fn peak_rss() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb * 1024.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn sdch_bundle(args: &Args, n: usize) -> std::path::PathBuf {
    args.scratch.join(format!("mixture-{n}-{}-e8", args.sdch_dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")))
}

/// Whether the method trains from a memory-mapped bundle written by [`generate`].
fn mapped_method(args: &Args) -> bool {
    matches!(args.method.as_str(), "sdch" | "agnet")
}

/// Gigabytes of the bundle's two feature files.
fn features_on_disk(args: &Args, n: usize) -> f64 {
    ["image_features.npy", "text_features.npy"]
        .iter()
        .map(|f| std::fs::metadata(sdch_bundle(args, n).join(f)).map_or(0, |m| m.len()))
        .sum::<u64>() as f64
        / 1e9
}

/// Writes the SDCH bundle of size n (unless it is there).
fn generate(args: &Args, n: usize) -> Result<()> {
    let dir = sdch_bundle(args, n);
    if dir.join("bundle.json").is_file() {
        return Ok(());
    }
    let data = mixture(n, &args.sdch_dims, args.classes, 8, 7);
    let modalities = data
        .views
        .into_iter()
        .zip(["image", "text"])
        .map(|(v, name)| match v {
            View::Features(x) => cmh::bundle::NewModality { name: name.into(), features: Some(x), ..Default::default() },
            _ => unreachable!("features"),
        })
        .collect();
    let w = cmh::bundle::BundleWriter {
        name: "mixture".into(),
        source: "benches/train_scale.rs".into(),
        classes: data.class_names,
        modalities,
        labels: vec![data.labels[0].clone()],
        class_embeddings: data.class_embeddings.map(|e| (e, "random class vectors".to_string())),
        ..Default::default()
    };
    w.write(&dir, true)?;
    Ok(())
}

/// Fits one size; prints `RESULT n wall cpu peak_rss data_rss detail`.
fn child(args: &Args, n: usize) -> Result<()> {
    set_blas_threads(1);
    let data = if mapped_method(args) {
        let b = cmh::bundle::Bundle::load_mapped(&sdch_bundle(args, n))?;
        let all: Vec<usize> = (0..n).collect();
        let mut ts = TrainSet::supervised(cmh::split::bundle_views(&b, &all, false)?, b.labels[0].clone(), b.class_names().to_vec());
        ts.class_embeddings = b.class_embeddings.clone();
        ts
    } else {
        mixture(n, &args.dims, args.classes, args.embedding_dim, 7)
    };
    let data_rss = peak_rss();
    let ctx = FitContext::new(args.bits, 0);
    let (t, c) = (Instant::now(), cpu_seconds());
    let detail = match args.method.as_str() {
        "sdch" => {
            let p = cmh::deep::sdch::SdchParams {
                epochs: 1,
                hidden: vec![256],
                feature_dim: 64,
                batch_size: 256,
                encode_batch: 4096,
                ..Default::default()
            };
            let model = p.fit(&data, &ctx)?;
            format!(
                "1 epoch from the mapped bundle ({:.2} GB of features on disk), {} codes",
                features_on_disk(args, n),
                model.train_codes().map_or(0, |c| c.len())
            )
        }
        "agnet" => {
            let p = cmh::deep::agnet::AgnetParams { epochs: 1, hidden: vec![256], batch_size: 256, ..Default::default() };
            let model = p.fit(&data, &ctx)?;
            format!(
                "1 epoch from the mapped bundle ({:.2} GB of features on disk), loss {:.4}",
                features_on_disk(args, n),
                model.history()[0]
            )
        }
        "sch" => {
            let p = SchParams { max_iter: args.sweeps, tol: 0.0, ..SchParams::default() };
            let model = p.fit(&data, &ctx)?;
            let tm = model.timings();
            format!("features {:.1} s, {} sweeps {:.1} s, codes {:.1} s", tm.features_s, model.iterations(), tm.sweeps_s, tm.codes_s)
        }
        "segh" => {
            let p = SeghParams { iterations: args.sweeps, objective_tol: 0.0, ..SeghParams::default() };
            let model = p.fit(&data, &ctx)?;
            let i = model.info();
            format!(
                "step 1 {:.1} s, graph {:.1} s, step 2 {:.1} s, CG iterations {:?}",
                i.seconds_step1, i.seconds_graph, i.seconds_step2, i.cg_iterations
            )
        }
        m => bail!("--method must be sch, segh, sdch or agnet, found {m}"),
    };
    let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
    println!("RESULT {n} {wall:.2} {cpu:.2} {:.0} {data_rss:.0} {detail}", peak_rss());
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(n) = args.child {
        return child(&args, n);
    }
    if let Some(n) = args.generate {
        return generate(&args, n);
    }
    println!(
        "# {} training at scale: {} bits, {} sweeps/iterations, dims {:?}, {} classes (multi-label), rayon threads {}, OpenBLAS 1 thread per call",
        args.method,
        args.bits,
        args.sweeps,
        args.dims,
        args.classes,
        rayon::current_num_threads()
    );
    println!("| n | wall | CPU | peak RSS | of which data | load before → after | phases |\n|---|---|---|---|---|---|---|");
    let exe = std::env::current_exe()?;
    let mut rows: Vec<(usize, f64, f64)> = Vec::new();
    for &n in &args.sizes {
        if mapped_method(&args) {
            let out = std::process::Command::new(&exe).args(std::env::args().skip(1)).arg("--generate").arg(n.to_string()).output()?;
            if !out.status.success() {
                bail!("n = {n}: writing the bundle failed:\n{}", String::from_utf8_lossy(&out.stderr));
            }
        }
        let before = load_average();
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(std::env::args().skip(1)).arg("--child").arg(n.to_string());
        let out = cmd.output().with_context(|| format!("running the child for n = {n}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
            bail!("n = {n}: the child failed ({}):\n{}{}", out.status, stdout, String::from_utf8_lossy(&out.stderr));
        };
        let f: Vec<&str> = line.splitn(6, ' ').collect();
        let num = |i: usize| f[i].parse::<f64>().unwrap_or(f64::NAN);
        let gb = |b: f64| b / 1e9;
        println!(
            "| {n} | {:.1} s | {:.1} s | {:.2} GB | {:.2} GB | {before} → {} | {} |",
            num(1),
            num(2),
            gb(num(3)),
            gb(num(4)),
            load_average(),
            f.get(5).unwrap_or(&"")
        );
        rows.push((n, num(1), num(2)));
    }
    for w in rows.windows(2) {
        let ((n1, t1, c1), (n2, t2, c2)) = (w[0], w[1]);
        println!(
            "t({n2})/t({n1}) = {:.3} wall, {:.3} CPU (size ratio {:.2}; goal <= 2.2 for a doubling)",
            t2 / t1,
            c2 / c1,
            n2 as f64 / n1 as f64
        );
    }
    Ok(())
}
