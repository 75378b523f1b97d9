//! The edge binary: see [`edge::run_process`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    edge::run_process(std::env::args()).await
}
