#!/usr/bin/env python3
"""Sublinear exact search benchmark: cmh's multi-index hashing index against cmh's linear scan and
faiss's IndexBinaryMultiHash / IndexBinaryIVF, one thread, on the same codes in one run.

Data (generated once into --data-dir, seeded, reused by later runs):
  * mixture: ITQ codes (PCA to `bits` dimensions, 50 ITQ iterations fitted on a 10^5 sample) of
    items drawn from a Gaussian mixture in 128 dimensions with 10^4 components (means N(0, I),
    per-component spread 0.5-1.0, gamma-distributed weights); queries are new draws;
  * random: uniformly random codes and queries (the worst case for any index).
For each data set, code length and k it reports q/s of the scan and the index (and their ratio),
checks that the index returns exactly the scan's (distance, index) top-k, reports the index's build
time and size and how many queries it handed to the scan, and times faiss's approximate indexes
with their recall (tie-aware: the share of returned items whose distance is at most the exact
k-th distance).

    .venv/bin/python scripts/bench_mih.py                     # 10^7 codes, 64 and 128 bits
    .venv/bin/python scripts/bench_mih.py --n 1000000 --no-faiss

Times are context only (the machine may be shared); ratios are measured in the same run.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_search import build_bench, cpu_mhz, run_cmh as run_exe  # noqa: E402

D, COMPONENTS, CHUNK = 128, 10_000, 200_000


def mixture_model(seed):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((COMPONENTS, D), dtype=np.float32)
    scales = (0.5 + 0.5 * rng.random(COMPONENTS)).astype(np.float32)
    w = rng.gamma(1.0, size=COMPONENTS)
    return means, scales, np.cumsum(w / w.sum())


def draw(rng, n, model):
    means, scales, cdf = model
    comp = np.minimum(np.searchsorted(cdf, rng.random(n)), COMPONENTS - 1)
    x = rng.standard_normal((n, D), dtype=np.float32)
    x *= scales[comp][:, None]
    x += means[comp]
    return x


def itq(v, rng, iters=50):
    """ITQ rotation (Gong & Lazebnik): alternate B = sign(V R) and the orthogonal Procrustes R."""
    bits = v.shape[1]
    r = np.linalg.qr(rng.standard_normal((bits, bits)))[0]
    for _ in range(iters):
        b = np.where(v @ r >= 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(b.T @ v)
        r = (u @ wt).T
    return r


def generate(data_dir, n, nq, bits_list):
    """Writes mixture_db{bits}.npy / mixture_q{bits}.npy and random_db{bits}.npy / random_q{bits}.npy."""
    data_dir.mkdir(parents=True, exist_ok=True)
    want = [data_dir / f"{kind}_{w}{b}.npy" for kind in ("mixture", "random") for w in ("db", "q") for b in bits_list]
    meta = data_dir / "meta.json"
    if all(p.exists() for p in want) and meta.exists() and json.loads(meta.read_text()) == {"n": n, "nq": nq}:
        return
    t = time.time()
    model = mixture_model(1)
    rng = np.random.default_rng(2)
    sample = draw(rng, 100_000, model)
    mu = sample.mean(axis=0)
    xc = sample - mu
    evals, evecs = np.linalg.eigh(xc.T @ xc / len(xc))
    proj = {}
    for b in bits_list:
        p = evecs[:, ::-1][:, :b]
        proj[b] = (p @ itq(xc @ p, rng)).astype(np.float32)
    outs = {b: np.lib.format.open_memmap(data_dir / f"mixture_db{b}.npy.tmp", mode="w+", dtype=np.uint8, shape=(n, b // 8)) for b in bits_list}
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        x = draw(rng, e - s, model)
        x -= mu
        for b in bits_list:
            outs[b][s:e] = np.packbits(x @ proj[b] >= 0, axis=1)
        print(f"\rmixture: {e:,}/{n:,} items ({time.time() - t:.0f} s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    for b in bits_list:
        outs[b].flush()
        del outs[b]
        os.replace(data_dir / f"mixture_db{b}.npy.tmp", data_dir / f"mixture_db{b}.npy")
    xq = draw(rng, nq, model) - mu
    for b in bits_list:
        np.save(data_dir / f"mixture_q{b}.npy", np.packbits(xq @ proj[b] >= 0, axis=1))
    rr = np.random.default_rng(3)
    for b in bits_list:
        arr = np.lib.format.open_memmap(data_dir / f"random_db{b}.npy.tmp", mode="w+", dtype=np.uint8, shape=(n, b // 8))
        for s in range(0, n, 1 << 22):
            e = min(n, s + (1 << 22))
            arr[s:e] = rr.integers(0, 256, (e - s, b // 8), dtype=np.uint8)
        arr.flush()
        del arr
        os.replace(data_dir / f"random_db{b}.npy.tmp", data_dir / f"random_db{b}.npy")
        np.save(data_dir / f"random_q{b}.npy", rr.integers(0, 256, (nq, b // 8), dtype=np.uint8))
    meta.write_text(json.dumps({"n": n, "nq": nq}))
    print(f"generated the data in {time.time() - t:.0f} s", file=sys.stderr)


def tie_aware_recall(d_approx, i_approx, d_exact):
    """Share of returned items (valid ids) whose distance is at most the exact k-th distance."""
    kth = d_exact[:, -1:]
    ok = (i_approx >= 0) & (d_approx <= kth)
    return float(ok.sum(axis=1).clip(max=d_exact.shape[1]).mean() / d_exact.shape[1])


def faiss_rows(kind, bits, db, q, ks, exact, threads):
    import faiss

    faiss.omp_set_num_threads(threads)
    rows = []
    n = len(db)
    m = max(1, round(bits / np.log2(n)))
    configs = []
    t = time.perf_counter()
    mh = faiss.IndexBinaryMultiHash(bits, m, bits // m)
    mh.add(db)
    build = time.perf_counter() - t
    for nflip in (1, 2):
        configs.append((f"MultiHash(nhash={m}, b={bits // m}, nflip={nflip})", mh, build, {"nflip": nflip}))
    t = time.perf_counter()
    nlist = 1024
    quant = faiss.IndexBinaryFlat(bits)
    ivf = faiss.IndexBinaryIVF(quant, bits, nlist)
    # 64 training codes per list (faiss's default sample is 256; fewer keeps the build short).
    ivf.train(db[np.sort(np.random.default_rng(4).choice(n, min(n, nlist * 64), replace=False))])
    ivf.add(db)
    build_ivf = time.perf_counter() - t
    for nprobe in (8, 64):
        configs.append((f"IVF(nlist={nlist}, nprobe={nprobe})", ivf, build_ivf, {"nprobe": nprobe}))
    for name, index, build_s, params in configs:
        for attr, v in params.items():
            setattr(index, attr, v)
        for k in ks:
            t = time.perf_counter()
            dist, ids = index.search(q, k)
            secs = time.perf_counter() - t
            rows.append({"data": kind, "bits": bits, "k": k, "method": "faiss " + name, "qps": len(q) / secs,
                         "recall": tie_aware_recall(dist, ids, exact[k]), "build_s": build_s})
    del mh, ivf
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--bits", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--k", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--data", nargs="+", default=["mixture", "random"])
    ap.add_argument("--substrings", type=int, help="override the index's automatic m")
    ap.add_argument("--data-dir", type=Path, default=ROOT / "runs" / "bench_mih")
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--single", type=int, default=0, metavar="NQ",
                    help="also time the scan on NQ queries one at a time (query block 1), at k = 10")
    ap.add_argument("--faiss-bits", type=int, nargs="+", help="code lengths to time faiss on (default: all)")
    ap.add_argument("--bench-bin", help="prebuilt benches/search.rs executable")
    ap.add_argument("--json", type=Path, help="write all figures to this file")
    args = ap.parse_args()

    data_dir = args.data_dir / f"n{args.n}"
    generate(data_dir, args.n, args.nq, args.bits)
    exe = args.bench_bin or build_bench()
    res = {"machine": {"cpus": os.cpu_count(), "cpu_mhz": cpu_mhz(), "load_avg_start": os.getloadavg()[0]}, "rows": [], "builds": []}
    tmp = data_dir / "out"
    tmp.mkdir(exist_ok=True)
    for kind in args.data:
        for bits in args.bits:
            dbp, qp = data_dir / f"{kind}_db{bits}.npy", data_dir / f"{kind}_q{bits}.npy"
            ixp = data_dir / f"{kind}_db{bits}.cmhidx"
            extra = ["--substrings", args.substrings] if args.substrings else []
            b = run_exe(exe, "index-build", "--db", dbp, "--out", ixp, "--threads", 1, *extra)
            build = {"data": kind, "bits": bits, "seconds": b["seconds"], "bytes": b["summary"]["bytes"],
                     "db_bytes": dbp.stat().st_size, "substrings": b["summary"]["substrings"], "peak_rss_bytes": b["peak_rss_bytes"]}
            res["builds"].append(build)
            print(f"{kind} {bits} bits: index of m = {build['substrings']} built in {build['seconds']:.1f} s, "
                  f"{build['bytes'] / 1e6:.0f} MB ({build['bytes'] / build['db_bytes']:.1f}x the codes)", flush=True)
            exact = {}
            for k in args.k:
                pre_s, pre_m = tmp / f"scan_{kind}_{bits}_{k}", tmp / f"mih_{kind}_{bits}_{k}"
                s = run_exe(exe, "topk", "--db", dbp, "--queries", qp, "-k", k, "--threads", 1, "--repeat", 1, "--out-prefix", pre_s)
                # Best of 2: the first pass also maps the index's pages into the process.
                m = run_exe(exe, "mih", "--index", ixp, "--queries", qp, "-k", k, "--threads", 1, "--repeat", 2, "--out-prefix", pre_m)
                si, sd = np.load(f"{pre_s}_indices.npy"), np.load(f"{pre_s}_distances.npy")
                mi, md = np.load(f"{pre_m}_indices.npy"), np.load(f"{pre_m}_distances.npy")
                same = bool(np.array_equal(si, mi) and np.array_equal(sd, md))
                if not same:
                    sys.exit(f"{kind} {bits} bits k {k}: the index's top-k differs from the scan's")
                exact[k] = sd
                st = m["stats"]
                res["rows"].append({"data": kind, "bits": bits, "k": k, "method": "cmh scan", "qps": s["qps"], "recall": 1.0})
                res["rows"].append({"data": kind, "bits": bits, "k": k, "method": "cmh index", "qps": m["qps"], "recall": 1.0,
                                    "identical_to_scan": same, "ratio_to_scan": m["qps"] / s["qps"], "scanned": st["scanned"],
                                    "candidates_per_query": st["candidates"] / max(1, len(si)), "probes_per_query": st["probes"] / max(1, len(si))})
                print(f"  k {k:3d}: scan {s['qps']:9.0f} q/s | index {m['qps']:9.0f} q/s = {m['qps'] / s['qps']:6.1f}x the scan, identical; "
                      f"{st['scanned']} of {len(si)} queries handed to the scan, {st['candidates'] / len(si):.0f} codes verified per query "
                      f"(median k-th distance {np.median(sd[:, -1]):.0f})", flush=True)
            if args.single:
                # Queries arriving one at a time: the scan cannot share a pass over the database
                # between queries (query block 1); the index answers each query alone anyway.
                sub = tmp / f"{kind}_q{bits}_single.npy"
                np.save(sub, np.load(qp)[: args.single])
                k = 10 if 10 in args.k else args.k[0]
                s1 = run_exe(exe, "topk", "--db", dbp, "--queries", sub, "-k", k, "--threads", 1, "--repeat", 1, "--query-block", 1)
                m1 = next(r for r in res["rows"] if r["data"] == kind and r["bits"] == bits and r["k"] == k and r["method"] == "cmh index")
                res["rows"].append({"data": kind, "bits": bits, "k": k, "method": "cmh scan, one query at a time", "qps": s1["qps"], "recall": 1.0})
                print(f"  k {k:3d}: scan one query at a time {s1['qps']:9.0f} q/s; the index answers {m1['qps'] / s1['qps']:.1f}x as many", flush=True)
            if not args.no_faiss and (args.faiss_bits is None or bits in args.faiss_bits):
                db = np.load(dbp, mmap_mode="r")
                q = np.load(qp)
                rows = faiss_rows(kind, bits, np.ascontiguousarray(db), q, args.k, exact, 1)
                for r in rows:
                    print(f"  k {r['k']:3d}: {r['method']:<44} {r['qps']:9.0f} q/s, recall {r['recall']:.3f} (build {r['build_s']:.0f} s)", flush=True)
                res["rows"].extend(rows)
            ixp.unlink(missing_ok=True)
    res["machine"]["load_avg_end"] = os.getloadavg()[0]
    print(f"\n1-minute load average {res['machine']['load_avg_start']:.1f} at the start, {res['machine']['load_avg_end']:.1f} at the end "
          f"({os.cpu_count()} CPUs)")
    print(f"{'data':<8} {'bits':>4} {'k':>4} | {'method':<44} {'q/s':>9} {'recall':>6} {'vs scan':>8}")
    scan = {(r["data"], r["bits"], r["k"]): r["qps"] for r in res["rows"] if r["method"] == "cmh scan"}
    for r in sorted(res["rows"], key=lambda r: (args.data.index(r["data"]), r["bits"], r["k"])):
        base = scan[(r["data"], r["bits"], r["k"])]
        print(f"{r['data']:<8} {r['bits']:>4} {r['k']:>4} | {r['method']:<44} {r['qps']:>9.0f} {r['recall']:>6.3f} {r['qps'] / base:>7.2f}x")
    print(f"\n{'data':<8} {'bits':>4} | {'index m':>7} {'build s':>8} {'size MB':>8} {'x codes':>8}")
    for b in res["builds"]:
        print(f"{b['data']:<8} {b['bits']:>4} | {b['substrings']:>7} {b['seconds']:>8.1f} {b['bytes'] / 1e6:>8.0f} {b['bytes'] / b['db_bytes']:>8.1f}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
