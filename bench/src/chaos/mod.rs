//! The fault campaign: runs the mesh (NATS JetStream + PostgreSQL) or the
//! all-in-one (SQLite + the embedded bus) under a seeded concurrent workload
//! of whole journeys, injects a seeded schedule of faults one at a time
//! (SIGKILL and SIGSTOP of each process, each service's database taken away
//! or, on the all-in-one, a SQLite file's write lock held from outside,
//! NATS stopped, delay, drops and resets between rental-svc and reserve-svc
//! through [`proxy::FaultProxy`]), then heals everything, waits for quiet
//! and runs `rentalbook check` over the recorded history, every database and
//! the stream. A seed gives the same schedule and the same members' choices;
//! `duration` and `max_faults` bound it. See docs/FAULTS.md.

pub mod faults;
pub mod history;
pub mod journeys;
pub mod proxy;
pub mod system;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rentalbook_plumbing::auth::Role;

use crate::client::{GrpcTransport, Transport};
use crate::workload::{register_books, token};
use faults::{Fault, Kind, Planned, Schedule, repertoire};
use history::History;
use system::System;

pub use system::Backend;

/// What a campaign does.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    pub backend: Backend,
    /// The `rentalbook` binary.
    pub bin: PathBuf,
    pub seed: u64,
    /// How long faults are injected; the campaign then heals and checks.
    pub duration: Duration,
    /// At most this many faults.
    pub max_faults: Option<usize>,
    pub kinds: Vec<Kind>,
    pub members: usize,
    pub books: usize,
    /// How long each fault lasts, at least and at most.
    pub lasting: (Duration, Duration),
    /// The pause between a recovery and the next fault, at least and at most.
    pub gap: (Duration, Duration),
    /// How long the system may take to become quiet and consistent after
    /// the faults end before what the check finds is reported.
    pub quiet_within: Duration,
    /// Keep logs, data, history and the check's report here.
    pub keep: Option<PathBuf>,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl ChaosOptions {
    pub fn new(backend: Backend, bin: PathBuf) -> Self {
        Self {
            backend,
            bin,
            seed: 1,
            duration: Duration::from_secs(60),
            max_faults: None,
            kinds: Kind::ALL.to_vec(),
            members: 8,
            books: 4,
            lasting: (Duration::from_millis(500), Duration::from_millis(2500)),
            gap: (Duration::from_millis(300), Duration::from_millis(1500)),
            quiet_within: Duration::from_secs(90),
            keep: None,
            progress: true,
        }
    }
}

/// One injected fault.
#[derive(Clone, Debug)]
pub struct Injected {
    pub label: String,
    pub kind: Kind,
    /// When it began, from the start of the schedule.
    pub at: Duration,
    pub lasting: Duration,
    /// From its end until every process served again.
    pub recovered_in: Duration,
}

/// What a campaign did and found.
#[derive(Clone, Debug)]
pub struct ChaosReport {
    pub backend: String,
    pub seed: u64,
    /// The faulty part, from the first fault's schedule to healing.
    pub faulty: Duration,
    /// From the end of the faults to a clean check (or to giving up).
    pub to_quiet: Duration,
    /// Start to end, start-up and checks included.
    pub elapsed: Duration,
    pub faults: Vec<Injected>,
    /// Calls by operation and outcome.
    pub calls: BTreeMap<(String, String), u64>,
    /// Acknowledged returns by the rental's status and confirmation
    /// (`RETURNED PENDING`: the desk was not reached, R8's fallback).
    pub returns: BTreeMap<String, u64>,
    /// What the last check found: invariant and detail.
    pub anomalies: Vec<(String, String)>,
    /// The check's notes (stream size, replay time, ...).
    pub notes: Vec<String>,
    /// Connections through the fault proxy, and how many it reset.
    pub proxied: (u64, u64),
    /// Where logs, data and history were kept, if they were.
    pub kept: Option<PathBuf>,
    /// The end of each process's log, when there were anomalies.
    pub logs: String,
}

impl ChaosReport {
    pub fn faults_by_kind(&self) -> BTreeMap<&'static str, usize> {
        let mut by = BTreeMap::new();
        for f in &self.faults {
            *by.entry(f.kind.name()).or_default() += 1;
        }
        by
    }

    /// Acknowledged calls and those whose outcome stayed unknown.
    pub fn calls_by_verdict(&self) -> BTreeMap<&'static str, u64> {
        let mut by = BTreeMap::new();
        for ((_, outcome), n) in &self.calls {
            let code = if outcome == "OK" {
                None
            } else {
                Some(code_of(outcome))
            };
            let v = match history::verdict(code) {
                history::Verdict::Ok => "acknowledged",
                history::Verdict::Refused => "refused",
                history::Verdict::Indeterminate => "indeterminate",
            };
            *by.entry(v).or_default() += n;
        }
        by
    }

    /// The report in words and tables.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
        let _ = writeln!(
            out,
            "chaos campaign on the {}: seed {}, {} faults in {}, quiet and checked {} later, {} in all",
            self.backend,
            self.seed,
            self.faults.len(),
            secs(self.faulty),
            secs(self.to_quiet),
            secs(self.elapsed)
        );
        let by_kind: Vec<String> = self
            .faults_by_kind()
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(out, "faults by kind: {}", by_kind.join(", "));
        for f in &self.faults {
            let _ = writeln!(
                out,
                "  {:>7} {:<26} for {:>6}, serving again {:>6} after",
                secs(f.at),
                f.label,
                secs(f.lasting),
                secs(f.recovered_in)
            );
        }
        if self.proxied.0 > 0 {
            let _ = writeln!(
                out,
                "fault proxy: {} connections, {} reset",
                self.proxied.0, self.proxied.1
            );
        }
        let mut ops: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for ((op, outcome), n) in &self.calls {
            ops.entry(op).or_default().push(format!("{outcome} {n}"));
        }
        let total: u64 = self.calls.values().sum();
        let verdicts: Vec<String> = self
            .calls_by_verdict()
            .iter()
            .map(|(v, n)| format!("{n} {v}"))
            .collect();
        let _ = writeln!(out, "calls: {total} ({})", verdicts.join(", "));
        for (op, outcomes) in ops {
            let _ = writeln!(out, "  {op:<18} {}", outcomes.join(", "));
        }
        if !self.returns.is_empty() {
            let returns: Vec<String> = self
                .returns
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect();
            let _ = writeln!(out, "acknowledged returns: {}", returns.join(", "));
        }
        for note in &self.notes {
            let _ = writeln!(out, "check: {note}");
        }
        let _ = writeln!(out, "anomalies: {}", self.anomalies.len());
        for (invariant, detail) in &self.anomalies {
            let _ = writeln!(out, "  [{invariant}] {detail}");
        }
        if let Some(dir) = &self.kept {
            let _ = writeln!(out, "logs, data and history kept in {}", dir.display());
        }
        if !self.logs.is_empty() {
            let _ = writeln!(out, "{}", self.logs);
        }
        out
    }
}

fn code_of(name: &str) -> tonic::Code {
    (0..=16)
        .map(tonic::Code::from)
        .find(|c| history::outcome_name(Some(*c)) == name)
        .unwrap_or(tonic::Code::Unknown)
}

/// What one run of `rentalbook check` said.
struct Checked {
    clean: bool,
    anomalies: Vec<(String, String)>,
    notes: Vec<String>,
    /// The check itself failed (not a finding): its output.
    failed: Option<String>,
}

async fn check(system: &System, history: &std::path::Path, skip_replay: bool) -> Checked {
    let cmd = tokio::process::Command::from(system.check_command(history, skip_replay));
    let out = match tokio::time::timeout(Duration::from_secs(300), { cmd }.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            return Checked {
                clean: false,
                anomalies: Vec::new(),
                notes: Vec::new(),
                failed: Some(format!("running rentalbook check: {e}")),
            };
        }
        Err(_) => {
            return Checked {
                clean: false,
                anomalies: Vec::new(),
                notes: Vec::new(),
                failed: Some("rentalbook check took more than 300 s".into()),
            };
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut anomalies = Vec::new();
    let mut notes = Vec::new();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("  [")
            && let Some((invariant, detail)) = rest.split_once("] ")
        {
            anomalies.push((invariant.to_owned(), detail.to_owned()));
        } else if let Some(note) = line.strip_prefix("note: ") {
            notes.push(note.to_owned());
        }
    }
    let reported = stdout.lines().any(|l| l.ends_with("differences:"));
    let failed = (!out.status.success() && !reported).then(|| {
        format!(
            "rentalbook check failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Checked {
        clean: out.status.success(),
        anomalies,
        notes,
        failed,
    }
}

fn say(opts: &ChaosOptions, started: Instant, what: impl std::fmt::Display) {
    if opts.progress {
        eprintln!("[chaos {:>6.1}s] {what}", started.elapsed().as_secs_f64());
    }
}

/// Injects one fault, ends it, and waits until every process serves again.
async fn inject(system: &mut System, planned: &Planned) -> anyhow::Result<Duration> {
    let hold = planned.lasting;
    match &planned.fault {
        Fault::Kill(p) => {
            system.kill(p).await?;
            tokio::time::sleep(hold).await;
            let restarted = Instant::now();
            system.restart(p).await?;
            return heal_all(system, restarted).await;
        }
        Fault::Stop(p) => {
            system.pause(p)?;
            tokio::time::sleep(hold).await;
            system.resume(p)?;
        }
        Fault::DatabaseAway(s) => {
            system.set_database(s, false).await?;
            tokio::time::sleep(hold).await;
            system.set_database(s, true).await?;
        }
        Fault::WriteLock(f) => system.hold_write_lock(f, hold).await?,
        Fault::NatsDown => {
            system.stop_nats().await?;
            tokio::time::sleep(hold).await;
            system.start_nats().await?;
        }
        Fault::Proxy(mode) => {
            let proxy = system.proxy.as_ref().context("no fault proxy")?;
            proxy.set(*mode);
            tokio::time::sleep(hold).await;
            proxy.set(proxy::Mode::Pass);
        }
    }
    heal_all(system, Instant::now()).await
}

async fn heal_all(system: &mut System, since: Instant) -> anyhow::Result<Duration> {
    for name in system.process_names() {
        system.wait_serving(&name, Duration::from_secs(60)).await?;
    }
    Ok(since.elapsed())
}

/// Runs a campaign.
pub async fn run(opts: ChaosOptions) -> anyhow::Result<ChaosReport> {
    let began = Instant::now();
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let mut system = System::start(opts.backend.clone(), &opts.bin, &run_id, opts.keep.clone())
        .await
        .context("starting the system")?;
    say(
        &opts,
        began,
        format!(
            "{} serving; data and logs in {}",
            opts.backend.name(),
            system.dir.display()
        ),
    );
    let outcome = campaign(&opts, &mut system, began).await;
    system.stop().await;
    let mut report = outcome?;
    if !report.anomalies.is_empty() && opts.keep.is_none() {
        report.kept = Some(system.persist());
    }
    report.elapsed = began.elapsed();
    Ok(report)
}

async fn campaign(
    opts: &ChaosOptions,
    system: &mut System,
    began: Instant,
) -> anyhow::Result<ChaosReport> {
    let transport = GrpcTransport::new(&system.endpoints, 1);
    let client = transport.client(0);
    let librarian = token(&system.secret, "chaos-librarian", Role::Librarian);
    let single = opts.books.div_ceil(2);
    let mut books =
        register_books(&client, &librarian, &system.secret, "chaos1", single, 1).await?;
    books.extend(
        register_books(
            &client,
            &librarian,
            &system.secret,
            "chaos2",
            opts.books - single,
            2,
        )
        .await?,
    );

    let history = Arc::new(History::new(Instant::now()));
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(journeys::Members {
        reserve: system.endpoints.reserve,
        rental: system.endpoints.rental,
        secret: system.secret.clone(),
        books,
        history: history.clone(),
        stop: stop.clone(),
    });
    let members: Vec<_> = (0..opts.members)
        .map(|i| tokio::spawn(journeys::member(shared.clone(), i, opts.seed)))
        .collect();

    let schedule = Schedule::new(
        opts.seed,
        repertoire(&opts.backend, &opts.kinds),
        opts.lasting,
        opts.gap,
    );
    let faulty = Instant::now();
    let mut injected = Vec::new();
    for planned in schedule {
        if opts.max_faults.is_some_and(|m| injected.len() >= m)
            || faulty.elapsed() + planned.after + planned.lasting > opts.duration
        {
            break;
        }
        tokio::time::sleep(planned.after).await;
        let at = faulty.elapsed();
        say(
            opts,
            began,
            format!("{} for {:?}", planned.fault.label(), planned.lasting),
        );
        let recovered_in = inject(system, &planned)
            .await
            .with_context(|| format!("injecting {}", planned.fault.label()))?;
        injected.push(Injected {
            label: planned.fault.label(),
            kind: planned.fault.kind(),
            at,
            lasting: planned.lasting,
            recovered_in,
        });
    }
    let remaining = opts.duration.saturating_sub(faulty.elapsed());
    tokio::time::sleep(remaining.min(Duration::from_secs(2))).await;
    system.heal().await?;
    let faulty = faulty.elapsed();
    stop.store(true, Ordering::Relaxed);
    for m in members {
        if tokio::time::timeout(Duration::from_secs(60), m)
            .await
            .is_err()
        {
            anyhow::bail!("a member did not stop within 60 s");
        }
    }
    let quiet_from = Instant::now();
    say(
        opts,
        began,
        format!(
            "faults over; {} calls made; waiting for quiet",
            history.len()
        ),
    );
    let history_file = system.dir.join("history.tsv");
    history.write(&history_file)?;

    // Quiet: the check (without the replay, which takes longest) finds
    // nothing, then the whole check agrees. What is still found when the
    // time is up is what the campaign reports.
    let deadline = quiet_from + opts.quiet_within;
    let last = loop {
        let quick = check(system, &history_file, true).await;
        let full = if quick.clean {
            Some(check(system, &history_file, false).await)
        } else {
            None
        };
        let done = full.as_ref().is_some_and(|f| f.clean);
        let latest = full.unwrap_or(quick);
        if done || Instant::now() >= deadline {
            break latest;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if let Some(failed) = &last.failed {
        anyhow::bail!("{failed}");
    }
    let to_quiet = quiet_from.elapsed();
    say(
        opts,
        began,
        format!("checked: {} anomalies", last.anomalies.len()),
    );
    let proxied = system.proxy.as_ref().map_or((0, 0), |p| {
        (
            p.counts.accepted.load(Ordering::Relaxed),
            p.counts.reset.load(Ordering::Relaxed),
        )
    });
    Ok(ChaosReport {
        backend: opts.backend.name().to_owned(),
        seed: opts.seed,
        faulty,
        to_quiet,
        elapsed: began.elapsed(),
        faults: injected,
        calls: history.tally(),
        returns: history.answered("ReturnRental"),
        logs: if last.anomalies.is_empty() {
            String::new()
        } else {
            system.log_tails()
        },
        anomalies: last.anomalies,
        notes: last.notes,
        proxied,
        kept: opts.keep.clone(),
    })
}
