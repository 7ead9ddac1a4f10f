//! `cmh export` read back by the engines themselves: faiss (IndexBinaryFlat and IndexBinaryIVF
//! searched with faiss-cpu) and Lance (`cmh_tools.lance_export`, searched with pylance's
//! `metric="hamming"`) return cmh's top-k distances. Skipped with a notice when the venv or the
//! package is missing.

use std::path::Path;
use std::process::Command;

mod common;
use common::{python, repo};

fn cmh(args: &[&str], dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_cmh")).args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "cmh {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs python code in `dir`; None when `module` cannot be imported (the caller skips).
fn py(code: &str, dir: &Path, module: &str) -> Option<()> {
    let py = python()?;
    let probe = Command::new(&py).args(["-c", &format!("import {module}")]).output().unwrap();
    if !probe.status.success() {
        return None;
    }
    let out = Command::new(py).arg("-c").arg(code).current_dir(dir).env("PYTHONPATH", repo().join("python")).output().unwrap();
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    Some(())
}

/// 3,000 clustered 64-bit codes (many ties) and 25 queries, written by numpy.
const DATA: &str = r#"
import numpy as np
rng = np.random.default_rng(5)
centres = rng.integers(0, 256, (40, 8), dtype=np.uint8)
def near(n):
    x = np.unpackbits(centres[rng.integers(0, 40, n)], axis=1)
    flip = rng.random(x.shape) < 0.08
    return np.packbits(x ^ flip, axis=1)
np.save("db.npy", near(3000)); np.save("q.npy", near(25))
np.save("labels.npy", (rng.random((3000, 6)) < 0.3).astype(np.uint8))
"#;

#[test]
fn faiss_loads_the_export_and_returns_cmh_top_k() {
    let d = tempfile::tempdir().unwrap();
    if py(DATA, d.path(), "faiss").is_none() {
        eprintln!("skipped: faiss is not installed in .venv (scripts/setup.sh installs it)");
        return;
    }
    let dir = d.path();
    cmh(&["export", "faiss", "--codes", "db.npy", "--out", "flat.faiss"], dir);
    cmh(&["export", "faiss", "--codes", "db.npy", "--out", "ivf.faiss", "--ivf", "16"], dir);
    cmh(&["search", "--db", "db.npy", "--query", "q.npy", "-k", "20", "--out", "res"], dir);
    py(
        r#"
import faiss, numpy as np
db, q = np.load("db.npy"), np.load("q.npy")
ci, cd = np.load("res/indices.npy"), np.load("res/distances.npy")
flat = faiss.read_index_binary("flat.faiss")
assert type(flat) is faiss.IndexBinaryFlat and flat.ntotal == 3000 and flat.d == 64, (type(flat), flat.ntotal)
D, I = flat.search(q, 20)
assert (D == cd).all(), "IndexBinaryFlat distances differ from cmh's"
ivf = faiss.read_index_binary("ivf.faiss")
assert isinstance(ivf, faiss.IndexBinaryIVF) and ivf.nlist == 16 and ivf.ntotal == 3000, type(ivf)
sizes = [ivf.invlists.list_size(i) for i in range(16)]
assert sum(sizes) == 3000 and max(sizes) < 3000, sizes
ids = np.concatenate([faiss.rev_swig_ptr(ivf.invlists.get_ids(i), sizes[i]).copy() for i in range(16) if sizes[i]])
assert np.array_equal(np.sort(ids), np.arange(3000))
# Every list holds codes at their nearest centroid.
cent = ivf.quantizer.reconstruct_n(0, 16)
_, assign = ivf.quantizer.search(db, 1)
for i in range(16):
    if sizes[i]:
        lid = faiss.rev_swig_ptr(ivf.invlists.get_ids(i), sizes[i])
        dc = np.unpackbits(db[lid][:, None, :] ^ cent[None, :, :], axis=2).sum(2)
        assert (dc[:, i] == dc.min(1)).all(), i
ivf.nprobe = 16   # every list: exact
D, I = ivf.search(q, 20)
assert (D == cd).all(), "IndexBinaryIVF (nprobe = nlist) distances differ from cmh's"
ham = np.unpackbits(q[:, None, :] ^ db[None, :, :], axis=2).sum(2)
assert (np.take_along_axis(ham, I, 1) == cd).all()
ivf.nprobe = 1
D1, I1 = ivf.search(q, 20)
assert (D1 >= cd).all()
"#,
        dir,
        "faiss",
    )
    .unwrap();
}

#[test]
fn lance_nearest_neighbour_search_on_the_export_returns_cmh_distances() {
    let d = tempfile::tempdir().unwrap();
    if py(DATA, d.path(), "lance").is_none() {
        eprintln!("skipped: pylance is not installed in .venv (scripts/setup.sh installs it)");
        return;
    }
    let dir = d.path();
    cmh(&["search", "--db", "db.npy", "--query", "q.npy", "-k", "15", "--out", "res"], dir);
    py(
        r#"
import json, subprocess, sys
import numpy as np
import lance
out = subprocess.run([sys.executable, "-m", "cmh_tools.lance_export", "--codes", "db.npy", "--out", "db.lance",
                      "--labels", "labels.npy"], capture_output=True, text=True)
assert out.returncode == 0, out.stderr
again = subprocess.run([sys.executable, "-m", "cmh_tools.lance_export", "--codes", "db.npy", "--out", "db.lance"],
                       capture_output=True, text=True)
assert again.returncode == 1 and "exists" in again.stderr, again.stderr
from cmh_tools.lance_export import search
ds = lance.dataset("db.lance")
assert ds.count_rows() == 3000
assert str(ds.schema.field("code").type) == "fixed_size_list<item: uint8>[8]", ds.schema
t = ds.to_table(columns=["id", "code", "labels"], filter="id = 7").to_pylist()[0]
db, labels = np.load("db.npy"), np.load("labels.npy")
assert bytes(t["code"]) == db[7].tobytes() and t["labels"] == np.flatnonzero(labels[7]).tolist(), t
ids, dist = search(ds, np.load("q.npy"), 15)
cd = np.load("res/distances.npy")
assert (dist.astype(np.int64) == cd).all(), (dist[:2], cd[:2])
q = np.load("q.npy")
ham = np.unpackbits(q[:, None, :] ^ db[None, :, :], axis=2).sum(2)
assert (np.take_along_axis(ham, ids.astype(np.int64), 1) == cd).all()
"#,
        dir,
        "lance",
    )
    .unwrap();
}

#[test]
fn index_build_and_search_through_the_cli_match_the_scan() {
    use rand::{Rng, SeedableRng};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let centres: Vec<u32> = (0..30).map(|_| rng.gen()).collect();
    let mut near = |n: usize| {
        let rows: Vec<u8> = (0..n)
            .flat_map(|_| {
                let mut c = centres[rng.gen_range(0..30)];
                for _ in 0..3 {
                    c ^= 1 << rng.gen_range(0..32);
                }
                c.to_be_bytes()
            })
            .collect();
        ndarray::Array2::from_shape_vec((n, 4), rows).unwrap()
    };
    cmh::npy::write_npy(&dir.join("db.npy"), &near(5000)).unwrap();
    cmh::npy::write_npy(&dir.join("q.npy"), &near(40)).unwrap();
    cmh(&["index", "build", "--codes", "db.npy", "--out", "db.cmhidx", "--quiet"], dir);
    cmh(&["index", "build", "--codes", "db.npy", "--out", "db4.cmhidx", "--substrings", "4", "--quiet"], dir);
    cmh(&["search", "--db", "db.npy", "--query", "q.npy", "-k", "25", "--out", "scan"], dir);
    cmh(&["search", "--db", "db.npy", "--query", "q.npy", "--radius", "4", "--out", "scan_r"], dir);
    for ix in ["db.cmhidx", "db4.cmhidx"] {
        cmh(&["search", "--index", ix, "--query", "q.npy", "-k", "25", "--out", "ix"], dir);
        cmh(&["search", "--index", ix, "--query", "q.npy", "--radius", "4", "--out", "ix_r"], dir);
        for f in ["indices.npy", "distances.npy"] {
            assert_eq!(std::fs::read(dir.join("scan").join(f)).unwrap(), std::fs::read(dir.join("ix").join(f)).unwrap(), "{ix} {f}");
        }
        for f in ["indices.npy", "distances.npy", "offsets.npy"] {
            assert_eq!(std::fs::read(dir.join("scan_r").join(f)).unwrap(), std::fs::read(dir.join("ix_r").join(f)).unwrap(), "{ix} {f}");
        }
    }
    // A corrupt index is refused with its name, and nothing is written.
    std::fs::write(dir.join("bad.cmhidx"), b"not an index").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cmh"))
        .args(["search", "--index", "bad.cmhidx", "--query", "q.npy", "-k", "3", "--out", "none"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.cmhidx") && err.contains("magic"), "{err}");
    assert!(!dir.join("none").exists());
}
