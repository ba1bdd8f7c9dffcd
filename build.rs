//! Build script.
//!
//! With the `openblas` feature: a clear warning when no OpenBLAS library is found where the linker will look,
//! ahead of the linker's bare "unable to find library -lopenblas".
//!
//! With the `ros` feature on and the ROS 2 prefix made from the registry's wheels
//! (`scripts/setup.sh` exports `VLM3D_LIBPYTHON_DIR` in `env.sh`), link `libpython3.11` into every binary
//! and test. The wheels' `librcl` loads type-support libraries that reference CPython symbols, so a Rust
//! program that never touches Python would otherwise fail at start-up with `undefined symbol`.
//! `--no-as-needed` keeps the library although the program itself uses none of its symbols; the rpath
//! finds it at run time. A system ROS 2 install has no such quirk and `env.sh` leaves the variable unset.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=VLM3D_LIBPYTHON_DIR");
    if std::env::var_os("CARGO_FEATURE_OPENBLAS").is_some() {
        check_openblas();
    }
    if std::env::var_os("CARGO_FEATURE_ROS").is_none() {
        return;
    }
    let Some(dir) = std::env::var_os("VLM3D_LIBPYTHON_DIR").filter(|d| !d.is_empty()) else {
        return;
    };
    let dir = dir.to_string_lossy();
    for arg in [
        "-Wl,--no-as-needed".to_string(),
        format!("-L{dir}"),
        "-lpython3.11".to_string(),
        "-Wl,--as-needed".to_string(),
        format!("-Wl,-rpath,{dir}"),
    ] {
        println!("cargo:rustc-link-arg={arg}");
    }
}

/// Warns when `libopenblas.so` is in none of the usual library folders (nor `LIBRARY_PATH`).
fn check_openblas() {
    println!("cargo:rerun-if-env-changed=LIBRARY_PATH");
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("LIBRARY_PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    for d in [
        format!("/usr/lib/{arch}-linux-gnu"),
        "/usr/lib".into(),
        "/usr/lib64".into(),
        "/usr/local/lib".into(),
    ] {
        dirs.push(d.into());
    }
    if !dirs.iter().any(|d| d.join("libopenblas.so").exists()) {
        println!(
            "cargo:warning=libopenblas.so not found (looked in LIBRARY_PATH and the system library folders): \
             install libopenblas-dev (scripts/setup.sh does), or build without the `openblas` feature \
             (--no-default-features --features ros)"
        );
    }
}
