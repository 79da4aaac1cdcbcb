//! `worker outbox status`: pending rows, the oldest row's age, and the rows
//! that keep failing.

use clap::Subcommand;

use super::CommandError;
use super::database::DatabaseArgs;
use super::table::render_table;

#[derive(Debug, Subcommand)]
pub(super) enum OutboxCommand {
    /// Pending rows, the oldest row's age, and the rows that keep failing.
    Status {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn outbox_status(args: DatabaseArgs, json: bool) -> Result<(), CommandError> {
    let database = args.require("worker outbox status").await?;
    let status = crate::outbox::status(&database).await;
    database.close().await;
    let status = status?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).map_err(CommandError::Json)?
        );
        return Ok(());
    }
    let age = status
        .oldest_age_secs
        .map_or_else(|| "-".to_owned(), |secs| format!("{secs:.1}s"));
    println!("pending rows: {}", status.pending);
    println!("oldest row:   {age}");
    if status.failing.is_empty() {
        println!("failing rows: none");
    } else {
        let rows: Vec<[String; 5]> = status
            .failing
            .iter()
            .map(|row| {
                [
                    row.id.to_string(),
                    row.message_id.clone(),
                    row.routing_key.clone(),
                    row.attempts.to_string(),
                    row.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print!(
            "{}",
            render_table(
                ["ROW", "MESSAGE ID", "QUEUE", "ATTEMPTS", "LAST ERROR"],
                &rows
            )
        );
    }
    Ok(())
}
