//! rentalbook-bench: journeys per second, latency per call, event-to-view
//! lag and the footprint of rentalbook, against two ceilings measured in the
//! same run on the same machine with the same client concurrency: a bare
//! tonic echo server (gRPC) and single-row insert transactions on the same
//! database (storage).
//!
//! [`run`] starts the target (the all-in-one process, or the mesh of four
//! service processes on PostgreSQL and NATS), registers books, and runs the
//! phases in turn:
//!
//! * `mixed`: N virtual members go through whole journeys (Reserve, wait
//!   for READY, Rent, ReturnRental) while watching their My Page, and R
//!   readers call GetBook and GetMyPage; journeys/s, calls/s, latency per
//!   call, event-to-view lag, errors by code, CPU and memory.
//! * `half-load`: the same, paced to half the journeys/s and reads/s the
//!   mixed phase reached: the lag at half the maximum load.
//! * `read`: N + R workers calling GetBook back to back: the read ceiling.
//! * `reserve`: N + R workers, each a member of its own, calling Reserve then
//!   CancelReservation back to back: the write ceiling of the desk.
//! * `echo`: N + R workers calling the bare echo server over the same
//!   connection pool: the gRPC ceiling.
//! * `insert-tx`: N + R workers committing one-row insert transactions on
//!   the services' database server: the storage ceiling.
//!
//! The calls go through the [`client::Client`] trait, over gRPC straight to
//! the services or over REST through the edge ([`rest`]: HTTP/1.1, proto3
//! JSON, My Page as Server-Sent Events). The mixed, half-load, read and
//! reserve phases run over each transport asked for, one after the other
//! (`read`, then `read-rest`), so one run shows both side by side; the
//! baselines are gRPC (echo) and storage (insert-tx).

pub mod baseline;
pub mod chaos;
pub mod client;
pub mod echo;
pub mod pgstats;
pub mod procstat;
pub mod report;
pub mod rest;
pub mod stats;
pub mod target;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rentalbook_plumbing::auth::Role;
use tokio::task::JoinHandle;

pub use report::Report;
pub use target::TargetSpec;
pub use workload::ReadyWait;

use client::{GrpcTransport, Transport};
use report::{
    Comparison, DbStatements, ErrorCount, Harness, LagFigures, PhaseReport, ProcessPhase,
    ProcessTotals, Ratios, RestFigures, RpcFigures, TargetCheck, TargetInfo,
};
use rest::RestTransport;
use stats::{Latency, Recorder};
use workload::Ctx;

/// The phases a run may have, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Mixed,
    HalfLoad,
    Read,
    Reserve,
    Echo,
    InsertTx,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Mixed,
        Phase::HalfLoad,
        Phase::Read,
        Phase::Reserve,
        Phase::Echo,
        Phase::InsertTx,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Mixed => "mixed",
            Phase::HalfLoad => "half-load",
            Phase::Read => "read",
            Phase::Reserve => "reserve",
            Phase::Echo => "echo",
            Phase::InsertTx => "insert-tx",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Whether the phase calls the product, and so runs over every transport
    /// of the run; echo and insert-tx are baselines of their own.
    pub fn over_transports(self) -> bool {
        !matches!(self, Phase::Echo | Phase::InsertTx)
    }
}

/// How the harness calls the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TransportKind {
    /// gRPC straight to the services.
    Grpc,
    /// REST/JSON through the edge.
    Rest,
}

impl TransportKind {
    pub const ALL: [TransportKind; 2] = [TransportKind::Grpc, TransportKind::Rest];

    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Grpc => "grpc",
            TransportKind::Rest => "rest",
        }
    }

    /// The report's name of `phase` over this transport: `read` over gRPC,
    /// `read-rest` over REST.
    pub fn phase_name(self, phase: Phase) -> String {
        match self {
            TransportKind::Grpc => phase.name().to_owned(),
            TransportKind::Rest => format!("{}-rest", phase.name()),
        }
    }
}

/// Where the echo server of the gRPC baseline runs.
#[derive(Clone, Debug)]
pub enum EchoMode {
    /// In the harness's process, on a runtime of its own.
    InProcess,
    /// A child process: this binary (the bench) with `serve-echo`.
    Child(PathBuf),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub target: TargetSpec,
    /// Length of the mixed phase.
    pub duration: Duration,
    /// Length of each other phase.
    pub phase_duration: Duration,
    /// Mixed load before the mixed phase, not measured.
    pub warmup: Duration,
    pub members: usize,
    pub readers: usize,
    /// Reads per second the readers hold together in the mixed phase; 0:
    /// back to back (then faster reads take CPU from the journeys, and
    /// mixed phases of two builds do not compare).
    pub read_rate: f64,
    /// Books in the catalogue; 0 means one for every two members.
    pub books: usize,
    pub copies: i32,
    /// Journeys before a virtual member takes a fresh identity (0: never),
    /// which keeps pages the size a real member's has.
    pub member_journeys: u32,
    /// gRPC connections to each service (and to the echo server).
    pub connections: usize,
    pub ready_wait: ReadyWait,
    pub phases: Vec<Phase>,
    /// The transports the mixed, half-load, read and reserve phases run
    /// over, each in turn.
    pub transports: Vec<TransportKind>,
    pub echo: EchoMode,
    pub seed: u64,
    /// All-in-one: stop it after the phases and start it again on the same
    /// data, measuring the warm start.
    pub restart: bool,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl Options {
    /// The defaults of the command line.
    pub fn new(target: TargetSpec) -> Self {
        Self {
            target,
            duration: Duration::from_secs(10),
            phase_duration: Duration::from_secs(5),
            warmup: Duration::from_secs(2),
            members: 16,
            readers: 4,
            read_rate: 200.0,
            books: 0,
            copies: 1,
            member_journeys: 20,
            connections: 4,
            ready_wait: ReadyWait::Watch,
            phases: Phase::ALL.to_vec(),
            transports: TransportKind::ALL.to_vec(),
            echo: EchoMode::InProcess,
            seed: 1,
            restart: true,
            progress: false,
        }
    }

    /// A few seconds with small numbers: that the harness works, nothing more.
    pub fn smoke(target: TargetSpec) -> Self {
        Self {
            duration: Duration::from_secs(2),
            phase_duration: Duration::from_millis(700),
            warmup: Duration::ZERO,
            members: 4,
            readers: 2,
            read_rate: 50.0,
            connections: 2,
            ..Self::new(target)
        }
    }

    fn concurrency(&self) -> usize {
        (self.members + self.readers).max(1)
    }

    fn book_count(&self) -> usize {
        if self.books > 0 {
            self.books
        } else {
            self.members.div_ceil(2).max(1)
        }
    }
}

fn say(opts: &Options, what: impl std::fmt::Display) {
    if opts.progress {
        eprintln!("[rentalbook-bench] {what}");
    }
}

type Workers = Vec<JoinHandle<(Recorder, Instant)>>;

/// Where one of the exported counters goes in [`DbCounters`].
type CounterField = fn(&mut DbCounters) -> &mut u64;

/// One database's counters as its service exports them.
#[derive(Clone, Copy, Default)]
struct DbCounters {
    statements: u64,
    wait_us: u64,
    held_us: u64,
    commit_us: u64,
    group_commits: u64,
    grouped_requests: u64,
}

impl DbCounters {
    fn since(self, before: Self) -> Self {
        Self {
            statements: self.statements.saturating_sub(before.statements),
            wait_us: self.wait_us.saturating_sub(before.wait_us),
            held_us: self.held_us.saturating_sub(before.held_us),
            commit_us: self.commit_us.saturating_sub(before.commit_us),
            group_commits: self.group_commits.saturating_sub(before.group_commits),
            grouped_requests: self
                .grouped_requests
                .saturating_sub(before.grouped_requests),
        }
    }
}

/// Processes whose CPU a phase accounts.
struct Watched {
    procs: Vec<(String, u32)>,
    /// Servers counted with their children (PostgreSQL's backends).
    trees: Vec<(String, u32)>,
    /// Where the processes export their metrics.
    metrics: Vec<std::net::SocketAddr>,
    /// PostgreSQL's own figures per statement (`--pg-statements`).
    pg: Option<pgstats::PgStats>,
}

impl Watched {
    fn of(target: &target::Target) -> Self {
        Self {
            procs: target
                .procs
                .iter()
                .map(|p| (p.name.clone(), p.pid))
                .collect(),
            trees: target.servers.clone(),
            metrics: target.metrics.clone(),
            pg: None,
        }
    }

    fn just(procs: Vec<(String, u32)>) -> Self {
        Self {
            procs,
            trees: Vec::new(),
            metrics: Vec::new(),
            pg: None,
        }
    }

    /// What each database's writers have done so far, by database: the
    /// statements asked (`db_statements_total`) and the writers' times.
    async fn db_counters(&self) -> BTreeMap<String, DbCounters> {
        let mut all: BTreeMap<String, DbCounters> = BTreeMap::new();
        let client = reqwest::Client::new();
        for addr in &self.metrics {
            let text = match client
                .get(format!("http://{addr}/metrics"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
            {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => continue,
            };
            use rentalbook_plumbing::db;
            let fields: [(&str, CounterField); 6] = [
                (db::STATEMENTS_METRIC, |c| &mut c.statements),
                (db::WRITER_WAIT_METRIC, |c| &mut c.wait_us),
                (db::WRITER_HELD_METRIC, |c| &mut c.held_us),
                (db::COMMIT_METRIC, |c| &mut c.commit_us),
                (db::GROUP_COMMITS_METRIC, |c| &mut c.group_commits),
                (db::GROUPED_REQUESTS_METRIC, |c| &mut c.grouped_requests),
            ];
            for (metric, field) in fields {
                for (name, n) in report::parse_counter(&text, metric, "db") {
                    *field(all.entry(name).or_default()) += n;
                }
            }
        }
        all
    }

    fn names(&self) -> impl Iterator<Item = &(String, u32)> {
        self.procs.iter().chain(&self.trees)
    }

    fn cpu(&self) -> Vec<f64> {
        let own = self
            .procs
            .iter()
            .map(|(_, pid)| procstat::cpu_seconds(*pid).unwrap_or(0.0));
        let trees = self
            .trees
            .iter()
            .map(|(_, pid)| procstat::tree_cpu_seconds(*pid).unwrap_or(0.0));
        own.chain(trees).collect()
    }

    /// Waits until the processes use less than 3 % of a core over 200 ms
    /// (twice in a row), at most 10 s: the last phase's backlog is done.
    async fn settle(&self) -> Duration {
        let started = Instant::now();
        let mut quiet = 0;
        while started.elapsed() < Duration::from_secs(10) && quiet < 2 {
            let before = self.cpu();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let used: f64 = self.cpu().iter().zip(&before).map(|(a, b)| a - b).sum();
            quiet = if used < 0.006 { quiet + 1 } else { 0 };
        }
        started.elapsed()
    }
}

struct PhaseSpec {
    name: String,
    transport: &'static str,
    what: String,
    concurrency: usize,
    length: Duration,
    paced: Option<f64>,
}

/// Runs one phase: settles, starts the workers, waits for them, and turns
/// what they recorded and what the processes used into a report.
async fn measure(
    spec: PhaseSpec,
    watched: &Watched,
    start: impl FnOnce(Instant) -> Workers,
) -> PhaseReport {
    let settle = watched.settle().await;
    let statements0 = watched.db_counters().await;
    let counted_from = Instant::now();
    if let Some(pg) = &watched.pg {
        pg.reset().await;
    }
    let cpu0 = watched.cpu();
    let me0 = procstat::sample_self().cpu_seconds;
    let machine0 = procstat::machine_ticks();
    let began = Instant::now();
    let workers = start(began + spec.length);
    let mut rec = Recorder::default();
    let mut finished = began;
    for w in workers {
        if let Ok((r, done)) = w.await {
            rec.merge(&r);
            finished = finished.max(done);
        }
    }
    let accounted = began.elapsed().as_secs_f64().max(1e-6);
    let seconds = finished.duration_since(began).as_secs_f64().max(1e-6);
    let cpu1 = watched.cpu();
    let me1 = procstat::sample_self().cpu_seconds;
    let machine1 = procstat::machine_ticks();
    // What the phase's events cost the consumers counts too: wait for the
    // backlog to drain before reading the counters again.
    if !watched.metrics.is_empty() || watched.pg.is_some() {
        watched.settle().await;
    }
    let statements = if watched.metrics.is_empty() {
        Vec::new()
    } else {
        let statements1 = watched.db_counters().await;
        let counted_seconds = counted_from.elapsed().as_secs_f64();
        statements1
            .into_iter()
            .map(|(db, n)| {
                let d = n.since(statements0.get(&db).copied().unwrap_or_default());
                DbStatements {
                    db,
                    statements: d.statements,
                    counted_seconds,
                    writer_wait_ms: d.wait_us as f64 / 1000.0,
                    writer_held_ms: d.held_us as f64 / 1000.0,
                    commit_ms: d.commit_us as f64 / 1000.0,
                    group_commits: d.group_commits,
                    grouped_requests: d.grouped_requests,
                }
            })
            .collect()
    };
    let pg_statements = match &watched.pg {
        Some(pg) => pg.read().await.ok(),
        None => None,
    };

    let rpcs = rec
        .calls
        .iter()
        .map(|(name, h)| RpcFigures {
            rpc: (*name).to_owned(),
            calls: h.len(),
            per_second: h.len() as f64 / seconds,
            errors: rec.errors_of(name),
            latency: Latency::of(h),
        })
        .collect();
    let processes = watched
        .names()
        .enumerate()
        .map(|(i, (name, pid))| {
            let used = (cpu1[i] - cpu0[i]).max(0.0);
            ProcessPhase {
                process: name.clone(),
                cpu_seconds: used,
                cores: used / accounted,
                rss_kib_at_end: procstat::sample(*pid).map_or(0, |s| s.rss_kib),
            }
        })
        .collect();
    PhaseReport {
        name: spec.name,
        transport: spec.transport.to_owned(),
        what: spec.what,
        concurrency: spec.concurrency,
        seconds,
        journeys: rec.journeys,
        journeys_per_second: rec.journeys as f64 / seconds,
        journeys_abandoned: rec.journeys_abandoned,
        calls: rec.total_calls(),
        calls_per_second: rec.total_calls() as f64 / seconds,
        errors: rec.total_errors(),
        rpcs,
        errors_by_code: rec
            .errors
            .iter()
            .map(|((rpc, code), n)| ErrorCount {
                rpc: (*rpc).to_owned(),
                code: code.clone(),
                count: *n,
            })
            .collect(),
        lag: rec
            .lag
            .iter()
            .map(|(after, h)| LagFigures {
                after: after.replace("→page", ""),
                latency: Latency::of(h),
            })
            .collect(),
        lag_all: Latency::of(&rec.all_lag()),
        lag_missed: rec.lag_missed,
        ready_wait: Latency::of(&rec.ready_wait),
        journey_time: Latency::of(&rec.journey_time),
        processes,
        client_cores: (me1 - me0).max(0.0) / accounted,
        machine_busy_percent: procstat::busy_percent(machine0, machine1),
        settle_ms: settle.as_secs_f64() * 1000.0,
        paced_journeys_per_second: spec.paced,
        statements,
        pg_statements,
    }
}

/// Starts the members and readers of a mixed phase; `pace` is the journeys/s
/// and reads/s to hold (None: as fast as they go).
fn mixed_workers(
    ctx: &Arc<Ctx>,
    opts: &Options,
    until: Instant,
    pace: Option<(f64, f64)>,
    round: u64,
) -> Workers {
    let mut w: Workers = Vec::new();
    for i in 0..opts.members {
        let interval = pace
            .filter(|(j, _)| *j > 0.0)
            .map(|(j, _)| Duration::from_secs_f64(opts.members as f64 / j));
        let seed = opts.seed ^ (round << 32) ^ i as u64;
        w.push(tokio::spawn(workload::member(
            ctx.clone(),
            i,
            until,
            interval,
            seed,
        )));
    }
    let read_rate = match pace {
        Some((_, r)) => r,
        None => opts.read_rate,
    };
    for i in 0..opts.readers {
        let interval =
            (read_rate > 0.0).then(|| Duration::from_secs_f64(opts.readers as f64 / read_rate));
        let seed = opts.seed ^ (round << 32) ^ (1 << 20) ^ i as u64;
        w.push(tokio::spawn(workload::reader(
            ctx.clone(),
            i,
            opts.members + i,
            until,
            interval,
            seed,
        )));
    }
    w
}

fn git_describe() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=10"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The phases of one transport: the context its workers share and what its
/// mixed phase reached (for its half-load phase).
struct Lane {
    kind: TransportKind,
    ctx: Arc<Ctx>,
    full_rates: Option<(f64, f64)>,
}

/// Runs the benchmark and returns its report.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let machine = procstat::machine();
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let concurrency = opts.concurrency();
    let has = |p: Phase| opts.phases.contains(&p);
    let mut kinds = opts.transports.clone();
    kinds.sort();
    kinds.dedup();
    anyhow::ensure!(!kinds.is_empty(), "no transport to run the phases over");
    let rest_phases =
        kinds.contains(&TransportKind::Rest) && opts.phases.iter().any(|p| p.over_transports());

    say(&opts, format!("starting the {} target", opts.target.name()));
    let mut target = target::Target::start(opts.target.clone(), &run_id).await?;
    for s in &target.startups {
        say(
            &opts,
            format!(
                "{}: serving {:.0} ms after spawn, {:.1} MiB idle",
                s.process,
                s.start_to_serving_ms,
                s.idle_rss_kib as f64 / 1024.0
            ),
        );
    }
    anyhow::ensure!(
        !rest_phases || target.has_edge,
        "REST goes through the edge, and this target runs without it (give the edge binary)"
    );
    let grpc: Arc<dyn Transport> =
        Arc::new(GrpcTransport::new(&target.endpoints, opts.connections));
    let librarian = workload::token(
        &target.secret,
        &format!("bench-{run_id}-librarian"),
        Role::Librarian,
    );
    let books = workload::register_books(
        &grpc.client(0),
        &librarian,
        &target.secret,
        &run_id,
        opts.book_count(),
        opts.copies,
    )
    .await
    .context("setting up the catalogue")?;
    let generations = Arc::new((0..opts.members).map(|_| AtomicU32::new(0)).collect());
    let mut lanes = Vec::new();
    for &kind in &kinds {
        let transport: Arc<dyn Transport> = match kind {
            TransportKind::Grpc => grpc.clone(),
            TransportKind::Rest => Arc::new(RestTransport::new(target.endpoints.edge)?),
        };
        let ctx = Arc::new(Ctx {
            transport,
            secret: target.secret.clone(),
            run_id: run_id.clone(),
            books: books.clone(),
            librarian: librarian.clone(),
            member_journeys: opts.member_journeys,
            ready_wait: opts.ready_wait,
            generations: Arc::clone(&generations),
        });
        lanes.push(Lane {
            kind,
            ctx,
            full_rates: None,
        });
    }
    let mut watched = Watched::of(&target);
    if let Some(url) = &target.pg_stats_url {
        watched.pg = Some(pgstats::PgStats::connect(url).await?);
    }
    let mut phases: Vec<PhaseReport> = Vec::new();
    let mixed_what = if opts.read_rate > 0.0 {
        format!(
            "{} members' journeys back to back + {} readers (GetBook, GetMyPage) at {:.0} reads/s",
            opts.members, opts.readers, opts.read_rate
        )
    } else {
        format!(
            "{} members' journeys + {} readers (GetBook, GetMyPage), all back to back",
            opts.members, opts.readers
        )
    };

    if has(Phase::Mixed) || has(Phase::HalfLoad) {
        for lane in &mut lanes {
            let transport = lane.kind.name();
            if !opts.warmup.is_zero() {
                say(
                    &opts,
                    format!("warming up over {transport} for {:?}", opts.warmup),
                );
                let spec = PhaseSpec {
                    name: "warm-up".into(),
                    transport,
                    what: String::new(),
                    concurrency,
                    length: opts.warmup,
                    paced: None,
                };
                measure(spec, &watched, |until| {
                    mixed_workers(&lane.ctx, &opts, until, None, 0)
                })
                .await;
            }
            if !has(Phase::Mixed) {
                continue;
            }
            let name = lane.kind.phase_name(Phase::Mixed);
            say(&opts, format!("{name} phase, {:?}", opts.duration));
            let spec = PhaseSpec {
                name,
                transport,
                what: mixed_what.clone(),
                concurrency,
                length: opts.duration,
                paced: None,
            };
            let p = measure(spec, &watched, |until| {
                mixed_workers(&lane.ctx, &opts, until, None, 1)
            })
            .await;
            let reads = ["GetBook", "GetMyPage"]
                .iter()
                .filter_map(|r| p.rpc(r))
                .map(|r| r.per_second)
                .sum::<f64>();
            lane.full_rates = Some((p.journeys_per_second, reads));
            phases.push(p);
            target.check_alive()?;
        }
    }

    if has(Phase::HalfLoad) {
        for lane in &lanes {
            let Some((j, r)) = lane.full_rates else {
                continue;
            };
            let half = (j / 2.0, r / 2.0);
            let name = lane.kind.phase_name(Phase::HalfLoad);
            say(
                &opts,
                format!(
                    "{name} phase: {:.1} journeys/s, {:.1} reads/s",
                    half.0, half.1
                ),
            );
            let spec = PhaseSpec {
                name,
                transport: lane.kind.name(),
                what: format!(
                    "the mixed load paced to half: {:.1} journeys/s, {:.1} reads/s",
                    half.0, half.1
                ),
                concurrency,
                length: opts.phase_duration.max(Duration::from_secs(1)),
                paced: Some(half.0),
            };
            let p = measure(spec, &watched, |until| {
                mixed_workers(&lane.ctx, &opts, until, Some(half), 2)
            })
            .await;
            phases.push(p);
            target.check_alive()?;
        }
    }

    // The ceilings of the product: reads, then writes, back to back.
    let ceilings = [
        (
            Phase::Read,
            "GetBook",
            format!("{concurrency} workers: GetBook back to back"),
            3u64,
        ),
        (
            Phase::Reserve,
            "Reserve + CancelReservation",
            format!("{concurrency} members: Reserve then CancelReservation, back to back"),
            4,
        ),
    ];
    for (phase, calls, what, seed_tag) in ceilings {
        if !has(phase) {
            continue;
        }
        for lane in &lanes {
            let name = lane.kind.phase_name(phase);
            say(&opts, format!("{name} phase ({calls})"));
            let spec = PhaseSpec {
                name,
                transport: lane.kind.name(),
                what: what.clone(),
                concurrency,
                length: opts.phase_duration,
                paced: None,
            };
            let p = measure(spec, &watched, |until| {
                (0..concurrency)
                    .map(|i| {
                        let ctx = lane.ctx.clone();
                        let seed = opts.seed ^ (seed_tag << 32) ^ i as u64;
                        if phase == Phase::Read {
                            tokio::spawn(workload::book_reader(ctx, i, until, seed))
                        } else {
                            tokio::spawn(workload::reserver(ctx, i, until, seed))
                        }
                    })
                    .collect()
            })
            .await;
            phases.push(p);
            target.check_alive()?;
        }
    }

    let echo_desc = match &opts.echo {
        EchoMode::InProcess => "in the harness's process, on a runtime of its own".to_owned(),
        EchoMode::Child(_) => "a child process (rentalbook-bench serve-echo)".to_owned(),
    };
    if has(Phase::Echo) {
        say(&opts, "echo baseline");
        let echo = match &opts.echo {
            EchoMode::InProcess => echo::RunningEcho::in_process()?,
            EchoMode::Child(bin) => echo::RunningEcho::child(bin).await?,
        };
        let echo_watch = Watched::just(
            echo.pid
                .map(|pid| vec![("echo server".to_owned(), pid)])
                .unwrap_or_default(),
        );
        let channels: Vec<tonic::transport::Channel> = (0..opts.connections.max(1))
            .map(|_| client::channel(echo.addr))
            .collect();
        let token = workload::token(
            &target.secret,
            &format!("bench-{run_id}-echo"),
            Role::Member,
        );
        let book = books[0].clone();
        let spec = PhaseSpec {
            name: Phase::Echo.name().into(),
            transport: TransportKind::Grpc.name(),
            what: format!("{concurrency} workers: bare tonic unary echo, back to back"),
            concurrency,
            length: opts.phase_duration,
            paced: None,
        };
        let p = measure(spec, &echo_watch, |until| {
            (0..concurrency)
                .map(|i| {
                    let channel = channels[i % channels.len()].clone();
                    let token = token.clone();
                    let book = book.clone();
                    tokio::spawn(async move {
                        let mut rec = Recorder::default();
                        while Instant::now() < until {
                            let started = Instant::now();
                            let r = echo::call(channel.clone(), &token, &book).await;
                            rec.call("Echo", started, &r);
                        }
                        (rec, Instant::now())
                    })
                })
                .collect()
        })
        .await;
        echo.stop().await;
        phases.push(p);
    }

    if has(Phase::InsertTx) {
        say(&opts, "insert-transaction baseline");
        let db = baseline::prepare(&target.baseline_db_url)
            .await
            .context("preparing the storage baseline")?;
        let spec = PhaseSpec {
            name: Phase::InsertTx.name().into(),
            transport: "storage",
            what: format!(
                "{concurrency} workers: one-row INSERT transactions on the services' database server"
            ),
            concurrency,
            length: opts.phase_duration,
            paced: None,
        };
        let servers = Watched {
            procs: Vec::new(),
            trees: target.servers.clone(),
            metrics: Vec::new(),
            pg: None,
        };
        let p = measure(spec, &servers, |until| {
            (0..concurrency)
                .map(|i| tokio::spawn(baseline::inserter(db.clone(), i, until)))
                .collect()
        })
        .await;
        db.conn().clone().close().await.ok();
        phases.push(p);
    }

    let processes: Vec<ProcessTotals> = target
        .sample()
        .into_iter()
        .map(|(process, s)| ProcessTotals {
            process,
            peak_rss_kib: s.peak_rss_kib,
            rss_kib_at_end: s.rss_kib,
            cpu_seconds: s.cpu_seconds,
        })
        .collect();
    let restart = if opts.restart && matches!(opts.target, TargetSpec::AllInOne { .. }) {
        say(&opts, "restarting the all-in-one on its data");
        target.restart_all_in_one().await?
    } else {
        None
    };
    let stop_ms = target
        .stop()
        .await
        .into_iter()
        .map(|(n, d)| (n, d.as_secs_f64() * 1000.0))
        .collect();

    let find = |name: &str| phases.iter().find(|p| p.name == name);
    let rate = |phase: &str, rpc: &str| find(phase).and_then(|p| p.rpc(rpc)).map(|r| r.per_second);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let desk_writes = match (
        rate("reserve", "Reserve"),
        rate("reserve", "CancelReservation"),
    ) {
        (Some(a), Some(b)) => Some(a + b),
        _ => None,
    };
    let ratios = Ratios {
        read_vs_echo: ratio(rate("read", "GetBook"), rate("echo", "Echo")),
        reserve_vs_insert_tx: ratio(rate("reserve", "Reserve"), rate("insert-tx", baseline::RPC)),
        desk_writes_vs_insert_tx: ratio(desk_writes, rate("insert-tx", baseline::RPC)),
        rest_read_vs_grpc_read: ratio(rate("read-rest", "GetBook"), rate("read", "GetBook")),
        rest_read_vs_echo: ratio(rate("read-rest", "GetBook"), rate("echo", "Echo")),
        rest_journeys_vs_grpc_journeys: ratio(
            find("mixed-rest").map(|p| p.journeys_per_second),
            find("mixed").map(|p| p.journeys_per_second),
        ),
        rest_reserve_vs_grpc_reserve: ratio(
            rate("reserve-rest", "Reserve"),
            rate("reserve", "Reserve"),
        ),
    };
    let rest = if rest_phases {
        let edge = if matches!(opts.target, TargetSpec::AllInOne { .. }) {
            "the edge inside the all-in-one process"
        } else {
            "the edge process in front of the four services"
        };
        RestFigures {
            note: format!(
                "HTTP/1.1 with keep-alive to {edge} at {}, the bearer token in Authorization, \
                 proto3 JSON both ways (answers decoded into the generated messages by the harness), \
                 My Page watched as Server-Sent Events. Each REST phase ran right after its gRPC twin \
                 with the same workers, books and rules; half-load is paced to half of its own \
                 transport's mixed rates.",
                target.endpoints.edge
            ),
            comparisons: rest_comparisons(&phases),
        }
    } else {
        RestFigures {
            note: "not measured in this run (--transport grpc, or no phase that calls the product)"
                .into(),
            comparisons: Vec::new(),
        }
    };

    let mut targets = Vec::new();
    targets.push(TargetCheck {
        target: "read RPC throughput".into(),
        goal: "≥ ½ of the bare tonic echo".into(),
        measured: match (
            rate("read", "GetBook"),
            rate("echo", "Echo"),
            ratios.read_vs_echo,
        ) {
            (Some(a), Some(b), Some(r)) => format!("GetBook {a:.0}/s vs echo {b:.0}/s = {r:.2}"),
            _ => "–".into(),
        },
        met: ratios.read_vs_echo.map(|r| r >= 0.5),
    });
    targets.push(TargetCheck {
        target: "Reserve throughput".into(),
        goal: "≥ ½ of raw insert transactions".into(),
        measured: match (
            rate("reserve", "Reserve"),
            rate("insert-tx", baseline::RPC),
            ratios.reserve_vs_insert_tx,
        ) {
            (Some(a), Some(b), Some(r)) => format!(
                "Reserve {a:.0}/s (each followed by a Cancel) vs {b:.0} insert tx/s = {r:.2}"
            ),
            _ => "–".into(),
        },
        met: ratios.reserve_vs_insert_tx.map(|r| r >= 0.5),
    });
    let half = find("half-load").filter(|p| p.lag_all.count > 0);
    targets.push(TargetCheck {
        target: "event-to-view lag at half the maximum load".into(),
        goal: "p99 ≤ 50 ms".into(),
        measured: half.map_or("–".into(), |p| {
            format!(
                "p50 {:.1} ms, p99 {:.1} ms over {} changes at {:.1} journeys/s",
                p.lag_all.p50_ms, p.lag_all.p99_ms, p.lag_all.count, p.journeys_per_second
            )
        }),
        met: half.map(|p| p.lag_all.p99_ms <= 50.0),
    });
    let all_in_one = matches!(opts.target, TargetSpec::AllInOne { .. });
    let (rss_goal_mb, rss_goal) = if all_in_one {
        (80.0, "all-in-one < 80 MB idle")
    } else {
        (30.0, "each service < 30 MB idle")
    };
    let worst_rss = target.startups.iter().map(|s| s.idle_rss_kib).max();
    let mb = |kib: u64| kib as f64 * 1024.0 / 1e6;
    targets.push(TargetCheck {
        target: "idle memory".into(),
        goal: rss_goal.into(),
        measured: target
            .startups
            .iter()
            .map(|s| format!("{} {:.1} MB", s.process, mb(s.idle_rss_kib)))
            .collect::<Vec<_>>()
            .join(", "),
        met: worst_rss.map(|k| mb(k) < rss_goal_mb),
    });
    let mut starts: Vec<(String, f64)> = target
        .startups
        .iter()
        .map(|s| (format!("{} cold", s.process), s.start_to_serving_ms))
        .collect();
    if let Some(r) = &restart {
        starts.push((format!("{} warm", r.process), r.start_to_serving_ms));
    }
    targets.push(TargetCheck {
        target: "start to serving".into(),
        goal: "< 1 s (spawn → every health check SERVING, the edge's /healthz answering)".into(),
        measured: starts
            .iter()
            .map(|(n, t)| format!("{n} {t:.0} ms"))
            .collect::<Vec<_>>()
            .join(", "),
        met: Some(starts.iter().all(|(_, t)| *t < 1000.0)),
    });

    let harness = Harness {
        version: env!("CARGO_PKG_VERSION").into(),
        git: git_describe(),
        started_at,
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        transport: kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(" + "),
        members: opts.members,
        readers: opts.readers,
        read_rate: opts.read_rate,
        concurrency,
        connections_per_service: opts.connections.max(1),
        books: books.len(),
        copies_per_book: opts.copies,
        member_journeys_per_identity: opts.member_journeys,
        ready_wait: format!("{:?}", opts.ready_wait).to_lowercase(),
        duration_s: opts.duration.as_secs_f64(),
        phase_duration_s: opts.phase_duration.as_secs_f64(),
        warmup_s: opts.warmup.as_secs_f64(),
        echo_server: echo_desc,
        load_average_at_end: procstat::loadavg(),
    };
    Ok(Report {
        harness,
        machine,
        target: TargetInfo {
            kind: opts.target.name().into(),
            storage: target.storage.clone(),
            events: target.events.clone(),
            startup: target.startups.clone(),
            restart,
            processes,
            stop_ms,
        },
        phases,
        ratios,
        targets,
        rest,
    })
}

/// The REST phases against their gRPC twins, measure by measure.
fn rest_comparisons(phases: &[PhaseReport]) -> Vec<Comparison> {
    let find = |name: &str| phases.iter().find(|p| p.name == name);
    let twins = |phase: Phase| {
        (
            find(&TransportKind::Grpc.phase_name(phase)),
            find(&TransportKind::Rest.phase_name(phase)),
        )
    };
    let echo = find(Phase::Echo.name())
        .and_then(|p| p.rpc("Echo"))
        .map(|r| r.per_second);
    let mut rows = Vec::new();
    let mut row = |measure: String,
                   unit: &str,
                   of: &dyn Fn(&PhaseReport) -> Option<f64>,
                   pair: (Option<&PhaseReport>, Option<&PhaseReport>)| {
        let grpc = pair.0.and_then(of);
        let rest = pair.1.and_then(of);
        if rest.is_some() {
            rows.push(Comparison {
                measure,
                unit: unit.into(),
                grpc,
                rest,
                rest_vs_grpc: match (rest, grpc) {
                    (Some(r), Some(g)) if g > 0.0 => Some(r / g),
                    _ => None,
                },
            });
        }
    };
    let rate = |rpc: &'static str| move |p: &PhaseReport| p.rpc(rpc).map(|r| r.per_second);
    let p50 = |rpc: &'static str| {
        move |p: &PhaseReport| p.rpc(rpc).filter(|r| r.calls > 0).map(|r| r.latency.p50_ms)
    };
    let p99 = |rpc: &'static str| {
        move |p: &PhaseReport| p.rpc(rpc).filter(|r| r.calls > 0).map(|r| r.latency.p99_ms)
    };

    let mixed = twins(Phase::Mixed);
    row(
        "mixed: journeys".into(),
        "/s",
        &|p| (p.journeys > 0).then_some(p.journeys_per_second),
        mixed,
    );
    row(
        "mixed: whole journey p50".into(),
        "ms",
        &|p| (p.journey_time.count > 0).then_some(p.journey_time.p50_ms),
        mixed,
    );
    for rpc in ["Reserve", "Rent", "ReturnRental", "GetBook", "GetMyPage"] {
        row(format!("mixed: {rpc} p50"), "ms", &p50(rpc), mixed);
    }
    row(
        "mixed: event-to-view lag p50".into(),
        "ms",
        &|p| (p.lag_all.count > 0).then_some(p.lag_all.p50_ms),
        mixed,
    );
    let half = twins(Phase::HalfLoad);
    row(
        "half-load: event-to-view lag p50".into(),
        "ms",
        &|p| (p.lag_all.count > 0).then_some(p.lag_all.p50_ms),
        half,
    );
    row(
        "half-load: event-to-view lag p99".into(),
        "ms",
        &|p| (p.lag_all.count > 0).then_some(p.lag_all.p99_ms),
        half,
    );
    let read = twins(Phase::Read);
    row("read: GetBook".into(), "/s", &rate("GetBook"), read);
    row("read: GetBook p50".into(), "ms", &p50("GetBook"), read);
    row("read: GetBook p99".into(), "ms", &p99("GetBook"), read);
    row(
        "read: GetBook/s over the echo's calls/s".into(),
        "×",
        &|p| match (rate("GetBook")(p), echo) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        },
        read,
    );
    row(
        "read: server CPU per GetBook".into(),
        "µs",
        &|p| {
            let calls = p.rpc("GetBook").map_or(0, |r| r.calls);
            (calls > 0 && !p.processes.is_empty()).then(|| {
                p.processes.iter().map(|x| x.cpu_seconds).sum::<f64>() * 1e6 / calls as f64
            })
        },
        read,
    );
    row(
        "read: harness CPU".into(),
        "cores",
        &|p| Some(p.client_cores),
        read,
    );
    let reserve = twins(Phase::Reserve);
    row("reserve: Reserve".into(), "/s", &rate("Reserve"), reserve);
    row(
        "reserve: Reserve p50".into(),
        "ms",
        &p50("Reserve"),
        reserve,
    );
    rows
}
