//! Adds an rpath to libtorch's `lib/` folder so `cargo run`, `cargo test` and the built binary find
//! libtorch without LD_LIBRARY_PATH. torch-sys itself links but sets no rpath.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(root) = std::env::var("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set: run scripts/setup.sh first");
        println!("cargo:rustc-env=CMH_LIBTORCH_VERSION=unknown");
        return;
    };
    // Record the libtorch version for run reports.
    let version = std::fs::read_to_string(PathBuf::from(&root).join("version.py"))
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("__version__")).map(|l| l.split('\'').nth(1).unwrap_or("").to_string()))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CMH_LIBTORCH_VERSION={version}");
    let lib = PathBuf::from(&root).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // libtorch_cuda is NOT linked: nothing references it directly, and loading it (with the CUDA
    // libraries it pulls in) costs every process a few hundred MB of resident memory, searches and
    // evaluations included. `deep::trainer::cuda_available` loads it with dlopen, through this
    // rpath, when a command asks for a CUDA device (`--device cuda|auto`); the same binary then
    // trains on CUDA or the CPU.
}
