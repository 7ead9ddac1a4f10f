#!/usr/bin/env python3
"""Check and describe the binary codes of cmh runs (numpy; the cmh_tools package in python/).

    .venv/bin/python scripts/analyze_codes.py RUN_DIR [--data BUNDLE] [--tol 1e-9] [--no-encode] [--json OUT]

RUN_DIR is any folder cmh wrote: one run (`bitsB-seedS/`), a `cmh train ... --out RUN` folder or a
`cmh demo --out DIR` folder; every run folder below it is analysed. For each run it
  1. recomputes mAP (and mAP@k when the report has k) image->text and text->image under both
     database conventions (cmh_tools.evaluate) and compares them with report.json: a difference
     above --tol is a failure (exit status 1);
  2. prints bit balance, bit correlation and code collisions of the database codes;
  3. encodes the query and database items again from the bundle's features with the exported
     model (cmh_tools.load_model: SCH, CCA-ITQ, SeGH, SDCH in feature mode) and checks the result
     equals the exported codes (a bit may differ only where the projection is a rounding-level tie).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
import cmh_tools  # noqa: E402

KEYS = ("i2t_encoded", "t2i_encoded", "i2t", "t2i")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_run(run, args):
    """Analyses one run; returns (failures, figures)."""
    failures = 0
    result = {"method": run.method, "bits": run.bits, "map": {}, "stats": {}, "encode": {}}
    print(f"\n== {run.path}: {run.method} {run.bits} bits seed {run.seed} ({run.protocol}, database {run.convention})")

    # 1. mAP, both directions, both database conventions.
    for key in KEYS:
        want = run.report[key]
        k = want.get("k")
        m = run.evaluate(key, topk=k)
        line = f"  {key:<12} mAP {m['map']:.6f} (report {want['map']:.6f})"
        bad = abs(m["map"] - want["map"]) > args.tol or m["excluded_queries"] != want["excluded_queries"]
        if k is not None:
            line += f"  mAP@{k} {m['map@k']:.6f} (report {want['map@k']:.6f})"
            bad |= abs(m["map@k"] - want["map@k"]) > args.tol
        print(line + ("  MISMATCH" if bad else "  ok"))
        failures += bad
        result["map"][key] = {"map": m["map"], "map@k": m.get("map@k"), "k": k, "excluded_queries": m["excluded_queries"]}
    top = run.report.get("map@k")
    if top:
        for d in ("i2t", "t2i"):
            if abs(top[d] - run.report[d]["map@k"]) > args.tol:
                print(f"  report map@k.{d} {top[d]} differs from {d}.map@k {run.report[d]['map@k']}  MISMATCH")
                failures += 1

    # 2. Code statistics of the database codes (and B).
    sets = [("db_image", run.db_codes("image")), ("db_text", run.db_codes("text"))]
    if run.train_codes() is not None:
        sets.append(("train_B", run.train_codes()))
    print(f"  {'codes':<9} {'n':>6} {'|balance|':>10} {'max':>6} {'const':>5} {'|corr|':>7} {'max':>6} {'distinct':>8} {'bucket':>6} {'shared':>6}")
    for name, c in sets:
        s = cmh_tools.code_statistics(c)
        result["stats"][name] = s
        print(f"  {name:<9} {s['n']:>6} {s['mean_abs_balance']:>10.3f} {s['max_abs_balance']:>6.3f} {s['constant_bits']:>5} "
              f"{s['mean_abs_corr']:>7.3f} {s['max_abs_corr']:>6.3f} {s['distinct_codes']:>8} {s['largest_bucket']:>6} {s['items_sharing_a_code']:>6}")

    # 3. Encode the items again from the bundle's features with the exported model.
    if args.no_encode:
        return failures, result
    try:
        model = run.model()
    except ValueError as e:
        print(f"  encode: {e}")
        return failures, result
    bundle = run.bundle(args.data) or run.bundle(os.path.join(REPO, run.config().get("data", "")))
    if bundle is None:
        print("  encode: bundle not found (pass --data BUNDLE); encode check skipped")
        return failures, result
    for t in ("image", "text"):
        features = bundle.features(t)
        for part, split in (("query", "query"), ("db", "database")):
            exported = run.codes(f"{part}_{t}")
            try:
                h, scale = model.project(t, features[run.split(split)], with_scale=True)
            except ValueError as e:
                print(f"  encode {part}_{t}: skipped ({e})")
                continue
            ours = (h >= 0) * 2 - 1
            differ = ours != exported
            hard = int((differ & (abs(h) > model.tie_tolerance * scale)).sum())
            print(f"  encode {part}_{t:<5} {exported.shape[0]} x {exported.shape[1]}: "
                  f"{int(differ.sum())} bits differ, {hard} not at a rounding-level tie  {'MISMATCH' if hard else 'ok'}")
            failures += hard > 0
            result["encode"][f"{part}_{t}"] = {"bits_differ": int(differ.sum()), "not_at_a_tie": hard}
    return failures, result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--data", help="the bundle the run was trained on (default: from run.json)")
    ap.add_argument("--tol", type=float, default=1e-9, help="largest accepted difference from report.json")
    ap.add_argument("--no-encode", action="store_true", help="skip re-encoding items")
    ap.add_argument("--json", help="also write the recomputed figures and statistics to this JSON file")
    args = ap.parse_args()
    runs = cmh_tools.find_runs(args.run_dir)
    if not runs:
        raise SystemExit(f"{args.run_dir}: no run folder (report.json + query_image.npy) found")
    print("Code statistics: |balance| = mean over bits of |mean of the bit's +-1 values| (0 = balanced), "
          "max = worst bit;\n  const = constant bits; |corr| = mean |Pearson correlation| between two "
          "different bits, max = worst pair;\n  distinct = distinct codes; bucket = largest group of items "
          "with one code; shared = items whose code another item has too.")
    failures, results = 0, {}
    for r in runs:
        f, res = check_run(r, args)
        failures += f
        results[os.path.relpath(r.path, args.run_dir)] = res
    if args.json:
        tmp = args.json + ".partial"
        with open(tmp, "w") as f:
            json.dump({"runs": results, "failures": failures}, f, indent=1)
        os.replace(tmp, args.json)
    print(f"\n{len(runs)} runs analysed, {failures} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
