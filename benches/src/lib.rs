//! Side-by-side benchmarks; see `rpc.rs`.
