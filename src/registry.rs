//! The one table of methods. Adding a method means writing its module (parameters implementing
//! [`Fit`] + [`MethodParams`], a model implementing [`HashModel`]) and adding one entry to
//! [`METHODS`]; the command line, the demo, model loading and tuning read this table.

use crate::method::{Fit, FitContext, HashModel, TrainSet};
use crate::params::{MethodInfo, MethodParams};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::path::Path;

/// A fitted model and the full hyper-parameters used.
pub type Fitted = (Box<dyn HashModel>, serde_json::Value);

/// One method: its name on the command line and in `model.json`, what it is, and how to fit and
/// load it.
pub struct MethodEntry {
    /// Name on the command line, in config sections and in `model.json`.
    pub name: &'static str,
    /// The paper (or what the baseline is), one line.
    pub paper: &'static str,
    /// Whether the method consumes raw images when the bundle has them (libtorch networks).
    pub is_deep: bool,
    /// Whether `cmh demo` runs it by default (the demo's table follows this table's order).
    pub in_demo: bool,
    /// Fits from a (partial) TOML table of hyper-parameters; missing keys take the defaults.
    pub fit: fn(&str, &toml::Table, &TrainSet, &FitContext) -> Result<Fitted>,
    /// Defaults, presets and search space.
    pub info: fn(&str) -> MethodInfo,
    /// Loads a model folder written by [`HashModel::save`].
    pub load: fn(&Path) -> Result<Box<dyn HashModel>>,
}

fn fit_boxed<P: Fit + serde::de::DeserializeOwned + Serialize>(
    method: &str,
    table: &toml::Table,
    data: &TrainSet,
    ctx: &FitContext,
) -> Result<Fitted> {
    let p: P = toml::Value::Table(table.clone()).try_into().map_err(|e| anyhow!("hyper-parameters of {method}: {e}"))?;
    let json = serde_json::to_value(&p)?;
    Ok((Box::new(p.fit(data, ctx)?), json))
}

const fn entry<P: Fit + MethodParams>(
    name: &'static str,
    paper: &'static str,
    is_deep: bool,
    load: fn(&Path) -> Result<Box<dyn HashModel>>,
) -> MethodEntry {
    MethodEntry { name, paper, is_deep, in_demo: true, fit: fit_boxed::<P>, info: MethodInfo::of::<P>, load }
}

use crate::deep::{agnet, czhash, sdch};
use crate::shallow::{attr_ridge, cca_itq, sch, segh};

/// Every method cmh can train, in the order of the demo's table (the random floor, the
/// baselines, then the methods).
pub static METHODS: &[MethodEntry] = &[
    entry::<crate::random_codes::RandomCodes>("random", "random codes: the floor figures are read against", false, |d| {
        Ok(Box::new(crate::random_codes::RandomModel::load(d)?))
    }),
    entry::<cca_itq::CcaItqParams>("cca-itq", "CCA-ITQ baseline (Gong & Lazebnik, 2011)", false, |d| {
        Ok(Box::new(cca_itq::CcaItqModel::load(d)?))
    }),
    entry::<attr_ridge::AttrRidgeParams>("attr-ridge", "attribute-regression baseline for zero-shot retrieval", false, |d| {
        Ok(Box::new(attr_ridge::AttrRidgeModel::load(d)?))
    }),
    entry::<sch::SchParams>("sch", "SCH, Semantics-reconstructing Cross-modal Hashing (Zhang et al.)", false, |d| {
        Ok(Box::new(sch::SchModel::load(d)?))
    }),
    entry::<segh::SeghParams>("segh", "SeGH, Semantic-Guided Hashing", false, |d| Ok(Box::new(segh::SeghModel::load(d)?))),
    entry::<sdch::SdchParams>("sdch", "SDCH, Semantic Deep Cross-modal Hashing", true, |d| Ok(Box::new(sdch::load(d)?))),
    entry::<czhash::CzhashParams>("czhash", "CZHash, Cross-modal Zero-shot Hashing (Liu et al., ICDM 2019)", true, |d| {
        Ok(Box::new(czhash::CzhashModel::load(d)?))
    }),
    entry::<agnet::AgnetParams>("agnet", "AgNet, attribute-guided zero-shot hashing (Ji et al., arXiv 1802.01943)", true, |d| {
        Ok(Box::new(agnet::AgnetModel::load(d)?))
    }),
];

/// Every method's name, in table order.
pub fn names() -> Vec<&'static str> {
    METHODS.iter().map(|m| m.name).collect()
}

/// The methods `cmh demo` runs by default, in table order.
pub(crate) fn demo_methods() -> Vec<&'static str> {
    METHODS.iter().filter(|m| m.in_demo).map(|m| m.name).collect()
}

/// The entry of `method`, or an error listing the methods.
pub fn get(method: &str) -> Result<&'static MethodEntry> {
    METHODS.iter().find(|m| m.name == method).ok_or_else(|| anyhow!("unknown method {method:?}; methods are {}", names().join(", ")))
}

/// Whether `method` consumes raw images when the bundle has them (false for unknown names).
pub fn is_deep(method: &str) -> bool {
    get(method).is_ok_and(|m| m.is_deep)
}

/// Fits `method` with hyper-parameters `table` (the method's TOML section; missing keys take the
/// defaults). Returns the model and the full hyper-parameters used.
///
/// Fit by name, save, load back ([`load_model`]) and encode:
///
/// ```
/// use cmh::method::{FitContext, TrainSet, View, TEXT};
/// use ndarray::Array2;
///
/// let class: Vec<usize> = (0..40).map(|i| i % 2).collect();
/// let x = |d: usize| View::Features(Array2::from_shape_fn((40, d), |(i, j)| (class[i] == j % 2) as u8 as f32 + 0.01 * (i % 7) as f32));
/// let train = TrainSet::supervised(vec![x(4), x(3)], cmh::bundle::one_hot(&class, 2), vec!["a".into(), "b".into()]);
/// let table: toml::Table = "anchors = 20\nitq_iter = 10".parse()?;
/// let (model, params) = cmh::registry::fit_method("cca-itq", &table, &train, &FitContext::new(8, 0))?;
/// assert_eq!(params["itq_iter"], 10);
///
/// let dir = tempfile::tempdir()?;
/// model.save(dir.path())?;
/// let loaded = cmh::registry::load_model(dir.path())?;
/// assert_eq!(loaded.method(), "cca-itq");
/// assert_eq!(loaded.encode(TEXT, &train.views[TEXT])?, model.encode(TEXT, &train.views[TEXT])?);
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn fit_method(method: &str, table: &toml::Table, data: &TrainSet, ctx: &FitContext) -> Result<Fitted> {
    (get(method)?.fit)(method, table, data, ctx)
}

/// A method's defaults, presets and search space ([`crate::params`]), by name.
pub fn method_info(method: &str) -> Result<MethodInfo> {
    Ok((get(method)?.info)(method))
}

/// Loads a saved model folder (written by [`HashModel::save`]); `model.json` names the method.
pub fn load_model(dir: &Path) -> Result<Box<dyn HashModel>> {
    let p = dir.join("model.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read the model description", p.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", p.display()))?;
    let method = v.get("method").and_then(|m| m.as_str()).ok_or_else(|| anyhow!("{}: field method is missing", p.display()))?;
    match METHODS.iter().find(|m| m.name == method) {
        Some(m) => (m.load)(dir),
        None => bail!("{}: method {method:?} cannot be loaded by this version of cmh", p.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_each_entry_knows_its_parameters() {
        let n = names();
        let mut sorted = n.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), n.len(), "{n:?}");
        for m in METHODS {
            assert_eq!(method_info(m.name).unwrap().method, m.name);
        }
        assert!(get("nope").err().unwrap().to_string().contains("methods are random"));
    }

    #[test]
    fn readme_method_table_lists_exactly_the_registry() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let head = readme.lines().position(|l| l.starts_with("| `--method` | paper |")).expect("README has a method table");
        let mut listed: Vec<(String, String)> = readme
            .lines()
            .skip(head + 2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                (cells[1].trim_matches('`').to_string(), cells[2].to_string())
            })
            .collect();
        let mut registry: Vec<(String, String)> = METHODS.iter().map(|m| (m.name.to_string(), m.paper.to_string())).collect();
        listed.sort();
        registry.sort();
        assert_eq!(listed, registry, "README's method table (name, paper) must match the registry");
    }
}
