//! Numerics shared by every method, each written once:
//! - [`blocked`]: row-blocked, deterministic BLAS products for tall matrices (n items × a few
//!   columns) and the OpenBLAS thread setting;
//! - [`random`]: the seeded generator and random Gaussian / orthogonal matrices;
//! - [`sign`]: sgn with the codes' tie rule (0 → +1) and packing into [`crate::codes::BinaryCodes`];
//! - [`itq`]: iterative quantisation (Gong & Lazebnik);
//! - [`standardize`]: per-dimension z-scores;
//! - [`rbf`]: RBF anchor features;
//! - [`linalg`]: SPD solves, polar factor / orthogonal Procrustes, numerical rank;
//! - [`cca`]: regularised CCA;
//! - [`pages`]: large arrays on transparent huge pages;
//! - [`pcg`]: preconditioned conjugate gradients for symmetric positive definite operators;
//! - [`graph`]: k-nearest-neighbour graphs (kd-tree, random-projection forest) and sparse matrices;
//! - [`files`]: model matrices read back from `.npy` files.
//!
//! Everything computes in f64 except the feature-side inputs (f32). The ndarray ⇄ tch conversions
//! live with the deep methods, in [`crate::deep::tensors`].

pub mod blocked;
pub mod cca;
pub mod files;
pub mod graph;
pub mod itq;
pub mod linalg;
pub(crate) mod pages;
pub mod pcg;
pub mod random;
pub mod rbf;
pub mod sign;
pub mod standardize;

pub use standardize::Standardizer;
