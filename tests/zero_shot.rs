//! The zero-shot protocol end to end on a small bundle: every shallow method's defaults fit a
//! training set smaller than their anchor counts, and SeGH encodes unseen-class items through its
//! class-embedding encoder–decoder (the only path it has).

use cmh::bundle::{one_hot, Bundle, BundleWriter, FixedSplit, NewModality};
use cmh::method::{FitContext, HashModel, View, IMAGE, TEXT};
use cmh::metrics::EvalOptions;
use cmh::pipeline::{evaluate_split, fit_method, EncodedSplit};
use cmh::shallow::segh::{synthetic, SyntheticSpec};
use cmh::split::{bundle_views, make_split, Protocol, Split, SplitConfig};
use ndarray::Axis;
use std::path::Path;

/// A bundle of `n` items over 10 classes whose features are linear in the class embeddings (so the
/// embeddings carry what relates unseen to seen classes); 70% train, 30% test.
fn bundle(dir: &Path, n: usize, with_embeddings: bool) -> Bundle {
    let spec = SyntheticSpec { n, n_classes: 10, image_dim: 30, text_dim: 20, embedding_dim: 24, noise: (1.0, 0.5), seed: 17 };
    let (ts, class) = synthetic(&spec);
    let feats = |m: usize| match &ts.views[m] {
        View::Features(x) => x.clone(),
        _ => unreachable!("synthetic data are features"),
    };
    let cut = n * 7 / 10;
    let out = dir.join(if with_embeddings { "with" } else { "without" });
    BundleWriter {
        name: "synthetic".into(),
        source: "test".into(),
        classes: ts.class_names.clone(),
        modalities: vec![
            NewModality { name: "image".into(), features: Some(feats(IMAGE)), ..Default::default() },
            NewModality { name: "text".into(), features: Some(feats(TEXT)), ..Default::default() },
        ],
        labels: vec![one_hot(&class, 10)],
        class_embeddings: with_embeddings.then(|| (ts.class_embeddings.clone().unwrap(), "random class vectors".to_string())),
        split: Some(FixedSplit { train: (0..cut).collect(), query: (cut..n).collect(), database: (0..cut).collect() }),
        ..Default::default()
    }
    .write(&out, false)
    .unwrap();
    Bundle::load(&out).unwrap()
}

fn zero_shot(b: &Bundle, seed: u64) -> Split {
    make_split(b, &SplitConfig { protocol: Protocol::ZeroShot, seed, unseen_fraction: 0.2, ..SplitConfig::default() }).unwrap()
}

/// (I→T, T→I) mAP of a model on the split's queries against its encoded database.
fn maps(model: &dyn HashModel, b: &Bundle, split: &Split) -> (f64, f64) {
    let enc = |idx: &[usize]| {
        let v = bundle_views(b, idx, false).unwrap();
        [model.encode(IMAGE, &v[IMAGE]).unwrap(), model.encode(TEXT, &v[TEXT]).unwrap()]
    };
    let e = EncodedSplit { query: enc(&split.query), database: enc(&split.database), learned_db: None };
    let ev = evaluate_split(&e, b, split, &EvalOptions::default()).unwrap();
    (ev.i2t.map, ev.t2i.map)
}

#[test]
fn shallow_defaults_fit_a_zero_shot_training_set_smaller_than_their_anchor_counts() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), 200, true);
    let split = zero_shot(&b, 3);
    let train = split.train_set(&b, false).unwrap();
    assert!(train.len() < 1000, "the training set must be smaller than the default anchor count");
    for method in ["sch", "segh", "cca-itq", "attr-ridge"] {
        let defaults = cmh::pipeline::method_info(method).unwrap();
        let anchors = defaults.defaults.get("anchors").and_then(|v| v.as_integer()).unwrap_or(0) as usize;
        if method != "attr-ridge" {
            assert!(anchors > train.len(), "{method}: default anchors {anchors} should exceed the {} training rows", train.len());
        }
        let (model, _) = fit_method(method, &toml::Table::new(), &train, &FitContext::new(16, 0))
            .unwrap_or_else(|e| panic!("{method} with its defaults on {} training rows: {e:#}", train.len()));
        let (i2t, t2i) = maps(model.as_ref(), &b, &split);
        assert!(i2t.is_finite() && t2i.is_finite() && i2t > 0.0 && t2i > 0.0, "{method}: {i2t} {t2i}");
    }
}

#[test]
fn segh_encodes_unseen_classes_through_the_class_embeddings_under_the_zero_shot_protocol() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), 700, true);
    let (mut i2t, mut t2i, mut floor) = (0.0, 0.0, 0.0);
    for seed in 0..3 {
        let split = zero_shot(&b, seed);
        let train = split.train_set(&b, false).unwrap();
        // Nothing of an unseen class is in training; the class embeddings of every class are.
        let unseen_rows = train.labels[IMAGE].axis_iter(Axis(0)).filter(|r| split.unseen_classes.iter().any(|&c| r[c] != 0)).count();
        assert_eq!(unseen_rows, 0);
        assert_eq!(train.class_embeddings.as_ref().unwrap().nrows(), 10);
        let ctx = FitContext::new(16, seed);
        let (model, _) = fit_method("segh", &toml::Table::new(), &train, &ctx).unwrap();
        let (a, t) = maps(model.as_ref(), &b, &split);
        let (random, _) = fit_method("random", &toml::Table::new(), &train, &ctx).unwrap();
        let (ra, rt) = maps(random.as_ref(), &b, &split);
        (i2t, t2i, floor) = (i2t + a / 3.0, t2i + t / 3.0, floor + (ra + rt) / 6.0);
    }
    // Two unseen classes: random codes score about 0.5.
    assert!(i2t > floor + 0.1 && t2i > floor + 0.1, "SeGH zero-shot {i2t:.3} / {t2i:.3}, random {floor:.3}");
    // Without class embeddings there is no zero-shot SeGH: the fit is refused, naming the fix.
    let plain = bundle(d.path(), 700, false);
    let split = zero_shot(&plain, 0);
    let train = split.train_set(&plain, false).unwrap();
    let err = format!("{:#}", fit_method("segh", &toml::Table::new(), &train, &FitContext::new(16, 0)).err().expect("refused"));
    assert!(err.contains("class embeddings") && err.contains("embed-classes"), "{err}");
}
