//! Compile tests for `#[job]`: programs that must build and run, and
//! programs that must fail with the error recorded next to them.
//!
//! Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p eda-worker-macros --test compiletest`,
//! then read every one of them.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
