//! Every reader of files cmh did not write itself, fed mutated valid files: `.npy`, `bundle.json`,
//! `model.json`, checkpoints, `.pth` state dicts and `.mat` files. For each mutation the reader
//! must not panic, must not allocate more than a bound proportional to the file's size, and must
//! either read the file or fail with a message naming it. Case counts keep the whole file to a few
//! seconds (`.mat` reading starts a Python helper per case, so it gets fewer cases).

use cmh::bundle::{one_hot, Bundle, BundleWriter, FixedSplit, NewModality};
use cmh::method::{Fit, FitContext, TrainSet, View};
use ndarray::Array2;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

mod common;

// ------------------------------------------------------------------ allocation accounting

/// The system allocator, counting the bytes live and their peak.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    /// # Safety
    /// The contract of [`GlobalAlloc::alloc`].
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    /// # Safety
    /// The contract of [`GlobalAlloc::dealloc`].
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    /// # Safety
    /// The contract of [`GlobalAlloc::realloc`].
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            if new > l.size() {
                let now = LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The tests of this file measure allocations one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `read`, returning its result and the peak of bytes allocated above what was live before.
fn measured<T>(read: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let r = read();
    (r, PEAK.load(Ordering::SeqCst).saturating_sub(base))
}

// ------------------------------------------------------------------ mutations

/// One edit of a file: (kind, position as a fraction of the length, value).
type Edit = (u8, f64, u64);

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec((0u8..6, 0.0f64..1.0, any::<u64>()), 1..4)
}

/// Applies edits: flip a byte, truncate, insert bytes, overwrite 8 bytes with an extreme integer,
/// replace a run of ASCII digits with an extreme number, or duplicate a slice.
fn mutate(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for &(kind, at, v) in edits {
        let pos = ((b.len() as f64) * at) as usize;
        match kind {
            0 if !b.is_empty() => {
                let i = pos.min(b.len() - 1);
                b[i] ^= (v as u8) | 1;
            }
            1 => b.truncate(pos),
            2 => {
                let extra: Vec<u8> = v.to_le_bytes().iter().copied().take(1 + (v % 8) as usize).collect();
                let i = pos.min(b.len());
                b.splice(i..i, extra);
            }
            3 if b.len() >= 8 => {
                let i = pos.min(b.len() - 8);
                let extreme = [u64::MAX, 0, 1 << 40, v, i64::MAX as u64 + 1][(v % 5) as usize];
                b[i..i + 8].copy_from_slice(&extreme.to_le_bytes());
            }
            4 => {
                // The first digit run at or after pos (JSON numbers, .npy shapes).
                if let Some(start) = (pos..b.len()).find(|&i| b[i].is_ascii_digit()) {
                    let end = (start..b.len()).find(|&i| !b[i].is_ascii_digit()).unwrap_or(b.len());
                    let repl = ["99999999999999999999", "0", "4294967297", "18446744073709551615", "1000000000"][(v % 5) as usize];
                    b.splice(start..end, repl.bytes());
                }
            }
            5 if !b.is_empty() => {
                let i = pos.min(b.len() - 1);
                let len = ((v % 64) as usize).min(b.len() - i);
                let slice = b[i..i + len].to_vec();
                b.splice(i..i, slice);
            }
            _ => {}
        }
    }
    b
}

/// Runs `cases` mutations of `valid` through `check` (which writes the mutated file, reads it and
/// returns the error message, if any, and the bytes allocated). An error must name the file, or
/// one of `also` (a file the mutated one refers to).
fn property(cases: u32, valid: &[u8], file: &Path, also: &[&str], mut check: impl FnMut(&[u8]) -> (Option<String>, usize)) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let check = std::cell::RefCell::new(&mut check);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    runner
        .run(&edits(), |e| {
            let bytes = mutate(valid.to_vec(), &e);
            let (err, allocated) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (check.borrow_mut())(&bytes)))
                .map_err(|_| TestCaseError::fail(format!("{name}: the reader panicked on edits {e:?}")))?;
            let bound = 8 * bytes.len().max(valid.len()) + (4 << 20);
            prop_assert!(allocated <= bound, "{name}: allocated {allocated} bytes for a {}-byte file (edits {e:?})", bytes.len());
            if let Some(msg) = err {
                prop_assert!(
                    msg.contains(&name) || also.iter().any(|a| msg.contains(a)),
                    "{name}: the error does not name the file: {msg} (edits {e:?})"
                );
                prop_assert!(!msg.contains("frame #"), "{name}: a backtrace in the message: {msg}");
            }
            Ok(())
        })
        .unwrap();
}

fn err_of<T>(r: anyhow::Result<T>) -> Option<String> {
    r.err().map(|e| format!("{e:#}"))
}

// ------------------------------------------------------------------ fixtures

fn toy_bundle(dir: &Path) -> PathBuf {
    let n = 24;
    let cls: Vec<usize> = (0..n).map(|i| i % 3).collect();
    let path = dir.join("b");
    BundleWriter {
        name: "toy".into(),
        source: "test".into(),
        classes: vec!["a".into(), "b".into(), "c".into()],
        modalities: vec![
            NewModality {
                name: "image".into(),
                features: Some(Array2::from_shape_fn((n, 4), |(i, j)| (i * 3 + j * cls[i]) as f32 % 7.0)),
                ..Default::default()
            },
            NewModality {
                name: "text".into(),
                features: Some(Array2::from_shape_fn((n, 3), |(i, j)| (i + j * (cls[i] + 1)) as f32 % 5.0)),
                ..Default::default()
            },
        ],
        labels: vec![one_hot(&cls, 3)],
        class_embeddings: Some((Array2::from_shape_fn((3, 2), |(i, j)| (i + 2 * j) as f32 + 1.0), "test".into())),
        split: Some(FixedSplit { train: (6..n).collect(), query: (0..6).collect(), database: (6..n).collect() }),
        ..Default::default()
    }
    .write(&path, false)
    .unwrap();
    path
}

fn toy_train_set(b: &Bundle) -> TrainSet {
    let idx: Vec<usize> = (6..b.n_items()).collect();
    let views = b.modalities.iter().map(|m| View::Features(m.features.as_ref().unwrap().select(ndarray::Axis(0), &idx))).collect();
    let mut t = TrainSet::supervised(views, b.labels[0].select(ndarray::Axis(0), &idx), b.class_names().to_vec());
    t.class_embeddings = b.class_embeddings.clone();
    t
}

// ------------------------------------------------------------------ the readers

#[test]
fn npy_reader_survives_mutated_files() {
    let d = tempfile::tempdir().unwrap();
    let valid_path = d.path().join("valid.npy");
    cmh::npy::write_npy(&valid_path, &Array2::from_shape_fn((12, 7), |(i, j)| (i * 7 + j) as f32)).unwrap();
    let valid = std::fs::read(&valid_path).unwrap();
    let f = d.path().join("mutated.npy");
    property(160, &valid, &f, &[], |bytes| {
        std::fs::write(&f, bytes).unwrap();
        let (r, a) = measured(|| cmh::npy::read_npy(&f));
        (err_of(r), a)
    });
    // Codes as int8 and packed uint8 go through the same reader and the code checks.
    let packed_path = d.path().join("packed.npy");
    cmh::npy::write_npy(&packed_path, &Array2::from_shape_fn((16, 4), |(i, j)| (i * 37 + j * 101) as u8)).unwrap();
    let valid = std::fs::read(&packed_path).unwrap();
    let f = d.path().join("codes.npy");
    property(80, &valid, &f, &[], |bytes| {
        std::fs::write(&f, bytes).unwrap();
        let (r, a) = measured(|| cmh::search::open_codes(&f, None).map(|c| c.view().n));
        (err_of(r), a)
    });
}

#[test]
fn bundle_manifest_reader_survives_mutated_files() {
    let d = tempfile::tempdir().unwrap();
    let b = toy_bundle(d.path());
    let manifest = b.join("bundle.json");
    let valid = std::fs::read(&manifest).unwrap();
    let total: u64 = std::fs::read_dir(&b).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    // Errors about a file the manifest names name that file, inside the bundle folder.
    let inside = format!("{}/", b.display());
    property(120, &valid, &manifest, &[&inside], |bytes| {
        std::fs::write(&manifest, bytes).unwrap();
        let (r, a) = measured(|| Bundle::load(&b).map(|x| x.n_items()));
        (err_of(r), a.saturating_sub(4 * total as usize))
    });
}

#[test]
fn model_description_readers_survive_mutated_files() {
    let d = tempfile::tempdir().unwrap();
    let b = Bundle::load(&toy_bundle(d.path())).unwrap();
    let data = toy_train_set(&b);
    let x = b.modalities[1].features.clone().unwrap();
    // A shallow model (matrices in .npy) and a deep one (networks in safetensors).
    let sch = cmh::shallow::sch::SchParams { anchors: 8, ..Default::default() }.fit(&data, &FitContext::new(8, 1)).unwrap();
    let sdch = cmh::deep::sdch::SdchParams { epochs: 1, hidden: vec![8], feature_dim: 8, batch_size: 8, ..Default::default() }
        .fit(&data, &FitContext { device: cmh::method::DeviceChoice::Cpu, ..FitContext::new(8, 1) })
        .unwrap();
    // The zero-shot methods' own model.json readers (their attribute spaces and heads).
    let cpu = FitContext { device: cmh::method::DeviceChoice::Cpu, ..FitContext::new(8, 1) };
    let agnet = cmh::deep::agnet::AgnetParams { epochs: 1, hidden: vec![8], batch_size: 8, ..Default::default() }.fit(&data, &cpu).unwrap();
    let czhash =
        cmh::deep::czhash::CzhashParams { epochs: 1, hidden: vec![8], batch_size: 8, ..Default::default() }.fit(&data, &cpu).unwrap();
    let models: [(&str, &dyn cmh::method::HashModel); 4] = [("sch", &sch), ("sdch", &sdch), ("agnet", &agnet), ("czhash", &czhash)];
    for (name, model) in models {
        let dir = d.path().join(name);
        model.save(&dir).unwrap();
        let mj = dir.join("model.json");
        let valid = std::fs::read(&mj).unwrap();
        let weights: u64 = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        let inside = format!("{}/", dir.display());
        property(60, &valid, &mj, &[&inside], |bytes| {
            std::fs::write(&mj, bytes).unwrap();
            // A model that still loads must encode or refuse the features, without panicking.
            let (r, a) =
                measured(|| cmh::pipeline::load_model(&dir).map(|m| m.encode(1, &View::Features(x.clone())).map(|c| c.len()).ok()));
            (err_of(r), a.saturating_sub(4 * weights as usize))
        });
    }
}

#[test]
fn checkpoint_reader_survives_mutated_files() {
    let d = tempfile::tempdir().unwrap();
    let b = Bundle::load(&toy_bundle(d.path())).unwrap();
    let data = toy_train_set(&b);
    let ck_dir = d.path().join("ck");
    let ctx = FitContext { device: cmh::method::DeviceChoice::Cpu, checkpoint_dir: Some(ck_dir.clone()), ..FitContext::new(8, 2) };
    cmh::deep::sdch::SdchParams { epochs: 1, hidden: vec![8], feature_dim: 8, batch_size: 8, ..Default::default() }
        .fit(&data, &ctx)
        .unwrap();
    let ck = ck_dir.join(cmh::deep::trainer::CHECKPOINT_FILE);
    let valid = std::fs::read(&ck).unwrap();
    property(120, &valid, &ck, &[], |bytes| {
        std::fs::write(&ck, bytes).unwrap();
        let (r, a) = measured(|| cmh::deep::trainer::Checkpoint::load(&ck).map(|c| c.meta.epoch));
        (err_of(r), a)
    });
}

/// A `torch.save` zip of a two-tensor state dict (2×3 weight, 3-element bias sharing no storage).
fn pth_bytes() -> Vec<u8> {
    use std::io::Write;
    let mut p: Vec<u8> = vec![0x80, 2];
    p.extend(b"ccollections\nOrderedDict\n)R(");
    for (name, key, numel, size, stride) in [("w", "0", 6u8, &[2u8, 3][..], &[3u8, 1][..]), ("b", "1", 3, &[3][..], &[1][..])] {
        p.push(b'X');
        p.extend((name.len() as u32).to_le_bytes());
        p.extend(name.as_bytes());
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00");
        p.extend(key.as_bytes());
        p.extend(b"X\x03\x00\x00\x00cpuK");
        p.push(numel);
        p.extend(b"tQK\x00(");
        for &s in size {
            p.extend([b'K', s]);
        }
        p.extend(b"t(");
        for &s in stride {
            p.extend([b'K', s]);
        }
        p.extend(b"t\x89ccollections\nOrderedDict\n)Rt");
        p.push(b'R');
    }
    p.extend(b"u.");
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", opts).unwrap();
        z.write_all(&p).unwrap();
        z.start_file("archive/byteorder", opts).unwrap();
        z.write_all(b"little").unwrap();
        for (key, n) in [("0", 6), ("1", 3)] {
            z.start_file(format!("archive/data/{key}"), opts).unwrap();
            let data: Vec<u8> = (0..n).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
            z.write_all(&data).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

#[test]
fn pth_reader_survives_mutated_files() {
    let d = tempfile::tempdir().unwrap();
    let valid = pth_bytes();
    let f = d.path().join("state.pth");
    std::fs::write(&f, &valid).unwrap();
    let t = cmh::deep::pth::read_pth(&f).unwrap();
    assert_eq!(t.iter().map(|(n, t)| (n.as_str(), t.size())).collect::<Vec<_>>(), vec![("w", vec![2, 3]), ("b", vec![3])]);
    property(200, &valid, &f, &[], |bytes| {
        std::fs::write(&f, bytes).unwrap();
        let (r, a) = measured(|| cmh::deep::pth::read_pth(&f));
        // What libtorch holds is not counted above: a tensor read back is never larger than the file.
        let tensor_bytes: usize = r.as_ref().map(|t| t.iter().map(|(_, t)| t.numel() * t.kind().elt_size_in_bytes()).sum()).unwrap_or(0);
        assert!(tensor_bytes <= bytes.len(), "tensors of {tensor_bytes} bytes from a {}-byte file", bytes.len());
        (err_of(r), a)
    });
}

#[test]
fn mat_reader_survives_mutated_files() {
    let Some(py) = common::python() else {
        eprintln!("skipped: no .venv (run scripts/setup.sh)");
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("data.mat");
    let code = format!(
        "import numpy as np, scipy.io\nscipy.io.savemat({:?}, {{'X': np.arange(24.0).reshape(6, 4), 'L': np.arange(6).reshape(6, 1) % 3}})",
        f.to_string_lossy()
    );
    let out = std::process::Command::new(py).args(["-c", &code]).output().unwrap();
    if !out.status.success() {
        eprintln!("skipped: scipy unavailable ({})", String::from_utf8_lossy(&out.stderr));
        return;
    }
    let valid = std::fs::read(&f).unwrap();
    let roles: std::collections::BTreeMap<String, Vec<cmh::convert::mat::Candidate>> = [("features", "X"), ("labels", "L")]
        .iter()
        .map(|(r, k)| (r.to_string(), vec![cmh::convert::mat::Candidate { key: k.to_string(), file: None }]))
        .collect();
    property(12, &valid, &f, &[], |bytes| {
        std::fs::write(&f, bytes).unwrap();
        let work = tempfile::tempdir().unwrap();
        let (r, a) = measured(|| {
            cmh::convert::mat::read_roles(std::slice::from_ref(&f), &roles, work.path(), &common::python::ScriptHelpers)
                .map(|m| m.vars.len())
        });
        (err_of(r), a)
    });
}

#[test]
fn index_reader_survives_mutated_files() {
    let d = tempfile::tempdir().unwrap();
    let n = 30;
    let bits = 16;
    let data: Vec<u8> = (0..n * 2).map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(7) as u8).collect();
    let codes = cmh::codes::CodesRef { n, bits, data: &data };
    let f = d.path().join("db.cmhidx");
    let opts = cmh::search::mih::BuildOptions { substrings: Some(2), progress: false };
    cmh::search::mih::build_index_file(codes, &opts, &f).unwrap();
    let valid = std::fs::read(&f).unwrap();
    let queries = cmh::codes::CodesRef { n: 4, bits, data: &data[..8] };
    let exact = cmh::search::topk(queries, codes, 3).unwrap();
    assert_eq!(cmh::search::mih::MihIndex::open(&f).unwrap().topk(queries, 3).unwrap().indices, exact.indices);
    property(150, &valid, &f, &[], |bytes| {
        std::fs::write(&f, bytes).unwrap();
        let (r, a) = measured(|| {
            // An index that opens must answer both kinds of search with database indices.
            cmh::search::mih::MihIndex::open(&f).map(|ix| {
                let top = ix.topk(queries, 3).unwrap();
                assert!(top.indices.iter().all(|&i| (i as usize) < ix.len()), "an index outside the database");
                let within = ix.radius(queries, 3).unwrap();
                assert!(within.iter().flatten().all(|&(i, _)| (i as usize) < ix.len()));
            })
        });
        (err_of(r), a)
    });
    // Header fields whose sizes overflow are refused without laying anything out.
    let mut b = valid.clone();
    for (at, v) in [(16, 1u64 << 62), (32, 1u64 << 60)] {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    std::fs::write(&f, &b).unwrap();
    let e = format!("{:#}", cmh::search::mih::MihIndex::open(&f).unwrap_err());
    assert!(e.contains("db.cmhidx") && e.contains("header"), "{e}");
    // An item id listed twice: results would name the wrong items.
    let ix = cmh::search::mih::MihIndex::open(&{
        std::fs::write(&f, &valid).unwrap();
        f.clone()
    })
    .unwrap();
    drop(ix);
    let mut b = valid.clone();
    let first_table_ids = {
        // Header 64 + 16 × 2 bytes, codes 30 × 2 bytes, offsets 257 u32: each section aligned to 64.
        let al = |x: usize| x.div_ceil(64) * 64;
        al(al(al(64 + 32) + n * 2) + 4 * 257)
    };
    let second = b[first_table_ids + 4..first_table_ids + 8].to_vec();
    b[first_table_ids..first_table_ids + 4].copy_from_slice(&second);
    std::fs::write(&f, &b).unwrap();
    let e = format!("{:#}", cmh::search::mih::MihIndex::open(&f).unwrap_err());
    assert!(e.contains("db.cmhidx") && e.contains("table 0") && e.contains("repeated"), "{e}");
}

#[test]
fn streamed_and_mapped_feature_readers_survive_mutated_files() {
    let d = tempfile::tempdir().unwrap();
    let b = toy_bundle(d.path());
    let bundle = Bundle::load(&b).unwrap();
    let data = toy_train_set(&bundle);
    let model = cmh::shallow::sch::SchParams { anchors: 8, ..Default::default() }.fit(&data, &FitContext::new(8, 1)).unwrap();
    // `cmh encode` reads its features chunk by chunk from a memory map.
    let valid_path = d.path().join("valid.npy");
    cmh::npy::write_npy(&valid_path, &Array2::from_shape_fn((20, 3), |(i, j)| (i * 3 + j) as f32 * 0.25)).unwrap();
    let valid = std::fs::read(&valid_path).unwrap();
    let f = d.path().join("feats.npy");
    let out = d.path().join("enc/codes");
    let opts = cmh::encode::EncodeOptions { chunk: 7, packed_only: false, progress: false };
    property(100, &valid, &f, &[], |bytes| {
        std::fs::write(&f, bytes).unwrap();
        let (r, a) = measured(|| cmh::encode::encode_file(&model, cmh::method::TEXT, &f, &out, &opts).map(|s| s.items));
        (err_of(r), a)
    });
    // A shape whose byte size overflows, with no data: refused by every reader.
    let huge = d.path().join("huge.npy");
    let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 1), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    std::fs::write(&huge, &bytes).unwrap();
    assert!(format!("{:#}", cmh::bundle::MappedArray::open(&huge).unwrap_err()).contains("huge.npy"));
    assert!(cmh::npy::read_features(&huge).is_err());
    assert!(cmh::encode::encode_file(&model, cmh::method::TEXT, &huge, &out, &opts).is_err());
    // A bundle's feature matrix, read whole and memory-mapped.
    let feats = b.join(bundle.manifest.modalities[0].features.clone().unwrap());
    let valid = std::fs::read(&feats).unwrap();
    let size: u64 = std::fs::read_dir(&b).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    property(100, &valid, &feats, &[], |bytes| {
        std::fs::write(&feats, bytes).unwrap();
        let (r, a) = measured(|| {
            let whole = Bundle::load(&b);
            let mapped = Bundle::load_mapped(&b);
            // A file read whole is mapped to the same values (the mapped reader may accept more
            // of a header's padding).
            if let (Ok(w), Ok(m)) = (&whole, &mapped) {
                let all: Vec<usize> = (0..w.n_items()).collect();
                let rows = m.modalities[0].mapped_features.as_ref().unwrap().array().features(&all).unwrap();
                assert_eq!(&rows, w.modalities[0].features.as_ref().unwrap());
            }
            mapped.and(whole).map(|x| x.n_items())
        });
        (err_of(r), a.saturating_sub(4 * size as usize))
    });
}
