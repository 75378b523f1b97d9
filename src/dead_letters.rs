//! `rentalbook dead-letters`: lists the events a consumer gave up on, and
//! gives them back to the stream once their cause is mended. Works on NATS
//! JetStream (with `NATS_URL`) and on the all-in-one's embedded bus (its
//! data directory).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use prost::Message;
use rentalbook_plumbing::bus::{DeadLetter, EventBus, NatsBus, NatsSettings};
use rentalbook_plumbing::embedded_bus::EmbeddedBus;
use rentalbook_proto::events::v1::Envelope;

#[derive(Args, Debug)]
pub struct DeadLetterArgs {
    #[command(subcommand)]
    action: Action,
    /// NATS JetStream to read; without it, the all-in-one's embedded bus.
    #[arg(long, env = "NATS_URL", global = true)]
    nats_url: Option<String>,
    #[arg(long, env = "NATS_STREAM", default_value = "RENTALBOOK", global = true)]
    nats_stream: String,
    #[arg(
        long,
        env = "NATS_SUBJECT_PREFIX",
        default_value = "rentalbook",
        global = true
    )]
    nats_subject_prefix: String,
    /// The all-in-one's data directory (its `events.db`).
    #[arg(
        long,
        env = "RENTALBOOK_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    data_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// One line per dead letter: id, consumer, subject, event id, when, why.
    List,
    /// Publishes dead letters again for their consumers and removes them.
    Replay {
        /// The ids `list` shows.
        ids: Vec<u64>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

async fn open(args: &DeadLetterArgs) -> anyhow::Result<Arc<dyn EventBus>> {
    Ok(match &args.nats_url {
        Some(url) => NatsBus::connect(NatsSettings {
            url: url.clone(),
            stream: args.nats_stream.clone(),
            subject_prefix: args.nats_subject_prefix.clone(),
            max_age: None,
            replicas: 1,
            client_name: "rentalbook dead-letters".into(),
        })
        .await
        .with_context(|| format!("connecting to NATS at {url}"))?,
        None => {
            let file = args.data_dir.join("events.db");
            anyhow::ensure!(
                file.exists(),
                "no event log at {} (give --data-dir, or NATS_URL for the mesh)",
                file.display()
            );
            EmbeddedBus::open(&format!("sqlite://{}", file.display())).await?
        }
    })
}

fn line(letter: &DeadLetter) -> String {
    let event_id = Envelope::decode(letter.payload.as_ref())
        .ok()
        .map(|e| e.event_id)
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| "(not an event)".into());
    let when = letter
        .stored_at
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into());
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}",
        letter.id, letter.consumer, letter.subject, event_id, when, letter.reason
    )
}

/// Runs the command; false when something asked for was not done.
pub async fn run(args: DeadLetterArgs) -> anyhow::Result<bool> {
    let bus = open(&args).await?;
    match args.action {
        Action::List => {
            let letters = bus.dead_letters().await?;
            println!("id\tconsumer\tsubject\tevent_id\tdead_lettered_at\treason");
            for letter in &letters {
                println!("{}", line(letter));
            }
            eprintln!("{} dead letter(s)", letters.len());
            Ok(true)
        }
        Action::Replay { ids, all } => {
            let ids = if all {
                bus.dead_letters().await?.iter().map(|l| l.id).collect()
            } else {
                anyhow::ensure!(!ids.is_empty(), "name the dead letters to replay, or --all");
                ids
            };
            let mut ok = true;
            for id in ids {
                if bus.replay_dead_letter(id).await? {
                    println!("replayed {id}");
                } else {
                    eprintln!("no dead letter {id}");
                    ok = false;
                }
            }
            Ok(ok)
        }
    }
}
