//! The edge binary: flags and environment into [`edge::Config`], then serve
//! until SIGTERM or Ctrl-C.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = edge::Config::parse();
    rentalbook_plumbing::telemetry::init_logging(&config.log_format);
    if config.dev_sign_in {
        // The services' secret, from the environment only.
        config.dev_sign_in_secret = std::env::var("RENTALBOOK_JWT_SECRET")
            .ok()
            .filter(|s| !s.is_empty())
            .map(edge::DevSignInSecret::new);
    }
    let app = edge::App::build(config).await?;
    app.run(rentalbook_plumbing::serve::shutdown_on_signal())
        .await
}
