// Shared by the build scripts of every crate whose binaries or tests link libtorch (included with
// `include!`). tch's own link flags do not reach downstream binaries: give them an rpath to
// libtorch (the one built against and the lent GPU machines' copy) and, for CUDA builds, keep
// libtorch_cuda linked even though no symbol of it is referenced directly.

/// Where the GPU machines keep PyTorch's libraries.
const GPU_MACHINE_TORCH_LIB: &str = "/opt/torch/.venv/lib/python3.12/site-packages/torch/lib";

fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{libtorch}/lib");
        println!("cargo:rustc-env=TRAINER_LIBTORCH={libtorch}");
    } else {
        println!("cargo:rustc-env=TRAINER_LIBTORCH=(found by torch-sys)");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{GPU_MACHINE_TORCH_LIB}");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
