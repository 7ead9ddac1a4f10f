//! SDCH on the Wikipedia benchmark in feature mode (128-d SIFT BoVW images, 10-d LDA texts),
//! standard split (2173 training items = database, 693 queries), mAP in both directions with the
//! database encoded by the networks (`*_encoded`) and with the learned codes B.
//!
//!     .venv/bin/python scripts/wiki_npy.py ../shared/data/wiki/raw_features_rasiwasia /tmp/wiki
//!     cargo bench --bench sdch_wiki -- --data /tmp/wiki --bits 32,64 --seeds 0,1,2
//!
//! `--validation` trains on 80 % of the 2173 training items and queries with the other 20 % (the
//! validation split of `cmh::split`, as `cmh tune` carves it; the test queries are never used to
//! choose settings). `--params 'epochs = 20, hidden = [1024]'`
//! overrides SDCH settings (TOML inline-table syntax).
use anyhow::{Context, Result};
use clap::Parser;
use cmh::codes::BinaryCodes;
use cmh::deep::sdch::SdchParams;
use cmh::method::{Fit, FitContext, HashModel, TrainSet, View, IMAGE, TEXT};
use cmh::metrics::map;
use cmh::npy::{read_binary_matrix, read_features};
use ndarray::{Array2, Axis};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "32,64")]
    bits: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    seeds: Vec<u64>,
    /// SDCH settings in TOML (top level or an [sdch] table).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides, TOML inline-table syntax: 'epochs = 20, hidden = [1024]'.
    #[arg(long)]
    params: Option<String>,
    #[arg(long)]
    validation: bool,
    #[arg(long)]
    progress: bool,
    /// Keep checkpoints and train.log under this folder (one subfolder per run).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// `cargo bench` passes --bench.
    #[arg(long, hide = true)]
    bench: bool,
}

fn load(dir: &std::path::Path, name: &str) -> Result<Array2<f32>> {
    read_features(&dir.join(format!("{name}.npy")))
}

fn params(args: &Args) -> Result<SdchParams> {
    let mut table = toml::Table::new();
    if let Some(c) = &args.config {
        let text = std::fs::read_to_string(c).with_context(|| format!("{}", c.display()))?;
        let t: toml::Table = toml::from_str(&text)?;
        table = match t.get("sdch") {
            Some(toml::Value::Table(s)) => s.clone(),
            _ => t,
        };
    }
    if let Some(p) = &args.params {
        let t: toml::Table = toml::from_str(&format!("x = {{ {p} }}"))?;
        if let Some(toml::Value::Table(o)) = t.get("x") {
            for (k, v) in o {
                table.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(toml::Value::Table(table).try_into()?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(t) = args.threads {
        tch::set_num_threads(t);
    }
    let p = params(&args)?;
    eprintln!("settings: {}", serde_json::to_string(&p)?);
    let (mut xi, mut xt, mut l) =
        (load(&args.data, "I_tr")?, load(&args.data, "T_tr")?, read_binary_matrix(&args.data.join("L_tr.npy"), "labels")?);
    let (qi, qt, ql) = if args.validation {
        let (tr, val) = cmh::split::validation_positions(l.view(), &cmh::split::ValidationConfig::default())?;
        let q = (xi.select(Axis(0), &val), xt.select(Axis(0), &val), l.select(Axis(0), &val));
        xi = xi.select(Axis(0), &tr);
        xt = xt.select(Axis(0), &tr);
        l = l.select(Axis(0), &tr);
        q
    } else {
        (load(&args.data, "I_te")?, load(&args.data, "T_te")?, read_binary_matrix(&args.data.join("L_te.npy"), "labels")?)
    };
    let classes: Vec<String> = (0..l.ncols()).map(|c| format!("c{c}")).collect();
    let data = TrainSet::supervised(vec![View::Features(xi.clone()), View::Features(xt.clone())], l.clone(), classes);
    let (qiv, qtv) = (View::Features(qi), View::Features(qt));
    println!("bits seed wall_secs cpu_secs i2t_encoded t2i_encoded i2t_learnedB t2i_learnedB");
    for &bits in &args.bits {
        let mut sums = [0.0f64; 6];
        for &seed in &args.seeds {
            let checkpoint_dir = args.run_dir.as_ref().map(|d| d.join(format!("b{bits}_s{seed}")));
            let ctx = FitContext { progress: args.progress, checkpoint_dir, ..FitContext::new(bits, seed) };
            let (t0, c0) = (Instant::now(), cmh::report::cpu_secs());
            let model = p.fit(&data, &ctx)?;
            let (secs, cpu) = (t0.elapsed().as_secs_f64(), cmh::report::cpu_secs() - c0);
            let enc = |m: usize, v: &View| -> Result<BinaryCodes> { model.encode(m, v) };
            let (cqi, cqt) = (enc(IMAGE, &qiv)?, enc(TEXT, &qtv)?);
            let (dbi, dbt) = (enc(IMAGE, &data.views[IMAGE])?, enc(TEXT, &data.views[TEXT])?);
            let b = model.train_codes().unwrap();
            let r = [
                secs,
                cpu,
                map(cqi.view(), dbt.view(), ql.view(), l.view())?,
                map(cqt.view(), dbi.view(), ql.view(), l.view())?,
                map(cqi.view(), b.view(), ql.view(), l.view())?,
                map(cqt.view(), b.view(), ql.view(), l.view())?,
            ];
            println!("{bits} {seed} {:.1} {:.1} {:.4} {:.4} {:.4} {:.4}", r[0], r[1], r[2], r[3], r[4], r[5]);
            for i in 0..6 {
                sums[i] += r[i];
            }
        }
        let n = args.seeds.len() as f64;
        let m: Vec<f64> = sums.iter().map(|s| s / n).collect();
        println!("{bits} mean {:.1} {:.1} {:.4} {:.4} {:.4} {:.4}", m[0], m[1], m[2], m[3], m[4], m[5]);
    }
    Ok(())
}
