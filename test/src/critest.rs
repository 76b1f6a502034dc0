//! Kubernetes' CRI validation suite (`critest`, cri-tools) against a
//! [`CriNode`], once per runtime handler, offline.
//!
//! critest pulls its images from `registry.k8s.io` (and `gcr.io`). There is
//! no internet here, so the images it needs are built from Debian packages
//! ([`busybox_image`]), pushed to a local [`Registry`] in the node's network
//! namespace under their upstream names, and the node's containerd is told to
//! pull `registry.k8s.io` from there ([`serve_images`]): the names critest
//! asks for stay upstream, and PullImage really pulls.
//!
//! [`run`] runs critest with `--ginkgo.focus` against one handler and reads
//! its ginkgo JSON report; [`regressions`] names the specs that passed for
//! the baseline handler (runc) but not for the one under test.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cri::CriNode;
use crate::images::{Entry, Image};
use crate::registry::Registry;

/// critest's default test container image (cri-tools'
/// `framework.DefaultLinuxContainerImage`).
pub const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

/// Busybox's applets (`busybox --list`): each is a link to `/bin/busybox`
/// in the stand-in image, as in the upstream image (busybox picks the applet
/// by `argv[0]`). critest's specs run many (`sh -c mkdir ...`, `mount`,
/// `top`, `grep`, `hostname`, `cat`).
fn busybox_applets(busybox: &Path) -> Vec<String> {
    let output = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    assert!(output.status.success(), "busybox --list");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|applet| !applet.is_empty() && *applet != "busybox")
        .map(str::to_string)
        .collect()
}

/// Where the machine keeps cri-tools when the workspace is not beside it (a
/// fresh clone elsewhere, as CI makes).
const MACHINE_CRITEST: &str = "/work/shared/tools/cri-tools/critest";

/// The `critest` binary: `CRITEST`, else `../shared/tools/cri-tools/critest`
/// beside the workspace, else the machine's copy, else `critest` on `PATH`.
/// Panics, saying where it looked, if there is none: a missing suite must
/// fail the run, not pass it.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CRITEST").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "critest not found at {} (CRITEST)",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("critest"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let candidates: Vec<PathBuf> = [
        crate::workspace().join("../shared/tools/cri-tools/critest"),
        PathBuf::from(MACHINE_CRITEST),
    ]
    .into_iter()
    .chain(on_path)
    .collect();
    match candidates.iter().find(|p| p.is_file()) {
        Some(path) => path.clone(),
        None => panic!(
            "critest (cri-tools) not found: looked at {candidates:?} (set CRITEST to the binary): \
             these tests run Kubernetes' CRI validation suite and need it"
        ),
    }
}

/// Builds the stand-in for [`BUSYBOX`] into `dir` and returns the OCI layout
/// tarball: Debian's dynamically linked busybox (`make deps` installs it;
/// the static one runs `ls` and others as shell builtins, which some critest
/// specs see through) with the glibc it is linked against, copied from this
/// machine to the same paths in the image.
pub fn busybox_image(dir: &Path) -> PathBuf {
    let out = dir.join("busybox.tar");
    crate::images::write(&busybox_stand_in(BUSYBOX), &out);
    out
}

/// The web servers critest runs: nginx (pod network, port mapping, port
/// forwarding, HostPID), httpd (multiple containers) and hostnet-nginx
/// (host network, port 12003).
pub const NGINX: &str = "registry.k8s.io/e2e-test-images/nginx:1.14-2";
pub const HTTPD: &str = "registry.k8s.io/e2e-test-images/httpd:2.4.39-4";
pub const HOSTNET_NGINX: &str = "gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64:latest";

/// A stand-in for web server image `name`: the busybox stand-in (the specs
/// exec `sh`, `cat`, `echo` in it) with `images/critest/webserver.c`
/// (`make images`) as `/usr/sbin/<program>`, its entrypoint, on `port`.
fn web_server_image(dir: &Path, name: &str, program: &str, port: u16) -> PathBuf {
    let server = crate::images::images_dir().join("webserver");
    let bytes = fs::read(&server)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make images`)", server.display()));
    let mut image = busybox_stand_in(name);
    let path = format!("/usr/sbin/{program}");
    image.entries.push(Entry::file(&path, bytes));
    // Where it writes its pid (nginx's): the directory must exist.
    image
        .entries
        .push(Entry::file("/var/run/.keep", Vec::new()));
    image.entrypoint = vec![path, port.to_string()];
    let out = dir.join(format!("{program}-{port}.tar"));
    crate::images::write(&image, &out);
    out
}

/// critest's NoNewPrivs image: `images/critest/nonewprivs.c` (`make
/// images`), setuid root, as its entrypoint.
pub const NONEWPRIVS: &str = "registry.k8s.io/e2e-test-images/nonewprivs:1.3";

fn nonewprivs_image(dir: &Path) -> PathBuf {
    let program = crate::images::images_dir().join("nonewprivs");
    let bytes = fs::read(&program)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make images`)", program.display()));
    let mut image = busybox_stand_in(NONEWPRIVS);
    image.entries.push(Entry::File {
        path: "/usr/local/bin/nnp".into(),
        bytes,
        mode: 0o4755,
    });
    image.entrypoint = vec!["/usr/local/bin/nnp".into()];
    let out = dir.join("nonewprivs.tar");
    crate::images::write(&image, &out);
    out
}

/// The busybox stand-in under image name `name`.
fn busybox_stand_in(name: &str) -> Image {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "no /bin/busybox: install Debian's busybox (`make deps`)"
    );
    let bytes = fs::read(busybox).expect("read /bin/busybox");
    let mut image = Image::new(name);
    image.entrypoint = vec!["/bin/sh".into()];
    image.env = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()];
    image.entries.push(Entry::file("/bin/busybox", bytes));
    for applet in busybox_applets(busybox) {
        image.entries.push(Entry::Symlink {
            path: format!("/bin/{applet}"),
            target: "busybox".into(),
        });
    }
    for library in shared_libraries(busybox) {
        let bytes = fs::read(&library).unwrap_or_else(|e| panic!("{library}: {e}"));
        image.entries.push(Entry::file(&library, bytes));
    }
    image
}

/// The shared libraries `binary` loads and its ELF interpreter, as `ldd`
/// names them (absolute paths).
fn shared_libraries(binary: &Path) -> Vec<String> {
    let output = Command::new("ldd").arg(binary).output().expect("ldd");
    assert!(output.status.success(), "ldd {}", binary.display());
    let mut found: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect();
    found.sort();
    found.dedup();
    assert!(
        found.iter().any(|l| l.contains("libc.so")),
        "ldd found no libc for {}: {found:?}",
        binary.display()
    );
    found
}

/// Serves the images critest pulls to `node` from `registry` (started in
/// the node's network namespace) under their upstream names: builds them
/// into `dir`, pushes them, and points the node's pulls of their registry
/// there. The node must be started with
/// [`NodeOptions::registry_hosts`](crate::cri::NodeOptions).
pub fn serve_images(node: &CriNode, registry: &Registry, dir: &Path) {
    let images = [
        (BUSYBOX, busybox_image(dir)),
        (NGINX, web_server_image(dir, NGINX, "nginx", 80)),
        (HTTPD, web_server_image(dir, HTTPD, "httpd", 80)),
        (
            HOSTNET_NGINX,
            web_server_image(dir, HOSTNET_NGINX, "nginx", 12003),
        ),
        (NONEWPRIVS, nonewprivs_image(dir)),
    ];
    let mut upstreams = Vec::new();
    for (image, layout) in &images {
        let (upstream, name) = image.split_once('/').expect("registry/name");
        registry.push_layout(layout, name);
        if !upstreams.contains(&upstream) {
            upstreams.push(upstream);
        }
    }
    for upstream in upstreams {
        node.mirror_registry(upstream, &registry.host);
    }
}

/// One spec's result in one run.
#[derive(Clone, Debug)]
pub struct Spec {
    /// `passed`, `failed`, `skipped`, `panicked`, `timedout`, ... (ginkgo's states).
    pub state: String,
    /// The failure's message and location, if it failed.
    pub failure: String,
    pub seconds: f64,
}

impl Spec {
    pub fn passed(&self) -> bool {
        self.state == "passed"
    }
}

/// A critest run against one handler: its specs by full name.
#[derive(Clone, Debug)]
pub struct Run {
    pub handler: String,
    pub specs: BTreeMap<String, Spec>,
}

/// Runs `critest` against `node`'s CRI socket with runtime handler `handler`
/// and `--ginkgo.focus focus` (every spec when empty), inside the node's network namespace (where its
/// pods and streaming server are), killing it (by PID) after `timeout`. The
/// JSON report and the output are kept in `out_dir/<handler>.json|.log`.
/// Panics if critest wrote no report; a failing spec is a result, not a panic.
pub fn run(
    node: &CriNode,
    critest: &Path,
    handler: &str,
    focus: &str,
    out_dir: &Path,
    timeout: Duration,
) -> Run {
    run_as(
        node,
        critest,
        handler,
        focus,
        &|name| name.contains(focus),
        handler,
        out_dir,
        timeout,
    )
}

/// Runs exactly the specs named `names` (full texts, as [`Run::specs`] has
/// them) again for `handler`, reported as `<handler>-again`: a spec that
/// failed once under load is tried once more before it counts.
pub fn run_again(
    node: &CriNode,
    critest: &Path,
    handler: &str,
    names: &[String],
    out_dir: &Path,
    timeout: Duration,
) -> Run {
    let escaped: Vec<String> = names.iter().map(|n| regex_escape(n)).collect();
    // Unanchored at the start: ginkgo matches against a text with more before it.
    let focus = format!("(?:{})$", escaped.join("|"));
    let keep = |name: &str| names.iter().any(|n| n == name);
    let label = format!("{handler}-again");
    run_as(
        node, critest, handler, &focus, &keep, &label, out_dir, timeout,
    )
}

/// `text` as a regular expression that matches only itself (ginkgo's focus).
fn regex_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn run_as(
    node: &CriNode,
    critest: &Path,
    handler: &str,
    focus: &str,
    keep: &dyn Fn(&str) -> bool,
    label: &str,
    out_dir: &Path,
    timeout: Duration,
) -> Run {
    fs::create_dir_all(out_dir).expect("critest output dir");
    let report = out_dir.join(format!("{label}.json"));
    let _ = fs::remove_file(&report);
    let endpoint = format!("unix://{}", node.containerd_socket().display());
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{}", node.netns()))
        .arg(critest)
        .args(["--runtime-endpoint", &endpoint])
        .args(["--image-endpoint", &endpoint])
        .args(["--runtime-handler", handler])
        .args(if focus.is_empty() {
            vec![]
        } else {
            vec!["--ginkgo.focus", focus]
        })
        .arg("--ginkgo.no-color")
        .arg(format!("--ginkgo.timeout={}s", timeout.as_secs()))
        .arg(format!("--ginkgo.json-report={}", report.display()))
        .current_dir(out_dir);
    let started = Instant::now();
    // A little longer than ginkgo's own timeout, so ginkgo reports first.
    let output = crate::harness::command_within(&mut command, timeout + Duration::from_secs(30));
    let log = out_dir.join(format!("{label}.log"));
    if let Some(output) = &output {
        let _ = fs::write(&log, format!("{}{}", output.stdout, output.stderr));
    }
    eprintln!(
        "critest --runtime-handler {handler}: {} in {:.0?} (log {})",
        match &output {
            Some(o) => format!("exit {}", o.code),
            None => "killed".into(),
        },
        started.elapsed(),
        log.display()
    );
    let specs = read_report(&report, keep).unwrap_or_else(|e| {
        panic!(
            "critest --runtime-handler {handler} wrote no usable report ({e}):\n{}\ncontainerd log:\n{}",
            output
                .map(|o| tail(&format!("{}{}", o.stdout, o.stderr), 80))
                .unwrap_or_else(|| format!("killed after {timeout:?}")),
            tail(&node.log(), 80)
        )
    });
    Run {
        handler: handler.to_string(),
        specs,
    }
}

/// The `It` specs of a ginkgo JSON report whose full text `keep` accepts
/// (ginkgo lists unfocused specs too, as skipped), by full text.
pub fn read_report(
    path: &Path,
    keep: &dyn Fn(&str) -> bool,
) -> Result<BTreeMap<String, Spec>, String> {
    let text = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let suites: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut specs = BTreeMap::new();
    for suite in suites.as_array().into_iter().flatten() {
        for report in suite["SpecReports"].as_array().into_iter().flatten() {
            if report["LeafNodeType"] != "It" {
                continue;
            }
            let mut name: Vec<&str> = report["ContainerHierarchyTexts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str())
                .collect();
            name.extend(report["LeafNodeText"].as_str());
            let name = name.join(" ");
            if !keep(&name) {
                continue;
            }
            let failure = &report["Failure"];
            let failure = if failure.is_object() {
                format!(
                    "{} [{}:{}]",
                    failure["Message"].as_str().unwrap_or_default().trim(),
                    failure["Location"]["FileName"]
                        .as_str()
                        .unwrap_or_default()
                        .rsplit('/')
                        .next()
                        .unwrap_or_default(),
                    failure["Location"]["LineNumber"]
                )
            } else {
                String::new()
            };
            specs.insert(
                name,
                Spec {
                    state: report["State"].as_str().unwrap_or("unknown").to_string(),
                    failure,
                    seconds: report["RunTime"].as_f64().unwrap_or(0.0) / 1e9,
                },
            );
        }
    }
    if specs.is_empty() {
        return Err(format!("no spec of interest in {}", path.display()));
    }
    Ok(specs)
}

/// The specs that passed for `baseline` but not for `candidate`, with how
/// they ended for `candidate`.
pub fn regressions(baseline: &Run, candidate: &Run) -> Vec<(String, Spec)> {
    baseline
        .specs
        .iter()
        .filter(|(_, spec)| spec.passed())
        .filter_map(|(name, _)| match candidate.specs.get(name) {
            Some(spec) if spec.passed() => None,
            Some(spec) => Some((name.clone(), spec.clone())),
            None => Some((
                name.clone(),
                Spec {
                    state: "not run".into(),
                    failure: String::new(),
                    seconds: 0.0,
                },
            )),
        })
        .collect()
}

/// The specs that failed for every run (the containerd's or the machine's,
/// not a handler's).
pub fn failed_everywhere(runs: &[&Run]) -> Vec<String> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .specs
        .keys()
        .filter(|name| {
            runs.iter().all(|run| {
                run.specs
                    .get(*name)
                    .is_some_and(|s| !s.passed() && s.state != "skipped")
            })
        })
        .cloned()
        .collect()
}

/// A table of every spec's state per run, then the failures' messages.
pub fn table(runs: &[&Run], prefix: &str) -> String {
    let mut names: Vec<&String> = runs.iter().flat_map(|r| r.specs.keys()).collect();
    names.sort();
    names.dedup();
    let short = |name: &str| name.strip_prefix(prefix).unwrap_or(name).trim().to_string();
    let width = names.iter().map(|n| short(n).len()).max().unwrap_or(4);
    let mut out = format!("{:width$}", "spec");
    for run in runs {
        out.push_str(&format!("  {:>10}", run.handler));
    }
    out.push('\n');
    for name in &names {
        out.push_str(&format!("{:width$}", short(name)));
        for run in runs {
            let cell = run
                .specs
                .get(*name)
                .map(|s| format!("{} {:.1}s", s.state, s.seconds))
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!("  {cell:>10}"));
        }
        out.push('\n');
    }
    for run in runs {
        for (name, spec) in &run.specs {
            if !spec.failure.is_empty() {
                out.push_str(&format!(
                    "\n{} / {}:\n  {}\n",
                    run.handler,
                    short(name),
                    spec.failure.replace('\n', "\n  ")
                ));
            }
        }
    }
    out
}

/// Stops and removes every pod left on `node` (critest leaves the pod of a
/// spec that failed before its pod id was recorded), as kubelet's garbage
/// collection would; how many there were.
pub fn remove_pods(node: &CriNode) -> usize {
    let pods = node
        .try_call(|mut c| async move {
            c.list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest { filter: None })
                .await
        })
        .map(|r| r.items)
        .unwrap_or_default();
    for pod in &pods {
        if let Err(e) = node.try_stop_and_remove_pod(&pod.id) {
            eprintln!("removing pod {}: {e}", pod.id);
        }
    }
    pods.len()
}

/// The pod sandbox and container ids a containerd log says the CRI created
/// (`... returns sandbox id "<id>"`, `... returns container id "<id>"`).
pub fn created_ids(log: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for line in log.lines() {
        for marker in ["returns sandbox id", "returns container id"] {
            if let Some((_, rest)) = line.split_once(marker) {
                let id: String = rest
                    .trim_start_matches(|c: char| !c.is_ascii_hexdigit())
                    .chars()
                    .take_while(char::is_ascii_hexdigit)
                    .collect();
                if id.len() == 64 && !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    ids
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The host's SysV shared-memory segments: (shmid, creator pid, attaches),
/// from `/proc/sysvipc/shm`.
pub fn shm_segments() -> Vec<(String, i32, u64)> {
    let text = fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let (Some(id), Some(cpid), Some(nattch)) = (column("shmid"), column("cpid"), column("nattch"))
    else {
        return Vec::new();
    };
    lines
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some((
                fields.get(id)?.to_string(),
                fields.get(cpid)?.parse().ok()?,
                fields.get(nattch)?.parse().ok()?,
            ))
        })
        .collect()
}

/// Removes, when dropped, the SysV shared-memory segments created on the host
/// since it was made that nothing holds and whose creator is gone: what
/// critest's HostIpc specs leave behind (a pod's own IPC namespace takes its
/// segments with it).
pub struct ShmGuard {
    before: Vec<String>,
}

impl ShmGuard {
    pub fn new() -> Self {
        Self {
            before: shm_segments().into_iter().map(|(id, _, _)| id).collect(),
        }
    }
}

impl Default for ShmGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ShmGuard {
    fn drop(&mut self) {
        for (id, cpid, nattch) in shm_segments() {
            let creator_gone = !Path::new(&format!("/proc/{cpid}")).exists();
            if !self.before.contains(&id) && nattch == 0 && creator_gone {
                eprintln!("removing SysV shm segment {id} left by pid {cpid}");
                let _ = Command::new("ipcrm").args(["-m", &id]).status();
            }
        }
    }
}
