//! The integration tests link libtorch through the trainer (see trainer/link_libtorch.rs).

include!("../trainer/link_libtorch.rs");

fn main() {
    link_libtorch();
}
