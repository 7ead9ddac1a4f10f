#!/usr/bin/env python3
"""Hamming search benchmark: cmh against faiss IndexBinaryFlat on the same codes.

Runs, in one process and on the same random codes (10^6 database codes, 1,000 queries):
  * faiss-cpu IndexBinaryFlat.search with 1 thread and with all threads,
  * cmh's top-k search (the `benches/search.rs` harness, built here with `cargo bench --no-run`),
for k = 100 and 1,000 at 64 and 128 bits, and prints queries/s of both and their ratio, by
wall-clock time and by CPU time (CPU seconds of all the process's threads; this is the robust
figure on a machine shared with other work). It also checks that cmh returns exactly faiss's
distances, and exactly the brute-force (distance, index) ranking for a sample of queries.

Then it measures the machine's popcount limit (all query-database distances with the same
kernel, no selection: ns per comparison) and reports cmh's distance from it, and the peak memory
of a search over a memory-mapped file of 10^8 codes (800 MB at 64 bits, generated here and
deleted afterwards), which must stay under 1.2x the file size.

Installs nothing: faiss-cpu comes from scripts/setup.sh (`.venv/bin/pip install faiss-cpu`).
Times are context only; no time is asserted.

    .venv/bin/python scripts/bench_search.py            # full run (~ a few minutes)
    .venv/bin/python scripts/bench_search.py --quick    # 10^5 codes, no 10^8 file
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def build_bench():
    """Builds benches/search.rs in release mode and returns the executable's path."""
    cmd = ["cargo", "bench", "--bench", "search", "--no-run", "--message-format=json"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        sys.exit(f"building the bench harness failed: {' '.join(cmd)}")
    exe = None
    for line in out.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "search" and msg.get("executable"):
            exe = msg["executable"]
    if exe is None:
        sys.exit("cargo did not report the bench executable")
    return exe


def run_cmh(exe, *args):
    out = subprocess.run([exe, *map(str, args)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        sys.exit(f"cmh bench failed: {exe} {' '.join(map(str, args))}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_faiss(index, q, k, threads, repeat):
    import faiss

    faiss.omp_set_num_threads(threads)
    wall, cpu = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        D, I = index.search(q, k)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu), D, I


def hamming_np(q, db):
    """Distances of packed uint8 rows, numpy only (bitwise_count on 64-bit words)."""
    qw = np.ascontiguousarray(q).view(np.uint64)
    dw = np.ascontiguousarray(db).view(np.uint64)
    return np.bitwise_count(qw[:, None, :] ^ dw[None, :, :]).sum(axis=2)


def check_results(db, q, k, faiss_d, cmh_i, cmh_d, sample):
    """cmh's distances equal faiss's; a sample of rows equals the brute-force (distance, index) top k."""
    if not np.array_equal(faiss_d.astype(np.int64), cmh_d.astype(np.int64)):
        bad = int(np.argmax((faiss_d != cmh_d).any(axis=1)))
        sys.exit(f"distance mismatch with faiss at query {bad}")
    for i in sample:
        d = hamming_np(q[i : i + 1], db)[0]
        order = np.lexsort((np.arange(len(d)), d))[:k]
        if not (np.array_equal(order, cmh_i[i]) and np.array_equal(d[order], cmh_d[i])):
            sys.exit(f"query {i}: cmh's top-{k} differs from the brute-force (distance, index) ranking")


def cpu_mhz():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1])
    except OSError:
        pass
    return None


def mmap_peak(exe, tmp, n_big, q64, threads):
    """Searches a memory-mapped 64-bit code file of n_big codes; returns (file bytes, peak RSS bytes, json)."""
    path = tmp / "big_packed.npy"
    rng = np.random.default_rng(7)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n_big, 8))
    step = 1 << 24
    for s in range(0, n_big, step):
        e = min(s + step, n_big)
        arr[s:e] = rng.integers(0, 256, (e - s, 8), dtype=np.uint8)
    arr.flush()
    del arr
    qpath = tmp / "q_big.npy"
    np.save(qpath, q64[:100])
    size = path.stat().st_size
    args = [exe, "topk", "--db", path, "--queries", qpath, "-k", 10, "--threads", threads, "--repeat", 1]
    try:
        if Path("/usr/bin/time").exists():
            out = subprocess.run(["/usr/bin/time", "-v", *map(str, args)], capture_output=True, text=True)
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr)
            peak = int(m.group(1)) * 1024 if m else None
        else:
            out = subprocess.run(list(map(str, args)), capture_output=True, text=True)
            peak = None
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            sys.exit("the memory-mapped search failed")
        js = json.loads(out.stdout.strip().splitlines()[-1])
        if peak is None:
            peak = js["peak_rss_bytes"]
    finally:
        path.unlink(missing_ok=True)
        qpath.unlink(missing_ok=True)
    return size, peak, js


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="database codes")
    ap.add_argument("--nq", type=int, default=1000, help="queries")
    ap.add_argument("--bits", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--k", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is kept)")
    ap.add_argument("--big-n", type=int, default=100_000_000, help="codes in the memory-mapped file (0: skip)")
    ap.add_argument("--quick", action="store_true", help="10^5 codes, 1 repetition, no memory-mapped file")
    ap.add_argument("--bench-bin", help="prebuilt benches/search.rs executable")
    ap.add_argument("--json", help="write all figures to this file")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeat, args.big_n = 100_000, 1, 0
    try:
        import faiss
    except ImportError:
        sys.exit("faiss is not installed: run scripts/setup.sh (it installs faiss-cpu into .venv), "
                 "or `.venv/bin/pip install faiss-cpu`")

    exe = args.bench_bin or build_bench()
    all_threads = os.cpu_count() or 1
    thread_set = sorted({1, all_threads})
    rng = np.random.default_rng(0)
    results = {"machine": {"cpus": all_threads, "cpu_mhz": cpu_mhz(), "faiss": faiss.__version__, "load_avg_start": os.getloadavg()[0]},
               "search": [], "limit": []}
    with tempfile.TemporaryDirectory(prefix="cmh_bench_search_") as tmpd:
        tmp = Path(tmpd)
        q64 = None
        for bits in args.bits:
            stride = bits // 8
            db = rng.integers(0, 256, (args.n, stride), dtype=np.uint8)
            q = rng.integers(0, 256, (args.nq, stride), dtype=np.uint8)
            if bits == 64:
                q64 = q
            dbp, qp = tmp / f"db{bits}.npy", tmp / f"q{bits}.npy"
            np.save(dbp, db)
            np.save(qp, q)
            index = faiss.IndexBinaryFlat(bits)
            index.add(db)
            for t in thread_set:
                lim = run_cmh(exe, "limit", "--db", dbp, "--queries", qp, "--threads", t, "--repeat", args.repeat)
                results["limit"].append({"bits": bits, "threads": t, "cpu_ns_per_comparison": lim["cpu_ns_per_comparison"],
                                         "wall_ns_per_comparison": lim["seconds"] * 1e9 / (args.n * args.nq), "kernel": lim["kernel"]})
            for k in args.k:
                for t in thread_set:
                    fw, fc, D, _ = time_faiss(index, q, k, t, args.repeat)
                    prefix = tmp / f"cmh_{bits}_{k}"
                    extra = ["--out-prefix", prefix] if t == 1 else []
                    js = run_cmh(exe, "topk", "--db", dbp, "--queries", qp, "-k", k, "--threads", t, "--repeat", args.repeat, *extra)
                    if t == 1:
                        ci = np.load(f"{prefix}_indices.npy")
                        cd = np.load(f"{prefix}_distances.npy")
                        check_results(db, q, k, D, ci, cd, sample=range(0, args.nq, max(1, args.nq // 8)))
                    row = {
                        "bits": bits, "k": k, "threads": t, "kernel": js["kernel"],
                        "faiss_qps_wall": args.nq / fw, "cmh_qps_wall": args.nq / js["seconds"],
                        "faiss_qps_cpu": args.nq / fc, "cmh_qps_cpu": args.nq / js["cpu_seconds"],
                        "cmh_cpu_ns_per_comparison": js["cpu_seconds"] * 1e9 / (args.n * args.nq),
                    }
                    row["ratio_wall"] = row["cmh_qps_wall"] / row["faiss_qps_wall"]
                    row["ratio_cpu"] = row["cmh_qps_cpu"] / row["faiss_qps_cpu"]
                    results["search"].append(row)
                    print(f"bits {bits:4d}  k {k:5d}  threads {t}:  faiss {row['faiss_qps_wall']:9.0f} q/s wall {row['faiss_qps_cpu']:9.0f} q/CPU-s"
                          f"  |  cmh {row['cmh_qps_wall']:9.0f} q/s wall {row['cmh_qps_cpu']:9.0f} q/CPU-s"
                          f"  |  ratio {row['ratio_wall']:5.1f}x wall {row['ratio_cpu']:5.1f}x CPU", flush=True)
            del index, db
        if args.big_n > 0 and q64 is not None:
            size, peak, js = mmap_peak(exe, tmp, args.big_n, q64, all_threads)
            start = js.get("rss_at_start_bytes") or 0
            results["mmap"] = {"codes": args.big_n, "file_bytes": size, "peak_rss_bytes": peak, "ratio": peak / size,
                               "rss_at_start_bytes": start, "search_ratio": (peak - start) / size,
                               "seconds": js["seconds"], "queries": 100, "k": 10}

    print(f"\n1-minute load average: {results['machine']['load_avg_start']:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
          f"({all_threads} CPUs); wall-clock figures are unreliable when it exceeds the CPU count")
    print(f"{'bits':>4} {'k':>5} {'thr':>3} | {'faiss q/s':>10} {'cmh q/s':>10} {'ratio':>6} (wall) | "
          f"{'faiss q/CPU-s':>13} {'cmh q/CPU-s':>11} {'ratio':>6} (CPU) | cmh ns/cmp (CPU)")
    for r in results["search"]:
        print(f"{r['bits']:>4} {r['k']:>5} {r['threads']:>3} | {r['faiss_qps_wall']:>10.0f} {r['cmh_qps_wall']:>10.0f} {r['ratio_wall']:>5.1f}x       | "
              f"{r['faiss_qps_cpu']:>13.0f} {r['cmh_qps_cpu']:>11.0f} {r['ratio_cpu']:>5.1f}x      | {r['cmh_cpu_ns_per_comparison']:.3f}")
    worst = min(min(r["ratio_wall"], r["ratio_cpu"]) for r in results["search"])
    print(f"goal cmh >= 3x faiss in every configuration: lowest ratio {worst:.1f}x -> {'met' if worst >= 3 else 'NOT met'}")
    print()
    mhz = results["machine"]["cpu_mhz"]
    for l in results["limit"]:
        if l["threads"] != 1:
            continue
        best = [r for r in results["search"] if r["bits"] == l["bits"] and r["threads"] == 1]
        line = (f"popcount limit, {l['bits']} bits, 1 thread ({l['kernel']}): {l['cpu_ns_per_comparison']:.3f} ns per comparison "
                f"(all distances, no selection)")
        if mhz:
            line += f" = {l['cpu_ns_per_comparison'] * mhz / 1000:.2f} cycles at the nominal {mhz:.0f} MHz"
        print(line)
        for r in best:
            print(f"    top-{r['k']}: {r['cmh_cpu_ns_per_comparison']:.3f} ns per comparison = "
                  f"{r['cmh_cpu_ns_per_comparison'] / l['cpu_ns_per_comparison']:.2f}x the limit")
    if "mmap" in results:
        m = results["mmap"]
        print(f"\nmemory-mapped search of {m['codes']:,} 64-bit codes ({m['file_bytes'] / 1e6:.0f} MB file), 100 queries, k = 10: "
              f"peak RSS {m['peak_rss_bytes'] / 1e6:.0f} MB = {m['ratio']:.3f}x the file "
              f"({'under' if m['ratio'] < 1.2 else 'NOT under'} 1.2x); {m['seconds']:.2f} s")
        print(f"    of which resident before any work (shared libraries loaded at start-up, mostly libtorch): "
              f"{m['rss_at_start_bytes'] / 1e6:.0f} MB; peak minus that = {m['search_ratio']:.3f}x the file "
              f"({'under' if m['search_ratio'] < 1.2 else 'NOT under'} 1.2x)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
