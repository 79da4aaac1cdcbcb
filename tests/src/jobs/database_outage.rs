//! Jobs of the database-outage test: one that dedups (its transaction and
//! inbox claim begin before it runs), one that does not and asks for its
//! transaction itself, and one that never touches the database.

use super::inbox::{DbWrite, write_effect};
use super::record_run;

crate::job_family! {
    /// Writes its effect in the job's transaction.
    fn(DbWrite) => write_effect;
    // Dedups: begins and claims before it runs.
    outage_dedup(queue = "eda-test.db-outage", retries = 1);
    // Begins its transaction at its first ctx.tx().
    outage_lazy(queue = "eda-test.db-outage-lazy", dedup = false, retries = 1);
}

crate::job_family! {
    /// Records its run.
    fn(u32) => record_run;
    // Needs no database: runs on through the outage.
    outage_free(queue = "eda-test.db-outage-free", dedup = false);
}
