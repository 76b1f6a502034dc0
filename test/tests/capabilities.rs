//! End-to-end: least-privilege filesystem access and wall-clock deadlines set
//! by annotations, through `ctr` and through containerd's CRI plugin.

use std::time::{Duration, Instant};

use shim_tests::cgroups::Cgroup;
use shim_tests::cri::CriNode;
use shim_tests::environment::slow;
use shim_tests::images::{HELLO_HTTP, WASM_TEST};
use shim_tests::{unique_id, Containerd, CtrOutput};

const PREOPENS: &str = "wasmtime.containerd.io/preopens";
const DEADLINE: &str = "wasmtime.containerd.io/deadline";

fn run_annotated(
    c: &Containerd,
    name: &str,
    annotation: &str,
    args: &[&str],
) -> (String, CtrOutput) {
    let id = unique_id(name);
    let out = c.run(&id, WASM_TEST, &["--annotation", annotation], args);
    (id, out)
}

#[test]
fn the_preopens_annotation_narrows_what_the_guest_sees() {
    let c = Containerd::start();
    c.import("wasm-test.tar");
    let cat = |path: &'static str| ["/wasitest.wasm", "cat", path];

    // By default the whole root is the guest's.
    let (_, out) = run_annotated(&c, "default", "unrelated=1", &cat("/data/hello.txt"));
    assert_eq!(out.code, 0, "{out:?}");
    let (_, out) = run_annotated(
        &c,
        "default",
        "unrelated=1",
        &["/wasitest.wasm", "write", "/data/new"],
    );
    assert_eq!(out.code, 0, "{out:?}");

    // Only /data, read-only: readable there, nothing else, no writes.
    let only_data = format!("{PREOPENS}=/data:ro");
    let (_, out) = run_annotated(&c, "narrow", &only_data, &cat("/data/hello.txt"));
    assert_eq!(out.code, 0, "{out:?}");
    let (_, out) = run_annotated(&c, "narrow", &only_data, &cat("/bin/wasitest-on-path.wasm"));
    assert_eq!(
        out.code, 1,
        "a file the guest could read by default: {out:?}"
    );
    assert!(out.stdout.starts_with("error:"), "{out:?}");
    let (_, out) = run_annotated(
        &c,
        "narrow",
        &only_data,
        &["/wasitest.wasm", "write", "/data/new"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("Operation not permitted"), "{out:?}");

    // A listed path is the directory itself, not a symlink out of it.
    let volume = c.dir().join("links");
    std::fs::create_dir(&volume).unwrap();
    std::os::unix::fs::symlink("/", volume.join("root")).unwrap();
    let id = unique_id("symlink");
    let mount = format!(
        "type=bind,src={},dst=/mnt,options=rbind:ro",
        volume.display()
    );
    let annotation = format!("{PREOPENS}=/mnt/root");
    let out = c.run(
        &id,
        WASM_TEST,
        &["--mount", &mount, "--annotation", &annotation],
        &cat("/data/hello.txt"),
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("/mnt/root is a symlink to /"),
        "{out:?}"
    );
    c.ctr(&["containers", "rm", &id]);
    c.assert_clean(&[&id]);

    // An empty list: no directory at all.
    let (_, out) = run_annotated(&c, "none", &format!("{PREOPENS}="), &cat("/data/hello.txt"));
    assert_eq!(out.code, 1, "{out:?}");

    // Bad values fail create, naming the container and the annotation, and
    // leave nothing behind.
    for (name, extra, value, expected) in [
        ("badmode", None, "/data:rx", "has access \"rx\""),
        ("relative", None, "data", "not an absolute path"),
        (
            "missing",
            None,
            "/no-such-dir",
            "/no-such-dir is not a directory",
        ),
        (
            "widen",
            Some("--read-only"),
            "/data:rw",
            "cannot be writable",
        ),
    ] {
        let id = unique_id(name);
        let annotation = format!("{PREOPENS}={value}");
        let mut flags = vec!["--annotation", annotation.as_str()];
        flags.extend(extra);
        let out = c.run(&id, WASM_TEST, &flags, &cat("/data/hello.txt"));
        assert_ne!(out.code, 0, "{value}: {out:?}");
        for needle in [
            format!("container {id}"),
            PREOPENS.to_string(),
            expected.to_string(),
        ] {
            assert!(out.stderr.contains(&needle), "{needle:?} not in: {out:?}");
        }
        c.ctr(&["containers", "rm", &id]);
        c.assert_clean(&[&id]);
    }
}

#[test]
fn a_looping_guest_is_stopped_at_its_deadline() {
    let c = Containerd::start();
    c.import("wasm-test.tar");
    let began = Instant::now();
    let (id, out) = run_annotated(
        &c,
        "deadline",
        &format!("{DEADLINE}=1s"),
        &["/wasitest.wasm", "loop"],
    );
    let took = began.elapsed();
    assert_eq!(out.code, 124, "{out:?}");
    assert!(out.stdout.contains("looping"), "{out:?}");
    assert!(
        out.stderr.contains("ran past its deadline of 1s"),
        "{out:?}"
    );
    assert!(
        took >= Duration::from_secs(1) && took < slow(Duration::from_secs(10)),
        "{took:?}"
    );
    c.assert_clean(&[&id]);

    // A guest blocked in a host call (sleeping), where epochs are not
    // checked, is stopped as well.
    let began = Instant::now();
    let (id, out) = run_annotated(
        &c,
        "sleeper",
        &format!("{DEADLINE}=1s"),
        &["/wasitest.wasm", "sleep"],
    );
    let took = began.elapsed();
    assert_eq!(out.code, 124, "{out:?}");
    assert!(
        out.stderr.contains("ran past its deadline of 1s"),
        "{out:?}"
    );
    assert!(took < slow(Duration::from_secs(10)), "{took:?}");
    c.assert_clean(&[&id]);

    // A guest that ends in time is not touched.
    let (_, out) = run_annotated(
        &c,
        "intime",
        &format!("{DEADLINE}=1h"),
        &["/wasitest.wasm", "hello"],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "hello from wasm\n"),
        "{out:?}"
    );

    let id = unique_id("baddeadline");
    let out = c.run(
        &id,
        WASM_TEST,
        &["--annotation", &format!("{DEADLINE}=soon")],
        &["/wasitest.wasm", "hello"],
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains(&format!("container {id}")) && out.stderr.contains("not a duration"),
        "{out:?}"
    );
    c.ctr(&["containers", "rm", &id]);
    c.assert_clean(&[&id]);
}

/// Through CRI, as kubelet passes pod annotations: a looping guest under a
/// CPU quota is throttled by its cgroup and stopped at its deadline with a
/// clear reason in its log; a narrowed guest cannot read what it could by
/// default; a bad annotation fails CreateContainer with the reason.
#[test]
fn cri_pods_get_deadlines_and_narrowed_files_from_annotations() {
    let node = CriNode::start();
    let mut pod_config = node.pod_config("limited");
    pod_config.annotations.insert(DEADLINE.into(), "3s".into());
    pod_config
        .annotations
        .insert(PREOPENS.into(), "/data:ro".into());
    let pod = node.run_pod(&pod_config);

    let mut config = CriNode::container_config("spin", WASM_TEST, &["/wasitest.wasm", "loop"]);
    if let Some(resources) = config.linux.as_mut() {
        resources.resources = Some(k8s_cri::v1::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 20_000,
            ..Default::default()
        });
    }
    let began = Instant::now();
    let spin = node.start_container(&pod, &pod_config, config);
    std::thread::sleep(Duration::from_millis(1500));
    let stat = Cgroup::container(shim_tests::cri::NAMESPACE, &spin)
        .read("cpu", "cpu.stat")
        .expect("the container's cpu cgroup");
    let throttled: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|n| n.trim().parse().ok())
        .expect("nr_throttled");
    assert!(throttled > 0, "the quota throttles the loop: {stat}");
    let status = node.wait_exited(&spin);
    let took = began.elapsed();
    assert_eq!(status.exit_code, 124, "{status:?}");
    assert!(
        took >= Duration::from_secs(3) && took < slow(Duration::from_secs(15)),
        "{took:?}"
    );
    let log = std::fs::read_to_string(node.dir().join("logs/limited/spin.log")).unwrap();
    assert!(log.contains("ran past its deadline of 3s"), "{log}");

    let reader = node.start_container(
        &pod,
        &pod_config,
        CriNode::container_config(
            "reader",
            WASM_TEST,
            &["/wasitest.wasm", "cat", "/bin/wasitest-on-path.wasm"],
        ),
    );
    let status = node.wait_exited(&reader);
    assert_eq!(status.exit_code, 1, "{status:?}");

    let mut bad = CriNode::container_config("bad", WASM_TEST, &["/wasitest.wasm", "hello"]);
    bad.annotations.insert(PREOPENS.into(), "/data:rx".into());
    // CreateContainer only records the container; the shim sees it at start.
    let (bad, started) = node.try_start_container(&pod, &pod_config, bad);
    let message = started.expect_err("StartContainer").message().to_string();
    assert!(
        message.contains(PREOPENS) && message.contains("\"rx\""),
        "{message}"
    );

    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[pod, spin, reader, bad]);
}

/// Two handlers with different engine options on one node (what a
/// RuntimeClass per handler gives a cluster): the default refuses a GC
/// module with the reason, `wasmtime-gc` runs it; options containerd 1.6
/// does not pass on, and an option that does not exist, are shown for what
/// they are.
#[test]
fn cri_handlers_with_different_engine_options_share_a_node() {
    use shim_tests::cri::{BROKEN_HANDLER, GC_HANDLER, INLINE_HANDLER};
    let node = CriNode::start();
    let gc = || CriNode::container_config("gc", WASM_TEST, &["/gc.wasm"]);

    // The default handler: no GC, a clear error at start.
    let plain_config = node.pod_config("plain");
    let plain = node.run_pod(&plain_config);
    let (refused, started) = node.try_start_container(&plain, &plain_config, gc());
    let message = started
        .expect_err("a GC module without WasmGc")
        .message()
        .to_string();
    assert!(
        message.contains("/gc.wasm is not valid WebAssembly") && message.contains("gc"),
        "{message}"
    );

    // The GC handler, options from a file: runs it, in a shim of its own.
    let gc_config = node.pod_config("gcpod");
    let gc_pod = node.run_pod_with(&gc_config, GC_HANDLER);
    let ran = node.start_container(&gc_pod, &gc_config, gc());
    assert_eq!(node.wait_exited(&ran).exit_code, 7);

    // Options inline in containerd's config reach the shim from 1.7 on.
    let inline_config = node.pod_config("inline");
    let inline_pod = node.run_pod_with(&inline_config, INLINE_HANDLER);
    let (inline, started) = node.try_start_container(&inline_pod, &inline_config, gc());
    let version = shim_tests::containerd_version();
    if (version.major, version.minor) >= (1, 7) {
        started.expect("StartContainer with inline options");
        assert_eq!(node.wait_exited(&inline).exit_code, 7);
    } else {
        let message = started
            .expect_err("1.6 passes no options table")
            .message()
            .to_string();
        assert!(message.contains("not valid WebAssembly"), "{message}");
    }

    // A handler whose options name something that does not exist: its pods
    // fail at RunPodSandbox with the option's name.
    let broken_config = node.pod_config("broken");
    let request = k8s_cri::v1::RunPodSandboxRequest {
        config: Some(broken_config),
        runtime_handler: BROKEN_HANDLER.into(),
    };
    let message = node
        .try_call(|mut c| async move { c.run_pod_sandbox(request).await })
        .expect_err("RunPodSandbox with a bad option")
        .message()
        .to_string();
    assert!(
        message.contains("WasmGC") && message.contains("runtime options"),
        "{message}"
    );

    for pod in [&plain, &gc_pod, &inline_pod] {
        node.stop_and_remove_pod(pod);
    }
    node.assert_clean(&[plain, gc_pod, inline_pod, refused, ran, inline]);
}

/// `ctr run --runtime-config-path`: a file of options for one container.
#[test]
fn ctr_takes_engine_options_from_a_runtime_config_file() {
    let c = Containerd::start();
    c.import("wasm-test.tar");
    let options = c.dir().join("wasmtime-gc.toml");
    std::fs::write(&options, "WasmGc = true\n").unwrap();
    let with = format!("--runtime-config-path={}", options.display());
    let (_, out) = {
        let id = unique_id("gc");
        let out = c.run(&id, WASM_TEST, &[&with], &["/gc.wasm"]);
        (id, out)
    };
    assert_eq!(out.code, 7, "{out:?}");
    let id = unique_id("nogc");
    let out = c.run(&id, WASM_TEST, &[], &["/gc.wasm"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains(&format!("container {id}"))
            && out.stderr.contains("not valid WebAssembly"),
        "{out:?}"
    );
    c.ctr(&["containers", "rm", &id]);
    c.assert_clean(&[&id]);

    // A bad file fails the shim's start with the reason and the container.
    let broken = c.dir().join("broken.toml");
    std::fs::write(&broken, "WasmGC = true\n").unwrap();
    let id = unique_id("badopts");
    let flag = format!("--runtime-config-path={}", broken.display());
    let out = c.run(&id, WASM_TEST, &[&flag], &["/gc.wasm"]);
    assert_ne!(out.code, 0, "{out:?}");
    let expected = format!(
        "container {id}: runtime options ({}): unknown field `WasmGC`",
        broken.display()
    );
    assert!(out.stderr.contains(&expected), "{out:?}");
    c.ctr(&["containers", "rm", &id]);
    c.assert_clean(&[&id]);
}

const NETWORK: &str = "wasmtime.containerd.io/network";

/// `net connect` (images/net/net.c) opens a TCP connection through
/// wasi:sockets: a refused use is `access-denied` from the shim, before the
/// kernel sees anything; an allowed one reaches the kernel, which has no
/// route or no listener in a `ctr run` container's empty network namespace.
#[test]
fn the_network_annotation_narrows_what_the_guest_can_reach() {
    let c = Containerd::start();
    c.import("wasm-test.tar");
    let connect = |annotation: &str, ip: &'static str| {
        let (_, out) = run_annotated(&c, "net", annotation, &["/net.wasm", "connect", ip, "9"]);
        out
    };
    let reached_the_kernel = |out: &CtrOutput| {
        out.code == 1 && out.stdout.starts_with("error: ") && !out.stdout.contains("access-denied")
    };
    let out = connect("unrelated=1", "127.0.0.1");
    assert!(reached_the_kernel(&out), "by default: {out:?}");
    let out = connect(&format!("{NETWORK}=none"), "127.0.0.1");
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (1, "error: access-denied\n"),
        "{out:?}"
    );
    let rule = format!("{NETWORK}=connect:10.0.0.0/8");
    let out = connect(&rule, "127.0.0.1");
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (1, "error: access-denied\n"),
        "{out:?}"
    );
    let out = connect(&rule, "10.1.2.3");
    assert!(reached_the_kernel(&out), "an allowed peer: {out:?}");

    let id = unique_id("badnet");
    let flag = format!("{NETWORK}=connect:example.com:80");
    let out = c.run(
        &id,
        WASM_TEST,
        &["--annotation", &flag],
        &["/net.wasm", "connect", "127.0.0.1", "9"],
    );
    assert_ne!(out.code, 0, "{out:?}");
    for needle in [
        format!("container {id}"),
        NETWORK.to_string(),
        "is not ADDR".to_string(),
    ] {
        assert!(out.stderr.contains(&needle), "{needle:?} not in: {out:?}");
    }
    c.ctr(&["containers", "rm", &id]);
    c.assert_clean(&[&id]);
}

/// Through CRI: beside an HTTP server in the pod, a guest allowed to reach
/// it connects; one whose container annotation says `none` cannot.
#[test]
fn cri_network_annotation_allows_only_the_listed_peers() {
    let node = CriNode::start();
    let mut pod_config = node.pod_config("netpod");
    pod_config
        .annotations
        .insert(NETWORK.into(), "connect:127.0.0.0/8:8080".into());
    let pod = node.run_pod(&pod_config);
    let ip = node.pod_ip(&pod);
    let web = node.start_container(
        &pod,
        &pod_config,
        CriNode::container_config("web", HELLO_HTTP, &[]),
    );
    assert_eq!(
        node.wait_http(&format!("http://{ip}:8080/")).0,
        200,
        "the pod's own server"
    );

    let client = |name: &str, network: Option<&str>| {
        let mut config = CriNode::container_config(
            name,
            WASM_TEST,
            &["/net.wasm", "connect", "127.0.0.1", "8080"],
        );
        if let Some(value) = network {
            config.annotations.insert(NETWORK.into(), value.into());
        }
        let id = node.start_container(&pod, &pod_config, config);
        let status = node.wait_exited(&id);
        let log =
            std::fs::read_to_string(node.dir().join(format!("logs/netpod/{name}.log"))).unwrap();
        (id, status.exit_code, log)
    };
    let (allowed, code, log) = client("allowed", None);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("stdout F connected"), "{log}");
    let (denied, code, log) = client("denied", Some("none"));
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("stdout F error: access-denied"), "{log}");

    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[pod, web, allowed, denied]);
}
