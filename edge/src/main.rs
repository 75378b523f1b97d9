//! The edge binary: flags and environment into [`edge::Config`], then serve
//! until SIGTERM or Ctrl-C.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = edge::Config::parse();
    rentalbook_plumbing::telemetry::init_logging(&config.log_format);
    let app = edge::App::build(config).await?;
    app.run(rentalbook_plumbing::serve::shutdown_on_signal())
        .await
}
