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
    // Zero-shot methods need class embeddings; the others ignore them.
    let embeddings = Array2::from_shape_fn((4, 3), |(c, j)| ((c * 3 + j) % 5) as f32 * 0.3 + 0.1);
    four_class_bundle(&dir.join("b"), "failure", feat(12, 1).into(), feat(10, 2), Some(embeddings), n / 5)
}

/// A two-modality bundle of items labelled `i % 4` (the first `q` items are the queries, the rest
/// train and form the database); the image modality holds features or raw images.
fn four_class_bundle(path: &Path, name: &str, image: ImageInput, text: Array2<f32>, embeddings: Option<Array2<f32>>, q: usize) -> PathBuf {
    let n = text.nrows();
    let cls: Vec<usize> = (0..n).map(|i| i % 4).collect();
    let image = match image {
        ImageInput::Features(f) => NewModality { name: "image".into(), features: Some(f), ..Default::default() },
        ImageInput::Raw(im) => NewModality { name: "image".into(), images: Some(im), ..Default::default() },
    };
    BundleWriter {
        name: name.into(),
        source: "test".into(),
        classes: (0..4).map(|c| format!("c{c}")).collect(),
        modalities: vec![image, NewModality { name: "text".into(), features: Some(text), ..Default::default() }],
        labels: vec![one_hot(&cls, 4)],
        class_embeddings: embeddings.map(|e| (e, "test".into())),
        split: Some(FixedSplit { train: (q..n).collect(), query: (0..q).collect(), database: (q..n).collect() }),
        ..Default::default()
    }
    .write(path, false)
    .unwrap();
    path.to_path_buf()
}

enum ImageInput {
    Features(Array2<f32>),
    Raw(ndarray::Array4<u8>),
}

impl From<Array2<f32>> for ImageInput {
    fn from(f: Array2<f32>) -> Self {
        ImageInput::Features(f)
    }
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

/// Trains `method` (tiny settings `params`, many mini-batches per epoch) to the end, and again
/// stopped by SIGTERM within its first epoch, then resumed: exit 130, a checkpoint, no result of
/// the unfinished run, and after the resume the same codes as the uninterrupted run.
fn sigterm_mid_epoch_then_resume(method: &str, params: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), 2500);
    let train = |out: &str| -> Vec<String> {
        let mut a: Vec<String> = [
            "--threads",
            "1",
            "train",
            "--method",
            method,
            "--data",
            b.to_str().unwrap(),
            "--bits",
            "16",
            "--device",
            "cpu",
            "--out",
            out,
            "-q",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for p in params {
            a.extend(["--param".to_string(), p.to_string()]);
        }
        a
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
    // AgNet learns no training codes of its own (no train_B.npy).
    for f in ["query_image.npy", "query_text.npy", "db_image.npy", "train_B.npy"] {
        if f == "train_B.npy" && !d.path().join("full/bits16-seed0").join(f).exists() {
            assert_eq!(method, "agnet", "{method} wrote no {f}");
            continue;
        }
        let a = std::fs::read(d.path().join("full/bits16-seed0").join(f)).unwrap();
        let b = std::fs::read(d.path().join("stopped/bits16-seed0").join(f)).unwrap();
        assert!(a == b, "{f} differs after the resume");
    }
    // The finished run's checkpoint is gone; its log stays.
    assert!(!d.path().join("stopped/checkpoints/bits16-seed0/checkpoint.safetensors").exists());
    assert!(d.path().join("stopped/checkpoints/bits16-seed0/train.log").is_file());
}

#[test]
fn sigterm_during_training_checkpoints_exits_130_and_resumes_to_the_same_codes() {
    sigterm_mid_epoch_then_resume("sdch", &["epochs=3", "batch_size=2", "hidden=[128]", "feature_dim=16", "dropout=0.2"]);
}

#[test]
fn sigterm_during_agnet_training_checkpoints_exits_130_and_resumes_to_the_same_codes() {
    sigterm_mid_epoch_then_resume("agnet", &["epochs=3", "batch_size=2", "hidden=[32]", "dropout=0.2"]);
}

#[test]
fn sigterm_during_czhash_training_checkpoints_exits_130_and_resumes_to_the_same_codes() {
    sigterm_mid_epoch_then_resume("czhash", &["epochs=3", "batch_size=2", "hidden=[32]", "dropout=0.2"]);
}

/// Inputs of the `cmh data` commands, written into `d`: a bundle, a generic `.mat` release (by the
/// venv's scipy), item texts and GloVe-format word vectors of the bundle's class names. `None`
/// (with a notice) where no Python with scipy is at hand.
fn data_inputs(d: &Path, n: usize) -> Option<PathBuf> {
    let b = bundle(d, 60);
    let texts: Vec<String> = (0..60).map(|i| format!("item {i} of class c{}", i % 4)).collect();
    std::fs::write(d.join("texts.json"), serde_json::to_string(&texts).unwrap()).unwrap();
    let glove: String = (0..4).map(|c| format!("c{c} {} {} 0.5 0.25 1\n", c as f32 * 0.25, 1.0 - c as f32 * 0.2)).collect();
    std::fs::write(d.join("glove.txt"), glove).unwrap();
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = format!(
        "import numpy as np, scipy.io\nn = {n}\nr = np.random.default_rng(0)\n\
         scipy.io.savemat('data.mat', {{'img': r.random((n, 40)), 'txt': r.random((n, 30)), 'lab': (np.arange(n) % 4 + 1).reshape(n, 1).astype(float)}})\n"
    );
    match std::process::Command::new(&python).current_dir(d).args(["-c", &script]).output() {
        Ok(o) if o.status.success() => Some(b),
        other => {
            eprintln!("SKIPPED data-command failure test: no Python with scipy at {} ({other:?})", python.display());
            None
        }
    }
}

/// The `cmh data` commands that write a bundle, with `out` as their output; `embed-text` only
/// where the MiniLM wheel is installed (`minilm`).
fn data_commands(bs: &str, out: &str, minilm: bool) -> Vec<Vec<String>> {
    let mut cmds: Vec<Vec<&str>> = vec![
        vec![
            "data",
            "convert",
            "--format",
            "generic",
            "--input",
            "data.mat",
            "--key",
            "image=img",
            "--key",
            "text=txt",
            "--key",
            "labels=lab",
            "--out",
            out,
        ],
        vec!["data", "split", bs, "--validation", "--out", out],
    ];
    if minilm {
        cmds.push(vec!["data", "embed-text", bs, "--minilm", "--texts", "texts.json", "--cache", "minilm-cache", "--out", out, "-q"]);
    }
    cmds.into_iter().map(|c| c.into_iter().map(String::from).collect()).collect()
}

/// Whether `cmh data embed-text` can run here (the MiniLM wheel is installed); prints a notice if not.
fn minilm_available(d: &Path, bs: &str) -> bool {
    let o = common::cmh()
        .current_dir(d)
        .args([
            "--threads",
            "1",
            "data",
            "embed-text",
            bs,
            "--minilm",
            "--texts",
            "texts.json",
            "--cache",
            "minilm-cache",
            "--out",
            "probe",
            "-q",
        ])
        .output()
        .unwrap();
    if !o.status.success() {
        eprintln!("SKIPPED data embed-text failure cases: {}", stderr(&o));
    }
    o.status.success()
}

#[test]
fn data_commands_with_an_unwritable_output_a_full_disk_or_sigterm_leave_no_partial_bundle() {
    let d = tempfile::tempdir().unwrap();
    let Some(b) = data_inputs(d.path(), 3000) else { return };
    let bs = b.to_str().unwrap().to_string();
    let minilm = minilm_available(d.path(), &bs);
    let commands = |out: &str| data_commands(&bs, out, minilm);
    unwritable_outputs_fail_cleanly(d.path(), &commands);
    // Split files of 60 items are smaller than the larger limit.
    full_disk_leaves_no_output(d.path(), &commands, &[600, 20_000], |args, limit| args[1] == "split" && limit > 600);
    // `data embed-classes` rewrites the bundle in place: a failed write leaves it as it was.
    let manifest = std::fs::read(b.join("bundle.json")).unwrap();
    let o = with_disk_of(&["data", "embed-classes", &bs, "--glove", "glove.txt"], d.path(), 100);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert_eq!(std::fs::read(b.join("bundle.json")).unwrap(), manifest, "bundle.json changed by a failed write");
    assert_eq!(cmh::bundle::Bundle::load(&b).unwrap().class_embeddings.unwrap().dim(), (4, 3), "the bundle's own embeddings");
    assert_only_complete_files(&b);
    let ok = common::cmh().current_dir(d.path()).args(["data", "embed-classes", &bs, "--glove", "glove.txt"]).output().unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(cmh::bundle::Bundle::load(&b).unwrap().class_embeddings.unwrap().dim(), (4, 5));
    sigterm_leaves_a_complete_bundle_or_none(d.path(), &commands, &[30, 150, 400]);
}

/// A `.partial-` folder of a killed `data split` / `data embed-text` (its process gone) is removed
/// by the next run for the same output; those of other outputs stay.
#[test]
fn leftovers_of_killed_data_commands_are_removed_by_the_next_run() {
    let d = tempfile::tempdir().unwrap();
    let Some(b) = data_inputs(d.path(), 100) else { return };
    let bs = b.to_str().unwrap().to_string();
    let minilm = minilm_available(d.path(), &bs);
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let mut cases = vec![("validation", vec!["data", "split", bs.as_str(), "--validation", "--out", "valid"])];
    if minilm {
        cases.push((
            "embed-text",
            vec!["data", "embed-text", bs.as_str(), "--minilm", "--texts", "texts.json", "--cache", "minilm-cache", "--out", "valid", "-q"],
        ));
    }
    for (what, args) in cases {
        let _ = std::fs::remove_dir_all(d.path().join("valid"));
        let stale = d.path().join(format!(".partial-{what}-valid-{dead_pid}-x1"));
        let other = d.path().join(format!(".partial-{what}-other-{dead_pid}-x2"));
        std::fs::create_dir_all(stale.join("inner")).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let o = common::cmh().current_dir(d.path()).args(&args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert!(!stale.exists(), "{args:?}: the killed run's {} is still there", stale.display());
        assert!(other.exists(), "{args:?}: another output's folder was removed");
        let left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with(&format!(".partial-{what}-valid-")))
            .collect();
        assert!(left.is_empty(), "{args:?}: {left:?}");
        std::fs::remove_dir_all(&other).unwrap();
    }
}

/// A bundle whose image modality holds raw images (what `cmh features` reads).
fn image_bundle(dir: &Path, n: usize) -> PathBuf {
    let images = ndarray::Array4::from_shape_fn((n, 64, 64, 3), |(i, y, x, c)| ((i * 37 + y * 3 + x * 5 + c * 71) % 256) as u8);
    let text = Array2::from_shape_fn((n, 6), |(i, j)| ((i % 4) * j) as f32 * 0.5 + (i % 3) as f32);
    four_class_bundle(&dir.join("imgs"), "images", ImageInput::Raw(images), text, None, n / 4)
}

/// AlexNet weights with torchvision's parameter names and shapes (random values), as `cmh features`
/// reads them.
fn alexnet_weights(dir: &Path) -> PathBuf {
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _net = cmh::deep::alexnet::AlexNet::new(&vs.root(), 1000);
    let p = dir.join("alexnet.safetensors");
    vs.save(&p).unwrap();
    p
}

/// `cmh features` and `cmh data emoji` (the latter where its npm packages are at hand): an
/// unwritable output, a full disk and SIGTERM leave no partial bundle under the final name.
#[test]
fn features_and_emoji_with_an_unwritable_output_a_full_disk_or_sigterm_leave_no_partial_bundle() {
    let d = tempfile::tempdir().unwrap();
    image_bundle(d.path(), 24);
    alexnet_weights(d.path());
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("emoji-npm-cache");
    let cache = cache.to_str().unwrap().to_string();
    let features = |out: &str| -> Vec<String> {
        [
            "features",
            "--weights",
            "alexnet.safetensors",
            "--data",
            "imgs",
            "--size",
            "64",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--out",
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let emoji = |out: &str| -> Vec<String> {
        ["data", "emoji", out, "--cache", cache.as_str(), "--no-class-embeddings"].iter().map(|s| s.to_string()).collect()
    };
    // Both commands work here (emoji: skipped with a notice where its packages cannot be had).
    let ok = common::cmh().current_dir(d.path()).args(features("ok-features")).output().unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(
        cmh::bundle::Bundle::load(&d.path().join("ok-features")).unwrap().modalities[0].features.as_ref().unwrap().dim(),
        (24, 4096)
    );
    let ok = common::cmh().current_dir(d.path()).args(emoji("ok-emoji")).output().unwrap();
    let emoji_ok = ok.status.success();
    if !emoji_ok {
        eprintln!("SKIPPED the data emoji part: {}", stderr(&ok));
    }
    let commands = |out: &str| if emoji_ok { vec![features(out), emoji(out)] } else { vec![features(out)] };
    unwritable_outputs_fail_cleanly(d.path(), &commands);
    // The feature matrix alone is 24 × 4096 × 4 bytes.
    full_disk_leaves_no_output(d.path(), &commands, &[600, 100_000], |_, _| false);
    sigterm_leaves_a_complete_bundle_or_none(d.path(), &commands, &[100, 600, 1500]);
}

/// Each command of `commands(OUT)` with an unwritable OUT: exit status 1, no panic, and an error
/// line naming the output.
fn unwritable_outputs_fail_cleanly(d: &Path, commands: &dyn Fn(&str) -> Vec<Vec<String>>) {
    std::fs::write(d.join("a_file"), "x").unwrap();
    for out in ["/proc/cmh-unwritable/out", "a_file/out"] {
        for args in commands(out) {
            let o = common::cmh().current_dir(d).args(&args).output().unwrap();
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{args:?}: {err}"));
            assert!(line.contains("a_file") || line.contains("/proc"), "{args:?}: {line}");
        }
    }
    assert_eq!(std::fs::read_to_string(d.join("a_file")).unwrap(), "x");
}

/// Each command of `commands(OUT)` where every write past `limit` bytes fails (a full disk): exit
/// status 1, no panic, nothing under OUT and no partial file anywhere (`skip(args, limit)` leaves
/// out commands whose output is smaller than the limit).
fn full_disk_leaves_no_output(
    d: &Path,
    commands: &dyn Fn(&str) -> Vec<Vec<String>>,
    limits: &[u64],
    skip: impl Fn(&[String], u64) -> bool,
) {
    for &limit in limits {
        let out = format!("full{limit}");
        for args in commands(&out) {
            if skip(&args, limit) {
                continue;
            }
            let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            let o = with_disk_of(&args, d, limit);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{args:?} limit {limit}: {err}");
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            assert!(!d.join(&out).exists(), "{args:?} limit {limit}: {out} exists after a failed write");
            assert_only_complete_files(d);
        }
    }
}

/// SIGTERM after each of `delays_ms` to each command of `commands(OUT)`: OUT is a complete bundle
/// or absent, and no partial file is left (a later run for the same output removes what a killed
/// one left beside it).
fn sigterm_leaves_a_complete_bundle_or_none(d: &Path, commands: &dyn Fn(&str) -> Vec<Vec<String>>, delays_ms: &[u64]) {
    for (i, delay_ms) in delays_ms.iter().enumerate() {
        for c in 0..commands("x").len() {
            let out = format!("term{i}-{c}");
            let args = commands(&out).swap_remove(c);
            let mut child = common::cmh().current_dir(d).arg("--threads").arg("1").args(&args).stderr(Stdio::null()).spawn().unwrap();
            std::thread::sleep(Duration::from_millis(*delay_ms));
            // SAFETY: kill(2) with a child's pid and a signal number has no memory effects.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            child.wait().unwrap();
            assert_only_complete_files(d);
            let out_path = d.join(&out);
            if out_path.exists() {
                cmh::bundle::Bundle::load(&out_path).unwrap_or_else(|e| panic!("{args:?}: partial bundle under the final name: {e:#}"));
            }
        }
    }
}
