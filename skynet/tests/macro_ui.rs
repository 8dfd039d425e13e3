//! Compile-time behaviour of `#[skynet::service]`: what it accepts, and the errors it gives.
//!
//! Refresh the `.stderr` snapshots with `TRYBUILD=overwrite cargo test -p skynet --test macro_ui`
//! and read each one: the error must point at the offending token.

#[test]
fn service_macro() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
