//! Wasm pods through containerd's CRI plugin, driven as kubelet drives it.

use std::time::{Duration, Instant};

use shim_tests::cgroups::Cgroup;
use shim_tests::cri::{http_response, share_pid_namespace, CriNode, HANDLER};
use shim_tests::environment::slow;
use shim_tests::images::{HELLO_HTTP, HELLO_WASI, WASM_TEST};

#[test]
fn a_wasm_pod_runs_logs_and_is_torn_down() {
    let node = CriNode::start();
    let pod_config = node.pod_config("hello");
    let pod = node.run_pod(&pod_config);
    let config = CriNode::container_config("hello", WASM_TEST, &["/wasitest.wasm", "hello"]);
    let id = node.start_container(&pod, &pod_config, config);
    let status = node.wait_exited(&id);
    assert_eq!(status.exit_code, 0, "{status:?}");
    assert_eq!(status.reason, "Completed", "{status:?}");
    // The CRI log file, in CRI format: "<time> stdout F <line>".
    let log =
        std::fs::read_to_string(node.dir().join("logs/hello/hello.log")).expect("CRI log file");
    assert!(
        log.lines()
            .any(|l| l.ends_with(" stdout F hello from wasm")),
        "CRI log:\n{log}"
    );
    // The sandbox (pause, native) and the wasm container share one shim.
    assert_eq!(
        node.shims().len(),
        1,
        "one shim per pod: {:?}",
        node.shims()
    );
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[pod, id]);
    assert_eq!(HANDLER, "wasmtime");
}

#[test]
fn a_pod_past_its_memory_limit_reports_oomkilled() {
    let node = CriNode::start();
    let pod_config = node.pod_config("oom");
    let pod = node.run_pod(&pod_config);
    let mut config =
        CriNode::container_config("oom", WASM_TEST, &["/wasitest.wasm", "alloc", "300"]);
    config.linux = Some(k8s_cri::v1::LinuxContainerConfig {
        resources: Some(k8s_cri::v1::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = node.start_container(&pod, &pod_config, config);
    let status = node.wait_exited(&id);
    assert_eq!(status.exit_code, 137, "{status:?}");
    assert_eq!(status.reason, "OOMKilled", "{status:?}");
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[pod, id]);
}

#[test]
fn a_wasm_container_and_a_native_sidecar_share_a_pod_and_a_shim() {
    let node = CriNode::start();
    let pod_config = node.pod_config("mixed");
    let pod = node.run_pod(&pod_config);
    let wasm = node.start_container(
        &pod,
        &pod_config,
        CriNode::container_config("wasm", WASM_TEST, &["/wasitest.wasm", "loop"]),
    );
    let native = node.start_container(
        &pod,
        &pod_config,
        CriNode::container_config("sidecar", WASM_TEST, &["/native-hello", "sidecar"]),
    );
    let status = node.wait_exited(&native);
    assert_eq!(status.exit_code, 0, "{status:?}");
    let log =
        std::fs::read_to_string(node.dir().join("logs/mixed/sidecar.log")).expect("sidecar log");
    assert!(
        log.contains("stdout F hello from a native binary (2 args)"),
        "{log}"
    );
    let running = node.container_status(&wasm);
    assert_eq!(
        running.state,
        k8s_cri::v1::ContainerState::ContainerRunning as i32,
        "{running:?}"
    );
    // kubectl top: the running wasm container has CPU and memory in its
    // stats, CPU as its cgroup counts it (nanoseconds, on v1 and v2).
    let cgroup = Cgroup::container(shim_tests::cri::NAMESPACE, &wasm);
    let before = cgroup.cpu_time().expect("the container's CPU time");
    let stats = node.call("ContainerStats", |mut c| {
        let container_id = wasm.clone();
        async move {
            c.container_stats(k8s_cri::v1::ContainerStatsRequest { container_id })
                .await
        }
    });
    let after = cgroup.cpu_time().expect("the container's CPU time");
    let stats = stats.stats.expect("stats");
    let memory = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value)
        .unwrap_or(0);
    assert!(memory > 0, "memory working set: {stats:?}");
    // RSS and page faults, as CRI reads them from the task's metrics
    // (v1: total_rss, total_pgfault; v2: anon, pgfault).
    let value = |v: &Option<k8s_cri::v1::UInt64Value>| v.as_ref().map_or(0, |v| v.value);
    let usage = stats.memory.as_ref().expect("memory stats");
    assert!(
        value(&usage.rss_bytes) > 0 && value(&usage.page_faults) > 0,
        "RSS and page faults: {stats:?}"
    );
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map(|v| v.value)
        .unwrap_or(0);
    assert!(
        before > 0 && (before..=after).contains(&cpu),
        "CPU time {cpu} ns, the cgroup's {before}..={after} ns: {stats:?}"
    );
    assert_eq!(
        node.shims().len(),
        1,
        "one shim for the pod: {:?}",
        node.shims()
    );
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[pod, wasm, native]);
}

#[test]
fn cpu_limit_reaches_the_cgroup_and_stop_container_sends_sigterm() {
    let node = CriNode::start();
    let pod_config = node.pod_config("limits");
    let pod = node.run_pod(&pod_config);
    let mut config = CriNode::container_config("spin", WASM_TEST, &["/wasitest.wasm", "loop"]);
    config.linux = Some(k8s_cri::v1::LinuxContainerConfig {
        resources: Some(k8s_cri::v1::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = node.start_container(&pod, &pod_config, config);
    // CRI with the cgroupfs driver and no parent puts the container at
    // /k8s.io/<id>; with the systemd driver in its pod's slice. v1 has the
    // quota in cpu.cfs_quota_us, v2 in cpu.max.
    let limit = Cgroup::container(shim_tests::cri::NAMESPACE, &id)
        .cpu_max()
        .expect("the container's cpu cgroup");
    assert_eq!(limit, (Some(50_000), 100_000));
    // kubelet's StopContainer: SIGTERM, then SIGKILL after the grace period.
    // The looping guest stops on SIGTERM, long before the 10 s grace period.
    let started = std::time::Instant::now();
    let container_id = id.clone();
    node.call("StopContainer", |mut c| async move {
        c.stop_container(k8s_cri::v1::StopContainerRequest {
            container_id,
            timeout: 10,
        })
        .await
    });
    let status = node.wait_exited(&id);
    assert_eq!(status.exit_code, 143, "{status:?}");
    assert!(
        started.elapsed() < slow(std::time::Duration::from_secs(5)),
        "took {:?}",
        started.elapsed()
    );
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[pod, id]);
}

#[test]
fn twenty_pods_in_parallel_leave_nothing_behind() {
    let node = CriNode::start();
    let results: Vec<(String, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|n| {
                let node = &node;
                s.spawn(move || {
                    let name = format!("par{n}");
                    let pod_config = node.pod_config(&name);
                    let pod = node.run_pod(&pod_config);
                    let config = CriNode::container_config(
                        &name,
                        WASM_TEST,
                        &["/wasitest.wasm", "args", &name],
                    );
                    let id = node.start_container(&pod, &pod_config, config);
                    let status = node.wait_exited(&id);
                    assert_eq!(status.exit_code, 0, "{name}: {status:?}");
                    let log =
                        std::fs::read_to_string(node.dir().join(format!("logs/{name}/{name}.log")))
                            .unwrap_or_default();
                    node.stop_and_remove_pod(&pod);
                    (log, vec![pod, id])
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("pod thread"))
            .collect()
    });
    for (n, (log, _)) in results.iter().enumerate() {
        assert!(
            log.contains(&format!("stdout F argv[2]=par{n}")),
            "pod {n}: {log}"
        );
    }
    let ids: Vec<String> = results.into_iter().flat_map(|(_, ids)| ids).collect();
    node.assert_clean(&ids);
    assert!(node.shims().is_empty(), "{:?}", node.shims());
}

#[test]
fn a_config_map_style_volume_is_read_by_the_guest() {
    let node = CriNode::start();
    // kubelet materialises a configMap as files in a host directory and asks
    // CRI for a read-only bind mount of it.
    let volume = node.dir().join("configmap");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::write(volume.join("greeting"), "hello from a configMap\n").unwrap();
    let pod_config = node.pod_config("config");
    let pod = node.run_pod(&pod_config);
    let mut config = CriNode::container_config(
        "reader",
        WASM_TEST,
        &["/wasitest.wasm", "cat", "/etc/config/greeting"],
    );
    config.mounts = vec![k8s_cri::v1::Mount {
        container_path: "/etc/config".into(),
        host_path: volume.display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let id = node.start_container(&pod, &pod_config, config);
    let status = node.wait_exited(&id);
    assert_eq!(status.exit_code, 0, "{status:?}");
    let log = std::fs::read_to_string(node.dir().join("logs/config/reader.log")).unwrap();
    assert!(log.contains("stdout F hello from a configMap"), "{log}");
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[pod, id]);
}

#[test]
fn a_wasi_http_component_serves_at_the_pod_ip_and_drains_on_stop() {
    let node = CriNode::start();
    let pod_config = node.pod_config("web");
    let pod = node.run_pod(&pod_config);
    let ip = node.pod_ip(&pod);
    let web = node.start_container(
        &pod,
        &pod_config,
        CriNode::container_config("web", HELLO_HTTP, &[]),
    );
    // The default port, 8080, at the pod's IP.
    let (status, body) = node.wait_http(&format!("http://{ip}:8080/hello?n=1"));
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from wasm at /hello?n=1\n"),
        "{}",
        node.log()
    );
    // A request whose guest traps gets a 500; the next one is served again.
    assert_eq!(node.http_get(&format!("http://{ip}:8080/trap")).0, 500);
    assert_eq!(node.http_get(&format!("http://{ip}:8080/again")).0, 200);

    // A second server in the same pod (one network namespace) on its own port.
    let mut second = CriNode::container_config("second", HELLO_HTTP, &[]);
    second.envs = vec![k8s_cri::v1::KeyValue {
        key: "PORT".into(),
        value: "8081".into(),
    }];
    let second = node.start_container(&pod, &pod_config, second);
    let (status, body) = node.wait_http(&format!("http://{ip}:8081/second"));
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from wasm at /second\n")
    );

    // A third on the taken default port fails to start, and says why.
    let (clash, started) = node.try_start_container(
        &pod,
        &pod_config,
        CriNode::container_config("clash", HELLO_HTTP, &[]),
    );
    let err = started.expect_err("a second server on port 8080");
    assert!(
        err.message()
            .contains("cannot listen for HTTP on port 8080"),
        "{err:?}\n{}",
        node.log()
    );

    // StopContainer while a slow request is in flight: the server stops
    // accepting, answers it, and exits 0 well within the grace period.
    let in_flight = node.http_request(&format!("http://{ip}:8080/slow"));
    // In flight: connected (curl takes a while to start on a slow node),
    // then a moment for the server to read the request.
    assert!(
        connected(&in_flight, &ip, 8080, Duration::from_secs(30)),
        "curl never connected to {ip}:8080"
    );
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let container_id = web.clone();
    node.call("StopContainer", |mut c| async move {
        c.stop_container(k8s_cri::v1::StopContainerRequest {
            container_id,
            timeout: 10,
        })
        .await
    });
    let stopped_after = started.elapsed();
    let (status, body) = http_response(in_flight);
    assert_eq!((status, body.as_str()), (200, "hello from wasm at /slow\n"));
    let exited = node.wait_exited(&web);
    assert_eq!((exited.exit_code, exited.reason.as_str()), (0, "Completed"));
    assert!(
        stopped_after < slow(Duration::from_secs(5)),
        "{stopped_after:?}"
    );
    assert_eq!(node.http_get(&format!("http://{ip}:8080/")).0, 0);

    let log = std::fs::read_to_string(node.dir().join("logs/web/web.log")).unwrap();
    assert!(log.contains("stdout F served /hello?n=1"), "{log}");
    assert!(log.contains("stdout F served /slow"), "{log}");
    assert!(log.contains("/trap: the guest failed"), "{log}");

    // A pod annotation sets the port for the pod's servers.
    let mut annotated = node.pod_config("annotated");
    annotated
        .annotations
        .insert("wasmtime.containerd.io/http-port".into(), "9000".into());
    let pod2 = node.run_pod(&annotated);
    let ip2 = node.pod_ip(&pod2);
    let web2 = node.start_container(
        &pod2,
        &annotated,
        CriNode::container_config("web", HELLO_HTTP, &[]),
    );
    assert_eq!(node.wait_http(&format!("http://{ip2}:9000/")).0, 200);

    node.stop_and_remove_pod(&pod);
    node.stop_and_remove_pod(&pod2);
    node.assert_clean(&[pod, pod2, web, second, clash, web2]);
}

/// Waits (up to `patience`) until process `client` has a TCP connection
/// established to `ip:port`, as its network namespace's /proc/net/tcp shows.
fn connected(client: &std::process::Child, ip: &str, port: u16, patience: Duration) -> bool {
    let octets: Vec<u8> = ip.split('.').filter_map(|o| o.parse().ok()).collect();
    // The kernel prints an address as its 32 bits in host (little-endian) order.
    let remote = format!(
        "{:02X}{:02X}{:02X}{:02X}:{port:04X}",
        octets[3], octets[2], octets[1], octets[0]
    );
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        let table =
            std::fs::read_to_string(format!("/proc/{}/net/tcp", client.id())).unwrap_or_default();
        // `sl local rem st ...`; state 01 is ESTABLISHED.
        if table.lines().skip(1).any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(2) == Some(&remote.as_str()) && cols.get(3) == Some(&"01")
        }) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_pod_sharing_its_pid_namespace_runs_all_its_containers() {
    let node = CriNode::start();
    let mut pod_config = node.pod_config("shared");
    let mut configs: Vec<_> = (0..4)
        .map(|n| {
            CriNode::container_config(&format!("c{n}"), WASM_TEST, &["/wasitest.wasm", "hello"])
        })
        .collect();
    share_pid_namespace(&mut pod_config, &mut configs.iter_mut().collect::<Vec<_>>());
    let pod = node.run_pod(&pod_config);
    let mut ids = vec![pod.clone()];
    for config in configs {
        let id = node.start_container(&pod, &pod_config, config);
        let status = node.wait_exited(&id);
        assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"));
        ids.push(id);
    }
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&ids);
}

#[test]
fn a_pod_runs_an_image_of_platform_wasi_wasm() {
    // Preloaded as `ctr -n k8s.io images import --all-platforms` (without it
    // ctr keeps only linux/amd64 and the image is not there at all).
    let node = CriNode::start();
    node.import("hello-wasi.tar", &["--all-platforms"]);
    let pod_config = node.pod_config("wasi");
    let pod = node.run_pod(&pod_config);
    let config = CriNode::container_config("wasi", HELLO_WASI, &[]);
    let id = node.start_container(&pod, &pod_config, config);
    let status = node.wait_exited(&id);
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"));
    let log = std::fs::read_to_string(node.dir().join("logs/wasi/wasi.log")).unwrap();
    assert!(log.contains("stdout F Hello from WebAssembly!"), "{log}");
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[pod, id]);
}

/// A seccomp profile as CRI passes it (`securityContext.seccompProfile`).
fn with_seccomp(
    mut config: k8s_cri::v1::ContainerConfig,
    profile: k8s_cri::v1::SecurityProfile,
) -> k8s_cri::v1::ContainerConfig {
    let context = config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default);
    context.seccomp = Some(profile);
    config
}

/// `Seccomp:` of /proc/PID/status: 0 none, 2 a filter.
fn seccomp_mode(pid: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))?
        .trim()
        .parse()
        .ok()
}

#[test]
fn seccomp_profiles_bind_wasm_guests_and_native_sidecars() {
    use k8s_cri::v1::security_profile::ProfileType;
    use k8s_cri::v1::SecurityProfile;
    let node = CriNode::start();
    let volume = node.dir().join("seccomp-rw");
    std::fs::create_dir_all(&volume).unwrap();
    // A Localhost profile that allows everything but hard links.
    let profile = node.dir().join("no-links.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["link", "linkat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .unwrap();
    let runtime_default = SecurityProfile {
        profile_type: ProfileType::RuntimeDefault as i32,
        ..Default::default()
    };
    let no_links = SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: profile.display().to_string(),
    };
    let pod_config = node.pod_config("seccomp");
    let pod = node.run_pod(&pod_config);
    let linker = |name: &str| {
        let mut config = CriNode::container_config(
            name,
            WASM_TEST,
            &[
                "/wasitest.wasm",
                "do",
                "write",
                &format!("/rw/{name}"),
                "--",
                "link",
                &format!("/rw/{name}"),
                &format!("/rw/{name}-link"),
            ],
        );
        config.mounts = vec![k8s_cri::v1::Mount {
            container_path: "/rw".into(),
            host_path: volume.display().to_string(),
            ..Default::default()
        }];
        config
    };
    let start = |config| node.start_container(&pod, &pod_config, config);
    // The runtime's default profile: the guest and a native sidecar run under
    // a filter, and wasmtime needs nothing it forbids.
    let looping = start(with_seccomp(
        CriNode::container_config("loop", WASM_TEST, &["/wasitest.wasm", "loop"]),
        runtime_default.clone(),
    ));
    let sidecar = start(with_seccomp(
        CriNode::container_config("sidecar", WASM_TEST, &["/native-hello", "sleep"]),
        runtime_default.clone(),
    ));
    let default = start(with_seccomp(linker("default"), runtime_default));
    // No profile, and one that forbids links: only the second fails to link.
    let unconfined = start(linker("unconfined"));
    let confined = start(with_seccomp(linker("confined"), no_links));
    for id in [&looping, &sidecar] {
        let pid = node.task_pid(id).expect("a task pid");
        assert_eq!(
            seccomp_mode(pid),
            Some(2),
            "{id} ({pid}) runs under a filter"
        );
    }
    let log = |name: &str| {
        std::fs::read_to_string(node.dir().join(format!("logs/seccomp/{name}.log")))
            .unwrap_or_default()
    };
    for (id, name) in [(&default, "default"), (&unconfined, "unconfined")] {
        let status = node.wait_exited(id);
        assert_eq!(status.exit_code, 0, "{name}: {status:?}\n{}", log(name));
        assert!(log(name).contains(": ok"), "{}", log(name));
    }
    let status = node.wait_exited(&confined);
    assert_eq!(status.exit_code, 1, "{status:?}\n{}", log("confined"));
    let confined_log = log("confined");
    assert!(
        confined_log.contains("wrote /rw/confined")
            && confined_log.contains("error: link /rw/confined /rw/confined-link"),
        "{confined_log}"
    );
    assert!(volume.join("unconfined-link").exists());
    assert!(!volume.join("confined-link").exists());
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[pod, looping, sidecar, default, unconfined, confined]);
}

/// A child process killed (by PID) and reaped if the test ends before it does.
struct Reaped(Option<std::process::Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_paused_http_server_answers_a_request_made_while_paused_once_resumed() {
    let node = CriNode::start();
    let pod_config = node.pod_config("frozen");
    let pod = node.run_pod(&pod_config);
    let ip = node.pod_ip(&pod);
    let web = node.start_container(
        &pod,
        &pod_config,
        CriNode::container_config("web", HELLO_HTTP, &[]),
    );
    assert_eq!(node.wait_http(&format!("http://{ip}:8080/before")).0, 200);
    // kubelet has no pause; containerd's Task API does (ctr task pause).
    let paused = node.ctr_output(&["task", "pause", &web]);
    assert_eq!(paused.code, 0, "{}", paused.stderr);
    let listed = node.ctr_output(&["task", "ls"]);
    assert!(
        listed
            .stdout
            .lines()
            .any(|l| l.starts_with(web.as_str()) && l.ends_with("PAUSED")),
        "{}",
        listed.stdout
    );
    // The kernel takes the connection; the frozen server answers nothing.
    let mut curl = Reaped(Some(
        node.http_request(&format!("http://{ip}:8080/while-paused")),
    ));
    std::thread::sleep(Duration::from_secs(1));
    let waiting = curl.0.as_mut().unwrap().try_wait().expect("curl");
    assert!(waiting.is_none(), "answered while paused: {waiting:?}");
    let resumed = node.ctr_output(&["task", "resume", &web]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let (status, body) = http_response(curl.0.take().unwrap());
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from wasm at /while-paused\n")
    );
    assert_eq!(node.http_get(&format!("http://{ip}:8080/after")).0, 200);
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[pod, web]);
}

/// A container of `HELLO_HTTP` running the wasm of `WASM_TEST`, mounted as an
/// image volume at `/vol` (KEP-4639; CRI `Mount.image`).
fn from_image_volume(name: &str, args: &[&str]) -> k8s_cri::v1::ContainerConfig {
    let mut config = CriNode::container_config(name, HELLO_HTTP, args);
    config.mounts = vec![k8s_cri::v1::Mount {
        container_path: "/vol".into(),
        readonly: true,
        image: Some(k8s_cri::v1::ImageSpec {
            image: WASM_TEST.into(),
            ..Default::default()
        }),
        ..Default::default()
    }];
    config
}

#[test]
fn an_image_volume_is_read_by_the_guest_and_its_wasm_is_an_entrypoint() {
    let version = shim_tests::environment::containerd_version();
    if !version.is_v2() {
        eprintln!("containerd {version} has no image volumes (2.1 and later): nothing to test");
        return;
    }
    let node = CriNode::start();
    let pod_config = node.pod_config("imagevol");
    let pod = node.run_pod(&pod_config);
    let reader = node.start_container(
        &pod,
        &pod_config,
        from_image_volume(
            "reader",
            &["/vol/wasitest.wasm", "cat", "/vol/data/hello.txt"],
        ),
    );
    let status = node.wait_exited(&reader);
    let log = std::fs::read_to_string(node.dir().join("logs/imagevol/reader.log")).unwrap();
    assert_eq!(status.exit_code, 0, "{status:?}\n{log}");
    assert!(
        log.contains("stdout F hello from a file in the image"),
        "{log}"
    );
    // The volume is read-only to the guest.
    let writer = node.start_container(
        &pod,
        &pod_config,
        from_image_volume(
            "writer",
            &["/vol/wasitest.wasm", "write", "/vol/data/new.txt"],
        ),
    );
    let status = node.wait_exited(&writer);
    let log = std::fs::read_to_string(node.dir().join("logs/imagevol/writer.log")).unwrap();
    assert_eq!(status.exit_code, 1, "{status:?}\n{log}");
    assert!(log.contains("error: /vol/data/new.txt:"), "{log}");
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[pod, reader, writer]);
}

/// kubelet's `hostUsers: false`: the pod's own user namespace, its root
/// mapped to `HOST_ID` and on, for the sandbox and each container.
const USERNS_HOST_ID: u32 = 100 * 65536;

fn userns_mappings() -> Vec<k8s_cri::v1::IdMapping> {
    vec![k8s_cri::v1::IdMapping {
        host_id: USERNS_HOST_ID,
        container_id: 0,
        length: 65536,
    }]
}

fn in_pod_user_namespace(options: &mut Option<k8s_cri::v1::NamespaceOption>) {
    let mapping = userns_mappings;
    options.get_or_insert_with(Default::default).userns_options =
        Some(k8s_cri::v1::UserNamespace {
            mode: k8s_cri::v1::NamespaceMode::Pod as i32,
            uids: mapping(),
            gids: mapping(),
        });
}

#[test]
fn a_pod_with_its_own_user_namespace_runs_wasm_from_the_cache_and_native_sidecars() {
    let version = shim_tests::environment::containerd_version();
    if !version.is_v2() {
        eprintln!(
            "containerd {version}: user namespaces need containerd 2.0 or later: nothing to test"
        );
        return;
    }
    let node = CriNode::start();
    if !shim_tests::environment::idmapped_mounts_under(node.dir()) {
        eprintln!(
            "{}: no idmapped mounts on this filesystem with this kernel (tmpfs needs Linux 6.3), \
             which user namespaces need, for runc as for this shim: nothing to test",
            node.dir().display()
        );
        return;
    }
    // A first pod compiles the guest into the node's cache.
    let warm_config = node.pod_config("warm");
    let warm = node.run_pod(&warm_config);
    let first = node.start_container(
        &warm,
        &warm_config,
        CriNode::container_config("first", WASM_TEST, &["/wasitest.wasm", "hello"]),
    );
    assert_eq!(node.wait_exited(&first).exit_code, 0);
    node.stop_and_remove_pod(&warm);
    let mut pod_config = node.pod_config("userns");
    in_pod_user_namespace(
        &mut pod_config
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .namespace_options,
    );
    // The `wasmtime` handler as the node installer writes it (no options table).
    let pod = node.run_pod(&pod_config);
    // A volume of the host's root, at a path the image does not have.
    let volume = node.dir().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::write(volume.join("note.txt"), "from the host\n").unwrap();
    let start = |name: &str, command: &[&str]| {
        let mut config = CriNode::container_config(name, WASM_TEST, command);
        // As kubelet gives a volume of such a pod: idmapped with its mappings.
        config.mounts = vec![k8s_cri::v1::Mount {
            container_path: "/vol/data".into(),
            host_path: volume.display().to_string(),
            uid_mappings: userns_mappings(),
            gid_mappings: userns_mappings(),
            ..Default::default()
        }];
        let context = config
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap();
        in_pod_user_namespace(&mut context.namespace_options);
        node.start_container(&pod, &pod_config, config)
    };
    let wasm = start("wasm", &["/wasitest.wasm", "growto", "1"]);
    let native = start("sidecar", &["/native-hello", "sleep"]);
    // Host uid 0 is nobody in the pod: its root is USERNS_HOST_ID.
    let host_root = USERNS_HOST_ID.to_string();
    for id in [&wasm, &native] {
        let pid = node.task_pid(id).expect("the task runs");
        let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
        let fields: Vec<&str> = map.split_whitespace().collect();
        assert_eq!(fields, ["0", host_root.as_str(), "65536"], "{id}: {map}");
    }
    // The guest's code came from the node's cache, which the first pod filled.
    let bundle = node
        .dir()
        .join("state/io.containerd.runtime.v2.task")
        .join(shim_tests::cri::NAMESPACE)
        .join(&wasm);
    let metrics = shim_tests::metrics::task_metrics(&bundle, &wasm);
    let code = metrics.wasm.expect("wasm metrics");
    assert_eq!(
        (code.code_cache_hits, code.code_compiles),
        (1, 0),
        "{code:?}"
    );
    // The image's files are the pod's root's (the idmapped rootfs), and so
    // is a file a guest writes.
    let pid = node.task_pid(&wasm).unwrap();
    let owner = |path: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{pid}/root{path}")).map(|m| m.uid())
    };
    assert_eq!(owner("/data/hello.txt").unwrap(), USERNS_HOST_ID);
    // The volume is idmapped (the host's root owns it, the pod's root sees
    // it as its own), and its mountpoint was made as the pod's root.
    assert_eq!(owner("/vol/data/note.txt").unwrap(), USERNS_HOST_ID);
    assert_eq!(owner("/vol").unwrap(), USERNS_HOST_ID);
    // An exec runs in the pod's user namespace too, and writes as its root.
    let exec = node
        .exec_sync(&wasm, &["/wasitest.wasm", "write", "/written.txt"], 20)
        .expect("ExecSync");
    assert_eq!(
        exec.exit_code,
        0,
        "{}",
        String::from_utf8_lossy(&exec.stdout)
    );
    assert_eq!(owner("/written.txt").unwrap(), USERNS_HOST_ID);
    let exec = node
        .exec_sync(&wasm, &["/wasitest.wasm", "cat", "/vol/data/note.txt"], 20)
        .expect("ExecSync");
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "from the host\n");
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[warm, first, pod, wasm, native]);
}

#[test]
fn pod_stats_cover_a_wasm_pods_cgroup_and_its_containers() {
    use shim_tests::environment::{cgroup_driver, containerd_version, CgroupDriver};
    let version = containerd_version();
    if (version.major, version.minor) < (1, 7) || cgroup_driver() != CgroupDriver::Cgroupfs {
        eprintln!(
            "containerd {version}: PodSandboxStats needs 1.7 and a cgroupfs pod parent here: nothing to test"
        );
        return;
    }
    let node = CriNode::start();
    let mut pod_config = node.pod_config("podstats");
    // kubelet's cgroupfs driver gives each pod a parent of its own.
    let parent = format!(
        "/wasmtime-test-pods/{}",
        pod_config.metadata.as_ref().unwrap().uid
    );
    pod_config.linux.as_mut().unwrap().cgroup_parent = parent.clone();
    // Removed as kubelet removes it, in every hierarchy; one that cannot be
    // (not empty) is a container's cgroup left behind.
    let remove_parent = || -> Vec<String> {
        let mut left = Vec::new();
        let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .chain([std::path::PathBuf::from("/sys/fs/cgroup")]);
        for hierarchy in hierarchies {
            let dir = hierarchy.join(parent.trim_start_matches('/'));
            if dir.exists() && std::fs::remove_dir(&dir).is_err() {
                left.push(dir.display().to_string());
            }
            let _ = std::fs::remove_dir(hierarchy.join("wasmtime-test-pods"));
        }
        left
    };
    let pod = node.run_pod(&pod_config);
    let wasm = node.start_container(
        &pod,
        &pod_config,
        CriNode::container_config("spin", WASM_TEST, &["/wasitest.wasm", "loop"]),
    );
    std::thread::sleep(Duration::from_millis(500));
    let pod_sandbox_id = pod.clone();
    let stats = node.try_call(|mut c| async move {
        c.pod_sandbox_stats(k8s_cri::v1::PodSandboxStatsRequest { pod_sandbox_id })
            .await
    });
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[pod.clone(), wasm.clone()]);
    let left = remove_parent();
    assert!(
        left.is_empty(),
        "cgroups left under the pod's parent: {left:?}"
    );
    let stats = stats.expect("PodSandboxStats");
    let linux = stats.stats.and_then(|s| s.linux).expect("linux pod stats");
    let value = |v: Option<k8s_cri::v1::UInt64Value>| v.map_or(0, |v| v.value);
    let cpu = value(linux.cpu.and_then(|c| c.usage_core_nano_seconds));
    let memory = value(linux.memory.and_then(|m| m.working_set_bytes));
    assert!(cpu > 0 && memory > 0, "pod CPU {cpu} ns, memory {memory} B");
    let container = linux
        .containers
        .iter()
        .find(|c| c.attributes.as_ref().map(|a| a.id.as_str()) == Some(wasm.as_str()))
        .expect("the wasm container among the pod's");
    // Read a moment apart from the pod's, so not compared with it.
    let container_cpu = value(container.cpu.and_then(|c| c.usage_core_nano_seconds));
    assert!(container_cpu > 0, "the wasm container's CPU: {container:?}");
}
