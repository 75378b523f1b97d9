//! The report: what was run where, each phase's figures, the ratios to the
//! baselines and the targets, as JSON for machines and markdown
//! tables for people.

use std::fmt::Write as _;

use serde::Serialize;

use crate::procstat::Machine;
use crate::stats::Latency;
use crate::target::Startup;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub harness: Harness,
    pub machine: Machine,
    pub target: TargetInfo,
    pub phases: Vec<PhaseReport>,
    pub ratios: Ratios,
    pub targets: Vec<TargetCheck>,
    /// REST through the edge against gRPC.
    pub rest: RestFigures,
}

/// How REST was measured, and its phases against their gRPC twins.
#[derive(Clone, Debug, Serialize)]
pub struct RestFigures {
    /// How REST was called, or why it was not measured.
    pub note: String,
    pub comparisons: Vec<Comparison>,
}

/// One measure over gRPC and over REST.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub measure: String,
    /// `/s`, `ms`, `µs`, `cores` or `×` (a ratio).
    pub unit: String,
    pub grpc: Option<f64>,
    pub rest: Option<f64>,
    /// REST over gRPC.
    pub rest_vs_grpc: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Harness {
    pub version: String,
    pub git: String,
    pub started_at: String,
    pub command_line: String,
    /// The transports the product's phases ran over: `grpc`, `rest` or
    /// `grpc + rest`.
    pub transport: String,
    pub members: usize,
    pub readers: usize,
    /// Reads/s of the readers in the mixed phase (0: back to back).
    pub read_rate: f64,
    /// Client concurrency of every ceiling phase: members + readers.
    pub concurrency: usize,
    pub connections_per_service: usize,
    pub books: usize,
    pub copies_per_book: i32,
    pub member_journeys_per_identity: u32,
    pub ready_wait: String,
    pub duration_s: f64,
    pub phase_duration_s: f64,
    pub warmup_s: f64,
    pub echo_server: String,
    pub load_average_at_end: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetInfo {
    pub kind: String,
    pub storage: String,
    pub events: String,
    /// Cold start (empty data directory) of each process, and its memory idle.
    pub startup: Vec<Startup>,
    /// All-in-one: a warm restart on the run's data.
    pub restart: Option<Startup>,
    /// Each process at the end of the run.
    pub processes: Vec<ProcessTotals>,
    pub stop_ms: Vec<(String, f64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProcessTotals {
    pub process: String,
    pub peak_rss_kib: u64,
    pub rss_kib_at_end: u64,
    pub cpu_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RpcFigures {
    pub rpc: String,
    pub calls: u64,
    pub per_second: f64,
    pub errors: u64,
    pub latency: Latency,
}

#[derive(Clone, Debug, Serialize)]
pub struct ErrorCount {
    pub rpc: String,
    pub code: String,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LagFigures {
    pub after: String,
    pub latency: Latency,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProcessPhase {
    pub process: String,
    pub cpu_seconds: f64,
    /// CPU seconds per second of the phase: 1.0 is one core busy.
    pub cores: f64,
    pub rss_kib_at_end: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    /// The phase, with `-rest` when it ran over REST.
    pub name: String,
    /// `grpc` (straight to the services, or to the echo), `rest` (through
    /// the edge) or `storage` (the insert-transaction baseline).
    pub transport: String,
    pub what: String,
    pub concurrency: usize,
    pub seconds: f64,
    pub journeys: u64,
    pub journeys_per_second: f64,
    pub journeys_abandoned: u64,
    pub calls: u64,
    pub calls_per_second: f64,
    pub errors: u64,
    pub rpcs: Vec<RpcFigures>,
    pub errors_by_code: Vec<ErrorCount>,
    pub lag: Vec<LagFigures>,
    pub lag_all: Latency,
    pub lag_missed: u64,
    pub ready_wait: Latency,
    pub journey_time: Latency,
    pub processes: Vec<ProcessPhase>,
    /// The harness's own CPU, in cores (it shares the machine).
    pub client_cores: f64,
    /// Busy share of all the machine's cores during the phase, whoever used them.
    pub machine_busy_percent: Option<f64>,
    /// How long the target took to go quiet before the phase.
    pub settle_ms: f64,
    /// Pacing target of a paced phase (journeys per second), if any.
    pub paced_journeys_per_second: Option<f64>,
    /// The statements the phase asked of each database (counted by the
    /// services; read once the phase's events had all been applied).
    pub statements: Vec<DbStatements>,
    /// PostgreSQL's own figures per statement (`--pg-statements`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pg_statements: Option<crate::pgstats::PgPhase>,
}

/// Statements (and on PostgreSQL round trips) asked of one database.
#[derive(Clone, Debug, Serialize)]
pub struct DbStatements {
    pub db: String,
    pub statements: u64,
    /// From the first reading of the counters to the second (the phase and
    /// the wait for its events to be applied).
    pub counted_seconds: f64,
    /// Writers' wait to start (SQLite's permit; BEGIN), summed.
    pub writer_wait_ms: f64,
    /// Writers' transactions (or single write statements) from start to
    /// end, summed: on SQLite the time its one writer was taken.
    pub writer_held_ms: f64,
    /// Of that, COMMIT.
    pub commit_ms: f64,
    /// Group commit's transactions that committed, and the requests that
    /// wrote in them.
    pub group_commits: u64,
    pub grouped_requests: u64,
}

impl PhaseReport {
    pub fn rpc(&self, name: &str) -> Option<&RpcFigures> {
        self.rpcs.iter().find(|r| r.rpc == name)
    }

    /// The write RPCs of the phase: Reserve, CancelReservation, Rent and
    /// ReturnRental.
    pub fn write_calls(&self) -> u64 {
        ["Reserve", "CancelReservation", "Rent", "ReturnRental"]
            .iter()
            .filter_map(|n| self.rpc(n))
            .map(|r| r.calls)
            .sum()
    }

    /// Server CPU seconds (every process of the target, its servers
    /// included) per completed journey.
    pub fn cpu_ms_per_journey(&self) -> Option<f64> {
        (self.journeys > 0).then(|| {
            let cpu: f64 = self.processes.iter().map(|p| p.cpu_seconds).sum();
            cpu * 1000.0 / self.journeys as f64
        })
    }
}

/// The values of a counter in Prometheus' text format, by one label:
/// `name{label="x",...} 12` gives ("x", 12).
pub fn parse_counter(text: &str, name: &str, label: &str) -> Vec<(String, u64)> {
    let wanted = format!("{label}=\"");
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once('}')?;
            let start = labels.find(&wanted)? + wanted.len();
            let end = start + labels[start..].find('"')?;
            let value = value.trim().parse::<f64>().ok()?;
            Some((labels[start..end].to_owned(), value as u64))
        })
        .collect()
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Ratios {
    /// GetBook/s in the read phase over echo calls/s.
    pub read_vs_echo: Option<f64>,
    /// Reserve/s in the reserve phase over insert transactions/s.
    pub reserve_vs_insert_tx: Option<f64>,
    /// Write transactions the desk committed per second in the reserve phase
    /// (Reserve + CancelReservation) over insert transactions/s.
    pub desk_writes_vs_insert_tx: Option<f64>,
    /// GetBook/s over REST (read-rest) over GetBook/s over gRPC (read).
    pub rest_read_vs_grpc_read: Option<f64>,
    /// GetBook/s over REST over echo calls/s.
    pub rest_read_vs_echo: Option<f64>,
    /// Journeys/s over REST (mixed-rest) over journeys/s over gRPC (mixed).
    pub rest_journeys_vs_grpc_journeys: Option<f64>,
    /// Reserve/s over REST (reserve-rest) over Reserve/s over gRPC (reserve).
    pub rest_reserve_vs_grpc_reserve: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub goal: String,
    pub measured: String,
    /// None when the run did not measure it.
    pub met: Option<bool>,
}

fn f1(v: f64) -> String {
    format!("{v:.1}")
}

/// Each database's writers per write RPC: how long they held it, of which
/// COMMIT, and how long they waited to start, with the share of the time
/// the database was held (on SQLite, where one writer at a time holds it,
/// near 100 % means the writes queue for it).
fn writers_table(o: &mut String, counted: &[&PhaseReport]) {
    let _ = writeln!(o, "\n### Writers' time per write RPC\n");
    let _ = writeln!(
        o,
        "By database: milliseconds per write RPC its writers held it (a write transaction from BEGIN's end to COMMIT's, or one write statement), of which COMMIT, and waited to start (SQLite's one write permit and BEGIN); held as a share of the time counted (the phase and the wait for its events to be applied). On SQLite one writer holds a database at a time: near 100 % the writes queue for it. On PostgreSQL transactions run side by side and the share can pass 100 %. The last column: where requests go through group commit, how many a committed transaction held on average.\n"
    );
    let _ = writeln!(
        o,
        "| phase | database | held ms | COMMIT ms | wait ms | held, share of the time | requests per group commit |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    for p in counted {
        let writes = p.write_calls() as f64;
        for d in p.statements.iter().filter(|d| d.writer_held_ms > 0.0) {
            let _ = writeln!(
                o,
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:.0} % | {} |",
                p.name,
                d.db,
                d.writer_held_ms / writes,
                d.commit_ms / writes,
                d.writer_wait_ms / writes,
                100.0 * d.writer_held_ms / 1000.0 / d.counted_seconds.max(1e-6),
                match d.group_commits {
                    0 => "–".to_owned(),
                    n => format!("{:.1}", d.grouped_requests as f64 / n as f64),
                }
            );
        }
    }
}

/// PostgreSQL's planning and execution time by statement over one phase,
/// per write RPC, beside the server's CPU.
fn pg_statements_table(o: &mut String, p: &PhaseReport, pg: &crate::pgstats::PgPhase) {
    let writes = p.write_calls() as f64;
    let server_cpu_ms = p
        .processes
        .iter()
        .filter(|s| s.process.starts_with("postgres"))
        .map(|s| s.cpu_seconds * 1000.0)
        .sum::<f64>();
    let _ = writeln!(o, "\n### PostgreSQL's time by statement: {}\n", p.name);
    let _ = writeln!(
        o,
        "pg_stat_statements, from the phase's start until its events were all applied: {:.2} ms of planning and execution per write RPC ({:.1} statements), of {:.2} ms of the server's CPU per write RPC over the phase itself. The rest of the CPU is outside statements (the protocol, a backend woken per round trip, commits).\n",
        pg.total_ms / writes,
        pg.total_calls as f64 / writes,
        server_cpu_ms / writes
    );
    let _ = writeln!(
        o,
        "| databases | statement | calls per write RPC | rows per call | µs per call | share of the time |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|");
    let share = |t: f64| {
        if pg.total_ms > 0.0 {
            format!("{:.1} %", 100.0 * t / pg.total_ms)
        } else {
            "–".into()
        }
    };
    for s in &pg.listed {
        let t = s.plan_ms + s.exec_ms;
        let _ = writeln!(
            o,
            "| {} | `{}` | {:.2} | {:.1} | {:.0} | {} |",
            s.databases,
            s.query,
            s.calls as f64 / writes,
            s.rows as f64 / s.calls.max(1) as f64,
            1000.0 * t / s.calls.max(1) as f64,
            share(t)
        );
    }
    if pg.others_calls > 0 {
        let _ = writeln!(
            o,
            "| | all others | {:.2} | | {:.0} | {} |",
            pg.others_calls as f64 / writes,
            1000.0 * pg.others_ms / pg.others_calls as f64,
            share(pg.others_ms)
        );
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

impl Report {
    pub fn phase(&self, name: &str) -> Option<&PhaseReport> {
        self.phases.iter().find(|p| p.name == name)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises")
    }

    pub fn to_markdown(&self) -> String {
        let mut o = String::new();
        let h = &self.harness;
        let m = &self.machine;
        let _ = writeln!(
            o,
            "## rentalbook-bench: {} over {} ({})\n",
            self.target.kind, h.transport, h.started_at
        );
        let _ = writeln!(
            o,
            "Machine: {} cores ({}), {} MiB RAM, Linux {}; load average {} at the start, {} at the end. Code: {}.\n",
            m.nproc,
            m.cpu_model,
            m.mem_total_mib,
            m.kernel,
            m.load_average_at_start,
            h.load_average_at_end,
            h.git
        );
        let _ = writeln!(
            o,
            "Load: {} virtual members + {} readers at {} (concurrency {} in the ceiling phases), {} connection(s) per service, {} books × {} copies, a fresh member identity every {} journeys, READY learnt by {}; mixed phase {:.0} s after {:.0} s warm-up, other phases {:.0} s each. Storage: {}. Events: {}. Echo server: {}.\n",
            h.members,
            h.readers,
            if h.read_rate > 0.0 {
                format!("{:.0} reads/s", h.read_rate)
            } else {
                "full speed".into()
            },
            h.concurrency,
            h.connections_per_service,
            h.books,
            h.copies_per_book,
            h.member_journeys_per_identity,
            h.ready_wait,
            h.duration_s,
            h.warmup_s,
            h.phase_duration_s,
            self.target.storage,
            self.target.events,
            h.echo_server
        );

        let _ = writeln!(o, "### Phases\n");
        let _ = writeln!(
            o,
            "| phase | transport | what | clients | s | journeys/s | calls/s | errors | lag p50 / p99 ms | server CPU (cores) | harness CPU (cores) | machine busy |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for p in &self.phases {
            let cores: f64 = p.processes.iter().map(|x| x.cores).sum();
            let lag = if p.lag_all.count > 0 {
                format!("{} / {}", ms(p.lag_all.p50_ms), ms(p.lag_all.p99_ms))
            } else {
                "–".into()
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {:.2} | {} |",
                p.name,
                p.transport,
                p.what,
                p.concurrency,
                p.seconds,
                if p.journeys > 0 || p.journeys_abandoned > 0 {
                    f1(p.journeys_per_second)
                } else {
                    "–".into()
                },
                f1(p.calls_per_second),
                p.errors,
                lag,
                if p.processes.is_empty() {
                    "–".into()
                } else {
                    format!("{cores:.2}")
                },
                p.client_cores,
                p.machine_busy_percent
                    .map_or("?".into(), |b| format!("{b:.0} %")),
            );
        }

        let _ = writeln!(o, "\n### Latency per call (ms)\n");
        let _ = writeln!(
            o,
            "| phase | call | calls | calls/s | p50 | p90 | p99 | max | errors |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
        for p in &self.phases {
            for r in &p.rpcs {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    p.name,
                    r.rpc,
                    r.calls,
                    f1(r.per_second),
                    ms(r.latency.p50_ms),
                    ms(r.latency.p90_ms),
                    ms(r.latency.p99_ms),
                    ms(r.latency.max_ms),
                    r.errors
                );
            }
        }

        let lagged: Vec<&PhaseReport> = self
            .phases
            .iter()
            .filter(|p| p.lag_all.count > 0 || p.journeys > 0)
            .collect();
        if !lagged.is_empty() {
            let _ = writeln!(o, "\n### Journeys and event-to-view lag (ms)\n");
            let _ = writeln!(
                o,
                "Lag: from the answer of the RPC to the change arriving on the member's WatchMyPage stream.\n"
            );
            let _ = writeln!(o, "| phase | measured | count | p50 | p90 | p99 | max |");
            let _ = writeln!(o, "|---|---|---|---|---|---|---|");
            for p in lagged {
                let mut rows: Vec<(String, &Latency)> = p
                    .lag
                    .iter()
                    .map(|l| (format!("lag after {}", l.after), &l.latency))
                    .collect();
                rows.push(("lag, all".into(), &p.lag_all));
                rows.push(("wait for READY (queued journeys)".into(), &p.ready_wait));
                rows.push(("whole journey".into(), &p.journey_time));
                for (what, l) in rows {
                    if l.count == 0 {
                        continue;
                    }
                    let _ = writeln!(
                        o,
                        "| {} | {} | {} | {} | {} | {} | {} |",
                        p.name,
                        what,
                        l.count,
                        ms(l.p50_ms),
                        ms(l.p90_ms),
                        ms(l.p99_ms),
                        ms(l.max_ms)
                    );
                }
                if p.lag_missed > 0 || p.journeys_abandoned > 0 {
                    let _ = writeln!(
                        o,
                        "| {} | changes never seen on the page / journeys abandoned | {} / {} | | | | |",
                        p.name, p.lag_missed, p.journeys_abandoned
                    );
                }
            }
        }

        let counted: Vec<&PhaseReport> = self
            .phases
            .iter()
            .filter(|p| !p.statements.is_empty() && p.write_calls() > 0)
            .collect();
        if !counted.is_empty() {
            let _ = writeln!(o, "\n### Statements and CPU per write\n");
            let _ = writeln!(
                o,
                "Statements: what the services asked of their databases during the phase and until its events were all applied (`db_statements_total`: each statement, BEGIN and COMMIT; on PostgreSQL each is a round trip). Write RPCs: Reserve, CancelReservation, Rent, ReturnRental.\n"
            );
            let _ = writeln!(
                o,
                "| phase | write RPCs | statements | per write RPC | per journey | server CPU ms per journey | by database (per write RPC) |"
            );
            let _ = writeln!(o, "|---|---|---|---|---|---|---|");
            for p in &counted {
                let writes = p.write_calls() as f64;
                let total: u64 = p.statements.iter().map(|d| d.statements).sum();
                let by_db: Vec<String> = p
                    .statements
                    .iter()
                    .filter(|d| d.statements > 0)
                    .map(|d| format!("{} {:.1}", d.db, d.statements as f64 / writes))
                    .collect();
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {:.1} | {} | {} | {} |",
                    p.name,
                    p.write_calls(),
                    total,
                    total as f64 / writes,
                    if p.journeys > 0 {
                        format!("{:.1}", total as f64 / p.journeys as f64)
                    } else {
                        "–".into()
                    },
                    p.cpu_ms_per_journey().map_or("–".into(), ms),
                    by_db.join(", ")
                );
            }
            writers_table(&mut o, &counted);
        }

        for p in self.phases.iter().filter(|p| p.write_calls() > 0) {
            if let Some(pg) = &p.pg_statements {
                pg_statements_table(&mut o, p, pg);
            }
        }

        let errors: Vec<(&str, &ErrorCount)> = self
            .phases
            .iter()
            .flat_map(|p| p.errors_by_code.iter().map(move |e| (p.name.as_str(), e)))
            .collect();
        let _ = writeln!(o, "\n### Errors by code\n");
        if errors.is_empty() {
            let _ = writeln!(o, "None.");
        } else {
            let _ = writeln!(o, "| phase | call | code | count |");
            let _ = writeln!(o, "|---|---|---|---|");
            for (p, e) in errors {
                let _ = writeln!(o, "| {p} | {} | {} | {} |", e.rpc, e.code, e.count);
            }
        }

        let _ = writeln!(o, "\n### Processes\n");
        let _ = writeln!(
            o,
            "| process | start → serving (ms) | idle RSS (MiB) | peak RSS (MiB) | RSS at end (MiB) | CPU s, whole run |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        for s in &self.target.startup {
            let t = self
                .target
                .processes
                .iter()
                .find(|p| p.process == s.process);
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                s.process,
                ms(s.start_to_serving_ms),
                mib(s.idle_rss_kib),
                t.map_or("?".into(), |t| mib(t.peak_rss_kib)),
                t.map_or("?".into(), |t| mib(t.rss_kib_at_end)),
                t.map_or("?".into(), |t| format!("{:.2}", t.cpu_seconds)),
            );
        }
        if let Some(r) = &self.target.restart {
            let _ = writeln!(
                o,
                "| {}, warm restart on the run's data | {} | {} | | | |",
                r.process,
                ms(r.start_to_serving_ms),
                mib(r.idle_rss_kib)
            );
        }

        let _ = writeln!(o, "\n### Against the baselines and the targets\n");
        let _ = writeln!(o, "| target | goal | measured | met |");
        let _ = writeln!(o, "|---|---|---|---|");
        for t in &self.targets {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                t.target,
                t.goal,
                t.measured,
                match t.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "not measured",
                }
            );
        }
        let _ = writeln!(o, "\n### REST through the edge against gRPC\n");
        let _ = writeln!(o, "REST: {}\n", self.rest.note);
        if !self.rest.comparisons.is_empty() {
            let _ = writeln!(o, "| measure | unit | gRPC | REST | REST / gRPC |");
            let _ = writeln!(o, "|---|---|---|---|---|");
            let value = |v: Option<f64>, unit: &str| match v {
                None => "–".to_owned(),
                Some(v) if unit == "ms" => ms(v),
                Some(v) if unit == "/s" || unit == "µs" => f1(v),
                Some(v) => format!("{v:.2}"),
            };
            for c in &self.rest.comparisons {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} |",
                    c.measure,
                    c.unit,
                    value(c.grpc, &c.unit),
                    value(c.rest, &c.unit),
                    c.rest_vs_grpc.map_or("–".into(), |r| format!("{r:.2}")),
                );
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_is_read_by_its_label() {
        let text = "# TYPE db_statements_total counter\n\
            db_statements_total{db=\"reserve\"} 120\n\
            db_statements_total{db=\"view\",x=\"y\"} 7\n\
            db_statements_totally{db=\"no\"} 1\n\
            other{db=\"no\"} 3\n";
        assert_eq!(
            parse_counter(text, "db_statements_total", "db"),
            vec![("reserve".to_owned(), 120), ("view".to_owned(), 7)]
        );
    }
}
