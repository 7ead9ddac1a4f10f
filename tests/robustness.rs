//! Bad input, stale state and misleading settings are refused with one clear line (exit 1), never
//! a panic, an abort, a silent wrong answer or lost data.

mod common;

use cmh::bundle::{one_hot, Bundle, BundleWriter, FixedSplit, NewModality};
use cmh::npy::write_npy;
use ndarray::{array, Array1, Array2};
use std::path::{Path, PathBuf};
use std::process::Output;

fn run(dir: &Path, args: &[&str]) -> Output {
    common::cmh().current_dir(dir).args(args).output().unwrap()
}

/// Runs cmh expecting exit status 1 with one error line (no panic, no backtrace); returns stderr.
fn fails(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "expected exit 1 for {args:?}; stderr: {err}");
    assert!(!err.contains("panicked") && !err.contains("frame #") && !err.contains("stack backtrace"), "{err}");
    let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "one error line expected: {err}");
    err
}

fn succeeds(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{args:?} failed: {err}");
    err
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

/// A 60-item, 3-class bundle (image 6-d, text 5-d features, items 0–11 queries, 12–59 training
/// and database).
fn bundle(dir: &Path, name: &str) -> PathBuf {
    let n = 60;
    let cls: Vec<usize> = (0..n).map(|i| i % 3).collect();
    let feat = |d: usize, s: usize| Array2::from_shape_fn((n, d), |(i, j)| (((i * 7 + j * 3 + s) % 11) as f32) + (cls[i] * (j + 1)) as f32);
    let path = dir.join(name);
    BundleWriter {
        name: "tiny".into(),
        source: "test".into(),
        classes: vec!["a".into(), "b".into(), "c".into()],
        modalities: vec![
            NewModality { name: "image".into(), features: Some(feat(6, 1)), ..Default::default() },
            NewModality { name: "text".into(), features: Some(feat(5, 2)), ..Default::default() },
        ],
        labels: vec![one_hot(&cls, 3)],
        split: Some(FixedSplit { train: (12..n).collect(), query: (0..12).collect(), database: (12..n).collect() }),
        ..Default::default()
    }
    .write(&path, false)
    .unwrap();
    path
}

fn pm1(n: usize, bits: usize, seed: usize) -> Array2<i8> {
    Array2::from_shape_fn((n, bits), |(i, j)| if (i * 31 + j * 17 + seed) % 7 < 3 { 1 } else { -1 })
}

fn labels(n: usize) -> Array2<u8> {
    one_hot(&(0..n).map(|i| i % 3).collect::<Vec<_>>(), 3)
}

/// `.npy` bytes of `a` with the header's first dimension replaced by `rows` (the data unchanged).
fn with_header_rows(path: &Path, from: usize, rows: usize) {
    let bytes = std::fs::read(path).unwrap();
    let old = format!("({from},");
    let at = bytes.windows(old.len()).position(|w| w == old.as_bytes()).expect("shape in header");
    let new = format!("({rows},");
    assert_eq!(old.len(), new.len(), "same header length");
    let mut out = bytes.clone();
    out[at..at + old.len()].copy_from_slice(new.as_bytes());
    std::fs::write(path, out).unwrap();
}

#[test]
fn eval_refuses_codes_of_zero_bits() {
    let d = tempfile::tempdir().unwrap();
    write_npy(&d.path().join("q.npy"), &Array2::<i8>::zeros((5, 0))).unwrap();
    write_npy(&d.path().join("db.npy"), &Array2::<bool>::from_elem((7, 0), false)).unwrap();
    write_npy(&d.path().join("ql.npy"), &labels(5)).unwrap();
    write_npy(&d.path().join("dl.npy"), &labels(7)).unwrap();
    let e =
        fails(d.path(), &["eval", "--query-codes", "q.npy", "--db-codes", "db.npy", "--query-labels", "ql.npy", "--db-labels", "dl.npy"]);
    assert!(e.contains("q.npy") && e.contains("0 columns"), "{e}");
    let e = fails(d.path(), &["search", "--db", "db.npy", "--query", "db.npy", "-k", "1", "--out", "res"]);
    assert!(e.contains("db.npy") && e.contains("0 columns"), "{e}");
    assert!(!d.path().join("res").exists());
}

#[test]
fn code_lengths_beyond_the_limit_are_refused_before_allocating() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), "b");
    let b = b.to_str().unwrap();
    let e = fails(d.path(), &["train", "--method", "sch", "--data", b, "--bits", "100000", "--out", "run", "-q"]);
    assert!(e.contains("--bits 100000") && e.contains("4096"), "{e}");
    assert!(!d.path().join("run").exists(), "nothing written");
    // The library refuses it too, before the method's own checks.
    let bundle = Bundle::load(Path::new(b)).unwrap();
    let split = cmh::split::make_split(&bundle, &cmh::split::SplitConfig::default()).unwrap();
    let train = split.train_set(&bundle, false).unwrap();
    let e = cmh::pipeline::fit_method("sch", &toml::Table::new(), &train, &cmh::method::FitContext::new(5000, 0)).err().unwrap();
    assert!(format!("{e:#}").contains("4096"), "{e:#}");
    // The memory estimate names what a setting needs and what the machine has.
    let e = cmh::method::ensure_memory_within("sch", 64, 80.0 * (1u64 << 30) as f64, "rotation", 16.0 * (1u64 << 30) as f64).unwrap_err();
    assert!(e.to_string().contains("80.0 GiB") && e.to_string().contains("16.0 GiB"), "{e}");
    assert!(cmh::method::ensure_memory_within("sch", 64, 1e6, "rotation", 16e9).is_ok());
}

#[test]
fn a_code_length_of_u64_max_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), "b");
    let e = fails(
        d.path(),
        &["train", "--method", "sch", "--data", b.to_str().unwrap(), "--bits", "18446744073709551615", "--out", "run", "-q"],
    );
    assert!(e.contains("4096"), "{e}");
}

#[test]
fn seed_ranges_past_the_largest_seed_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), "b");
    let e = fails(
        d.path(),
        &[
            "train",
            "--method",
            "random",
            "--data",
            b.to_str().unwrap(),
            "--seed",
            "18446744073709551615",
            "--repeat",
            "2",
            "--out",
            "run",
            "-q",
        ],
    );
    assert!(e.contains("--seed") && e.contains("--repeat"), "{e}");
    assert!(!d.path().join("run/report.json").exists());
    // The largest seed alone is fine.
    succeeds(
        d.path(),
        &[
            "train",
            "--method",
            "random",
            "--data",
            b.to_str().unwrap(),
            "--seed",
            "18446744073709551615",
            "--bits",
            "8",
            "--out",
            "run2",
            "-q",
        ],
    );
    assert!(d.path().join("run2/bits8-seed18446744073709551615/report.json").is_file());
}

/// A `torch.save` zip archive holding one float tensor `name` with the given view of a
/// `numel`-element storage.
fn pth_file(path: &Path, name: &str, numel: usize, size: &[u64], stride: &[u64]) {
    use std::io::Write;
    fn int(p: &mut Vec<u8>, v: u64) {
        p.push(0x8a); // LONG1, 8 bytes
        p.push(8);
        p.extend_from_slice(&v.to_le_bytes());
    }
    let mut p: Vec<u8> = vec![0x80, 2];
    p.extend(b"ccollections\nOrderedDict\n)R(");
    p.push(b'X');
    p.extend((name.len() as u32).to_le_bytes());
    p.extend(name.as_bytes());
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu");
    int(&mut p, numel as u64);
    p.extend(b"tQ");
    int(&mut p, 0);
    for tuple in [size, stride] {
        p.push(b'(');
        for &v in tuple {
            int(&mut p, v);
        }
        p.push(b't');
    }
    p.extend(b"\x89ccollections\nOrderedDict\n)Rt");
    p.extend(b"Ru.");
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(&p).unwrap();
    z.start_file("archive/byteorder", opts).unwrap();
    z.write_all(b"little").unwrap();
    z.start_file("archive/data/0", opts).unwrap();
    let data: Vec<u8> = (0..numel).flat_map(|i| (i as f32).to_le_bytes()).collect();
    z.write_all(&data).unwrap();
    z.finish().unwrap();
}

#[test]
fn pth_tensors_with_zero_strides_are_refused_before_allocating() {
    let d = tempfile::tempdir().unwrap();
    // A plain 2×3 tensor reads back.
    let ok = d.path().join("ok.pth");
    pth_file(&ok, "w", 6, &[2, 3], &[3, 1]);
    let t = cmh::deep::pth::read_pth(&ok).unwrap();
    assert_eq!(t[0].1.size(), vec![2, 3]);
    // One stored value repeated 480 million times (1.9 GB as a tensor): refused by its view.
    let bad = d.path().join("zero_stride.pth");
    pth_file(&bad, "features.0.weight", 1, &[480_000_000], &[0]);
    let t0 = std::time::Instant::now();
    let e = format!("{:#}", cmh::deep::pth::read_pth(&bad).unwrap_err());
    assert!(e.contains("zero_stride.pth") && e.contains("tensor features.0.weight") && e.contains("stride 0"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
    assert!(t0.elapsed().as_secs_f64() < 5.0, "refused without materialising the tensor");
    // Overlapping strides and sizes whose product overflows are refused the same way.
    let over = d.path().join("overlap.pth");
    pth_file(&over, "w", 4, &[3, 3], &[1, 1]);
    assert!(format!("{:#}", cmh::deep::pth::read_pth(&over).unwrap_err()).contains("more elements than its storage"));
    let huge = d.path().join("huge.pth");
    pth_file(&huge, "w", 4, &[u32::MAX as u64, u32::MAX as u64, 8], &[1, 1, 1]);
    assert!(cmh::deep::pth::read_pth(&huge).is_err());
}

#[test]
fn non_finite_weights_in_models_and_checkpoints_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), "b");
    succeeds(
        d.path(),
        &[
            "--threads",
            "1",
            "train",
            "--method",
            "sdch",
            "--data",
            b.to_str().unwrap(),
            "--bits",
            "8",
            "--device",
            "cpu",
            "--out",
            "run",
            "-q",
            "--param",
            "epochs=1",
            "--param",
            "hidden=[8]",
            "--param",
            "feature_dim=8",
            "--param",
            "batch_size=16",
        ],
    );
    let model = d.path().join("run/bits8-seed0/model");
    write_npy(&d.path().join("text.npy"), &Array2::<f32>::ones((4, 5))).unwrap();
    let encode = ["encode", "--model", model.to_str().unwrap(), "--modality", "text", "--features", "text.npy", "--out", "codes"];
    succeeds(d.path(), &encode);
    // Poison one weight with NaN: loading refuses it, naming the file and the tensor.
    let w = model.join("weights.safetensors");
    let (mut tensors, meta) = cmh::deep::tensors::read_safetensors(&w).unwrap();
    let (name, t) = tensors.iter_mut().find(|(n, _)| n.starts_with("fc4.weight")).unwrap();
    let name = name.clone();
    let mut first = t.get(0).get(0);
    let _ = first.fill_(f64::NAN);
    cmh::deep::tensors::write_safetensors(&w, &tensors, meta).unwrap();
    std::fs::remove_file(d.path().join("codes.npy")).unwrap();
    let e = fails(d.path(), &encode);
    assert!(e.contains("weights.safetensors") && e.contains(&format!("tensor {name}")) && e.contains("NaN"), "{e}");
    assert!(!d.path().join("codes.npy").exists());
    // A checkpoint with an infinite value is refused the same way.
    let ck = d.path().join("ck.safetensors");
    let t = tch::Tensor::from_slice(&[1.0f32, f32::INFINITY]);
    cmh::deep::tensors::write_safetensors(&ck, &[("model.w".to_string(), t)], Default::default()).unwrap();
    let e = format!("{:#}", cmh::deep::trainer::Checkpoint::load(&ck).err().unwrap());
    assert!(e.contains("ck.safetensors") && e.contains("model.w") && e.contains("NaN or infinite"), "{e}");
}

#[test]
fn bundle_modality_roles_follow_their_names() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), "b");
    let original = Bundle::load(&b).unwrap();
    let manifest = b.join("bundle.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m["modalities"].as_array_mut().unwrap().reverse();
    assert_eq!(m["modalities"][0]["name"], "text");
    std::fs::write(&manifest, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    let swapped = Bundle::load(&b).unwrap();
    assert_eq!(swapped.modalities[0].name, "image");
    assert_eq!(swapped.modalities[0].features, original.modalities[0].features, "modality 0 is the image side");
    assert_eq!(swapped.modalities[1].features, original.modalities[1].features);
    let info = run(d.path(), &["data", "info", b.to_str().unwrap()]);
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("modality 0 image: features 60×6") && info.contains("modality 1 text: features 60×5"), "{info}");
    // Unknown and repeated names are refused, naming the field.
    m["modalities"][0]["name"] = "audio".into();
    std::fs::write(&manifest, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    let e = format!("{:#}", Bundle::load(&b).unwrap_err());
    assert!(e.contains("bundle.json") && e.contains("modalities[0].name") && e.contains("\"audio\""), "{e}");
    m["modalities"][0]["name"] = "image".into();
    std::fs::write(&manifest, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    assert!(format!("{:#}", Bundle::load(&b).unwrap_err()).contains("appears twice"));
}

#[test]
fn npy_files_holding_more_than_their_header_declares_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let codes = d.path().join("codes.npy");
    write_npy(&codes, &pm1(6, 8, 0)).unwrap();
    with_header_rows(&codes, 6, 4);
    let boolc = d.path().join("bool.npy");
    write_npy(&boolc, &pm1(6, 8, 1).mapv(|v| v > 0)).unwrap();
    with_header_rows(&boolc, 6, 4);
    let lab = d.path().join("labels.npy");
    write_npy(&lab, &labels(6)).unwrap();
    with_header_rows(&lab, 6, 2);
    let split = d.path().join("split.npy");
    write_npy(&split, &Array1::from_iter(0i64..6)).unwrap();
    with_header_rows(&split, 6, 3);
    for p in [&codes, &boolc] {
        let e = format!("{:#}", cmh::codes::BinaryCodes::load_npy(p, None).unwrap_err());
        assert!(e.contains(p.file_name().unwrap().to_str().unwrap()) && e.contains("bytes follow"), "{e}");
    }
    let e = format!("{:#}", cmh::npy::read_binary_matrix(&lab, "labels").unwrap_err());
    assert!(e.contains("labels.npy") && e.contains("bytes follow"), "{e}");
    let e = format!("{:#}", cmh::npy::read_indices(&split, 100).unwrap_err());
    assert!(e.contains("split.npy") && e.contains("bytes follow"), "{e}");
    // Through the CLI: the search refuses instead of reading the prefix.
    write_npy(&d.path().join("q.npy"), &pm1(3, 8, 2)).unwrap();
    let e = fails(d.path(), &["search", "--db", "codes.npy", "--query", "q.npy", "-k", "2", "--out", "res"]);
    assert!(e.contains("codes.npy") && e.contains("bytes follow"), "{e}");
}

#[test]
fn unpacked_zero_one_bytes_are_not_read_as_packed_codes() {
    let d = tempfile::tempdir().unwrap();
    let bits = pm1(20, 16, 3).mapv(|v| (v > 0) as u8);
    write_npy(&d.path().join("unpacked.npy"), &bits).unwrap();
    write_npy(&d.path().join("l.npy"), &labels(20)).unwrap();
    let e = fails(
        d.path(),
        &["eval", "--query-codes", "unpacked.npy", "--db-codes", "unpacked.npy", "--query-labels", "l.npy", "--db-labels", "l.npy"],
    );
    assert!(e.contains("unpacked.npy") && e.contains("packbits") && e.contains("bool"), "{e}");
    let e = fails(d.path(), &["search", "--db", "unpacked.npy", "--query", "unpacked.npy", "-k", "2", "--out", "res"]);
    assert!(e.contains("unpacked.npy") && e.contains("0 or 1"), "{e}");
    // The same bits saved as bool, or packed, are read as 16-bit codes.
    write_npy(&d.path().join("bits.npy"), &bits.mapv(|v| v == 1)).unwrap();
    let packed = cmh::codes::BinaryCodes::from_bits(bits.view()).unwrap();
    write_npy(&d.path().join("packed.npy"), &packed.to_packed()).unwrap();
    for f in ["bits.npy", "packed.npy"] {
        let out = run(
            d.path(),
            &["eval", "--query-codes", f, "--db-codes", "packed.npy", "--query-labels", "l.npy", "--db-labels", "l.npy", "--json"],
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["bits"], 16);
    }
}

#[test]
fn duplicate_split_indices_class_names_and_code_lengths_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), "b");
    let bs = b.to_str().unwrap();
    let e = fails(d.path(), &["train", "--method", "random", "--data", bs, "--bits", "16,16", "--out", "run", "-q"]);
    assert!(e.contains("--bits") && e.contains("16"), "{e}");
    assert!(!d.path().join("run").exists());
    // An item listed twice in the training split.
    let train = b.join("split_train.npy");
    let mut idx: Vec<i64> = (12..60).collect();
    idx[5] = 12;
    write_npy(&train, &Array1::from(idx)).unwrap();
    let e = fails(d.path(), &["data", "info", bs]);
    assert!(e.contains("split_train.npy") && e.contains("item 12 is listed twice"), "{e}");
    write_npy(&train, &Array1::from_iter(12i64..60)).unwrap();
    // A class name given twice.
    let manifest = b.join("bundle.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m["classes"][2] = "a".into();
    std::fs::write(&manifest, serde_json::to_string(&m).unwrap()).unwrap();
    let e = fails(d.path(), &["data", "info", bs]);
    assert!(e.contains("bundle.json") && e.contains("\"a\" appears twice"), "{e}");
}

#[test]
fn cuda_with_a_shallow_method_says_it_runs_on_the_cpu() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), "b");
    let err = succeeds(
        d.path(),
        &[
            "train",
            "--method",
            "cca-itq",
            "--data",
            b.to_str().unwrap(),
            "--bits",
            "8",
            "--device",
            "cuda",
            "--param",
            "anchors=20",
            "--out",
            "run",
            "-q",
        ],
    );
    assert!(err.contains("cca-itq runs on the CPU") && err.contains("--device cuda"), "{err}");
}

#[test]
fn run_folders_are_continued_or_replaced_only_when_cmh_made_them() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), "b");
    let bs = b.to_str().unwrap();
    let train = |bits: &str, out: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> =
            ["train", "--method", "random", "--data", bs, "--bits", bits, "--out", out, "-q"].iter().map(|s| s.to_string()).collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    succeeds(d.path(), &args(&train("8", "run", &[])));
    let first = std::fs::read(d.path().join("run/bits8-seed0/query_image.npy")).unwrap();
    // The same command again continues the run: the finished result is kept as it is.
    succeeds(d.path(), &args(&train("8", "run", &[])));
    assert_eq!(std::fs::read(d.path().join("run/bits8-seed0/query_image.npy")).unwrap(), first);
    // Another configuration is refused, the earlier run untouched; --force replaces it.
    let e = fails(d.path(), &args(&train("16", "run", &[])));
    assert!(e.contains("--out run") && e.contains("bits") && e.contains("--force"), "{e}");
    assert!(d.path().join("run/bits8-seed0/report.json").is_file());
    succeeds(d.path(), &args(&train("16", "run", &["--force"])));
    assert!(!d.path().join("run/bits8-seed0").exists() && d.path().join("run/bits16-seed0/report.json").is_file());
    let run_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.path().join("run/run.json")).unwrap()).unwrap();
    assert_eq!(run_json["bits"], serde_json::json!([16]));
    // A folder cmh did not create is never replaced or mixed into, --force or not.
    let mine = d.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "mine").unwrap();
    for extra in [&[][..], &["--force"][..]] {
        let e = fails(d.path(), &args(&train("8", "mine", extra)));
        assert!(e.contains("mine") && e.contains("not created by cmh"), "{e}");
    }
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1, "the folder is untouched");
    // Bundles: --force replaces a bundle, never another folder.
    let writer = |dir: &Path| {
        BundleWriter {
            name: "x".into(),
            source: "test".into(),
            classes: vec!["a".into(), "b".into()],
            modalities: vec![
                NewModality { name: "image".into(), features: Some(array![[1.0f32], [2.0]]), ..Default::default() },
                NewModality { name: "text".into(), features: Some(array![[1.0f32], [0.0]]), ..Default::default() },
            ],
            labels: vec![array![[1u8, 0], [0, 1]]],
            ..Default::default()
        }
        .write(dir, true)
    };
    let e = format!("{:#}", writer(&mine).unwrap_err());
    assert!(e.contains("mine") && e.contains("not a cmh bundle"), "{e}");
    assert!(mine.join("notes.txt").is_file());
    writer(&b).unwrap();
    assert_eq!(Bundle::load(&b).unwrap().n_items(), 2);
}

#[test]
fn search_and_encode_refuse_to_overwrite_their_inputs() {
    let d = tempfile::tempdir().unwrap();
    write_npy(&d.path().join("db.npy"), &pm1(30, 16, 4)).unwrap();
    write_npy(&d.path().join("q.npy"), &pm1(5, 16, 5)).unwrap();
    succeeds(d.path(), &["search", "--db", "db.npy", "--query", "q.npy", "-k", "3", "--out", "res"]);
    let before = std::fs::read(d.path().join("res/indices.npy")).unwrap();
    let e = fails(d.path(), &["search", "--db", "res/indices.npy", "--query", "q.npy", "-k", "3", "--out", "res"]);
    assert!(e.contains("--db res/indices.npy") && e.contains("overwritten"), "{e}");
    let e = fails(d.path(), &["search", "--db", "db.npy", "--query", "./res/../res/distances.npy", "-k", "3", "--out", "res"]);
    assert!(e.contains("--query") && e.contains("overwritten"), "{e}");
    assert_eq!(std::fs::read(d.path().join("res/indices.npy")).unwrap(), before);
    // encode: --out STEM writes STEM.npy and STEM_packed.npy.
    let b = bundle(d.path(), "b");
    succeeds(d.path(), &["train", "--method", "random", "--data", b.to_str().unwrap(), "--bits", "8", "--out", "run", "-q"]);
    write_npy(&d.path().join("feats.npy"), &Array2::<f32>::ones((4, 5))).unwrap();
    let model = "run/bits8-seed0/model";
    let e = fails(d.path(), &["encode", "--model", model, "--modality", "text", "--features", "feats.npy", "--out", "feats"]);
    assert!(e.contains("--features feats.npy") && e.contains("overwritten"), "{e}");
    assert_eq!(cmh::npy::read_features(&d.path().join("feats.npy")).unwrap().dim(), (4, 5));
    succeeds(d.path(), &["encode", "--model", model, "--modality", "text", "--features", "feats.npy", "--out", "codes"]);
}

#[test]
fn stale_results_and_leftovers_of_killed_runs_are_cleaned() {
    let d = tempfile::tempdir().unwrap();
    write_npy(&d.path().join("db.npy"), &pm1(30, 16, 4)).unwrap();
    write_npy(&d.path().join("q.npy"), &pm1(5, 16, 5)).unwrap();
    succeeds(d.path(), &["search", "--db", "db.npy", "--query", "q.npy", "--radius", "4", "--out", "res"]);
    assert!(d.path().join("res/offsets.npy").is_file());
    succeeds(d.path(), &["search", "--db", "db.npy", "--query", "q.npy", "-k", "3", "--out", "res"]);
    assert!(!d.path().join("res/offsets.npy").exists(), "the radius search's offsets do not belong to the top-k results");
    // A killed run leaves .partial-* folders and temporary files: the next use of the folder and
    // the finished run remove them.
    let b = bundle(d.path(), "b");
    let args = ["train", "--method", "random", "--data", b.to_str().unwrap(), "--bits", "8", "--out", "run", "-q"];
    succeeds(d.path(), &args);
    let run = d.path().join("run");
    std::fs::create_dir_all(run.join(".partial-bits8-seed0-abc/model")).unwrap();
    std::fs::write(run.join(".report.json.x1y2.tmp"), "{").unwrap();
    succeeds(d.path(), &args);
    let left: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.') && n != cmh::outdir::MARKER)
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn resume_finds_the_bundle_from_any_folder_and_refuses_a_changed_bundle() {
    let d = tempfile::tempdir().unwrap();
    let work = d.path().join("work");
    std::fs::create_dir(&work).unwrap();
    bundle(&work, "b");
    succeeds(&work, &["train", "--method", "random", "--data", "b", "--bits", "8", "--out", "run", "-q"]);
    let run = work.join("run");
    let rj: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert!(Path::new(rj["data"].as_str().unwrap()).is_absolute(), "{rj}");
    assert_eq!(rj["data_sha256"].as_str().unwrap().len(), 64);
    std::fs::remove_file(run.join("bits8-seed0/report.json")).unwrap();
    // From another working folder.
    succeeds(d.path(), &["train", "--resume", run.to_str().unwrap(), "-q"]);
    assert!(run.join("bits8-seed0/report.json").is_file());
    // The bundle's labels change: resuming is refused.
    write_npy(&work.join("b/labels.npy"), &one_hot(&(0..60).map(|i| (i + 1) % 3).collect::<Vec<_>>(), 3)).unwrap();
    let e = fails(d.path(), &["train", "--resume", run.to_str().unwrap(), "-q"]);
    assert!(e.contains("run.json") && e.contains("changed"), "{e}");
}

#[test]
fn error_messages_name_the_file_without_internal_shapes() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), "b");
    let out = run(d.path(), &["data", "info", b.to_str().unwrap()]);
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(info.contains("features 60×6") && !info.contains("Some("), "{info}");
    // A label matrix holding 2: the position as row and column.
    let mut l = labels(60);
    l[[7, 1]] = 2;
    write_npy(&b.join("labels.npy"), &l).unwrap();
    let e = fails(d.path(), &["data", "info", b.to_str().unwrap()]);
    assert!(e.contains("labels.npy") && e.contains("row 7, column 1") && !e.contains("IxDyn"), "{e}");
    // An unreadable database file is reported as such, without an unrelated prefix.
    write_npy(&d.path().join("q.npy"), &pm1(5, 16, 5)).unwrap();
    write_npy(&d.path().join("l5.npy"), &labels(5)).unwrap();
    let e = fails(
        d.path(),
        &["eval", "--query-codes", "q.npy", "--db-codes", "missing.npy", "--query-labels", "l5.npy", "--db-labels", "l5.npy"],
    );
    assert!(e.contains("missing.npy") && !e.contains("must match"), "{e}");
    // A folder given as a weights file.
    let e = format!("{:#}", cmh::deep::tensors::read_weights(d.path()).unwrap_err());
    assert!(e.contains("is a folder") && e.contains(".pth"), "{e}");
}

#[test]
fn index_and_export_refuse_to_overwrite_their_inputs() {
    let d = tempfile::tempdir().unwrap();
    write_npy(&d.path().join("db.npy"), &pm1(30, 16, 4)).unwrap();
    write_npy(&d.path().join("l.npy"), &labels(30)).unwrap();
    let before = std::fs::read(d.path().join("db.npy")).unwrap();
    let e = fails(d.path(), &["index", "build", "--codes", "db.npy", "--out", "./db.npy", "-q"]);
    assert!(e.contains("--codes db.npy") && e.contains("overwritten"), "{e}");
    for args in [
        &["export", "faiss", "--codes", "db.npy", "--out", "db.npy"][..],
        &["export", "milvus", "--codes", "db.npy", "--labels", "l.npy", "--out", "l.npy"][..],
        &["export", "elasticsearch", "--codes", "db.npy", "--out", "db.npy"][..],
        &["export", "opensearch", "--codes", "db.npy", "--labels", "l.npy", "--out", "../x/../l.npy"][..],
    ] {
        let args: Vec<String> =
            args.iter().map(|a| a.replace("../x/../", &format!("../{}/", d.path().file_name().unwrap().to_string_lossy()))).collect();
        let e = fails(d.path(), &args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        assert!(e.contains("overwritten"), "{args:?}: {e}");
    }
    assert_eq!(std::fs::read(d.path().join("db.npy")).unwrap(), before);
    assert_eq!(cmh::npy::read_binary_matrix(&d.path().join("l.npy"), "labels").unwrap(), labels(30));
    // An index built elsewhere is searched; searching with --out at the index is refused.
    succeeds(d.path(), &["index", "build", "--codes", "db.npy", "--out", "db.cmhidx", "-q"]);
    let e = fails(d.path(), &["search", "--index", "db.cmhidx", "--query", "db.npy", "-k", "2", "--out", "."]);
    assert!(e.contains("not created by cmh"), "{e}");
}

#[test]
fn tune_continues_only_its_own_folder() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), "b");
    let bs = b.to_str().unwrap();
    let mine = d.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "mine").unwrap();
    let tune = |out: &str| -> Vec<String> {
        [
            "--threads",
            "1",
            "tune",
            "--method",
            "cca-itq",
            "--data",
            bs,
            "--bits",
            "8",
            "--budget",
            "2",
            "--param",
            "anchors=20",
            "-q",
            "--out",
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let e = fails(d.path(), &args(&tune("mine")));
    assert!(e.contains("--out") && e.contains("mine") && e.contains("not created by cmh"), "{e}");
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1, "the folder is untouched");
    // A train run folder is not a tune folder.
    succeeds(d.path(), &["train", "--method", "random", "--data", bs, "--bits", "8", "--out", "run", "-q"]);
    let e = fails(d.path(), &args(&tune("run")));
    assert!(e.contains("another kind (run)"), "{e}");
    // Its own folder continues, leftovers of interrupted writes removed.
    succeeds(d.path(), &args(&tune("t")));
    let trials = std::fs::read_to_string(d.path().join("t/trials.jsonl")).unwrap();
    std::fs::write(d.path().join("t/.best.toml.ab12.tmp"), "x").unwrap();
    succeeds(d.path(), &args(&tune("t")));
    assert_eq!(std::fs::read_to_string(d.path().join("t/trials.jsonl")).unwrap(), trials, "finished trials are not run again");
    assert!(!d.path().join("t/.best.toml.ab12.tmp").exists());
}

#[test]
fn tune_checks_code_lengths_and_device_as_train_does() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), "b");
    let bs = b.to_str().unwrap();
    let tune = |bits: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "--threads",
            "1",
            "tune",
            "--method",
            "cca-itq",
            "--data",
            bs,
            "--bits",
            bits,
            "--budget",
            "1",
            "--param",
            "anchors=20",
            "-q",
            "--out",
            "t",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let e = fails(d.path(), &args(&tune("100000", &[])));
    assert!(e.contains("--bits 100000") && e.contains("4096"), "{e}");
    let e = fails(d.path(), &args(&tune("16,16", &[])));
    assert!(e.contains("--bits") && e.contains("more than once"), "{e}");
    assert!(!d.path().join("t").exists(), "nothing written");
    let err = succeeds(d.path(), &args(&tune("8", &["--device", "cuda"])));
    assert!(err.contains("cca-itq runs on the CPU") && err.contains("--device cuda"), "{err}");
}

#[test]
fn the_next_write_of_a_file_removes_what_a_killed_write_of_it_left() {
    let d = tempfile::tempdir().unwrap();
    write_npy(&d.path().join("db.npy"), &pm1(30, 16, 4)).unwrap();
    // Temporaries of this output and of another file (kept).
    for f in [".db.cmhidx.a1B2c3.tmp", ".db.cmhidx.zz9Zz9.tmp", ".other.npy.a1B2c3.tmp", "notes.tmp"] {
        std::fs::write(d.path().join(f), "partial").unwrap();
    }
    succeeds(d.path(), &["index", "build", "--codes", "db.npy", "--out", "db.cmhidx", "-q"]);
    let mut left: Vec<String> =
        std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    left.sort();
    assert_eq!(left, [".other.npy.a1B2c3.tmp", "db.cmhidx", "db.npy", "notes.tmp"]);
    // Streamed encode outputs likewise.
    let b = bundle(d.path(), "b");
    succeeds(d.path(), &["train", "--method", "random", "--data", b.to_str().unwrap(), "--bits", "8", "--out", "run", "-q"]);
    write_npy(&d.path().join("feats.npy"), &Array2::<f32>::ones((4, 5))).unwrap();
    std::fs::create_dir(d.path().join("enc")).unwrap();
    std::fs::write(d.path().join("enc/.codes_packed.npy.q1w2e3.tmp"), "partial").unwrap();
    succeeds(
        d.path(),
        &["encode", "--model", "run/bits8-seed0/model", "--modality", "text", "--features", "feats.npy", "--out", "enc/codes", "-q"],
    );
    let left: Vec<String> =
        std::fs::read_dir(d.path().join("enc")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    assert_eq!(left.len(), 2, "{left:?}");
}
