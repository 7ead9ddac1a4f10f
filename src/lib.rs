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
//! - [`export`]: codes in the formats faiss, Milvus, Elasticsearch and OpenSearch load.
//! - [`pipeline`] runs the whole flow and writes [`report`]s, each with a health check of its
//!   codes; [`registry`] is the table of methods. The `cmh` binary (`src/main.rs`, `src/cli/`)
//!   parses arguments and calls these modules; the library prints nothing (messages go through
//!   the `log` crate), never exits the process and starts no Python: the jobs done by Python
//!   helpers (sentence embeddings, the emoji builder, the `.mat` reader) are asked of the caller
//!   through [`helpers::PythonHelpers`].
//! - [`params`]: defaults, presets, config files and overrides, and each method's search space;
//!   [`tune`] searches it on a validation split of the training items.
extern crate openblas_src;

pub mod bundle;
pub mod codes;
pub mod convert;
pub mod deep;
pub mod demo;
pub mod encode;
pub mod export;
pub(crate) mod health;
pub mod helpers;
pub(crate) mod mapped;
pub mod method;
pub mod metrics;
pub mod npy;
pub(crate) mod numerics;
pub mod outdir;
pub mod params;
pub mod pipeline;
pub mod plot;
pub(crate) mod random_codes;
pub mod registry;
pub mod report;
pub mod search;
pub mod semantics;
pub mod shallow;
pub mod split;
pub mod text_features;
pub mod tune;
