//! Retrieval study of the shallow methods (SCH, CCA-ITQ) on Wikipedia and UCI digits: mAP in both
//! directions and both database conventions, mean ± std over seeds.
//!
//! Data: `.venv/bin/python scripts/dump_shallow_data.py` writes `data/raw/{wiki,uci}/*.npy`.
//! Run:  cargo bench --bench shallow_study -- --dataset wiki --method sch --seeds 5
//!       cargo bench --bench shallow_study -- --dataset wiki --method sch --validation --params 'rho = 0.001'
//!
//! Conventions: queries = test items, database = training items; relevance = sharing a label
//! (crate::metrics). "B" = the database is the learned unified training codes (`train_codes()`),
//! "enc" = the database is encoded by the other modality's hash function. With `--validation`, the
//! test queries are never touched: the validation split of `cmh::split` (a class-stratified 20 % of
//! the TRAINING items, seed 12345, as `cmh tune` and `cmh data split --validation` carve it)
//! become the queries and the other 80 % the training set = database.
use anyhow::{bail, Context, Result};
use clap::Parser;
use cmh::codes::BinaryCodes;
use cmh::method::{Fit, FitContext, HashModel, TrainSet, View, IMAGE, TEXT};
use cmh::metrics;
use cmh::npy::{read_binary_matrix, read_features};
use cmh::shallow::cca_itq::CcaItqParams;
use cmh::shallow::common::set_blas_threads;
use cmh::shallow::sch::SchParams;
use ndarray::{Array2, Axis};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
struct Args {
    /// Folder with wiki/ and uci/ dumps.
    #[arg(long, default_value = "data/raw")]
    data: PathBuf,
    #[arg(long, default_value = "wiki")]
    dataset: String,
    /// sch | cca-itq
    #[arg(long, default_value = "sch")]
    method: String,
    #[arg(long, default_value = "16,32,64,128", value_delimiter = ',')]
    bits: Vec<usize>,
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Hyper-parameters as TOML (the `[sch]` / `[cca-itq]` section body), e.g. 'rho = 0.001'.
    #[arg(long, default_value = "")]
    params: String,
    /// Validation split carved from the training items (never the test queries).
    #[arg(long)]
    validation: bool,
    /// Print one JSON line per code length.
    #[arg(long)]
    json: bool,
    /// Save the seed-0 model of each code length to DIR/<method>_<bits>/ with the Rust codes of the
    /// queries (query_codes_m{t}.npy), for scripts/check_shallow_export.py.
    #[arg(long)]
    save_dir: Option<PathBuf>,
    /// cargo bench passes --bench.
    #[arg(long, hide = true)]
    bench: bool,
}

struct Split {
    train: TrainSet,
    train_labels: Array2<u8>,
    q_views: [Array2<f32>; 2],
    q_labels: Array2<u8>,
}

fn load(args: &Args) -> Result<Split> {
    let dir = args.data.join(&args.dataset);
    if !dir.join("I_tr.npy").exists() {
        bail!("{}: no I_tr.npy; run `.venv/bin/python scripts/dump_shallow_data.py` first", dir.display());
    }
    let f = |n: &str| read_features(&dir.join(format!("{n}.npy")));
    let l = |n: &str| read_binary_matrix(&dir.join(format!("{n}.npy")), "labels");
    let (mut itr, mut ttr, mut ltr) = (f("I_tr")?, f("T_tr")?, l("L_tr")?);
    let (mut ite, mut tte, mut lte) = (f("I_te")?, f("T_te")?, l("L_te")?);
    if args.validation {
        let (tr, va) = cmh::split::validation_positions(ltr.view(), &cmh::split::ValidationConfig::default())?;
        ite = itr.select(Axis(0), &va);
        tte = ttr.select(Axis(0), &va);
        lte = ltr.select(Axis(0), &va);
        itr = itr.select(Axis(0), &tr);
        ttr = ttr.select(Axis(0), &tr);
        ltr = ltr.select(Axis(0), &tr);
    }
    let classes = (0..ltr.ncols()).map(|c| format!("class{c}")).collect();
    let train = TrainSet::supervised(vec![View::Features(itr), View::Features(ttr)], ltr.clone(), classes);
    Ok(Split { train, train_labels: ltr, q_views: [ite, tte], q_labels: lte })
}

/// [I→T with B, T→I with B, I→T encoded, T→I encoded] (B columns NaN without learned codes).
fn evaluate(model: &dyn HashModel, s: &Split) -> Result<[f64; 4]> {
    let qi = model.encode(IMAGE, &View::Features(s.q_views[0].clone()))?;
    let qt = model.encode(TEXT, &View::Features(s.q_views[1].clone()))?;
    let di = model.encode(IMAGE, &s.train.views[IMAGE])?;
    let dt = model.encode(TEXT, &s.train.views[TEXT])?;
    let m = |q: &BinaryCodes, d: &BinaryCodes| metrics::map(q.view(), d.view(), s.q_labels.view(), s.train_labels.view());
    let (b_i2t, b_t2i) = match model.train_codes() {
        Some(b) => (m(&qi, b)?, m(&qt, b)?),
        None => (f64::NAN, f64::NAN),
    };
    Ok([b_i2t, b_t2i, m(&qi, &dt)?, m(&qt, &di)?])
}

fn main() -> Result<()> {
    let args = Args::parse();
    set_blas_threads(1); // as the CLI does: rayon owns the cores
    let split = load(&args)?;
    println!(
        "# {} {} on {} ({}): {} training/database items, {} queries, seeds 0..{}, params: {}",
        args.method,
        if args.validation { "VALIDATION" } else { "test" },
        args.dataset,
        args.data.display(),
        split.train.len(),
        split.q_labels.nrows(),
        args.seeds,
        if args.params.is_empty() { "defaults" } else { &args.params }
    );
    println!("# bits  I->T(B)          T->I(B)          I->T(enc)        T->I(enc)        fit_s  iters");
    for &bits in &args.bits {
        let mut rows = Vec::new();
        let mut secs = 0.0;
        let mut iters = 0.0;
        for seed in 0..args.seeds {
            let ctx = FitContext::new(bits, seed);
            let t0 = Instant::now();
            let model: Box<dyn HashModel> = match args.method.as_str() {
                "sch" => {
                    let p: SchParams = toml::from_str(&args.params).context("--params for sch")?;
                    Box::new(p.fit(&split.train, &ctx)?)
                }
                "cca-itq" => {
                    let p: CcaItqParams = toml::from_str(&args.params).context("--params for cca-itq")?;
                    Box::new(p.fit(&split.train, &ctx)?)
                }
                m => bail!("unknown method {m}"),
            };
            secs += t0.elapsed().as_secs_f64();
            if let (Some(dir), 0) = (&args.save_dir, seed) {
                let d = dir.join(format!("{}_{bits}", args.method));
                model.save(&d)?;
                for t in 0..2 {
                    model.encode(t, &View::Features(split.q_views[t].clone()))?.save_npy(&d, &format!("query_codes_m{t}"))?;
                    cmh::npy::write_npy(&d.join(format!("query_features_m{t}.npy")), &split.q_views[t])?;
                }
            }
            iters += model.history().len().saturating_sub(1) as f64;
            rows.push(evaluate(model.as_ref(), &split)?);
        }
        let n = rows.len() as f64;
        let mean: Vec<f64> = (0..4).map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n).collect();
        let std: Vec<f64> =
            (0..4).map(|j| (rows.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt()).collect();
        let cells: Vec<String> = (0..4).map(|j| format!("{:.4} ± {:.4}  ", mean[j], std[j])).collect();
        println!("{bits:>6}  {}{:>5.2}  {:>5.1}", cells.join(""), secs / n, iters / n);
        if args.json {
            println!(
                "{}",
                serde_json::json!({"method": args.method, "dataset": args.dataset, "validation": args.validation,
                    "params": args.params, "bits": bits, "seeds": args.seeds,
                    "i2t_B": mean[0], "t2i_B": mean[1], "i2t_enc": mean[2], "t2i_enc": mean[3],
                    "per_seed": rows})
            );
        }
    }
    Ok(())
}
