//! `cmh demo`: the main job. Builds (or reuses) the emoji image–text bundle, trains every method at
//! 32 and 64 bits under the standard and zero-shot protocols, writes a report folder with
//! `report.json`, the codes, curves and a picture of top results, and returns the summary rows.

use crate::bundle::Bundle;
use crate::codes::BinaryCodes;
use crate::method::DeviceChoice;
use crate::pipeline::{self, RunConfig};
use crate::plot::{self, Cell, GridRow};
use crate::report::{summarize, write_json, Report, SummaryRow};
use crate::split::{Protocol, SplitConfig};
use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Demo hyper-parameters: every method trains with the defaults of `cmh train` (deep methods in
/// feature mode over the bundle's hand-crafted image descriptor), except where a section of this
/// file says otherwise. `--config` overrides them.
pub(crate) const DEMO_CONFIG: &str = include_str!("demo.toml");

#[derive(Debug, Clone)]
pub struct DemoArgs {
    /// Report folder.
    pub out: PathBuf,
    /// The emoji bundle (built on first use; network only then, through npm).
    pub data: PathBuf,
    /// Code lengths.
    pub bits: Vec<usize>,
    /// Methods to run (default: all).
    pub methods: Vec<String>,
    /// Deep methods train on the 64×64 images instead of the descriptor (slower on CPU; meant for
    /// `--device cuda`).
    pub images: bool,
    pub device: DeviceChoice,
    pub seed: u64,
    /// TOML overrides of the demo's hyper-parameters (a section per method).
    pub config: Option<PathBuf>,
    pub quiet: bool,
}

fn demo_params(method: &str, user: Option<&Path>) -> Result<toml::Table> {
    let base: toml::Table = DEMO_CONFIG.parse().map_err(|e| anyhow!("built-in demo config: {e}"))?;
    let mut t = base.get(method).and_then(|v| v.as_table()).cloned().unwrap_or_default();
    let user = crate::params::method_params(method, user, &[])?;
    t.extend(user);
    Ok(t)
}

/// What a demo produced: the summary rows (one per method, protocol and code length), every run's
/// report, the health warnings, and the files written.
pub struct DemoOutcome {
    pub summary: Vec<SummaryRow>,
    pub reports: Vec<Report>,
    pub warnings: Vec<String>,
    pub report_json: PathBuf,
    pub pictures: Vec<PathBuf>,
    pub seconds: f64,
}

/// Runs the demo: trains and evaluates every method in `a.methods` (default: the registry's demo
/// methods) and writes the report folder `a.out`.
pub fn run_demo(a: &DemoArgs, py: &dyn crate::helpers::PythonHelpers) -> Result<DemoOutcome> {
    let t0 = Instant::now();
    let progress = !a.quiet;
    let methods: Vec<String> =
        if a.methods.is_empty() { crate::registry::demo_methods().iter().map(|s| s.to_string()).collect() } else { a.methods.clone() };
    for m in &methods {
        crate::registry::get(m)?;
    }
    if progress {
        log::info!("demo: emoji bundle in {}", a.data.display());
    }
    // The demo starts afresh: an earlier demo report in --out is replaced (only one cmh made).
    crate::outdir::prepare(&a.out, crate::outdir::Kind::Demo, "--out", true)?;
    let bundle = crate::semantics::emoji_bundle(&crate::semantics::BuildEmojiArgs::new(&a.data), py)?;
    let mut reports: Vec<Report> = Vec::new();
    let mut dirs: Vec<(Report, PathBuf)> = Vec::new();
    for protocol in [Protocol::Standard, Protocol::ZeroShot] {
        let pname = serde_json::to_value(protocol)?.as_str().unwrap_or("").to_string();
        for m in &methods {
            let cfg = RunConfig {
                method: m.clone(),
                data: bundle.dir.clone(),
                bits: a.bits.clone(),
                seed: a.seed,
                repeat: 1,
                split: SplitConfig { protocol, seed: a.seed, unseen_fraction: 0.2, ..SplitConfig::default() },
                params: demo_params(m, a.config.as_deref())?,
                device: a.device,
                topk: Some(100),
                images: a.images,
                same_modality: false,
                mmap: false,
            };
            let dir = a.out.join(&pname).join(m);
            let rs = pipeline::run(&cfg, &dir, false, progress).with_context(|| format!("demo: {m} under {pname}"))?;
            for r in rs {
                dirs.push((r.clone(), dir.join(format!("bits{}-seed{}", r.bits, r.seed))));
                reports.push(r);
            }
        }
    }
    let summary = summarize(&reports);
    let top = *a.bits.iter().max().unwrap_or(&64);
    let mut pictures = Vec::new();
    for protocol in ["standard", "zero-shot"] {
        let rs: Vec<&Report> = reports.iter().filter(|r| r.protocol == protocol && r.bits == top).collect();
        if !rs.is_empty() {
            for p in plot::plot_reports(
                &a.out.join("plots"),
                &format!("{protocol}_"),
                &rs,
                &format!(" ({protocol}, {top} bits, database encoded)"),
            )? {
                pictures.push(p.with_extension("png"));
            }
        }
    }
    // Top results of the best method (by mean of both directions) at the longest code length.
    let best = dirs
        .iter()
        .filter(|(r, _)| r.protocol == "standard" && r.bits == top && r.method != "random")
        .max_by(|x, y| (x.0.i2t_encoded.map + x.0.t2i_encoded.map).total_cmp(&(y.0.i2t_encoded.map + y.0.t2i_encoded.map)));
    if let Some((r, dir)) = best {
        let stem = a.out.join("plots").join("top_results");
        top_results_picture(
            &bundle,
            dir,
            &stem,
            &format!("{} at {} bits: top results (standard protocol, database encoded)", r.method, r.bits),
        )?;
        pictures.push(stem.with_extension("png"));
    }
    write_json(
        &a.out.join("report.json"),
        &serde_json::json!({"summary": summary, "runs": reports, "pictures": pictures, "seconds": t0.elapsed().as_secs_f64()}),
    )?;
    let warnings = reports.iter().filter_map(|r| r.health.as_ref()).flat_map(|h| h.warnings.iter().cloned()).collect();
    Ok(DemoOutcome { summary, reports, warnings, report_json: a.out.join("report.json"), pictures, seconds: t0.elapsed().as_secs_f64() })
}

/// Text of an item for pictures: its name and a few keywords, from the bundle's items.json.
fn item_texts(bundle: &Bundle) -> Vec<String> {
    let p = bundle.dir.join("items.json");
    let v: Option<serde_json::Value> = std::fs::read_to_string(&p).ok().and_then(|t| serde_json::from_str(&t).ok());
    let items = v.as_ref().and_then(|v| v.as_array().cloned().or_else(|| v.get("items").and_then(|i| i.as_array().cloned())));
    match items {
        Some(items) if items.len() == bundle.n_items() => items
            .iter()
            .map(|it| {
                let name = it.get("name").and_then(|n| n.as_str()).unwrap_or("").to_lowercase();
                let kws: Vec<String> = it
                    .get("keywords")
                    .and_then(|k| k.as_array())
                    .map(|k| k.iter().take(3).filter_map(|s| s.as_str().map(|s| s.replace('_', " "))).collect())
                    .unwrap_or_default();
                format!("{name} ({})", kws.join(", "))
            })
            .collect(),
        _ => (0..bundle.n_items()).map(|i| format!("item {i}")).collect(),
    }
}

fn top_results_picture(bundle: &Bundle, run: &Path, stem: &Path, title: &str) -> Result<()> {
    let images = bundle.modalities[0].images.as_ref().ok_or_else(|| anyhow!("the emoji bundle has no raw images"))?;
    let texts = item_texts(bundle);
    let load = |name: &str| BinaryCodes::load_npy(&run.join(format!("{name}.npy")), None);
    let query_idx = crate::npy::read_indices(&run.join("split_query.npy"), bundle.n_items())?;
    let db_idx = crate::npy::read_indices(&run.join("split_database.npy"), bundle.n_items())?;
    let labels = bundle.union_labels();
    let image_of = |i: usize| Cell::Image(images.index_axis(ndarray::Axis(0), i).to_owned());
    let relevant = |a: usize, b: usize| labels.row(a).iter().zip(labels.row(b)).any(|(x, y)| *x != 0 && *y != 0);
    let mut rows = Vec::new();
    // Three image queries (→ texts) and three text queries (→ images), spread over the query set.
    for (qname, dbname, as_image) in [("query_image", "db_text", true), ("query_text", "db_image", false)] {
        let q = load(qname)?;
        let db = load(dbname)?;
        let picks: Vec<usize> = (0..3).map(|k| (k * 2 + 1) * q.len() / 7).collect();
        let qsel = q.select_rows(&picks);
        let res = crate::search::topk(qsel.view(), db.view(), 6)?;
        for (r, &p) in picks.iter().enumerate() {
            let qi = query_idx[p];
            let results = res
                .indices
                .row(r)
                .iter()
                .map(|&j| {
                    let di = db_idx[j as usize];
                    (if as_image { Cell::Text(texts[di].clone()) } else { image_of(di) }, relevant(qi, di))
                })
                .collect();
            rows.push(GridRow { query: if as_image { image_of(qi) } else { Cell::Text(texts[qi].clone()) }, results });
        }
    }
    plot::result_grid(stem, title, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<P: serde::de::DeserializeOwned>(m: &str) -> P {
        toml::Value::Table(demo_params(m, None).unwrap()).try_into().unwrap_or_else(|e| panic!("demo.toml [{m}]: {e}"))
    }

    /// Every section of the built-in demo config deserialises into its method's hyper-parameters
    /// (they deny unknown keys) and names a registered method; SCH, SeGH, CCA-ITQ and SDCH train
    /// with the defaults of `cmh train` (no section).
    #[test]
    fn demo_config_is_valid_for_every_method() {
        let base: toml::Table = DEMO_CONFIG.parse().unwrap();
        for k in base.keys() {
            assert!(crate::registry::demo_methods().contains(&k.as_str()), "demo.toml section [{k}] is not a demo method");
        }
        for m in ["random", "sch", "segh", "cca-itq", "sdch"] {
            assert!(!base.contains_key(m), "the demo overrides the defaults of {m}");
        }
        let s: crate::deep::sdch::SdchParams = parse("sdch");
        assert_eq!(s, crate::deep::sdch::SdchParams::default());
        let _: crate::shallow::attr_ridge::AttrRidgeParams = parse("attr-ridge");
        let c: crate::deep::czhash::CzhashParams = parse("czhash");
        assert_eq!(c, crate::deep::czhash::CzhashParams::default());
        let a: crate::deep::agnet::AgnetParams = parse("agnet");
        assert_eq!(a, crate::deep::agnet::AgnetParams::default());
    }

    /// A user's --config section overrides the built-in values key by key.
    #[test]
    fn user_config_overrides_demo_settings() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.toml");
        std::fs::write(&f, "[czhash]\nepochs = 3\n").unwrap();
        let t = demo_params("czhash", Some(&f)).unwrap();
        assert_eq!(t["epochs"].as_integer(), Some(3));
        std::fs::write(&f, "[sdch]\nepochs = 3\n").unwrap();
        let t = demo_params("sdch", Some(&f)).unwrap();
        assert_eq!(t["epochs"].as_integer(), Some(3));
        assert!(!t.contains_key("hidden"), "only the keys the user set: {t:?}");
    }
}
