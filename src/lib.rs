//! cmh — cross-modal hashing: learn binary codes so that an image query finds relevant texts and a
//! text query finds relevant images by Hamming distance.
//!
//! Data flows one way: bundle → split → fit → encode → evaluate → report.
//! - [`bundle`]: the on-disk dataset format (a folder of `.npy` files and `bundle.json`);
//!   [`convert`] writes bundles from the benchmarks' common releases.
//! - [`split`]: standard, zero-shot, semi-supervised and per-modality-label-space protocols.
//! - [`method`]: the `Fit` / `HashModel` traits; [`shallow`] (SCH, SeGH, CCA-ITQ) and [`deep`]
//!   (SDCH, CZHash, AgNet) implement them.
//! - [`codes`]: packed binary codes; [`search`]: Hamming ranking; [`metrics`]: mAP and curves.
//! - [`pipeline`] runs the whole flow and writes [`report`]s; [`cli`] is a thin layer over it.
extern crate openblas_src;

pub mod bundle;
pub mod cli;
pub mod codes;
pub mod convert;
pub mod deep;
pub mod demo;
pub mod method;
pub mod metrics;
pub mod npy;
pub mod pipeline;
pub mod plot;
pub mod report;
pub mod search;
pub mod semantics;
pub mod shallow;
pub mod split;
pub mod text_features;
