//! The deployment files hold together: the Dockerfile, the Kubernetes
//! manifests (k8s/), the Istio resources (istio/) and the Grafana dashboard
//! (deploy/grafana/). `scripts/check-manifests` renders the kustomizations,
//! validates every object against the Kubernetes and Istio schemas, and checks
//! what schemas cannot see (probes, ports, cross-references, the environment
//! each binary reads, routes and policies against the protos, metric names).
//!
//! Its first run installs its tools into target/tools/ (PyPI and npm); later
//! runs are offline.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

#[test]
fn deployment_manifests_hold_together() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(root.join("scripts/check-manifests"))
        .current_dir(root)
        .output()
        .expect("running bash scripts/check-manifests");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "scripts/check-manifests failed ({}) after {:.1?}; its report is above",
        out.status,
        started.elapsed()
    );
}
