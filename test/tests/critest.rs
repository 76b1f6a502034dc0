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

/// What one handler's run found, on a node of its own.
struct Outcome {
    run: critest::Run,
    /// What its pods and containers left behind.
    leftovers: Vec<String>,
    pods: usize,
    /// containerd's error lines.
    errors: Vec<String>,
}

/// critest for `handler` on a fresh node (its own containerd, registry and
/// images): nothing one handler's run pulled or left can change the other's
/// (an image pulled by the first run made the second's "pull should time
/// out" spec pass instantly, then fail).
fn run_on_a_fresh_node(handler: &str, focus: &str, out: &std::path::Path) -> Outcome {
    let binary = critest::binary();
    let node = CriNode::start_with(NodeOptions {
        registry_hosts: true,
        ..Default::default()
    });
    let registry = Registry::start(Some(node.netns()));
    let images = node.dir().join("critest-images");
    std::fs::create_dir_all(&images).unwrap();
    critest::serve_images(&node, &registry, &images);
    let run = critest::run(&node, &binary, handler, focus, out, run_timeout());
    // containerd's log holds the shims' too: kept beside the reports.
    let log = node.log();
    let _ = std::fs::write(out.join(format!("containerd-{handler}.log")), &log);

    // Once every pod is gone, nothing of them may be left.
    let left_pods = critest::remove_pods(&node);
    if left_pods > 0 {
        eprintln!("critest left {left_pods} pods (of failed specs); removed them");
    }
    let ids = critest::created_ids(&log);
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
    let errors = node
        .log()
        .lines()
        .filter(|l| l.contains("level=error"))
        .map(str::to_string)
        .collect();
    Outcome {
        run,
        leftovers,
        pods: ids.len(),
        errors,
    }
}

/// `names` once more for wasmtime, on a fresh node.
fn run_again_on_a_fresh_node(names: &[String], out: &std::path::Path) -> critest::Run {
    let node = CriNode::start_with(NodeOptions {
        registry_hosts: true,
        ..Default::default()
    });
    let registry = Registry::start(Some(node.netns()));
    let images = node.dir().join("critest-images");
    std::fs::create_dir_all(&images).unwrap();
    critest::serve_images(&node, &registry, &images);
    let run = critest::run_again(
        &node,
        &critest::binary(),
        HANDLER,
        names,
        out,
        run_timeout(),
    );
    critest::remove_pods(&node);
    run
}

#[test]
fn specs_that_pass_for_runc_pass_for_wasmtime() {
    let focus = focus();
    let focus = focus.as_str();
    let what = if focus.is_empty() { "every" } else { focus };
    let _shm = ShmGuard::new();
    let version = containerd_version();
    let out = workspace()
        .join("target/critest")
        .join(format!("containerd-{}", version.text));
    std::fs::create_dir_all(&out).unwrap();
    let outcomes: Vec<Outcome> = [BASELINE, HANDLER]
        .iter()
        .map(|handler| run_on_a_fresh_node(handler, focus, &out))
        .collect();
    let (baseline, wasmtime) = (&outcomes[0].run, &outcomes[1].run);
    let all: Vec<&critest::Run> = outcomes.iter().map(|o| &o.run).collect();
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
    for run in &all {
        let count = |state: &str| run.specs.values().filter(|s| s.state == state).count();
        eprintln!(
            "{}: {} passed, {} failed, {} skipped",
            run.handler,
            count("passed"),
            run.specs.len() - count("passed") - count("skipped"),
            count("skipped")
        );
    }

    // The failures' messages are in the table above. A spec that failed
    // for wasmtime alone is run once more on a fresh node (timing-bound
    // specs can fail once on a loaded machine); it counts if it fails again.
    let first: Vec<String> = critest::regressions(baseline, wasmtime)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let regressions: Vec<String> = if first.is_empty() {
        Vec::new()
    } else {
        eprintln!("failed for {HANDLER} only, running again: {first:#?}");
        let again = run_again_on_a_fresh_node(&first, &out);
        first
            .iter()
            .filter(|name| !again.specs.get(*name).is_some_and(critest::Spec::passed))
            .map(|name| format!("{name}: failed twice"))
            .collect()
    };
    let leftovers: Vec<&String> = outcomes.iter().flat_map(|o| &o.leftovers).collect();
    let errors: Vec<&str> = outcomes[1].errors.iter().map(String::as_str).collect();
    assert!(
        regressions.is_empty() && leftovers.is_empty(),
        "containerd {version}:\npassed for {BASELINE} but not for {HANDLER}: {regressions:#?}\n\
         left behind by {} pods and containers: {leftovers:#?}\ncontainerd errors ({HANDLER}'s run):\n{}",
        outcomes.iter().map(|o| o.pods).sum::<usize>(),
        critest::tail(&errors.join("\n"), 60)
    );
    assert!(
        baseline.specs.values().any(critest::Spec::passed),
        "no {what} spec passed even for {BASELINE}: the node or the stand-in images are \
         broken (containerd {version}); reports in {}",
        out.display()
    );
}
