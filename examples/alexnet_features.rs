//! Load a torchvision AlexNet checkpoint and extract fc7 features (4096-d) from images.
//!
//! ```sh
//! cargo run --release --example alexnet_features -- pretrained/alexnet-owt-7be5be79.pth images.npy fc7.npy
//! ```
//!
//! The weights are torchvision's ImageNet AlexNet (`alexnet-owt-7be5be79.pth`, see
//! `pretrained/README.md`; no weights come with cmh) or a `.safetensors` conversion of it. The
//! images are a uint8 `.npy` array N×H×W×3 (RGB), e.g. a bundle's `image_images.npy`.

use anyhow::{bail, Result};
use cmh::deep::alexnet::AlexNet;
use cmh::deep::features::alexnet_fc7;
use cmh::deep::pretrained::load_alexnet;
use cmh::npy::{read_npy, write_npy, NpyData};
use std::path::Path;
use tch::nn::ModuleT;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [weights, images, out] = &args[..] else {
        bail!("usage: alexnet_features WEIGHTS.pth IMAGES.npy OUT.npy");
    };
    let device = tch::Device::cuda_if_available();

    // The network has torchvision's layer names, so the checkpoint loads by name (checked
    // against the SHA-256 prefix in the file name; every tensor's shape is checked).
    let vs = tch::nn::VarStore::new(device);
    let net = AlexNet::new(&vs.root(), 1000);
    load_alexnet(&vs, "", Path::new(weights), &[])?;

    let images = match read_npy(Path::new(images))? {
        NpyData::U8(a) => a.into_dimensionality::<ndarray::Ix4>()?,
        other => bail!("{images}: expected uint8 images N×H×W×3, found dtype {}", other.dtype_name()),
    };
    // Resized to 224×224 and ImageNet-normalised, 32 images per forward pass, eval mode.
    let fc7 = alexnet_fc7(&net, images.view(), 224, 32, device, None)?;
    write_npy(Path::new(out), &fc7)?;
    println!("wrote {out}: {} × {} fc7 features", fc7.nrows(), fc7.ncols());

    // The ImageNet classifier is there too: the top class of the first image.
    let x = cmh::deep::alexnet::preprocess(images.slice(ndarray::s![..1, .., .., ..]), Some(224), device)?;
    let top = tch::no_grad(|| net.forward_t(&x, false).argmax(-1, false).int64_value(&[0]));
    println!("first image: ImageNet class {top}");
    Ok(())
}
