#!/usr/bin/env python3
"""Evaluation benchmark: cmh's mAP against the numpy `calc_map` routine of DCMH-style code.

The reference below is the routine published with DCMH and copied by most cross-modal hashing
code (Hamming distance by inner product of ±1 codes, argsort of every ranking, cumulative
precision), with two changes so that it computes cmh's documented metric exactly:
  * `np.argsort(..., kind="stable")`: ties are ranked by database index (the original uses the
    default quicksort, whose tie order is arbitrary);
  * queries with no relevant database item are excluded from the mean (the original divides by
    all queries, counting them as AP 0); the number excluded is printed.

Both run on the same synthetic data of MIRFlickr-25K size (2,000 queries x 18,015 database items,
24 labels, 64 bits; labels multi-hot, codes correlated with the labels so that mAP is realistic)
and, with --nuswide, of NUS-WIDE size (2,100 x 193,734, 21 labels). The reference runs in a
child process, with OPENBLAS_NUM_THREADS=1 and with OPENBLAS_NUM_THREADS=<all CPUs> (unless
--no-default-threads); cmh runs with 1 and with all rayon threads. The script prints the mAPs,
their difference (must be <= 1e-9), and for 1 thread vs 1 thread and all vs all threads the
speed ratio numpy / cmh by wall-clock time and by CPU time (user+sys seconds of all threads of
each process). The goal line uses the worse of the two 1-thread ratios. Times are context only.

    .venv/bin/python scripts/bench_eval.py
    .venv/bin/python scripts/bench_eval.py --nuswide
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import build_bench, run_cmh  # noqa: E402


def calc_hamming_dist(b1, b2):
    q = b2.shape[1]
    return 0.5 * (q - np.dot(b1, b2.transpose()))


def calc_map(qB, rB, query_L, retrieval_L):
    """DCMH's calc_map with ties by database index and no-relevant queries excluded."""
    num_query = query_L.shape[0]
    total, counted = 0.0, 0
    for it in range(num_query):
        gnd = (np.dot(query_L[it, :], retrieval_L.transpose()) > 0).astype(np.float32)
        tsum = int(np.sum(gnd))
        if tsum == 0:
            continue
        hamm = calc_hamming_dist(qB[it, :], rB)
        ind = np.argsort(hamm, kind="stable")
        gnd = gnd[ind]
        count = np.linspace(1, tsum, tsum)
        tindex = np.asarray(np.where(gnd == 1)) + 1.0
        total += np.mean(count / tindex)
        counted += 1
    return total / max(counted, 1), num_query - counted


def reference_child(paths):
    """Child process: run calc_map on the saved files, print JSON (map, excluded, cpu, wall)."""
    qB, rB, qL, rL = (np.load(p).astype(np.float32) for p in paths)
    c0, t0 = time.process_time(), time.perf_counter()
    m, excluded = calc_map(qB, rB, qL, rL)
    print(json.dumps({"map": m, "excluded": excluded, "cpu": time.process_time() - c0, "wall": time.perf_counter() - t0}))


def run_reference(paths, blas_threads):
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)
    if blas_threads is not None:
        env["OPENBLAS_NUM_THREADS"] = str(blas_threads)
    out = subprocess.run([sys.executable, __file__, "--reference-child", *map(str, paths)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        sys.exit("the numpy reference failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_data(rng, nq, n, classes, bits):
    labels = (rng.random((nq + n, classes)) < 0.12).astype(np.uint8)
    w = rng.standard_normal((classes, bits))
    x = labels @ w + 0.8 * rng.standard_normal((nq + n, bits))
    codes = np.where(x >= 0, 1, -1).astype(np.int8)
    return codes[:nq], codes[nq:], labels[:nq], labels[nq:]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nuswide", action="store_true", help="also run the NUS-WIDE size (the numpy reference takes about a minute)")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-default-threads", action="store_true", help="skip the reference run with all BLAS threads")
    ap.add_argument("--bench-bin", help="prebuilt benches/search.rs executable")
    ap.add_argument("--json", help="write all figures to this file")
    ap.add_argument("--reference-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference_child:
        reference_child(args.reference_child)
        return
    exe = args.bench_bin or build_bench()
    all_threads = os.cpu_count() or 1
    sizes = [("MIRFlickr", 2000, 18015, 24)] + ([("NUS-WIDE", 2100, 193734, 21)] if args.nuswide else [])
    rng = np.random.default_rng(0)
    out = {"load_avg_start": os.getloadavg()[0], "cpus": all_threads, "runs": []}
    ok = True
    print(f"numpy: calc_map in a child process with OPENBLAS_NUM_THREADS=1 and ={all_threads}; cmh: benches/search.rs eval "
          f"with 1 and {all_threads} rayon threads (best of {args.repeat}). CPU time = user+sys seconds of all the process's "
          "threads; wall = elapsed seconds. Ratios are numpy / cmh.")
    with tempfile.TemporaryDirectory(prefix="cmh_bench_eval_") as tmpd:
        tmp = Path(tmpd)
        for name, nq, n, classes in sizes:
            qB, rB, qL, rL = make_data(rng, nq, n, classes, args.bits)
            paths = {}
            for key, arr in (("qcodes", qB), ("dbcodes", rB), ("qlabels", qL), ("dblabels", rL)):
                paths[key] = tmp / f"{name}_{key}.npy"
                np.save(paths[key], arr)
            # numpy reference (float32 ±1 codes and labels, as DCMH passes them), in a child process.
            files = [paths["qcodes"], paths["dbcodes"], paths["qlabels"], paths["dblabels"]]
            ref = {1: run_reference(files, 1)}
            if not args.no_default_threads and all_threads > 1:
                ref[all_threads] = run_reference(files, all_threads)
            cmh = {}
            for t in sorted({1, all_threads}):
                cmh[t] = run_cmh(exe, "eval", "--qcodes", paths["qcodes"], "--dbcodes", paths["dbcodes"], "--qlabels", paths["qlabels"],
                                 "--dblabels", paths["dblabels"], "--threads", t, "--repeat", args.repeat)
            ref_map, ref_excl = ref[1]["map"], ref[1]["excluded"]
            one = cmh[1]
            diff = abs(one["map"] - ref_map)
            agree = diff <= 1e-9 and one["excluded_queries"] == ref_excl and all(c["map"] == one["map"] for c in cmh.values())
            agree &= all(abs(r["map"] - ref_map) <= 1e-9 for r in ref.values())
            ok &= agree
            row = {"size": name, "queries": nq, "database": n, "labels": classes, "bits": args.bits,
                   "numpy_map": ref_map, "cmh_map": one["map"], "abs_diff": diff, "excluded_queries": ref_excl,
                   "numpy": {str(t): {"cpu_s": r["cpu"], "wall_s": r["wall"]} for t, r in ref.items()},
                   "cmh": {str(t): {"cpu_s": c["cpu_seconds"], "wall_s": c["seconds"]} for t, c in cmh.items()},
                   "ratios": {}}
            print(f"{name} ({nq} x {n}, {classes} labels, {args.bits} bits): mAP numpy {ref_map:.15f}  cmh {one['map']:.15f}  "
                  f"|diff| {diff:.1e}  ({'agree' if agree else 'DISAGREE'}; {ref_excl} queries excluded)")
            for t, r in ref.items():
                print(f"    numpy calc_map, {t} BLAS thread(s):  {r['cpu']:8.3f} CPU-s  {r['wall']:8.3f} s wall")
            for t, c in cmh.items():
                print(f"    cmh, {t} rayon thread(s):          {c['cpu_seconds']:8.4f} CPU-s  {c['seconds']:8.4f} s wall")
            for t in sorted(set(ref) & set(cmh)):
                rc, rw = ref[t]["cpu"] / cmh[t]["cpu_seconds"], ref[t]["wall"] / cmh[t]["seconds"]
                row["ratios"][f"{t}_vs_{t}"] = {"cpu": rc, "wall": rw}
                print(f"    ratio, numpy {t} BLAS thread(s) / cmh {t} thread(s): {rw:6.0f}x wall  {rc:6.0f}x CPU")
            out["runs"].append(row)
    out["load_avg_end"] = os.getloadavg()[0]
    print(f"1-minute load average {out['load_avg_start']:.1f} -> {out['load_avg_end']:.1f} on {all_threads} CPUs")
    mir = out["runs"][0]["ratios"]["1_vs_1"]
    worst = min(mir["cpu"], mir["wall"])
    print(f"goal cmh >= 50x numpy at the MIRFlickr size (1 thread each, the worse of wall and CPU ratio): {worst:.0f}x -> "
          f"{'met' if worst >= 50 else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    if not ok:
        sys.exit("cmh and the numpy reference disagree")


if __name__ == "__main__":
    main()
