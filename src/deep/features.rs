//! `cmh features --backbone alexnet --weights W --data BUNDLE --out BUNDLE2`: writes the fc7
//! (4096-d, after its ReLU, eval mode) activations of a pretrained AlexNet as the image features
//! of a new bundle, so the shallow methods can run on image data. Everything else in the bundle
//! (text features, labels, class embeddings, split) is copied.

use super::alexnet::{preprocess, AlexNet};
use super::tensors::tensor_to_array;
use super::trainer::resolve_device;
use crate::bundle::{Bundle, BundleWriter, NewModality};
use crate::method::DeviceChoice;
use anyhow::{bail, Result};
use ndarray::Array2;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backbone {
    /// torchvision AlexNet; features = fc7 (4096-d).
    Alexnet,
}

#[derive(Clone, Debug)]
pub struct FeaturesArgs {
    /// Network that computes the image features.
    pub backbone: Backbone,
    /// torchvision weights: the official alexnet-owt-7be5be79.pth or a .safetensors file (see
    /// pretrained/README.md).
    pub weights: PathBuf,
    /// Input bundle (its image modality must hold raw images).
    pub data: PathBuf,
    /// Output bundle.
    pub out: PathBuf,
    /// Side length images are resized to before the network.
    pub size: usize,
    /// Images per forward pass.
    pub batch_size: usize,
    pub device: DeviceChoice,
    /// Keep the raw images in the new bundle too.
    pub keep_images: bool,
    /// Replace the output bundle if it exists.
    pub force: bool,
    /// Show a progress bar.
    pub progress: bool,
}

/// fc7 features of uint8 images N×H×W×3 with a loaded AlexNet.
pub fn alexnet_fc7(
    net: &AlexNet,
    images: ndarray::ArrayView4<u8>,
    size: usize,
    batch: usize,
    device: tch::Device,
    pb: Option<&indicatif::ProgressBar>,
) -> Result<Array2<f32>> {
    let n = images.shape()[0];
    let mut out = Array2::<f32>::zeros((n, super::alexnet::FC7_DIM as usize));
    tch::no_grad(|| -> Result<()> {
        for start in (0..n).step_by(batch.max(1)) {
            let end = (start + batch).min(n);
            let x = preprocess(images.slice(ndarray::s![start..end, .., .., ..]), Some(size), device)?;
            out.slice_mut(ndarray::s![start..end, ..]).assign(&tensor_to_array(&net.fc7(&x, false))?);
            if let Some(pb) = pb {
                pb.inc((end - start) as u64);
            }
        }
        Ok(())
    })?;
    Ok(out)
}

pub fn run_features(args: &FeaturesArgs) -> Result<()> {
    if args.size < 63 {
        bail!("--size: AlexNet needs images of at least 63×63 pixels, found {}", args.size);
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.out.exists() && !args.force {
        bail!("{} already exists; pass --force to replace it", args.out.display());
    }
    crate::bundle::check_replaceable(&args.out)?;
    if same_path(&args.out, &args.data) {
        bail!("--out must differ from --data");
    }
    let device = resolve_device(args.device)?;
    let bundle = Bundle::load(&args.data)?;
    let with_images: Vec<usize> = bundle.modalities.iter().enumerate().filter(|(_, m)| m.images.is_some()).map(|(i, _)| i).collect();
    if with_images.is_empty() {
        bail!("{}: no modality holds raw images, so there is nothing to extract features from", args.data.display());
    }
    let vs = tch::nn::VarStore::new(device);
    let net = match args.backbone {
        Backbone::Alexnet => AlexNet::new(&vs.root(), 1000),
    };
    super::pretrained::load_alexnet(&vs, "", &args.weights, &[])?;
    let pb = args.progress.then(|| indicatif::ProgressBar::new((with_images.len() * bundle.n_items()) as u64));
    let mut modalities = Vec::new();
    for (m, md) in bundle.modalities.iter().enumerate() {
        let spec = &bundle.manifest.modalities[m];
        let mut nm =
            NewModality { name: md.name.clone(), features: md.features.clone(), description: spec.description.clone(), images: None };
        if let Some(im) = &md.images {
            nm.features = Some(alexnet_fc7(&net, im.view(), args.size, args.batch_size, device, pb.as_ref())?);
            nm.description = Some(format!(
                "AlexNet fc7 (4096-d, after ReLU) of the images resized to {0}×{0}, weights {1}",
                args.size,
                file_name(&args.weights)
            ));
            if args.keep_images {
                nm.images = Some(im.clone());
            }
        }
        modalities.push(nm);
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let labels = if bundle.has_modality_labels() { bundle.labels.clone() } else { vec![bundle.labels[0].clone()] };
    let class_embeddings = match (&bundle.class_embeddings, &bundle.manifest.class_embeddings) {
        (Some(e), Some(spec)) => Some((e.clone(), spec.source.clone())),
        _ => None,
    };
    let w = BundleWriter {
        name: format!("{}-alexnet-fc7", bundle.manifest.name),
        source: format!("{}; image features: AlexNet fc7 by `cmh features`", bundle.manifest.source),
        classes: bundle.manifest.classes.clone(),
        modalities,
        labels,
        unlabelled: Some(bundle.unlabelled.clone()),
        class_embeddings,
        split: bundle.split.clone(),
    };
    w.write(&args.out, args.force)?;
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default()
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::FixedSplit;
    use crate::deep::tensors::write_safetensors;
    use rand::{Rng, SeedableRng};

    #[test]
    fn writes_fc7_features_into_a_new_bundle() {
        let _lock = crate::deep::test_support::torch_rng_lock(); // builds layers: libtorch's generator
        let d = crate::deep::test_support::big_tempdir();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let n = 4;
        let images = ndarray::Array4::from_shape_simple_fn((n, 40, 48, 3), || rng.gen::<u8>());
        let text = Array2::from_shape_simple_fn((n, 3), || rng.gen::<f32>());
        let w = BundleWriter {
            name: "tiny".into(),
            source: "test".into(),
            classes: vec!["a".into(), "b".into()],
            modalities: vec![
                NewModality { name: "image".into(), images: Some(images.clone()), ..Default::default() },
                NewModality { name: "text".into(), features: Some(text.clone()), ..Default::default() },
            ],
            labels: vec![crate::bundle::one_hot(&[0, 1, 0, 1], 2)],
            split: Some(FixedSplit { train: vec![0, 1], query: vec![2, 3], database: vec![0, 1] }),
            ..Default::default()
        };
        let src = d.path().join("src");
        w.write(&src, false).unwrap();
        let weights = d.path().join("alexnet.safetensors");
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let net = AlexNet::new(&vs.root(), 1000);
        crate::deep::trainer::init_default(&vs, 3, &[]).unwrap();
        write_safetensors(&weights, &vs.variables().into_iter().collect::<Vec<_>>(), Default::default()).unwrap();
        let out = d.path().join("out");
        let args = FeaturesArgs {
            backbone: Backbone::Alexnet,
            weights: weights.clone(),
            data: src.clone(),
            out: out.clone(),
            size: 64,
            batch_size: 3,
            device: DeviceChoice::Cpu,
            keep_images: false,
            force: false,
            progress: false,
        };
        run_features(&args).unwrap();
        let b = Bundle::load(&out).unwrap();
        let fc7 = b.modalities[0].features.as_ref().unwrap();
        let want = alexnet_fc7(&net, images.view(), 64, n, tch::Device::Cpu, None).unwrap();
        assert_eq!(fc7.dim(), (n, 4096));
        assert!(fc7.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0)), "batching does not change fc7");
        assert!(fc7.iter().all(|&v| v >= 0.0) && fc7.iter().any(|&v| v > 0.0), "fc7 is taken after its ReLU");
        assert!(b.modalities[0].images.is_none());
        assert_eq!(b.modalities[1].features.as_ref().unwrap(), &text);
        assert_eq!(b.split.as_ref().unwrap().query, vec![2, 3]);
        assert_eq!(b.labels[0], crate::bundle::one_hot(&[0, 1, 0, 1], 2));
        // Refusals: existing output, a bundle without images, a tiny size, weights of another net.
        let e = format!("{:#}", run_features(&args).unwrap_err());
        assert!(e.contains("already exists"), "{e}");
        let e = format!("{:#}", run_features(&FeaturesArgs { data: out.clone(), out: d.path().join("o2"), ..args.clone() }).unwrap_err());
        assert!(e.contains("no modality holds raw images"), "{e}");
        let e = format!("{:#}", run_features(&FeaturesArgs { size: 32, out: d.path().join("o3"), ..args.clone() }).unwrap_err());
        assert!(e.contains("at least 63"), "{e}");
        let small = d.path().join("small.safetensors");
        write_safetensors(
            &small,
            &[("features.0.weight".to_string(), tch::Tensor::zeros([2, 2], (tch::Kind::Float, tch::Device::Cpu)))],
            Default::default(),
        )
        .unwrap();
        let e = format!("{:#}", run_features(&FeaturesArgs { weights: small, out: d.path().join("o4"), ..args.clone() }).unwrap_err());
        assert!(
            e.contains("features.0.weight is [2, 2], expected [64, 3, 11, 11]") && e.contains("missing tensors: features.0.bias"),
            "{e}"
        );
        assert!(!d.path().join("o4").exists());
    }
}
