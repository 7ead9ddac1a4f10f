//! Tests of SDCH: losses against hand-worked values, the schedule, ITQ initialisation, save/load.

use super::*;
use crate::deep::trainer::Interrupted;
use ndarray::{array, Array2};
use rand::Rng;
use rand_distr::StandardNormal;

fn t(a: &Array2<f64>) -> Tensor {
    array_to_tensor(a.mapv(|v| v as f32).view(), Device::Cpu)
}

/// Eq. 4 against a plain f64 double loop.
#[test]
fn loss_f_matches_plain_computation() {
    let fx = array![[0.5, -1.0], [2.0, 0.3], [-0.7, 0.1]];
    let fy = array![[1.0, 1.0], [-0.2, 0.4], [3.0, -2.0]];
    let lx = array![[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]];
    let ly = array![[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]];
    let mut want = 0.0;
    for i in 0..3 {
        for j in 0..3 {
            let theta: f64 = (0..2).map(|k| fx[[i, k]] * fy[[j, k]]).sum();
            let s = if (0..2).any(|c| lx[[i, c]] > 0.0 && ly[[j, c]] > 0.0) { 1.0 } else { 0.0 };
            want += (1.0 + theta.exp()).ln() - s * theta;
        }
    }
    let s = pair_similarity(&t(&lx), &t(&ly));
    assert_eq!(Vec::<f32>::try_from(s.view([-1])).unwrap(), vec![0., 1., 0., 1., 0., 1., 1., 1., 1.]);
    let got = loss_f(&t(&fx), &t(&fy), &s).double_value(&[]);
    assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{got} vs {want}");
}

/// Eq. 7 against a plain computation in the paper's layout (codes as columns, Z ∈ ℝ^{r×N}).
#[test]
fn loss_h_matches_plain_computation_in_column_layout() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (n, r) = (6usize, 3usize);
    let zrows = Array2::from_shape_simple_fn((n, r), || rng.sample::<f64, _>(StandardNormal));
    let brows = zrows.mapv(|v| if v >= 0.0 { 1.0 } else { -1.0 });
    let labels = array![[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]];
    let zc = zrows.t().to_owned(); // r × N, the paper's Z
    let bc = brows.t().to_owned();
    let beta = [1.0, 0.7, 0.1];
    for scale in [DecorrelationScale::Items, DecorrelationScale::Bits] {
        let c = if scale == DecorrelationScale::Items { n as f64 } else { r as f64 };
        let mut want = 0.0;
        for i in 0..n {
            for j in 0..n {
                let ztz: f64 = (0..r).map(|k| zc[[k, i]] * zc[[k, j]]).sum(); // (ZᵀZ)ᵢⱼ, N × N
                let share = (0..2).any(|q| labels[[i, q]] > 0.0 && labels[[j, q]] > 0.0);
                let sh = if share { 1.0 } else { -1.0 };
                want += (ztz / r as f64 - sh).powi(2);
            }
        }
        for k in 0..r {
            for i in 0..n {
                want += beta[0] * (zc[[k, i]] - bc[[k, i]]).powi(2) + beta[2] / r as f64 * zc[[k, i]].powi(2);
            }
            for l in 0..r {
                let zzt: f64 = (0..n).map(|i| zc[[k, i]] * zc[[l, i]]).sum(); // (ZZᵀ)ₖₗ, r × r
                let eye = if k == l { 1.0 } else { 0.0 };
                want += beta[1] * (zzt / c - eye).powi(2);
            }
        }
        let sh = hash_similarity(&t(&labels));
        assert_eq!(sh.double_value(&[0, 1]), -1.0);
        assert_eq!(sh.double_value(&[0, 2]), 1.0);
        assert_eq!(sh.double_value(&[4, 4]), 1.0);
        let got = loss_h(&t(&zrows), &t(&brows), &sh, beta, scale).double_value(&[]);
        assert!((got - want).abs() < 1e-4 * want.abs(), "{scale:?}: {got} vs {want}");
    }
}

/// Three well separated classes; image and text features are noisy class prototypes.
fn toy(n: usize, seed: u64) -> TrainSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (dx, dy, c) = (6, 5, 3);
    let px = Array2::from_shape_simple_fn((c, dx), || 3.0 * rng.sample::<f64, _>(StandardNormal));
    let py = Array2::from_shape_simple_fn((c, dy), || 3.0 * rng.sample::<f64, _>(StandardNormal));
    let cls: Vec<usize> = (0..n).map(|i| i % c).collect();
    let x = Array2::from_shape_fn((n, dx), |(i, j)| (px[[cls[i], j]] + rng.sample::<f64, _>(StandardNormal)) as f32);
    let y = Array2::from_shape_fn((n, dy), |(i, j)| (py[[cls[i], j]] + rng.sample::<f64, _>(StandardNormal)) as f32);
    TrainSet::supervised(
        vec![View::Features(x), View::Features(y)],
        crate::bundle::one_hot(&cls, c),
        vec!["a".into(), "b".into(), "c".into()],
    )
}

fn small() -> SdchParams {
    SdchParams { epochs: 4, batch_size: 8, feature_dim: 8, hidden: vec![16], ..Default::default() }
}

#[test]
fn memory_mapped_bundle_trains_like_the_loaded_one() {
    // The same bundle loaded and memory-mapped, the same split: identical losses, codes and
    // encodings (every batch holds the same values, only read from the file).
    let data = toy(90, 4);
    let dir = tempfile::tempdir().unwrap();
    let nm = |m: usize| crate::bundle::NewModality {
        name: ["image", "text"][m].into(),
        features: Some(data.views[m].features("t", m).unwrap().clone()),
        ..Default::default()
    };
    crate::bundle::BundleWriter {
        name: "toy".into(),
        source: "test".into(),
        classes: data.class_names.clone(),
        modalities: vec![nm(0), nm(1)],
        labels: vec![data.labels[0].clone()],
        ..Default::default()
    }
    .write(&dir.path().join("toy"), false)
    .unwrap();
    let loaded = crate::bundle::Bundle::load(&dir.path().join("toy")).unwrap();
    let mapped = crate::bundle::Bundle::load_mapped(&dir.path().join("toy")).unwrap();
    assert!(mapped.modalities.iter().all(|m| m.features.is_none() && m.mapped_features.is_some()));
    let train: Vec<usize> = (0..90).filter(|i| i % 5 != 0).collect();
    let set = |b: &crate::bundle::Bundle| {
        let views = crate::split::bundle_views(b, &train, false).unwrap();
        TrainSet::supervised(views, b.labels[0].select(Axis(0), &train), b.class_names().to_vec())
    };
    let (a, b) = (set(&loaded), set(&mapped));
    assert!(matches!(b.views[IMAGE], View::Mapped(_)) && matches!(a.views[IMAGE], View::Features(_)));
    let p = SdchParams { epochs: 6, ..small() };
    let ctx = FitContext::new(8, 3);
    let (ma, mb) = (p.fit(&a, &ctx).unwrap(), p.fit(&b, &ctx).unwrap());
    assert_eq!(ma.history(), mb.history());
    assert_eq!(ma.train_codes(), mb.train_codes());
    for m in [IMAGE, TEXT] {
        assert_eq!(ma.encode(m, &b.views[m]).unwrap(), ma.encode(m, &a.views[m]).unwrap());
        assert_eq!(mb.hash_outputs(m, &b.views[m]).unwrap(), ma.hash_outputs(m, &a.views[m]).unwrap());
    }
    // Shallow methods need the features in memory and say so.
    let e = format!("{:#}", crate::shallow::sch::SchParams { anchors: 5, ..Default::default() }.fit(&b, &ctx).unwrap_err());
    assert!(e.contains("memory-mapped") && e.contains("image_features.npy"), "{e}");
}

#[test]
fn learns_separable_toy_data_and_round_trips() {
    let data = toy(60, 1);
    let p = SdchParams { epochs: 30, ..small() };
    let model = p.fit(&data, &FitContext::new(8, 2)).unwrap();
    assert_eq!(model.history().len(), 30);
    let labels = &data.labels[0];
    let qi = model.encode(IMAGE, &data.views[IMAGE]).unwrap();
    let dt = model.encode(TEXT, &data.views[TEXT]).unwrap();
    let i2t = crate::metrics::map(qi.view(), dt.view(), labels.view(), labels.view()).unwrap();
    let b = model.train_codes().unwrap();
    let t2i = crate::metrics::map(dt.view(), b.view(), labels.view(), labels.view()).unwrap();
    assert!(i2t > 0.9 && t2i > 0.9, "I→T {i2t}, T→I (learned B) {t2i}, losses {:?}", model.history());
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let loaded = load(dir.path()).unwrap();
    assert_eq!(loaded.encode(TEXT, &data.views[TEXT]).unwrap(), dt);
    assert_eq!(loaded.train_codes().unwrap(), b);
    assert!(loaded.history().iter().zip(model.history()).all(|(a, b)| (a - b).abs() <= 1e-12 * b.abs()));
    // Python encodes with the saved weights alone (scripts/sdch_encode.py) and agrees.
    if let Some(py) = crate::deep::test_support::python_with(&["numpy"]) {
        for (side, m) in [("img", IMAGE), ("txt", TEXT)] {
            let x = dir.path().join(format!("{side}.npy"));
            crate::npy::write_npy(&x, data.views[m].features("test", m).unwrap()).unwrap();
            let out = dir.path().join(format!("{side}_codes.npy"));
            let (xs, os) = (x.to_str().unwrap(), out.to_str().unwrap());
            crate::deep::test_support::run_script(&py, "sdch_encode.py", &[dir.path().to_str().unwrap(), xs, "--side", side, "--out", os]);
            let py_codes = BinaryCodes::load_npy(&out, Some(8)).unwrap();
            let z = model.hash_outputs(m, &data.views[m]).unwrap();
            let rust_codes = model.encode(m, &data.views[m]).unwrap();
            // Bits whose pre-sign value is within float rounding of 0 may differ (f64 in numpy).
            for i in 0..z.nrows() {
                for j in 0..8 {
                    if z[[i, j]].abs() > 1e-4 {
                        assert_eq!(py_codes.bit(i, j), rust_codes.bit(i, j), "{side} item {i} bit {j}");
                    }
                }
            }
        }
    }
    // Wrong inputs are refused clearly.
    let e = model.encode(TEXT, &data.views[IMAGE]).unwrap_err().to_string();
    assert!(e.contains("text input has 6-d features, the model expects 5-d"), "{e}");
    let e = model.encode(2, &data.views[TEXT]).unwrap_err().to_string();
    assert!(e.contains("modality 2 does not exist"), "{e}");
}

fn weights(m: &SdchModel) -> Vec<(String, Vec<f32>)> {
    let net = m.net.lock().unwrap();
    let mut v: Vec<(String, Vec<f32>)> =
        net.vs.variables().into_iter().map(|(n, t)| (n, Vec::<f32>::try_from(t.view([-1])).unwrap())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A run stopped after epoch 1 (B not yet initialised) or 2 (after the hash-only epoch) and
/// resumed ends with exactly the weights and codes of an uninterrupted run.
#[test]
fn runs_stopped_within_an_epoch_resume_to_the_uninterrupted_model() {
    let data = toy(30, 4);
    // Batches of 4: 7 per epoch; dropout draws from libtorch's generator in every batch.
    let p = SdchParams { dropout: 0.2, batch_size: 4, ..small() };
    let ctx = |dir: &Path, resume: bool| FitContext {
        checkpoint_dir: Some(dir.to_path_buf()),
        resume,
        device: crate::method::DeviceChoice::Cpu,
        ..FitContext::new(8, 11)
    };
    let d = tempfile::tempdir().unwrap();
    let full = p.fit(&data, &ctx(&d.path().join("full"), false)).unwrap();
    // Checkpoints every 2 batches change nothing.
    let every = RunControl { checkpoint_steps: Some(2), ..Default::default() };
    let checked = p.fit_with_control(&data, &ctx(&d.path().join("every"), false), &every).unwrap();
    assert_eq!(weights(&checked), weights(&full));
    // Stopped after 3 batches of epoch 1 (features only) and of epoch 3 (all layers, B set).
    for (epoch, step) in [(1, 3), (3, 5)] {
        let dir = d.path().join(format!("stop{epoch}"));
        let stop = RunControl { stop_after_step: Some((epoch, step)), ..Default::default() };
        let e = p.fit_with_control(&data, &ctx(&dir, false), &stop).err().expect("interrupted");
        let i = e.downcast_ref::<Interrupted>().expect("Interrupted");
        assert_eq!((i.epoch, i.step), (epoch - 1, step));
        let ck = Checkpoint::load(&dir.join(crate::deep::trainer::CHECKPOINT_FILE)).unwrap();
        assert_eq!((ck.meta.epoch, ck.meta.step), (epoch - 1, step));
        let resumed = p.fit(&data, &ctx(&dir, true)).unwrap();
        assert_eq!(resumed.history(), full.history(), "stopped in epoch {epoch}");
        assert_eq!(weights(&resumed), weights(&full), "stopped in epoch {epoch}");
        assert_eq!(resumed.train_codes(), full.train_codes());
    }
}

#[test]
fn resumed_runs_equal_uninterrupted_runs() {
    let data = toy(30, 4);
    let p = SdchParams { dropout: 0.2, ..small() };
    let ctx = |dir: &Path, resume: bool| FitContext {
        checkpoint_dir: Some(dir.to_path_buf()),
        resume,
        device: crate::method::DeviceChoice::Cpu,
        ..FitContext::new(8, 11)
    };
    let d = tempfile::tempdir().unwrap();
    let full = p.fit(&data, &ctx(&d.path().join("full"), false)).unwrap();
    let log = std::fs::read_to_string(d.path().join("full").join(crate::deep::trainer::LOG_FILE)).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("epoch ")).count(), 4, "{log}");
    for stop in [1, 2] {
        let dir = d.path().join(format!("stop{stop}"));
        let e = p
            .fit_with_control(&data, &ctx(&dir, false), &RunControl { stop_after_epoch: Some(stop), ..Default::default() })
            .err()
            .expect("interrupted");
        assert_eq!(e.downcast_ref::<Interrupted>().map(|i| i.epoch), Some(stop));
        let resumed = p.fit(&data, &ctx(&dir, true)).unwrap();
        assert_eq!(resumed.history(), full.history(), "stop {stop}");
        assert_eq!(weights(&resumed), weights(&full), "stop {stop}");
        assert_eq!(resumed.train_codes(), full.train_codes());
        for m in [IMAGE, TEXT] {
            assert_eq!(resumed.encode(m, &data.views[m]).unwrap(), full.encode(m, &data.views[m]).unwrap());
        }
    }
    // Another architecture or other hyper-parameters: refused, naming what differs.
    let other = SdchParams { hidden: vec![12], ..small() };
    let e = format!("{:#}", other.fit(&data, &ctx(&d.path().join("stop1"), true)).err().unwrap());
    assert!(e.contains("another architecture") && e.contains("arch.hidden"), "{e}");
    let e = format!("{:#}", small().fit(&data, &FitContext { bits: 16, ..ctx(&d.path().join("stop1"), true) }).err().unwrap());
    assert!(e.contains("arch.bits: checkpoint 8 vs now 16"), "{e}");
    // Truncated, corrupt, missing checkpoints: clear errors naming the file.
    let ck = d.path().join("stop2").join(crate::deep::trainer::CHECKPOINT_FILE);
    let bytes = std::fs::read(&ck).unwrap();
    std::fs::write(&ck, &bytes[..bytes.len() / 2]).unwrap();
    let e = format!("{:#}", p.fit(&data, &ctx(&d.path().join("stop2"), true)).err().unwrap());
    assert!(e.contains("checkpoint.safetensors") && e.contains("truncated or corrupt"), "{e}");
    std::fs::write(&ck, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}        ").unwrap();
    let e = format!("{:#}", p.fit(&data, &ctx(&d.path().join("stop2"), true)).err().unwrap());
    assert!(e.contains("checkpoint.safetensors"), "{e}");
    let e = format!("{:#}", p.fit(&data, &ctx(&d.path().join("none"), true)).err().unwrap());
    assert!(e.contains("nothing to resume"), "{e}");
    // A checkpoint written by another method.
    let (tensors, mut meta) = read_safetensors(&d.path().join("stop1").join(crate::deep::trainer::CHECKPOINT_FILE)).unwrap();
    let json = meta["cmh"].replace("\"method\":\"sdch\"", "\"method\":\"agnet\"");
    assert_ne!(json, meta["cmh"]);
    meta.insert("cmh".into(), json);
    write_safetensors(&ck, &tensors, meta).unwrap();
    let e = format!("{:#}", p.fit(&data, &ctx(&d.path().join("stop2"), true)).err().unwrap());
    assert!(e.contains("written by method agnet"), "{e}");
}

#[test]
fn bad_settings_are_refused() {
    let data = toy(12, 5);
    let ctx = FitContext::new(8, 0);
    for (p, msg) in [
        (SdchParams { batch_size: 1, ..small() }, "batch_size must be at least 2"),
        (SdchParams { lr_hash: -1.0, ..small() }, "sdch.lr_hash"),
        (SdchParams { dropout: 1.0, ..small() }, "dropout"),
        (SdchParams { pretrained: Some("w.pth".into()), ..small() }, "holds feature vectors"),
    ] {
        let e = format!("{:#}", p.fit(&data, &ctx).err().unwrap());
        assert!(e.contains(msg), "{e}");
    }
    let e = format!("{:#}", small().fit(&data, &FitContext { device: crate::method::DeviceChoice::Cuda, ..ctx.clone() }).err().unwrap());
    if !crate::deep::trainer::cuda_available() {
        assert!(e.contains("CUDA is not available"), "{e}");
    }
    let toml_err = toml::from_str::<SdchParams>("epochs = 3\nbogus = 1").unwrap_err().to_string();
    assert!(toml_err.contains("bogus"), "{toml_err}");
    let p: SdchParams = toml::from_str("epochs = 3\nbeta2 = 0.5").unwrap();
    assert_eq!((p.epochs, p.beta2, p.gamma, p.batch_size), (3, 0.5, 0.01, 64));
}

/// Image mode: AlexNet on 64×64 images with "pretrained" weights; with a learning-rate factor
/// of 0 the pretrained layers stay put while the new k-d layer (classifier.6) learns.
#[test]
fn image_mode_with_pretrained_layers() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let n = 6;
    let images = ndarray::Array4::from_shape_simple_fn((n, 64, 64, 3), || rng.gen::<u8>());
    let cls: Vec<usize> = (0..n).map(|i| i % 2).collect();
    let text = Array2::from_shape_fn((n, 4), |(i, j)| if j == cls[i] { 1.0f32 } else { 0.0 });
    let data = TrainSet::supervised(
        vec![View::Images(images), View::Features(text)],
        crate::bundle::one_hot(&cls, 2),
        vec!["a".into(), "b".into()],
    );
    let d = tempfile::tempdir().unwrap();
    let w = d.path().join("alexnet.safetensors");
    {
        let _lock = crate::deep::test_support::torch_rng_lock(); // not while training below
        let vs = nn::VarStore::new(Device::Cpu);
        let _a = AlexNet::new(&vs.root(), 1000);
        write_safetensors(&w, &vs.variables().into_iter().collect::<Vec<_>>(), Default::default()).unwrap();
    }
    let p = SdchParams {
        epochs: 1,
        batch_size: 3,
        feature_dim: 8,
        hidden: vec![8],
        image_size: 64,
        pretrained: Some(w.clone()),
        pretrained_lr_factor: 0.0,
        warmup_schedule: false,
        ..Default::default()
    };
    let model = p.fit(&data, &FitContext::new(4, 0)).unwrap();
    let codes = model.encode(IMAGE, &data.views[IMAGE]).unwrap();
    assert_eq!((codes.len(), codes.bits()), (n, 4));
    let (src, _) = read_safetensors(&w).unwrap();
    let src: std::collections::HashMap<String, Tensor> = src.into_iter().collect();
    let net = model.net.lock().unwrap();
    let vars = net.vs.variables();
    assert!(vars["img.features.0.weight"].equal(&src["features.0.weight"]), "pretrained layer frozen by factor 0");
    assert!(vars["img.classifier.4.bias"].equal(&src["classifier.4.bias"]));
    assert_eq!(vars["img.classifier.6.weight"].size(), [8, 4096]);
    drop(net);
    let e = model.encode(IMAGE, &data.views[TEXT]).unwrap_err().to_string();
    assert!(e.contains("AlexNet, which reads images"), "{e}");
}
