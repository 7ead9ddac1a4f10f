//! The `cmh` command line: a thin layer over the library.

use crate::method::DeviceChoice;
use crate::metrics::{evaluate, EvalOptions};
use crate::npy::read_binary_matrix;
use crate::params;
use crate::pipeline::{self, RunConfig};
use crate::search::open_codes;
use crate::split::{Protocol, SplitConfig};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(name = "cmh", version, about = "Cross-modal hashing: train, encode, search and evaluate binary codes")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// CPU threads for cmh's own parallel work (rayon) and libtorch's intra-op pool (default: one
    /// per core). On a machine shared with other jobs, 1 avoids libtorch's threads spin-waiting
    /// for cores that other processes hold (an SDCH epoch ran 17x slower with 2 threads than with
    /// 1 on an oversubscribed 2-core machine).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Dataset bundles: convert releases, add class embeddings, inspect.
    #[command(subcommand)]
    Data(DataCommand),
    /// Train a method on a bundle, encode queries and database, evaluate, write a run folder.
    Train(TrainArgs),
    /// Fit a method's settings to a bundle on a validation split of its training items; writes
    /// best.toml for `cmh train --config`.
    Tune(TuneArgs),
    /// Evaluate query codes against database codes (mAP, mAP@k).
    Eval(EvalArgs),
    /// Hamming search: top-k (or all within a radius) of each query in a code database.
    Search(crate::search::SearchArgs),
    /// Multi-index hashing indexes: exact search that reads only the codes near each query.
    #[command(subcommand)]
    Index(IndexCommand),
    /// Write codes in the formats other search engines load (faiss, Milvus, Elasticsearch,
    /// OpenSearch; Lance datasets come from `python -m cmh_tools.lance_export`).
    #[command(subcommand)]
    Export(ExportCommand),
    /// Encode new items with a trained model folder (`RUN/bitsB-seedS/model`).
    Encode(EncodeArgs),
    /// The main job: emoji image–text benchmark, every method at 32 and 64 bits, standard and
    /// zero-shot protocols, one table, report folder with codes and pictures.
    Demo(crate::demo::DemoArgs),
    /// Write AlexNet fc7 image features of a bundle's images into a new bundle.
    Features(crate::deep::features::FeaturesArgs),
}

impl Command {
    /// Commands that may train or run networks on CUDA (`--device auto|cuda`): only these load
    /// libtorch's CUDA backend, so searches and evaluations stay small.
    fn may_use_cuda(&self) -> bool {
        match self {
            Command::Train(a) => a.run.device != DeviceChoice::Cpu && !a.show_params,
            Command::Tune(a) => a.run.device != DeviceChoice::Cpu,
            Command::Demo(a) => a.device != DeviceChoice::Cpu,
            Command::Features(a) => a.device != DeviceChoice::Cpu,
            Command::Data(_) | Command::Eval(_) | Command::Search(_) | Command::Index(_) | Command::Export(_) | Command::Encode(_) => false,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Print a bundle's manifest summary after validating it.
    Info {
        /// The bundle folder.
        bundle: PathBuf,
    },
    /// Convert a public release (.mat files) into a bundle.
    Convert(crate::convert::ConvertArgs),
    /// Write a bundle's class embeddings (GloVe/word2vec text file, or offline all-MiniLM-L6-v2).
    EmbedClasses(crate::semantics::EmbedClassesArgs),
    /// Build the emoji image–text benchmark bundle from the npm packages.
    Emoji(crate::semantics::BuildEmojiArgs),
    /// Write a validation bundle: the same data, with a split carved from the training items only.
    Split(SplitArgs),
    /// Write a copy of a bundle whose text features are sentence embeddings of the item texts.
    EmbedText(EmbedTextArgs),
}

#[derive(Args, Debug)]
pub struct SplitArgs {
    /// The bundle folder.
    pub bundle: PathBuf,
    /// Carve a validation split (class-stratified queries from the training items; the rest train
    /// and form the database). The bundle's test items are not used.
    #[arg(long, required = true)]
    pub validation: bool,
    /// Fraction of the training items held out as validation queries.
    #[arg(long, default_value_t = 0.2)]
    pub fraction: f64,
    /// Seed of the carving.
    #[arg(long, default_value_t = 12345)]
    pub seed: u64,
    /// The new bundle folder (must not exist).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum IndexCommand {
    /// Build a multi-index hashing index of a code file (search it with `cmh search --index`).
    Build(IndexBuildArgs),
}

#[derive(Args, Debug)]
pub struct IndexBuildArgs {
    /// Database codes (.npy: packed uint8 rows, int8 ±1 or bool 0/1).
    #[arg(long)]
    pub codes: PathBuf,
    /// Index file to write (DB.cmhidx); it holds the codes too, so search needs nothing else.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of substrings m (one hash table each). Default: bits / log2(n), the rule of
    /// Norouzi et al., for up to 2^23 codes (substrings of at most 16 bits); beyond, substrings
    /// of log2(n / 128) bits (at most 28).
    #[arg(long)]
    pub substrings: Option<usize>,
    /// Code length in bits, for packed uint8 files whose length is not 8 × columns.
    #[arg(long)]
    pub bits: Option<usize>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum ExportCommand {
    /// faiss binary index file (faiss.read_index_binary): IndexBinaryFlat, or IndexBinaryIVF
    /// with --ivf NLIST.
    Faiss(ExportFaissArgs),
    /// Milvus bulk-insert JSON ({"rows": [...]}) for a BINARY_VECTOR field named `code`.
    Milvus(ExportRowsArgs),
    /// Elasticsearch _bulk NDJSON for a dense_vector field `code` with element_type bit (hex).
    Elasticsearch(ExportBulkArgs),
    /// OpenSearch _bulk NDJSON for a knn_vector field `code` with data_type binary (int8 bytes).
    Opensearch(ExportBulkArgs),
}

#[derive(Args, Debug)]
pub struct ExportFaissArgs {
    /// Codes (.npy: packed uint8 rows, int8 ±1 or bool 0/1); the code length must be a
    /// multiple of 8.
    #[arg(long)]
    pub codes: PathBuf,
    /// Index file to write (DB.faiss).
    #[arg(long)]
    pub out: PathBuf,
    /// Write an IndexBinaryIVF with this many inverted lists (binary k-means as faiss trains
    /// it: at most 256 points per list, 25 iterations).
    #[arg(long, value_name = "NLIST")]
    pub ivf: Option<usize>,
    /// Seed of the training sample and initial centroids.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct ExportRowsArgs {
    /// Codes (.npy); the code length must be a multiple of 8.
    #[arg(long)]
    pub codes: PathBuf,
    /// Optional labels (.npy, items × classes, 0/1): written as each item's class indices.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// File to write.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct ExportBulkArgs {
    #[command(flatten)]
    pub rows: ExportRowsArgs,
    /// Index name in the action lines.
    #[arg(long, default_value = "cmh-codes")]
    pub index: String,
}

#[derive(Args, Debug)]
pub struct EmbedTextArgs {
    /// The source bundle (not modified).
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// all-MiniLM-L6-v2 sentence embeddings (offline; the only encoder so far).
    #[arg(long, required = true)]
    pub minilm: bool,
    /// The new bundle folder.
    #[arg(long)]
    pub out: PathBuf,
    /// JSON list with one text per item (default: the bundle's items.json records).
    #[arg(long)]
    pub texts: Option<PathBuf>,
    /// Texts per embedding batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Cache of embedded batches (default: $XDG_CACHE_HOME/cmh/minilm-text).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[arg(long, short)]
    pub quiet: bool,
}

/// Protocol and device options `cmh train` and `cmh tune` share.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value = "standard")]
    pub protocol: Protocol,
    /// Unseen classes by name, comma separated (zero-shot protocols).
    #[arg(long, value_delimiter = ',')]
    pub unseen: Vec<String>,
    /// Fraction of classes unseen when --unseen is not given.
    #[arg(long, default_value_t = 0.2)]
    pub unseen_fraction: f64,
    /// Fraction of training labels masked (semi-supervised, label-spaces).
    #[arg(long, default_value_t = 0.7)]
    pub mask_fraction: f64,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// Deep methods read feature vectors even when the bundle has raw images.
    #[arg(long)]
    pub features_only: bool,
}

impl RunArgs {
    /// The split these options describe, with `seed` (other fields at their defaults).
    fn split(&self, seed: u64) -> SplitConfig {
        SplitConfig {
            protocol: self.protocol,
            seed,
            unseen_classes: self.unseen.clone(),
            unseen_fraction: self.unseen_fraction,
            mask_fraction: self.mask_fraction,
            ..SplitConfig::default()
        }
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Method: sch, segh, cca-itq, attr-ridge, sdch, czhash, agnet (or random, the floor).
    #[arg(long)]
    pub method: Option<String>,
    /// Bundle folder.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Code lengths, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "32")]
    pub bits: Vec<usize>,
    #[command(flatten)]
    pub run: RunArgs,
    /// First seed; runs use seed, seed+1, … (--repeat of them).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Repetitions (each with its own seed, split and model); the summary averages them.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Named settings to start from instead of the defaults, e.g. `paper` (the paper's settings).
    #[arg(long)]
    pub preset: Option<String>,
    /// TOML file with a section per method, e.g. `[sch] alpha = 4.5` (a `cmh tune` best.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Hyper-parameter override, `name=value` (TOML value), repeatable.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Print the effective parameters and where each came from (default, preset, config file,
    /// --param), then exit.
    #[arg(long)]
    pub show_params: bool,
    /// Random split sizes instead of the bundle's fixed split.
    #[arg(long)]
    pub query_size: Option<usize>,
    #[arg(long)]
    pub database_size: Option<usize>,
    #[arg(long)]
    pub train_size: Option<usize>,
    /// Also report mAP@k.
    #[arg(long)]
    pub topk: Option<usize>,
    /// Also evaluate same-modality retrieval (image→image, text→text).
    #[arg(long)]
    pub same_modality: bool,
    /// Memory-map the bundle's feature and image files instead of reading them: the deep methods
    /// then stream their mini-batches from disk, so bundles larger than memory train (SCH, SeGH
    /// and CCA-ITQ need the features in memory).
    #[arg(long)]
    pub mmap: bool,
    /// Output run folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder (its run.json gives the configuration).
    #[arg(long, conflicts_with_all = ["method", "data", "out", "force"])]
    pub resume: Option<PathBuf>,
    /// Replace an existing run folder (--out) that holds a run of another configuration; only a
    /// folder cmh created is ever replaced.
    #[arg(long)]
    pub force: bool,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct TuneArgs {
    /// Method: sch, segh, cca-itq, sdch, czhash, agnet.
    #[arg(long)]
    pub method: String,
    /// Bundle folder; only its training items are read.
    #[arg(long)]
    pub data: PathBuf,
    /// Code lengths the score averages over.
    #[arg(long, value_delimiter = ',', default_value = "32,64")]
    pub bits: Vec<usize>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Trials (settings tried).
    #[arg(long, default_value_t = 20)]
    pub budget: usize,
    /// random: every trial in full; halving: successive halving over epochs (deep methods);
    /// auto: halving when the method has epochs.
    #[arg(long, value_enum, default_value = "auto")]
    pub strategy: crate::tune::Strategy,
    /// Seed of the draws, the split and the fits.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (run again with the same folder to resume).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Starting point: a preset instead of the defaults.
    #[arg(long)]
    pub preset: Option<String>,
    /// Starting point: a TOML file with a section per method; its keys are not varied.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Fixed hyper-parameter, `name=value`, repeatable; not varied.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Fraction of the training items held out as validation queries (standard protocol), or of
    /// the seen classes held out as validation-unseen classes (zero-shot protocols).
    #[arg(long, default_value_t = 0.2)]
    pub validation_fraction: f64,
    /// Seed of the validation carving.
    #[arg(long, default_value_t = 12345)]
    pub validation_seed: u64,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    pub query_codes: PathBuf,
    #[arg(long)]
    pub db_codes: PathBuf,
    #[arg(long)]
    pub query_labels: PathBuf,
    #[arg(long)]
    pub db_labels: PathBuf,
    /// Code length of packed uint8 files whose last byte is padded (default 8 × columns).
    #[arg(long)]
    pub bits: Option<usize>,
    /// Also compute mAP@k.
    #[arg(long)]
    pub topk: Option<usize>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Draw the precision–recall and precision@N curves (PNG and SVG) into this folder.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct EncodeArgs {
    /// Model folder written by `cmh train` (RUN/bitsB-seedS/model).
    #[arg(long)]
    pub model: PathBuf,
    /// image or text.
    #[arg(long)]
    pub modality: String,
    /// Feature matrix (.npy float32/float64, items × dim), memory-mapped and encoded chunk by chunk.
    #[arg(long)]
    pub features: PathBuf,
    /// Output stem: writes STEM.npy (int8 ±1) and STEM_packed.npy (uint8).
    #[arg(long)]
    pub out: PathBuf,
    /// Write only STEM_packed.npy (8× smaller than the int8 ±1 file).
    #[arg(long)]
    pub packed_only: bool,
    /// Items encoded per chunk: memory stays bounded by the chunk, whatever the number of items.
    #[arg(long, default_value_t = 65_536)]
    pub chunk: usize,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Entry point: runs the command, prints errors, returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    // rayon owns the cores; BLAS calls run on the thread that makes them (README, "Threads").
    crate::shallow::common::set_blas_threads(1);
    if cli.command.may_use_cuda() {
        crate::deep::trainer::load_cuda_backend();
    }
    if matches!(cli.command, Command::Train(_) | Command::Demo(_)) {
        // SIGINT / SIGTERM during a training: finish the mini-batch, checkpoint, exit 130.
        if let Err(e) = crate::deep::trainer::install_stop_handler() {
            eprintln!("warning: {e:#}; an interrupted training resumes from its last epoch");
        }
    }
    if let Some(n) = cli.threads {
        if n == 0 {
            eprintln!("error: --threads must be at least 1, found 0");
            return 1;
        }
        // Fails only if the global pool was already built, which nothing does before this line.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
        tch::set_num_threads(n as i32);
    }
    match run(cli) {
        Ok(()) => 0,
        Err(e) if pipeline::is_stop(&e) => {
            eprintln!("interrupted: {}", crate::deep::strip_backtrace(&format!("{e:#}")));
            130
        }
        Err(e) => {
            // One line: which file or flag, what was found, what was expected (libtorch's C++
            // backtraces are dropped).
            eprintln!("error: {}", crate::deep::strip_backtrace(&format!("{e:#}")));
            1
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data(DataCommand::Info { bundle }) => data_info(&bundle),
        Command::Data(DataCommand::Convert(a)) => crate::convert::run(&a),
        Command::Data(DataCommand::EmbedClasses(a)) => crate::semantics::run_embed_classes(&a),
        Command::Data(DataCommand::Emoji(a)) => crate::semantics::run_build_emoji(&a),
        Command::Data(DataCommand::Split(a)) => data_split(&a),
        Command::Tune(a) => tune(&a),
        Command::Data(DataCommand::EmbedText(a)) => crate::text_features::run(&crate::text_features::EmbedText {
            bundle: a.bundle,
            out: a.out,
            texts: a.texts,
            batch: a.batch,
            cache: a.cache.unwrap_or_else(crate::text_features::default_cache_dir),
            progress: !a.quiet,
        }),
        Command::Demo(a) => crate::demo::run_demo(&a),
        Command::Features(a) => crate::deep::features::run_features(&a),
        Command::Train(a) => train(&a),
        Command::Eval(a) => eval(&a),
        Command::Search(a) => crate::search::run(&a),
        Command::Index(IndexCommand::Build(a)) => index_build(&a),
        Command::Export(a) => export(&a),
        Command::Encode(a) => encode(&a),
    }
}

fn index_build(a: &IndexBuildArgs) -> Result<()> {
    crate::outdir::refuse_overwriting_inputs(std::slice::from_ref(&a.out), &[("--codes", &a.codes)])?;
    let codes = open_codes(&a.codes, a.bits)?;
    let t = std::time::Instant::now();
    let opts = crate::search::mih::BuildOptions { substrings: a.substrings, progress: !a.quiet };
    let s = crate::search::mih::build_index_file(codes.view(), &opts, &a.out)?;
    eprintln!(
        "indexed {} codes of {} bits in {} tables (substrings of {:?} bits) in {:.2} s: {} ({:.1} MB)",
        s.n,
        s.bits,
        s.substrings,
        s.substring_bits,
        t.elapsed().as_secs_f64(),
        a.out.display(),
        s.bytes as f64 / 1e6
    );
    Ok(())
}

fn export(cmd: &ExportCommand) -> Result<()> {
    use crate::export::{write_bulk_ndjson, write_faiss, write_milvus_json, BulkFlavour, IvfOptions};
    let labels = |r: &ExportRowsArgs| r.labels.as_ref().map(|p| read_binary_matrix(p, "labels")).transpose();
    let (out, inputs): (&Path, Vec<(&str, &Path)>) = match cmd {
        ExportCommand::Faiss(a) => (&a.out, vec![("--codes", &a.codes)]),
        ExportCommand::Milvus(r)
        | ExportCommand::Elasticsearch(ExportBulkArgs { rows: r, .. })
        | ExportCommand::Opensearch(ExportBulkArgs { rows: r, .. }) => (
            &r.out,
            [("--codes", Some(&r.codes)), ("--labels", r.labels.as_ref())]
                .into_iter()
                .filter_map(|(f, p)| Some((f, p?.as_path())))
                .collect(),
        ),
    };
    crate::outdir::refuse_overwriting_inputs(&[out.to_path_buf()], &inputs)?;
    match cmd {
        ExportCommand::Faiss(a) => {
            let codes = open_codes(&a.codes, None)?;
            let ivf = a.ivf.map(|nlist| IvfOptions { seed: a.seed, ..IvfOptions::new(nlist) });
            let s = write_faiss(codes.view(), ivf.as_ref(), &a.out).with_context(|| format!("exporting {}", a.codes.display()))?;
            eprintln!("wrote {} ({}, {} codes of {} bits)", a.out.display(), s.kind, s.n, s.bits);
        }
        ExportCommand::Milvus(r) => {
            let codes = open_codes(&r.codes, None)?;
            let l = labels(r)?;
            write_milvus_json(codes.view(), l.as_ref().map(|l| l.view()), &r.out)
                .with_context(|| format!("exporting {}", r.codes.display()))?;
            eprintln!("wrote {}", r.out.display());
        }
        ExportCommand::Elasticsearch(a) | ExportCommand::Opensearch(a) => {
            let flavour = if matches!(cmd, ExportCommand::Elasticsearch(_)) { BulkFlavour::Elasticsearch } else { BulkFlavour::OpenSearch };
            let codes = open_codes(&a.rows.codes, None)?;
            let l = labels(&a.rows)?;
            write_bulk_ndjson(codes.view(), l.as_ref().map(|l| l.view()), &a.index, flavour, &a.rows.out)
                .with_context(|| format!("exporting {}", a.rows.codes.display()))?;
            eprintln!("wrote {}", a.rows.out.display());
        }
    }
    Ok(())
}

fn data_info(dir: &Path) -> Result<()> {
    let b = crate::bundle::Bundle::load(dir)?;
    println!("{} ({} items, {} classes): {}", b.manifest.name, b.n_items(), b.n_classes(), b.manifest.source);
    for (m, spec) in b.manifest.modalities.iter().enumerate() {
        let md = &b.modalities[m];
        let features = md.features.as_ref().map_or("none".to_string(), |x| format!("{}×{}", x.nrows(), x.ncols()));
        let images = md.images.as_ref().map_or("none".to_string(), |x| crate::npy::shape_str(x.shape()));
        println!("  modality {m} {}: features {features}, images {images}", spec.name);
    }
    if let Some(s) = &b.split {
        println!("  fixed split: {} train, {} query, {} database", s.train.len(), s.query.len(), s.database.len());
    }
    match &b.class_embeddings {
        Some(e) => println!("  class embeddings: {}×{} ({})", e.nrows(), e.ncols(), b.manifest.class_embeddings.as_ref().unwrap().source),
        None => println!("  class embeddings: none"),
    }
    Ok(())
}

/// Merges the method's TOML section from `--config` with `--param name=value` overrides (the
/// explicit settings only; [`resolve_params`] adds defaults and presets).
pub fn method_params(method: &str, config: Option<&Path>, overrides: &[String]) -> Result<toml::Table> {
    let mut table = match config {
        Some(p) => params::config_section(method, p, pipeline::METHODS)?,
        None => toml::Table::new(),
    };
    table.extend(params::param_overrides(overrides)?);
    Ok(table)
}

/// The effective parameters of `method`: defaults, `preset`, the config file's section and
/// `--param` overrides, each value with its source.
pub fn resolve_params(method: &str, preset: Option<&str>, config: Option<&Path>, overrides: &[String]) -> Result<params::Resolved> {
    let info = pipeline::method_info(method)?;
    let section = config.map(|p| params::config_section(method, p, pipeline::METHODS).map(|t| (p, t))).transpose()?;
    params::resolve(&info, preset, section.as_ref().map(|(p, t)| (*p, t)), &params::param_overrides(overrides)?)
}

fn train(a: &TrainArgs) -> Result<()> {
    let progress = !a.quiet;
    if let Some(dir) = &a.resume {
        let p = dir.join("run.json");
        let text = std::fs::read_to_string(&p).with_context(|| format!("{}: no run to resume here", p.display()))?;
        let cfg: RunConfig = serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid run description: {e}", p.display()))?;
        let opts = pipeline::RunOptions { resume: true, force: false, progress };
        return finish_train(pipeline::run_with(&cfg, dir, &opts)?, dir);
    }
    let method = a.method.clone().ok_or_else(|| anyhow!("--method is required (one of {})", pipeline::METHODS.join(", ")))?;
    let resolved = resolve_params(&method, a.preset.as_deref(), a.config.as_deref(), &a.params)?;
    if a.show_params {
        print!("{}", resolved.to_annotated_toml());
        return Ok(());
    }
    let data = a.data.clone().ok_or_else(|| anyhow!("--data BUNDLE is required"))?;
    let out = a.out.clone().ok_or_else(|| anyhow!("--out RUN_DIR is required"))?;
    let cfg = RunConfig {
        params: resolved.table,
        method,
        data,
        bits: a.bits.clone(),
        seed: a.seed,
        repeat: a.repeat,
        split: SplitConfig { query_size: a.query_size, database_size: a.database_size, train_size: a.train_size, ..a.run.split(a.seed) },
        device: a.run.device,
        topk: a.topk,
        images: !a.run.features_only,
        same_modality: a.same_modality,
        mmap: a.mmap,
    };
    finish_train(pipeline::run_with(&cfg, &out, &pipeline::RunOptions { resume: false, force: a.force, progress })?, &out)
}

fn finish_train(reports: Vec<crate::report::Report>, out: &Path) -> Result<()> {
    print!("{}", crate::report::format_table(&crate::report::summarize(&reports)));
    print!("{}", crate::report::format_health(&reports));
    println!("wrote {}", out.join("report.json").display());
    Ok(())
}

fn tune(a: &TuneArgs) -> Result<()> {
    let resolved = resolve_params(&a.method, a.preset.as_deref(), a.config.as_deref(), &a.params)?;
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("runs/tune-{}", a.method)));
    let cfg = crate::tune::TuneConfig {
        method: a.method.clone(),
        data: a.data.clone(),
        bits: a.bits.clone(),
        split: a.run.split(a.seed),
        validation: crate::split::ValidationConfig { fraction: a.validation_fraction, seed: a.validation_seed },
        budget: a.budget,
        seed: a.seed,
        strategy: a.strategy,
        base: resolved.table,
        fixed: resolved.explicit,
        device: a.run.device,
        images: !a.run.features_only,
    };
    let o = crate::tune::tune(&cfg, &out, !a.quiet)?;
    let info = pipeline::method_info(&a.method)?;
    print!("{}", crate::tune::format_trials(&o, &info, ' '));
    println!(
        "best: trial {} (validation score {:.4}); wrote {} — train with: cmh train --method {} --data {} --config {} --out RUN",
        o.best_trial,
        o.best_score,
        out.join("best.toml").display(),
        a.method,
        a.data.display(),
        out.join("best.toml").display()
    );
    Ok(())
}

fn data_split(a: &SplitArgs) -> Result<()> {
    let b = crate::bundle::Bundle::load(&a.bundle)?;
    let s = crate::split::write_validation_bundle(&b, &crate::split::ValidationConfig { fraction: a.fraction, seed: a.seed }, &a.out)?;
    println!(
        "{}: {} validation queries, {} training = database items, all from the training items of {}",
        a.out.display(),
        s.query.len(),
        s.train.len(),
        a.bundle.display()
    );
    Ok(())
}

fn eval(a: &EvalArgs) -> Result<()> {
    let qf = open_codes(&a.query_codes, a.bits)?;
    // Packed database codes take the query codes' length unless --bits says otherwise.
    let dbf = open_codes(&a.db_codes, a.bits.or(Some(qf.view().bits)))?;
    let (q, db) = (qf.view(), dbf.view());
    if q.bits != db.bits {
        bail!(
            "--db-codes {}: holds {}-bit codes, but --query-codes {} holds {}-bit codes; both must come from the same model and code length",
            a.db_codes.display(),
            db.bits,
            a.query_codes.display(),
            q.bits
        );
    }
    let ql = read_binary_matrix(&a.query_labels, "query labels")?;
    let dl = read_binary_matrix(&a.db_labels, "database labels")?;
    let opts = if a.plot.is_some() { pipeline::eval_options(a.topk) } else { EvalOptions { topk: a.topk, ..Default::default() } };
    let m = evaluate(q, db, ql.view(), dl.view(), &opts)
        .with_context(|| format!("evaluating {} against {}", a.query_codes.display(), a.db_codes.display()))?;
    if a.json {
        let mut v = serde_json::json!({
            "map": m.map, "n_queries": m.n_queries, "excluded_queries": m.excluded_queries, "bits": q.bits,
        });
        if let (Some(k), Some(mk)) = (m.k, m.map_at_k) {
            v["map@k"] = serde_json::json!(mk);
            v["k"] = serde_json::json!(k);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("mAP {:.6} over {} queries ({} excluded: no relevant item)", m.map, m.n_queries - m.excluded_queries, m.excluded_queries);
        if let (Some(k), Some(mk)) = (m.k, m.map_at_k) {
            println!("mAP@{k} {mk:.6}");
        }
    }
    if let Some(dir) = &a.plot {
        let label = a.query_codes.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        for p in
            crate::plot::plot_direction(dir, "eval", &format!("{} vs {}", a.query_codes.display(), a.db_codes.display()), &[(label, &m)])?
        {
            eprintln!("wrote {}.png and .svg", p.display());
        }
    }
    Ok(())
}

fn encode(a: &EncodeArgs) -> Result<()> {
    let stem = a
        .out
        .file_name()
        .and_then(|s| s.to_str())
        .ok_or_else(|| anyhow!("--out {}: needs a file stem, e.g. codes/text", a.out.display()))?;
    let stem = stem.trim_end_matches(".npy");
    let dir = a.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let outputs = [dir.join(format!("{stem}.npy")), dir.join(format!("{stem}_packed.npy"))];
    crate::outdir::refuse_overwriting_inputs(&outputs, &[("--features", &a.features), ("--model", &a.model)])?;
    let model = pipeline::load_model(&a.model)?;
    let m = match a.modality.as_str() {
        "image" => crate::method::IMAGE,
        "text" => crate::method::TEXT,
        other => bail!("--modality must be image or text, found {other:?}"),
    };
    let opts = crate::encode::EncodeOptions { chunk: a.chunk, packed_only: a.packed_only, progress: !a.quiet };
    let t = std::time::Instant::now();
    let s = crate::encode::encode_file(model.as_ref(), m, &a.features, &a.out, &opts)?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "encoded {} items ({} bits) in {secs:.2} s ({:.0} items/s) -> {}",
        s.items,
        s.bits,
        s.items as f64 / secs.max(1e-9),
        s.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}
