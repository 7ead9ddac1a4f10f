//! Encode new items with a saved model and write their codes as `.npy` files.
//!
//! ```sh
//! cargo run --release --example encode_with_saved_model -- RUN/bits32-seed0/model text X.npy codes
//! ```
//!
//! The model folder is what `cmh train` writes per run (`RUN/bitsB-seedS/model`) or what
//! `HashModel::save` wrote; the features are a float32/float64 `.npy` matrix (items × dim) of the
//! given modality. Writes `codes.npy` (int8 ±1) and `codes_packed.npy` (numpy.packbits order).

use anyhow::{bail, Result};
use cmh::method::{View, IMAGE, TEXT};
use std::path::{Path, PathBuf};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, modality, features, out] = &args[..] else {
        bail!("usage: encode_with_saved_model MODEL_DIR image|text FEATURES.npy OUT_STEM");
    };
    // Reads model.json and the learned matrices (any method cmh trains).
    let model = cmh::pipeline::load_model(Path::new(model_dir))?;
    let modality = match modality.as_str() {
        "image" => IMAGE,
        "text" => TEXT,
        other => bail!("modality must be image or text, found {other:?}"),
    };
    let x = cmh::npy::read_features(Path::new(features))?;
    let codes = model.encode(modality, &View::Features(x))?;
    println!("{} model, {} bits: encoded {} items", model.method(), model.bits(), codes.len());

    // Codes are packed bits; `save_npy` writes the int8 ±1 and packed forms side by side.
    let out = PathBuf::from(out);
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let stem = out.file_name().and_then(|s| s.to_str()).unwrap_or("codes");
    codes.save_npy(dir, stem)?;
    println!("wrote {}/{stem}.npy and {stem}_packed.npy", dir.display());
    Ok(())
}
