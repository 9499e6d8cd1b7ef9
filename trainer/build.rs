//! Links this crate's binaries and tests against libtorch (see link_libtorch.rs).

include!("link_libtorch.rs");

fn main() {
    link_libtorch();
}
