//! Builds the CUDA kernels (crates/render/cuda/*.cu) into a static library
//! when the `cuda` feature is on; does nothing otherwise, so that CI (no
//! CUDA toolkit) never runs nvcc.
//!
//! Needs `nvcc` on PATH (or `NVCC`) and the CUDA headers including CCCL
//! (CUB), e.g. after `tools/cuda-toolchain.sh && source .cuda/env.sh`.
//! `CUDA_COMPUTE_CAP` (default 90) picks the SASS target; PTX for the same
//! compute capability is embedded as well.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: [&str; 5] = [
    "projection_fwd.cu",
    "projection_bwd.cu",
    "intersect.cu",
    "rasterize_fwd.cu",
    "rasterize_bwd.cu",
];
const HEADERS: [&str; 4] = ["api.h", "common.cuh", "projection.cuh", "sh.cuh"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for f in SOURCES.iter().chain(HEADERS.iter()) {
        println!("cargo::rerun-if-changed=cuda/{f}");
    }
    for v in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_ROOT",
        "CUDA_COMPUTE_CAP",
    ] {
        println!("cargo::rerun-if-env-changed={v}");
    }
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let cuda_dir = manifest.join("cuda");
    let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap: String = cap.chars().filter(|c| c.is_ascii_digit()).collect();
    let cuda_home = ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"]
        .iter()
        .find_map(env::var_os)
        .map(PathBuf::from);

    let mut includes = vec![cuda_dir.clone()];
    if let Some(h) = &cuda_home {
        for sub in ["include/cccl", "include"] {
            let p = h.join(sub);
            if p.is_dir() {
                includes.push(p);
            }
        }
    }

    // Compile the translation units concurrently (the CUB one is slow).
    let mut children = Vec::new();
    let mut objects = Vec::new();
    for src in SOURCES {
        let obj = out.join(src.replace(".cu", ".o"));
        let mut cmd = Command::new(&nvcc);
        cmd.arg("-c")
            .arg(cuda_dir.join(src))
            .arg("-o")
            .arg(&obj)
            .args(["-O3", "-std=c++17", "-fmad=false", "-lineinfo"])
            .arg("-gencode")
            .arg(format!("arch=compute_{cap},code=[sm_{cap},compute_{cap}]"))
            .args(["-Xcompiler", "-fPIC"]);
        for inc in &includes {
            cmd.arg(format!("-I{}", inc.display()));
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {nvcc}: {e} (source .cuda/env.sh first)"));
        children.push((src, child));
        objects.push(obj);
    }
    for (src, mut child) in children {
        let st = child.wait().expect("nvcc");
        assert!(st.success(), "nvcc failed on cuda/{src}");
    }
    let lib = out.join("libsplatforge_cuda.a");
    let _ = std::fs::remove_file(&lib);
    let st = Command::new(env::var("AR").unwrap_or_else(|_| "ar".into()))
        .arg("crs")
        .arg(&lib)
        .args(&objects)
        .status()
        .expect("ar");
    assert!(st.success(), "ar failed");

    println!("cargo::rustc-link-search=native={}", out.display());
    println!("cargo::rustc-link-lib=static=splatforge_cuda");
    if let Some(h) = &cuda_home {
        for sub in ["lib64", "lib"] {
            let p: &Path = &h.join(sub);
            if p.is_dir() {
                println!("cargo::rustc-link-search=native={}", p.display());
            }
        }
    }
    println!("cargo::rustc-link-lib=dylib=cudart");
    println!("cargo::rustc-link-lib=dylib=stdc++");
}
