//! Hyper-parameters in layers, and the spaces `cmh tune` searches.
//!
//! The effective parameters of a run are, key by key, the first of: a `--param NAME=VALUE`
//! override, the method's section of a `--config` file, a named preset (`--preset paper`), the
//! method's `Default`. `resolve` merges the layers and records where each value came from
//! (`cmh train --show-params` prints it).
//!
//! Every method declares, next to its parameter struct, its presets and its search space by
//! implementing [`MethodParams`]; [`crate::registry::method_info`] looks them up by CLI name.

use anyhow::{anyhow, bail, Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The range one hyper-parameter is drawn from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Range {
    /// A real number in [lo, hi]; `log` draws uniformly in log space.
    Float { lo: f64, hi: f64, log: bool },
    /// An integer in [lo, hi]; `log` draws uniformly in log space (then rounds).
    Int { lo: i64, hi: i64, log: bool },
    /// One of these values, each written in TOML (`"[512, 512]"`, `"0.7"`, `"\"random\""`).
    Choice(&'static [&'static str]),
}

/// One searched hyper-parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dim {
    /// The parameter's TOML name.
    pub name: &'static str,
    pub range: Range,
}

/// What `cmh tune` varies for a method.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SearchSpace {
    pub dims: &'static [Dim],
    /// An integer parameter that scales the cost of a fit (deep methods: `epochs`). Successive
    /// halving trains early rungs with a fraction of it; `None` = every trial is fitted in full.
    pub fidelity: Option<&'static str>,
}

impl SearchSpace {
    pub(crate) const EMPTY: SearchSpace = SearchSpace { dims: &[], fidelity: None };
}

/// A method's hyper-parameter struct: checked and fitted ([`crate::method::Fit`]), with its named
/// presets and its search space declared beside it.
pub trait MethodParams: crate::method::Fit + Default + Serialize + DeserializeOwned + 'static {
    /// Named presets, e.g. `("paper", the paper's printed settings)`. `Default` is not one of them.
    fn presets() -> Vec<(&'static str, Self)>;
    /// The space `cmh tune` searches.
    fn search_space() -> SearchSpace;
}

/// Implements [`MethodParams`] from the search space and the named presets:
/// `impl_method_params!(SchParams, SEARCH_SPACE, ["paper" => SchParams::paper()]);`
macro_rules! impl_method_params {
    ($ty:ty, $space:expr, [$($name:literal => $preset:expr),* $(,)?]) => {
        impl $crate::params::MethodParams for $ty {
            fn presets() -> Vec<(&'static str, Self)> {
                vec![$(($name, $preset)),*]
            }
            fn search_space() -> $crate::params::SearchSpace {
                $space
            }
        }
    };
}
pub(crate) use impl_method_params;

/// Everything the CLI and `cmh tune` need to know about a method's parameters, as TOML tables.
pub struct MethodInfo {
    pub method: String,
    /// `Default`, every field.
    pub defaults: toml::Table,
    /// Named presets, every field.
    pub presets: Vec<(String, toml::Table)>,
    pub space: SearchSpace,
    /// Parses a (partial) table into the method's struct and writes it back in full: refuses
    /// unknown keys and wrong types, naming them.
    pub canonical: fn(&toml::Table) -> Result<toml::Table>,
}

fn to_table<P: Serialize>(method: &str, p: &P) -> toml::Table {
    toml::Table::try_from(p).unwrap_or_else(|e| panic!("{method}: parameters do not serialise to TOML: {e}"))
}

fn canonical<P: MethodParams>(t: &toml::Table) -> Result<toml::Table> {
    let p: P = toml::Value::Table(t.clone()).try_into().map_err(|e| anyhow!("{e}"))?;
    Ok(to_table("", &p))
}

impl MethodInfo {
    pub fn of<P: MethodParams>(method: &str) -> Self {
        Self {
            method: method.to_string(),
            defaults: to_table(method, &P::default()),
            presets: P::presets().into_iter().map(|(n, p)| (n.to_string(), to_table(method, &p))).collect(),
            space: P::search_space(),
            canonical: canonical::<P>,
        }
    }

    /// A preset's table, or an error listing the presets.
    pub fn preset(&self, name: &str) -> Result<&toml::Table> {
        self.presets.iter().find(|(n, _)| n == name).map(|(_, t)| t).ok_or_else(|| {
            let names: Vec<&str> = self.presets.iter().map(|(n, _)| n.as_str()).collect();
            if names.is_empty() {
                anyhow!("{} has no presets", self.method)
            } else {
                anyhow!("{} has no preset {name:?}; its presets are {}", self.method, names.join(", "))
            }
        })
    }
}

/// Where an effective value came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Default,
    Preset(String),
    Config(PathBuf),
    Param,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::Preset(p) => write!(f, "preset {p}"),
            Source::Config(p) => write!(f, "config file {}", p.display()),
            Source::Param => write!(f, "--param"),
        }
    }
}

/// The merged parameters of one method.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub method: String,
    /// Every parameter, as the method reads it.
    pub table: toml::Table,
    /// Per parameter, the layer its value came from.
    pub sources: BTreeMap<String, Source>,
    /// The keys set explicitly (by a config file or `--param`), which `cmh tune` does not vary.
    pub explicit: Vec<String>,
}

/// The method's section of a config file (a TOML file with one table per method), or an empty
/// table when the file has none. Refuses sections that are not methods.
pub(crate) fn config_section(method: &str, path: &Path, methods: &[&str]) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the config file", path.display()))?;
    let all: toml::Table = text.parse().map_err(|e| anyhow!("{}: invalid TOML: {e}", path.display()))?;
    for key in all.keys() {
        if !methods.contains(&key.as_str()) {
            bail!("{}: section [{key}] is not a method; methods are {}", path.display(), methods.join(", "));
        }
    }
    match all.get(method) {
        Some(v) => v.as_table().cloned().ok_or_else(|| anyhow!("{}: [{method}] must be a table", path.display())),
        None => Ok(toml::Table::new()),
    }
}

/// `--param NAME=VALUE` overrides as a table (VALUE in TOML; a bare word is taken as a string).
pub(crate) fn param_overrides(overrides: &[String]) -> Result<toml::Table> {
    let mut table = toml::Table::new();
    for o in overrides {
        let (k, v) = o.split_once('=').ok_or_else(|| anyhow!("--param {o:?}: expected NAME=VALUE"))?;
        let value: toml::Value = format!("v = {v}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(v.to_string()));
        table.insert(k.trim().to_string(), value);
    }
    Ok(table)
}

/// Merges defaults, `preset`, the method's section of `config` and `overrides`, checks the result
/// parses into the method's parameters, and records each value's source.
pub(crate) fn resolve(
    info: &MethodInfo,
    preset: Option<&str>,
    config: Option<(&Path, &toml::Table)>,
    overrides: &toml::Table,
) -> Result<Resolved> {
    let mut table = info.defaults.clone();
    let mut sources: BTreeMap<String, Source> = table.keys().map(|k| (k.clone(), Source::Default)).collect();
    if let Some(name) = preset {
        for (k, v) in info.preset(name)? {
            if table.get(k) != Some(v) {
                table.insert(k.clone(), v.clone());
                sources.insert(k.clone(), Source::Preset(name.to_string()));
            }
        }
    }
    let mut explicit = Vec::new();
    let layers = config.map(|(p, t)| (Source::Config(p.to_path_buf()), t)).into_iter().chain(std::iter::once((Source::Param, overrides)));
    for (src, layer) in layers {
        for (k, v) in layer {
            table.insert(k.clone(), v.clone());
            sources.insert(k.clone(), src.clone());
            if !explicit.contains(k) {
                explicit.push(k.clone());
            }
        }
    }
    let table = (info.canonical)(&table).map_err(|e| anyhow!("hyper-parameters of {}: {e}", info.method))?;
    // Optional keys a layer cleared (none today) fall back to the default's source.
    sources.retain(|k, _| table.contains_key(k));
    for k in table.keys() {
        sources.entry(k.clone()).or_insert(Source::Default);
    }
    Ok(Resolved { method: info.method.clone(), table, sources, explicit })
}

/// One TOML value on one line (arrays and inline tables included).
pub(crate) fn inline(v: &toml::Value) -> String {
    match v {
        toml::Value::Table(t) => {
            let parts: Vec<String> = t.iter().map(|(k, v)| format!("{k} = {}", inline(v))).collect();
            format!("{{ {} }}", parts.join(", "))
        }
        toml::Value::Array(a) => format!("[{}]", a.iter().map(inline).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

impl Resolved {
    /// The parameters as a `[method]` TOML section with each value's source as a comment; valid
    /// input for `--config`.
    pub fn to_annotated_toml(&self) -> String {
        let lines: Vec<(String, String)> =
            self.table.iter().map(|(k, v)| (format!("{k} = {}", inline(v)), self.sources[k].to_string())).collect();
        let w = lines.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(0);
        let mut s = format!("[{}]\n", self.method);
        for (l, src) in lines {
            s += &format!("{l:<w$}  # {src}\n");
        }
        s
    }
}

/// Merges the method's TOML section from a config file with `name=value` overrides (the explicit
/// settings only; [`resolve_params`] adds defaults and presets).
pub(crate) fn method_params(method: &str, config: Option<&Path>, overrides: &[String]) -> Result<toml::Table> {
    let mut table = match config {
        Some(p) => config_section(method, p, &crate::registry::names())?,
        None => toml::Table::new(),
    };
    table.extend(param_overrides(overrides)?);
    Ok(table)
}

/// The effective parameters of `method`: defaults, `preset`, the config file's section and
/// `name=value` overrides, each value with its source.
pub fn resolve_params(method: &str, preset: Option<&str>, config: Option<&Path>, overrides: &[String]) -> Result<Resolved> {
    let info = crate::registry::method_info(method)?;
    let section = config.map(|p| config_section(method, p, &crate::registry::names()).map(|t| (p, t))).transpose()?;
    resolve(&info, preset, section.as_ref().map(|(p, t)| (*p, t)), &param_overrides(overrides)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{method_info, names};

    /// Every method's defaults and presets serialise to TOML and parse back unchanged, every preset
    /// differs from the defaults, and every searched name is a parameter whose values parse.
    #[test]
    fn presets_and_search_spaces_are_valid_for_every_method() {
        for m in &names() {
            let info = method_info(m).unwrap();
            assert_eq!((info.canonical)(&info.defaults).unwrap(), info.defaults, "{m} defaults");
            assert_eq!((info.canonical)(&toml::Table::new()).unwrap(), info.defaults, "{m}: an empty table means the defaults");
            for (name, t) in &info.presets {
                assert_eq!(&(info.canonical)(t).unwrap(), t, "{m} preset {name}");
                assert_ne!(t, &info.defaults, "{m} preset {name} equals the defaults");
            }
            // attr-ridge is the linear reference, not a published method: no paper to take settings from.
            if *m != "random" && *m != "attr-ridge" {
                assert!(info.presets.iter().any(|(n, _)| n == "paper"), "{m} has no paper preset");
            }
            for d in info.space.dims {
                assert!(info.defaults.contains_key(d.name) || *m == "sch" && d.name == "refit_rho", "{m}: {} is not a parameter", d.name);
                if let Range::Choice(vs) = d.range {
                    for v in vs {
                        let mut t = toml::Table::new();
                        t.insert(d.name.to_string(), format!("v = {v}").parse::<toml::Table>().unwrap()["v"].clone());
                        (info.canonical)(&t).unwrap_or_else(|e| panic!("{m}.{} = {v}: {e}", d.name));
                    }
                }
            }
            if let Some(f) = info.space.fidelity {
                assert!(info.defaults[f].is_integer(), "{m}: fidelity {f} must be an integer parameter");
            }
        }
    }

    #[test]
    fn layers_apply_in_order_and_record_their_source() {
        let info = method_info("sch").unwrap();
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("c.toml");
        std::fs::write(&cfg, "[sch]\nalpha = 2.0\nmu = 0.25\n").unwrap();
        let section = config_section("sch", &cfg, &names()).unwrap();
        let over = param_overrides(&["mu=0.75".into()]).unwrap();
        let r = resolve(&info, Some("paper"), Some((cfg.as_path(), &section)), &over).unwrap();
        let paper = info.preset("paper").unwrap();
        assert_eq!(r.table["alpha"].as_float(), Some(2.0));
        assert_eq!(r.sources["alpha"], Source::Config(cfg.clone()));
        assert_eq!(r.table["mu"].as_float(), Some(0.75));
        assert_eq!(r.sources["mu"], Source::Param);
        // A key the preset changes and nothing overrides comes from the preset.
        let by_preset: Vec<&String> =
            paper.keys().filter(|k| paper[*k] != info.defaults[*k] && !["alpha", "mu"].contains(&k.as_str())).collect();
        assert!(!by_preset.is_empty(), "the paper preset of sch changes nothing but alpha / mu");
        for k in by_preset {
            assert_eq!(r.sources[k], Source::Preset("paper".into()), "{k}");
            assert_eq!(r.table[k], paper[k], "{k}");
        }
        assert_eq!(r.sources["max_iter"], Source::Default);
        assert_eq!(r.explicit, vec!["alpha".to_string(), "mu".to_string()]);
        // The annotated TOML is a valid config that gives the same parameters back.
        let text = r.to_annotated_toml();
        std::fs::write(&cfg, &text).unwrap();
        let again =
            resolve(&info, None, Some((cfg.as_path(), &config_section("sch", &cfg, &names()).unwrap())), &toml::Table::new()).unwrap();
        assert_eq!(again.table, r.table);
        assert!(text.contains("# --param") && text.contains("# preset paper") && text.contains("# default"), "{text}");
        // Unknown presets, keys and sections are refused by name.
        assert!(resolve(&info, Some("fast"), None, &toml::Table::new()).unwrap_err().to_string().contains("paper"));
        let e = resolve(&info, None, None, &param_overrides(&["alhpa=1".into()]).unwrap()).unwrap_err().to_string();
        assert!(e.contains("alhpa"), "{e}");
        std::fs::write(&cfg, "[schh]\nalpha = 1\n").unwrap();
        assert!(config_section("sch", &cfg, &names()).unwrap_err().to_string().contains("[schh]"));
    }
}
