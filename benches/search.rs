//! Search and evaluation timing harness, driven by scripts/bench_search.py and
//! scripts/bench_eval.py (which run the reference implementations on the same files and print
//! the ratios). Reads `.npy` files given as arguments and prints one JSON line of timings.
//!
//!   cargo bench --bench search -- topk  --db D.npy --queries Q.npy -k 100 --threads 1
//!   cargo bench --bench search -- limit --db D.npy --queries Q.npy --threads 1
//!   cargo bench --bench search -- eval  --qcodes Q.npy --dbcodes D.npy --qlabels QL.npy --dblabels DL.npy
//!   cargo bench --bench search -- index-build --db D.npy --out D.cmhidx [--substrings M]
//!   cargo bench --bench search -- mih   --index D.cmhidx --queries Q.npy -k 10 --threads 1
//!
//! Times are wall-clock seconds of the computation only (files are opened first; packed uint8
//! code files are memory-mapped). `peak_rss_bytes` is the process's VmHWM at exit.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use cmh::search::{open_codes, Kernel, SearchOptions};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Rayon threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed repetitions; the minimum and median are reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Popcount kernel (portable, popcnt, avx2, avx512).
    #[arg(long)]
    kernel: Option<String>,
    /// Queries per scan task (1: each query scans the database alone, as when queries arrive
    /// one at a time).
    #[arg(long)]
    query_block: Option<usize>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Top-k search.
    Topk {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        queries: PathBuf,
        #[arg(short = 'k', long)]
        k: usize,
        #[arg(long)]
        bits: Option<usize>,
        /// Write <prefix>_indices.npy and <prefix>_distances.npy.
        #[arg(long)]
        out_prefix: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Radius search (reports the result count).
    Radius {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        queries: PathBuf,
        #[arg(short = 'r', long)]
        r: usize,
        #[command(flatten)]
        common: Common,
    },
    /// All query–database distances, no selection: the popcount throughput limit.
    Limit {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        queries: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Multi-index hashing index build (scripts/bench_mih.py).
    IndexBuild {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        substrings: Option<usize>,
        #[command(flatten)]
        common: Common,
    },
    /// Top-k search through a multi-index hashing index.
    Mih {
        #[arg(long)]
        index: PathBuf,
        #[arg(long)]
        queries: PathBuf,
        #[arg(short = 'k', long)]
        k: usize,
        /// Work budget per query as a fraction of a scan (default: the library's).
        #[arg(long)]
        budget: Option<f64>,
        #[arg(long)]
        out_prefix: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// mAP over the full ranking (cmh::metrics::evaluate).
    Eval {
        #[arg(long)]
        qcodes: PathBuf,
        #[arg(long)]
        dbcodes: PathBuf,
        #[arg(long)]
        qlabels: PathBuf,
        #[arg(long)]
        dblabels: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

fn peak_rss_bytes() -> Option<u64> {
    status_kb("VmHWM:")
}

/// A /proc/self/status field in bytes (VmHWM: peak resident set, VmRSS: current).
fn status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time of all threads of this process (ns), from /proc/self/task/*/schedstat.
fn cpu_seconds() -> f64 {
    let mut ns = 0u64;
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for e in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) {
                ns += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    ns as f64 * 1e-9
}

/// Wall-clock and CPU seconds of `repeat` runs, each sorted ascending.
struct Timing {
    wall: Vec<f64>,
    cpu: Vec<f64>,
}

fn time<T>(repeat: usize, mut f: impl FnMut() -> Result<T>) -> Result<(Timing, T)> {
    let (mut wall, mut cpu) = (vec![], vec![]);
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let c = cpu_seconds();
        let t = Instant::now();
        let r = f()?;
        wall.push(t.elapsed().as_secs_f64());
        cpu.push(cpu_seconds() - c);
        last = Some(r);
    }
    wall.sort_by(|a, b| a.partial_cmp(b).unwrap());
    cpu.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok((Timing { wall, cpu }, last.unwrap()))
}

fn put_times(out: &mut serde_json::Value, t: &Timing) {
    out["seconds"] = json!(t.wall[0]);
    out["seconds_median"] = json!(t.wall[t.wall.len() / 2]);
    out["cpu_seconds"] = json!(t.cpu[0]);
    out["cpu_seconds_median"] = json!(t.cpu[t.cpu.len() / 2]);
}

fn main() -> Result<()> {
    // Resident set before any work: the shared libraries loaded at start-up (libtorch, which the
    // cmh library links, accounts for most of it).
    let rss_at_start = status_kb("VmRSS:");
    // `cargo bench` appends --bench; ignore it.
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    if args.len() == 1 {
        // Plain `cargo bench`: nothing to time without input files.
        println!("benches/search.rs times cmh on given .npy files; run scripts/bench_search.py or scripts/bench_eval.py (see --help)");
        return Ok(());
    }
    let cli = Cli::parse_from(args);
    let common = match &cli.cmd {
        Cmd::Topk { common, .. }
        | Cmd::Radius { common, .. }
        | Cmd::Limit { common, .. }
        | Cmd::Eval { common, .. }
        | Cmd::IndexBuild { common, .. }
        | Cmd::Mih { common, .. } => common.clone(),
    };
    let threads = common.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let kernel = match &common.kernel {
        Some(s) => Kernel::from_name(s).with_context(|| format!("unknown kernel {s}"))?,
        None => Kernel::auto(),
    };
    if !kernel.is_available() {
        bail!("kernel {} not available here", kernel.name());
    }
    let opts = SearchOptions { kernel: Some(kernel), query_block: common.query_block, ..Default::default() };
    let mut out = json!({ "threads": threads, "kernel": kernel.name() });
    match cli.cmd {
        Cmd::Topk { db, queries, k, bits, out_prefix, .. } => {
            let dbf = open_codes(&db, bits)?;
            let qf = open_codes(&queries, bits)?;
            let (d, q) = (dbf.view(), qf.view());
            let (times, res) = pool.install(|| time(common.repeat, || cmh::search::topk_with(q, d, k, &opts)))?;
            out["n_db"] = json!(d.n);
            out["n_queries"] = json!(q.n);
            out["bits"] = json!(d.bits);
            out["k"] = json!(k);
            put_times(&mut out, &times);
            out["qps"] = json!(q.n as f64 / times.wall[0]);
            out["qps_per_cpu_second"] = json!(q.n as f64 / times.cpu[0]);
            out["cpu_ns_per_comparison"] = json!(times.cpu[0] * 1e9 / (q.n as f64 * d.n as f64));
            if let Some(p) = out_prefix {
                let s = p.to_string_lossy();
                cmh::npy::write_npy(&PathBuf::from(format!("{s}_indices.npy")), &res.indices)?;
                cmh::npy::write_npy(&PathBuf::from(format!("{s}_distances.npy")), &res.distances)?;
            }
        }
        Cmd::Radius { db, queries, r, .. } => {
            let dbf = open_codes(&db, None)?;
            let qf = open_codes(&queries, None)?;
            let (d, q) = (dbf.view(), qf.view());
            let (times, res) = pool.install(|| time(common.repeat, || cmh::search::radius_with(q, d, r, &opts)))?;
            put_times(&mut out, &times);
            out["qps"] = json!(q.n as f64 / times.wall[0]);
            out["results"] = json!(res.iter().map(|v| v.len()).sum::<usize>());
        }
        Cmd::Limit { db, queries, .. } => {
            let dbf = open_codes(&db, None)?;
            let qf = open_codes(&queries, None)?;
            let (d, q) = (dbf.view(), qf.view());
            let (times, s) = pool.install(|| time(common.repeat, || cmh::search::distance_sum(q, d, &opts)))?;
            put_times(&mut out, &times);
            out["checksum"] = json!(s);
            out["cpu_ns_per_comparison"] = json!(times.cpu[0] * 1e9 / (q.n as f64 * d.n as f64));
        }
        Cmd::IndexBuild { db, out: path, substrings, .. } => {
            let dbf = open_codes(&db, None)?;
            let bo = cmh::search::mih::BuildOptions { substrings, progress: false };
            let (times, s) = pool.install(|| time(1, || cmh::search::mih::build_index_file(dbf.view(), &bo, &path)))?;
            put_times(&mut out, &times);
            out["summary"] = json!(s);
        }
        Cmd::Mih { index, queries, k, budget, out_prefix, .. } => {
            let ix = cmh::search::MihIndex::open(&index)?;
            let qf = open_codes(&queries, Some(ix.bits()))?;
            let q = qf.view();
            let mut mo = cmh::search::MihOptions { scan: opts.clone(), ..Default::default() };
            if let Some(b) = budget {
                mo.budget = b;
            }
            let (times, (res, stats)) = pool.install(|| time(common.repeat, || ix.topk_with(q, k, &mo)))?;
            out["n_db"] = json!(ix.len());
            out["n_queries"] = json!(q.n);
            out["bits"] = json!(ix.bits());
            out["k"] = json!(k);
            out["substrings"] = json!(ix.substrings().len());
            out["stats"] = json!(stats);
            put_times(&mut out, &times);
            out["qps"] = json!(q.n as f64 / times.wall[0]);
            out["qps_per_cpu_second"] = json!(q.n as f64 / times.cpu[0]);
            if let Some(p) = out_prefix {
                let s = p.to_string_lossy();
                cmh::npy::write_npy(&PathBuf::from(format!("{s}_indices.npy")), &res.indices)?;
                cmh::npy::write_npy(&PathBuf::from(format!("{s}_distances.npy")), &res.distances)?;
            }
        }
        Cmd::Eval { qcodes, dbcodes, qlabels, dblabels, .. } => {
            let qf = open_codes(&qcodes, None)?;
            let dbf = open_codes(&dbcodes, None)?;
            let ql = cmh::npy::read_binary_matrix(&qlabels, "query labels")?;
            let dl = cmh::npy::read_binary_matrix(&dblabels, "database labels")?;
            let (q, d) = (qf.view(), dbf.view());
            let eo = cmh::metrics::EvalOptions::default();
            let (times, m) = pool.install(|| time(common.repeat, || cmh::metrics::evaluate(q, d, ql.view(), dl.view(), &eo)))?;
            put_times(&mut out, &times);
            out["map"] = json!(m.map);
            out["excluded_queries"] = json!(m.excluded_queries);
        }
    }
    out["peak_rss_bytes"] = json!(peak_rss_bytes());
    out["rss_at_start_bytes"] = json!(rss_at_start);
    println!("{out}");
    Ok(())
}
