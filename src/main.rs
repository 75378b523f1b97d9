//! `rentalbook`: the operator's command.

use std::time::Duration;

use clap::{Parser, Subcommand};
use rentalbook_plumbing::auth::{Role, mint};
use rentalbook_plumbing::config::PolicyDuration;
use rentalbook_plumbing::ids::MemberId;

#[derive(Parser)]
#[command(
    name = "rentalbook",
    version,
    about = "Book reservation and rental for libraries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mints a bearer token signed with the HS256 secret, for local use and tests.
    Token {
        /// The member id the token speaks for.
        #[arg(long)]
        sub: String,
        /// member, librarian or service.
        #[arg(long, default_value = "member")]
        role: Role,
        /// How long the token is good for.
        #[arg(long, default_value = "12h")]
        ttl: PolicyDuration,
        /// The secret the services verify tokens with.
        #[arg(long, env = "RENTALBOOK_JWT_SECRET", hide_env_values = true)]
        secret: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Token {
            sub,
            role,
            ttl,
            secret,
        } => {
            let member = MemberId::parse(&sub).map_err(anyhow::Error::msg)?;
            let ttl: Duration = ttl.get();
            println!("{}", mint(&secret, &member, role, ttl)?);
            Ok(())
        }
    }
}
