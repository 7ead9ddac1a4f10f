//! Every method at its defaults (`cmh train` with no settings), standard split, database encoded by
//! the hash functions: Wikipedia, UCI digits and the emoji bundle, seeds 0–2, 32 and 64 bits. Prints
//! mAP per direction (mean ± population std over the seeds) and each method's margin over CCA-ITQ
//! (target for the supervised methods: ≥ 0.02 in both directions at both lengths on every dataset;
//! attr-ridge, the linear zero-shot baseline, is shown but not held to it).
//!
//!     nice -n 10 cargo bench --bench defaults -- --threads 1
//!     cargo bench --bench defaults -- --datasets wiki --methods sch,cca-itq --seeds 0 --bits 32
//!
//! Runs are `cmh train` run folders under `--out` (default `runs/bench-defaults/DATASET/METHOD`);
//! finished runs are read back on the next call, so an interrupted bench resumes. Deep methods run
//! in feature mode on the CPU. `--table-only` prints the table of what is there.
use anyhow::{bail, Result};
use clap::Parser;
use cmh::method::DeviceChoice;
use cmh::pipeline::{self, RunConfig};
use cmh::report::{mean_std, Report};
use cmh::split::SplitConfig;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Bundles by name (folders under --data-root).
    #[arg(long, value_delimiter = ',', default_value = "wiki,uci,emoji")]
    datasets: Vec<String>,
    #[arg(long, default_value = "data")]
    data_root: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "random,cca-itq,attr-ridge,sch,segh,sdch,czhash,agnet")]
    methods: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    seeds: Vec<u64>,
    #[arg(long, value_delimiter = ',', default_value = "32,64")]
    bits: Vec<usize>,
    #[arg(long, default_value = "runs/bench-defaults")]
    out: PathBuf,
    /// rayon and libtorch threads (1 on a shared machine).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the table of the finished runs only.
    #[arg(long)]
    table_only: bool,
    /// `cargo bench` passes --bench.
    #[arg(long, hide = true)]
    bench: bool,
}

fn read_reports(dir: &std::path::Path) -> Vec<Report> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut out: Vec<Report> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("report.json")).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect();
    out.sort_by_key(|r: &Report| (r.bits, r.seed));
    out
}

/// (mean, std) of I→T and T→I over the finished seeds, and how many there are.
type SeedStats = ((f64, f64), (f64, f64), usize);

fn main() -> Result<()> {
    let a = Args::parse();
    cmh::shallow::common::set_blas_threads(1);
    if let Some(n) = a.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
        tch::set_num_threads(n as i32);
    }
    for m in &a.methods {
        if !cmh::registry::names().contains(&m.as_str()) {
            bail!("unknown method {m}");
        }
    }
    let mut cost: Vec<(String, String, f64, f64)> = Vec::new();
    if !a.table_only {
        for d in &a.datasets {
            for m in &a.methods {
                let dir = a.out.join(d).join(m);
                let (t0, c0) = (Instant::now(), cmh::report::cpu_secs());
                for &bits in &a.bits {
                    for &seed in &a.seeds {
                        if dir.join(format!("bits{bits}-seed{seed}")).join("report.json").is_file() {
                            continue;
                        }
                        let cfg = RunConfig {
                            method: m.clone(),
                            data: a.data_root.join(d),
                            bits: vec![bits],
                            seed,
                            repeat: 1,
                            split: SplitConfig::default(),
                            params: toml::Table::new(),
                            device: DeviceChoice::Cpu,
                            topk: None,
                            images: false,
                            same_modality: false,
                            mmap: false,
                        };
                        eprintln!("== {d} {m} {bits} bits seed {seed}");
                        // One run folder per (bits, seed), its result moved up beside the others, so
                        // runs of any seeds and lengths accumulate; an interrupted one resumes.
                        let name = format!("bits{bits}-seed{seed}");
                        let run_dir = dir.join(format!("run-{name}"));
                        let resume = run_dir.join("run.json").is_file();
                        pipeline::run(&cfg, &run_dir, resume, false)?;
                        std::fs::rename(run_dir.join(&name), dir.join(&name))?;
                        std::fs::remove_dir_all(&run_dir)?;
                    }
                }
                cost.push((d.clone(), m.clone(), t0.elapsed().as_secs_f64(), cmh::report::cpu_secs() - c0));
            }
        }
    }
    println!("mAP, database encoded, mean ± std over seeds {:?}; margin = method − CCA-ITQ (target ≥ 0.02 both directions)", a.seeds);
    println!(
        "{:<6} {:<10} {:>4}  {:>15} {:>15}  {:>7} {:>7}  {:>4}  verdict",
        "data", "method", "bits", "I→T", "T→I", "ΔI→T", "ΔT→I", "runs"
    );
    let mut misses = Vec::new();
    for d in &a.datasets {
        let stats_of = |m: &str, bits: usize| -> Option<SeedStats> {
            let rs: Vec<Report> =
                read_reports(&a.out.join(d).join(m)).into_iter().filter(|r| r.bits == bits && a.seeds.contains(&r.seed)).collect();
            if rs.is_empty() {
                return None;
            }
            let i2t = mean_std(&rs.iter().map(|r| r.i2t_encoded.map).collect::<Vec<_>>());
            let t2i = mean_std(&rs.iter().map(|r| r.t2i_encoded.map).collect::<Vec<_>>());
            Some((i2t, t2i, rs.len()))
        };
        for m in &a.methods {
            for &bits in &a.bits {
                let Some(((i2t, si), (t2i, st), n)) = stats_of(m, bits) else { continue };
                let base = stats_of("cca-itq", bits);
                let (di, dt, verdict) = match (m.as_str(), base) {
                    ("random" | "cca-itq", _) | (_, None) => (String::new(), String::new(), String::new()),
                    (_, Some(((bi, _), (bt, _), _))) => {
                        let ok = i2t - bi >= 0.02 && t2i - bt >= 0.02;
                        // attr-ridge is the linear zero-shot baseline: its margin is shown, not held to the target.
                        let verdict = if m == "attr-ridge" {
                            "baseline".to_string()
                        } else if ok {
                            "beats CCA-ITQ".to_string()
                        } else {
                            misses.push(format!("{d} {m} {bits} bits"));
                            "MISS".to_string()
                        };
                        (format!("{:+.4}", i2t - bi), format!("{:+.4}", t2i - bt), verdict)
                    }
                };
                let cell = |mean: f64, sd: f64| if n > 1 { format!("{mean:.4} ± {sd:.4}") } else { format!("{mean:.4}") };
                println!("{d:<6} {m:<10} {bits:>4}  {:>15} {:>15}  {di:>7} {dt:>7}  {n:>4}  {verdict}", cell(i2t, si), cell(t2i, st));
            }
        }
    }
    if !cost.is_empty() {
        println!("\ncost (this call; finished runs read back cost nothing): dataset method wall_s cpu_s");
        for (d, m, w, c) in &cost {
            println!("{d:<6} {m:<8} {w:>8.1} {c:>8.1}");
        }
    }
    if misses.is_empty() {
        println!("\nevery supervised method beats CCA-ITQ by ≥ 0.02 in both directions");
    } else {
        println!("\nbelow the target: {}", misses.join(", "));
    }
    Ok(())
}
