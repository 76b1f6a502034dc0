//! Wasm from a real OCI registry (Debian's `docker-registry` on loopback),
//! pushed with `oras` as users publish it, pulled by containerd (`ctr images
//! pull` here; CRI PullImage in tests/cri.rs), in every format in use:
//!
//! - wasm in a scratch image: an ordinary tar layer (what `docker buildx`
//!   makes with `--platform wasi/wasm`); containerd unpacks it;
//! - the CNCF wasm OCI artifact: config `application/vnd.wasm.config.v0+json`,
//!   one `application/wasm` layer (what `wkg` and `oras` push);
//! - an OCI image config with an `application/vnd.wasm.content.layer.v1+wasm`
//!   or `application/vnd.bytecodealliance.wasm.component.layer.v0+wasm` layer.
//!
//! containerd does not unpack the wasm layer kinds (they are not tars), so the
//! container's root comes up empty and the shim takes the layer from
//! containerd's content store. What containerd itself refuses, per version,
//! is asserted too, so docs/compatibility.md says what really happens.

use std::path::PathBuf;

use shim_tests::cri::CriNode;
use shim_tests::images::images_dir;
use shim_tests::registry::Registry;
use shim_tests::{containerd_version, unique_id, Containerd, CtrOutput, RUNTIME};

const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const CONTENT_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
const COMPONENT_LAYER: &str = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";

/// The config a wasm artifact carries (fields of the CNCF wasm OCI artifact layout).
const ARTIFACT_CONFIG: &str =
    r#"{"created":"2026-11-22T00:00:00Z","architecture":"wasm","os":"wasip1","layerDigests":[]}"#;
/// The OCI image config older wasm layer images carry: no tar layers to unpack.
const IMAGE_CONFIG: &str =
    r#"{"architecture":"wasm","os":"wasip1","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#;

fn wasm(name: &str) -> PathBuf {
    images_dir().join(name)
}

/// containerd 1.6 cannot unpack an image whose layers are not all tars (its
/// unpacker counts them against the config's diff_ids); 1.7 and later skip them.
fn unpacks_wasm_layers() -> bool {
    let v = containerd_version();
    (v.major, v.minor) >= (1, 7)
}

fn pull(c: &Containerd, reference: &str) -> CtrOutput {
    c.ctr(&["images", "pull", "--plain-http", reference])
}

fn run(c: &Containerd, id: &str, reference: &str, args: &[&str]) -> CtrOutput {
    let mut command = vec!["run", "--rm", "--runtime", RUNTIME, reference, id];
    command.extend_from_slice(args);
    c.ctr(&command)
}

#[test]
fn wasm_from_a_registry_runs_in_every_published_format() {
    let c = Containerd::start();
    let r = Registry::start(None);

    // Wasm in a scratch image: containerd unpacks it, the entrypoint names it.
    r.push_layout(&images_dir().join("hello.tar"), "scratch/hello:v1");
    let scratch = r.reference("scratch/hello:v1");
    let out = pull(&c, &scratch);
    assert_eq!(out.code, 0, "{out:?}");
    let id = unique_id("scratch");
    let out = run(&c, &id, &scratch, &[]);
    assert_eq!(out.code, 0, "{out:?}\n{}", c.log());
    assert!(out.stdout.starts_with("Hello from WebAssembly!"), "{out:?}");

    // The older wasm layer types: the shim runs the layer from the content store.
    let hello = wasm("hello.wasm");
    r.push(
        "content/hello:v1",
        OCI_CONFIG,
        IMAGE_CONFIG,
        &[(&hello, CONTENT_LAYER)],
    );
    let component = wasm("wasitest.component.wasm");
    r.push(
        "component/wasitest:v1",
        OCI_CONFIG,
        IMAGE_CONFIG,
        &[(&component, COMPONENT_LAYER)],
    );
    let content = r.reference("content/hello:v1");
    let component = r.reference("component/wasitest:v1");
    let mut ids = vec![id];
    if !unpacks_wasm_layers() {
        for reference in [&content, &component] {
            let out = pull(&c, reference);
            assert_ne!(
                out.code, 0,
                "containerd 1.6 unpacked {reference}: update the docs"
            );
            assert!(
                out.stderr
                    .contains("mismatched image rootfs and manifest layers"),
                "{out:?}"
            );
        }
        eprintln!(
            "containerd {}: wasm layers cannot be unpacked",
            containerd_version()
        );
    } else {
        for reference in [&content, &component] {
            let out = pull(&c, reference);
            assert_eq!(out.code, 0, "{out:?}");
        }
        // No command: the layer runs under its own name (its title).
        let id = unique_id("content");
        let out = run(&c, &id, &content, &[]);
        assert_eq!(out.code, 0, "{out:?}\n{}", c.log());
        assert!(out.stdout.starts_with("Hello from WebAssembly!"), "{out:?}");
        assert!(out.stdout.contains("argv[0] = hello.wasm\n"), "{out:?}");
        ids.push(id);
        // A command is argv as given.
        let id = unique_id("component");
        let out = run(
            &c,
            &id,
            &component,
            &["wasitest", "args", "from", "a registry"],
        );
        assert_eq!(out.code, 0, "{out:?}\n{}", c.log());
        assert_eq!(
            out.stdout,
            "argv[0]=wasitest\nargv[1]=args\nargv[2]=from\nargv[3]=a registry\n"
        );
        ids.push(id);
        // The second container of an image reads the layer the first stored.
        let id = unique_id("again");
        let out = run(&c, &id, &content, &["hi"]);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("argv[0] = hi\n"), "{out:?}");
        ids.push(id);
        let stored: Vec<_> = std::fs::read_dir(c.dir().join("cache/layers"))
            .expect("the layer store")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(stored.len(), 2, "one file per layer: {stored:?}");
        // A stored layer changed in place (same size) is never run: it no
        // longer matches its digest, and is fetched again.
        for name in &stored {
            let path = c.dir().join("cache/layers").join(name);
            let mut bytes = std::fs::read(&path).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            std::fs::write(&path, &bytes).unwrap();
        }
        let id = unique_id("changed");
        let out = run(&c, &id, &content, &["hi"]);
        assert_eq!(out.code, 0, "{out:?}\n{}", c.log());
        assert!(out.stdout.contains("argv[0] = hi\n"), "{out:?}");
        assert!(
            c.log().contains("fetching it again"),
            "the changed layer was noticed"
        );
        ids.push(id);
    }

    // The CNCF artifact: containerd pulls it (1.7+), but `ctr run` refuses
    // any config that is not an image config, before the shim is asked.
    // Kubernetes (CRI) runs it: see tests/cri.rs.
    r.push(
        "artifact/hello:v1",
        WASM_CONFIG,
        ARTIFACT_CONFIG,
        &[(&hello, "application/wasm")],
    );
    let artifact = r.reference("artifact/hello:v1");
    let out = pull(&c, &artifact);
    if unpacks_wasm_layers() {
        assert_eq!(out.code, 0, "{out:?}");
        let out = run(&c, &unique_id("artifact"), &artifact, &[]);
        assert_ne!(out.code, 0, "ctr ran a wasm artifact: update the docs");
        assert!(
            out.stderr.contains("unknown image config media type"),
            "{out:?}"
        );
    } else {
        assert!(
            out.stderr
                .contains("mismatched image rootfs and manifest layers"),
            "{out:?}"
        );
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    c.assert_clean(&ids);
}

#[test]
fn an_image_with_two_wasm_layers_or_none_fails_naming_the_image() {
    if !unpacks_wasm_layers() {
        eprintln!(
            "containerd {}: images with wasm layers cannot be pulled; nothing reaches the shim",
            containerd_version()
        );
        return;
    }
    let c = Containerd::start();
    let r = Registry::start(None);
    let hello = wasm("hello.wasm");
    let trap = wasm("trap.wasm");
    r.push(
        "two/layers:v1",
        OCI_CONFIG,
        IMAGE_CONFIG,
        &[(&hello, CONTENT_LAYER), (&trap, CONTENT_LAYER)],
    );
    let notes = c.dir().join("notes.txt");
    std::fs::write(&notes, "not a program\n").unwrap();
    r.push(
        "none/wasm:v1",
        OCI_CONFIG,
        IMAGE_CONFIG,
        &[(&notes, "text/plain")],
    );
    let mut ids = Vec::new();
    for (name, expected) in [
        ("two/layers:v1", "has 2 wasm layers"),
        (
            "none/wasm:v1",
            "has no wasm layer (its layers are text/plain)",
        ),
    ] {
        let reference = r.reference(name);
        let out = pull(&c, &reference);
        assert_eq!(out.code, 0, "{out:?}");
        let id = unique_id("bad-layers");
        let out = run(&c, &id, &reference, &[]);
        assert_ne!(out.code, 0, "{out:?}");
        assert!(
            out.stderr
                .contains(&format!("image {reference} {expected}"))
                && out.stderr.contains(&id),
            "the error names the container, the image and the problem: {out:?}"
        );
        ids.push(id);
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    c.assert_clean(&ids);
}

/// What kubelet does: PullImage from the registry, then a pod whose
/// containers run each format. The registry runs in the node's network
/// namespace, where containerd pulls (a loopback registry is plain HTTP).
#[test]
fn pods_run_wasm_pulled_from_a_registry_through_cri() {
    let node = CriNode::start();
    let r = Registry::start(Some(node.netns()));
    let hello = wasm("hello.wasm");
    r.push_layout(&images_dir().join("hello.tar"), "scratch/hello:v1");
    r.push(
        "artifact/hello:v1",
        WASM_CONFIG,
        ARTIFACT_CONFIG,
        &[(&hello, "application/wasm")],
    );
    r.push(
        "content/hello:v1",
        OCI_CONFIG,
        IMAGE_CONFIG,
        &[(&hello, CONTENT_LAYER)],
    );

    let scratch = r.reference("scratch/hello:v1");
    node.pull_image(&scratch)
        .unwrap_or_else(|e| panic!("PullImage {scratch}: {e}\n{}", node.log()));
    let mut runs = vec![("scratch", scratch, vec![])];
    for name in ["artifact/hello:v1", "content/hello:v1"] {
        let reference = r.reference(name);
        match node.pull_image(&reference) {
            Ok(_) if unpacks_wasm_layers() => {}
            Err(e) if !unpacks_wasm_layers() => {
                assert!(
                    e.message()
                        .contains("mismatched image rootfs and manifest layers"),
                    "{e}"
                );
                continue;
            }
            result => panic!(
                "PullImage {reference} on {}: {result:?}",
                containerd_version()
            ),
        }
        // CRI refuses a container with no command when the image config
        // names none (a wasm artifact's never does): pods give one.
        let short = name.split('/').next().unwrap();
        runs.push((short, reference, vec!["hello.wasm"]));
    }
    // A command for a layer is argv as given.
    if unpacks_wasm_layers() {
        runs.push((
            "named",
            r.reference("artifact/hello:v1"),
            vec!["greeter", "x"],
        ));
    }

    let pod_config = node.pod_config("registry");
    let pod = node.run_pod(&pod_config);
    let mut ids = vec![pod.clone()];
    for (name, image, command) in &runs {
        let config = CriNode::container_config(name, image, command);
        let id = node.start_container(&pod, &pod_config, config);
        let status = node.wait_exited(&id);
        assert_eq!(status.exit_code, 0, "{name}: {status:?}\n{}", node.log());
        let log = std::fs::read_to_string(node.dir().join(format!("logs/registry/{name}.log")))
            .expect("CRI log file");
        assert!(
            log.contains("stdout F Hello from WebAssembly!"),
            "{name}: {log}"
        );
        let argv0 = match (*name, command.first()) {
            ("scratch", _) => "/hello.wasm",
            (_, Some(arg0)) => arg0,
            _ => "hello.wasm",
        };
        assert!(log.contains(&format!("argv[0] = {argv0}")), "{name}: {log}");
        ids.push(id);
    }
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&ids);
}
