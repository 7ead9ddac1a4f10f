//! The work cmh leaves to Python helpers: all-MiniLM-L6-v2 sentence embeddings, the emoji
//! benchmark builder and the MATLAB `.mat` reader (scipy for v5, h5py for v7.3). The library
//! neither carries nor runs the scripts: it states what it needs through [`PythonHelpers`],
//! validates what comes back and writes the bundles. The `cmh` binary implements the trait by
//! running `scripts/embed_minilm.py`, `scripts/build_emoji.py` and `scripts/mat2npy.py` (carried
//! inside the binary) with the project's Python.

use crate::semantics::BuildEmojiArgs;
use anyhow::Result;
use ndarray::Array2;
use std::path::{Path, PathBuf};

/// The Python helpers the library calls on. Implementations report the conditions below with the
/// error types of this module, so that callers can downcast to explain or skip.
pub trait PythonHelpers {
    /// all-MiniLM-L6-v2 sentence embeddings of `texts` as given, one row per text (mean pooling,
    /// L2 normalisation). [`MiniLmUnavailable`] when the model is not installed,
    /// [`MissingPythonPackage`] when numpy is missing. The caller checks shape and norms.
    fn minilm_embed(&self, texts: &[String]) -> Result<Array2<f32>>;

    /// Builds the emoji bundle into `args.out` (replacing it only when `args.force`); returns the
    /// builder's JSON summary. [`PackagesUnavailable`], [`MiniLmUnavailable`] and
    /// [`MissingPythonPackage`] name what the environment lacks.
    fn build_emoji(&self, args: &BuildEmojiArgs) -> Result<serde_json::Value>;

    /// Reads `.mat` files as the JSON request at `request` says (`files`, `out`, and per role the
    /// candidate `[name, file index]` pairs): writes each chosen variable as `.npy` in MATLAB's
    /// orientation and an `index.json` into the request's `out` folder. Errors name the input
    /// `files`.
    fn mat2npy(&self, files: &[PathBuf], request: &Path) -> Result<()>;
}

/// Declares a message-carrying error type that callers can downcast to.
macro_rules! message_error {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(pub String);
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::error::Error for $name {}
    };
}

message_error!(
    /// The all-MiniLM-L6-v2 wheel is not installed (callers may downcast to this to skip or explain).
    MiniLmUnavailable
);
message_error!(
    /// The project's Python lacks a package the scripts need (numpy, Pillow).
    MissingPythonPackage
);
message_error!(
    /// The emoji npm packages could not be fetched (no npm, or no registry) and are not cached.
    PackagesUnavailable
);
