//! The Python helpers the binary carries, through the library functions that use them: the emoji
//! benchmark built end to end by `build_emoji.py` (network only when the npm tarballs are not yet
//! cached under the target folder; skipped with a notice when they cannot be fetched or the Python
//! packages are missing), then used as the shallow methods use a bundle: load, split, training
//! set, features; and the MiniLM sentence embeddings against the published quickstart.

mod common;

use cmh::bundle::Bundle;
use cmh::helpers::{MiniLmUnavailable, MissingPythonPackage, PackagesUnavailable};
use cmh::method::View;
use cmh::semantics::{BuildEmojiArgs, EMOJI_CATEGORIES, EMOJI_ITEMS, EMOJI_SUBCATEGORIES};
use cmh::split::{make_split, Protocol, SplitConfig};
use common::python::ScriptHelpers;
use std::path::PathBuf;

fn cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("emoji-npm-cache")
}

fn build_emoji(args: &BuildEmojiArgs) -> anyhow::Result<(Bundle, serde_json::Value)> {
    cmh::semantics::build_emoji(args, &ScriptHelpers)
}

/// Builds, or returns None (with a printed notice) when the environment cannot.
fn build(args: &BuildEmojiArgs) -> Option<(Bundle, serde_json::Value)> {
    match build_emoji(args) {
        Ok(r) => Some(r),
        Err(e)
            if e.downcast_ref::<PackagesUnavailable>().is_some()
                || e.downcast_ref::<MiniLmUnavailable>().is_some()
                || e.downcast_ref::<MissingPythonPackage>().is_some() =>
        {
            eprintln!("SKIPPED emoji bundle test: {e:#}");
            None
        }
        Err(e) => panic!("{e:#}"),
    }
}

#[test]
fn emoji_bundle_builds_and_serves_a_shallow_method() {
    let d = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let mut args = BuildEmojiArgs::new(&d.path().join("emoji"));
    args.cache = Some(cache());
    let Some((b, summary)) = build(&args) else { return };
    eprintln!("built in {:.1} s: {summary}", t0.elapsed().as_secs_f64());

    // The documented counts, and every file as src/bundle.rs expects (Bundle::load validated).
    assert_eq!(b.n_items(), EMOJI_ITEMS);
    assert_eq!(b.n_classes(), EMOJI_SUBCATEGORIES);
    assert_eq!(summary["categories"], EMOJI_CATEGORIES);
    assert_eq!(b.class_names()[0], "face-smiling");
    let img = b.modalities[0].images.as_ref().unwrap();
    assert_eq!(img.shape(), &[EMOJI_ITEMS, 64, 64, 3]);
    // Composited on white: the corners of every emoji are (almost always) white.
    let white = (0..EMOJI_ITEMS).filter(|&i| (0..3).all(|c| img[[i, 0, 0, c]] == 255)).count();
    assert!(white > EMOJI_ITEMS * 9 / 10, "only {white} items have a white corner");
    let xi = b.modalities[0].features.as_ref().unwrap();
    let xt = b.modalities[1].features.as_ref().unwrap();
    assert_eq!(xi.dim(), (EMOJI_ITEMS, 624));
    assert_eq!(xt.nrows(), EMOJI_ITEMS);
    for row in xi.outer_iter() {
        assert!((row.dot(&row).sqrt() - 1.0).abs() < 1e-4, "image descriptor rows have unit norm");
    }
    assert!(xt.iter().all(|&v| v == 0.0 || v == 1.0), "binary bag of words");
    assert!(xt.outer_iter().all(|r| r.sum() >= 1.0), "no empty text");
    assert!(b.labels[0].outer_iter().all(|r| r.iter().map(|&v| v as usize).sum::<usize>() == 1), "one subcategory each");

    // Split: queries ∪ database = everything, disjoint, train = database, ~20% of every class
    // that has at least 3 items.
    let s = b.split.as_ref().unwrap();
    assert_eq!(s.train, s.database);
    let mut all: Vec<usize> = s.query.iter().chain(&s.database).copied().collect();
    all.sort();
    assert_eq!(all, (0..EMOJI_ITEMS).collect::<Vec<_>>());
    let class_of = |i: usize| b.labels[0].row(i).iter().position(|&v| v == 1).unwrap();
    for c in 0..b.n_classes() {
        let n = (0..EMOJI_ITEMS).filter(|&i| class_of(i) == c).count();
        let q = s.query.iter().filter(|&&i| class_of(i) == c).count();
        let want = ((0.2 * n as f64).round() as usize).min(n.saturating_sub(1));
        assert_eq!(q, want, "class {} has {n} items, {q} queries", b.class_names()[c]);
    }

    // Class embeddings: MiniLM of the subcategory names, unit norm, and semantically sensible:
    // "animal mammal" is closer to "animal bird" than to "flag".
    let e = b.class_embeddings.as_ref().unwrap();
    assert_eq!(e.dim(), (EMOJI_SUBCATEGORIES, 384));
    let ix = |n: &str| b.class_index(n).unwrap();
    let cos = |a: usize, c: usize| e.row(a).dot(&e.row(c));
    assert!(cos(ix("animal-mammal"), ix("animal-bird")) > cos(ix("animal-mammal"), ix("flag")));

    // A shallow method's view: standard and zero-shot training sets of descriptor features.
    let split = make_split(&b, &SplitConfig::default()).unwrap();
    let ts = split.train_set(&b, false).unwrap();
    let shapes: Vec<_> = ts
        .views
        .iter()
        .map(|v| match v {
            View::Features(x) => x.dim(),
            View::Images(_) | View::Mapped(_) => panic!("features preferred"),
        })
        .collect();
    eprintln!(
        "standard: train {} (views {:?}), queries {}, database {}, classes {}, class embeddings {:?}",
        ts.len(),
        shapes,
        split.query.len(),
        split.database.len(),
        ts.n_classes(),
        ts.class_embeddings.as_ref().map(|e| e.dim())
    );
    assert_eq!(shapes, vec![(split.train.len(), 624), (split.train.len(), xt.ncols())]);
    ts.validate().unwrap();
    let zs = make_split(&b, &SplitConfig { protocol: Protocol::ZeroShot, seed: 1, ..Default::default() }).unwrap();
    let zt = zs.train_set(&b, true).unwrap();
    assert!(matches!(&zt.views[0], View::Images(im) if im.shape()[1..] == [64, 64, 3]));
    eprintln!(
        "zero-shot: {} unseen classes, train {}, queries {}, database {}",
        zs.unseen_classes.len(),
        zt.len(),
        zs.query.len(),
        zs.database.len()
    );
    assert!(!zs.query.is_empty() && !zs.database.is_empty());

    // The multi-label variant reuses the cached tarballs: 98 + 9 classes, two labels per item.
    let mut margs = BuildEmojiArgs::new(&d.path().join("emoji-multi"));
    margs.cache = Some(cache());
    margs.multilabel = true;
    margs.no_class_embeddings = true;
    let (m, _) = build(&margs).unwrap();
    assert_eq!(m.n_classes(), EMOJI_SUBCATEGORIES + EMOJI_CATEGORIES);
    assert_eq!(m.class_names()[EMOJI_SUBCATEGORIES], "Smileys & Emotion");
    assert!(m.labels[0].outer_iter().all(|r| r.iter().map(|&v| v as usize).sum::<usize>() == 2));
    assert_eq!(m.split.as_ref().unwrap().query, s.query, "same seed, same split");
    // An existing bundle is not replaced without force.
    assert!(build_emoji(&margs).is_err());
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The published sentence-transformers quickstart for all-MiniLM-L6-v2: cosine similarities
/// 0.6660 (1st–2nd), 0.1046 (1st–3rd), 0.1411 (2nd–3rd).
#[test]
fn minilm_matches_the_sentence_transformers_quickstart() {
    use cmh::semantics::{embed_classes, minilm_class_embeddings, minilm_embed, EmbedClassesArgs, EmbedSource, MINILM_DIM};
    use ndarray::array;
    let s = names(&["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]);
    let e = match minilm_embed(&s, &ScriptHelpers) {
        Ok(e) => e,
        Err(e) if e.downcast_ref::<MiniLmUnavailable>().is_some() || e.downcast_ref::<MissingPythonPackage>().is_some() => {
            eprintln!("SKIPPED minilm_matches_the_sentence_transformers_quickstart: {e:#}");
            return;
        }
        Err(e) => panic!("{e:#}"),
    };
    let sim = e.dot(&e.t());
    let got = [sim[[0, 1]], sim[[0, 2]], sim[[1, 2]]];
    for (g, want) in got.iter().zip([0.6660f32, 0.1046, 0.1411]) {
        assert!((g - want).abs() < 5e-5, "cosines {got:?}, published 0.6660 0.1046 0.1411");
    }
    // Class names go through class_sentence; the embedding of a name is deterministic.
    let c = minilm_class_embeddings(&names(&["animal-mammal", "animal mammal"]), &ScriptHelpers).unwrap();
    assert_eq!(c.row(0), c.row(1));

    // `embed-classes --minilm` writes them into a bundle with the model named in `source`.
    use cmh::bundle::{BundleWriter, NewModality};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("b");
    BundleWriter {
        name: "t".into(),
        source: "test".into(),
        classes: names(&["animal-mammal", "food_drink", "Smileys & Emotion"]),
        modalities: vec![NewModality { name: "image".into(), features: Some(array![[1.0f32], [2.0], [3.0]]), ..Default::default() }],
        labels: vec![array![[1u8, 0, 0], [0, 1, 0], [0, 0, 1]]],
        ..Default::default()
    }
    .write(&dir, false)
    .unwrap();
    embed_classes(&EmbedClassesArgs { bundle: dir.clone(), source: EmbedSource { glove: None, minilm: true } }, &ScriptHelpers).unwrap();
    let b = Bundle::load(&dir).unwrap();
    let spec = b.manifest.class_embeddings.as_ref().unwrap();
    assert!(spec.source.contains("all-MiniLM-L6-v2") && spec.dim == MINILM_DIM);
    let want = minilm_embed(&names(&["animal mammal", "food drink", "Smileys & Emotion"]), &ScriptHelpers).unwrap();
    let got = b.class_embeddings.unwrap();
    assert!(got.iter().zip(want.iter()).all(|(a, b)| (a - b).abs() < 1e-6));
}
