//! The REST edge against Schemathesis (PyPI `schemathesis`, which
//! scripts/test installs into target/tools): every check, a short run with a
//! librarian's token and one with a member's. What /openapi.json states is
//! what is held to: the fields' rules, and for each operation the refusals
//! it lists (its business rules), which are expected answers. Live streams
//! (`:watch`) are left out: they never end, which a request-per-case tool
//! reads as a hang. docs/EDGE.md has the figures of a long run.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::{Mesh, Options, Store, librarian, member};

/// How to run Schemathesis: from scripts/test's install, else from PATH.
fn schemathesis() -> Command {
    match std::env::var_os("RENTALBOOK_SCHEMATHESIS") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let mut c = Command::new("python3");
            c.env("PYTHONPATH", &dir).args([
                "-c",
                "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
            ]);
            c
        }
        None => Command::new("schemathesis"),
    }
}

/// The configuration that makes each operation's listed refusals expected
/// answers to requests the document allows.
fn config_of(doc: &Value) -> String {
    let mut toml = String::new();
    let paths = doc["paths"].as_object().expect("paths");
    for (path, operations) in paths {
        for (method, op) in operations.as_object().expect("operations") {
            let mut expected: Vec<String> =
                ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
                    .map(str::to_owned)
                    .to_vec();
            for status in op["responses"].as_object().expect("responses").keys() {
                if status.len() == 3 && !expected.contains(status) {
                    expected.push(status.clone());
                }
            }
            let list: Vec<String> = expected.iter().map(|s| format!("\"{s}\"")).collect();
            toml.push_str(&format!(
                "[[operations]]\ninclude-name = \"{} {path}\"\nchecks.positive_data_acceptance.expected-statuses = [{}]\n\n",
                method.to_ascii_uppercase(),
                list.join(", ")
            ));
        }
    }
    toml
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_the_document_does_not_allow_a_librarian() {
    run_schemathesis("librarian", librarian()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_the_document_does_not_allow_a_member() {
    run_schemathesis("member", member("st-member")).await;
}

/// One short run of every check with `token`, against a mesh of its own.
async fn run_schemathesis(who: &str, token: String) {
    let mesh = Mesh::start_with(Options {
        store: Store::Sqlite,
        ..Options::default()
    })
    .await;
    let (edge, stop_edge) = mesh.start_edge().await;
    // A book, so that the catalogue has something to list and page through.
    mesh.register_book("Kindred", 2).await;
    let url = format!("http://{edge}/openapi.json");
    let doc: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, config_of(&doc)).unwrap();

    let mut run = schemathesis();
    run.current_dir(dir.path())
        .arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .args(["run", &url])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "all", "--phases", "coverage,fuzzing"])
        .args(["--max-examples", "8", "--workers", "1", "--seed", "7"])
        .args(["--request-timeout", "10"])
        .args(["--exclude-path-regex", ":watch$"]);
    let out = tokio::task::spawn_blocking(move || run.output())
        .await
        .unwrap()
        .expect("running schemathesis (scripts/test installs it)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "Schemathesis with a {who}'s token found failures:\n{report}"
    );
    let summary = report
        .lines()
        .rev()
        .find(|l| l.contains("passed") || l.contains("generated"))
        .unwrap_or_default()
        .to_owned();
    eprintln!("schemathesis, {who}: {summary}");
    stop_edge.cancel();
}
