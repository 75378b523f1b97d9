//! The benchmark harness runs for a few seconds against the all-in-one binary,
//! over gRPC and over REST through the edge, and produces a report. Only that
//! it works is asserted: never a timing.

use rentalbook_bench::{EchoMode, Options, TargetSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_runs_journeys_against_the_all_in_one_and_reports() {
    let mut opts = Options::smoke(TargetSpec::AllInOne {
        bin: env!("CARGO_BIN_EXE_rentalbook").into(),
    });
    opts.echo = EchoMode::InProcess;
    let report = rentalbook_bench::run(opts)
        .await
        .expect("the benchmark runs");

    let mixed = report.phase("mixed").expect("a mixed phase");
    assert!(mixed.journeys > 0, "no journey completed: {mixed:#?}");
    assert!(mixed.rpc("Reserve").is_some_and(|r| r.calls > 0));
    // The services' database counters reach the report: the desk's
    // database was asked statements, held by its writers and committed.
    let desk = mixed
        .statements
        .iter()
        .find(|d| d.db == "reserve")
        .unwrap_or_else(|| panic!("no counters of the desk's database: {mixed:#?}"));
    assert!(desk.statements > 0, "{desk:?}");
    assert!(desk.writer_held_ms > 0.0, "{desk:?}");
    assert!(
        desk.commit_ms > 0.0 && desk.commit_ms < desk.writer_held_ms,
        "{desk:?}"
    );
    // The embedded event bus's database is counted too.
    assert!(
        mixed
            .statements
            .iter()
            .any(|d| d.db == "events" && d.statements > 0 && d.writer_held_ms > 0.0),
        "no counters of the event bus's database: {:#?}",
        mixed.statements
    );
    // The desk's write RPCs go through group commit, each transaction
    // holding at least one request.
    assert!(
        desk.group_commits > 0 && desk.grouped_requests >= desk.group_commits,
        "{desk:?}"
    );
    for phase in [
        "half-load",
        "read",
        "reserve",
        "mixed-rest",
        "half-load-rest",
        "read-rest",
        "reserve-rest",
        "echo",
        "insert-tx",
    ] {
        let p = report
            .phase(phase)
            .unwrap_or_else(|| panic!("no {phase} phase"));
        assert!(p.calls > 0, "the {phase} phase made no call");
    }

    // REST through the edge: journeys with their pages watched as events,
    // and reads that all succeed.
    let mixed_rest = report.phase("mixed-rest").expect("a mixed-rest phase");
    assert_eq!(mixed_rest.transport, "rest");
    assert!(
        mixed_rest.journeys > 0,
        "no journey over REST: {mixed_rest:#?}"
    );
    assert!(
        mixed_rest.lag_all.count > 0,
        "no page change seen over Server-Sent Events: {mixed_rest:#?}"
    );
    let read_rest = report.phase("read-rest").expect("a read-rest phase");
    assert_eq!(read_rest.errors, 0, "{read_rest:#?}");
    assert!(read_rest.rpc("GetBook").is_some_and(|r| r.calls > 0));
    assert!(
        report
            .rest
            .comparisons
            .iter()
            .any(|c| c.measure == "read: GetBook" && c.grpc.is_some() && c.rest.is_some()),
        "{:#?}",
        report.rest
    );
    assert_eq!(report.target.startup.len(), 1, "one all-in-one process");
    assert!(report.target.startup[0].idle_rss_kib > 0);

    let markdown = report.to_markdown();
    assert!(markdown.contains("| mixed | grpc |"), "{markdown}");
    assert!(markdown.contains("| read-rest | rest |"), "{markdown}");
    assert!(
        !markdown.contains("does not exist yet"),
        "the report still says REST is not measured: {markdown}"
    );
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
    assert!(json["phases"].as_array().is_some_and(|p| !p.is_empty()));
    println!("{markdown}");
}
