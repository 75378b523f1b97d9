//! The web pages in a real browser: starts the real `rentalbook` binary (the
//! all-in-one, dev sign-in on because it listens on loopback) on free ports
//! with a fresh data directory, and runs `tests/browser/e2e.mjs` (Node,
//! playwright-core driving Debian's Chromium, axe-core) against it.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM`), `node`, and
//! `tests/browser/node_modules`; `scripts/test` installs them when missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole browser run; it takes ~60 s, longer on a busy machine.
const BROWSER_RUN_LIMIT: Duration = Duration::from_secs(150);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the screenshots go: `screenshots/` in the target directory the
/// binary was built in.
fn screenshot_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_rentalbook"));
    bin.parent()
        .and_then(Path::parent)
        .map(|target| target.join("screenshots"))
        .unwrap_or_else(|| repo().join("target").join("screenshots"))
}

fn prerequisites() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (`apt-get install chromium`), or run scripts/test, which does"
    );
    assert!(
        repo()
            .join("tests/browser/node_modules/playwright-core")
            .is_dir(),
        "tests/browser/node_modules is missing: run `npm ci` in tests/browser, or scripts/test, which does"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: install Node.js 18 or later (`apt-get install nodejs npm`)"
    );
}

/// Waits until the edge serves the pages and says dev sign-in is on; fails
/// with the process's log if it exits or does not come up.
async fn wait_for_pages(base: &str, process: &mut std::process::Child, log: &Path) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Ok(res) = http.get(format!("{base}/session")).send().await
            && res.status().is_success()
        {
            let session: serde_json::Value = res.json().await.unwrap();
            assert_eq!(
                session["devSignIn"], true,
                "the all-in-one on loopback offers dev sign-in"
            );
            return;
        }
        let exited = process.try_wait().ok().flatten();
        if exited.is_some() || started.elapsed() > Duration::from_secs(30) {
            panic!(
                "the edge did not come up at {base} ({}); its output:\n{}\n{}",
                exited.map_or("still running".into(), |s| s.to_string()),
                std::fs::read_to_string(log.with_file_name("stdout.txt")).unwrap_or_default(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A started all-in-one, stopped when dropped (a failed wait included).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Starts the all-in-one on free ports with its data in `data` and `env`
/// set: the process, its base URL, and the files its output goes to.
fn start(data: &Path, env: &[(&str, &str)]) -> (Running, String, PathBuf, PathBuf) {
    let port = || rentalbook_testkit::free_port().to_string();
    let edge_port = port();
    let banner_file = data.join("stdout.txt");
    let log_file = data.join("stderr.txt");
    let process = Command::new(env!("CARGO_BIN_EXE_rentalbook"))
        .args(["--data-dir", data.to_str().unwrap()])
        .args(["--host", "127.0.0.1"])
        .args(["--edge-port", &edge_port])
        .args(["--rental-port", &port()])
        .args(["--reserve-port", &port()])
        .args(["--book-port", &port()])
        .args(["--view-port", &port()])
        .args(["--notice-port", &port()])
        // The all-in-one's own log filter, as on a first `cargo run --release`.
        .env_remove("RUST_LOG")
        .env_remove("RENTALBOOK_JWT_SECRET")
        .env_remove("RENTALBOOK_HOST")
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("BOOK_DATABASE_URL")
        .env_remove("RESERVE_DATABASE_URL")
        .env_remove("RENTAL_DATABASE_URL")
        .env_remove("VIEW_DATABASE_URL")
        .env_remove("NOTICE_DATABASE_URL")
        .env_remove("SMTP_URL")
        .env_remove("LOAN_PERIOD")
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&banner_file).unwrap())
        .stderr(std::fs::File::create(&log_file).unwrap())
        .spawn()
        .expect("starting rentalbook");
    (
        Running(process),
        format!("http://127.0.0.1:{edge_port}"),
        banner_file,
        log_file,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_carry_a_lending_journey_in_a_real_browser() {
    prerequisites();
    let data = tempfile::tempdir().unwrap();
    let (mut process, base, banner_file, log_file) = start(data.path(), &[]);
    // A second all-in-one whose loans last three seconds: a loan falls
    // overdue while the desk's Overdue part watches.
    let short = tempfile::tempdir().unwrap();
    let (mut short_process, short_base, _, short_log) =
        start(short.path(), &[("LOAN_PERIOD", "3s")]);
    let started = Instant::now();
    wait_for_pages(&base, &mut process.0, &log_file).await;
    wait_for_pages(&short_base, &mut short_process.0, &short_log).await;
    println!(
        "rentalbook serves the pages at {base} (and with 3 s loans at {short_base}) after {:?}",
        started.elapsed()
    );
    let edge_port = base.rsplit(':').next().unwrap().to_string();

    let browser = tokio::process::Command::new("node")
        .arg(repo().join("tests/browser/e2e.mjs"))
        .arg(&base)
        .env("SHORT_LOANS_URL", &short_base)
        .current_dir(repo())
        .env("SCREENSHOT_DIR", screenshot_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let started = Instant::now();
    let out = tokio::time::timeout(BROWSER_RUN_LIMIT, browser).await;
    drop((process, short_process));
    let out = out
        .unwrap_or_else(|_| panic!("the browser run took longer than {BROWSER_RUN_LIMIT:?}"))
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    println!("browser run: {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "tests/browser/e2e.mjs failed ({}):\n{stdout}{stderr}",
        out.status
    );
    assert!(stdout.contains("passed in"), "{stdout}");
    for shot in [
        "signin.png",
        "catalogue.png",
        "mypage.png",
        "desk.png",
        "desk-checkout.png",
        "desk-checkin.png",
        "desk-copies.png",
        "mypage-renew.png",
        "desk-shelf.png",
        "book.png",
        "book-ko-phone.png",
        "mypage-notices.png",
        "mypage-notices-ko-phone.png",
    ] {
        assert!(
            screenshot_dir().join(shot).is_file(),
            "{shot} saved in {}",
            screenshot_dir().display()
        );
    }

    let banner = std::fs::read_to_string(&banner_file).unwrap();
    assert!(
        banner.contains(&format!(
            "sign in at http://127.0.0.1:{edge_port}/   (dev sign-in on: loopback only)"
        )),
        "the banner says where to sign in: {banner}"
    );
    // A first run: the libraries' logs stay at warn, and the banner comes
    // once every service serves, after their startup lines.
    for library in ["sea_orm_migration", "sqlx", "hyper", "h2::", "tower"] {
        assert!(
            !banner.contains(library),
            "{library}'s info lines are kept out of the all-in-one's log: {banner}"
        );
    }
    let at = banner.find("rentalbook is running").unwrap();
    let last_serving = banner
        .rfind("serving gRPC")
        .expect("the services say they serve");
    assert!(
        last_serving < at,
        "the banner comes after every service serves: {banner}"
    );
    assert!(
        !banner[at..].contains("still starting"),
        "every service was serving before the banner: {banner}"
    );
}
