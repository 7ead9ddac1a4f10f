//! The SDCH networks: the image network (AlexNet or a feature MLP), the text MLP and the shared
//! hash layer `fc4`, built on one `nn::Path`, with their forward passes and the inputs they read.

use super::*;

/// What the image network reads.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ImageInput {
    /// Precomputed feature vectors of this dimension (feature mode: an MLP).
    Features { dim: usize },
    /// uint8 RGB images resized to `size`×`size` (AlexNet).
    Images { size: usize },
}

/// Everything that fixes the networks' shapes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SdchArch {
    pub image: ImageInput,
    pub text_dim: usize,
    pub hidden: Vec<usize>,
    pub feature_dim: usize,
    pub bits: usize,
    pub dropout: f64,
}

impl SdchArch {
    /// Weights and biases of the networks (AlexNet without its last layer: 57,003,840).
    pub(crate) fn parameter_count(&self) -> f64 {
        let mlp = |input: usize| -> f64 {
            let widths: Vec<f64> =
                std::iter::once(input).chain(self.hidden.iter().copied()).chain([self.feature_dim]).map(|w| w as f64).collect();
            widths.windows(2).map(|w| (w[0] + 1.0) * w[1]).sum()
        };
        let image = match self.image {
            ImageInput::Features { dim } => mlp(dim),
            ImageInput::Images { .. } => 57_003_840.0 + 4097.0 * self.feature_dim as f64,
        };
        image + mlp(self.text_dim) + (self.feature_dim as f64 + 1.0) * self.bits as f64
    }

    /// Refuses shapes no network can have (a width of 0, images smaller than AlexNet reads, a
    /// dropout outside [0, 1)), naming the field.
    pub fn check(&self) -> Result<()> {
        let widths = [("text_dim", self.text_dim), ("feature_dim", self.feature_dim), ("bits", self.bits)];
        if let Some((name, _)) = widths.iter().find(|(_, w)| *w == 0) {
            bail!("arch.{name} is 0; it must be at least 1");
        }
        if let Some(i) = self.hidden.iter().position(|&w| w == 0) {
            bail!("arch.hidden[{i}] is 0; layer widths must be at least 1");
        }
        match self.image {
            ImageInput::Features { dim: 0 } => bail!("arch.image.dim is 0; it must be at least 1"),
            ImageInput::Images { size } if !(63..=4096).contains(&size) => {
                bail!("arch.image.size is {size}; AlexNet reads images of 63 to 4096 pixels")
            }
            _ => {}
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("arch.dropout is {}; it must be in [0, 1)", self.dropout);
        }
        if self.bits > crate::method::MAX_BITS {
            bail!("arch.bits is {}; at most {} are supported", self.bits, crate::method::MAX_BITS);
        }
        Ok(())
    }
}

pub(super) enum ImageNet {
    Mlp(Mlp),
    AlexNet(Box<AlexNet>),
}

/// SDCH's networks in one variable store (names: `img-fc*` or `img.features.*`/`img.classifier.*`,
/// `txt-fc*`, `fc4`, and the input statistics `img-input.*`, `txt-input.*`).
pub struct SdchNet {
    pub vs: nn::VarStore,
    pub arch: SdchArch,
    pub(super) img: ImageNet,
    pub(super) txt: Mlp,
    pub(super) fc4: nn::Linear,
    pub(super) img_mean: Tensor,
    pub(super) img_std: Tensor,
    pub(super) txt_mean: Tensor,
    pub(super) txt_std: Tensor,
}

impl SdchNet {
    pub fn new(arch: &SdchArch, device: Device) -> SdchNet {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let hidden: Vec<i64> = arch.hidden.iter().map(|&h| h as i64).collect();
        let k = arch.feature_dim as i64;
        let (img, img_dim) = match arch.image {
            ImageInput::Features { dim } => (ImageNet::Mlp(Mlp::new(&root, "img", dim as i64, &hidden, k, arch.dropout)), dim as i64),
            ImageInput::Images { .. } => (ImageNet::AlexNet(Box::new(AlexNet::new(&(&root / "img"), k))), 1),
        };
        let txt = Mlp::new(&root, "txt", arch.text_dim as i64, &hidden, k, arch.dropout);
        let fc4 = nn::linear(&root / "fc4", k, arch.bits as i64, Default::default());
        let (img_stats, txt_stats) = (&root / "img-input", &root / "txt-input");
        let img_mean = img_stats.zeros_no_train("mean", &[img_dim]);
        let img_std = img_stats.ones_no_train("std", &[img_dim]);
        let txt_mean = txt_stats.zeros_no_train("mean", &[arch.text_dim as i64]);
        let txt_std = txt_stats.ones_no_train("std", &[arch.text_dim as i64]);
        SdchNet { vs, arch: arch.clone(), img, txt, fc4, img_mean, img_std, txt_mean, txt_std }
    }

    /// f_x: the image network's k-d features of a batch (raw features, or preprocessed images).
    pub fn image_features(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.img {
            ImageNet::Mlp(m) => m.forward_t(&((x - &self.img_mean) / &self.img_std), train),
            ImageNet::AlexNet(a) => a.forward_t(x, train),
        }
    }

    /// f_y: the text network's k-d features of a batch of bag-of-words vectors.
    pub fn text_features(&self, y: &Tensor, train: bool) -> Tensor {
        self.txt.forward_t(&((y - &self.txt_mean) / &self.txt_std), train)
    }

    /// Z = fc4(f), one row per item.
    pub fn hash(&self, f: &Tensor) -> Tensor {
        f.apply(&self.fc4)
    }

    /// Sets the input standardisation from the training features (std 0 → 1): column means and
    /// standard deviations accumulated in f64 over blocks of rows (two passes), so a memory-mapped
    /// view gives the same statistics as the same rows in memory.
    pub(super) fn set_input_stats(&self, modality: usize, view: &View) -> Result<()> {
        let n = view.len();
        let blocks = || (0..n).step_by(STATS_BLOCK).map(move |s| (s..(s + STATS_BLOCK).min(n)).collect::<Vec<usize>>());
        let d = view.feature_rows(METHOD, modality, &[])?.ncols();
        let mut sum = Array1::<f64>::zeros(d);
        for idx in blocks() {
            sum += &view.feature_rows(METHOD, modality, &idx)?.mapv(f64::from).sum_axis(Axis(0));
        }
        let mean = sum / n.max(1) as f64;
        let mut sq = Array1::<f64>::zeros(d);
        for idx in blocks() {
            let xc = view.feature_rows(METHOD, modality, &idx)?.mapv(f64::from) - &mean;
            sq += &(&xc * &xc).sum_axis(Axis(0));
        }
        let std = (sq / n.max(1) as f64).mapv(|v| {
            let s = v.sqrt() as f32;
            if s > 1e-12 {
                s
            } else {
                1.0
            }
        });
        let mean = mean.mapv(|v| v as f32);
        let (m, s) = if modality == IMAGE { (&self.img_mean, &self.img_std) } else { (&self.txt_mean, &self.txt_std) };
        tch::no_grad(|| {
            m.shallow_clone().copy_(&Tensor::from_slice(mean.as_slice().unwrap()));
            s.shallow_clone().copy_(&Tensor::from_slice(std.as_slice().unwrap()));
        });
        Ok(())
    }

    /// fc4 outputs (n × r) of every item of a view, in eval mode, `chunk` items at a time.
    pub(crate) fn hash_outputs(&self, modality: usize, view: &View, chunk: usize) -> Result<Array2<f32>> {
        let input = Input::new(modality, view, &self.arch, self.vs.device())?;
        let n = view.len();
        let mut out = Array2::<f32>::zeros((n, self.arch.bits));
        tch::no_grad(|| -> Result<()> {
            for start in (0..n).step_by(chunk.max(1)) {
                let idx: Vec<usize> = (start..(start + chunk).min(n)).collect();
                let x = input.batch(&idx, self.vs.device())?;
                let f = if modality == IMAGE { self.image_features(&x, false) } else { self.text_features(&x, false) };
                let z = tensor_to_array(&self.hash(&f))?;
                out.slice_mut(ndarray::s![start..start + idx.len(), ..]).assign(&z);
            }
            Ok(())
        })?;
        Ok(out)
    }
}

/// Rows per block of the input statistics.
pub(super) const STATS_BLOCK: usize = 4096;

/// A modality's training or encoding input: each mini-batch's rows are copied into a tensor on
/// the device when the batch is built (features from memory or from a memory-mapped file; images
/// also resized and normalised), so the data are never copied into tensors as a whole.
pub(super) enum Input<'a> {
    Features(ArrayView2<'a, f32>),
    Images(ArrayView4<'a, u8>, usize),
    MappedFeatures(&'a MappedRows),
    MappedImages(&'a MappedRows, usize),
}

impl<'a> Input<'a> {
    pub(super) fn new(modality: usize, view: &'a View, arch: &SdchArch, device: Device) -> Result<Self> {
        let name = match modality {
            IMAGE => "image",
            TEXT => "text",
            _ => bail!("sdch: modality {modality} does not exist (0 = image, 1 = text)"),
        };
        let _ = device;
        let images = match view {
            View::Images(_) => true,
            View::Mapped(m) => m.is_images(),
            View::Features(_) => false,
        };
        if images {
            let size = match (modality, &arch.image) {
                (IMAGE, ImageInput::Images { size }) => *size,
                _ => bail!("sdch: the {name} input holds raw images, but the model's {name} network reads feature vectors"),
            };
            return Ok(match view {
                View::Mapped(m) => Input::MappedImages(m, size),
                View::Images(im) => Input::Images(im.view(), size),
                View::Features(_) => unreachable!("features are not images"),
            });
        }
        let want = match (modality, &arch.image) {
            (IMAGE, ImageInput::Features { dim }) => *dim,
            (IMAGE, ImageInput::Images { .. }) => {
                bail!("sdch: the image input holds feature vectors, but the model's image network is AlexNet, which reads images")
            }
            _ => arch.text_dim,
        };
        let (input, dim) = match view {
            View::Features(x) => (Input::Features(x.view()), x.ncols()),
            View::Mapped(m) => (Input::MappedFeatures(m), m.array().row_len()),
            View::Images(_) => unreachable!("images handled above"),
        };
        if dim != want {
            bail!("sdch: the {name} input has {dim}-d features, the model expects {want}-d");
        }
        Ok(input)
    }

    /// Rows `idx` on `device`: features as they are, images preprocessed (resized, normalised).
    pub(super) fn batch(&self, idx: &[usize], device: Device) -> Result<Tensor> {
        match self {
            Input::Features(x) => Ok(array_to_tensor(x.select(Axis(0), idx).view(), device)),
            Input::Images(im, size) => preprocess(im.select(Axis(0), idx).view(), Some(*size), device),
            Input::MappedFeatures(m) => Ok(array_to_tensor(m.features(idx)?.view(), device)),
            Input::MappedImages(m, size) => preprocess(m.images(idx)?.view(), Some(*size), device),
        }
    }
}
