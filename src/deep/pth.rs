//! Reader for `torch.save` state dicts (`.pth` / `.pt`) without Python.
//!
//! libtorch's C++ API cannot read Python pickles of state dicts (tch's `loadz` goes through
//! `torch::jit::_load_parameters`, which expects a TorchScript archive), so this module reads the
//! two formats `torch.save` writes:
//! - the zip format (torch ≥ 1.6 default): `<name>/data.pkl` + one raw file per storage
//!   `<name>/data/<key>`, little-endian;
//! - the legacy format (`_use_new_zipfile_serialization=False`, older model-zoo files): a stream of
//!   pickles (magic number, protocol version, sys info, the object, the storage keys) followed by
//!   each storage as an 8-byte element count and its raw bytes.
//!
//! The pickle machine understands only what a state dict needs (dicts, tuples, strings, numbers,
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter`, typed
//! storages as persistent ids); anything else is refused with the opcode and its byte offset. No
//! Python object is ever constructed, so a malicious file cannot run code.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use tch::{Kind, Tensor};

#[derive(Clone, Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for i64 (the legacy magic number); kept as its bytes.
    BigInt(Vec<u8>),
    #[allow(dead_code)] // kept for error messages (Debug)
    Float(f64),
    Str(String),
    #[allow(dead_code)]
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage(StorageRef),
    Tensor(TensorRef),
}

#[derive(Clone, Debug)]
struct StorageRef {
    key: String,
    kind: Kind,
    numel: usize,
}

#[derive(Clone, Debug)]
struct TensorRef {
    storage: StorageRef,
    offset: usize,
    size: Vec<i64>,
    stride: Vec<i64>,
}

fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

fn as_int(v: &Value, what: &str) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(*b as i64),
        other => bail!("{what}: expected an integer, found {other:?}"),
    }
}

fn as_int_tuple(v: &Value, what: &str) -> Result<Vec<i64>> {
    match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(|x| as_int(x, what)).collect(),
        other => bail!("{what}: expected a tuple of integers, found {other:?}"),
    }
}

/// A minimal pickle virtual machine over `data`; returns the unpickled value and where it stopped.
fn unpickle(data: &[u8]) -> Result<(Value, usize)> {
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8]> {
        if *pos + n > data.len() {
            bail!("pickle truncated at byte {}", *pos);
        }
        let s = &data[*pos..*pos + n];
        *pos += n;
        Ok(s)
    };
    let pop =
        |stack: &mut Vec<Value>, at: usize| -> Result<Value> { stack.pop().ok_or_else(|| anyhow!("pickle stack underflow at byte {at}")) };
    let pop_mark = |stack: &mut Vec<Value>, marks: &mut Vec<usize>, at: usize| -> Result<Vec<Value>> {
        let m = marks.pop().ok_or_else(|| anyhow!("pickle: no MARK before byte {at}"))?;
        if m > stack.len() {
            bail!("pickle: corrupt MARK at byte {at}");
        }
        Ok(stack.split_off(m))
    };
    loop {
        let at = pos;
        let op = take(&mut pos, 1)?[0];
        match op {
            0x80 => {
                take(&mut pos, 1)?; // PROTO
            }
            0x95 => {
                take(&mut pos, 8)?; // FRAME
            }
            b'.' => {
                let v = pop(&mut stack, at)?;
                return Ok((v, pos));
            }
            b'(' => marks.push(stack.len()),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => {
                let b = take(&mut pos, 4)?;
                stack.push(Value::Int(i32::from_le_bytes(b.try_into().unwrap()) as i64));
            }
            b'K' => {
                let b = take(&mut pos, 1)?[0];
                stack.push(Value::Int(b as i64));
            }
            b'M' => {
                let b = take(&mut pos, 2)?;
                stack.push(Value::Int(u16::from_le_bytes(b.try_into().unwrap()) as i64));
            }
            0x8a => {
                // LONG1: little-endian two's complement of n bytes.
                let n = take(&mut pos, 1)?[0] as usize;
                let b = take(&mut pos, n)?.to_vec();
                if n <= 8 {
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    stack.push(Value::Int(v));
                } else {
                    stack.push(Value::BigInt(b));
                }
            }
            b'G' => {
                let b = take(&mut pos, 8)?;
                stack.push(Value::Float(f64::from_be_bytes(b.try_into().unwrap())));
            }
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => u32::from_le_bytes(take(&mut pos, 4)?.try_into().unwrap()) as usize,
                    0x8c => take(&mut pos, 1)?[0] as usize,
                    _ => u64::from_le_bytes(take(&mut pos, 8)?.try_into().unwrap()) as usize,
                };
                let s = std::str::from_utf8(take(&mut pos, n)?).map_err(|_| anyhow!("pickle: invalid UTF-8 string at byte {at}"))?;
                stack.push(Value::Str(s.to_string()));
            }
            b'C' | b'B' => {
                let n = if op == b'C' {
                    take(&mut pos, 1)?[0] as usize
                } else {
                    u32::from_le_bytes(take(&mut pos, 4)?.try_into().unwrap()) as usize
                };
                stack.push(Value::Bytes(take(&mut pos, n)?.to_vec()));
            }
            b'c' => {
                // GLOBAL "module\nname\n"
                let line = |pos: &mut usize| -> Result<String> {
                    let start = *pos;
                    while *pos < data.len() && data[*pos] != b'\n' {
                        *pos += 1;
                    }
                    if *pos >= data.len() {
                        bail!("pickle truncated in GLOBAL at byte {at}");
                    }
                    let s = String::from_utf8_lossy(&data[start..*pos]).to_string();
                    *pos += 1;
                    Ok(s)
                };
                let module = line(&mut pos)?;
                let name = line(&mut pos)?;
                stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = pop(&mut stack, at)?;
                let module = pop(&mut stack, at)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(m, n)),
                    _ => bail!("pickle: STACK_GLOBAL needs two strings at byte {at}"),
                }
            }
            b'q' => {
                let i = take(&mut pos, 1)?[0] as u32;
                memo.insert(i, stack.last().cloned().ok_or_else(|| anyhow!("pickle: BINPUT on empty stack at byte {at}"))?);
            }
            b'r' => {
                let i = u32::from_le_bytes(take(&mut pos, 4)?.try_into().unwrap());
                memo.insert(i, stack.last().cloned().ok_or_else(|| anyhow!("pickle: LONG_BINPUT on empty stack at byte {at}"))?);
            }
            0x94 => {
                let i = memo.len() as u32;
                memo.insert(i, stack.last().cloned().ok_or_else(|| anyhow!("pickle: MEMOIZE on empty stack at byte {at}"))?);
            }
            b'h' | b'j' => {
                let i = if op == b'h' { take(&mut pos, 1)?[0] as u32 } else { u32::from_le_bytes(take(&mut pos, 4)?.try_into().unwrap()) };
                stack.push(memo.get(&i).cloned().ok_or_else(|| anyhow!("pickle: memo entry {i} missing at byte {at}"))?);
            }
            b')' => stack.push(Value::Tuple(vec![])),
            b't' => {
                let items = pop_mark(&mut stack, &mut marks, at)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    bail!("pickle stack underflow at byte {at}");
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b']' => stack.push(Value::List(vec![])),
            b'}' => stack.push(Value::Dict(vec![])),
            b'a' => {
                let v = pop(&mut stack, at)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => bail!("pickle: APPEND to a non-list at byte {at}"),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack, &mut marks, at)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => bail!("pickle: APPENDS to a non-list at byte {at}"),
                }
            }
            b's' => {
                let v = pop(&mut stack, at)?;
                let k = pop(&mut stack, at)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.push((k, v)),
                    _ => bail!("pickle: SETITEM on a non-dict at byte {at}"),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack, &mut marks, at)?;
                if items.len() % 2 != 0 {
                    bail!("pickle: odd SETITEMS at byte {at}");
                }
                match stack.last_mut() {
                    Some(Value::Dict(d)) => {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    _ => bail!("pickle: SETITEMS on a non-dict at byte {at}"),
                }
            }
            b'b' => {
                // BUILD: sets attributes (an OrderedDict's `_metadata`); not needed.
                pop(&mut stack, at)?;
            }
            b'Q' => {
                let pid = pop(&mut stack, at)?;
                stack.push(Value::Storage(persistent_storage(&pid).with_context(|| format!("pickle: persistent id at byte {at}"))?));
            }
            b'R' => {
                let args = pop(&mut stack, at)?;
                let func = pop(&mut stack, at)?;
                stack.push(reduce(func, args).with_context(|| format!("pickle: REDUCE at byte {at}"))?);
            }
            other => bail!(
                "unsupported pickle opcode 0x{other:02x} at byte {at}: the file holds more than a plain state_dict; \
                 load it in Python and save `model.state_dict()`, or convert it with scripts/convert_torchvision.py"
            ),
        }
    }
}

fn persistent_storage(pid: &Value) -> Result<StorageRef> {
    let Value::Tuple(items) = pid else { bail!("expected a tuple, found {pid:?}") };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(_, ty), Value::Str(key), _location, numel, ..] if tag == "storage" => {
            let kind = storage_kind(ty).ok_or_else(|| anyhow!("unsupported storage type {ty}"))?;
            let numel = as_int(numel, "storage size")?;
            if numel < 0 {
                bail!("negative storage size {numel}");
            }
            Ok(StorageRef { key: key.clone(), kind, numel: numel as usize })
        }
        _ => bail!("expected ('storage', type, key, location, size), found {pid:?}"),
    }
}

fn reduce(func: Value, args: Value) -> Result<Value> {
    let Value::Global(module, name) = &func else { bail!("can only call globals, found {func:?}") };
    let Value::Tuple(args) = args else { bail!("{module}.{name}: arguments must be a tuple") };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Ok(Value::Dict(vec![])),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            let [Value::Storage(storage), offset, size, stride, ..] = args.as_slice() else {
                bail!("{module}.{name}: expected (storage, offset, size, stride, …)")
            };
            let offset = as_int(offset, "storage offset")?;
            if offset < 0 {
                bail!("negative storage offset {offset}");
            }
            let size = as_int_tuple(size, "tensor size")?;
            let stride = as_int_tuple(stride, "tensor stride")?;
            // Checked against the storage by `tensor_entries`, which knows the tensor's name.
            Ok(Value::Tensor(TensorRef { storage: storage.clone(), offset: offset as usize, size, stride }))
        }
        ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => bail!("{module}.{name}: expected a tensor argument"),
        },
        _ => bail!("calls to {module}.{name} are not supported in a state_dict"),
    }
}

/// Finds the `name -> tensor` dict: the top-level dict, or its `state_dict` / `model` entry.
fn tensor_entries(v: Value) -> Result<Vec<(String, TensorRef)>> {
    let Value::Dict(items) = v else { bail!("the file does not hold a dict of tensors (a state_dict)") };
    if items.iter().all(|(_, v)| matches!(v, Value::Tensor(_))) {
        return items
            .into_iter()
            .map(|(k, v)| match (k, v) {
                (Value::Str(k), Value::Tensor(t)) => {
                    check_view(&t).with_context(|| format!("tensor {k}"))?;
                    Ok((k, t))
                }
                (k, _) => bail!("state_dict key {k:?} is not a string"),
            })
            .collect();
    }
    for (k, v) in items {
        if let Value::Str(k) = &k {
            if (k == "state_dict" || k == "model") && matches!(v, Value::Dict(_)) {
                return tensor_entries(v);
            }
        }
    }
    bail!("the file holds a dict whose values are not all tensors and that has no `state_dict` entry")
}

/// Checks a tensor view against its storage before anything is allocated: sizes and strides
/// non-negative and of one length, every element inside the storage, no stride 0 over a dimension
/// longer than 1 and no more elements than the storage holds (a view that repeats stored values
/// would make a tensor larger than the file).
fn check_view(t: &TensorRef) -> Result<()> {
    let (size, stride) = (&t.size, &t.stride);
    if size.len() != stride.len() || size.iter().chain(stride).any(|&v| v < 0) {
        bail!("size {size:?} and stride {stride:?} do not describe a tensor (one non-negative stride per dimension expected)");
    }
    if size.contains(&0) {
        return Ok(());
    }
    if let Some(d) = (0..size.len()).find(|&d| size[d] > 1 && stride[d] == 0) {
        bail!("size {size:?} has stride 0 in dimension {d}, which repeats stored values; save plain tensors (t.contiguous()) in the state_dict");
    }
    let numel = size.iter().try_fold(1u64, |a, &s| a.checked_mul(s as u64)).filter(|&n| n <= t.storage.numel as u64);
    let Some(numel) = numel else {
        bail!(
            "size {size:?} has more elements than its storage of {} (overlapping strides); save plain tensors (t.contiguous())",
            t.storage.numel
        );
    };
    // Every element the view reaches must lie inside the storage.
    let reach = size
        .iter()
        .zip(stride)
        .try_fold(t.offset as u64, |a, (&s, &st)| (s as u64 - 1).checked_mul(st as u64).and_then(|r| a.checked_add(r)));
    match reach {
        Some(last) if last < t.storage.numel as u64 => Ok(()),
        _ => bail!(
            "size {size:?} stride {stride:?} offset {} overruns its storage of {} elements ({numel} elements)",
            t.offset,
            t.storage.numel
        ),
    }
}

fn materialise(t: &TensorRef, bytes: &[u8]) -> Result<Tensor> {
    let el = t.storage.kind.elt_size_in_bytes();
    if bytes.len() != t.storage.numel * el {
        bail!(
            "storage {} holds {} bytes, expected {} ({} elements of {el} bytes)",
            t.storage.key,
            bytes.len(),
            t.storage.numel * el,
            t.storage.numel
        );
    }
    // The common case, a contiguous tensor filling its storage from the start: one copy.
    let mut contiguous = vec![1i64; t.size.len()];
    for i in (0..t.size.len().saturating_sub(1)).rev() {
        contiguous[i] = contiguous[i + 1] * t.size[i + 1];
    }
    let numel: i64 = t.size.iter().product();
    if t.offset == 0 && numel as usize == t.storage.numel && (t.stride == contiguous || numel <= 1) {
        return Tensor::f_from_data_size(bytes, &t.size, t.storage.kind).map_err(|e| anyhow!(super::torch_message(&e)));
    }
    let torch = |e: tch::TchError| anyhow!(super::torch_message(&e));
    let flat = Tensor::f_from_data_size(bytes, &[t.storage.numel as i64], t.storage.kind).map_err(torch)?;
    flat.f_as_strided(t.size.as_slice(), t.stride.as_slice(), t.offset as i64).and_then(|v| v.f_contiguous()).map_err(torch)
}

/// Reads every tensor of a `torch.save`d state dict, on the CPU, contiguous, in file order.
pub fn read_pth(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    read_pth_bytes(&bytes).with_context(|| format!("{}: not a readable torch.save state_dict", path.display()))
}

fn read_pth_bytes(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(bytes)
    } else if bytes.first() == Some(&0x80) {
        read_legacy(bytes)
    } else {
        bail!("neither the zip nor the legacy torch.save format (the file starts with {:02x?})", &bytes[..bytes.len().min(4)])
    }
}

fn read_zip(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| anyhow!("corrupt zip archive: {e}"))?;
    let pkl = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .map(|s| s.to_string())
        .ok_or_else(|| anyhow!("the zip archive has no data.pkl"))?;
    let prefix = pkl.strip_suffix("data.pkl").unwrap().to_string();
    let mut read = |name: &str| -> Result<Vec<u8>> {
        let f = zip.by_name(name).map_err(|e| anyhow!("archive entry {name}: {e}"))?;
        // The declared size is not trusted for the allocation: an entry grows as it is read, up
        // to its declared size.
        let size = f.size();
        let mut v = Vec::with_capacity((size as usize).min(bytes.len()));
        f.take(size).read_to_end(&mut v).map_err(|e| anyhow!("archive entry {name}: {e}"))?;
        Ok(v)
    };
    if let Ok(order) = read(&format!("{prefix}byteorder")) {
        if order != b"little" {
            bail!("byte order {:?} is not supported (only little-endian)", String::from_utf8_lossy(&order));
        }
    }
    let (value, _) = unpickle(&read(&pkl)?)?;
    let entries = tensor_entries(value)?;
    let mut cache: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (name, t) in entries {
        if !cache.contains_key(&t.storage.key) {
            let data = read(&format!("{prefix}data/{}", t.storage.key))?;
            cache.insert(t.storage.key.clone(), data);
        }
        let tensor = materialise(&t, &cache[&t.storage.key]).with_context(|| format!("tensor {name}"))?;
        out.push((name, tensor));
    }
    Ok(out)
}

fn read_legacy(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let mut pos = 0;
    let next = |pos: &mut usize| -> Result<Value> {
        let (v, used) = unpickle(&bytes[*pos..])?;
        *pos += used;
        Ok(v)
    };
    match next(&mut pos)? {
        Value::BigInt(b) if b == [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19] => {}
        _ => bail!("legacy torch.save file without the torch magic number"),
    }
    let _protocol = next(&mut pos)?;
    let _sys_info = next(&mut pos)?;
    let entries = tensor_entries(next(&mut pos)?)?;
    let keys = match next(&mut pos)? {
        Value::List(k) => k,
        _ => bail!("legacy torch.save file: storage key list missing"),
    };
    let mut kinds: HashMap<String, Kind> = HashMap::new();
    for (_, t) in &entries {
        kinds.insert(t.storage.key.clone(), t.storage.kind);
    }
    let mut data: HashMap<String, (usize, usize)> = HashMap::new();
    for k in keys {
        let Value::Str(k) = k else { bail!("legacy torch.save file: storage key is not a string") };
        if pos + 8 > bytes.len() {
            bail!("truncated before storage {k}");
        }
        let numel = u64::from_le_bytes(bytes[pos..pos + 8].try_into().unwrap()) as usize;
        pos += 8;
        let el = kinds.get(&k).map(|k| k.elt_size_in_bytes()).unwrap_or(1);
        let len = numel.checked_mul(el).ok_or_else(|| anyhow!("storage {k}: size overflow"))?;
        if pos + len > bytes.len() {
            bail!("truncated inside storage {k}: needs {len} bytes, {} left", bytes.len() - pos);
        }
        data.insert(k, (pos, len));
        pos += len;
    }
    entries
        .into_iter()
        .map(|(name, t)| {
            let &(start, len) = data.get(&t.storage.key).ok_or_else(|| anyhow!("tensor {name}: storage {} missing", t.storage.key))?;
            let tensor = materialise(&t, &bytes[start..start + len]).with_context(|| format!("tensor {name}"))?;
            Ok((name, tensor))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pickle written by hand (protocol 2) of {'w': tensor of 2×2 floats at storage offset 1,
    /// transposed strides}, checked against the expected values without Python.
    #[test]
    fn hand_written_zip_pickle() {
        let mut p: Vec<u8> = vec![0x80, 2];
        p.extend(b"ccollections\nOrderedDict\n)R(");
        p.extend(b"X\x01\x00\x00\x00w");
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x05tQ");
        p.extend(b"K\x01K\x02K\x02\x86K\x01K\x02\x86\x89ccollections\nOrderedDict\n)Rt");
        p.extend(b"Ru.");
        let (v, used) = unpickle(&p).unwrap();
        assert_eq!(used, p.len());
        let entries = tensor_entries(v).unwrap();
        assert_eq!(entries.len(), 1);
        let (name, t) = &entries[0];
        assert_eq!(name, "w");
        assert_eq!((t.offset, t.size.clone(), t.stride.clone()), (1, vec![2, 2], vec![1, 2]));
        let storage: Vec<u8> = [0.0f32, 1.0, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let x = materialise(t, &storage).unwrap();
        // element (i, j) = storage[1 + i + 2j]
        assert_eq!(Vec::<f32>::try_from(x.flatten(0, -1)).unwrap(), vec![1.0, 3.0, 2.0, 4.0]);
        // A storage shorter than its declared size is refused.
        assert!(materialise(t, &storage[..16]).is_err());
        // A view past the storage end is refused when the pickle is read.
        let at = p.windows(6).position(|w| w == b"K\x01K\x02K\x02").unwrap();
        let mut bad = p.clone();
        bad[at + 1] = 3;
        let e = format!("{:#}", tensor_entries(unpickle(&bad).unwrap().0).unwrap_err());
        assert!(e.contains("tensor w") && e.contains("overruns"), "{e}");
    }

    #[test]
    fn garbage_and_truncation_are_refused() {
        let e = format!("{:#}", read_pth_bytes(b"hello world").unwrap_err());
        assert!(e.contains("neither the zip nor the legacy"), "{e}");
        let e = format!("{:#}", read_pth_bytes(b"PK\x03\x04garbage").unwrap_err());
        assert!(e.contains("corrupt zip"), "{e}");
        let e = format!("{:#}", unpickle(&[0x80, 2, b'X', 9, 0]).unwrap_err());
        assert!(e.contains("truncated"), "{e}");
        let e = format!("{:#}", unpickle(&[0x80, 2, b'i']).unwrap_err());
        assert!(e.contains("unsupported pickle opcode 0x69"), "{e}");
    }
}
