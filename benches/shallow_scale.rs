//! Scale benchmark of SCH training: synthetic data with Wikipedia-like structure at NUS-WIDE size.
//!
//! Data: n items in 10 classes (single label, classes of near-equal size, shuffled); modality 0
//! ("image", 500-d) and modality 1 ("text", 1000-d) are class-clustered: row = class centre +
//! Gaussian noise, the centres N(0, 1) per coordinate and the noise N(0, 1.5²), so classes overlap
//! as on Wikipedia. Generated in parallel, deterministically (one seeded stream per row block).
//!
//! Measures the wall-clock time of `SchParams::fit` (1000 anchors, 64 bits, paper settings,
//! default stopping rule) at n and 2n, and prints t(2n)/t(n) (goal ≤ 2.3: linear in n) and the
//! same ratio per sweep (the number of sweeps may differ between the two sizes).
//! Threads: OpenBLAS at one thread per call, rayon over row blocks (as the CLI sets up).
//!
//! Run: cargo bench --bench shallow_scale            (n = 186,577 and 2n)
//!      cargo bench --bench shallow_scale -- --n 20000 --no-double
use anyhow::Result;
use clap::Parser;
use cmh::method::{Fit, FitContext, HashModel, TrainSet, View};
use cmh::shallow::common::{seeded_rng, set_blas_threads};
use cmh::shallow::sch::{FitTimings, SchParams};
use ndarray::{Array2, Axis};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use std::time::Instant;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 186_577)]
    n: usize,
    #[arg(long, default_value = "500,1000", value_delimiter = ',')]
    dims: Vec<usize>,
    #[arg(long, default_value_t = 1000)]
    anchors: usize,
    #[arg(long, default_value_t = 64)]
    bits: usize,
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Only the size n (no 2n run).
    #[arg(long)]
    no_double: bool,
    #[arg(long, hide = true)]
    bench: bool,
}

fn synthetic(n: usize, dims: &[usize], classes: usize, seed: u64) -> (Vec<Array2<f32>>, Array2<u8>) {
    let mut rng = seeded_rng(seed, 0);
    let mut labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
    labels.shuffle(&mut rng);
    let views = dims
        .iter()
        .enumerate()
        .map(|(t, &d)| {
            let mut crng = seeded_rng(seed, 1 + t as u64);
            let centres = Array2::from_shape_simple_fn((classes, d), || crng.sample::<f32, _>(StandardNormal));
            let mut x = Array2::<f32>::zeros((n, d));
            let block = 4096;
            x.axis_chunks_iter_mut(Axis(0), block).into_par_iter().enumerate().for_each(|(b, mut xb)| {
                let mut r = seeded_rng(seed, 1000 * (t as u64 + 1) + b as u64);
                for (i, mut row) in xb.outer_iter_mut().enumerate() {
                    let c = centres.row(labels[b * block + i]);
                    row.iter_mut().zip(c.iter()).for_each(|(v, &m)| *v = m + 1.5 * r.sample::<f32, _>(StandardNormal));
                }
            });
            x
        })
        .collect();
    (views, cmh::bundle::one_hot(&labels, classes))
}

/// CPU seconds (user + system) this process has used so far, from /proc/self/stat (Linux; NaN
/// elsewhere). On a machine shared with other jobs, wall time overstates the cost; CPU time / cores
/// is what an idle machine would need for well-parallelised code.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    // Fields after the ")" that closes the command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return f64::NAN };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0 // USER_HZ = 100 on Linux
}

fn run(args: &Args, n: usize) -> Result<(f64, usize, FitTimings)> {
    let t0 = Instant::now();
    let (views, labels) = synthetic(n, &args.dims, args.classes, 7);
    let gen_s = t0.elapsed().as_secs_f64();
    let names = (0..args.classes).map(|c| format!("class{c}")).collect();
    let data = TrainSet::supervised(views.into_iter().map(View::Features).collect(), labels, names);
    let p = SchParams { anchors: args.anchors, ..SchParams::default() };
    let t1 = Instant::now();
    let c1 = cpu_seconds();
    let model = p.fit(&data, &FitContext::new(args.bits, 0))?;
    let fit_s = t1.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - c1;
    let sweeps = model.history().len() - 1;
    let t = model.timings();
    println!(
        "n = {n:>7}: fit {fit_s:6.2} s wall, {cpu_s:6.2} s CPU (features + φᵀφ {:.2} s, {sweeps} sweeps {:.2} s = {:.3} s/sweep, codes {:.2} s); data generation {gen_s:.1} s (not counted)",
        t.features_s,
        t.sweeps_s,
        t.sweeps_s / sweeps.max(1) as f64,
        t.codes_s,
    );
    Ok((fit_s, sweeps, t.clone()))
}

fn main() -> Result<()> {
    let args = Args::parse();
    set_blas_threads(1);
    println!(
        "# SCH scale benchmark: dims {:?}, {} anchors, {} bits, {} classes; rayon threads {}, OpenBLAS 1 thread per call",
        args.dims,
        args.anchors,
        args.bits,
        args.classes,
        rayon::current_num_threads()
    );
    let (t1, s1, p1) = run(&args, args.n)?;
    if !args.no_double {
        let (t2, s2, p2) = run(&args, 2 * args.n)?;
        println!(
            "t(2n)/t(n) = {:.3} (goal <= 2.3); features + φᵀφ {:.3}; per sweep {:.3}; sweeps {s1} -> {s2}",
            t2 / t1,
            p2.features_s / p1.features_s,
            (p2.sweeps_s / s2.max(1) as f64) / (p1.sweeps_s / s1.max(1) as f64)
        );
    }
    Ok(())
}
