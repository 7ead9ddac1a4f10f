//! Sentence-embedding text features: a copy of a bundle whose text modality holds the
//! all-MiniLM-L6-v2 embedding of each item's text instead of its bag of words
//! (`cmh data embed-text BUNDLE --minilm --out NEW`).
//!
//! The texts come from a JSON list of strings (one per item, `--texts`) or from the bundle's
//! `items.json` (the emoji bundle's item records: name, short names and keywords, `_` read as a
//! space). Embedding runs offline ([`crate::semantics::minilm_embed`], the numpy forward pass of
//! `scripts/embed_minilm.py`) in batches, with a progress bar; each batch's result is cached under
//! the cache folder by the SHA-256 of its texts, so an interrupted run resumes where it stopped and
//! a second bundle with the same texts costs nothing. The new bundle is written under a temporary
//! name and renamed when complete.

use crate::bundle::Bundle;
use crate::npy::{read_features, write_npy};
use anyhow::{anyhow, bail, Context, Result};
use ndarray::{concatenate, Array2, Axis};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// What `cmh data embed-text` does.
#[derive(Clone, Debug)]
pub struct EmbedText {
    /// The source bundle (read only).
    pub bundle: PathBuf,
    /// The new bundle folder (must not exist).
    pub out: PathBuf,
    /// A JSON list of one text per item; `None` = the bundle's `items.json`.
    pub texts: Option<PathBuf>,
    /// Texts per embedding call.
    pub batch: usize,
    /// Cached batch embeddings live here.
    pub cache: PathBuf,
    pub progress: bool,
}

/// The default cache folder: `$XDG_CACHE_HOME/cmh/minilm-text`, else `$HOME/.cache/cmh/minilm-text`.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("cmh").join("minilm-text")
}

/// The text of one record of `items.json`: a string as it is; an object's `name`, `short_names`
/// and `keywords` joined by ", " (`_` read as a space).
fn record_text(v: &serde_json::Value) -> Option<String> {
    if let Some(s) = v.as_str() {
        return Some(s.to_string());
    }
    let o = v.as_object()?;
    let mut parts: Vec<String> = Vec::new();
    if let Some(n) = o.get("name").and_then(|n| n.as_str()) {
        parts.push(n.to_lowercase());
    }
    for key in ["short_names", "keywords"] {
        for w in o.get(key).and_then(|k| k.as_array()).into_iter().flatten().filter_map(|w| w.as_str()) {
            let w = w.replace('_', " ");
            if !parts.contains(&w) {
                parts.push(w);
            }
        }
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// One text per item of `bundle`: from `texts` (a JSON list of strings) or the bundle's `items.json`.
pub(crate) fn item_texts(bundle: &Bundle, texts: Option<&Path>) -> Result<Vec<String>> {
    let path = texts.map(Path::to_path_buf).unwrap_or_else(|| bundle.dir.join("items.json"));
    let raw = std::fs::read_to_string(&path).with_context(|| {
        format!("{}: cannot read the item texts (give --texts FILE.json, a JSON list of one string per item)", path.display())
    })?;
    let v: serde_json::Value = serde_json::from_str(&raw).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let list = v.as_array().ok_or_else(|| anyhow!("{}: expected a JSON list with one entry per item", path.display()))?;
    if list.len() != bundle.n_items() {
        bail!("{}: {} entries, but the bundle has {} items", path.display(), list.len(), bundle.n_items());
    }
    list.iter()
        .enumerate()
        .map(|(i, r)| {
            record_text(r).ok_or_else(|| anyhow!("{}: entry {i} is neither a string nor a record with a name or keywords", path.display()))
        })
        .collect()
}

/// SHA-256 (hex) of a batch of texts: the cache key.
fn batch_key(texts: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(b"all-MiniLM-L6-v2\0");
    for t in texts {
        h.update(t.as_bytes());
        h.update([0u8]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Embeds `texts` in batches through `embed`, reading and writing cached batches in `cache`.
pub(crate) fn embed_cached(
    texts: &[String],
    batch: usize,
    cache: &Path,
    progress: bool,
    embed: &dyn Fn(&[String]) -> Result<Array2<f32>>,
) -> Result<Array2<f32>> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    std::fs::create_dir_all(cache).with_context(|| format!("{}: cannot create the cache folder", cache.display()))?;
    let pb = progress.then(|| {
        let pb = indicatif::ProgressBar::new(texts.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template("embed-text [{bar:30}] {pos}/{len} texts ({elapsed} / ~{duration})")
                .expect("template")
                .progress_chars("=> "),
        );
        pb
    });
    let mut parts = Vec::new();
    for chunk in texts.chunks(batch) {
        let file = cache.join(format!("{}.npy", batch_key(chunk)));
        let e = match read_features(&file) {
            Ok(e) if e.nrows() == chunk.len() => e,
            _ => {
                let e = embed(chunk)?;
                let tmp = cache.join(format!(".{}.partial.npy", batch_key(chunk)));
                write_npy(&tmp, &e)?;
                std::fs::rename(&tmp, &file).with_context(|| format!("{}: cannot write the cache entry", file.display()))?;
                e
            }
        };
        parts.push(e);
        if let Some(pb) = &pb {
            pb.inc(chunk.len() as u64);
        }
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    Ok(concatenate(Axis(0), &views)?)
}

/// Writes `a.out`: a copy of `a.bundle` whose text modality (the one named "text", else the last)
/// holds MiniLM embeddings of the item texts. Returns a one-line summary.
pub fn run(a: &EmbedText, py: &dyn crate::helpers::PythonHelpers) -> Result<String> {
    let bundle = Bundle::load(&a.bundle)?;
    if a.out.exists() {
        bail!("{}: already exists; choose a new folder for the bundle with sentence-embedding texts", a.out.display());
    }
    let texts = item_texts(&bundle, a.texts.as_deref())?;
    let emb = embed_cached(&texts, a.batch, &a.cache, a.progress, &|t| crate::semantics::minilm_embed(t, py))?;
    let parent = a.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("--out {}: cannot create {}", a.out.display(), parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&crate::outdir::partial_prefix(&a.out, "embed-text")?)
        .tempdir_in(parent)
        .with_context(|| format!("--out {}: cannot write in {}", a.out.display(), parent.display()))?;
    for entry in std::fs::read_dir(&a.bundle)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), tmp.path().join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    let manifest_path = tmp.path().join("bundle.json");
    let mut manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest_path)?)?;
    let mods =
        manifest["modalities"].as_array_mut().ok_or_else(|| anyhow!("{}: bundle.json has no modalities list", a.bundle.display()))?;
    let m = mods.iter().position(|m| m["name"] == "text").unwrap_or(mods.len().saturating_sub(1));
    let file = "text_minilm.npy";
    write_npy(&tmp.path().join(file), &emb)?;
    mods[m]["features"] = serde_json::json!(file);
    mods[m]["dim"] = serde_json::json!(emb.ncols());
    mods[m]["description"] =
        serde_json::json!(format!("{} of each item's text (name, short names, keywords)", crate::semantics::MINILM_TEXT_SOURCE));
    crate::npy::write_text_atomic(&manifest_path, &serde_json::to_string_pretty(&manifest)?)?;
    // The copy must load as a bundle before it takes the final name.
    Bundle::load(tmp.path()).with_context(|| format!("{}: the new bundle does not load", a.out.display()))?;
    crate::npy::set_mode(tmp.path(), 0o755)?;
    std::fs::rename(tmp.keep(), &a.out).with_context(|| format!("{}: cannot move the new bundle into place", a.out.display()))?;
    Ok(format!("{}: wrote {} with {}×{} sentence-embedding text features", a.bundle.display(), a.out.display(), emb.nrows(), emb.ncols()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_texts_join_name_short_names_and_keywords() {
        let r =
            serde_json::json!({"name": "GRINNING FACE", "short_names": ["grinning"], "keywords": ["grinning_face", "grinning", "smile"]});
        assert_eq!(record_text(&r).unwrap(), "grinning face, grinning, smile");
        assert_eq!(record_text(&serde_json::json!("a cat")).unwrap(), "a cat");
        assert!(record_text(&serde_json::json!(3)).is_none());
    }

    #[test]
    fn batches_are_cached_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let texts: Vec<String> = (0..5).map(|i| format!("text {i}")).collect();
        let calls = std::cell::Cell::new(0);
        let embed = |t: &[String]| -> Result<Array2<f32>> {
            calls.set(calls.get() + 1);
            Ok(Array2::from_shape_fn((t.len(), 2), |(i, j)| (t[i].len() + j) as f32))
        };
        let a = embed_cached(&texts, 2, d.path(), false, &embed).unwrap();
        assert_eq!((a.nrows(), calls.get()), (5, 3));
        // Second run: every batch comes from the cache.
        let b = embed_cached(&texts, 2, d.path(), false, &embed).unwrap();
        assert_eq!((b, calls.get()), (a, 3));
        // Other texts miss the cache.
        embed_cached(&texts[..1].iter().map(|t| t.to_uppercase()).collect::<Vec<_>>(), 2, d.path(), false, &embed).unwrap();
        assert_eq!(calls.get(), 4);
    }
}
