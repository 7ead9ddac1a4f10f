//! Synthetic two-modality data with Wikipedia-like structure (tests and benchmarks).

use super::*;

/// Shape of a synthetic two-modality data set with Wikipedia-like structure.
#[derive(Clone, Debug)]
pub struct SyntheticSpec {
    pub n: usize,
    pub n_classes: usize,
    /// Image-like modality dimension (Wikipedia: 128-d SIFT bag of words).
    pub image_dim: usize,
    /// Text-like modality dimension (Wikipedia: 10-d LDA topics).
    pub text_dim: usize,
    /// Class-embedding dimension (e.g. 384 for MiniLM); 0 = one-hot class vectors.
    pub embedding_dim: usize,
    /// Per-item noise scale relative to the class signal (image, text); the image side is noisier
    /// on Wikipedia.
    pub noise: (f64, f64),
    pub seed: u64,
}

impl SyntheticSpec {
    /// Wikipedia-like: 10 classes, 128-d noisy image features, 10-d cleaner text features.
    pub fn wiki_like(n: usize, embedding_dim: usize, seed: u64) -> Self {
        Self { n, n_classes: 10, image_dim: 128, text_dim: 10, embedding_dim, noise: (3.0, 1.0), seed }
    }
}

/// A synthetic training set: each class has a random embedding; every modality's features are a
/// fixed random linear map of the item's class embedding plus Gaussian noise, so the class
/// embeddings genuinely carry the semantics (zero-shot transfer works on unseen classes).
/// Returns the training set (fully labelled, with class embeddings) and the class of each item.
pub fn synthetic(spec: &SyntheticSpec) -> (TrainSet, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let c = spec.n_classes;
    let e = if spec.embedding_dim == 0 { c } else { spec.embedding_dim };
    let emb: Array2<f64> = if spec.embedding_dim == 0 {
        Array2::eye(c)
    } else {
        Array2::from_shape_simple_fn((c, e), || rng.sample::<f64, _>(StandardNormal) / (e as f64).sqrt())
    };
    let class: Vec<usize> = (0..spec.n).map(|i| if i < c { i } else { rng.gen_range(0..c) }).collect();
    let mut views = Vec::new();
    for (d, noise) in [(spec.image_dim, spec.noise.0), (spec.text_dim, spec.noise.1)] {
        let map: Array2<f64> = Array2::from_shape_simple_fn((e, d), || rng.sample(StandardNormal));
        let proto = emb.dot(&map); // C × d
        let scale = (proto.iter().map(|v| v * v).sum::<f64>() / (c * d) as f64).sqrt();
        let x = Array2::from_shape_fn((spec.n, d), |(i, j)| {
            (proto[[class[i], j]] + noise * scale * rng.sample::<f64, _>(StandardNormal)) as f32
        });
        views.push(View::Features(x));
    }
    let labels = crate::bundle::one_hot(&class, c);
    let mut ts = TrainSet::supervised(views, labels, (0..c).map(|i| format!("class{i}")).collect());
    ts.class_embeddings = Some(emb.mapv(|v| v as f32));
    (ts, class)
}
