//! The example cluster as a binary: the same program as `cargo run --example cluster`
//! (`skynet_examples::cluster`), built where tests can find it (integration tests get the
//! paths of binaries, not of examples).

fn main() -> anyhow::Result<()> {
    skynet_examples::cluster::main()
}
