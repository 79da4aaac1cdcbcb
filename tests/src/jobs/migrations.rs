//! The job of the unmigrated-database test: a worker for it must stop at
//! start, so it never runs.

use super::record_run;

crate::job_family! {
    /// Records its run.
    fn(u32) => record_run;
    // Its worker finds the tables unmigrated and stops before consuming.
    unmigrated(queue = "eda-test.unmigrated");
}
