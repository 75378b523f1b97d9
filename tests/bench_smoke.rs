//! The benchmark harness runs for a few seconds against the all-in-one binary
//! and produces a report. Only that it works is asserted: never a timing.

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
    for phase in ["half-load", "read", "reserve", "echo", "insert-tx"] {
        let p = report
            .phase(phase)
            .unwrap_or_else(|| panic!("no {phase} phase"));
        assert!(p.calls > 0, "the {phase} phase made no call");
    }
    assert_eq!(report.target.startup.len(), 1, "one all-in-one process");
    assert!(report.target.startup[0].idle_rss_kib > 0);

    let markdown = report.to_markdown();
    assert!(markdown.contains("| mixed |"), "{markdown}");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
    assert!(json["phases"].as_array().is_some_and(|p| !p.is_empty()));
    println!("{markdown}");
}
