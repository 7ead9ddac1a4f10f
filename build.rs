//! Adds an rpath to libtorch's `lib/` folder so `cargo run`, `cargo test` and the built binary find
//! libtorch without LD_LIBRARY_PATH. torch-sys itself links but sets no rpath.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(root) = std::env::var("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set: run scripts/setup.sh first");
        return;
    };
    let lib = PathBuf::from(&root).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // The nvidia-* runtime wheels sit beside torch; libtorch_cuda's own RUNPATH finds them.
}
