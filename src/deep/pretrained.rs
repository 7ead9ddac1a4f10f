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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deep::alexnet::{preprocess, AlexNet};
    use crate::deep::tensors::tensor_to_array;
    use crate::deep::test_support::{big_tempdir, python_with, run_script};
    use crate::npy::{read_features, read_npy, NpyData};
    use tch::nn::ModuleT;
    use tch::Device;

    fn max_rel_diff(a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>) -> f32 {
        assert_eq!(a.dim(), b.dim());
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// cmh's AlexNet equals torchvision's on a checkpoint torchvision writes (zip and legacy
    /// formats, and after conversion to safetensors), and bad checkpoints are refused by name.
    #[test]
    fn matches_torchvision_and_refuses_bad_checkpoints() {
        let _lock = crate::deep::test_support::torch_rng_lock(); // builds layers: libtorch's generator
        let Some(py) = python_with(&["torch", "torchvision", "numpy"]) else { return };
        let d = big_tempdir();
        let dir = d.path();
        run_script(&py, "alexnet_reference.py", &[dir.to_str().unwrap(), "--num-classes", "10", "--size", "64"]);
        let images = match read_npy(&dir.join("input.npy")).unwrap() {
            NpyData::U8(a) => a.into_dimensionality::<ndarray::Ix4>().unwrap(),
            _ => panic!("input.npy is uint8"),
        };
        let logits_ref = read_features(&dir.join("logits.npy")).unwrap();
        let fc7_ref = read_features(&dir.join("fc7.npy")).unwrap();
        let converted = run_script(&py, "convert_torchvision.py", &[dir.join("alexnet.pth").to_str().unwrap()]);
        let converted = std::path::PathBuf::from(converted.trim());
        assert!(crate::deep::tensors::hash_prefix(&converted).is_some(), "the converted name carries a hash: {}", converted.display());

        for file in [dir.join("alexnet.pth"), dir.join("alexnet_legacy.pth"), converted.clone()] {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = AlexNet::new(&vs.root(), 10);
            let loaded = load_alexnet(&vs, "", &file, &[]).unwrap();
            assert_eq!(loaded.len(), 16);
            let x = preprocess(images.view(), Some(64), Device::Cpu).unwrap();
            let logits = tensor_to_array(&net.forward_t(&x, false)).unwrap();
            let fc7 = tensor_to_array(&net.fc7(&x, false)).unwrap();
            let (dl, df) = (max_rel_diff(&logits, &logits_ref), max_rel_diff(&fc7, &fc7_ref));
            assert!(dl <= 1e-5 && df <= 1e-5, "{}: logits differ by {dl}, fc7 by {df}", file.display());
        }

        let vs = nn::VarStore::new(Device::Cpu);
        let _net = AlexNet::new(&vs.root(), 10);
        let e = format!("{:#}", load_alexnet(&vs, "", &dir.join("missing.pth"), &[]).unwrap_err());
        assert!(e.contains("missing.pth") && e.contains("missing tensors: features.3.weight") && !e.contains("mis-shaped"), "{e}");
        let e = format!("{:#}", load_alexnet(&vs, "", &dir.join("misshaped.pth"), &[]).unwrap_err());
        assert!(
            e.contains("mis-shaped tensors: classifier.4.weight is [4096, 4000], expected [4096, 4096]") && !e.contains("missing tensors"),
            "{e}"
        );
        // A file whose name carries a hash prefix that does not match is refused.
        let renamed = dir.join("alexnet-owt-00000000.safetensors");
        std::fs::copy(&converted, &renamed).unwrap();
        let e = format!("{:#}", load_alexnet(&vs, "", &renamed, &[]).unwrap_err());
        assert!(e.contains("SHA-256") && e.contains("00000000"), "{e}");
        // A truncated .pth is refused with its name.
        let bytes = std::fs::read(dir.join("alexnet.pth")).unwrap();
        let cut = dir.join("cut.pth");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = format!("{:#}", load_alexnet(&vs, "", &cut, &[]).unwrap_err());
        assert!(e.contains("cut.pth"), "{e}");
        // Skipping the replaced last layer (SDCH's k-d layer) loads the rest.
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = AlexNet::new(&(&vs.root() / "img"), 256);
        let loaded = load_alexnet(&vs, "img.", &dir.join("alexnet.pth"), &["classifier.6.weight", "classifier.6.bias"]).unwrap();
        assert_eq!(loaded.len(), 14);
        assert!(loaded.contains(&"img.features.0.weight".to_string()));
    }
}
