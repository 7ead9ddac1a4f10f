//! Moving data between ndarray, tch and files: safetensors with metadata (checkpoints, weights),
//! `torch.save` files (through [`super::pth`]), and the SHA-256 prefix check of downloaded weights.

use crate::npy::write_atomic;
use anyhow::{anyhow, bail, Context, Result};
use ndarray::{Array2, ArrayView2};
use safetensors::tensor::{Dtype, SafeTensors, View as StView};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// An f32 matrix as a tensor on `device` (copied).
pub fn array_to_tensor(x: ArrayView2<f32>, device: Device) -> Tensor {
    let x = x.as_standard_layout();
    Tensor::from_slice(x.as_slice().expect("standard layout")).view([x.nrows() as i64, x.ncols() as i64]).to_device(device)
}

/// A 2-d tensor (any float kind, any device) as an f32 matrix.
pub fn tensor_to_array(t: &Tensor) -> Result<Array2<f32>> {
    let size = t.size();
    if size.len() != 2 {
        bail!("expected a 2-d tensor, found shape {size:?}");
    }
    let v: Vec<f32> = Vec::<f32>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view([-1]))?;
    Ok(Array2::from_shape_vec((size[0] as usize, size[1] as usize), v)?)
}

/// sgn with the codes' tie rule (x ≥ 0 → +1, x < 0 → −1) as a float tensor: the tch side of
/// [`crate::numerics::sign::sgn`].
pub fn sign_pm1(x: &Tensor) -> Tensor {
    x.ge(0.0).to_kind(Kind::Float) * 2.0 - 1.0
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        k => bail!("tensors of kind {k:?} cannot be stored"),
    })
}

fn kind_of(dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        d => bail!("safetensors dtype {d:?} is not supported"),
    })
}

struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl StView for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn to_bytes(t: &Tensor) -> Result<Bytes> {
    let t = t.to_device(Device::Cpu).contiguous();
    let numel = t.numel();
    let dtype = dtype_of(t.kind())?;
    let mut data = vec![0u8; numel * dtype.size()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(Bytes { dtype, shape: t.size().iter().map(|&s| s as usize).collect(), data })
}

/// Writes named tensors (from any device) and string metadata as one safetensors file, atomically
/// (temporary file + rename), so a crash never leaves a half-written file under `path`.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)], metadata: HashMap<String, String>) -> Result<()> {
    let bytes: Vec<(String, Bytes)> =
        tensors.iter().map(|(n, t)| Ok((n.clone(), to_bytes(t).with_context(|| format!("tensor {n}"))?))).collect::<Result<_>>()?;
    let meta = if metadata.is_empty() { None } else { Some(metadata) };
    let buf = safetensors::tensor::serialize(bytes.iter().map(|(n, b)| (n.as_str(), b)), &meta)
        .map_err(|e| anyhow!("{}: cannot serialise: {e:?}", path.display()))?;
    write_atomic(path, |w| Ok(w.write_all(&buf)?))
}

/// Tensors by name and string metadata.
pub type NamedTensorsWithMeta = (Vec<(String, Tensor)>, HashMap<String, String>);

/// Reads every tensor (CPU) and the metadata of a safetensors file. Truncated or corrupt files are
/// refused with the file name.
pub fn read_safetensors(path: &Path) -> Result<NamedTensorsWithMeta> {
    let buf = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let bad = |e: safetensors::SafeTensorError| anyhow!("{}: not a valid safetensors file (truncated or corrupt?): {e:?}", path.display());
    let (_, meta) = SafeTensors::read_metadata(&buf).map_err(bad)?;
    let st = SafeTensors::deserialize(&buf).map_err(bad)?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).with_context(|| format!("{}: tensor {name}", path.display()))?;
        let shape: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
        let numel: usize = view.shape().iter().product();
        if view.data().len() != numel * kind.elt_size_in_bytes() {
            bail!("{}: tensor {name}: data length does not match its shape", path.display());
        }
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)
            .map_err(|e| anyhow!("{}: tensor {name}: {}", path.display(), super::torch_message(&e)))?;
        if t.is_floating_point() && t.numel() > 0 && t.isfinite().all().int64_value(&[]) == 0 {
            let bad = t.isfinite().logical_not().sum(Kind::Int64).int64_value(&[]);
            bail!(
                "{}: tensor {name} holds {bad} NaN or infinite values (of {numel}); the weights are corrupt or the training diverged: \
                 train again (with lower learning rates if it diverged)",
                path.display()
            );
        }
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Reads a weights file by its extension: `.safetensors`, or a `torch.save` state dict (`.pth`,
/// `.pt`, `.bin`, `.tar`). Verifies the SHA-256 prefix first when the name carries one.
pub fn read_weights(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if path.is_dir() {
        bail!("{}: is a folder; expected a weights file (a torch.save .pth/.pt or a .safetensors file), e.g. alexnet-owt-7be5be79.pth (see pretrained/README.md)", path.display());
    }
    if !path.is_file() {
        bail!("{}: weights file not found; give the path of a .pth/.pt or .safetensors file (see pretrained/README.md)", path.display());
    }
    verify_hash_prefix(path)?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Ok(read_safetensors(path)?.0),
        Some("pth" | "pt" | "bin" | "tar") => super::pth::read_pth(path),
        _ => bail!("{}: unknown weights format; expected .safetensors or a torch.save .pth/.pt file", path.display()),
    }
}

/// The hash prefix a file name carries, torch.hub style: `alexnet-owt-7be5be79.pth` → `7be5be79`
/// (the last `-`-separated part of the stem, 8 to 64 lowercase hex digits).
pub(crate) fn hash_prefix(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    let (_, tail) = stem.rsplit_once('-')?;
    let ok = (8..=64).contains(&tail.len()) && tail.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
    ok.then(|| tail.to_string())
}

/// SHA-256 of a file, lowercase hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks the file's SHA-256 starts with the prefix its name carries (no-op when it has none).
pub(crate) fn verify_hash_prefix(path: &Path) -> Result<()> {
    if let Some(prefix) = hash_prefix(path) {
        let digest = sha256_file(path)?;
        if !digest.starts_with(&prefix) {
            bail!(
                "{}: SHA-256 is {digest}, but the file name says it starts with {prefix}: the download is corrupt or \
                 incomplete (or the file was renamed); download it again",
                path.display()
            );
        }
    }
    Ok(())
}

/// Copies `source` tensors into the variables `targets` (name → variable), all or nothing: every
/// missing or mis-shaped tensor is listed by name before anything is written.
pub(crate) fn copy_named(targets: &[(String, Tensor)], source: &HashMap<String, Tensor>, what: &str) -> Result<()> {
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    for (name, var) in targets {
        match source.get(name) {
            None => missing.push(name.clone()),
            Some(t) if t.size() != var.size() => misshaped.push(format!("{name} is {:?}, expected {:?}", t.size(), var.size())),
            Some(_) => {}
        }
    }
    if !missing.is_empty() || !misshaped.is_empty() {
        let mut msg = format!("{what}: does not fit this network");
        if !missing.is_empty() {
            msg += &format!("; missing tensors: {}", missing.join(", "));
        }
        if !misshaped.is_empty() {
            msg += &format!("; mis-shaped tensors: {}", misshaped.join("; "));
        }
        bail!(msg);
    }
    tch::no_grad(|| -> Result<()> {
        for (name, var) in targets {
            let src = &source[name];
            let mut v = var.shallow_clone();
            v.f_copy_(&src.to_kind(var.kind()).to_device(var.device())).with_context(|| format!("{what}: tensor {name}"))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_pm1_matches_the_ndarray_sign_and_round_trips() {
        let x = ndarray::array![[0.0f32, -0.0, -2.0, 1e-30], [-1e-30, 3.0, -0.5, 0.0]];
        let t = array_to_tensor(x.view(), Device::Cpu);
        let back = tensor_to_array(&t).unwrap();
        assert_eq!(back, x);
        let s = tensor_to_array(&sign_pm1(&t)).unwrap();
        let expect = crate::numerics::sign::sgn(x.mapv(f64::from).view()).mapv(|v| v as f32);
        assert_eq!(s, expect);
        assert_eq!(s, ndarray::array![[1.0f32, 1.0, -1.0, 1.0], [-1.0, 1.0, -1.0, 1.0]]);
    }
    use ndarray::array;

    #[test]
    fn safetensors_round_trip_with_metadata() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.safetensors");
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).view([2, 3]);
        let b = Tensor::from_slice(&[7i64, 8]);
        let meta = HashMap::from([("epoch".to_string(), "3".to_string())]);
        write_safetensors(&p, &[("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())], meta).unwrap();
        let (t, m) = read_safetensors(&p).unwrap();
        assert_eq!(m["epoch"], "3");
        assert_eq!(t[0].0, "a");
        assert_eq!(tensor_to_array(&t[0].1).unwrap(), array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]);
        assert_eq!(Vec::<i64>::try_from(&t[1].1).unwrap(), vec![7, 8]);
        // Truncation is refused with the file name.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
        let e = format!("{:#}", read_safetensors(&p).unwrap_err());
        assert!(e.contains("x.safetensors") && e.contains("not a valid safetensors"), "{e}");
    }

    #[test]
    fn hash_prefix_rules() {
        assert_eq!(hash_prefix(Path::new("/a/alexnet-owt-7be5be79.pth")).as_deref(), Some("7be5be79"));
        assert_eq!(hash_prefix(Path::new("alexnet-owt.pth")), None);
        assert_eq!(hash_prefix(Path::new("alexnet-7be5.pth")), None, "too short to be a hash");
        assert_eq!(hash_prefix(Path::new("alexnet-7BE5BE79.pth")), None, "hub hashes are lowercase");
        let d = tempfile::tempdir().unwrap();
        // FIPS 180-2 test vector: SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad.
        let body = b"abc";
        assert_eq!(
            &sha256_file(&{
                let p = d.path().join("abc");
                std::fs::write(&p, body).unwrap();
                p
            })
            .unwrap()[..16],
            "ba7816bf8f01cfea"
        );
        let good = d.path().join("w-ba7816bf8f01.pth");
        std::fs::write(&good, body).unwrap();
        verify_hash_prefix(&good).unwrap();
        let bad = d.path().join("w-00000000.pth");
        std::fs::write(&bad, body).unwrap();
        let e = format!("{:#}", verify_hash_prefix(&bad).unwrap_err());
        assert!(e.contains("w-00000000.pth") && e.contains("starts with 00000000"), "{e}");
    }

    #[test]
    fn copy_named_lists_every_problem() {
        let targets = vec![
            ("a".to_string(), Tensor::zeros([2, 2], (Kind::Float, Device::Cpu))),
            ("b".to_string(), Tensor::zeros([3], (Kind::Float, Device::Cpu))),
        ];
        let src = HashMap::from([("a".to_string(), Tensor::ones([2, 3], (Kind::Float, Device::Cpu)))]);
        let e = format!("{:#}", copy_named(&targets, &src, "ckpt").unwrap_err());
        assert!(e.contains("missing tensors: b") && e.contains("a is [2, 3], expected [2, 2]"), "{e}");
        let src = HashMap::from([
            ("a".to_string(), Tensor::ones([2, 2], (Kind::Double, Device::Cpu))),
            ("b".to_string(), Tensor::ones([3], (Kind::Float, Device::Cpu))),
        ]);
        copy_named(&targets, &src, "ckpt").unwrap();
        assert_eq!(targets[0].1.sum(Kind::Float).double_value(&[]), 4.0);
    }
}
