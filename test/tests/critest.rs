//! Kubernetes' CRI validation suite (critest, cri-tools) on a private CRI
//! node: its seccomp specs (`SeccompProfilePath`) for runtime handler `runc`,
//! the baseline, and for `wasmtime`, in the same run. Every spec that passes
//! for runc must pass for wasmtime; a spec that fails for both is the
//! containerd's (or the machine's) and is reported, not failed on.
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

/// critest's seccomp specs: `[k8s.io] Security Context SeccompProfilePath ...`.
const FOCUS: &str = "SeccompProfilePath";
const BASELINE: &str = "runc";
/// Each run takes some tens of seconds; this bounds a hung one.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn seccomp_specs_pass_for_wasmtime_as_for_runc() {
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
        .map(|handler| critest::run(&node, &binary, handler, FOCUS, &out, RUN_TIMEOUT))
        .collect();
    // containerd's log holds the shims' too: kept beside the reports.
    let _ = std::fs::write(out.join("containerd.log"), node.log());
    let (baseline, wasmtime) = (&runs[0], &runs[1]);
    let all: Vec<&critest::Run> = runs.iter().collect();
    eprintln!(
        "\ncritest {FOCUS} specs, containerd {version}:\n{}",
        critest::table(&all, "[k8s.io] Security Context SeccompProfilePath")
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
        "no {FOCUS} spec passed even for {BASELINE}: the node or the stand-in images are \
         broken (containerd {version}); reports in {}",
        out.display()
    );
}
