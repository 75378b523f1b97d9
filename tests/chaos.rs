//! The fault campaign (docs/FAULTS.md), short, on each backend: a seeded
//! workload of whole journeys while a seeded schedule injects every kind of
//! fault the backend can suffer, one at a time; then everything is healed,
//! the system becomes quiet and `rentalbook check` runs over the history,
//! every database and the stream. Zero anomalies, every kind injected.
//! `CHAOS_SEED` picks another schedule; the report is printed either way.

use std::path::PathBuf;
use std::time::Duration;

use rentalbook_bench::chaos::faults::Kind;
use rentalbook_bench::chaos::{Backend, ChaosOptions, ChaosReport, run};

fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(11)
}

/// A campaign that fits the test suite: about 25 s of faults, each short.
fn short(backend: Backend) -> ChaosOptions {
    let mut o = ChaosOptions::new(backend, PathBuf::from(env!("CARGO_BIN_EXE_rentalbook")));
    o.seed = seed();
    o.duration = Duration::from_secs(25);
    o.members = 6;
    o.lasting = (Duration::from_millis(400), Duration::from_millis(1200));
    o.gap = (Duration::from_millis(200), Duration::from_millis(600));
    o.quiet_within = Duration::from_secs(45);
    o.progress = false;
    o
}

fn assert_clean(report: &ChaosReport, kinds: &[Kind]) {
    println!("{}", report.to_text());
    assert!(
        report.anomalies.is_empty(),
        "the campaign found anomalies:\n{}",
        report.to_text()
    );
    let injected = report.faults_by_kind();
    for k in kinds {
        assert!(
            injected.contains_key(k.name()),
            "no {} fault was injected:\n{}",
            k.name(),
            report.to_text()
        );
    }
    let acknowledged = report
        .calls_by_verdict()
        .get("acknowledged")
        .copied()
        .unwrap_or(0);
    assert!(
        acknowledged > 100,
        "the workload went on between the faults:\n{}",
        report.to_text()
    );
    // The circulation desk was part of it: check-outs, check-ins and
    // renewals went through while the faults came and went.
    for op in ["CheckOut", "CheckIn", "RenewRental"] {
        let done = report
            .calls
            .get(&(op.to_owned(), "OK".to_owned()))
            .copied()
            .unwrap_or(0);
        assert!(done > 0, "no {op} was acknowledged:\n{}", report.to_text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_campaign_on_the_mesh_finds_no_anomaly() {
    // The databases may live on the suite's server: the database faults
    // take only the campaign's own databases away. NATS is the campaign's own.
    let database_url_base = std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty());
    let report = run(short(Backend::Mesh { database_url_base }))
        .await
        .expect("the campaign ran");
    assert_clean(&report, &Kind::ALL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_campaign_on_the_all_in_one_finds_no_anomaly() {
    let report = run(short(Backend::AllInOne))
        .await
        .expect("the campaign ran");
    assert_clean(&report, &[Kind::Kill, Kind::Stop, Kind::Db]);
}
