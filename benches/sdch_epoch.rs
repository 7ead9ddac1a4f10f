//! One SDCH training epoch (all losses, all parameters: the schedule's steady state) on data
//! written by `scripts/bench_sdch.py`, timed over `--reps` epochs after one warm-up epoch. The
//! script runs the same model and loss in PyTorch and prints the ratio; this binary prints one
//! JSON line.
use anyhow::Result;
use clap::Parser;
use cmh::deep::sdch::{Phase, SdchParams, SdchRun};
use cmh::deep::trainer::RunControl;
use cmh::method::{DeviceChoice, FitContext, TrainSet, View};
use cmh::npy::{read_binary_matrix, read_features};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Folder with X.npy (images' features), Y.npy (texts' bag of words), L.npy (labels).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "4096,4096")]
    hidden: Vec<usize>,
    #[arg(long, default_value_t = 256)]
    k: usize,
    #[arg(long, default_value_t = 64)]
    bits: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<()> {
    let a = Args::parse();
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let x = read_features(&a.data.join("X.npy"))?;
    let y = read_features(&a.data.join("Y.npy"))?;
    let l = read_binary_matrix(&a.data.join("L.npy"), "labels")?;
    let classes = (0..l.ncols()).map(|c| c.to_string()).collect();
    let data = TrainSet::supervised(vec![View::Features(x), View::Features(y)], l, classes);
    let p = SdchParams {
        epochs: a.reps + 1,
        batch_size: a.batch,
        feature_dim: a.k,
        hidden: a.hidden.clone(),
        warmup_schedule: false,
        ..Default::default()
    };
    let ctx = FitContext { device: DeviceChoice::Cpu, ..FitContext::new(a.bits, 0) };
    let mut run = SdchRun::new(&p, &data, &ctx, &RunControl::default())?;
    run.init_b()?;
    run.train_batches(Phase::All)?; // warm-up
    let mut secs = Vec::new();
    for _ in 0..a.reps {
        let t = Instant::now();
        run.train_batches(Phase::All)?;
        secs.push(t.elapsed().as_secs_f64());
    }
    println!("{}", serde_json::json!({ "epoch_secs": secs, "torch_threads": tch::get_num_threads() }));
    Ok(())
}
