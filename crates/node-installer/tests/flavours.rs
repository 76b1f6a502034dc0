//! Each flavour's node layout (fixture files modelled on what the
//! distribution writes): install → install again (nothing changes, nothing
//! restarts) → uninstall → the host is byte-identical to before.
//! containerd itself is not running here (`--no-verify`); the real
//! containerd 1.6/1.7/2.1 checks are in tests/containerd.rs.

mod common;

use common::{assert_same, fixture, Node};

const SHIM: &str = "/usr/local/bin/containerd-shim-wasmtime-v1";
const STATE: &str = "/var/lib/containerd-wasmtime-installer/state.json";

/// install, install again, uninstall; `check` looks at the installed node.
fn cycle(node: &Node, unit: &str, check: impl Fn(&Node)) {
    let before = node.snapshot();
    let log = node.ok("install", &["--no-verify"]);
    assert_eq!(node.restarts(), vec![unit], "one restart on first install");
    assert!(log.contains("+++"), "the log shows the config diff:\n{log}");
    assert!(log.contains("not labelling the node"), "{log}");
    assert!(node.read(SHIM).is_some() && node.read(STATE).is_some());
    check(node);
    let installed = node.snapshot();

    let log = node.ok("install", &["--no-verify"]);
    assert_eq!(
        node.restarts(),
        vec![unit],
        "no restart on a second install:\n{log}"
    );
    assert_same(&installed, &node.snapshot(), "second install");

    node.ok("uninstall", &["--no-verify"]);
    assert_eq!(
        node.restarts(),
        vec![unit, unit],
        "one restart on uninstall"
    );
    assert_same(&before, &node.snapshot(), "after uninstall");
}

#[test]
fn containerd_1x_debian_config_is_edited_in_place_with_runc_added() {
    let node = Node::new();
    node.put(
        "/etc/containerd/config.toml",
        &fixture("containerd/debian-12.toml"),
    );
    cycle(&node, "containerd", |node| {
        let config = node.read("/etc/containerd/config.toml").unwrap();
        assert!(config.starts_with("version = 2\n\n[plugins]\n"), "{config}");
        for want in [
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]",
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]",
            "runtime_type = \"io.containerd.wasmtime.v1\"",
            "pod_annotations = [\"wasmtime.containerd.io/*\"]",
            "container_annotations = [\"wasmtime.containerd.io/*\"]",
            "SystemdCgroup = false",
            "path = \"/var/lib/containerd/opt\"",
        ] {
            assert!(config.contains(want), "{want} missing:\n{config}");
        }
        let backups = node
            .host()
            .join("var/lib/containerd-wasmtime-installer/backup");
        let backup = std::fs::read_to_string(backups.join("etc_containerd_config.toml")).unwrap();
        assert_eq!(backup, fixture("containerd/debian-12.toml"));
    });
}

#[test]
fn containerd_2x_gets_a_drop_in_imported_from_the_main_config() {
    let node = Node::new();
    node.put("/etc/containerd/config.toml", "version = 3\n# ours\nimports = []\n\n[grpc]\n  address = '/run/containerd/containerd.sock'\n");
    cycle(&node, "containerd", |node| {
        let main = node.read("/etc/containerd/config.toml").unwrap();
        assert!(
            main.contains("imports = [\"/etc/containerd/conf.d/99-wasmtime.toml\"]"),
            "{main}"
        );
        assert!(main.contains("# ours"));
        let drop_in = node
            .read("/etc/containerd/conf.d/99-wasmtime.toml")
            .unwrap();
        assert!(drop_in.contains("version = 3"), "{drop_in}");
        assert!(
            drop_in.contains(
                "[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.wasmtime]"
            ),
            "{drop_in}"
        );
        // The main config has no runc: the drop-in names it, or the CRI
        // plugin would have no default runtime.
        assert!(drop_in.contains("runtimes.runc]"), "{drop_in}");
    });
}

#[test]
fn containerd_2x_with_a_conf_d_glob_needs_no_main_edit() {
    let node = Node::new();
    let main = "version = 3\nimports = ['/etc/containerd/conf.d/*.toml']\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n  runtime_type = 'io.containerd.runc.v2'\n  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n    SystemdCgroup = true\n";
    node.put("/etc/containerd/config.toml", main);
    node.put("/etc/containerd/conf.d/10-other.toml", "version = 3\n");
    cycle(&node, "containerd", |node| {
        assert_eq!(node.read("/etc/containerd/config.toml").unwrap(), main);
        let drop_in = node
            .read("/etc/containerd/conf.d/99-wasmtime.toml")
            .unwrap();
        assert!(
            !drop_in.contains("options") && !drop_in.contains("SystemdCgroup"),
            "the handler has no options table: {drop_in}"
        );
        assert!(
            !drop_in.contains("runtimes.runc]"),
            "runc is configured already: {drop_in}"
        );
    });
}

#[test]
fn k3s_gets_a_template_from_its_rendered_config() {
    let node = Node::new();
    let dir = "/var/lib/rancher/k3s/agent/etc/containerd";
    node.put(&format!("{dir}/config.toml"), &fixture("k3s/config.toml"));
    node.put("/etc/systemd/system/k3s.service", "[Service]\n");
    cycle(&node, "k3s", |node| {
        let template = node.read(&format!("{dir}/config.toml.tmpl")).unwrap();
        assert!(
            template.contains("sandbox_image = \"rancher/mirrored-pause:3.6\""),
            "{template}"
        );
        assert!(template.contains("runtimes.wasmtime]"), "{template}");
        assert!(
            !template.contains("runtimes.wasmtime.options]"),
            "the handler has no options table: {template}"
        );
        assert_eq!(
            node.read(&format!("{dir}/config.toml")).unwrap(),
            fixture("k3s/config.toml")
        );
    });
}

#[test]
fn rke2_agent_is_handled_as_k3s_and_restarted_by_its_unit() {
    let node = Node::new();
    let dir = "/var/lib/rancher/rke2/agent/etc/containerd";
    node.put(&format!("{dir}/config.toml"), &fixture("k3s/config.toml"));
    node.put("/usr/lib/systemd/system/rke2-agent.service", "[Service]\n");
    cycle(&node, "rke2-agent", |node| {
        assert!(node
            .read(&format!("{dir}/config.toml.tmpl"))
            .unwrap()
            .contains("runtimes.wasmtime]"));
    });
}

#[test]
fn k3s_that_registers_wasmtime_itself_is_left_alone() {
    let node = Node::new();
    let dir = "/var/lib/rancher/k3s/agent/etc/containerd";
    node.put(
        &format!("{dir}/config.toml"),
        &fixture("k3s/config-with-wasmtime.toml"),
    );
    let before = node.snapshot();
    let log = node.ok("install", &["--no-verify"]);
    assert!(log.contains("registers it itself"), "{log}");
    assert!(node.restarts().is_empty());
    assert!(node.read(&format!("{dir}/config.toml.tmpl")).is_none());
    assert!(node.read(SHIM).is_some(), "the binary is still installed");
    node.ok("uninstall", &["--no-verify"]);
    assert!(
        node.restarts().is_empty(),
        "only the binary changed: no restart"
    );
    assert_same(&before, &node.snapshot(), "after uninstall");
}

#[test]
fn k3s_template_that_is_a_go_template_is_refused_untouched() {
    let node = Node::new();
    let dir = "/var/lib/rancher/k3s/agent/etc/containerd";
    node.put(&format!("{dir}/config.toml"), &fixture("k3s/config.toml"));
    node.put(
        &format!("{dir}/config.toml.tmpl"),
        "{{ template \"base\" . }}\n",
    );
    let before = node.snapshot();
    let out = node.run("install", &["--no-verify"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        log.contains("config.toml.tmpl") && log.contains("by hand"),
        "{log}"
    );
    assert_same(&before, &node.snapshot(), "after a refused install");
}

#[test]
fn k0s_gets_a_drop_in_it_merges_itself() {
    let node = Node::new();
    node.put("/etc/k0s/containerd.toml", &fixture("k0s/containerd.toml"));
    node.put(
        "/run/k0s/containerd-cri.toml",
        &fixture("k0s/containerd-cri.toml"),
    );
    node.put("/etc/systemd/system/k0sworker.service", "[Service]\n");
    cycle(&node, "k0sworker", |node| {
        let drop_in = node.read("/etc/k0s/containerd.d/wasmtime.toml").unwrap();
        assert!(
            drop_in
                .contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]"),
            "{drop_in}"
        );
        assert!(
            !drop_in.contains("options") && !drop_in.contains("SystemdCgroup"),
            "the handler has no options table: {drop_in}"
        );
        assert_eq!(
            node.read("/etc/k0s/containerd.toml").unwrap(),
            fixture("k0s/containerd.toml")
        );
    });
}

#[test]
fn microk8s_template_is_edited_in_place_keeping_comments_and_placeholders() {
    let node = Node::new();
    let path = "/var/snap/microk8s/current/args/containerd-template.toml";
    node.put(path, &fixture("microk8s/containerd-template.toml"));
    cycle(&node, "snap.microk8s.daemon-containerd", |node| {
        let config = node.read(path).unwrap();
        let original = fixture("microk8s/containerd-template.toml");
        let kept_head = original
            .split("  # 'plugins.\"io.containerd.grpc.v1.cri\".cni'")
            .next()
            .unwrap();
        assert!(config.starts_with(kept_head.trim_end()), "{config}");
        assert!(config.contains("default_runtime_name = \"${RUNTIME}\""));
        let at = config.find("runtimes.wasmtime]").expect("added");
        assert!(
            at > config.find("runtimes.kata]").unwrap() && at < config.find(".cni]").unwrap(),
            "next to the other runtimes:\n{config}"
        );
    });
}

#[test]
fn an_unknown_node_is_refused_and_left_untouched() {
    let node = Node::new();
    node.put("/etc/crio/crio.conf", "[crio]\n");
    let before = node.snapshot();
    let out = node.run("install", &["--no-verify"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        log.contains("no known containerd configuration")
            && log.contains("/etc/containerd/config.toml"),
        "{log}"
    );
    assert_same(&before, &node.snapshot(), "after a refused install");
    assert!(node.restarts().is_empty());
}

#[test]
fn a_config_version_1_is_refused() {
    let node = Node::new();
    node.put("/etc/containerd/config.toml", "[plugins.cri]\n");
    let out = node.run("install", &["--no-verify"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && log.contains("config version 1"),
        "{log}"
    );
}

#[test]
fn a_foreign_wasmtime_runtime_of_another_type_is_refused() {
    let node = Node::new();
    node.put(
        "/etc/containerd/config.toml",
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\n  runtime_type = \"io.containerd.wasmtime.v2\"\n",
    );
    let before = node.snapshot();
    let out = node.run("install", &["--no-verify"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && log.contains("io.containerd.wasmtime.v2"),
        "{log}"
    );
    assert_same(&before, &node.snapshot(), "after a refused install");
}

#[test]
fn a_new_shim_replaces_the_old_without_restart_and_an_existing_one_is_restored() {
    let node = Node::new();
    node.put(
        "/etc/containerd/config.toml",
        &fixture("containerd/debian-12.toml"),
    );
    node.put(SHIM, "a shim someone installed by hand");
    let before = node.snapshot();
    node.ok("install", &["--no-verify"]);
    node.set_shim(b"\x7fELF stand-in shim v2");
    let log = node.ok("install", &["--no-verify"]);
    assert!(
        log.contains("installed /usr/local/bin/containerd-shim-wasmtime-v1"),
        "{log}"
    );
    assert_eq!(node.read(SHIM).unwrap(), "\x7fELF stand-in shim v2");
    assert_eq!(node.restarts().len(), 1, "a new binary needs no restart");
    node.ok("uninstall", &["--no-verify"]);
    assert_same(&before, &node.snapshot(), "after uninstall");
}

#[test]
fn uninstall_leaves_a_file_edited_since_and_says_so() {
    let node = Node::new();
    node.put(
        "/etc/containerd/config.toml",
        &fixture("containerd/debian-12.toml"),
    );
    node.ok("install", &["--no-verify"]);
    let edited = format!(
        "{}\n# an operator's edit\n",
        node.read("/etc/containerd/config.toml").unwrap()
    );
    node.put("/etc/containerd/config.toml", &edited);
    let out = node.run("uninstall", &["--no-verify"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("changed since it was installed"), "{log}");
    assert_eq!(node.read("/etc/containerd/config.toml").unwrap(), edited);
    assert!(node.read(SHIM).is_none(), "the rest is undone");
    assert!(
        node.read(STATE)
            .unwrap()
            .contains("/etc/containerd/config.toml"),
        "the state keeps what is left"
    );
}

#[test]
fn the_nodes_symlinks_are_followed_inside_the_host_root_only() {
    let node = Node::new();
    let host = node.host();
    // The installer's own /tmp/outside-…, which must stay untouched.
    let outside = tempfile::Builder::new()
        .prefix("outside-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::create_dir(outside.path().join("bin")).unwrap();
    // On the node: /usr/local -> /tmp/outside-… and /etc/containerd ->
    // /data/containerd, both absolute, both meaning the node's own.
    let node_outside = host.join(outside.path().strip_prefix("/").unwrap());
    std::fs::create_dir_all(node_outside.join("bin")).unwrap();
    std::fs::create_dir_all(host.join("usr")).unwrap();
    std::os::unix::fs::symlink(outside.path(), host.join("usr/local")).unwrap();
    std::fs::create_dir_all(host.join("etc")).unwrap();
    std::os::unix::fs::symlink("/data/containerd", host.join("etc/containerd")).unwrap();
    node.put(
        "/data/containerd/config.toml",
        "version = 3\nimports = []\n",
    );

    node.ok("install", &["--no-verify"]);
    let installed = node_outside.join("bin/containerd-shim-wasmtime-v1");
    assert!(
        installed.is_file(),
        "the shim is in the node's /usr/local/bin"
    );
    assert!(
        node.read("/data/containerd/conf.d/99-wasmtime.toml")
            .is_some(),
        "the drop-in is in the node's /etc/containerd"
    );
    assert_eq!(
        std::fs::read_dir(outside.path().join("bin"))
            .unwrap()
            .count(),
        0,
        "nothing was written outside the host root"
    );

    node.ok("uninstall", &["--no-verify"]);
    assert!(!installed.exists());
    assert_eq!(
        node.read("/data/containerd/config.toml").unwrap(),
        "version = 3\nimports = []\n"
    );
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        1,
        "still only the test's own bin/"
    );
}
