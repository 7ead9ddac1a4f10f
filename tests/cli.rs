//! End-to-end checks of the `cmh` binary: numpy interop for `eval` / `search`, and bad input refused
//! cleanly (non-zero exit, a message naming the file, nothing half-written).

use std::path::Path;
use std::process::Command;

fn cmh() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cmh"))
}

mod common;
use common::python;

fn run_py(code: &str, dir: &Path) {
    let py = python().expect("the project venv (.venv) is needed: run scripts/setup.sh");
    let out = Command::new(py).arg("-c").arg(code).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// An independent mAP in numpy: full argsort with (distance, index) ties, excluded queries.
const NUMPY_SETUP: &str = r#"
import numpy as np, json
rng = np.random.default_rng(7)
nq, nd, bits, c = 37, 211, 24, 5
q = np.where(rng.random((nq, bits)) < 0.5, 1, -1).astype(np.int8)
d = np.where(rng.random((nd, bits)) < 0.5, 1, -1).astype(np.int8)
d[5] = d[3]; d[9] = d[3]          # duplicate codes: ties broken by index
ql = (rng.random((nq, c)) < 0.3).astype(np.uint8)
dl = (rng.random((nd, c)) < 0.3).astype(np.uint8)
ql[0] = 0; ql[0, 4] = 1; dl[:, 4] = 0   # query 0 has no relevant item: excluded
np.save("q.npy", q); np.save("d_pm1.npy", d)
np.save("d_packed.npy", np.packbits(d > 0, axis=1)); np.save("q_bool.npy", q > 0)
np.save("ql.npy", ql); np.save("dl.npy", dl)
aps, apks, excluded, k = [], [], 0, 10
for i in range(nq):
    ham = 0.5 * (bits - d.astype(np.int64) @ q[i].astype(np.int64))
    order = np.lexsort((np.arange(nd), ham))
    rel = ((dl[order] @ ql[i]) > 0).astype(np.float64)
    if rel.sum() == 0:
        excluded += 1; continue
    prec = np.cumsum(rel) / np.arange(1, nd + 1)
    aps.append((prec * rel).sum() / rel.sum())
    rk = rel[:k]
    apks.append((prec[:k] * rk).sum() / rk.sum() if rk.sum() > 0 else 0.0)
json.dump({"map": float(np.mean(aps)), "mapk": float(np.mean(apks)), "excluded": excluded}, open("ref.json", "w"))
"#;

#[test]
fn eval_matches_an_independent_numpy_map() {
    if python().is_none() {
        eprintln!("skipped: no .venv (run scripts/setup.sh)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    run_py(NUMPY_SETUP, d.path());
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.path().join("ref.json")).unwrap()).unwrap();
    // Database as int8 ±1 and as packbits: the same figures.
    for (qf, df) in [("q.npy", "d_pm1.npy"), ("q_bool.npy", "d_packed.npy")] {
        let out = cmh()
            .current_dir(d.path())
            .args([
                "eval",
                "--query-codes",
                qf,
                "--db-codes",
                df,
                "--query-labels",
                "ql.npy",
                "--db-labels",
                "dl.npy",
                "--topk",
                "10",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!((v["map"].as_f64().unwrap() - reference["map"].as_f64().unwrap()).abs() < 1e-9, "{v} vs {reference}");
        assert!((v["map@k"].as_f64().unwrap() - reference["mapk"].as_f64().unwrap()).abs() < 1e-9);
        assert_eq!(v["excluded_queries"], reference["excluded"]);
    }
}

#[test]
fn search_writes_numpy_readable_results_ordered_by_distance_then_index() {
    if python().is_none() {
        eprintln!("skipped: no .venv (run scripts/setup.sh)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    run_py(NUMPY_SETUP, d.path());
    let out = cmh()
        .current_dir(d.path())
        .args(["search", "--db", "d_packed.npy", "--query", "q.npy", "-k", "15", "--out", "res"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    run_py(
        r#"
import numpy as np
q = np.load("q.npy").astype(np.int64); d = np.load("d_pm1.npy").astype(np.int64)
idx = np.load("res/indices.npy"); dist = np.load("res/distances.npy")
assert idx.dtype == np.int64 and idx.shape == (37, 15), idx.dtype
for i in range(len(q)):
    ham = (q.shape[1] - d @ q[i]) // 2
    order = np.lexsort((np.arange(len(d)), ham))[:15]
    assert (order == idx[i]).all(), (i, order, idx[i])
    assert (ham[order] == dist[i]).all()
"#,
        d.path(),
    );
}

/// Runs cmh expecting failure; returns stderr.
fn fails(args: &[&str], dir: &Path) -> String {
    let out = cmh().current_dir(dir).args(args).output().unwrap();
    assert!(!out.status.success(), "expected failure for {args:?}");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn bad_inputs_are_refused_cleanly() {
    if python().is_none() {
        eprintln!("skipped: no .venv (run scripts/setup.sh)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    run_py(NUMPY_SETUP, d.path());
    run_py(
        r#"
import numpy as np
np.save("float_codes.npy", np.ones((37, 24), np.float32))
np.save("ql_short.npy", np.load("ql.npy")[:-1])
np.save("q16.npy", np.load("q.npy")[:, :16])
b = open("d_packed.npy", "rb").read(); open("trunc.npy", "wb").write(b[:-5])
np.save("ql_two.npy", np.load("ql.npy") * 2)
"#,
        d.path(),
    );
    let eval = |q: &str, db: &str, ql: &str| {
        fails(&["eval", "--query-codes", q, "--db-codes", db, "--query-labels", ql, "--db-labels", "dl.npy"], d.path())
    };
    assert!(eval("missing.npy", "d_pm1.npy", "ql.npy").contains("missing.npy"));
    let e = eval("float_codes.npy", "d_pm1.npy", "ql.npy");
    assert!(e.contains("float_codes.npy") && e.contains("float32"), "{e}");
    let e = eval("q.npy", "trunc.npy", "ql.npy");
    assert!(e.contains("trunc.npy") && e.contains("truncated"), "{e}");
    let e = eval("q.npy", "d_pm1.npy", "ql_short.npy");
    assert!(e.contains("37 query codes but 36 query label rows"), "{e}");
    let e = eval("q16.npy", "d_pm1.npy", "ql.npy");
    assert!(e.contains("16") && e.contains("24"), "{e}");
    let e = eval("q.npy", "d_pm1.npy", "ql_two.npy");
    assert!(e.contains("ql_two.npy") && e.contains("0 or 1"), "{e}");
    // Search: k = 0, k larger than the database, and no partial outputs.
    assert!(
        fails(&["search", "--db", "d_pm1.npy", "--query", "q.npy", "-k", "0", "--out", "r0"], d.path()).contains("k must be at least 1")
    );
    assert!(fails(&["search", "--db", "d_pm1.npy", "--query", "q.npy", "-k", "999", "--out", "r1"], d.path())
        .contains("exceeds the database size"));
    assert!(!d.path().join("r1").exists());
    let e = fails(&["search", "--db", "trunc.npy", "--query", "q.npy", "-k", "3", "--out", "r2"], d.path());
    assert!(e.contains("trunc.npy"), "{e}");
    // A bundle folder without a manifest.
    assert!(fails(&["data", "info", "nowhere"], d.path()).contains("bundle.json"));
}

#[test]
fn train_refuses_bad_configuration() {
    let d = tempfile::tempdir().unwrap();
    assert!(fails(&["--threads", "0", "data", "info", "x"], d.path()).contains("--threads must be at least 1"));
    let e = fails(&["train", "--method", "nope", "--data", "x", "--out", "o"], d.path());
    assert!(e.contains("unknown method"), "{e}");
    let e = fails(&["train", "--method", "random", "--data", "x", "--out", "o", "--bits", "0"], d.path());
    assert!(e.contains("bits"), "{e}");
    std::fs::write(d.path().join("c.toml"), "[nosuch]\na = 1\n").unwrap();
    let e = fails(&["train", "--method", "random", "--data", "x", "--out", "o", "--config", "c.toml"], d.path());
    assert!(e.contains("c.toml") && e.contains("nosuch"), "{e}");
}

/// `--show-params` names each value's source; `cmh tune` on a bundle whose test queries hold NaN
/// writes a best.toml that `cmh train --config` takes on the validation bundle of `cmh data split`,
/// while training on the bundle's own test split is refused naming the NaN row.
#[test]
fn show_params_tune_and_validation_bundle() {
    use cmh::bundle::{one_hot, BundleWriter, FixedSplit, NewModality};
    let d = tempfile::tempdir().unwrap();
    let ok = |args: &[&str]| {
        let out = cmh().current_dir(d.path()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let shown = ok(&["train", "--method", "sdch", "--preset", "paper", "--param", "epochs=3", "--show-params"]);
    assert!(shown.starts_with("[sdch]\n"), "{shown}");
    let line = |k: &str| shown.lines().find(|l| l.starts_with(&format!("{k} ="))).unwrap_or_else(|| panic!("{k}: {shown}")).to_string();
    assert!(line("hidden").contains("[4096, 4096]") && line("hidden").ends_with("# preset paper"), "{shown}");
    assert!(line("epochs").contains("= 3") && line("epochs").ends_with("# --param"), "{shown}");
    assert!(line("batch_size").ends_with("# default"), "{shown}");
    // A 120-item bundle, 4 classes; the 20 test queries hold NaN image features.
    let n = 120;
    let cls: Vec<usize> = (0..n).map(|i| i % 4).collect();
    let noise = |i: usize, j: usize| (((i * 7919 + j * 104_729) % 1000) as f32 / 1000.0 - 0.5) * 0.8;
    let mut img = ndarray::Array2::from_shape_fn((n, 6), |(i, j)| if j == cls[i] { 1.0 } else { 0.0 } + noise(i, j));
    let txt = ndarray::Array2::from_shape_fn((n, 5), |(i, j)| if j == cls[i] { 1.0 } else { 0.0 } + noise(i + 500, j));
    img[[3, 1]] = f32::NAN;
    BundleWriter {
        name: "t".into(),
        source: "test".into(),
        classes: (0..4).map(|k| format!("c{k}")).collect(),
        modalities: vec![
            NewModality { name: "image".into(), features: Some(img), ..Default::default() },
            NewModality { name: "text".into(), features: Some(txt), ..Default::default() },
        ],
        labels: vec![one_hot(&cls, 4)],
        split: Some(FixedSplit { train: (20..n).collect(), query: (0..20).collect(), database: (20..n).collect() }),
        ..Default::default()
    }
    .write(&d.path().join("b"), false)
    .unwrap();
    let table = ok(&[
        "--threads",
        "1",
        "tune",
        "--method",
        "cca-itq",
        "--data",
        "b",
        "--bits",
        "8,16",
        "--budget",
        "3",
        "--param",
        "anchors=20",
        "--out",
        "t",
        "-q",
    ]);
    assert!(table.contains("best: trial") && table.contains("t/best.toml"), "{table}");
    assert!(d.path().join("t/best.toml").is_file() && d.path().join("t/trials.tsv").is_file());
    let e = fails(
        &["--threads", "1", "train", "--method", "cca-itq", "--data", "b", "--bits", "8", "--config", "t/best.toml", "--out", "r0"],
        d.path(),
    );
    assert!(e.contains("image_features.npy") && e.contains("NaN at row 3, column 1"), "{e}");
    let split = ok(&["data", "split", "b", "--validation", "--out", "v"]);
    assert!(split.contains("20 validation queries, 80 training = database items"), "{split}");
    assert!(fails(&["data", "split", "b", "--validation", "--out", "v"], d.path()).contains("already exists"));
    let shown = ok(&["train", "--method", "cca-itq", "--config", "t/best.toml", "--show-params"]);
    assert!(shown.lines().filter(|l| l.contains("# config file t/best.toml")).count() >= 3, "{shown}");
    let out = ok(&[
        "--threads",
        "1",
        "train",
        "--method",
        "cca-itq",
        "--data",
        "v",
        "--bits",
        "8",
        "--config",
        "t/best.toml",
        "--out",
        "r1",
        "-q",
    ]);
    assert!(out.contains("mAP/floor"), "the end-of-run summary has the health table: {out}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.path().join("r1/report.json")).unwrap()).unwrap();
    assert!(report["health"]["codes"]["db_text"]["distinct_codes"].as_u64().unwrap() > 1, "{}", report["health"]);
    assert!(report["health"]["i2t"]["random_floor"].as_f64().unwrap() > 0.1);
}

#[test]
fn train_streams_a_memory_mapped_bundle() {
    let data = cmh_repo_data("uci");
    if !data.join("bundle.json").is_file() {
        eprintln!("skipped: {} is absent", data.display());
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let run = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "--threads",
            "1",
            "train",
            "--method",
            "sdch",
            "--data",
            data.to_str().unwrap(),
            "--bits",
            "8",
            "--device",
            "cpu",
            "--out",
            out,
            "-q",
        ];
        args.extend(["--param", "epochs=2", "--param", "hidden=[32]", "--param", "feature_dim=16", "--param", "batch_size=128"]);
        args.extend(extra);
        let o = cmh().current_dir(d.path()).args(&args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(d.path().join(out).join("bits8-seed0").join("report.json")).unwrap()
    };
    // The same figures from the mapped files as from the loaded ones (timings aside).
    let strip = |r: String| {
        let mut v: serde_json::Value = serde_json::from_str(&r).unwrap();
        v.as_object_mut().unwrap().remove("timings");
        v
    };
    assert_eq!(strip(run("loaded", &[])), strip(run("mapped", &["--mmap"])));
    let e = fails(&["train", "--method", "sch", "--data", data.to_str().unwrap(), "--mmap", "--out", "s"], d.path());
    assert!(e.contains("memory-mapped"), "{e}");
}

fn cmh_repo_data(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join(name)
}
