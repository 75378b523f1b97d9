//! `rentalbook-bench`: runs the benchmark, prints the markdown tables and
//! writes the JSON report. See `docs/BENCHMARKS.md`.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use rentalbook_bench::{EchoMode, Options, Phase, ReadyWait, TargetSpec, TransportKind};
use rentalbook_plumbing::config::PolicyDuration;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TargetKind {
    /// The `rentalbook` process: every service in one, SQLite, embedded event bus.
    AllInOne,
    /// Each service its own process on PostgreSQL and NATS JetStream.
    Mesh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Transports {
    /// gRPC straight to the services.
    Grpc,
    /// REST/JSON through the edge (HTTP/1.1, My Page as Server-Sent Events).
    Rest,
    /// Each phase over gRPC, then over REST (`read`, then `read-rest`).
    Both,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Wait {
    Watch,
    Poll,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Echo {
    /// A child process (this binary, `serve-echo`), like the target: the default.
    Child,
    /// In the harness's process, on a runtime of its own.
    InProcess,
}

#[derive(Parser, Debug)]
#[command(
    name = "rentalbook-bench",
    version,
    about = "Benchmarks rentalbook: journeys/s, latency per call, event-to-view lag, memory and CPU, against a bare tonic echo and raw insert transactions measured in the same run",
    after_help = "Phases, in order: mixed (journeys + reads, --duration), half-load (the mixed load paced to half), read (GetBook back to back), reserve (Reserve + CancelReservation back to back), echo (bare tonic echo), insert-tx (one-row insert transactions on the same database). Every phase but mixed lasts --phase-duration; the ceiling phases run members + readers workers. The first four run over each --transport in turn; over REST their names end in -rest (mixed-rest, read-rest, ...)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// What to benchmark.
    #[arg(long, value_enum, default_value = "all-in-one")]
    target: TargetKind,

    /// The `rentalbook` binary; by default the one beside this binary, else target/release/rentalbook.
    #[arg(long)]
    rentalbook_bin: Option<PathBuf>,

    /// What the product's phases (mixed, half-load, read, reserve) run over.
    #[arg(long, value_enum, default_value = "both")]
    transport: Transports,

    /// Mesh: a PostgreSQL server (`postgres://user@host:port`) on which each service gets a new
    /// database of its own; by default a private server is started for the run.
    #[arg(long)]
    database_url_base: Option<String>,

    /// Mesh: a NATS server with JetStream (a new stream for the run); by default a private server.
    #[arg(long)]
    nats_url: Option<String>,

    /// Mesh: run the private PostgreSQL durable, flushing every commit to disk (fsync and
    /// synchronous_commit on, PostgreSQL's defaults) instead of with both off as the tests do.
    #[arg(long, conflicts_with = "database_url_base")]
    durable_postgres: bool,

    /// Mesh: load pg_stat_statements into the private PostgreSQL and report, per phase, the
    /// statements that cost it most (planning and execution time, calls per write RPC).
    #[arg(long, conflicts_with = "database_url_base")]
    pg_statements: bool,

    /// Length of the mixed phase (default 10s; 2s with --smoke).
    #[arg(long)]
    duration: Option<PolicyDuration>,

    /// Length of every other phase (default 5s; 0.7s with --smoke).
    #[arg(long)]
    phase_duration: Option<PolicyDuration>,

    /// Unmeasured mixed load first (default 2s, none with --smoke); `0` for none.
    #[arg(long)]
    warmup: Option<String>,

    /// Virtual members going through journeys (default 16; 4 with --smoke).
    #[arg(long)]
    members: Option<usize>,

    /// Readers calling GetBook and GetMyPage (default 4; 2 with --smoke).
    #[arg(long)]
    readers: Option<usize>,

    /// Reads per second of all readers together in the mixed phase; 0 for back to back
    /// (default 200; 50 with --smoke).
    #[arg(long)]
    read_rate: Option<f64>,

    /// Books in the catalogue (default: one for every two members).
    #[arg(long)]
    books: Option<usize>,

    /// Copies of each book (default 1).
    #[arg(long)]
    copies: Option<i32>,

    /// Journeys before a virtual member takes a fresh identity; 0 keeps one identity (default 20).
    #[arg(long)]
    member_journeys: Option<u32>,

    /// gRPC connections to each service and to the echo server (default 4; 2 with --smoke);
    /// REST opens an HTTP/1.1 connection for each request in flight.
    #[arg(long)]
    connections: Option<usize>,

    /// How a queued member learns that its reservation is READY.
    #[arg(long, value_enum, default_value = "watch")]
    ready_wait: Wait,

    /// Phases to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    phases: Option<Vec<String>>,

    /// Where the echo server runs.
    #[arg(long, value_enum, default_value = "child")]
    echo: Echo,

    /// Seed of the book and page choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Do not restart the all-in-one at the end to measure a warm start.
    #[arg(long)]
    no_restart: bool,

    /// A few seconds with small numbers.
    #[arg(long)]
    smoke: bool,

    /// The JSON report.
    #[arg(long, default_value = "bench-report.json")]
    out: PathBuf,

    /// Also write the markdown tables to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,

    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the fault campaign: a seeded workload of whole journeys under a seeded schedule of
    /// faults, then `rentalbook check` over the history, the databases and the stream
    /// (docs/FAULTS.md). Exits with 1 when the check finds anything.
    Chaos(ChaosArgs),
    /// Serves the bare echo of the gRPC baseline and prints its address (used by the harness).
    #[command(hide = true)]
    ServeEcho {
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: std::net::SocketAddr,
    },
}

#[derive(clap::Args, Debug)]
struct ChaosArgs {
    /// What to run the campaign against.
    #[arg(long, value_enum, default_value = "mesh")]
    target: TargetKind,

    /// The `rentalbook` binary; by default the one beside this binary, else target/release/rentalbook.
    #[arg(long)]
    rentalbook_bin: Option<PathBuf>,

    /// Mesh: a PostgreSQL server (`postgres://user@host:port`) on which each service gets a new
    /// database of its own; by default a private server is started for the run. NATS is always
    /// a private server, so that it can be stopped.
    #[arg(long)]
    database_url_base: Option<String>,

    /// Seed of the fault schedule and of the members' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// How long faults are injected; then the campaign heals, waits for quiet and checks.
    #[arg(long, default_value = "60s")]
    duration: PolicyDuration,

    /// At most this many faults.
    #[arg(long)]
    faults: Option<usize>,

    /// Kinds of fault, comma-separated: kill, stop, db, nats, proxy (the all-in-one suffers
    /// kill, stop and db: a SQLite file's write lock held from outside).
    #[arg(long, value_delimiter = ',', default_value = "kill,stop,db,nats,proxy")]
    kinds: Vec<String>,

    /// Members going through journeys at once.
    #[arg(long, default_value_t = 8)]
    members: usize,

    /// Books in the catalogue (half with one copy, half with two).
    #[arg(long, default_value_t = 4)]
    books: usize,

    /// Shortest fault.
    #[arg(long, default_value = "500ms")]
    fault_min: PolicyDuration,

    /// Longest fault.
    #[arg(long, default_value = "2500ms")]
    fault_max: PolicyDuration,

    /// How long the system may take to become quiet and consistent once the faults end.
    #[arg(long, default_value = "90s")]
    quiet_within: PolicyDuration,

    /// Keep the logs, data, history and check report in this directory (kept anyway, in a
    /// temp dir, when anomalies are found).
    #[arg(long)]
    keep: Option<PathBuf>,

    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,

    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

fn chaos_options(args: &ChaosArgs) -> anyhow::Result<rentalbook_bench::chaos::ChaosOptions> {
    use rentalbook_bench::chaos::{Backend, ChaosOptions, faults::Kind};
    let bin = rentalbook_bin(&args.rentalbook_bin)?;
    let backend = match args.target {
        TargetKind::AllInOne => Backend::AllInOne,
        TargetKind::Mesh => Backend::Mesh {
            database_url_base: args.database_url_base.clone(),
        },
    };
    let mut o = ChaosOptions::new(backend, bin);
    o.kinds = args
        .kinds
        .iter()
        .map(|k| {
            Kind::parse(k.trim()).with_context(|| {
                format!("`{k}` is not a kind of fault (kill, stop, db, nats, proxy)")
            })
        })
        .collect::<anyhow::Result<_>>()?;
    o.seed = args.seed;
    o.duration = args.duration.get();
    o.max_faults = args.faults;
    o.members = args.members.max(1);
    o.books = args.books.max(1);
    anyhow::ensure!(
        args.fault_min <= args.fault_max,
        "--fault-min is longer than --fault-max"
    );
    o.lasting = (args.fault_min.get(), args.fault_max.get());
    o.quiet_within = args.quiet_within.get();
    o.keep = args.keep.clone();
    o.progress = !args.quiet;
    Ok(o)
}

/// The `rentalbook` binary to run: the one given, else [`default_rentalbook`].
fn rentalbook_bin(given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let bin = given.clone().unwrap_or_else(default_rentalbook);
    anyhow::ensure!(
        bin.exists(),
        "{} does not exist: build it with `cargo build --release -p rentalbook`, or give --rentalbook-bin",
        bin.display()
    );
    Ok(bin)
}

fn default_rentalbook() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("rentalbook")));
    match beside {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("target/release/rentalbook"),
    }
}

fn options(cli: &Cli) -> anyhow::Result<Options> {
    let bin = rentalbook_bin(&cli.rentalbook_bin)?;
    let transports = match cli.transport {
        Transports::Grpc => vec![TransportKind::Grpc],
        Transports::Rest => vec![TransportKind::Rest],
        Transports::Both => TransportKind::ALL.to_vec(),
    };
    let spec = match cli.target {
        TargetKind::AllInOne => TargetSpec::AllInOne { bin },
        TargetKind::Mesh => TargetSpec::Mesh {
            bin,
            edge: cli.transport != Transports::Grpc,
            database_url_base: cli.database_url_base.clone(),
            nats_url: cli.nats_url.clone(),
            durable_postgres: cli.durable_postgres,
            pg_statements: cli.pg_statements,
        },
    };
    let mut o = if cli.smoke {
        Options::smoke(spec)
    } else {
        Options::new(spec)
    };
    let d = |p: Option<PolicyDuration>| p.map(PolicyDuration::get);
    if let Some(v) = d(cli.duration) {
        o.duration = v;
    }
    if let Some(v) = d(cli.phase_duration) {
        o.phase_duration = v;
    }
    if let Some(w) = &cli.warmup {
        o.warmup = if w.trim() == "0" {
            Duration::ZERO
        } else {
            w.parse::<PolicyDuration>()
                .map_err(anyhow::Error::msg)
                .context("--warmup")?
                .get()
        };
    }
    o.members = cli.members.unwrap_or(o.members);
    o.readers = cli.readers.unwrap_or(o.readers);
    o.read_rate = cli.read_rate.unwrap_or(o.read_rate);
    o.books = cli.books.unwrap_or(o.books);
    o.copies = cli.copies.unwrap_or(o.copies);
    o.member_journeys = cli.member_journeys.unwrap_or(o.member_journeys);
    o.connections = cli.connections.unwrap_or(o.connections);
    o.ready_wait = match cli.ready_wait {
        Wait::Watch => ReadyWait::Watch,
        Wait::Poll => ReadyWait::Poll,
    };
    if let Some(names) = &cli.phases {
        let mut phases = names
            .iter()
            .map(|n| {
                Phase::parse(n.trim())
                    .with_context(|| format!("`{n}` is not a phase ({})", phase_names()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        phases.sort();
        phases.dedup();
        o.phases = phases;
    }
    o.transports = transports;
    o.echo = match cli.echo {
        Echo::Child => EchoMode::Child(std::env::current_exe().context("this binary's path")?),
        Echo::InProcess => EchoMode::InProcess,
    };
    o.seed = cli.seed;
    o.restart = !cli.no_restart;
    o.progress = !cli.quiet;
    anyhow::ensure!(o.members + o.readers > 0, "no members and no readers");
    Ok(o)
}

fn phase_names() -> String {
    Phase::ALL
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(Command::ServeEcho { addr }) = cli.command {
        return runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let mut out = std::io::stdout();
            writeln!(out, "listening on {}", listener.local_addr()?)?;
            out.flush()?;
            rentalbook_bench::echo::serve(listener).await
        });
    }
    if let Some(Command::Chaos(args)) = &cli.command {
        let opts = chaos_options(args)?;
        let report = runtime.block_on(rentalbook_bench::chaos::run(opts))?;
        let text = report.to_text();
        println!("{text}");
        if let Some(path) = &args.out {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
        }
        if !report.anomalies.is_empty() {
            std::process::exit(1);
        }
        return Ok(());
    }
    let opts = options(&cli)?;
    let report = runtime.block_on(rentalbook_bench::run(opts))?;
    let markdown = report.to_markdown();
    println!("{markdown}");
    std::fs::write(&cli.out, report.to_json())
        .with_context(|| format!("writing {}", cli.out.display()))?;
    if let Some(path) = &cli.markdown {
        std::fs::write(path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    }
    if !cli.quiet {
        eprintln!("[rentalbook-bench] JSON report in {}", cli.out.display());
    }
    Ok(())
}
