//! `scripts/analyze_codes.py` against the Rust side: on small runs of SCH, CCA-ITQ, SeGH and SDCH
//! trained by `cmh train`, the script's independent numpy mAP / mAP@k equals `cmh eval` on the same
//! exported files to 1e-9 in both directions and both database conventions, its re-encoding of
//! the items with the exported matrices reproduces the exported codes, and it fails (exit 1) when
//! report.json or a model matrix is tampered with.

use cmh::bundle::{one_hot, BundleWriter, FixedSplit, NewModality};
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{python, repo};

fn cmh(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_cmh")).args(args).output().unwrap();
    assert!(out.status.success(), "cmh {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn analyze(run: &Path, json: &Path) -> Output {
    Command::new(python().unwrap())
        .arg(repo().join("scripts/analyze_codes.py"))
        .arg(run)
        .arg("--json")
        .arg(json)
        .output()
        .unwrap()
}

/// Two modalities of class-structured features (class centre + noise), 8 classes, 240 items:
/// 40 queries, database = training set = 200 items, random class embeddings for SeGH.
fn write_bundle(dir: &Path) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let (n, c) = (240, 8);
    let cls: Vec<usize> = (0..n).map(|i| (i * 5 + i / 7) % c).collect();
    let mut features = |d: usize| {
        let centres = Array2::from_shape_fn((c, d), |_| rng.gen_range(-1.0f32..1.0));
        Array2::from_shape_fn((n, d), |(i, j)| centres[[cls[i], j]] + 0.6 * rng.gen_range(-1.0f32..1.0))
    };
    let (x_img, x_txt) = (features(12), features(20));
    let emb = Array2::from_shape_fn((c, 6), |_| rng.gen_range(-1.0f32..1.0));
    BundleWriter {
        name: "analyze-test".into(),
        source: "synthetic (tests/analyze_codes.rs)".into(),
        classes: (0..c).map(|k| format!("class-{k}")).collect(),
        modalities: vec![
            NewModality { name: "image".into(), features: Some(x_img), ..Default::default() },
            NewModality { name: "text".into(), features: Some(x_txt), ..Default::default() },
        ],
        labels: vec![one_hot(&cls, c)],
        class_embeddings: Some((emb, "random test vectors".into())),
        split: Some(FixedSplit { train: (40..n).collect(), query: (0..40).collect(), database: (40..n).collect() }),
        ..Default::default()
    }
    .write(dir, false)
    .unwrap();
}

#[test]
fn analyze_codes_agrees_with_cmh_eval_and_reencodes_the_codes() {
    if python().is_none() {
        eprintln!("skipped: no .venv (run scripts/setup.sh)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let bundle = d.path().join("bundle");
    write_bundle(&bundle);
    let runs = d.path().join("runs");
    let small: &[(&str, &[&str])] = &[
        ("sch", &["anchors=60"]),
        ("cca-itq", &["anchors=60"]),
        ("segh", &["k=5", "anchors=60"]),
        ("sdch", &["epochs=3", "hidden=[32]", "feature_dim=16"]),
    ];
    for (method, params) in small {
        let out = runs.join(method);
        let mut args = vec!["train", "--method", method, "--data", bundle.to_str().unwrap(), "--bits", "16", "--topk", "15"];
        args.extend(["--device", "cpu", "--quiet", "--out", out.to_str().unwrap()]);
        for p in params.iter() {
            args.extend(["--param", p]);
        }
        cmh(&args);
    }
    let json = d.path().join("analysis.json");
    let out = analyze(&runs, &json);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "analyze_codes.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["failures"], 0);
    let results = v["runs"].as_object().unwrap();
    assert_eq!(results.len(), small.len(), "{stdout}");

    for (method, _) in small {
        let rel = format!("{method}/bits16-seed0");
        let r = &results[&rel];
        let run = runs.join(&rel);
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
        // SCH, SeGH and SDCH learn B (database = training set): i2t / t2i search B. CCA-ITQ learns
        // none: its two conventions coincide.
        let learned = *method != "cca-itq";
        assert_eq!(report["database_convention"], if learned { "learned-B" } else { "encoded" }, "{method}");
        for (key, query, db) in [
            ("i2t", "query_image", if learned { "train_B" } else { "db_text" }),
            ("t2i", "query_text", if learned { "train_B" } else { "db_image" }),
            ("i2t_encoded", "query_image", "db_text"),
            ("t2i_encoded", "query_text", "db_image"),
        ] {
            let f = |s: &str| run.join(format!("{s}.npy")).to_str().unwrap().to_string();
            let e = cmh(&[
                "eval", "--query-codes", &f(query), "--db-codes", &f(db), "--query-labels", &f("query_labels"), "--db-labels", &f("db_labels"),
                "--topk", "15", "--json",
            ]);
            let e: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
            let py = &r["map"][key];
            for (a, b) in [("map", "map"), ("map@k", "map@k")] {
                let (x, y) = (py[a].as_f64().unwrap(), e[b].as_f64().unwrap());
                assert!((x - y).abs() < 1e-9, "{method} {key} {a}: script {x} vs cmh eval {y}");
            }
            assert_eq!(py["excluded_queries"], e["excluded_queries"], "{method} {key}");
        }
        // The numpy re-encoding reproduced all four exported code sets.
        let enc = r["encode"].as_object().unwrap();
        assert_eq!(enc.len(), 4, "{method}: {enc:?}");
        for (k, e) in enc {
            assert_eq!(e["not_at_a_tie"], 0, "{method} {k}");
        }
        // Statistics are plausible: 200 database codes of 16 bits.
        let s = &r["stats"]["db_text"];
        assert_eq!(s["n"], 200);
        assert!(s["distinct_codes"].as_u64().unwrap() >= 1 && s["largest_bucket"].as_u64().unwrap() <= 200);
    }

    check_sch_t2i_analysis(&runs.join("sch"), d.path());

    // The checks can fail: a report figure off by 1e-7, and a tampered hash function.
    let sch = runs.join("sch/bits16-seed0");
    let rp = sch.join("report.json");
    let mut report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&rp).unwrap()).unwrap();
    let original = std::fs::read_to_string(&rp).unwrap();
    report["t2i_encoded"]["map"] = serde_json::json!(report["t2i_encoded"]["map"].as_f64().unwrap() + 1e-7);
    std::fs::write(&rp, serde_json::to_string(&report).unwrap()).unwrap();
    let out = analyze(&sch, &json);
    assert_eq!(out.status.code(), Some(1), "a report off by 1e-7 must fail");
    assert!(String::from_utf8_lossy(&out.stdout).contains("MISMATCH"));
    std::fs::write(&rp, original).unwrap();
    assert!(analyze(&sch, &json).status.success());
    // Negate the first column of R: bit 0 of every re-encoded item flips.
    let py = python().unwrap();
    let r_npy = sch.join("model/R.npy");
    let st = Command::new(&py)
        .args(["-c", "import numpy as np, sys; r = np.load(sys.argv[1]); r[:, 0] *= -1; np.save(sys.argv[1], r)"])
        .arg(&r_npy)
        .status()
        .unwrap();
    assert!(st.success());
    let out = analyze(&sch, &json);
    assert_eq!(out.status.code(), Some(1), "a tampered model must fail the encode check");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let hard = v["runs"]["."]["encode"]["query_image"]["not_at_a_tie"].as_u64().unwrap();
    assert!(hard >= 30, "bit 0 of ~40 queries should differ, found {hard}");
}

/// `scripts/sch_t2i_analysis.py` on a small SCH run: its learned-B text→image mAP is report.json's,
/// the per-class-code database gives the same figure whenever B is one code per class, the shares
/// are shares, and multi-label runs are refused.
fn check_sch_t2i_analysis(sch_runs: &Path, tmp: &Path) {
    let json = tmp.join("t2i.json");
    let run_analysis = || {
        Command::new(python().unwrap())
            .arg(repo().join("scripts/sch_t2i_analysis.py"))
            .arg(sch_runs)
            .args(["--designs", "3", "--json"])
            .arg(&json)
            .output()
            .unwrap()
    };
    let out = run_analysis();
    assert!(out.status.success(), "sch_t2i_analysis.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = v.as_object().unwrap();
    assert_eq!(runs.len(), 1);
    let (run, r) = runs.iter().next().unwrap();
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(Path::new(run).join("report.json")).unwrap()).unwrap();
    let f = |k: &str| r[k].as_f64().unwrap();
    assert!((f("t2i_B") - report["t2i"]["map"].as_f64().unwrap()).abs() < 1e-9, "{r}");
    for k in ["purity", "acc", "tied_top", "t2i_real", "sim_actual", "sim_random_mean", "sim_random_max"] {
        assert!((0.0..=1.0).contains(&f(k)), "{k}: {r}");
    }
    assert!(f("sim_random_max") >= f("sim_random_mean"), "{r}");
    if f("purity") == 1.0 {
        assert!((f("t2i_classB") - f("t2i_B")).abs() < 1e-12, "B is one code per class: {r}");
    }
    // A second label on one database row: refused, naming the run.
    let labels = Path::new(run).join("db_labels.npy");
    let original = std::fs::read(&labels).unwrap();
    let st = Command::new(python().unwrap())
        .args(["-c", "import numpy as np, sys; l = np.load(sys.argv[1]); l[0, :] = 1; np.save(sys.argv[1], l)"])
        .arg(&labels)
        .status()
        .unwrap();
    assert!(st.success());
    let out = run_analysis();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("multi-label"), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&labels, original).unwrap();
}
