use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = notice_svc::Config::parse();
    rentalbook_plumbing::telemetry::init_logging(&config.common.log_format);
    let app = notice_svc::App::build(config).await?;
    app.run(rentalbook_plumbing::serve::shutdown_on_signal())
        .await
}
