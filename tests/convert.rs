//! `cmh data convert` on small files written in each release's layout (scripts/write_mat.py:
//! scipy.io.savemat for v5, HDF5 as MATLAB writes it for v7.3), checked element by element, and
//! on the real Wikipedia / UCI files in ../shared (skipped with a notice when absent).

mod common;

use cmh::bundle::Bundle;
use cmh::convert::{ConvertArgs, Converted, Format, LabelBase};
use cmh::npy::write_npy;
use common::repo;
use ndarray::{Array2, Array4, ArrayD, Axis, IxDyn};
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> PathBuf {
    let venv = repo().join(".venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        common::python::find_python()
    }
}

/// `cmh data convert` as the binary runs it.
fn convert(a: &ConvertArgs) -> anyhow::Result<Converted> {
    cmh::convert::convert(a, &common::python::ScriptHelpers)
}

// ------------------------------------------------------------------ fixture writing

enum Arr {
    F64(ArrayD<f64>),
    F32(ArrayD<f32>),
    U8(ArrayD<u8>),
    U16(ArrayD<u16>),
    Bool(ArrayD<bool>),
}

enum V {
    A(Arr),
    Sparse(Arr),
    Struct(Vec<(&'static str, V)>),
}

fn f64v(a: Array2<f64>) -> V {
    V::A(Arr::F64(a.into_dyn()))
}
fn u8v(a: Array2<u8>) -> V {
    V::A(Arr::U8(a.into_dyn()))
}

struct Mat {
    path: PathBuf,
    format: &'static str,
    vars: Vec<(&'static str, V)>,
}

fn mat(path: PathBuf, format: &'static str, vars: Vec<(&'static str, V)>) -> Mat {
    Mat { path, format, vars }
}

/// Writes the .mat files with one run of scripts/write_mat.py.
fn write_mats(mats: &[Mat]) {
    let dir = tempfile::tempdir().unwrap();
    let mut counter = 0;
    fn spec(v: &V, dir: &Path, counter: &mut usize) -> serde_json::Value {
        let mut save = |a: &Arr| {
            *counter += 1;
            let f = dir.join(format!("a{counter}.npy"));
            match a {
                Arr::F64(x) => write_npy(&f, x),
                Arr::F32(x) => write_npy(&f, x),
                Arr::U8(x) => write_npy(&f, x),
                Arr::U16(x) => write_npy(&f, x),
                Arr::Bool(x) => write_npy(&f, x),
            }
            .unwrap();
            f.to_string_lossy().into_owned()
        };
        match v {
            V::A(a) => serde_json::json!({"npy": save(a)}),
            V::Sparse(a) => serde_json::json!({"npy": save(a), "sparse": true}),
            V::Struct(fields) => {
                let m: serde_json::Map<String, serde_json::Value> =
                    fields.iter().map(|(k, v)| (k.to_string(), spec(v, dir, counter))).collect();
                serde_json::json!({ "struct": m })
            }
        }
    }
    let specs: Vec<serde_json::Value> = mats
        .iter()
        .map(|m| {
            let vars: serde_json::Map<String, serde_json::Value> =
                m.vars.iter().map(|(k, v)| (k.to_string(), spec(v, dir.path(), &mut counter))).collect();
            serde_json::json!({"path": m.path.to_string_lossy(), "format": m.format, "vars": vars})
        })
        .collect();
    let sp = dir.path().join("spec.json");
    std::fs::write(&sp, serde_json::to_string(&specs).unwrap()).unwrap();
    let out = Command::new(python()).arg(repo().join("scripts/write_mat.py")).arg(&sp).output().expect("run python");
    assert!(out.status.success(), "write_mat.py failed: {}", String::from_utf8_lossy(&out.stderr));
}

// ------------------------------------------------------------------ data

/// Exactly representable feature values, different per (seed, row, column).
fn feats(n: usize, d: usize, seed: usize) -> Array2<f64> {
    Array2::from_shape_fn((n, d), |(i, j)| ((i * 7 + j * 3 + seed * 5) % 13) as f64 / 8.0 + 0.125)
}

/// 1-based class of item i.
fn cls(i: usize, seed: usize, c: usize) -> usize {
    (i * 7 + seed) % c + 1
}

fn index_labels(n: usize, seed: usize, c: usize) -> Array2<u8> {
    Array2::from_shape_fn((n, 1), |(i, _)| cls(i, seed, c) as u8)
}

fn one_hot(n: usize, seed: usize, c: usize) -> Array2<u8> {
    Array2::from_shape_fn((n, c), |(i, k)| (cls(i, seed, c) == k + 1) as u8)
}

fn multi_hot(n: usize, c: usize) -> Array2<u8> {
    // Item i has class i % c and, for even i, class (i + 2) % c too.
    Array2::from_shape_fn((n, c), |(i, k)| (k == i % c || (i % 2 == 0 && k == (i + 2) % c)) as u8)
}

fn f32m(a: &Array2<f64>) -> Array2<f32> {
    a.mapv(|x| x as f32)
}

fn stack<T: Clone>(a: &Array2<T>, b: &Array2<T>) -> Array2<T> {
    ndarray::concatenate(Axis(0), &[a.view(), b.view()]).unwrap()
}

/// Images as a bundle holds them (N × H × W × 3) and as MATLAB holds them (H × W × 3 × N).
fn images(n: usize, h: usize, w: usize) -> (Array4<u8>, ArrayD<u8>) {
    let val = |k: usize, y: usize, x: usize, c: usize| ((k * 37 + y * 11 + x * 5 + c * 3) % 256) as u8;
    let bundle = Array4::from_shape_fn((n, h, w, 3), |(k, y, x, c)| val(k, y, x, c));
    let matlab = ArrayD::from_shape_fn(IxDyn(&[h, w, 3, n]), |i| val(i[3], i[0], i[1], i[2]));
    (bundle, matlab)
}

fn range(a: usize, b: usize) -> Vec<usize> {
    (a..b).collect()
}

fn args(format: Format, input: &[&Path], out: &Path) -> ConvertArgs {
    ConvertArgs::new(format, input.iter().map(|p| p.to_path_buf()).collect(), out)
}

fn err_of(a: &ConvertArgs) -> String {
    match convert(a) {
        Ok(_) => panic!("conversion should have failed"),
        Err(e) => format!("{e:#}"),
    }
}

fn feats_of(b: &Bundle, m: usize) -> &Array2<f32> {
    b.modalities[m].features.as_ref().expect("features")
}

/// Nothing but the listed entries in `dir` (no half-written bundle, no scratch folders).
fn assert_only(dir: &Path, names: &[&str]) {
    let mut found: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    found.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(found, want, "leftovers in {}", dir.display());
}

// ------------------------------------------------------------------ Wikipedia layouts

/// The wikiData.mat layout in v5 (index labels), v5 compressed (one-hot), v7.3 (one-hot
/// doubles) and a plain HDF5 file: every variant gives the same bundle, exactly.
#[test]
fn wiki_mat_variants_give_identical_exact_bundles() {
    let d = tempfile::tempdir().unwrap();
    let (ntr, nte, c) = (7, 4, 3);
    let (itr, ite, ttr, tte) = (feats(ntr, 5, 1), feats(nte, 5, 2), feats(ntr, 2, 3), feats(nte, 2, 4));
    let (ltr, lte) = (index_labels(ntr, 0, c), index_labels(nte, 1, c));
    let (otr, ote) = (one_hot(ntr, 0, c), one_hot(nte, 1, c));
    let p = |s: &str| d.path().join(s);
    let base = |l_tr: V, l_te: V| {
        vec![
            ("I_tr", f64v(itr.clone())),
            ("I_te", f64v(ite.clone())),
            ("T_tr", f64v(ttr.clone())),
            ("T_te", f64v(tte.clone())),
            ("L_tr", l_tr),
            ("L_te", l_te),
        ]
    };
    write_mats(&[
        mat(p("idx_v5.mat"), "v5", base(u8v(ltr.clone()), u8v(lte.clone()))),
        mat(p("onehot_v5z.mat"), "v5z", base(u8v(otr.clone()), u8v(ote.clone()))),
        mat(p("onehot_v73.mat"), "v7.3", base(f64v(otr.mapv(f64::from)), f64v(ote.mapv(f64::from)))),
        // A Python-written HDF5 file with the label vector stored 1 × N (row): still items.
        mat(p("plain.h5.mat"), "hdf5", base(u8v(ltr.clone().reversed_axes()), u8v(lte.clone()))),
    ]);
    let names = p("names.txt");
    std::fs::write(&names, "alpha\nbeta\n\ngamma\n").unwrap();
    let mut bundles = Vec::new();
    for (i, f) in ["idx_v5.mat", "onehot_v5z.mat", "onehot_v73.mat", "plain.h5.mat"].iter().enumerate() {
        let out = p(&format!("b{i}"));
        let mut a = args(Format::WikiMat, &[&p(f)], &out);
        a.classes = Some(names.clone());
        let c = convert(&a).unwrap_or_else(|e| panic!("{f}: {e:#}"));
        assert!(c.summary.contains("11 items") && c.summary.contains("train 7 / query 4 / database 7"), "{}", c.summary);
        bundles.push(c.bundle);
    }
    for b in &bundles {
        assert_eq!(b.n_items(), ntr + nte);
        assert_eq!(b.manifest.name, "wiki");
        assert_eq!(b.class_names(), ["alpha", "beta", "gamma"]);
        assert_eq!(feats_of(b, 0), &f32m(&stack(&itr, &ite)));
        assert_eq!(feats_of(b, 1), &f32m(&stack(&ttr, &tte)));
        assert_eq!(b.labels[0], stack(&otr, &ote));
        let s = b.split.as_ref().unwrap();
        assert_eq!((s.train.clone(), s.database.clone(), s.query.clone()), (range(0, ntr), range(0, ntr), range(ntr, ntr + nte)));
        assert!(b.unlabelled.iter().all(|&u| !u));
        assert_eq!(b.modalities[0].name, "image");
        assert_eq!(b.modalities[1].name, "text");
    }
    // Without --classes the names are class1..classC.
    let out = p("noname");
    let b = convert(&args(Format::WikiMat, &[&p("idx_v5.mat")], &out)).unwrap().bundle;
    assert_eq!(b.class_names(), ["class1", "class2", "class3"]);
    assert!(b.manifest.source.contains("idx_v5.mat (v5)") && b.manifest.source.contains("1-based"), "{}", b.manifest.source);
    // --label-base 0 reads the same 1..3 indices as 0-based: index 3 is beyond 3 classes.
    let mut a = args(Format::WikiMat, &[&p("idx_v5.mat")], &p("base0"));
    a.label_base = LabelBase::Zero;
    a.classes = Some(names.clone());
    let e = err_of(&a);
    assert!(e.contains("3 class names") && e.contains("4 classes") && e.contains("0-based"), "{e}");
}

/// The raw_features.mat + .list folder layout.
#[test]
fn wiki_folder_layout_takes_labels_and_names_from_the_lists() {
    let d = tempfile::tempdir().unwrap();
    let rel = d.path().join("release");
    std::fs::create_dir(&rel).unwrap();
    let (ntr, nte, c) = (6, 3, 4);
    let (itr, ite, ttr, tte) = (feats(ntr, 3, 5), feats(nte, 3, 6), feats(ntr, 2, 7), feats(nte, 2, 8));
    write_mats(&[mat(
        rel.join("raw_features.mat"),
        "v5",
        vec![("I_tr", f64v(itr.clone())), ("I_te", f64v(ite.clone())), ("T_tr", f64v(ttr.clone())), ("T_te", f64v(tte.clone()))],
    )]);
    let list =
        |n: usize, seed: usize| -> String { (0..n).map(|i| format!("txt{seed}_{i}\timg{seed}_{i}\t{}\n", cls(i, seed, c))).collect() };
    std::fs::write(rel.join("trainset_txt_img_cat.list"), list(ntr, 0)).unwrap();
    std::fs::write(rel.join("testset_txt_img_cat.list"), list(nte, 1)).unwrap();
    std::fs::write(rel.join("categories.list"), "art\nbiology\ngeography\nhistory\n").unwrap();
    let out = d.path().join("out").join("wiki");
    let b = convert(&args(Format::Wiki, &[&rel], &out)).unwrap().bundle;
    assert_eq!(b.class_names(), ["art", "biology", "geography", "history"]);
    assert_eq!(b.labels[0], stack(&one_hot(ntr, 0, c), &one_hot(nte, 1, c)));
    assert_eq!(feats_of(&b, 0), &f32m(&stack(&itr, &ite)));
    assert_eq!(feats_of(&b, 1), &f32m(&stack(&ttr, &tte)));
    assert_eq!(b.split.as_ref().unwrap().query, range(ntr, ntr + nte));
    // A list one line short: the label count mismatch names the list.
    let short: String = list(ntr, 0).lines().take(ntr - 1).map(|l| format!("{l}\n")).collect();
    std::fs::write(rel.join("trainset_txt_img_cat.list"), short).unwrap();
    let e = err_of(&args(Format::Wiki, &[&rel], &d.path().join("out").join("bad")));
    assert!(e.contains("trainset_txt_img_cat.list") && e.contains("mismatch"), "{e}");
    assert_only(&d.path().join("out"), &["wiki"]);
}

// ------------------------------------------------------------------ UCI

#[test]
fn uci_layout_names_digits_and_takes_the_pixel_view_on_request() {
    let d = tempfile::tempdir().unwrap();
    let (ntr, nte) = (12, 5);
    let (itr, ite, ttr, tte) = (feats(ntr, 4, 1), feats(nte, 4, 2), feats(ntr, 3, 3), feats(nte, 3, 4));
    let ptr = Array2::from_shape_fn((ntr, 6), |(i, j)| ((i + j) % 7) as u8);
    let pte = Array2::from_shape_fn((nte, 6), |(i, j)| ((i * j) % 7) as u8);
    let (ltr, lte) = (index_labels(ntr, 0, 10), index_labels(nte, 4, 10));
    let f = d.path().join("uci_all.mat");
    write_mats(&[mat(
        f.clone(),
        "v5",
        vec![
            ("I_tr", f64v(itr.clone())),
            ("T_tr", f64v(ttr.clone())),
            ("P_tr", u8v(ptr.clone())),
            ("L_tr", u8v(ltr)),
            ("I_te", f64v(ite.clone())),
            ("T_te", f64v(tte.clone())),
            ("L_te", u8v(lte)),
            ("P_te", u8v(pte.clone())),
        ],
    )]);
    let b = convert(&args(Format::Uci, &[&f], &d.path().join("u"))).unwrap().bundle;
    assert_eq!(b.manifest.name, "uci-digits");
    assert_eq!(b.class_names(), ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]);
    assert_eq!(feats_of(&b, 0), &f32m(&stack(&itr, &ite)));
    assert_eq!(feats_of(&b, 1), &f32m(&stack(&ttr, &tte)));
    assert_eq!(b.labels[0], stack(&one_hot(ntr, 0, 10), &one_hot(nte, 4, 10)));
    let mut a = args(Format::Uci, &[&f], &d.path().join("p"));
    a.keys = vec!["image_train=P_tr".into(), "image_test=P_te".into()];
    let b = convert(&a).unwrap().bundle;
    assert_eq!(feats_of(&b, 0), &stack(&ptr, &pte).mapv(f32::from));
    assert!(b.manifest.modalities[0].description.as_ref().unwrap().contains("P_tr + P_te"));
}

// ------------------------------------------------------------------ MIRFlickr / NUS-WIDE / IAPR

#[test]
fn mirflickr_single_file_and_trio_give_the_same_images_and_labels() {
    let d = tempfile::tempdir().unwrap();
    let (n, h, w, c) = (9, 5, 4, 24);
    let (ims, ims_matlab) = images(n, h, w);
    let tags = Array2::from_shape_fn((n, 6), |(i, j)| ((i + 2 * j) % 3 == 0) as u8 as f64);
    let labels = multi_hot(n, c);
    // DCMH's FLICKR-25K.mat: v7.3 with images / YAll / LAll.
    let single = d.path().join("FLICKR-25K.mat");
    // The trio: IAll in a v7.3 file, YAll / LAll in v5 files (as the releases ship them).
    let trio = d.path().join("trio");
    std::fs::create_dir(&trio).unwrap();
    write_mats(&[
        mat(
            single.clone(),
            "v7.3",
            vec![("images", V::A(Arr::U8(ims_matlab.clone()))), ("YAll", f64v(tags.clone())), ("LAll", f64v(labels.mapv(f64::from)))],
        ),
        mat(trio.join("mirflickr25k-iall.mat"), "v7.3", vec![("IAll", V::A(Arr::U8(ims_matlab.clone())))]),
        mat(trio.join("mirflickr25k-yall.mat"), "v5", vec![("YAll", V::A(Arr::F32(tags.mapv(|x| x as f32).into_dyn())))]),
        mat(trio.join("mirflickr25k-lall.mat"), "v5z", vec![("LAll", u8v(labels.clone()))]),
    ]);
    let out = d.path().join("m1");
    let c1 = convert(&args(Format::Mirflickr, &[&single], &out)).unwrap();
    assert!(c1.summary.contains("image 5x4 RGB images") && c1.summary.contains("no fixed split"), "{}", c1.summary);
    let c2 = convert(&args(Format::Mirflickr, &[&trio], &d.path().join("m2"))).unwrap();
    for b in [&c1.bundle, &c2.bundle] {
        assert_eq!(b.manifest.name, "mirflickr25k");
        assert_eq!(b.modalities[0].images.as_ref().unwrap(), &ims, "N × H × W × 3, pixel for pixel");
        assert_eq!(feats_of(b, 1), &f32m(&tags));
        assert_eq!(b.labels[0], labels);
        assert_eq!(b.n_classes(), c);
        assert!(b.split.is_none());
        assert_eq!(b.manifest.modalities[0].image_shape, Some([h, w, 3]));
    }
    // An optional seeded split, stored in the bundle: same seed, same split.
    let mut a = args(Format::Mirflickr, &[&trio], &d.path().join("s1"));
    a.split_seed = Some(3);
    a.query_size = Some(2);
    a.train_size = Some(4);
    let s1 = convert(&a).unwrap().bundle.split.unwrap();
    a.out = d.path().join("s2");
    let s2 = convert(&a).unwrap().bundle.split.unwrap();
    assert_eq!(s1, s2);
    assert_eq!((s1.query.len(), s1.database.len(), s1.train.len()), (2, 7, 4));
    assert!(s1.train.iter().all(|i| s1.database.contains(i)) && s1.query.iter().all(|i| !s1.database.contains(i)));
    // Default sizes (2000 queries) do not fit 9 items: a clear error.
    let mut a = args(Format::Mirflickr, &[&trio], &d.path().join("s3"));
    a.split_seed = Some(3);
    assert!(err_of(&a).contains("--query-size 2000"));
}

#[test]
fn nus_wide_dcmh_file_with_param_split_and_separate_images() {
    let d = tempfile::tempdir().unwrap();
    let (n, c) = (8, 10);
    let (ims, ims_matlab) = images(n, 3, 3);
    let tags = feats(n, 5, 9);
    let labels = multi_hot(n, c);
    // 1-based index lists as MATLAB row vectors.
    let row = |v: &[usize]| f64v(Array2::from_shape_fn((1, v.len()), |(_, j)| v[j] as f64));
    write_mats(&[
        mat(d.path().join("nus-wide-tc10-iall.mat"), "v7.3", vec![("IAll", V::A(Arr::U8(ims_matlab)))]),
        mat(
            d.path().join("nus-wide-tc10.mat"),
            "v7.3",
            vec![
                // Stored as a sparse logical matrix, as a bag of tags may be.
                ("YAll", V::Sparse(Arr::F64(tags.clone().into_dyn()))),
                ("LAll", V::A(Arr::Bool(labels.mapv(|x| x == 1).into_dyn()))),
                (
                    "param",
                    V::Struct(vec![
                        ("indexTest", row(&[2, 5])),
                        ("indexTrain", row(&[1, 3, 4])),
                        ("indexDatabase", row(&[1, 3, 4, 6, 7, 8])),
                    ]),
                ),
            ],
        ),
    ]);
    let b = convert(&args(Format::NusWide, &[d.path()], &d.path().join("out"))).unwrap().bundle;
    assert_eq!(b.manifest.name, "nus-wide-tc10");
    assert_eq!(b.modalities[0].images.as_ref().unwrap(), &ims);
    assert_eq!(feats_of(&b, 1), &f32m(&tags));
    assert_eq!(b.labels[0], labels);
    let s = b.split.as_ref().unwrap();
    assert_eq!((s.query.clone(), s.train.clone(), s.database.clone()), (vec![1, 4], vec![0, 2, 3], vec![0, 2, 3, 5, 6, 7]));
    // A fixed split in the file and --split-seed conflict.
    let mut a = args(Format::NusWide, &[d.path()], &d.path().join("out2"));
    a.split_seed = Some(1);
    assert!(err_of(&a).contains("already has a fixed split"));
}

#[test]
fn iapr_database_test_layout_and_vgg_override() {
    let d = tempfile::tempdir().unwrap();
    let (ndb, nte, c) = (6, 3, 5);
    let (xdb, xte, ydb, yte) = (feats(ndb, 4, 1), feats(nte, 4, 2), feats(ndb, 7, 3), feats(nte, 7, 4));
    let (vdb, vte) = (feats(ndb, 3, 5), feats(nte, 3, 6));
    let (ldb, lte) = (multi_hot(ndb, c), multi_hot(nte, c));
    let f = d.path().join("iapr-tc12.mat");
    write_mats(&[mat(
        f.clone(),
        "v5",
        vec![
            ("XDatabase", f64v(xdb.clone())),
            ("XTest", f64v(xte.clone())),
            ("YDatabase", V::Sparse(Arr::F64(ydb.clone().into_dyn()))),
            ("YTest", f64v(yte.clone())),
            ("VDatabase", V::A(Arr::F32(vdb.mapv(|x| x as f32).into_dyn()))),
            ("VTest", V::A(Arr::F32(vte.mapv(|x| x as f32).into_dyn()))),
            ("databaseL", u8v(ldb.clone())),
            ("testL", u8v(lte.clone())),
        ],
    )]);
    let b = convert(&args(Format::Iapr, &[&f], &d.path().join("a"))).unwrap().bundle;
    assert_eq!(b.manifest.name, "iapr-tc12");
    assert_eq!(feats_of(&b, 0), &f32m(&stack(&xdb, &xte)));
    assert_eq!(feats_of(&b, 1), &f32m(&stack(&ydb, &yte)));
    assert_eq!(b.labels[0], stack(&ldb, &lte));
    let s = b.split.as_ref().unwrap();
    assert_eq!((s.database.clone(), s.query.clone()), (range(0, ndb), range(ndb, ndb + nte)));
    let mut a = args(Format::Iapr, &[&f], &d.path().join("v"));
    a.keys = vec!["image_train=VDatabase".into(), "image_test=VTest".into()];
    let b = convert(&a).unwrap().bundle;
    assert_eq!(feats_of(&b, 0), &f32m(&stack(&vdb, &vte)));
}

// ------------------------------------------------------------------ generic

#[test]
fn generic_keys_orientation_label_bases_and_split_sources() {
    let d = tempfile::tempdir().unwrap();
    let n = 7;
    let img = feats(n, 3, 1);
    let txt = feats(n, 4, 2); // stored d × N below
    let lab0 = Array2::from_shape_fn((n, 1), |(i, _)| (i % 3) as u8); // 0-based
    let f = d.path().join("data.mat");
    write_mats(&[mat(
        f.clone(),
        "v7.3",
        vec![
            ("img", f64v(img.clone())),
            ("txt", f64v(txt.clone().reversed_axes())),
            ("lab", V::A(Arr::U16(lab0.mapv(u16::from).into_dyn()))),
            ("q", f64v(Array2::from_shape_vec((2, 1), vec![7.0, 1.0]).unwrap())),
        ],
    )]);
    let mut a = args(Format::Generic, &[&f], &d.path().join("g"));
    a.keys = vec!["image=img".into(), "text=txt".into(), "labels=lab".into()];
    let c = convert(&a).unwrap();
    let b = &c.bundle;
    assert_eq!(b.manifest.name, "g");
    assert_eq!(feats_of(b, 0), &f32m(&img));
    assert_eq!(feats_of(b, 1), &f32m(&txt), "a d × N matrix is turned to N × d");
    assert_eq!(b.labels[0], Array2::from_shape_fn((n, 3), |(i, k)| (i % 3 == k) as u8), "0 present: 0-based");
    assert!(b.split.is_none());
    assert!(c.summary.contains("0-based"), "{}", c.summary);
    // Split lists: from the .mat (1-based) or from 0-based .npy files.
    let mut a2 = a.clone();
    a2.out = d.path().join("g2");
    a2.keys.push("query=q".into());
    let e = err_of(&a2);
    assert!(e.contains("no database list"), "{e}");
    a2.keys.push("database=img".into());
    assert!(err_of(&a2).contains("index list must be a vector"));
    let mut a3 = a.clone();
    a3.out = d.path().join("g3");
    let qf = d.path().join("q.npy");
    let df = d.path().join("db.npy");
    write_npy(&qf, &ndarray::arr1(&[0i64, 6])).unwrap();
    write_npy(&df, &ndarray::arr1(&[1i64, 2, 3, 4, 5])).unwrap();
    a3.split = vec![format!("query={}", qf.display()), format!("database={}", df.display())];
    let s = convert(&a3).unwrap().bundle.split.unwrap();
    assert_eq!((s.query, s.database.clone(), s.train), (vec![0, 6], vec![1, 2, 3, 4, 5], vec![1, 2, 3, 4, 5]));
    // Mixing the two role families, and naming no roles, are refused.
    let mut a4 = args(Format::Generic, &[&f], &d.path().join("g4"));
    a4.keys = vec!["image=img".into(), "text_train=txt".into()];
    assert!(err_of(&a4).contains("not both"));
    a4.keys = vec![];
    let e = err_of(&a4);
    assert!(e.contains("--key image=NAME") && e.contains("img (7×3 double)"), "{e}");
}

/// A DSCMR-like release: one variable per file, training and test parts, 0-based labels; the
/// same name in two inputs must be disambiguated with FILE:NAME.
#[test]
fn generic_two_part_release_across_files() {
    let d = tempfile::tempdir().unwrap();
    let (ntr, nte) = (5, 2);
    let (itr, ite, ttr, tte) = (feats(ntr, 3, 1), feats(nte, 3, 2), feats(ntr, 2, 3), feats(nte, 2, 4));
    let ltr = Array2::from_shape_fn((ntr, 1), |(i, _)| (i % 4) as u8);
    let lte = Array2::from_shape_fn((nte, 1), |(i, _)| (i % 4) as u8);
    let p = |s: &str| d.path().join(s);
    write_mats(&[
        mat(p("train_img.mat"), "v5", vec![("train_img", f64v(itr.clone()))]),
        mat(p("test_img.mat"), "v5", vec![("test_img", f64v(ite.clone()))]),
        mat(p("train_txt.mat"), "v5", vec![("train_txt", f64v(ttr.clone())), ("lab", u8v(ltr.clone()))]),
        mat(p("test_txt.mat"), "v5", vec![("test_txt", f64v(tte.clone())), ("lab", u8v(lte.clone()))]),
    ]);
    let mut a = args(Format::Generic, &[d.path()], &p("out"));
    a.keys = [
        "image_train=train_img",
        "image_test=test_img",
        "text_train=train_txt",
        "text_test=test_txt",
        "labels_train=lab",
        "labels_test=lab",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let e = err_of(&a);
    assert!(e.contains("several inputs") && e.contains("--key labels_") && e.contains(":lab"), "{e}");
    a.keys[4] = "labels_train=train_txt.mat:lab".into();
    a.keys[5] = "labels_test=test_txt.mat:lab".into();
    let b = convert(&a).unwrap().bundle;
    assert_eq!(feats_of(&b, 0), &f32m(&stack(&itr, &ite)));
    assert_eq!(feats_of(&b, 1), &f32m(&stack(&ttr, &tte)));
    // Labels 0..3 (0 seen: 0-based), 4 classes.
    let want = Array2::from_shape_fn((ntr + nte, 4), |(i, k)| ((if i < ntr { i } else { i - ntr }) % 4 == k) as u8);
    assert_eq!(b.labels[0], want);
    assert_eq!(b.split.unwrap().query, range(ntr, ntr + nte));
}

// ------------------------------------------------------------------ unlabelled rows and bad input

#[test]
fn unlabelled_rows_are_refused_unless_allowed() {
    let d = tempfile::tempdir().unwrap();
    let n = 6;
    let mut l = multi_hot(n, 3);
    l.row_mut(4).fill(0);
    let f = d.path().join("f.mat");
    write_mats(&[mat(f.clone(), "v5", vec![("IAll", f64v(feats(n, 2, 1))), ("YAll", f64v(feats(n, 3, 2))), ("LAll", u8v(l.clone()))])]);
    let mut a = args(Format::Mirflickr, &[&f], &d.path().join("out"));
    let e = err_of(&a);
    assert!(
        e.contains("f.mat: LAll") && e.contains("1 of 6 rows have no label") && e.contains("row 4") && e.contains("--allow-unlabelled"),
        "{e}"
    );
    assert!(!d.path().join("out").exists());
    a.allow_unlabelled = true;
    let c = convert(&a).unwrap();
    assert_eq!(c.bundle.unlabelled, vec![false, false, false, false, true, false]);
    assert_eq!(c.bundle.labels[0], l);
    assert!(c.summary.contains("1 unlabelled"), "{}", c.summary);
}

#[test]
fn bad_inputs_are_refused_cleanly_with_nothing_written() {
    let d = tempfile::tempdir().unwrap();
    let work = d.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let (ntr, nte) = (5, 3);
    let mut nan = feats(ntr, 3, 1);
    nan[[2, 1]] = f64::NAN;
    let good = |l_tr: Array2<u8>, i_tr: Array2<f64>| {
        vec![
            ("I_tr", f64v(i_tr)),
            ("I_te", f64v(feats(nte, 3, 2))),
            ("T_tr", f64v(feats(ntr, 2, 3))),
            ("T_te", f64v(feats(nte, 2, 4))),
            ("L_tr", u8v(l_tr)),
            ("L_te", u8v(index_labels(nte, 0, 3))),
        ]
    };
    let p = |s: &str| d.path().join(s);
    let mut missing_key = good(index_labels(ntr, 0, 3), feats(ntr, 3, 1));
    missing_key.remove(5);
    write_mats(&[
        mat(p("nan.mat"), "v7.3", good(index_labels(ntr, 0, 3), nan)),
        mat(p("short.mat"), "v5", good(index_labels(ntr - 1, 0, 3), feats(ntr, 3, 1))),
        mat(p("nokey.mat"), "v5", missing_key),
        mat(p("ok.mat"), "v5", good(index_labels(ntr, 0, 3), feats(ntr, 3, 1))),
    ]);
    std::fs::write(p("garbage.mat"), b"this is not a MATLAB file at all, just some text of no use").unwrap();
    let out = work.join("bundle");
    let case = |f: &str| err_of(&args(Format::WikiMat, &[&p(f)], &out));
    let e = case("nan.mat");
    assert!(e.contains("nan.mat: I_tr") && e.contains("NaN at row 2, column 1"), "{e}");
    let e = case("short.mat");
    assert!(e.contains("short.mat") && e.contains("mismatch") && e.contains("[4, 1]"), "{e}");
    let e = case("nokey.mat");
    assert!(e.contains("L_te") && e.contains("labels_test") && e.contains("holds I_te"), "{e}");
    let e = case("garbage.mat");
    assert!(e.contains("garbage.mat") && e.contains("cannot read"), "{e}");
    let e = case("absent.mat");
    assert!(e.contains("absent.mat") && e.contains("no such file"), "{e}");
    let mut a = args(Format::WikiMat, &[&p("ok.mat")], &out);
    a.classes = Some(p("absent-names.txt"));
    assert!(err_of(&a).contains("absent-names.txt"));
    std::fs::write(p("two-names.txt"), "a\nb\n").unwrap();
    a.classes = Some(p("two-names.txt"));
    let e = err_of(&a);
    assert!(e.contains("2 class names") && e.contains("3 classes"), "{e}");
    assert_only(&work, &[]);
    // An existing output is kept unless --force.
    let a = args(Format::WikiMat, &[&p("ok.mat")], &out);
    convert(&a).unwrap();
    let e = err_of(&a);
    assert!(e.contains("already exists") && e.contains("--force"), "{e}");
    let mut a = a;
    a.force = true;
    convert(&a).unwrap();
    assert_only(&work, &["bundle"]);
}

// ------------------------------------------------------------------ the real files in ../shared

fn shared() -> Option<PathBuf> {
    let p = repo().join("../shared/data");
    if p.is_dir() {
        Some(p)
    } else {
        // Worktrees live one level deeper than the main checkout.
        let alt = repo().join("../../shared/data");
        alt.is_dir().then_some(alt)
    }
}

fn read_list(path: &Path) -> Vec<usize> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('\t').nth(2).unwrap().trim().parse().unwrap())
        .collect()
}

/// The four Wikipedia copies give the same bundle; labels match the .list files and the class
/// counts in SOURCE.md.
#[test]
fn real_wiki_files_agree() {
    let Some(data) = shared() else {
        eprintln!("NOTICE: ../shared/data is absent; skipping the real Wikipedia check");
        return;
    };
    let wiki = data.join("wiki");
    let d = tempfile::tempdir().unwrap();
    let rel = wiki.join("raw_features_rasiwasia");
    let c = convert(&args(Format::Wiki, &[&rel], &d.path().join("wiki"))).unwrap();
    println!("{}", c.summary);
    let base = c.bundle;
    assert_eq!(base.n_items(), 2866);
    assert_eq!(
        base.class_names(),
        ["art", "biology", "geography", "history", "literature", "media", "music", "royalty", "sport", "warfare"]
    );
    assert_eq!(feats_of(&base, 0).dim(), (2866, 128));
    assert_eq!(feats_of(&base, 1).dim(), (2866, 10));
    let s = base.split.as_ref().unwrap();
    assert_eq!((s.train.len(), s.query.len(), s.database.len()), (2173, 693, 2173));
    // Labels = the .list category column, read here independently.
    let cats: Vec<usize> =
        read_list(&rel.join("trainset_txt_img_cat.list")).into_iter().chain(read_list(&rel.join("testset_txt_img_cat.list"))).collect();
    for (i, &k) in cats.iter().enumerate() {
        let row = base.labels[0].row(i);
        assert!(row[k - 1] == 1 && row.sum() == 1, "item {i}");
    }
    let counts =
        |r: std::ops::Range<usize>| -> Vec<u32> { (0..10).map(|k| r.clone().map(|i| base.labels[0][[i, k]] as u32).sum()).collect() };
    assert_eq!(counts(0..2173), vec![138, 272, 244, 248, 202, 178, 186, 144, 214, 347]);
    assert_eq!(counts(2173..2866), vec![34, 88, 96, 85, 65, 58, 51, 41, 71, 104]);
    // Image rows are L1-normalised histograms.
    assert!(feats_of(&base, 0).rows().into_iter().all(|r| (r.sum() - 1.0).abs() < 1e-4));
    for f in ["wikiData_RFDH.mat", "wikiData_MTFH.mat", "wiki_data_SCRATCH.mat"] {
        let mut a = args(Format::WikiMat, &[&wiki.join(f)], &d.path().join(f));
        a.classes = Some(rel.join("categories.list"));
        let b = convert(&a).unwrap_or_else(|e| panic!("{f}: {e:#}")).bundle;
        assert_eq!(feats_of(&b, 0), feats_of(&base, 0), "{f}: image features");
        assert_eq!(feats_of(&b, 1), feats_of(&base, 1), "{f}: text features");
        assert_eq!(b.labels[0], base.labels[0], "{f}: labels");
        assert_eq!(b.split, base.split, "{f}: split");
        assert_eq!(b.class_names(), base.class_names());
    }
}

#[test]
fn real_uci_digits() {
    let Some(data) = shared() else {
        eprintln!("NOTICE: ../shared/data is absent; skipping the real UCI check");
        return;
    };
    let f = data.join("uci_digits/uci_all.mat");
    let d = tempfile::tempdir().unwrap();
    let b = convert(&args(Format::Uci, &[&f], &d.path().join("uci"))).unwrap().bundle;
    assert_eq!(b.n_items(), 2000);
    assert_eq!((feats_of(&b, 0).ncols(), feats_of(&b, 1).ncols()), (76, 64));
    let s = b.split.as_ref().unwrap();
    assert_eq!((s.train.len(), s.query.len(), s.database.len()), (1500, 500, 1500));
    assert!(b.labels[0].sum_axis(Axis(0)).iter().all(|&c| c == 200), "200 items per digit");
    // The names: in the pixel view (16 rows × 15 columns), "zero" has an empty centre and "one"
    // the most ink there.
    let mut a = args(Format::Uci, &[&f], &d.path().join("pix"));
    a.keys = vec!["image_train=P_tr".into(), "image_test=P_te".into()];
    let b = convert(&a).unwrap().bundle;
    let px = feats_of(&b, 0);
    assert_eq!(px.ncols(), 240);
    let centre: Vec<f64> = (0..10)
        .map(|k| {
            let rows: Vec<usize> = (0..2000).filter(|&i| b.labels[0][[i, k]] == 1).collect();
            let mut s = 0.0;
            for &i in &rows {
                for y in 6..10 {
                    for x in 6..9 {
                        s += px[[i, y * 15 + x]] as f64;
                    }
                }
            }
            s / (rows.len() * 12) as f64
        })
        .collect();
    let argmin = (0..10).min_by(|&a, &b| centre[a].total_cmp(&centre[b])).unwrap();
    let argmax = (0..10).max_by(|&a, &b| centre[a].total_cmp(&centre[b])).unwrap();
    assert_eq!((b.class_names()[argmin].as_str(), b.class_names()[argmax].as_str()), ("zero", "one"), "{centre:?}");
}
