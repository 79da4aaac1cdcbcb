//! `worker dlq list|replay|purge QUEUE`: the dead letters of a job queue.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, UNIX_EPOCH};

use clap::{ArgGroup, Args, Subcommand};

use super::CommandError;
use super::broker::BrokerArgs;
use super::table::render_table;
use crate::dead_letter::{DeadLetter, DeadLetters, Replay, queue_name as dead_letter_queue};

/// Dead letters shown by `list` when `--limit` is not given.
const DEFAULT_LIST_LIMIT: usize = 20;

/// Characters of an error shown in the `list` table.
const ERROR_COLUMN: usize = 80;

/// `x-eda-failed-at` values from year 10000 on cannot be shown as RFC 3339.
const LAST_RFC3339_MILLIS: u64 = 253_402_300_799_999;

#[derive(Debug, Subcommand)]
pub(super) enum DlqCommand {
    /// Show the oldest dead letters of QUEUE; they stay in place, in order.
    List(ListArgs),
    /// Send dead letters of QUEUE back to QUEUE, as first attempts.
    Replay(ReplayArgs),
    /// Delete every dead letter of QUEUE.
    Purge(PurgeArgs),
}

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// The job queue (its dead letters are in QUEUE.dlq).
    queue: String,
    /// How many dead letters to show, oldest first.
    #[arg(long, default_value_t = DEFAULT_LIST_LIMIT)]
    limit: usize,
    /// Print one JSON array of dead letters (with their bodies) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    broker: BrokerArgs,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["id", "all"])))]
pub(super) struct ReplayArgs {
    /// The job queue (its dead letters are in QUEUE.dlq).
    queue: String,
    /// Replay the dead letter with this message id.
    #[arg(long)]
    id: Option<String>,
    /// Replay every dead letter.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    broker: BrokerArgs,
}

#[derive(Debug, Args)]
pub(super) struct PurgeArgs {
    /// The job queue (its dead letters are in QUEUE.dlq).
    queue: String,
    /// Purge without asking (required when stdin is not a terminal).
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    broker: BrokerArgs,
}

/// Runs one `worker dlq` command.
pub(super) async fn run(command: DlqCommand) -> Result<(), CommandError> {
    match command {
        DlqCommand::List(args) => list(args).await,
        DlqCommand::Replay(args) => replay(args).await,
        DlqCommand::Purge(args) => purge(args).await,
    }
}

async fn list(args: ListArgs) -> Result<(), CommandError> {
    let dead_letters =
        DeadLetters::connect_with_tls(&args.broker.amqp_url, &args.broker.tls()).await?;
    let listed = async {
        let ready = dead_letters.count(&args.queue).await?;
        let letters = dead_letters.list(&args.queue, args.limit).await?;
        Ok::<_, crate::Error>((ready, letters))
    }
    .await;
    close(dead_letters).await;
    let (ready, letters) = listed?;
    let queue = dead_letter_queue(&args.queue);
    if args.json {
        let json = serde_json::to_string_pretty(&letters).map_err(CommandError::Json)?;
        println!("{json}");
    } else if letters.is_empty() {
        println!("no dead letters in `{queue}`");
    } else {
        print!("{}", dead_letters_table(&letters));
        if u32::try_from(letters.len()).is_ok_and(|shown| shown < ready) {
            println!(
                "(the oldest {} of {ready} in `{queue}`; --limit shows more)",
                letters.len()
            );
        }
    }
    Ok(())
}

async fn replay(args: ReplayArgs) -> Result<(), CommandError> {
    let which = match args.id {
        Some(id) => Replay::Id(id),
        // clap's group makes --id or --all required.
        None => Replay::All,
    };
    let dead_letters =
        DeadLetters::connect_with_tls(&args.broker.amqp_url, &args.broker.tls()).await?;
    let replayed = dead_letters.replay(&args.queue, which).await;
    close(dead_letters).await;
    let replayed = replayed?;
    println!(
        "replayed {replayed} dead letter(s) from `{}` to `{}`",
        dead_letter_queue(&args.queue),
        args.queue
    );
    Ok(())
}

async fn purge(args: PurgeArgs) -> Result<(), CommandError> {
    let queue = dead_letter_queue(&args.queue);
    // Refused before connecting: a script without --yes must not depend on the broker.
    if !args.yes && !std::io::stdin().is_terminal() {
        return Err(CommandError::PurgeNotConfirmed { queue });
    }
    let dead_letters =
        DeadLetters::connect_with_tls(&args.broker.amqp_url, &args.broker.tls()).await?;
    let purged = confirm_and_purge(&dead_letters, &args.queue, &queue, args.yes).await;
    close(dead_letters).await;
    match purged? {
        Some(purged) => println!("purged {purged} dead letter(s) from `{queue}`"),
        None => println!("nothing purged"),
    }
    Ok(())
}

/// Asks (unless `yes`), then purges; `None` when the user said no or there was nothing.
async fn confirm_and_purge(
    dead_letters: &DeadLetters,
    job_queue: &str,
    queue: &str,
    yes: bool,
) -> Result<Option<u32>, CommandError> {
    if !yes {
        let ready = dead_letters.count(job_queue).await?;
        if ready == 0 {
            println!("`{queue}` is empty");
            return Ok(None);
        }
        let question = format!("purge {ready} messages from `{queue}`? [y/N] ");
        if !ask(question).await? {
            return Ok(None);
        }
    }
    Ok(Some(dead_letters.purge(job_queue).await?))
}

/// Asks `question` on the terminal; true on "y" or "yes".
async fn ask(question: String) -> Result<bool, CommandError> {
    // A blocking read on a thread meant for it, so the connection's heartbeats go on.
    let answer = tokio::task::spawn_blocking(move || {
        let mut stderr = std::io::stderr();
        stderr.write_all(question.as_bytes())?;
        stderr.flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        Ok::<_, std::io::Error>(answer)
    })
    .await
    .map_err(|join| CommandError::Prompt(std::io::Error::other(join)))?
    .map_err(CommandError::Prompt)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

async fn close(dead_letters: DeadLetters) {
    if let Err(error) = dead_letters.close().await {
        tracing::debug!(error = %error, "closing the dlq connection failed");
    }
}

fn dead_letters_table(letters: &[DeadLetter]) -> String {
    let rows: Vec<[String; 5]> = letters
        .iter()
        .map(|letter| {
            [
                if letter.message_id.is_empty() {
                    "-".into()
                } else {
                    letter.message_id.clone()
                },
                letter.job.clone().unwrap_or_else(|| "-".into()),
                letter.attempt.to_string(),
                letter.failed_at_ms.map_or_else(|| "-".into(), failed_at),
                letter
                    .error
                    .as_deref()
                    .map_or_else(|| "-".into(), |error| one_line(error, ERROR_COLUMN)),
            ]
        })
        .collect();
    render_table(["ID", "JOB", "ATTEMPT", "FAILED AT", "ERROR"], &rows)
}

/// RFC 3339 in UTC with milliseconds, or the raw number when out of range.
fn failed_at(millis: u64) -> String {
    if millis > LAST_RFC3339_MILLIS {
        return millis.to_string();
    }
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(millis)).to_string()
}

/// `text` on one line, cut to `max` characters with a marked cut.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(3)).collect();
    cut.push_str("...");
    cut
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<DlqCommand, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("worker").chain(args.iter().copied()))?;
        match cli.command {
            Command::Dlq(command) => Ok(command),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn replay_takes_exactly_one_of_id_and_all() {
        assert!(matches!(
            parse(&["dlq", "replay", "email", "--id", "m-1"]),
            Ok(DlqCommand::Replay(ReplayArgs {
                id: Some(_),
                all: false,
                ..
            }))
        ));
        assert!(matches!(
            parse(&["dlq", "replay", "email", "--all"]),
            Ok(DlqCommand::Replay(ReplayArgs {
                id: None,
                all: true,
                ..
            }))
        ));
        assert!(parse(&["dlq", "replay", "email"]).is_err());
        assert!(parse(&["dlq", "replay", "email", "--all", "--id", "m-1"]).is_err());
    }

    #[test]
    fn list_defaults_to_twenty_as_a_table() {
        let Ok(DlqCommand::List(args)) = parse(&["dlq", "list", "email"]) else {
            panic!("dlq list parses");
        };
        assert_eq!(
            (args.queue.as_str(), args.limit, args.json),
            ("email", 20, false)
        );
    }

    #[test]
    fn failed_at_is_rfc3339_utc_with_millis() {
        assert_eq!(failed_at(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(failed_at(u64::MAX), u64::MAX.to_string());
    }

    #[test]
    fn errors_are_flattened_and_cut_on_a_char_boundary() {
        assert_eq!(one_line("line one\nline two", 80), "line one line two");
        let cut = one_line(&"é".repeat(100), 80);
        assert_eq!(cut.chars().count(), 80);
        assert!(cut.ends_with("..."));
    }

    #[test]
    fn the_table_has_a_row_per_dead_letter() {
        let letter = DeadLetter::from_message(&lapin::BasicProperties::default(), b"{}");
        let table = dead_letters_table(&[letter]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["ID", "JOB", "ATTEMPT", "FAILED", "AT", "ERROR"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["-", "-", "0", "-", "-"]
        );
    }
}
