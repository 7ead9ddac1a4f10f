//! The `cmh` command line: a thin layer over the library.

use crate::search::open_codes;
use crate::method::DeviceChoice;
use crate::metrics::{evaluate, EvalOptions};
use crate::npy::read_binary_matrix;
use crate::pipeline::{self, RunConfig};
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
    /// Evaluate query codes against database codes (mAP, mAP@k).
    Eval(EvalArgs),
    /// Hamming search: top-k (or all within a radius) of each query in a code database.
    Search(crate::search::SearchArgs),
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
            Command::Train(a) => a.device != DeviceChoice::Cpu,
            Command::Demo(a) => a.device != DeviceChoice::Cpu,
            Command::Features(a) => a.device != DeviceChoice::Cpu,
            Command::Data(_) | Command::Eval(_) | Command::Search(_) | Command::Encode(_) => false,
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
    /// Write a copy of a bundle whose text features are sentence embeddings of the item texts.
    EmbedText(EmbedTextArgs),
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
    #[arg(long, value_enum, default_value = "standard")]
    pub protocol: Protocol,
    /// First seed; runs use seed, seed+1, … (--repeat of them).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Repetitions (each with its own seed, split and model); the summary averages them.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// TOML file with a section per method, e.g. `[sch] alpha = 4.5`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Hyper-parameter override, `name=value` (TOML value), repeatable.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Unseen classes by name, comma separated (zero-shot protocols).
    #[arg(long, value_delimiter = ',')]
    pub unseen: Vec<String>,
    /// Fraction of classes unseen when --unseen is not given.
    #[arg(long, default_value_t = 0.2)]
    pub unseen_fraction: f64,
    /// Fraction of training labels masked (semi-supervised, label-spaces).
    #[arg(long, default_value_t = 0.7)]
    pub mask_fraction: f64,
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
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// Also evaluate same-modality retrieval (image→image, text→text).
    #[arg(long)]
    pub same_modality: bool,
    /// Deep methods read feature vectors even when the bundle has raw images.
    #[arg(long)]
    pub features_only: bool,
    /// Output run folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder (its run.json gives the configuration).
    #[arg(long, conflicts_with_all = ["method", "data", "out"])]
    pub resume: Option<PathBuf>,
    /// No progress output.
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
    /// Feature matrix (.npy float32/float64, items × dim).
    #[arg(long)]
    pub features: PathBuf,
    /// Output stem: writes STEM.npy (int8 ±1) and STEM_packed.npy (uint8).
    #[arg(long)]
    pub out: PathBuf,
}

/// Entry point: runs the command, prints errors, returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    // rayon owns the cores; BLAS calls run on the thread that makes them (README, "Threads").
    crate::shallow::common::set_blas_threads(1);
    if cli.command.may_use_cuda() {
        crate::deep::trainer::load_cuda_backend();
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
        Err(e) => {
            eprintln!("error: {e:#}");
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
        Command::Encode(a) => encode(&a),
    }
}

fn data_info(dir: &Path) -> Result<()> {
    let b = crate::bundle::Bundle::load(dir)?;
    println!("{} ({} items, {} classes): {}", b.manifest.name, b.n_items(), b.n_classes(), b.manifest.source);
    for (m, spec) in b.manifest.modalities.iter().enumerate() {
        let md = &b.modalities[m];
        println!(
            "  modality {m} {}: features {:?}, images {:?}",
            spec.name,
            md.features.as_ref().map(|x| x.dim()),
            md.images.as_ref().map(|x| x.shape().to_vec())
        );
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

/// Merges the method's TOML section from `--config` with `--param name=value` overrides.
pub fn method_params(method: &str, config: Option<&Path>, overrides: &[String]) -> Result<toml::Table> {
    let mut table = toml::Table::new();
    if let Some(p) = config {
        let text = std::fs::read_to_string(p).with_context(|| format!("{}: cannot read the config file", p.display()))?;
        let all: toml::Table = text.parse().map_err(|e| anyhow!("{}: invalid TOML: {e}", p.display()))?;
        for key in all.keys() {
            if !pipeline::METHODS.contains(&key.as_str()) {
                bail!("{}: section [{key}] is not a method; methods are {}", p.display(), pipeline::METHODS.join(", "));
            }
        }
        if let Some(v) = all.get(method) {
            table = v.as_table().cloned().ok_or_else(|| anyhow!("{}: [{method}] must be a table", p.display()))?;
        }
    }
    for o in overrides {
        let (k, v) = o.split_once('=').ok_or_else(|| anyhow!("--param {o:?}: expected NAME=VALUE"))?;
        let value: toml::Value = format!("v = {v}")
            .parse::<toml::Table>()
            .map(|mut t| t.remove("v").unwrap())
            .or_else(|_| Ok::<_, anyhow::Error>(toml::Value::String(v.to_string())))?;
        table.insert(k.trim().to_string(), value);
    }
    Ok(table)
}

fn train(a: &TrainArgs) -> Result<()> {
    let progress = !a.quiet;
    if let Some(dir) = &a.resume {
        let p = dir.join("run.json");
        let text = std::fs::read_to_string(&p).with_context(|| format!("{}: no run to resume here", p.display()))?;
        let cfg: RunConfig = serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid run description: {e}", p.display()))?;
        return finish_train(pipeline::run(&cfg, dir, true, progress)?, dir);
    }
    let method = a.method.clone().ok_or_else(|| anyhow!("--method is required (one of {})", pipeline::METHODS.join(", ")))?;
    let data = a.data.clone().ok_or_else(|| anyhow!("--data BUNDLE is required"))?;
    let out = a.out.clone().ok_or_else(|| anyhow!("--out RUN_DIR is required"))?;
    let cfg = RunConfig {
        params: method_params(&method, a.config.as_deref(), &a.params)?,
        method,
        data,
        bits: a.bits.clone(),
        seed: a.seed,
        repeat: a.repeat,
        split: SplitConfig {
            protocol: a.protocol,
            seed: a.seed,
            query_size: a.query_size,
            database_size: a.database_size,
            train_size: a.train_size,
            unseen_classes: a.unseen.clone(),
            unseen_fraction: a.unseen_fraction,
            mask_fraction: a.mask_fraction,
            ..SplitConfig::default()
        },
        device: a.device,
        topk: a.topk,
        images: !a.features_only,
        same_modality: a.same_modality,
    };
    finish_train(pipeline::run(&cfg, &out, false, progress)?, &out)
}

fn finish_train(reports: Vec<crate::report::Report>, out: &Path) -> Result<()> {
    print!("{}", crate::report::format_table(&crate::report::summarize(&reports)));
    println!("wrote {}", out.join("report.json").display());
    Ok(())
}

fn eval(a: &EvalArgs) -> Result<()> {
    let qf = open_codes(&a.query_codes, a.bits)?;
    let dbf = open_codes(&a.db_codes, a.bits.or(Some(qf.view().bits)))
        .with_context(|| format!("the database codes must match the query codes ({} bits)", qf.view().bits))?;
    let (q, db) = (qf.view(), dbf.view());
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
        for p in crate::plot::plot_direction(dir, "eval", &format!("{} vs {}", a.query_codes.display(), a.db_codes.display()), &[(label, &m)])? {
            eprintln!("wrote {}.png and .svg", p.display());
        }
    }
    Ok(())
}

fn encode(a: &EncodeArgs) -> Result<()> {
    let model = pipeline::load_model(&a.model)?;
    let m = match a.modality.as_str() {
        "image" => crate::method::IMAGE,
        "text" => crate::method::TEXT,
        other => bail!("--modality must be image or text, found {other:?}"),
    };
    let x = crate::npy::read_features(&a.features)?;
    let codes = model.encode(m, &crate::method::View::Features(x))?;
    let stem = a.out.file_name().and_then(|s| s.to_str()).ok_or_else(|| anyhow!("--out needs a file stem"))?;
    let stem = stem.trim_end_matches(".npy");
    let dir = a.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    codes.save_npy(dir, stem)?;
    Ok(())
}
