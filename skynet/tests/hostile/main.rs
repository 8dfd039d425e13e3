//! Hostile clients and careless operators against the initiators, the admin port and the
//! example cluster's files: one test binary, one module per area, so that later work keeps them.
//!
//! The listener under attack runs as its own `skynet` process where its memory is measured; the
//! rest of the cluster (a store member, a node hosting the `greeter` service and a router) runs
//! in the test process, on loopback.

mod common;
mod files;
mod input;
mod memory;
mod slots;
