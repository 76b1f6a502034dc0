//! A native sidecar attacking its pod's wasm container through /proc, in a
//! pod that shares its PID namespace, through CRI as `kubectl exec` would.

use std::fs;

use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{ContainerConfig, SecurityProfile};
use shim_tests::cri::{share_pid_namespace, CriNode};
use shim_tests::images::WASM_TEST;

use super::{marker, reached, security_fields, security_of, show, unlike_its_init};

/// `config` under the seccomp profile `profile`, as CRI passes
/// `securityContext.seccompProfile`.
fn with_seccomp(mut config: ContainerConfig, profile: SecurityProfile) -> ContainerConfig {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .seccomp = Some(profile);
    config
}

/// A pod sharing its PID namespace (`shareProcessNamespace: true`): a wasm
/// container and a native sidecar, both under RuntimeDefault. The sidecar
/// (`probe scan`, through CRI ExecSync, as `kubectl exec` would) goes through
/// /proc after the wasm container's process: its descriptors (and `..` from
/// each directory among them towards a file planted in the node's directory,
/// next to the code cache), its memory, environment, maps and root. It
/// reaches none of them: the process is not dumpable, and holds nothing of
/// the host. And an ExecSync process in the sidecar runs under the sidecar's
/// seccomp filter, capabilities and no_new_privs.
#[test]
fn a_sidecar_sharing_the_pid_namespace_reaches_nothing_of_the_wasm_container() {
    let node = CriNode::start();
    let marker = marker("sidecar");
    let basename = "planted-sidecar.txt";
    let planted = node.dir().join(basename);
    fs::write(&planted, &marker).unwrap();
    let runtime_default = SecurityProfile {
        profile_type: ProfileType::RuntimeDefault as i32,
        ..Default::default()
    };
    let mut pod_config = node.pod_config("sandbox");
    let mut app = with_seccomp(
        CriNode::container_config("app", WASM_TEST, &["/wasitest.wasm", "sleep"]),
        runtime_default.clone(),
    );
    let mut attacker = with_seccomp(
        CriNode::container_config("attacker", WASM_TEST, &["/probe", "hold"]),
        runtime_default,
    );
    share_pid_namespace(&mut pod_config, &mut [&mut app, &mut attacker]);
    let pod = node.run_pod(&pod_config);
    let app = node.start_container(&pod, &pod_config, app);
    let attacker = node.start_container(&pod, &pod_config, attacker);
    let mut problems = Vec::new();

    let out = node
        .exec_sync(&attacker, &["/probe", "scan", basename, &marker], 60)
        .expect("ExecSync");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    show("probe scan", &stdout);
    for line in stdout.lines().filter(|l| !l.starts_with("REACHED")) {
        eprintln!("    {line}");
    }
    assert_eq!(out.exit_code, 0, "{stdout}{stderr}");
    assert!(stdout.lines().any(|l| l == "scan done"), "{stdout}{stderr}");
    // The scan is real: the sidecar saw the wasm container's process.
    assert!(
        stdout.contains("(wasm-container)"),
        "the sidecar does not see the wasm container's process:\n{stdout}"
    );
    problems.extend(reached(&stdout));
    if stdout.contains(&marker) || stderr.contains(&marker) {
        problems.push("the planted marker is in the sidecar's output".into());
    }

    // ExecSync into the sidecar: the exec's own view of its confinement.
    let out = node
        .exec_sync(&attacker, &["/probe", "status"], 60)
        .expect("ExecSync");
    assert_eq!(out.exit_code, 0, "{out:?}");
    let of_exec = security_fields(&String::from_utf8_lossy(&out.stdout));
    let init = node.task_pid(&attacker).expect("the sidecar's pid");
    let of_init = security_of(init);
    eprintln!("  sidecar: init {init} {of_init:?}; ExecSync {of_exec:?}");
    assert_eq!(of_exec.len(), 4, "{out:?}");
    problems.extend(unlike_its_init(
        "an ExecSync in the sidecar",
        &of_exec,
        "the sidecar's init",
        &of_init,
    ));

    assert_eq!(fs::read_to_string(&planted).unwrap(), marker);
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[pod, app, attacker]);
    assert!(
        problems.is_empty(),
        "the sidecar got into the wasm container:\n{}",
        problems.join("\n")
    );
}
