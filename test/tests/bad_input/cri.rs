//! Bad input through CRI, as kubelet would see it: StartContainer fails
//! naming the container and the problem; a 1 MiB environment value works.

use std::time::Instant;

use shim_tests::cri::CriNode;
use shim_tests::images::WASM_TEST;

use super::{noise, test_module, HEADER, PATIENCE};

#[test]
fn cri_start_container_reports_bad_input_and_huge_env_works() {
    let node = CriNode::start();
    let dir = node.dir().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let mut corrupt = HEADER.to_vec();
    corrupt.extend(noise(4096));
    std::fs::write(dir.join("corrupt.wasm"), corrupt).unwrap();
    let host_wasm = node.dir().join("host-only.wasm");
    std::fs::write(&host_wasm, test_module()).unwrap();
    std::os::unix::fs::symlink(&host_wasm, dir.join("host.wasm")).unwrap();
    let bad_volume = || k8s_cri::v1::Mount {
        container_path: "/bad".into(),
        host_path: dir.display().to_string(),
        readonly: true,
        ..Default::default()
    };
    let pod_config = node.pod_config("bad");
    let pod = node.run_pod(&pod_config);
    let mut ids = vec![pod.clone()];

    let mut corrupt = CriNode::container_config("corrupt", WASM_TEST, &["/bad/corrupt.wasm"]);
    corrupt.mounts = vec![bad_volume()];
    let mut link = CriNode::container_config("link", WASM_TEST, &["/bad/host.wasm"]);
    link.mounts = vec![bad_volume()];
    for (config, expected) in [
        (
            corrupt,
            "/bad/corrupt.wasm is not valid WebAssembly".to_string(),
        ),
        (
            link,
            format!(
                "/bad/host.wasm is a symlink to {}, which does not exist in the container's root",
                host_wasm.display()
            ),
        ),
    ] {
        let began = Instant::now();
        let (id, started) = node.try_start_container(&pod, &pod_config, config);
        let took = began.elapsed();
        let status = started.expect_err("StartContainer must fail");
        let message = status.message();
        eprintln!("CRI {id} ({took:.1?}): {message}");
        assert!(took < PATIENCE, "took {took:?}");
        assert!(message.contains(&format!("container {id}")), "{message}");
        assert!(
            message.contains(&expected),
            "expected {expected:?} in: {message}"
        );
        ids.push(id);
    }

    // `tty: true` (`kubectl run -it`): the guest's stdio is a terminal.
    let mut tty = CriNode::container_config("tty", WASM_TEST, &["/wasitest.wasm", "tty"]);
    tty.tty = true;
    let id = node.start_container(&pod, &pod_config, tty);
    let status = node.wait_exited(&id);
    assert_eq!(status.exit_code, 0, "{status:?}");
    let log = std::fs::read_to_string(node.dir().join("logs/bad/tty.log")).unwrap();
    assert!(log.contains("tty: 1 1 1"), "{log}");
    ids.push(id);

    // A 1 MiB environment value reaches the guest whole; the CRI log splits
    // the long line into partial (P) records, joined again here.
    let big = "e".repeat(1 << 20);
    let mut env = CriNode::container_config("env", WASM_TEST, &["/wasitest.wasm", "env", "BIG"]);
    env.envs = vec![k8s_cri::v1::KeyValue {
        key: "BIG".into(),
        value: big.clone(),
    }];
    let id = node.start_container(&pod, &pod_config, env);
    let status = node.wait_exited(&id);
    assert_eq!(status.exit_code, 0, "{status:?}");
    let log = std::fs::read_to_string(node.dir().join("logs/bad/env.log")).unwrap();
    let stdout: String = log
        .lines()
        .filter_map(|l| {
            let mut fields = l.splitn(4, ' ');
            let (_, stream, tag, text) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next().unwrap_or(""),
            );
            (stream == "stdout").then(|| {
                if tag == "F" {
                    format!("{text}\n")
                } else {
                    text.to_string()
                }
            })
        })
        .collect();
    assert!(
        stdout == format!("BIG={big}\n"),
        "{} bytes came back",
        stdout.len()
    );
    ids.push(id);

    assert!(!node.log().contains("panicked"), "{}", node.log());
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&ids);
}
