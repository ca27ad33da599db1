//! Shared by the `build.rs` of every crate with CUDA kernels: compiles the
//! crate's `cuda/*.cu` into a static library and links it with cudart, only
//! when the crate's `cuda` feature is on, so that CI (no CUDA toolkit) never
//! runs nvcc.
//!
//! Needs `nvcc` on PATH (or `NVCC`) and the CUDA headers including CCCL
//! (CUB), e.g. after `tools/cuda-toolchain.sh && source .cuda/env.sh`.
//! `CUDA_COMPUTE_CAP` (default 90) picks the SASS target; PTX for the same
//! compute capability is embedded as well.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Builds `lib{library}.a` from `sources` (file names in the crate's `cuda/`
/// folder, which `headers` also live in) when `CARGO_FEATURE_CUDA` is set.
pub fn build_kernels(library: &str, sources: &[&str], headers: &[&str]) {
    println!("cargo::rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for f in sources.iter().chain(headers) {
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
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cuda_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("cuda");
    let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let cap: String = env::var("CUDA_COMPUTE_CAP")
        .unwrap_or_else(|_| "90".into())
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    let cuda_home = ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"]
        .iter()
        .find_map(env::var_os)
        .map(PathBuf::from);

    let mut includes = vec![cuda_dir.clone()];
    if let Some(h) = &cuda_home {
        includes.extend(
            ["include/cccl", "include"]
                .map(|sub| h.join(sub))
                .into_iter()
                .filter(|p| p.is_dir()),
        );
    }

    // Compile the translation units concurrently: the ones using CUB are slow.
    let mut children = Vec::new();
    let mut objects = Vec::new();
    for src in sources {
        let obj = out.join(src.replace(".cu", ".o"));
        let mut cmd = Command::new(&nvcc);
        cmd.arg("-c")
            .arg(cuda_dir.join(src))
            .arg("-o")
            .arg(&obj)
            // No FMA contraction: the kernels must match the CPU reference's rounding.
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
        let status = child.wait().expect("waiting for nvcc");
        assert!(status.success(), "nvcc failed on cuda/{src}");
    }
    let lib = out.join(format!("lib{library}.a"));
    let _ = std::fs::remove_file(&lib);
    let status = Command::new(env::var("AR").unwrap_or_else(|_| "ar".into()))
        .arg("crs")
        .arg(&lib)
        .args(&objects)
        .status()
        .expect("running ar");
    assert!(status.success(), "ar failed");

    println!("cargo::rustc-link-search=native={}", out.display());
    println!("cargo::rustc-link-lib=static={library}");
    if let Some(h) = &cuda_home {
        for p in ["lib64", "lib"]
            .map(|sub| h.join(sub))
            .into_iter()
            .filter(|p| p.is_dir())
        {
            println!("cargo::rustc-link-search=native={}", p.display());
        }
    }
    println!("cargo::rustc-link-lib=dylib=cudart");
    println!("cargo::rustc-link-lib=dylib=stdc++");
}
