//! The example cluster: the original skynet walkthrough, every role its own OS process.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --release --example cluster
//! ```
//!
//! It starts, on loopback: 3 config store voters, 2 instances of the Hello World service, 2
//! routers, 2 HTTP initiators and a watcher, each with an admin port (`/debug/vars`,
//! `/metrics`). It stores the `hello` route, prints a table of the processes and what to try:
//! open the form and say hello, kill a router and see the other one answer, kill both services
//! and see the friendly error naming the `hello` service, read `/debug/vars`. Ctrl-C stops
//! every process and removes the temporary directory.
//!
//! The code is `skynet_examples::cluster` (`examples/src/cluster.rs`): one small function per
//! role, each built from the library, and the supervisor that re-executes this program in
//! those roles. The same program is the `skynet-cluster` binary, which the walkthrough test
//! (`examples/tests/walkthrough.rs`) runs.

fn main() -> anyhow::Result<()> {
    skynet_examples::cluster::main()
}
