//! Random codes: the floor every learned method must clear under each protocol.

use crate::codes::BinaryCodes;
use crate::method::{Fit, FitContext, HashModel, TrainSet, View};
use crate::params::{MethodParams, SearchSpace};
use crate::report::write_json;
use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Random codes: the floor a learned method must clear under each protocol.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RandomCodes {}

pub struct RandomModel {
    bits: usize,
    seed: u64,
}

impl MethodParams for RandomCodes {
    fn presets() -> Vec<(&'static str, Self)> {
        vec![]
    }
    fn search_space() -> SearchSpace {
        SearchSpace::EMPTY
    }
}

impl Fit for RandomCodes {
    type Model = RandomModel;
    fn check(&self, _: &TrainSet, _: usize) -> Result<()> {
        Ok(())
    }
    fn fit_checked(&self, _: &TrainSet, ctx: &FitContext) -> Result<RandomModel> {
        Ok(RandomModel { bits: ctx.bits, seed: ctx.seed })
    }
}

impl RandomModel {
    /// Reads a model folder written by [`HashModel::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("model.json"))?)?;
        Ok(Self {
            bits: v["bits"].as_u64().ok_or_else(|| anyhow!("model.json: bits missing"))? as usize,
            seed: v["seed"].as_u64().unwrap_or(0),
        })
    }
}

impl HashModel for RandomModel {
    fn method(&self) -> &'static str {
        "random"
    }
    fn bits(&self) -> usize {
        self.bits
    }
    fn encode(&self, modality: usize, view: &View) -> Result<BinaryCodes> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed ^ ((modality as u64 + 1) << 32) ^ view.len() as u64);
        let x = ndarray::Array2::from_shape_fn((view.len(), self.bits), |_| if rng.gen::<bool>() { 1i8 } else { -1 });
        BinaryCodes::from_pm1(x.view())
    }
    fn save(&self, dir: &Path) -> Result<()> {
        write_json(&dir.join("model.json"), &serde_json::json!({"method": "random", "bits": self.bits, "seed": self.seed}))
    }
}
