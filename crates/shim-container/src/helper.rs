//! The create helper: a short-lived, single-threaded process that mounts
//! the rootfs and drives libcontainer for one create or one exec.
//!
//! It is a fork of the pod's [`crate::zygote`] (`shim-create`), or, when the
//! zygote is gone, the shim binary run as `<shim> container-helper '<json>'`
//! ([`main`]). Single-threaded because libcontainer `clone`s processes and
//! runs Rust code in them before anything is exec'd (docs/architecture.md,
//! "Process model"). A create, top to bottom: fork the code server
//! ([`crate::code`]), open the shim log, adapt the spec, mount the rootfs,
//! take seccomp and capabilities out of what libcontainer reads
//! ([`crate::confinement`]), build with the [`WasmExecutor`]; on failure,
//! reap, clean up and explain ([`crate::diagnose`]). An exec builds
//! libcontainer's tenant instead, one per container at a time.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;

use oci_spec::runtime::Spec;

use crate::bundle::Bundle;
use crate::confinement::Confinement;
use crate::diagnose::{describe, explain, without_cleanup_complaint};
use crate::executor::WasmExecutor;
use crate::process::{open_shim_log, reap_children};
use crate::request::{
    sha256_digest, CreateRequest, CreateResponse, ExecRequest, LayerFile, Outputs, Request,
};
use crate::rootfs::{mount_rootfs, unmount_rootfs};
use crate::state::{budget_file, cleanup_state, staged_bundle, state_root};
use crate::stdio::stdio;
use crate::userns::DetachedBinds;
use shim_engine::MemoryBudget;

/// The first argument that turns the shim binary into the create helper.
pub const HELPER_ARG: &str = "container-helper";

/// What the zygote prepares once for every helper it forks: one malloc
/// arena (see the executor), the node's configuration and the wasmtime
/// engine, so none is set up again per container.
static WARM_ENGINE: OnceLock<shim_engine::Engine> = OnceLock::new();

pub(crate) fn warm_up() {
    // SAFETY: mallopt only tunes the allocator; the zygote has one thread.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    shim_engine::NodeConfig::get();
    match shim_engine::EngineOptions::from_env().and_then(|o| shim_engine::Engine::new(&o)) {
        Ok(engine) => {
            let _ = WARM_ENGINE.set(engine);
        }
        Err(e) => eprintln!("no warm engine: {e}"),
    }
}

/// Helper side, in a child of the zygote: what the exec'd helper's `main`
/// does, with the guest's stdin passed as a descriptor.
pub(crate) fn run_in_child(request: &Request, stdin: OwnedFd) -> CreateResponse {
    let ready = nix::unistd::dup2(stdin.as_raw_fd(), 0)
        .map_err(|e| format!("cannot set up stdin: {e}"))
        .and_then(|_| {
            std::env::set_current_dir(request.bundle())
                .map_err(|e| format!("cannot enter the bundle: {e}"))
        });
    drop(stdin);
    match ready.and_then(|()| create(request)) {
        Ok(pid) => CreateResponse::Created { pid },
        Err(error) => CreateResponse::Failed { error },
    }
}

/// Helper side: the whole life of the helper process. Returns its exit status.
pub fn main(args: &[String]) -> i32 {
    let response = match args
        .first()
        .map(|json| serde_json::from_str::<Request>(json))
    {
        Some(Ok(request)) => match create(&request) {
            Ok(pid) => CreateResponse::Created { pid },
            Err(error) => CreateResponse::Failed { error },
        },
        _ => CreateResponse::Failed {
            error: format!("{HELPER_ARG} expects one JSON create request"),
        },
    };
    let mut stdout = std::io::stdout();
    let written = serde_json::to_writer(&mut stdout, &response).is_ok() && stdout.flush().is_ok();
    if written {
        0
    } else {
        1
    }
}

fn create(request: &Request) -> Result<i32, String> {
    request.check_ids()?;
    if let Request::Cleanup { id, bundle } = request {
        // No guest: no code server, no log of its own.
        return crate::cleanup(bundle, id)
            .map(|()| 0)
            .map_err(|e| e.to_string());
    }
    // Forked before anything else: it opens the shim log itself.
    let node = shim_engine::NodeConfig::get();
    let code =
        crate::code::spawn(node, request.id(), request.debug(), WARM_ENGINE.get()).map(Arc::new);
    open_shim_log(request.debug(), request.id());
    match request {
        Request::Create(create) => build_container(create, code),
        Request::Exec(exec) => build_exec(exec, code),
        Request::Cleanup { .. } => Ok(0),
    }
}

/// A container: mount its root, build it; on failure leave nothing behind
/// and explain.
fn build_container(
    request: &CreateRequest,
    code: Option<Arc<crate::code::RemoteCache>>,
) -> Result<i32, String> {
    let began = std::time::Instant::now();
    let bundle = Bundle::load(&request.bundle)?;
    let mut spec = bundle.spec().clone();
    adapt_spec(&mut spec, request.layer.as_ref());
    if let Some(path) = bundle.cgroups_path().filter(|_| !request.systemd_cgroup) {
        crate::cgroup::create_parents(&path)
            .map_err(|e| format!("cannot create the parents of cgroup {path}: {e}"))?;
    }
    mount_rootfs(&request.bundle, &request.rootfs).map_err(|e| e.to_string())?;
    let mounted = began.elapsed();
    let result = build_init(request, &bundle, spec, code);
    log::debug!(
        "{}: create took {:.1} ms (rootfs {:.1} ms, libcontainer and the guest's preparation {:.1} ms)",
        request.id,
        began.elapsed().as_secs_f64() * 1e3,
        mounted.as_secs_f64() * 1e3,
        (began.elapsed() - mounted).as_secs_f64() * 1e3
    );
    if let Err(error) = result {
        // Leave nothing behind: no container state, cgroup or mount. The
        // container's init is our child: a cgroup v1 directory cannot be
        // removed while its zombie is unreaped, so reap before removing.
        let mut exits = reap_children();
        let mut cleaned = cleanup_state(&request.bundle, &request.id).is_ok();
        if !cleaned {
            exits.extend(reap_children());
            match cleanup_state(&request.bundle, &request.id) {
                Ok(()) => cleaned = true,
                Err(e) => log::warn!("{}: cleanup after a failed create: {e}", request.id),
            }
        }
        let error = if cleaned {
            without_cleanup_complaint(error)
        } else {
            error
        };
        if let Err(e) = unmount_rootfs(&request.bundle) {
            log::warn!("{}: cleanup after a failed create: {e}", request.id);
        }
        return Err(explain(error, Some(bundle.spec()), &exits));
    }
    result
}

/// Works around libcontainer 0.7's cgroup v1 mount for a container that joins
/// its pod's PID namespace (`shareProcessNamespace: true`). To mount
/// /sys/fs/cgroup it reads `/proc/<pid>/cgroup` with the container's pid from
/// inside that namespace while /proc is still the host's: the path names some
/// other host process (the wrong cgroup is exposed) or none (create fails with
/// "failed to prepare rootfs"). Such a container gets no cgroup mount, an
/// empty /sys/fs/cgroup, rather than a wrong one. Containers with their own
/// PID namespace (Kubernetes' default) and cgroup v2 hosts are untouched.
///
/// A wasm layer run without a command (an OCI artifact has none) gets the
/// layer's name as `process.args`: libcontainer's init refuses to run a
/// process without arguments.
///
/// `linux.rootfsPropagation` in runc's recursive spelling (`rshared`, what
/// CRI writes for a Bidirectional mount, `rslave` for HostToContainer) is
/// given to libcontainer as the plain word it knows; libcontainer makes the
/// root's propagation recursive either way.
///
/// Changes what libcontainer is given (see [`Bundle::stage`]), never containerd's file.
fn adapt_spec(spec: &mut Spec, layer: Option<&LayerFile>) {
    use libcgroups::common::{get_cgroup_setup, CgroupSetup};
    use oci_spec::runtime::LinuxNamespaceType;
    if let Some(linux) = spec.linux_mut().as_mut() {
        let plain = match linux.rootfs_propagation().as_deref() {
            Some("rshared") => Some("shared"),
            Some("rslave") => Some("slave"),
            Some("rprivate") => Some("private"),
            Some("runbindable") => Some("unbindable"),
            _ => None,
        };
        if let Some(plain) = plain {
            linux.set_rootfs_propagation(Some(plain.to_string()));
        }
    }
    if let (Some(layer), Some(process)) = (layer, spec.process_mut().as_mut()) {
        if process.args().as_ref().is_none_or(|args| args.is_empty()) {
            log::debug!("no command: the wasm layer runs as {:?}", layer.name);
            process.set_args(Some(vec![layer.name.clone()]));
        }
    }
    let joins_pid_namespace = spec
        .linux()
        .as_ref()
        .and_then(|linux| linux.namespaces().as_ref())
        .is_some_and(|namespaces| {
            namespaces
                .iter()
                .any(|ns| ns.typ() == LinuxNamespaceType::Pid && ns.path().is_some())
        });
    if !joins_pid_namespace || matches!(get_cgroup_setup(), Ok(CgroupSetup::Unified)) {
        return;
    }
    let Some(mounts) = spec.mounts().clone() else {
        return;
    };
    let (cgroup, kept): (Vec<_>, Vec<_>) = mounts
        .into_iter()
        .partition(|m| m.typ().as_deref() == Some("cgroup"));
    if cgroup.is_empty() {
        return;
    }
    log::info!(
        "the container shares its pod's PID namespace on cgroup v1: no /sys/fs/cgroup mount"
    );
    spec.set_mounts(Some(kept));
}

/// libcontainer's builder for container `id` of `bundle`, with the guest's stdio.
fn builder(
    id: &str,
    bundle: &Path,
    outputs: &Outputs,
    console_socket: Option<&Path>,
    executor: WasmExecutor,
) -> Result<ContainerBuilder, String> {
    let [stdin, stdout, stderr] = stdio(outputs)?;
    Ok(
        ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(state_root(bundle))
            .map_err(|e| e.to_string())?
            .with_console_socket(console_socket)
            .with_executor(executor)
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr),
    )
}

fn executor(
    layer: Option<&LayerFile>,
    code: Option<Arc<crate::code::RemoteCache>>,
    confinement: Confinement,
) -> Result<WasmExecutor, String> {
    Ok(WasmExecutor {
        code,
        engine: WARM_ENGINE.get().cloned(),
        layer: open_layer(layer)?.map(|(file, layer)| Arc::new((Mutex::new(Some(file)), layer))),
        confinement,
        ..WasmExecutor::default()
    })
}

/// An exec: libcontainer's tenant process joins the running container's
/// namespaces and cgroup and runs `exec.process` (a wasm program of the
/// container's root, or a native one in a native container). Nothing of the
/// container is touched when it fails.
fn build_exec(
    request: &ExecRequest,
    code: Option<Arc<crate::code::RemoteCache>>,
) -> Result<i32, String> {
    let exec = &request.process;
    let shown = format!("exec {:?} in container {}", exec.exec_id, request.id);
    let bundle = Bundle::load(&request.bundle).map_err(|e| format!("{shown}: {e}"))?;
    let spec = bundle.spec();
    // The exec runs under the container's filter and its own capabilities,
    // applied by the executor: libcontainer's tenant builder drops the filter.
    let mut process: oci_spec::runtime::Process = serde_json::from_value(exec.process.clone())
        .map_err(|e| format!("{shown}: its process is not valid: {e}"))?;
    let mut confinement = Confinement::take_from_process(&mut process);
    confinement.seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let mut executor = executor(None, code, confinement)?;
    // The exec's linear memories count against the container's memory
    // limit with the container's own (the tenant's spec keeps no
    // `linux.resources`).
    executor.memory = Some(
        MemoryBudget::open(&budget_file(&request.bundle, &request.id)).unwrap_or_else(|e| {
            log::warn!("{shown}: no memory budget file ({e}); the limit at create applies");
            MemoryBudget::new(shim_image::memory_limit(spec))
        }),
    );
    executor.exec = Some(crate::executor::ExecKind {
        native_allowed: request.native_allowed,
    });
    // libcontainer names each tenant's notify socket at random in the
    // container's state directory and leaves it there; execs of one container
    // are built one at a time so that each removes only its own.
    let state = state_root(&request.bundle).join(&request.id);
    let _serial = lock_execs(&state)
        .map_err(|e| format!("{shown}: cannot lock the container's state: {e}"))?;
    // With its own user namespace, the exec joins it (see `userns`).
    let init_pid = libcontainer::container::Container::load(state.clone())
        .ok()
        .and_then(|container| container.pid())
        .map(|pid| pid.as_raw());
    if let Some(pid) = init_pid {
        executor.user_namespace = crate::userns::container_user_namespace(spec, pid)
            .map_err(|e| format!("{shown}: {e}"))?
            .map(Arc::new);
    } else if crate::userns::has_user_namespace(spec) {
        return Err(format!("{shown}: the container's process is gone"));
    }
    let staged = request.bundle.join(format!(".exec-{}.json", exec.exec_id));
    serde_json::to_vec(&process)
        .map_err(std::io::Error::other)
        .and_then(|json| std::fs::write(&staged, json))
        .map_err(|e| format!("{shown}: cannot stage its process: {e}"))?;
    let built = builder(
        &request.id,
        &request.bundle,
        &exec.outputs,
        exec.console_socket.as_deref(),
        executor,
    )
    .and_then(|builder| {
        builder
            .as_tenant()
            .with_process(Some(&staged))
            .with_detach(true)
            .build()
            .map_err(|e| describe(&e))
    });
    let _ = std::fs::remove_file(&staged);
    remove_tenant_sockets(&state);
    built.map(|pid| pid.as_raw())
}

/// How long an exec waits for the container's earlier execs to be built.
const EXEC_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Serializes the execs of one container: a POSIX record lock, which the
/// helper's forked children (the exec processes, which never exec when they
/// run wasm) do not inherit, unlike a flock. Held until the file is closed.
fn lock_execs(state: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state.join("exec.lock"))?;
    // SAFETY: a zeroed flock is a valid value of this plain C struct.
    let mut whole: libc::flock = unsafe { std::mem::zeroed() };
    whole.l_type = libc::F_WRLCK as _;
    whole.l_whence = libc::SEEK_SET as _;
    // Bounded: an exec whose build hangs must not hold up every later one.
    let deadline = std::time::Instant::now() + EXEC_LOCK_TIMEOUT;
    loop {
        match nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETLK(&whole)) {
            Ok(_) => return Ok(file),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES)
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => {
                return Err(std::io::Error::other(format!(
                    "another exec of this container has been starting for {}s",
                    EXEC_LOCK_TIMEOUT.as_secs()
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// libcontainer leaves a tenant's notify socket, and with a terminal its
/// link to the console socket, in the container's state directory; an exec
/// is done with them once its process runs. Called under the state
/// directory's lock, so no other exec's socket is in use.
fn remove_tenant_sockets(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("tenant-notify-") || name.starts_with("tenant-tty-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The container's init, with seccomp and capabilities left to the executor.
fn build_init(
    request: &CreateRequest,
    bundle: &Bundle,
    mut spec: Spec,
    code: Option<Arc<crate::code::RemoteCache>>,
) -> Result<i32, String> {
    // libcontainer sees the spec without seccomp and capabilities (the
    // executor applies them, see `confinement`), in a private bundle.
    let confinement = Confinement::take_from_spec(&mut spec);
    // With its own user namespace, its bind mounts are opened here.
    let binds = DetachedBinds::take_from(&mut spec)?;
    binds.make_mountpoints(&crate::rootfs::rootfs_dir(&request.bundle));
    let staged = staged_bundle(&request.bundle, &request.id);
    bundle.stage(&staged, &spec)?;
    let mut executor = executor(request.layer.as_ref(), code, confinement)?;
    executor.binds = Some(Arc::new(binds));
    // Mapped here, shared with the container's process, which inherits the
    // mapping; the shim maps it too, to resize it ([`MemoryBudget`]).
    let budget = budget_file(&request.bundle, &request.id);
    executor.memory = Some(
        MemoryBudget::create(&budget, shim_image::memory_limit(&spec))
            .map_err(|e| format!("cannot create the memory budget {}: {e}", budget.display()))?,
    );
    let container = builder(
        &request.id,
        &request.bundle,
        &request.outputs,
        request.console_socket.as_deref(),
        executor,
    )?
    .as_init(&staged)
    .with_systemd(request.systemd_cgroup)
    .with_detach(true)
    .build()
    .map_err(|e| describe(&e))?;
    container
        .pid()
        .map(|pid| pid.as_raw())
        .ok_or_else(|| "libcontainer created the container but reported no pid".to_string())
}

/// Copies the image's wasm layer, stored on the host, into a sealed memfd
/// for the container's process, checking it against its digest on the
/// way: a stored file changed since it was stored is refused, and the
/// container never holds a descriptor of the host's store.
fn open_layer(layer: Option<&LayerFile>) -> Result<Option<(File, LayerFile)>, String> {
    let Some(layer) = layer else {
        return Ok(None);
    };
    let unreadable = |e| format!("{}: cannot read its stored wasm layer: {e}", layer.shown);
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&layer.path)
        .map_err(|e| format!("{}: cannot open its stored wasm layer: {e}", layer.shown))?;
    let mut copy = shim_engine::memfd::sealed_copy(&mut &file).map_err(unreadable)?;
    if let Some(expected) = &layer.digest {
        // The copy is what the container gets: that is what is checked.
        let found = sha256_digest(&copy).map_err(unreadable)?;
        std::io::Seek::rewind(&mut copy).map_err(unreadable)?;
        if &found != expected {
            return Err(format!(
                "{}: the stored wasm layer {} does not match its digest (it is {found}); \
                 remove it and pull the image again",
                layer.shown,
                layer.path.display()
            ));
        }
    }
    Ok(Some((copy, layer.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{ProcessBuilder, SpecBuilder};

    fn spec_with_args(args: &[&str]) -> Spec {
        let process = ProcessBuilder::default()
            .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap();
        SpecBuilder::default().process(process).build().unwrap()
    }

    fn args(spec: &Spec) -> Vec<String> {
        spec.process()
            .as_ref()
            .unwrap()
            .args()
            .clone()
            .unwrap_or_default()
    }

    #[test]
    fn a_wasm_layer_without_a_command_runs_under_its_own_name() {
        let layer = LayerFile {
            path: "/var/lib/x/layers/sha256-00.wasm".into(),
            shown: "r/hello:v1".into(),
            name: "hello.wasm".into(),
            digest: None,
        };
        let mut spec = spec_with_args(&[]);
        adapt_spec(&mut spec, Some(&layer));
        assert_eq!(args(&spec), ["hello.wasm"]);
        let mut spec = spec_with_args(&["hi", "x"]);
        adapt_spec(&mut spec, Some(&layer));
        assert_eq!(args(&spec), ["hi", "x"], "a given command is argv as it is");
        let mut spec = spec_with_args(&[]);
        adapt_spec(&mut spec, None);
        assert!(args(&spec).is_empty(), "only a layer gets a default");
    }

    #[test]
    fn runcs_recursive_root_propagation_reaches_libcontainer_as_a_word_it_knows() {
        for (given, passed) in [
            ("rshared", "shared"),
            ("rslave", "slave"),
            ("rprivate", "private"),
            ("shared", "shared"),
        ] {
            let mut spec = spec_with_args(&["a.wasm"]);
            let mut linux = spec.linux().clone().unwrap_or_default();
            linux.set_rootfs_propagation(Some(given.into()));
            spec.set_linux(Some(linux));
            adapt_spec(&mut spec, None);
            let linux = spec.linux().as_ref().unwrap();
            assert_eq!(linux.rootfs_propagation().as_deref(), Some(passed));
        }
    }
}
