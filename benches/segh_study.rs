//! SeGH study on Wikipedia and UCI digits: mAP tables (both database conventions), mAP against
//! the number of iterations (constrained vs the paper's printed alternation), and the validation
//! sweep used to choose k.
//!
//! ```text
//! .venv/bin/python scripts/segh_study_data.py --shared ../shared      # writes target/segh_study/*.npy
//! cargo bench --bench segh_study -- [--part main|iterations|validation|all] [--seeds 5] [--data target/segh_study]
//! ```
//! Class embeddings are one-hot class vectors (MiniLM embeddings replace them once the bundle has
//! them). Wikipedia: 2173 training items = database, 693 test queries; UCI: 1500 / 500.

use anyhow::{Context, Result};
use clap::Parser;
use cmh::codes::BinaryCodes;
use cmh::method::{Fit, FitContext, HashModel, TrainSet, View};
use cmh::metrics::map;
use cmh::npy::{read_binary_matrix, read_features};
use cmh::shallow::segh::{CodeConstraint, SeghModel, SeghParams};
use ndarray::{Array2, Axis};
use std::path::{Path, PathBuf};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/segh_study")]
    data: PathBuf,
    #[arg(long, default_value = "all")]
    part: String,
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

extern "C" {
    fn openblas_set_num_threads(n: std::os::raw::c_int);
}

struct Data {
    name: &'static str,
    train: TrainSet,
    query: Vec<View>,
    query_labels: Array2<u8>,
}

fn trainset(views: Vec<View>, labels: Array2<u8>) -> TrainSet {
    let c = labels.ncols();
    let mut t = TrainSet::supervised(views, labels, (0..c).map(|i| format!("class{i}")).collect());
    t.class_embeddings = Some(Array2::eye(c)); // one-hot class vectors
    t
}

fn load(dir: &Path, name: &'static str) -> Result<Data> {
    let f = |k: &str| read_features(&dir.join(format!("{name}_{k}.npy")));
    let l = |k: &str| read_binary_matrix(&dir.join(format!("{name}_{k}.npy")), "labels");
    let train = trainset(vec![View::Features(f("I_tr")?), View::Features(f("T_tr")?)], l("L_tr")?);
    Ok(Data { name, train, query: vec![View::Features(f("I_te")?), View::Features(f("T_te")?)], query_labels: l("L_te")? })
}

/// (I→T learned B, T→I learned B, I→T encoded, T→I encoded).
fn evaluate(model: &SeghModel, db: &TrainSet, query: &[View], ql: &Array2<u8>) -> Result<[f64; 4]> {
    let qi = model.encode(0, &query[0])?;
    let qt = model.encode(1, &query[1])?;
    let b: &BinaryCodes = model.train_codes().expect("SeGH learns B");
    let di = model.encode(0, &db.views[0])?;
    let dt = model.encode(1, &db.views[1])?;
    let dl = &db.labels[0];
    Ok([
        map(qi.view(), b.view(), ql.view(), dl.view())?,
        map(qt.view(), b.view(), ql.view(), dl.view())?,
        map(qi.view(), dt.view(), ql.view(), dl.view())?,
        map(qt.view(), di.view(), ql.view(), dl.view())?,
    ])
}

fn mean_std(rows: &[[f64; 4]]) -> ([f64; 4], [f64; 4]) {
    let n = rows.len() as f64;
    let mut m = [0.0; 4];
    let mut s = [0.0; 4];
    for r in rows {
        for j in 0..4 {
            m[j] += r[j] / n;
        }
    }
    for r in rows {
        for j in 0..4 {
            s[j] += (r[j] - m[j]).powi(2) / n;
        }
    }
    (m, s.map(f64::sqrt))
}

fn run(params: &SeghParams, d: &TrainSet, query: &[View], ql: &Array2<u8>, bits: usize, seeds: u64) -> Result<Vec<[f64; 4]>> {
    (0..seeds)
        .map(|seed| {
            let model = params.fit(d, &FitContext::new(bits, seed))?;
            evaluate(&model, d, query, ql)
        })
        .collect()
}

fn main_table(data: &[Data], seeds: u64) -> Result<()> {
    println!("\n== SeGH, paper settings + k = 10, up to 5 iterations (early stop), one-hot class embeddings, mean ± std of {seeds} seeds ==");
    println!("data  bits | learned B: I->T  T->I   | encoded db: I->T  T->I   | fit s");
    for d in data {
        for bits in [16, 32, 64, 128] {
            let t = std::time::Instant::now();
            let rows = run(&SeghParams::default(), &d.train, &d.query, &d.query_labels, bits, seeds)?;
            let secs = t.elapsed().as_secs_f64() / seeds as f64;
            let (m, s) = mean_std(&rows);
            println!(
                "{:5} {bits:4} |  {:.3}±{:.3} {:.3}±{:.3} |  {:.3}±{:.3} {:.3}±{:.3} | {secs:.2}",
                d.name, m[0], s[0], m[1], s[1], m[2], s[2], m[3], s[3]
            );
        }
    }
    Ok(())
}

fn iterations_table(data: &[Data], seeds: u64) -> Result<()> {
    println!("\n== mAP against iterations (mean of {seeds} seeds): constrained (ours) vs printed eqs. 9-10 ==");
    println!("data  bits constraint  iters | learned B: I->T  T->I | encoded: I->T  T->I | objective");
    for d in data {
        for bits in [16, 64] {
            for constraint in [CodeConstraint::Orthogonal, CodeConstraint::Printed] {
                for iterations in [1, 2, 3, 5, 10, 20] {
                    let params = SeghParams { constraint, iterations, ..Default::default() };
                    let mut rows = Vec::new();
                    let mut obj = 0.0;
                    for seed in 0..seeds {
                        let model = params.fit(&d.train, &FitContext::new(bits, seed))?;
                        obj += model.history().last().copied().unwrap_or(f64::NAN) / seeds as f64;
                        rows.push(evaluate(&model, &d.train, &d.query, &d.query_labels)?);
                    }
                    let (m, _) = mean_std(&rows);
                    println!(
                        "{:5} {bits:4} {:10} {iterations:5} |  {:.3} {:.3}          |  {:.3} {:.3}        | {obj:.4e}",
                        d.name,
                        format!("{constraint:?}").to_lowercase(),
                        m[0],
                        m[1],
                        m[2],
                        m[3]
                    );
                }
            }
        }
    }
    Ok(())
}

/// The validation split of `cmh::split` (a class-stratified 20% of the training items as queries,
/// carving seed 1000 + seed), the other 80% as training set and database; the test queries are not
/// touched.
fn validation_split(d: &Data, seed: u64) -> Result<(TrainSet, Vec<View>, Array2<u8>)> {
    let v = cmh::split::ValidationConfig { fraction: 0.2, seed: 1000 + seed };
    let (tr, val) = cmh::split::validation_positions(d.train.labels[0].view(), &v)?;
    let views: Vec<View> = d.train.views.iter().map(|v| v.select(&tr)).collect();
    let labels = d.train.labels[0].select(Axis(0), &tr);
    let q: Vec<View> = d.train.views.iter().map(|v| v.select(&val)).collect();
    Ok((trainset(views, labels), q, d.train.labels[0].select(Axis(0), &val)))
}

fn validation_table(data: &[Data], seeds: u64) -> Result<()> {
    println!("\n== validation sweep (20% of the training items as queries, the rest as database; mean of {seeds} splits) ==");
    println!("data  setting          bits | learned B: I->T  T->I | encoded: I->T  T->I");
    for d in data {
        for (label, params) in [
            ("k=5", SeghParams { k: 5, ..Default::default() }),
            ("k=10", SeghParams { k: 10, ..Default::default() }),
            ("k=20", SeghParams { k: 20, ..Default::default() }),
            ("k=40", SeghParams { k: 40, ..Default::default() }),
            ("k=10,iters=1", SeghParams { iterations: 1, ..Default::default() }),
            ("k=10,iters=20", SeghParams { iterations: 20, ..Default::default() }),
        ] {
            for bits in [16, 64] {
                let mut rows = Vec::new();
                for seed in 0..seeds {
                    let (tr, q, ql) = validation_split(d, seed)?;
                    let model = params.fit(&tr, &FitContext::new(bits, seed))?;
                    rows.push(evaluate(&model, &tr, &q, &ql)?);
                }
                let (m, _) = mean_std(&rows);
                println!("{:5} {label:16} {bits:4} |  {:.3} {:.3}          |  {:.3} {:.3}", d.name, m[0], m[1], m[2], m[3]);
            }
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    unsafe { openblas_set_num_threads(1) }; // rayon owns the cores
    let data = ["wiki", "uci"]
        .into_iter()
        .map(|n| load(&args.data, n))
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("run `.venv/bin/python scripts/segh_study_data.py` first (reading {})", args.data.display()))?;
    let all = args.part == "all";
    if all || args.part == "validation" {
        validation_table(&data, args.seeds)?;
    }
    if all || args.part == "main" {
        main_table(&data, args.seeds)?;
    }
    if all || args.part == "iterations" {
        iterations_table(&data, args.seeds.min(3))?;
    }
    Ok(())
}
