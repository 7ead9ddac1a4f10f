//! Failure behaviour (docs/failure.md): an output that cannot be written, a full disk and a
//! SIGTERM in the middle of writing or training never leave a partial file under a final name;
//! a training stopped by SIGTERM checkpoints, exits 130 and resumes to the same codes.

mod common;

use cmh::bundle::{one_hot, BundleWriter, FixedSplit, NewModality};
use cmh::npy::write_npy;
use ndarray::Array2;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

fn bundle(dir: &Path, n: usize) -> PathBuf {
    let cls: Vec<usize> = (0..n).map(|i| i % 4).collect();
    let feat =
        |d: usize, s: usize| Array2::from_shape_fn((n, d), |(i, j)| (((i * 13 + j * 7 + s) % 17) as f32) * 0.1 + (cls[i] * (j % 3)) as f32);
    let q = n / 5;
    let path = dir.join("b");
    BundleWriter {
        name: "failure".into(),
        source: "test".into(),
        classes: (0..4).map(|c| format!("c{c}")).collect(),
        modalities: vec![
            NewModality { name: "image".into(), features: Some(feat(12, 1)), ..Default::default() },
            NewModality { name: "text".into(), features: Some(feat(10, 2)), ..Default::default() },
        ],
        labels: vec![one_hot(&cls, 4)],
        split: Some(FixedSplit { train: (q..n).collect(), query: (0..q).collect(), database: (q..n).collect() }),
        ..Default::default()
    }
    .write(&path, false)
    .unwrap();
    path
}

fn codes(n: usize, bits: usize, seed: usize) -> Array2<i8> {
    Array2::from_shape_fn((n, bits), |(i, j)| if (i.wrapping_mul(2654435761) ^ (j * 40503 + seed)) % 5 < 2 { 1 } else { -1 })
}

/// Every file under `dir`: `.npy` files read back whole, `.json` files parse, and no temporary
/// file or `.partial-` folder of cmh's atomic writes is left under a final name.
fn assert_only_complete_files(dir: &Path) {
    if !dir.exists() {
        return;
    }
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            // A `.partial-` folder is a run being written: not under its final name.
            if !name.starts_with(".partial-") {
                assert_only_complete_files(&p);
            }
        } else if name.starts_with('.') {
            // Temporary names of atomic writes (".NAME.XXXX.tmp") and the folder marker.
            assert!(name.ends_with(".tmp") || name == cmh::outdir::MARKER, "{}", p.display());
        } else if name.ends_with(".npy") {
            cmh::npy::read_npy(&p).unwrap_or_else(|e| panic!("partial file under a final name: {e:#}"));
        } else if name.ends_with(".json") {
            let text = std::fs::read_to_string(&p).unwrap();
            serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|e| panic!("{}: partial JSON ({e})", p.display()));
        } else if name.ends_with(".ndjson") {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.ends_with('\n'), "{}: partial last line", p.display());
            for line in text.lines() {
                serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{}: partial JSON line ({e})", p.display()));
            }
        } else if name.ends_with(".cmhidx") {
            cmh::search::mih::MihIndex::open(&p).unwrap_or_else(|e| panic!("partial index under a final name: {e:#}"));
        }
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn every_command_with_an_unwritable_output_fails_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), 60);
    let bs = b.to_str().unwrap();
    write_npy(&d.path().join("q.npy"), &codes(5, 16, 1)).unwrap();
    write_npy(&d.path().join("db.npy"), &codes(40, 16, 2)).unwrap();
    write_npy(&d.path().join("ql.npy"), &one_hot(&[0, 1, 2, 3, 0], 4)).unwrap();
    write_npy(&d.path().join("dl.npy"), &one_hot(&(0..40).map(|i| i % 4).collect::<Vec<_>>(), 4)).unwrap();
    write_npy(&d.path().join("x.npy"), &Array2::<f32>::ones((3, 10))).unwrap();
    let ok = common::cmh()
        .current_dir(d.path())
        .args(["train", "--method", "random", "--data", bs, "--bits", "8", "--out", "model_run", "-q"])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    let ok =
        common::cmh().current_dir(d.path()).args(["index", "build", "--codes", "db.npy", "--out", "db.cmhidx", "-q"]).output().unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    std::fs::write(d.path().join("a_file"), "x").unwrap();
    // As root nothing is read-only, but no one can create folders in /proc or under a file.
    for out in ["/proc/cmh-unwritable/out", "a_file/out"] {
        let commands: Vec<Vec<&str>> = vec![
            vec!["train", "--method", "random", "--data", bs, "--bits", "8", "--out", out, "-q"],
            vec!["search", "--db", "db.npy", "--query", "q.npy", "-k", "3", "--out", out],
            vec!["search", "--db", "db.npy", "--query", "q.npy", "--radius", "3", "--out", out],
            vec!["encode", "--model", "model_run/bits8-seed0/model", "--modality", "text", "--features", "x.npy", "--out", out],
            vec![
                "eval",
                "--query-codes",
                "q.npy",
                "--db-codes",
                "db.npy",
                "--query-labels",
                "ql.npy",
                "--db-labels",
                "dl.npy",
                "--plot",
                out,
            ],
            vec!["demo", "--data", bs, "--methods", "random", "--bits", "8", "--out", out, "-q"],
            vec!["search", "--index", "db.cmhidx", "--query", "q.npy", "-k", "3", "--out", out],
            vec!["index", "build", "--codes", "db.npy", "--out", out, "-q"],
            vec!["export", "faiss", "--codes", "db.npy", "--out", out],
            vec!["export", "faiss", "--codes", "db.npy", "--ivf", "2", "--out", out],
            vec!["export", "milvus", "--codes", "db.npy", "--labels", "dl.npy", "--out", out],
            vec!["export", "elasticsearch", "--codes", "db.npy", "--out", out],
            vec!["export", "opensearch", "--codes", "db.npy", "--out", out],
            vec!["tune", "--method", "cca-itq", "--data", bs, "--bits", "8", "--budget", "1", "--param", "anchors=20", "--out", out, "-q"],
            vec!["data", "split", bs, "--validation", "--out", out],
        ];
        for args in commands {
            let o = common::cmh().current_dir(d.path()).args(&args).output().unwrap();
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{args:?}: {err}"));
            assert!(
                line.contains(out.split('/').next_back().unwrap())
                    || line.contains(out)
                    || line.contains("a_file")
                    || line.contains("/proc"),
                "{args:?}: {line}"
            );
        }
    }
    assert_eq!(std::fs::read_to_string(d.path().join("a_file")).unwrap(), "x");
}

/// Runs cmh with a file-size limit: writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored),
/// as on a full disk.
fn with_disk_of(args: &[&str], dir: &Path, limit: u64) -> Output {
    let mut cmd = common::cmh();
    cmd.current_dir(dir).args(args);
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[test]
fn a_full_disk_leaves_no_partial_file_under_a_final_name() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), 400);
    write_npy(&d.path().join("q.npy"), &codes(300, 64, 1)).unwrap();
    write_npy(&d.path().join("db.npy"), &codes(2000, 64, 2)).unwrap();
    for limit in [600u64, 3000, 20_000] {
        let run = format!("run{limit}");
        let o = with_disk_of(
            &["train", "--method", "random", "--data", b.to_str().unwrap(), "--bits", "8,16", "--out", &run, "-q"],
            d.path(),
            limit,
        );
        assert_eq!(o.status.code(), Some(1), "limit {limit}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
        assert_only_complete_files(&d.path().join(&run));
        assert!(!d.path().join(&run).join("report.json").exists());
        let res = format!("res{limit}");
        let o = with_disk_of(&["search", "--db", "db.npy", "--query", "q.npy", "-k", "50", "--out", &res], d.path(), limit);
        assert_eq!(o.status.code(), Some(1), "limit {limit}: {}", stderr(&o));
        assert!(stderr(&o).contains(".npy"), "{}", stderr(&o));
        assert_only_complete_files(&d.path().join(&res));
        assert!(!d.path().join(&res).join("distances.npy").exists());
    }
    // Index, exports, encode, tune and validation split, each writing past the limit.
    write_npy(&d.path().join("x.npy"), &Array2::<f32>::from_shape_fn((400, 10), |(i, j)| ((i * 7 + j) % 13) as f32)).unwrap();
    write_npy(&d.path().join("dl.npy"), &one_hot(&(0..2000).map(|i| i % 4).collect::<Vec<_>>(), 4)).unwrap();
    let ok = common::cmh()
        .current_dir(d.path())
        .args(["train", "--method", "random", "--data", b.to_str().unwrap(), "--bits", "64", "--out", "m", "-q"])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    let bs = b.to_str().unwrap();
    for limit in [600u64, 3000] {
        let o = |name: &str| format!("{name}{limit}");
        let cases: Vec<(Vec<String>, Vec<String>)> = vec![
            (
                vec!["index".into(), "build".into(), "--codes".into(), "db.npy".into(), "--out".into(), o("db.cmhidx"), "-q".into()],
                vec![o("db.cmhidx")],
            ),
            (
                vec!["export".into(), "faiss".into(), "--codes".into(), "db.npy".into(), "--out".into(), o("flat.faiss")],
                vec![o("flat.faiss")],
            ),
            (
                vec![
                    "export".into(),
                    "milvus".into(),
                    "--codes".into(),
                    "db.npy".into(),
                    "--labels".into(),
                    "dl.npy".into(),
                    "--out".into(),
                    o("rows.json"),
                ],
                vec![o("rows.json")],
            ),
            (
                vec!["export".into(), "opensearch".into(), "--codes".into(), "db.npy".into(), "--out".into(), o("bulk.ndjson")],
                vec![o("bulk.ndjson")],
            ),
            (
                ["encode", "--model", "m/bits64-seed0/model", "--modality", "text", "--features", "x.npy", "--out"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([o("enc/codes")])
                    .collect(),
                vec![o("enc/codes.npy"), o("enc/codes_packed.npy")],
            ),
            (
                ["tune", "--method", "cca-itq", "--data", bs, "--bits", "8", "--budget", "2", "--param", "anchors=20", "-q", "--out"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([o("tune")])
                    .collect(),
                vec![o("tune/best.toml")],
            ),
            (["data", "split", bs, "--validation", "--out"].iter().map(|s| s.to_string()).chain([o("valid")]).collect(), vec![o("valid")]),
        ];
        for (args, finals) in cases {
            if (args[0] == "tune" || args[0] == "data") && limit > 600 {
                continue; // their files (a 2-trial search, split indices) are smaller than that
            }
            let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            let out = with_disk_of(&args, d.path(), limit);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{args:?} limit {limit}: {err}");
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            for f in finals {
                assert!(!d.path().join(&f).exists(), "{args:?}: {f} exists after a failed write");
            }
            assert_only_complete_files(d.path());
        }
    }
    // An injected writer error inside the library: nothing under the final name, no temporary file.
    let target = d.path().join("inj/out.npy");
    let e = cmh::npy::write_atomic(&target, |w| {
        use std::io::Write;
        w.write_all(&[0u8; 4096])?;
        Err(anyhow::anyhow!("injected: no space left on device"))
    })
    .unwrap_err();
    assert!(format!("{e:#}").contains("out.npy") && format!("{e:#}").contains("no space left"), "{e:#}");
    assert_eq!(std::fs::read_dir(d.path().join("inj")).unwrap().count(), 0);
}

#[test]
fn sigterm_mid_write_leaves_only_complete_files() {
    let d = tempfile::tempdir().unwrap();
    write_npy(&d.path().join("q.npy"), &codes(2000, 64, 3)).unwrap();
    write_npy(&d.path().join("db.npy"), &codes(20000, 64, 4)).unwrap();
    for (i, delay_ms) in [5u64, 20, 40, 60, 80, 120, 160, 250].iter().enumerate() {
        let out = format!("res{i}");
        let mut child = common::cmh()
            .current_dir(d.path())
            .args(["--threads", "1", "search", "--db", "db.npy", "--query", "q.npy", "-k", "500", "--out", &out])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(*delay_ms));
        // SAFETY: kill(2) with a child's pid and a signal number has no memory effects.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap();
        assert_only_complete_files(&d.path().join(&out));
    }
}

#[test]
fn sigterm_while_indexing_exporting_or_encoding_leaves_only_complete_files() {
    let d = tempfile::tempdir().unwrap();
    write_npy(&d.path().join("db.npy"), &codes(60000, 64, 4)).unwrap();
    let b = bundle(d.path(), 60);
    let ok = common::cmh()
        .current_dir(d.path())
        .args(["train", "--method", "random", "--data", b.to_str().unwrap(), "--bits", "64", "--out", "m", "-q"])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    write_npy(&d.path().join("x.npy"), &Array2::<f32>::from_shape_fn((100000, 10), |(i, j)| ((i * 7 + j) % 13) as f32)).unwrap();
    for (i, delay_ms) in [5u64, 30, 80, 150].iter().enumerate() {
        let out = d.path().join(format!("out{i}"));
        std::fs::create_dir(&out).unwrap();
        let commands: [&[&str]; 4] = [
            &["index", "build", "--codes", "../db.npy", "--out", "db.cmhidx", "-q"],
            &["export", "elasticsearch", "--codes", "../db.npy", "--out", "bulk.ndjson"],
            &["export", "milvus", "--codes", "../db.npy", "--out", "rows.json"],
            &["encode", "--model", "../m/bits64-seed0/model", "--modality", "text", "--features", "../x.npy", "--out", "codes", "-q"],
        ];
        for args in commands {
            let mut child = common::cmh().current_dir(&out).arg("--threads").arg("1").args(args).stderr(Stdio::null()).spawn().unwrap();
            std::thread::sleep(Duration::from_millis(*delay_ms));
            // SAFETY: kill(2) with a child's pid and a signal number has no memory effects.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            child.wait().unwrap();
        }
        assert_only_complete_files(&out);
    }
}

/// Waits for `path` to exist (at most `secs` seconds).
fn wait_for(path: &Path, secs: u64) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn sigterm_during_training_checkpoints_exits_130_and_resumes_to_the_same_codes() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), 2500);
    let train = |out: &str| -> Vec<String> {
        [
            "--threads",
            "1",
            "train",
            "--method",
            "sdch",
            "--data",
            b.to_str().unwrap(),
            "--bits",
            "16",
            "--device",
            "cpu",
            "--out",
            out,
            "-q",
            "--param",
            "epochs=3",
            "--param",
            "batch_size=2",
            "--param",
            "hidden=[128]",
            "--param",
            "feature_dim=16",
            "--param",
            "dropout=0.2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let full = common::cmh().current_dir(d.path()).args(train("full")).output().unwrap();
    assert!(full.status.success(), "{}", stderr(&full));
    let child = common::cmh().current_dir(d.path()).args(train("stopped")).stderr(Stdio::piped()).spawn().unwrap();
    // The training has started once its log exists; stop it within its first epoch.
    assert!(wait_for(&d.path().join("stopped/checkpoints/bits16-seed0/train.log"), 120), "training never started");
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) with a child's pid and a signal number has no memory effects.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted") && err.contains("--resume"), "{err}");
    let ck = cmh::deep::trainer::Checkpoint::load(&d.path().join("stopped/checkpoints/bits16-seed0/checkpoint.safetensors")).unwrap();
    assert!(ck.meta.epoch < 3, "stopped before the end");
    assert!(!d.path().join("stopped/bits16-seed0").exists(), "no result of an unfinished run");
    assert_only_complete_files(&d.path().join("stopped"));
    let resumed = common::cmh().current_dir(d.path()).args(["--threads", "1", "train", "--resume", "stopped", "-q"]).output().unwrap();
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    for f in ["query_image.npy", "query_text.npy", "db_image.npy", "train_B.npy"] {
        let a = std::fs::read(d.path().join("full/bits16-seed0").join(f)).unwrap();
        let b = std::fs::read(d.path().join("stopped/bits16-seed0").join(f)).unwrap();
        assert!(a == b, "{f} differs after the resume");
    }
    // The finished run's checkpoint is gone; its log stays.
    assert!(!d.path().join("stopped/checkpoints/bits16-seed0/checkpoint.safetensors").exists());
    assert!(d.path().join("stopped/checkpoints/bits16-seed0/train.log").is_file());
}
