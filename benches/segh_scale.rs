//! SeGH training time at MIRFlickr size (n = 20,015) and twice that, on synthetic data with
//! Wikipedia-like structure (10 classes, 128-d noisy "image" features, 10-d "text" features,
//! 384-d MiniLM-sized class embeddings). Prints t(n), t(2n) and the ratio t(2n)/t(n) (goal ≤ 2.3,
//! i.e. near-linear), with the time of each phase.
//!
//! ```text
//! cargo bench --bench segh_scale -- [--n 20015] [--bits 64] [--embedding-dim 384] [--repeats 3] [--validated]
//! ```
//! OpenBLAS runs on one thread; rayon owns the cores (kNN queries and sparse mat-vecs).
//! Both wall-clock and CPU time (user + system) are printed: on a machine shared with other jobs
//! the wall clock mostly measures the others. An instruction count is immune to that:
//! `RAYON_NUM_THREADS=1 valgrind --tool=cachegrind <bench binary> --single --repeats 1 --n N`.

use anyhow::Result;
use clap::Parser;
use cmh::method::{Fit, FitContext, HashModel};
use cmh::shallow::segh::{synthetic, SeghParams, SyntheticSpec};
use std::time::Instant;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 20_015)]
    n: usize,
    #[arg(long, default_value_t = 64)]
    bits: usize,
    #[arg(long, default_value_t = 384)]
    embedding_dim: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Time n only (for profiling).
    #[arg(long)]
    single: bool,
    /// Use the defaults (1000 RBF anchors, σ scale (1.0, 0.7)) instead of the
    /// paper's raw-feature settings.
    #[arg(long)]
    validated: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

extern "C" {
    fn openblas_set_num_threads(n: std::os::raw::c_int);
}

/// CPU seconds (user + system, all threads) this process has used so far, from /proc/self/stat;
/// unlike wall-clock time it is not inflated when other processes share the cores.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime), i.e. 12 and 13 after the ")", in clock ticks.
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// Median wall-clock seconds of `repeats` fits, and the phase times of the median run.
fn time_fit(n: usize, args: &Args) -> Result<(f64, f64, String)> {
    let (data, _) = synthetic(&SyntheticSpec::wiki_like(n, args.embedding_dim, 7));
    let mut runs = Vec::new();
    for r in 0..args.repeats {
        let t = Instant::now();
        let c = cpu_seconds();
        // A fixed number of iterations (no early stop), so both sizes do the same work.
        let base = if args.validated { SeghParams::default() } else { SeghParams::paper() };
        let params = SeghParams { objective_tol: 0.0, ..base };
        let model = params.fit(&data, &FitContext::new(args.bits, r as u64))?;
        let secs = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - c;
        let i = model.info();
        let detail = format!(
            "step 1 {:.2}s, graph {:.2}s, step 2 {:.2}s, CG iterations {:?}, rank {}, bits {}",
            i.seconds_step1,
            i.seconds_graph,
            i.seconds_step2,
            i.cg_iterations,
            i.semantic_rank,
            model.bits()
        );
        runs.push((secs, cpu, detail));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(runs.swap_remove(runs.len() / 2))
}

fn main() -> Result<()> {
    let args = Args::parse();
    unsafe { openblas_set_num_threads(1) };
    println!(
        "SeGH scale: synthetic Wikipedia-like data, {} settings, {} bits, class embeddings {}-d, {} rayon threads, median of {}",
        if args.validated { "validated (1000 anchors)" } else { "paper (raw features)" },
        args.bits,
        args.embedding_dim,
        rayon::current_num_threads(),
        args.repeats
    );
    let (t1, c1, d1) = time_fit(args.n, &args)?;
    println!("n = {:6}: {t1:.2} s wall, {c1:.2} s CPU  ({d1})", args.n);
    if args.single {
        return Ok(());
    }
    let (t2, c2, d2) = time_fit(2 * args.n, &args)?;
    println!("n = {:6}: {t2:.2} s wall, {c2:.2} s CPU  ({d2})", 2 * args.n);
    println!("t(2n)/t(n) = {:.2} wall, {:.2} CPU  (goal <= 2.3)", t2 / t1, c2 / c1);
    Ok(())
}
