//! `report.json`: what every run writes. Its keys are a contract other tools read:
//! `method`, `bits`, `split`, `seed`, `i2t.map`, `t2i.map`, `map@k`, `timings`, `versions`
//! (and `i2t_encoded.map` / `t2i_encoded.map`, see "Database conventions" in the README).

pub use crate::health::Health;
use crate::metrics::DirectionMetrics;
use crate::npy::write_text_atomic;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timings {
    pub fit_s: f64,
    pub encode_s: f64,
    pub eval_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Versions {
    pub cmh: String,
    pub libtorch: String,
    pub cuda_available: bool,
}

impl Versions {
    pub fn current() -> Self {
        Self {
            cmh: env!("CARGO_PKG_VERSION").to_string(),
            libtorch: env!("CMH_LIBTORCH_VERSION").to_string(),
            cuda_available: tch::Cuda::is_available(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MapAtK {
    pub k: usize,
    pub i2t: f64,
    pub t2i: f64,
}

/// One trained and evaluated model (one method, code length, seed).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub method: String,
    pub bits: usize,
    pub seed: u64,
    pub protocol: String,
    pub split: serde_json::Value,
    /// `learned-B` when the database codes are the learned training codes B (database =
    /// training set and the method learns B), else `encoded`.
    pub database_convention: String,
    /// Image queries against the text database, under `database_convention`.
    pub i2t: DirectionMetrics,
    /// Text queries against the image database, under `database_convention`.
    pub t2i: DirectionMetrics,
    /// The same with database items encoded by the hash functions.
    pub i2t_encoded: DirectionMetrics,
    pub t2i_encoded: DirectionMetrics,
    /// Same-modality retrieval (image→image, text→text), when asked for (`--same-modality`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub i2i: Option<DirectionMetrics>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub t2t: Option<DirectionMetrics>,
    #[serde(rename = "map@k", skip_serializing_if = "Option::is_none", default)]
    pub map_at_k: Option<MapAtK>,
    pub params: serde_json::Value,
    /// Objective per iteration (shallow) or loss per epoch (deep).
    pub history: Vec<f64>,
    /// Bit balance, correlation, distinct codes, mAP over the random floor, and warnings
    /// (`crate::health`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub health: Option<Health>,
    pub timings: Timings,
    pub versions: Versions,
}

/// CPU seconds (user + system, all threads) this process has used so far (Linux; NaN elsewhere):
/// for benchmarks on shared machines, where wall-clock time says little.
pub fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    // Fields after the command name (which is in parentheses): utime is the 14th, stime the 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_text_atomic(path, &(serde_json::to_string_pretty(value)? + "\n"))
}

/// Mean and standard deviation of a list (population std; 0 for one value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
    (m, var.sqrt())
}

/// Summary row of several runs of one method at one code length.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SummaryRow {
    pub method: String,
    pub protocol: String,
    pub bits: usize,
    pub runs: usize,
    pub database_convention: String,
    pub i2t_map: f64,
    pub i2t_std: f64,
    pub t2i_map: f64,
    pub t2i_std: f64,
    pub i2t_encoded_map: f64,
    pub t2i_encoded_map: f64,
    /// Encoded-database mAP over the random-code floor (means over the runs that have it).
    #[serde(default)]
    pub i2t_floor_ratio: f64,
    #[serde(default)]
    pub t2i_floor_ratio: f64,
    /// Health warnings over the runs.
    #[serde(default)]
    pub warnings: usize,
    pub fit_s: f64,
}

/// Groups reports by (method, protocol, bits) and averages their mAPs.
pub fn summarize(reports: &[Report]) -> Vec<SummaryRow> {
    let mut keys: Vec<(String, String, usize)> = Vec::new();
    for r in reports {
        let k = (r.method.clone(), r.protocol.clone(), r.bits);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(method, protocol, bits)| {
            let rs: Vec<&Report> = reports.iter().filter(|r| r.method == method && r.protocol == protocol && r.bits == bits).collect();
            let col = |f: &dyn Fn(&Report) -> f64| rs.iter().map(|r| f(r)).collect::<Vec<_>>();
            let (i2t_map, i2t_std) = mean_std(&col(&|r| r.i2t.map));
            let (t2i_map, t2i_std) = mean_std(&col(&|r| r.t2i.map));
            SummaryRow {
                method,
                protocol,
                bits,
                runs: rs.len(),
                database_convention: rs[0].database_convention.clone(),
                i2t_map,
                i2t_std,
                t2i_map,
                t2i_std,
                i2t_encoded_map: mean_std(&col(&|r| r.i2t_encoded.map)).0,
                t2i_encoded_map: mean_std(&col(&|r| r.t2i_encoded.map)).0,
                i2t_floor_ratio: mean_std(&rs.iter().filter_map(|r| r.health.as_ref().map(|h| h.i2t.ratio)).collect::<Vec<_>>()).0,
                t2i_floor_ratio: mean_std(&rs.iter().filter_map(|r| r.health.as_ref().map(|h| h.t2i.ratio)).collect::<Vec<_>>()).0,
                warnings: rs.iter().filter_map(|r| r.health.as_ref()).map(|h| h.warnings.len()).sum(),
                fit_s: mean_std(&col(&|r| r.timings.fit_s)).0,
            }
        })
        .collect()
}

/// The health table of `reports` and their warnings, for the end of a run.
pub fn format_health(reports: &[Report]) -> String {
    let rows: Vec<(&str, usize, u64, &crate::health::Health)> =
        reports.iter().filter_map(|r| r.health.as_ref().map(|h| (r.method.as_str(), r.bits, r.seed, h))).collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut s = crate::health::format_health(&rows);
    let warnings: Vec<&String> = rows.iter().flat_map(|r| &r.3.warnings).collect();
    if warnings.is_empty() {
        s += "codes look healthy: no constant-bit, collapsed-code or near-random warnings\n";
    } else {
        for w in warnings {
            s += &format!("warning: {w}\n");
        }
    }
    s
}

/// A plain-text table of summary rows.
pub fn format_table(rows: &[SummaryRow]) -> String {
    let mut s = format!(
        "{:<10} {:<16} {:>5} {:>4} {:<10} {:>8} {:>8} {:>10} {:>10} {:>8}\n",
        "method", "protocol", "bits", "runs", "database", "I→T", "T→I", "I→T enc", "T→I enc", "fit s"
    );
    for r in rows {
        s += &format!(
            "{:<10} {:<16} {:>5} {:>4} {:<10} {:>8.4} {:>8.4} {:>10.4} {:>10.4} {:>8.2}\n",
            r.method,
            r.protocol,
            r.bits,
            r.runs,
            r.database_convention,
            r.i2t_map,
            r.t2i_map,
            r.i2t_encoded_map,
            r.t2i_encoded_map,
            r.fit_s
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_by_hand() {
        let (m, s) = mean_std(&[1.0, 3.0]);
        assert_eq!((m, s), (2.0, 1.0));
    }
}
