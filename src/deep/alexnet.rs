//! AlexNet with exactly torchvision's layer layout and parameter names (`features.{0,3,6,8,10}`,
//! `classifier.{1,4,6}`), so torchvision checkpoints load by name, and an adaptive average pool
//! to 6×6, so inputs smaller than 224×224 (e.g. 64×64) work too.
//!
//! `classifier.6` has `out_dim` outputs: 1000 for the ImageNet classifier, k for a deep hashing
//! method's feature layer. [`preprocess`] turns the bundle's uint8 images into the normalised
//! input.

use anyhow::{bail, Result};
use ndarray::ArrayView4;
use tch::{nn, Device, Kind, Tensor};

/// ImageNet channel means and standard deviations (torchvision's `weights.transforms()`).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// Width of fc7 (the output of `classifier.4` after its ReLU).
pub const FC7_DIM: i64 = 4096;

#[derive(Debug)]
pub struct AlexNet {
    conv0: nn::Conv2D,
    conv3: nn::Conv2D,
    conv6: nn::Conv2D,
    conv8: nn::Conv2D,
    conv10: nn::Conv2D,
    fc1: nn::Linear,
    fc4: nn::Linear,
    fc6: nn::Linear,
}

fn conv(p: &nn::Path, name: &str, i: i64, o: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    nn::conv2d(p / name, i, o, k, nn::ConvConfig { stride, padding, ..Default::default() })
}

impl AlexNet {
    pub fn new(p: &nn::Path, out_dim: i64) -> AlexNet {
        let f = p / "features";
        let c = p / "classifier";
        AlexNet {
            conv0: conv(&f, "0", 3, 64, 11, 4, 2),
            conv3: conv(&f, "3", 64, 192, 5, 1, 2),
            conv6: conv(&f, "6", 192, 384, 3, 1, 1),
            conv8: conv(&f, "8", 384, 256, 3, 1, 1),
            conv10: conv(&f, "10", 256, 256, 3, 1, 1),
            fc1: nn::linear(&c / "1", 256 * 6 * 6, 4096, Default::default()),
            fc4: nn::linear(&c / "4", 4096, FC7_DIM, Default::default()),
            fc6: nn::linear(&c / "6", FC7_DIM, out_dim, Default::default()),
        }
    }

    /// fc7 activations (N × 4096) of normalised N×3×H×W input; dropout only when `train`.
    pub fn fc7(&self, xs: &Tensor, train: bool) -> Tensor {
        let pool = |x: Tensor| x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        let x = pool(xs.apply(&self.conv0).relu());
        let x = pool(x.apply(&self.conv3).relu());
        let x = x.apply(&self.conv6).relu();
        let x = x.apply(&self.conv8).relu();
        let x = pool(x.apply(&self.conv10).relu());
        let x = x.adaptive_avg_pool2d([6, 6]).flatten(1, -1);
        let x = x.dropout(0.5, train).apply(&self.fc1).relu();
        x.dropout(0.5, train).apply(&self.fc4).relu()
    }
}

impl nn::ModuleT for AlexNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.fc7(xs, train).apply(&self.fc6)
    }
}

/// uint8 images N×H×W×3 → normalised float N×3×S×S on `device`: scaled to [0, 1], resized to
/// `size` (bilinear with antialiasing, as torchvision's `Resize`; no crop) when given and
/// different, then normalised with the ImageNet mean and standard deviation.
pub fn preprocess(images: ArrayView4<u8>, size: Option<usize>, device: Device) -> Result<Tensor> {
    let s = images.shape();
    if s[3] != 3 {
        bail!("images must be N×H×W×3 (RGB), found shape {s:?}");
    }
    if s[1] == 0 || s[2] == 0 {
        bail!("images must have a non-zero height and width, found shape {s:?}");
    }
    let images = images.as_standard_layout();
    let x = Tensor::from_slice(images.as_slice().expect("standard layout"))
        .view([s[0] as i64, s[1] as i64, s[2] as i64, 3])
        .to_device(device)
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        / 255.0;
    let x = match size {
        Some(0) => bail!("image size must be at least 1"),
        Some(sz) if (sz, sz) != (s[1], s[2]) => x.internal_upsample_bilinear2d_aa([sz as i64, sz as i64], false, None, None),
        _ => x,
    };
    let mean = Tensor::from_slice(&IMAGENET_MEAN).to_kind(Kind::Float).view([1, 3, 1, 1]).to_device(device);
    let std = Tensor::from_slice(&IMAGENET_STD).to_kind(Kind::Float).view([1, 3, 1, 1]).to_device(device);
    Ok((x - mean) / std)
}

/// Variable names torchvision's AlexNet state dict has (the order of `model.state_dict()`).
pub(crate) fn torchvision_names() -> Vec<String> {
    let mut v = Vec::new();
    for l in ["features.0", "features.3", "features.6", "features.8", "features.10", "classifier.1", "classifier.4", "classifier.6"] {
        v.push(format!("{l}.weight"));
        v.push(format!("{l}.bias"));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use nn::ModuleT;

    #[test]
    fn names_and_shapes_match_torchvision() {
        let _lock = crate::deep::test_support::torch_rng_lock(); // builds layers: libtorch's generator
        let vs = nn::VarStore::new(Device::Cpu);
        let net = AlexNet::new(&vs.root(), 1000);
        let vars = vs.variables();
        let mut names: Vec<_> = vars.keys().cloned().collect();
        names.sort();
        let mut expected = torchvision_names();
        expected.sort();
        assert_eq!(names, expected);
        // Shapes of torchvision.models.alexnet() (printed by torchvision 0.28).
        assert_eq!(vars["features.0.weight"].size(), [64, 3, 11, 11]);
        assert_eq!(vars["features.3.weight"].size(), [192, 64, 5, 5]);
        assert_eq!(vars["features.10.weight"].size(), [256, 256, 3, 3]);
        assert_eq!(vars["classifier.1.weight"].size(), [4096, 9216]);
        assert_eq!(vars["classifier.6.weight"].size(), [1000, 4096]);
        // 61,100,840 parameters, as torchvision reports for AlexNet.
        let n: i64 = vars.values().map(|t| t.numel() as i64).sum();
        assert_eq!(n, 61_100_840);
        // 64×64 inputs work thanks to the adaptive pool.
        let x = Tensor::zeros([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        assert_eq!(net.forward_t(&x, false).size(), [2, 1000]);
        assert_eq!(net.fc7(&x, false).size(), [2, 4096]);
    }

    #[test]
    fn preprocess_normalises_and_resizes() {
        let mut img = ndarray::Array4::<u8>::zeros((1, 2, 2, 3));
        img[[0, 0, 0, 0]] = 255;
        img[[0, 1, 1, 2]] = 51;
        let x = preprocess(img.view(), None, Device::Cpu).unwrap();
        assert_eq!(x.size(), [1, 3, 2, 2]);
        let v = |c: i64, h: i64, w: i64| x.double_value(&[0, c, h, w]);
        assert!((v(0, 0, 0) - (1.0 - 0.485) / 0.229).abs() < 1e-5);
        assert!((v(2, 1, 1) - (0.2 - 0.406) / 0.225).abs() < 1e-5);
        assert!((v(1, 0, 1) - (0.0 - 0.456) / 0.224).abs() < 1e-5);
        // A constant image stays constant when resized.
        let flat = ndarray::Array4::<u8>::from_elem((2, 5, 7, 3), 128);
        let y = preprocess(flat.view(), Some(9), Device::Cpu).unwrap();
        assert_eq!(y.size(), [2, 3, 9, 9]);
        let r = y.select(1, 0);
        let want = (128.0 / 255.0 - 0.485) / 0.229;
        assert!((r.max().double_value(&[]) - want).abs() < 1e-5 && (r.min().double_value(&[]) - want).abs() < 1e-5);
        assert!(preprocess(ndarray::Array4::<u8>::zeros((1, 2, 2, 4)).view(), None, Device::Cpu).is_err());
    }
}
