//! Kubernetes' CRI validation suite (critest, cri-tools) on a private CRI
//! node, for runtime handler `runc`, the baseline, and for `wasmtime`, in
//! the same run. Every spec that passes for runc must pass for wasmtime; a
//! spec that fails for both is the containerd's (or the machine's) and is
//! reported, not failed on. `make test` runs the seccomp specs
//! (`SeccompProfilePath`); `make conformance` runs every spec
//! (`CRITEST_FOCUS=` empty, a longer `CRITEST_TIMEOUT`).
//!
//! critest's image (busybox) is a stand-in built from Debian's busybox and
//! served from a local registry under its upstream name
//! (shim_tests::critest). The reports, critest's output and containerd's log
//! (with the shims') are kept in `target/critest/containerd-<version>/`.

use std::time::{Duration, Instant};

use shim_tests::cri::{CriNode, NodeOptions, HANDLER};
use shim_tests::critest::{self, ShmGuard};
use shim_tests::registry::Registry;
use shim_tests::{containerd_version, workspace};

/// critest's seccomp specs: `[k8s.io] Security Context SeccompProfilePath ...`,
/// unless `CRITEST_FOCUS` says otherwise (empty: every spec).
const FOCUS: &str = "SeccompProfilePath";
const BASELINE: &str = "runc";
/// The seccomp specs take some tens of seconds; this bounds a hung run
/// (`CRITEST_TIMEOUT`, seconds, for the whole suite).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn focus() -> String {
    std::env::var("CRITEST_FOCUS").unwrap_or_else(|_| FOCUS.to_string())
}

fn run_timeout() -> Duration {
    std::env::var("CRITEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(RUN_TIMEOUT, Duration::from_secs)
}

#[test]
fn specs_that_pass_for_runc_pass_for_wasmtime() {
    let focus = focus();
    let focus = focus.as_str();
    let what = if focus.is_empty() { "every" } else { focus };
    let binary = critest::binary();
    let _shm = ShmGuard::new();
    let node = CriNode::start_with(NodeOptions {
        registry_hosts: true,
    });
    let registry = Registry::start(Some(node.netns()));
    let images = node.dir().join("critest-images");
    std::fs::create_dir_all(&images).unwrap();
    critest::serve_images(&node, &registry, &images);

    let version = containerd_version();
    let out = workspace()
        .join("target/critest")
        .join(format!("containerd-{}", version.text));
    let runs: Vec<critest::Run> = [BASELINE, HANDLER]
        .iter()
        .map(|handler| critest::run(&node, &binary, handler, focus, &out, run_timeout()))
        .collect();
    // containerd's log holds the shims' too: kept beside the reports.
    let _ = std::fs::write(out.join("containerd.log"), node.log());
    let (baseline, wasmtime) = (&runs[0], &runs[1]);
    let all: Vec<&critest::Run> = runs.iter().collect();
    eprintln!(
        "\ncritest {what} specs, containerd {version}:\n{}",
        critest::table(&all, "[k8s.io]")
    );
    for name in critest::failed_everywhere(&all) {
        eprintln!(
            "fails for every handler (containerd {}'s): {name}",
            version.text
        );
    }

    // Once every pod is gone, nothing of them may be left.
    let left_pods = critest::remove_pods(&node);
    if left_pods > 0 {
        eprintln!("critest left {left_pods} pods (of failed specs); removed them");
    }
    let ids = critest::created_ids(&node.log());
    let deadline = Instant::now() + Duration::from_secs(15);
    let leftovers = loop {
        let mut left = node.leftovers(&ids);
        left.extend(shim_tests::cgroups::left("test.slice", &ids));
        left.extend(
            node.all_shims()
                .into_iter()
                .map(|(pid, cmd)| format!("shim {pid}: {cmd}")),
        );
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    // The failures' messages are in the table above.
    let regressions: Vec<String> = critest::regressions(baseline, wasmtime)
        .into_iter()
        .map(|(name, spec)| format!("{name}: {}", spec.state))
        .collect();
    let log = node.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("level=error")).collect();
    assert!(
        regressions.is_empty() && leftovers.is_empty(),
        "containerd {version}:\npassed for {BASELINE} but not for {HANDLER}: {regressions:#?}\n\
         left behind by {} pods and containers: {leftovers:#?}\ncontainerd errors:\n{}",
        ids.len(),
        critest::tail(&errors.join("\n"), 60)
    );
    assert!(
        baseline.specs.values().any(critest::Spec::passed),
        "no {what} spec passed even for {BASELINE}: the node or the stand-in images are \
         broken (containerd {version}); reports in {}",
        out.display()
    );
}
