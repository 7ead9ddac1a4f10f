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

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backbone {
    /// torchvision AlexNet; features = fc7 (4096-d).
    Alexnet,
}

#[derive(clap::Args, Clone, Debug)]
pub struct FeaturesArgs {
    /// Network that computes the image features.
    #[arg(long, value_enum, default_value = "alexnet")]
    pub backbone: Backbone,
    /// torchvision weights: the official alexnet-owt-7be5be79.pth or a .safetensors file (see
    /// pretrained/README.md).
    #[arg(long)]
    pub weights: PathBuf,
    /// Input bundle (its image modality must hold raw images).
    #[arg(long)]
    pub data: PathBuf,
    /// Output bundle.
    #[arg(long)]
    pub out: PathBuf,
    /// Side length images are resized to before the network.
    #[arg(long, default_value_t = 224)]
    pub size: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// Keep the raw images in the new bundle too.
    #[arg(long)]
    pub keep_images: bool,
    /// Replace the output bundle if it exists.
    #[arg(long)]
    pub force: bool,
    /// Show a progress bar.
    #[arg(long)]
    pub progress: bool,
}

/// fc7 features of uint8 images N×H×W×3 with a loaded AlexNet.
pub fn alexnet_fc7(net: &AlexNet, images: ndarray::ArrayView4<u8>, size: usize, batch: usize, device: tch::Device, pb: Option<&indicatif::ProgressBar>) -> Result<Array2<f32>> {
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
        let mut nm = NewModality { name: md.name.clone(), features: md.features.clone(), description: spec.description.clone(), images: None };
        if let Some(im) = &md.images {
            nm.features = Some(alexnet_fc7(&net, im.view(), args.size, args.batch_size, device, pb.as_ref())?);
            nm.description = Some(format!("AlexNet fc7 (4096-d, after ReLU) of the images resized to {0}×{0}, weights {1}", args.size, file_name(&args.weights)));
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
