//! Pretrained torchvision AlexNet weights: the official `alexnet-owt-7be5be79.pth` (a
//! `torch.save`d state dict, read directly by [`super::pth`]) or a `.safetensors` file from
//! `scripts/convert_torchvision.py`. See `pretrained/README.md` for where to get them.

use super::tensors::{copy_named, read_weights};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::nn;

/// Loads torchvision AlexNet weights into the variables of `vs` named `{prefix}{torchvision
/// name}` (prefix "" for a bare AlexNet, "img." for SDCH's image network), except the torchvision
/// names in `skip` (e.g. `classifier.6.*` when the last layer is replaced by a k-d layer).
/// The SHA-256 prefix in the file name is verified; a missing or mis-shaped tensor is refused by
/// name before any variable changes. Returns the names of the variables loaded.
pub fn load_alexnet(vs: &nn::VarStore, prefix: &str, path: &Path, skip: &[&str]) -> Result<Vec<String>> {
    let tensors: HashMap<String, tch::Tensor> = read_weights(path)?.into_iter().collect();
    let vars = vs.variables();
    // Targets keyed by the checkpoint's (torchvision) names, so errors name tensors as the file does.
    let mut targets: Vec<(String, tch::Tensor)> = Vec::new();
    for name in super::alexnet::torchvision_names() {
        if skip.contains(&name.as_str()) {
            continue;
        }
        let var_name = format!("{prefix}{name}");
        let var = vars.get(&var_name).with_context(|| format!("internal: the network has no variable {var_name}"))?;
        targets.push((name, var.shallow_clone()));
    }
    copy_named(&targets, &tensors, &format!("AlexNet weights {}", path.display()))?;
    Ok(targets.into_iter().map(|(n, _)| format!("{prefix}{n}")).collect())
}
