use super::*;
use oci_spec::runtime::{MountBuilder, ProcessBuilder, RootBuilder, SpecBuilder};

fn spec(args: &[&str], env: &[&str], cwd: &str, terminal: bool) -> Spec {
    let process = ProcessBuilder::default()
        .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .env(env.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .cwd(cwd)
        .terminal(terminal)
        .build()
        .unwrap();
    SpecBuilder::default().process(process).build().unwrap()
}

#[test]
fn export_selector_is_split_from_the_path() {
    let e = Entrypoint::parse("/app/main.wasm#serve").unwrap();
    assert_eq!(e.path, "/app/main.wasm");
    assert_eq!(e.export.as_deref(), Some("serve"));
    assert_eq!(Entrypoint::parse("hello.wasm").unwrap().export, None);
    assert_eq!(
        Entrypoint::parse("x.wasm#"),
        Err(SpecError::EmptyExport("x.wasm#".into()))
    );
}

#[test]
fn absolute_and_relative_paths_resolve_against_cwd_only() {
    let abs = Entrypoint::parse("/bin/app.wasm").unwrap();
    assert_eq!(
        abs.candidates(Path::new("/work"), Some("/usr/bin")),
        vec![PathBuf::from("/bin/app.wasm")]
    );
    let rel = Entrypoint::parse("sub/app.wasm").unwrap();
    assert_eq!(
        rel.candidates(Path::new("/work"), Some("/usr/bin")),
        vec![PathBuf::from("/work/sub/app.wasm")]
    );
}

#[test]
fn bare_names_try_cwd_then_path_in_order() {
    let bare = Entrypoint::parse("app.wasm").unwrap();
    let candidates = bare.candidates(Path::new("/work"), Some("/opt/bin::/usr/bin"));
    assert_eq!(
        candidates,
        ["/work/app.wasm", "/opt/bin/app.wasm", "/usr/bin/app.wasm"].map(PathBuf::from)
    );
    let found = bare.resolve(Path::new("/work"), Some("/opt/bin:/usr/bin"), |p| {
        p == Path::new("/usr/bin/app.wasm")
    });
    assert_eq!(found, PathBuf::from("/usr/bin/app.wasm"));
    let missing = bare.resolve(Path::new("/work"), Some("/usr/bin"), |_| false);
    assert_eq!(missing, PathBuf::from("/work/app.wasm"));
}

#[test]
fn process_is_read_from_the_spec() {
    let p = WasmProcess::from_spec(&spec(
        &["app.wasm#run", "a b"],
        &["PATH=/bin", "EMPTY=", "K=v=w"],
        "/srv",
        false,
    ))
    .unwrap();
    assert_eq!(p.entrypoint.path, "app.wasm");
    assert_eq!(p.args, vec!["app.wasm#run", "a b"]);
    assert_eq!(
        p.env,
        vec![
            ("PATH".into(), "/bin".into()),
            ("EMPTY".into(), "".into()),
            ("K".into(), "v=w".into())
        ]
    );
    assert_eq!(p.path_env(), Some("/bin"));
    assert_eq!(p.cwd, PathBuf::from("/srv"));
}

#[test]
fn bad_processes_are_rejected_with_the_reason() {
    assert_eq!(
        WasmProcess::from_spec(&spec(&[], &[], "/", false)),
        Err(SpecError::MissingArgs)
    );
    // A terminal is the process's stdio (a pty libcontainer makes), not the guest's concern.
    assert!(WasmProcess::from_spec(&spec(&["a.wasm"], &[], "/", true)).is_ok());
    assert_eq!(
        WasmProcess::from_spec(&spec(&["a.wasm"], &["NOEQUALS"], "/", false)),
        Err(SpecError::BadEnv("NOEQUALS".into()))
    );
    assert_eq!(
        WasmProcess::from_spec(&spec(&["a.wasm"], &[], "rel", false)),
        Err(SpecError::RelativeCwd("rel".into()))
    );
    let mut no_process = spec(&["a.wasm"], &[], "/", false);
    no_process.set_process(None);
    assert_eq!(
        WasmProcess::from_spec(&no_process),
        Err(SpecError::MissingProcess)
    );
}

fn mount(destination: &str, options: &[&str]) -> oci_spec::runtime::Mount {
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source("/host")
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap()
}

fn grants(root_read_only: bool, mounts: Vec<oci_spec::runtime::Mount>) -> Vec<(String, bool)> {
    let spec = SpecBuilder::default()
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(root_read_only)
                .build()
                .unwrap(),
        )
        .mounts(mounts)
        .build()
        .unwrap();
    filesystem_grants(&spec)
        .into_iter()
        .map(|g| (g.path.display().to_string(), g.read_only))
        .collect()
}

#[test]
fn read_only_mounts_in_a_writable_root_get_their_own_grant() {
    let found = grants(
        false,
        vec![
            mount("/data", &["rbind", "ro"]),
            mount("/data/rw", &["rbind", "rw"]),
            mount("/tmp", &["rw"]),
        ],
    );
    assert_eq!(
        found,
        vec![
            ("/".into(), false),
            ("/data".into(), true),
            ("/data/rw".into(), false)
        ]
    );
}

#[test]
fn writable_mounts_in_a_read_only_root_get_their_own_grant() {
    let found = grants(
        true,
        vec![mount("/proc", &["nosuid"]), mount("/sys", &["ro"])],
    );
    assert_eq!(found, vec![("/".into(), true), ("/proc".into(), false)]);
    let spec_grants = [
        Grant {
            path: "/".into(),
            read_only: true,
        },
        Grant {
            path: "/proc".into(),
            read_only: false,
        },
    ];
    assert!(
        !grant_for(&spec_grants, Path::new("/proc/self"))
            .unwrap()
            .read_only
    );
    assert!(
        grant_for(&spec_grants, Path::new("/procfs"))
            .unwrap()
            .read_only,
        "prefixes match whole components"
    );
}

#[test]
fn memory_limit_comes_from_linux_resources() {
    use oci_spec::runtime::{LinuxBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder};
    let with_limit = |limit: i64| {
        let memory = LinuxMemoryBuilder::default().limit(limit).build().unwrap();
        let resources = LinuxResourcesBuilder::default()
            .memory(memory)
            .build()
            .unwrap();
        let linux = LinuxBuilder::default()
            .resources(resources)
            .build()
            .unwrap();
        SpecBuilder::default().linux(linux).build().unwrap()
    };
    assert_eq!(memory_limit(&with_limit(64 << 20)), Some(64 << 20));
    assert_eq!(memory_limit(&with_limit(-1)), None);
    let mut no_resources = Spec::default();
    no_resources.set_linux(None);
    assert_eq!(memory_limit(&no_resources), None);
}

#[test]
fn http_port_comes_from_env_then_annotation_then_default() {
    let annotated = |env: &[&str], port: Option<&str>| {
        let mut spec = spec(&["/app.wasm"], env, "/", false);
        if let Some(port) = port {
            let annotations = [(HTTP_PORT_ANNOTATION.to_string(), port.to_string())];
            spec.set_annotations(Some(annotations.into_iter().collect()));
        }
        let process = WasmProcess::from_spec(&spec).unwrap();
        process.http_port(&spec, 8080)
    };
    assert_eq!(annotated(&[], None), Ok(8080));
    assert_eq!(annotated(&[], Some("9000")), Ok(9000));
    assert_eq!(annotated(&["PORT=3000"], Some("9000")), Ok(3000));
    assert_eq!(
        annotated(&["PORT=http"], None),
        Err(SpecError::BadPort {
            origin: "env PORT".into(),
            value: "http".into()
        })
    );
    let err = annotated(&[], Some("0")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "annotation wasmtime.containerd.io/http-port \"0\" is not a TCP port (1-65535)"
    );
}

mod layers {
    use crate::layers::*;

    const HELLO: &str = "sha256:c3d1dd83beab902fc47985d106c98030aa13d9ff4c17186f3f2dc861fc61e1c7";
    const OTHER: &str = "sha256:ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356";

    fn manifest(layers: &[(&str, &str, Option<&str>)]) -> Vec<u8> {
        let layers: Vec<_> = layers
            .iter()
            .map(|(media_type, digest, title)| {
                let mut layer = serde_json::json!({
                    "mediaType": media_type, "digest": digest, "size": 140648,
                });
                if let Some(title) = title {
                    layer["annotations"] =
                        serde_json::json!({"org.opencontainers.image.title": title});
                }
                layer
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": OTHER, "size": 3},
            "layers": layers,
        }))
        .unwrap()
    }

    #[test]
    fn each_published_wasm_layer_type_is_found_with_its_name() {
        for media_type in WASM_LAYER_TYPES {
            let m = manifest(&[(media_type, HELLO, Some("hello.wasm"))]);
            let layer = wasm_layer("r/hello:v1", &m).unwrap();
            assert_eq!(layer.digest, HELLO);
            assert_eq!(layer.size, 140648);
            assert_eq!(&layer.media_type, media_type);
            assert_eq!(layer.name, "hello.wasm");
        }
        let m = manifest(&[("application/wasm", HELLO, None)]);
        assert_eq!(
            wasm_layer("127.0.0.1:5000/a/app:v2", &m).unwrap().name,
            "app.wasm"
        );
        let m = manifest(&[("application/wasm", HELLO, Some("../../etc/passwd"))]);
        assert_eq!(wasm_layer("r/app@sha256:00", &m).unwrap().name, "app.wasm");
    }

    #[test]
    fn no_wasm_layer_or_several_is_an_error_naming_the_image() {
        let m = manifest(&[("application/vnd.oci.image.layer.v1.tar", HELLO, None)]);
        let e = wasm_layer("r/x:1", &m).unwrap_err();
        assert_eq!(
            e.to_string(),
            "image r/x:1 has no wasm layer (its layers are application/vnd.oci.image.layer.v1.tar) \
             and the container's root is empty: nothing to run"
        );
        let m = manifest(&[
            ("application/wasm", HELLO, None),
            ("application/wasm", OTHER, None),
        ]);
        let e = wasm_layer("r/x:1", &m).unwrap_err();
        assert!(
            matches!(e, LayerError::ManyWasmLayers { count: 2, .. }),
            "{e}"
        );
        assert!(e.to_string().contains(HELLO) && e.to_string().contains("r/x:1"));
        assert!(matches!(
            wasm_layer("r/x:1", b"{not json"),
            Err(LayerError::BadManifest { .. })
        ));
    }

    #[test]
    fn an_index_offers_its_wasm_manifest_first_then_this_platform() {
        let entry = |digest: &str, os: &str, arch: &str| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                "size": 10, "platform": {"os": os, "architecture": arch},
            })
        };
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [entry(OTHER, "linux", "arm64"), entry(OTHER, "linux", "amd64"), entry(HELLO, "wasip1", "wasm")],
        }))
        .unwrap();
        let candidates = manifest_candidates("r/x:1", &index).unwrap();
        assert_eq!(candidates[0].digest().to_string(), HELLO);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(candidates.len(), 2, "arm64 is not a candidate on amd64");
        }
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "manifests": [entry(OTHER, "windows", "arm64")],
        }))
        .unwrap();
        assert_eq!(
            manifest_candidates("r/x:1", &index).unwrap().len(),
            1,
            "the only entry"
        );
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [entry(OTHER, "windows", "arm64"), entry(OTHER, "plan9", "mips")],
        }))
        .unwrap();
        assert!(matches!(
            manifest_candidates("r/x:1", &index),
            Err(LayerError::NoManifest { .. })
        ));
    }

    #[test]
    fn only_sha256_digests_name_files() {
        assert!(is_sha256_digest(HELLO));
        assert!(!is_sha256_digest("sha256:../../x"));
        assert!(!is_sha256_digest("sha512:00"));
    }
}

fn annotated(
    root_read_only: bool,
    mounts: Vec<oci_spec::runtime::Mount>,
    key: &str,
    value: &str,
) -> Spec {
    SpecBuilder::default()
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(root_read_only)
                .build()
                .unwrap(),
        )
        .mounts(mounts)
        .annotations(
            [(key.to_string(), value.to_string())]
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()
        .unwrap()
}

fn narrowed(
    root_read_only: bool,
    mounts: Vec<oci_spec::runtime::Mount>,
    value: &str,
) -> Result<Vec<(String, bool)>, SpecError> {
    let spec = annotated(root_read_only, mounts, PREOPENS_ANNOTATION, value);
    narrowed_grants(&spec).map(|grants| {
        grants
            .into_iter()
            .map(|g| (g.path.display().to_string(), g.read_only))
            .collect()
    })
}

#[test]
fn the_preopens_annotation_narrows_and_never_widens() {
    let mounts = || {
        vec![
            mount("/data", &["rbind", "ro"]),
            mount("/data/rw", &["rbind", "rw"]),
        ]
    };
    // Only what is listed; the spec's access unless narrowed to ro.
    assert_eq!(
        narrowed(false, mounts(), "/tmp, /srv:ro").unwrap(),
        vec![("/tmp".into(), false), ("/srv".into(), true)]
    );
    // A read-only mount below a listed directory stays read-only; a writable
    // one below a `:ro` directory becomes read-only.
    assert_eq!(
        narrowed(false, mounts(), "/").unwrap(),
        vec![
            ("/".into(), false),
            ("/data".into(), true),
            ("/data/rw".into(), false)
        ]
    );
    assert_eq!(
        narrowed(false, mounts(), "/:ro").unwrap(),
        vec![
            ("/".into(), true),
            ("/data".into(), true),
            ("/data/rw".into(), true)
        ]
    );
    assert_eq!(
        narrowed(false, mounts(), "/data//sub/").unwrap(),
        vec![("/data/sub".into(), true)]
    );
    // Nothing at all.
    assert_eq!(narrowed(false, mounts(), " ").unwrap(), vec![]);
    // Widening and malformed entries are refused, naming the annotation.
    let err = narrowed(true, vec![], "/app:rw").unwrap_err();
    assert!(err.to_string().contains("cannot be writable"), "{err}");
    assert!(err.to_string().contains(PREOPENS_ANNOTATION), "{err}");
    for bad in ["data", "/a/../etc", "/a/./b", "/a:rx", "/a,/a:ro"] {
        assert!(
            narrowed(false, vec![], bad).is_err(),
            "{bad:?} was accepted"
        );
    }
    // Without the annotation, the spec's grants.
    let spec = SpecBuilder::default().build().unwrap();
    assert_eq!(narrowed_grants(&spec).unwrap(), filesystem_grants(&spec));
}

#[test]
fn the_deadline_annotation_is_a_duration() {
    let parse = |value: &str| deadline(&annotated(false, vec![], DEADLINE_ANNOTATION, value));
    let secs = |s: f64| Ok(Some(std::time::Duration::from_secs_f64(s)));
    assert_eq!(parse("30s"), secs(30.0));
    assert_eq!(parse("500ms"), secs(0.5));
    assert_eq!(parse("1.5m"), secs(90.0));
    assert_eq!(parse("2h"), secs(7200.0));
    assert_eq!(parse(" 10 "), secs(10.0));
    // "0.0000000001": positive, but under a nanosecond, so a zero Duration
    // (found by the oci_spec fuzz target's invariant).
    for bad in [
        "",
        "0s",
        "-1s",
        "ten",
        "5d",
        "1e9",
        "nan",
        "0.0000000001",
        "0.0000001ms",
    ] {
        let err = parse(bad).unwrap_err();
        assert!(
            err.to_string().contains(DEADLINE_ANNOTATION),
            "{bad:?}: {err}"
        );
    }
    assert_eq!(deadline(&SpecBuilder::default().build().unwrap()), Ok(None));
}
