//! Builds every crate in `plugins/` for wasm32-wasip2 and records the paths of
//! the resulting components as constants (`jetplug_tests::plugins::TEST_NOOP`,
//! ...), so `cargo test` alone is enough to get fresh test plugins.
//!
//! A nested `cargo build` with its own target dir (`target/plugins`, the same
//! one `make plugins` uses) avoids contending for the outer build's lock.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("tests/ lives in the workspace root")
        .to_path_buf();
    println!("cargo:rerun-if-changed={}", root.join("plugins").display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-changed={}", root.join("sdk").display());
    println!("cargo:rerun-if-env-changed=JETPLUG_SKIP_PLUGIN_BUILD");

    let plugins = plugin_crates(&root.join("plugins"));
    let target_dir = root.join("target").join("plugins");
    if env::var_os("JETPLUG_SKIP_PLUGIN_BUILD").is_none() {
        build(&root, &target_dir, &plugins);
    }

    let out_dir = target_dir.join("wasm32-wasip2").join("release");
    let mut consts = String::new();
    for name in &plugins {
        let file = out_dir.join(format!("{}.wasm", name.replace('-', "_")));
        let ident = name.replace('-', "_").to_uppercase();
        writeln!(
            consts,
            "/// The `{name}` component.\npub const {ident}: &str = {:?};",
            file.display().to_string()
        )
        .expect("write to String");
    }
    // Python and JavaScript plugins are built by `make plugins` (they need
    // componentize-py / componentize-js); only their paths are recorded here.
    let guest_dir = root.join("target").join("plugins").join("guest");
    for name in guest_plugins(&root.join("plugins")) {
        let ident = name.replace('-', "_").to_uppercase();
        writeln!(
            consts,
            "/// The `{name}` component (built by `make plugins`).\npub const {ident}: &str = {:?};",
            guest_dir.join(format!("{name}.wasm")).display().to_string()
        )
        .expect("write to String");
    }
    writeln!(
        consts,
        "/// The workspace root.\npub const ROOT: &str = {:?};",
        root.display().to_string()
    )
    .expect("write to String");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("plugins.rs");
    std::fs::write(&out, consts).expect("write plugins.rs");
}

fn plugin_crates(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read plugins/")
        .filter_map(Result::ok)
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn guest_plugins(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read plugins/")
        .filter_map(Result::ok)
        .filter(|e| e.path().join("app.py").is_file() || e.path().join("plugin.js").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn build(root: &Path, target_dir: &Path, plugins: &[String]) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(target_dir);
    for p in plugins {
        cmd.args(["-p", p]);
    }
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo to build the test plugins");
    if !status.success() {
        panic!(
            "building the plugins in plugins/ for wasm32-wasip2 failed ({status}); \
             is the target installed? run `scripts/setup.sh` (or `rustup target add wasm32-wasip2`)"
        );
    }
}
