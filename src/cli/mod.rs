//! The `cmh` command line: parses arguments ([`args`]), maps them onto the library's parameter
//! structs, runs the library and prints what it returns.

mod args;
mod python;

use anyhow::{anyhow, bail, Context, Result};
use args::*;
use clap::Parser;
use cmh::metrics::{evaluate, EvalOptions};
use cmh::npy::read_binary_matrix;
use cmh::pipeline::{self, RunConfig};
use cmh::search::open_codes;
use cmh::split::SplitConfig;
use python::ScriptHelpers;
use std::path::{Path, PathBuf};

/// Prints the library's log records on stderr: information as it is, warnings and errors with
/// their level in front; debug and trace records are dropped.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record) {
        match r.level() {
            log::Level::Error => eprintln!("error: {}", r.args()),
            log::Level::Warn => eprintln!("warning: {}", r.args()),
            log::Level::Info => eprintln!("{}", r.args()),
            _ => {}
        }
    }
    fn flush(&self) {}
}

static LOG: StderrLog = StderrLog;

/// Entry point: runs the command, prints errors, returns the exit code.
pub fn main() -> i32 {
    if log::set_logger(&LOG).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let cli = Cli::parse();
    // rayon owns the cores; BLAS calls run on the thread that makes them (README, "Threads").
    cmh::shallow::common::set_blas_threads(1);
    if cli.command.may_use_cuda() {
        cmh::deep::trainer::load_cuda_backend();
    }
    if matches!(cli.command, Command::Train(_) | Command::Demo(_)) {
        // SIGINT / SIGTERM during a training: finish the mini-batch, checkpoint, exit 130.
        if let Err(e) = cmh::deep::trainer::install_stop_handler() {
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
            eprintln!("interrupted: {}", cmh::deep::strip_backtrace(&format!("{e:#}")));
            130
        }
        Err(e) => {
            // One line: which file or flag, what was found, what was expected (libtorch's C++
            // backtraces are dropped).
            eprintln!("error: {}", cmh::deep::strip_backtrace(&format!("{e:#}")));
            1
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data(DataCommand::Info { bundle }) => data_info(&bundle),
        Command::Data(DataCommand::Convert(a)) => {
            println!("{}", cmh::convert::convert(&a.into(), &ScriptHelpers)?.summary);
            Ok(())
        }
        Command::Data(DataCommand::EmbedClasses(a)) => {
            println!("{}", cmh::semantics::embed_classes(&a.into(), &ScriptHelpers)?);
            Ok(())
        }
        Command::Data(DataCommand::Emoji(a)) => build_emoji(&a.into()),
        Command::Data(DataCommand::Split(a)) => data_split(&a),
        Command::Tune(a) => tune(&a),
        Command::Data(DataCommand::EmbedText(a)) => {
            let summary = cmh::text_features::run(
                &cmh::text_features::EmbedText {
                    bundle: a.bundle,
                    out: a.out,
                    texts: a.texts,
                    batch: a.batch,
                    cache: a.cache.unwrap_or_else(cmh::text_features::default_cache_dir),
                    progress: !a.quiet,
                },
                &ScriptHelpers,
            )?;
            println!("{summary}");
            Ok(())
        }
        Command::Demo(a) => demo(&a.into()),
        Command::Features(a) => cmh::deep::features::run_features(&a.into()),
        Command::Train(a) => train(&a),
        Command::Eval(a) => eval(&a),
        Command::Search(a) => cmh::search::run(&a.into()),
        Command::Index(IndexCommand::Build(a)) => index_build(&a),
        Command::Export(a) => export(&a),
        Command::Encode(a) => encode(&a),
    }
}

/// `cmh data emoji OUT`: builds the bundle and prints the builder's summary.
fn build_emoji(args: &cmh::semantics::BuildEmojiArgs) -> Result<()> {
    let (b, summary) = cmh::semantics::build_emoji(args, &ScriptHelpers)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    println!(
        "{}: {} items, {} classes, modalities {:?}",
        b.dir.display(),
        b.n_items(),
        b.n_classes(),
        b.modalities.iter().map(|m| &m.name).collect::<Vec<_>>()
    );
    Ok(())
}

/// `cmh demo`: runs it and prints its table, the health of its codes and where it wrote.
fn demo(a: &cmh::demo::DemoArgs) -> Result<()> {
    let o = cmh::demo::run_demo(a, &ScriptHelpers)?;
    println!("{}", cmh::report::format_table(&o.summary));
    println!("learned-B: database codes are the learned training codes; 'enc' columns encode the database with the hash functions.");
    if o.warnings.is_empty() {
        println!("health: every run's codes look healthy (bit balance, distinct codes, mAP above the random floor)");
    }
    for w in &o.warnings {
        println!("warning: {w}");
    }
    println!(
        "wrote {} and {} pictures under {} ({:.0} s)",
        o.report_json.display(),
        o.pictures.len(),
        a.out.join("plots").display(),
        o.seconds
    );
    Ok(())
}

fn index_build(a: &IndexBuildArgs) -> Result<()> {
    cmh::outdir::refuse_overwriting_inputs(std::slice::from_ref(&a.out), &[("--codes", &a.codes)])?;
    let codes = open_codes(&a.codes, a.bits)?;
    let t = std::time::Instant::now();
    let opts = cmh::search::mih::BuildOptions { substrings: a.substrings, progress: !a.quiet };
    let s = cmh::search::mih::build_index_file(codes.view(), &opts, &a.out)?;
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
    use cmh::export::{write_bulk_ndjson, write_faiss, write_milvus_json, BulkFlavour, IvfOptions};
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
    cmh::outdir::refuse_overwriting_inputs(&[out.to_path_buf()], &inputs)?;
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
    let b = cmh::bundle::Bundle::load(dir)?;
    println!("{} ({} items, {} classes): {}", b.manifest.name, b.n_items(), b.n_classes(), b.manifest.source);
    for (m, spec) in b.manifest.modalities.iter().enumerate() {
        let md = &b.modalities[m];
        let features = md.features.as_ref().map_or("none".to_string(), |x| format!("{}×{}", x.nrows(), x.ncols()));
        let images = md.images.as_ref().map_or("none".to_string(), |x| cmh::npy::shape_str(x.shape()));
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

fn train(a: &TrainArgs) -> Result<()> {
    let progress = !a.quiet;
    if let Some(dir) = &a.resume {
        let p = dir.join("run.json");
        let text = std::fs::read_to_string(&p).with_context(|| format!("{}: no run to resume here", p.display()))?;
        let cfg: RunConfig = serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid run description: {e}", p.display()))?;
        let opts = pipeline::RunOptions { resume: true, force: false, progress };
        return finish_train(pipeline::run_with(&cfg, dir, &opts)?, dir);
    }
    let method = a.method.clone().ok_or_else(|| anyhow!("--method is required (one of {})", cmh::registry::names().join(", ")))?;
    let resolved = cmh::params::resolve_params(&method, a.preset.as_deref(), a.config.as_deref(), &a.params)?;
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
        device: a.run.device.into(),
        topk: a.topk,
        images: !a.run.features_only,
        same_modality: a.same_modality,
        mmap: a.mmap,
    };
    finish_train(pipeline::run_with(&cfg, &out, &pipeline::RunOptions { resume: false, force: a.force, progress })?, &out)
}

fn finish_train(reports: Vec<cmh::report::Report>, out: &Path) -> Result<()> {
    print!("{}", cmh::report::format_table(&cmh::report::summarize(&reports)));
    print!("{}", cmh::report::format_health(&reports));
    println!("wrote {}", out.join("report.json").display());
    Ok(())
}

fn tune(a: &TuneArgs) -> Result<()> {
    let resolved = cmh::params::resolve_params(&a.method, a.preset.as_deref(), a.config.as_deref(), &a.params)?;
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("runs/tune-{}", a.method)));
    let cfg = cmh::tune::TuneConfig {
        method: a.method.clone(),
        data: a.data.clone(),
        bits: a.bits.clone(),
        split: a.run.split(a.seed),
        validation: cmh::split::ValidationConfig { fraction: a.validation_fraction, seed: a.validation_seed },
        budget: a.budget,
        seed: a.seed,
        strategy: a.strategy.into(),
        base: resolved.table,
        fixed: resolved.explicit,
        device: a.run.device.into(),
        images: !a.run.features_only,
    };
    let o = cmh::tune::tune(&cfg, &out, !a.quiet)?;
    let info = cmh::registry::method_info(&a.method)?;
    print!("{}", cmh::tune::format_trials(&o, &info, ' '));
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
    let b = cmh::bundle::Bundle::load(&a.bundle)?;
    let s = cmh::split::write_validation_bundle(&b, &cmh::split::ValidationConfig { fraction: a.fraction, seed: a.seed }, &a.out)?;
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
            cmh::plot::plot_direction(dir, "eval", &format!("{} vs {}", a.query_codes.display(), a.db_codes.display()), &[(label, &m)])?
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
    cmh::outdir::refuse_overwriting_inputs(&outputs, &[("--features", &a.features), ("--model", &a.model)])?;
    let model = cmh::registry::load_model(&a.model)?;
    let m = match a.modality.as_str() {
        "image" => cmh::method::IMAGE,
        "text" => cmh::method::TEXT,
        other => bail!("--modality must be image or text, found {other:?}"),
    };
    let opts = cmh::encode::EncodeOptions { chunk: a.chunk, packed_only: a.packed_only, progress: !a.quiet };
    let t = std::time::Instant::now();
    let s = cmh::encode::encode_file(model.as_ref(), m, &a.features, &a.out, &opts)?;
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
