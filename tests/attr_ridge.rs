//! The attribute-regression hasher against an independent numpy computation of the same
//! closed form (standardise, ridge to the class-attribute targets, PCA of the stacked predictions).

mod common;

use cmh::method::{Fit, FitContext, HashModel, TrainSet, View};
use cmh::npy::write_npy;
use cmh::shallow::attr_ridge::{AttrRidgeModel, AttrRidgeParams};
use common::python;
use ndarray::Array2;
use std::process::Command;

const NUMPY_REFERENCE: &str = r#"
import sys, numpy as np
d = sys.argv[1]; lam = float(sys.argv[2]); bits = int(sys.argv[3])
E = np.load(f"{d}/emb.npy").astype(np.float64)
E /= np.linalg.norm(E, axis=1, keepdims=True)
L = np.load(f"{d}/labels.npy").astype(np.float64)
T = (L / L.sum(1, keepdims=True)) @ E            # mean of the label embeddings
preds, attrs = [], []
for m in (0, 1):
    X = np.load(f"{d}/x{m}.npy").astype(np.float64)
    mu, sd = X.mean(0), X.std(0)
    sd[sd <= 1e-12] = 1.0
    Z = (X - mu) / sd
    n = len(Z)
    W = np.linalg.solve(Z.T @ Z + lam * n * np.eye(Z.shape[1]), Z.T @ T)
    preds.append(Z @ W)
S = np.vstack(preds)
mean = S.mean(0)
vals, vecs = np.linalg.eigh(np.cov((S - mean).T, bias=True))
P = vecs[:, ::-1][:, :bits]
for m in (0, 1):
    np.save(f"{d}/ref_attr{m}.npy", preds[m])
    V = (preds[m] - mean) @ P
    np.save(f"{d}/ref_gram{m}.npy", V @ V.T)          # invariant to the ITQ rotation
"#;

#[test]
fn attr_ridge_matches_an_independent_numpy_closed_form() {
    let Some(py) = python() else {
        eprintln!("skipped: no .venv (run scripts/setup.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 90 items of 6 classes (one has two labels), 7-d and 5-d features with a class signal, one
    // constant feature column, 8-d class embeddings.
    let (n, c) = (90, 6);
    let mut rng_state = 12345u64;
    let mut rnd = || {
        rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((rng_state >> 33) as f64 / (1u64 << 31) as f64) - 0.5
    };
    let mut labels = Array2::<u8>::zeros((n, c));
    for i in 0..n {
        labels[[i, i % c]] = 1;
    }
    labels[[4, 1]] = 1;
    let emb = Array2::from_shape_fn((c, 8), |_| rnd() as f32);
    let centres: Vec<Array2<f64>> = [7, 5].iter().map(|&dim| Array2::from_shape_fn((c, dim), |_| 2.0 * rnd())).collect();
    let views: Vec<Array2<f32>> = (0..2)
        .map(|m| {
            let dim = centres[m].ncols();
            Array2::from_shape_fn((n, dim), |(i, j)| if m == 1 && j == 4 { 3.0 } else { (centres[m][[i % c, j]] + rnd()) as f32 })
        })
        .collect();
    for (m, x) in views.iter().enumerate() {
        write_npy(&d.join(format!("x{m}.npy")), x).unwrap();
    }
    write_npy(&d.join("labels.npy"), &labels).unwrap();
    write_npy(&d.join("emb.npy"), &emb).unwrap();
    let mut data =
        TrainSet::supervised(views.iter().cloned().map(View::Features).collect(), labels, (0..c).map(|k| format!("c{k}")).collect());
    data.class_embeddings = Some(emb);
    let (lam, bits) = (0.3, 4);
    let model = AttrRidgeParams { ridge: lam, ..Default::default() }.fit(&data, &FitContext::new(bits, 1)).unwrap();
    // Saved and loaded back, as a user would encode new items.
    model.save(&d.join("model")).unwrap();
    let model = AttrRidgeModel::load(&d.join("model")).unwrap();

    let st = Command::new(py).arg("-c").arg(NUMPY_REFERENCE).arg(d).arg(lam.to_string()).arg(bits.to_string()).status().unwrap();
    assert!(st.success());
    for (m, x) in views.iter().enumerate() {
        let view = View::Features(x.clone());
        let attr = model.attributes(m, &view).unwrap();
        let reference = cmh::shallow::common::load_matrix(&d.join(format!("ref_attr{m}.npy"))).unwrap();
        let err = (&attr - &reference).iter().fold(0.0f64, |a, v| a.max(v.abs()));
        assert!(err < 1e-4, "modality {m}: predicted attributes differ by {err}");
        // Rotation-invariant check of the code projections: (ZW − μ) Pₖ R (ZW − μ)ᵀ... = V Vᵀ.
        let y = model.project(m, &view).unwrap();
        let gram = y.dot(&y.t());
        let reference = cmh::shallow::common::load_matrix(&d.join(format!("ref_gram{m}.npy"))).unwrap();
        let scale = reference.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        let err = (&gram - &reference).iter().fold(0.0f64, |a, v| a.max(v.abs()));
        assert!(err < 1e-4 * scale, "modality {m}: projection Gram differs by {err} (scale {scale})");
        // The codes are the signs of the projections.
        let codes = model.encode(m, &view).unwrap();
        assert_eq!(codes, cmh::codes::BinaryCodes::from_signs(y.view()));
    }
}
