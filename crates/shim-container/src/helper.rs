//! The create helper: the shim binary re-executed as a short-lived,
//! single-threaded process that mounts the rootfs and drives libcontainer.
//!
//! Why a separate process: the shim server is multi-threaded (ttrpc, the
//! reaper), and libcontainer `clone`s the container's processes and runs Rust
//! code in them before anything is exec'd. A clone of a multi-threaded process
//! may deadlock on a lock (allocator, logger) held by a thread that did not
//! come along. A freshly exec'd helper has exactly one thread, so its clones
//! are safe. The container's init (which runs the guest) is cloned from the
//! helper; when the helper exits it is re-parented to the shim, a child
//! subreaper, which reaps it and reports its exit status.
//!
//! Protocol: the shim runs `<shim> container-helper '<CreateRequest json>'`
//! with the guest's stdin as the helper's stdin, and reads one JSON
//! [`CreateResponse`] from the helper's stdout.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

use oci_spec::runtime::Spec;

use crate::confinement::Confinement;
use crate::executor::WasmExecutor;
use crate::rootfs::{mount_rootfs, unmount_rootfs, RootfsMount};
use crate::{cleanup_state, state_root, Error};

/// The first argument that turns the shim binary into the create helper.
pub const HELPER_ARG: &str = "container-helper";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<RootfsMount>,
    /// containerd's stdout/stderr fifos; `None` discards the stream.
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    pub systemd_cgroup: bool,
    pub debug: bool,
    /// The guest when it is a wasm layer of the image rather than a file of
    /// the root (see `shim_image::layers`).
    #[serde(default)]
    pub layer: Option<LayerFile>,
    /// Set for an exec: a new process in the running container `id`.
    #[serde(default)]
    pub exec: Option<ExecProcess>,
}

impl CreateRequest {
    /// The ids name paths (state directories, staged files): each must be
    /// a containerd identifier, one path component.
    pub fn check_ids(&self) -> Result<(), String> {
        shim_image::validate_id("task", &self.id).map_err(|e| format!("invalid id: {e}"))?;
        if let Some(exec) = &self.exec {
            shim_image::validate_id("exec", &exec.exec_id)
                .map_err(|e| format!("invalid id: {e}"))?;
        }
        Ok(())
    }
}

/// An exec's process: its OCI `Process` (JSON, as containerd sends it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecProcess {
    pub exec_id: String,
    pub process: serde_json::Value,
    /// Whether the container runs a native program (a sidecar, a pause
    /// container): only then may an exec run one. In a wasm container an
    /// exec runs WebAssembly only, whatever the guest wrote to its root.
    #[serde(default)]
    pub native_allowed: bool,
}

/// A wasm layer stored on the host, to run instead of an entrypoint file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerFile {
    /// The stored layer, opened on the host before the container is cloned.
    pub path: PathBuf,
    /// How logs and errors name it (image and digest).
    pub shown: String,
    /// argv[0] when the container names no command.
    pub name: String,
    /// `sha256:<hex>`: the stored file is checked against it on every use.
    #[serde(default)]
    pub digest: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum CreateResponse {
    Created { pid: i32 },
    Failed { error: String },
}

/// Shim side: has the pod's zygote fork a helper (or, without a zygote,
/// runs the helper binary) and returns the container init's host PID.
pub(crate) fn spawn_create(request: &CreateRequest, stdin: Option<OwnedFd>) -> Result<i32, Error> {
    request.check_ids().map_err(Error::Create)?;
    if let Some(result) = crate::zygote::create(request, &stdin) {
        return result;
    }
    let stdin = stdin.map_or_else(Stdio::null, Stdio::from);
    let json = serde_json::to_string(request).map_err(|e| Error::Helper(e.to_string()))?;
    let mut child = Command::new("/proc/self/exe")
        .arg(HELPER_ARG)
        .arg(json)
        .current_dir(&request.bundle)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Helper(format!("cannot start the create helper: {e}")))?;
    // The helper is reaped by the shim's SIGCHLD reaper; its answer is on stdout.
    let mut out = String::new();
    let mut err = String::new();
    let _ = child.stdout.take().map(|mut s| s.read_to_string(&mut out));
    let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
    parse_response(
        &out,
        &format!("the create helper ended without an answer: {}", err.trim()),
    )
}

/// The helper's JSON answer; `missing` describes its absence.
pub(crate) fn parse_response(answer: &str, missing: &str) -> Result<i32, Error> {
    match serde_json::from_str::<CreateResponse>(answer) {
        Ok(CreateResponse::Created { pid }) => Ok(pid),
        Ok(CreateResponse::Failed { error }) => Err(Error::Create(error)),
        Err(_) => Err(Error::Helper(missing.to_string())),
    }
}

/// What the zygote prepares once for every helper it forks: one malloc
/// arena (see the executor) and the wasmtime engine, so neither is set up
/// again per container.
static WARM_ENGINE: OnceLock<shim_engine::Engine> = OnceLock::new();

pub(crate) fn warm_up() {
    // SAFETY: mallopt only tunes the allocator; the zygote has one thread.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    match shim_engine::EngineOptions::from_env().and_then(|o| shim_engine::Engine::new(&o)) {
        Ok(engine) => {
            let _ = WARM_ENGINE.set(engine);
        }
        Err(e) => eprintln!("no warm engine: {e}"),
    }
}

/// Helper side, in a child of the zygote: what the exec'd helper's `main`
/// does, with the guest's stdin passed as a descriptor.
pub(crate) fn run_in_child(request: &CreateRequest, stdin: OwnedFd) -> CreateResponse {
    let ready = nix::unistd::dup2(stdin.as_raw_fd(), 0)
        .map_err(|e| format!("cannot set up stdin: {e}"))
        .and_then(|_| {
            std::env::set_current_dir(&request.bundle)
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
        .map(|json| serde_json::from_str::<CreateRequest>(json))
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

fn create(request: &CreateRequest) -> Result<i32, String> {
    request.check_ids()?;
    // Forked before anything else: it opens the shim log itself.
    let code = crate::code::spawn(cache_config(request), WARM_ENGINE.get()).map(Arc::new);
    open_shim_log(request.debug, &request.id);
    if let Some(exec) = &request.exec {
        return build_exec(request, exec, code);
    }
    let began = std::time::Instant::now();
    adapt_spec(&request.bundle, request.layer.as_ref())?;
    mount_rootfs(&request.bundle, &request.rootfs).map_err(|e| e.to_string())?;
    let mounted = began.elapsed();
    let result = build(request, code);
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
        let spec = oci_spec::runtime::Spec::load(request.bundle.join("config.json")).ok();
        return Err(explain(error, spec.as_ref(), &exits));
    }
    result
}

/// Logs to the shim log, the fifo `log` in the bundle (the cwd). The logger
/// opens it blocking; check first that containerd is reading, or create
/// would hang.
pub(crate) fn open_shim_log(debug: bool, id: &str) {
    let reader = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log");
    if reader.is_ok() {
        if let Err(e) = containerd_shim::logger::init(debug, "info", "", id) {
            eprintln!("no shim log: {e}");
        }
    }
}

/// libcontainer appends its own cleanup's failure to a create error (". error
/// during cleanup: ..."): typically a cgroup v1 directory it cannot remove
/// while the container's process is an unreaped zombie. Once the helper's
/// cleanup, which reaps first, has removed everything, that is only noise
/// that hides the real error.
fn without_cleanup_complaint(error: String) -> String {
    match error.split_once(". error during cleanup: ") {
        Some((cause, _)) => cause.to_string(),
        None => error,
    }
}

/// libcontainer's errors from the container's process lose their cause on
/// the way: its init sends only the outermost message ("failed to prepare
/// rootfs"), and a process that dies sends nothing ("waiting for init ready").
/// Adds what can be told from here: the mount that cannot work, or how the
/// process died (`exits`: the statuses of the helper's reaped children).
fn explain(
    error: String,
    spec: Option<&oci_spec::runtime::Spec>,
    exits: &[nix::sys::wait::WaitStatus],
) -> String {
    use nix::sys::signal::Signal;
    use nix::sys::wait::WaitStatus;
    if error.contains("failed to prepare rootfs") {
        return match spec.and_then(mount_problem) {
            Some(cause) => format!("{error}: {cause}"),
            None => format!("{error} (one of the spec's mounts could not be set up)"),
        };
    }
    if !error.contains("waiting for init ready") {
        return error;
    }
    // The process died before it could report anything; libcontainer kills
    // what is left only after that, so a SIGKILL here came from elsewhere:
    // under a memory limit, the OOM killer (its cgroup, and so its OOM count,
    // is already gone).
    let signal = exits.iter().find_map(|status| match status {
        WaitStatus::Signaled(_, signal, _) => Some(*signal),
        _ => None,
    });
    let how = match (signal, spec.and_then(shim_image::memory_limit)) {
        (Some(Signal::SIGKILL), Some(limit)) => format!(
            "it was killed (SIGKILL), most likely by the OOM killer at the container's memory \
             limit of {} MiB; reading and compiling WebAssembly takes memory of the order of \
             the binary's size, several times that for large data segments",
            limit >> 20
        ),
        (Some(signal), _) => format!("it was killed by {signal}"),
        (None, _) => return error,
    };
    format!("the container's process died while it prepared the guest: {how} ({error})")
}

/// Which of the spec's mounts cannot work, when the host can tell: a bind
/// mount whose source is missing, or a filesystem type the kernel does not
/// know (checked after the failed mount, which would have loaded its module).
fn mount_problem(spec: &oci_spec::runtime::Spec) -> Option<String> {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    spec.mounts().iter().flatten().find_map(|mount| {
        let kind = mount.typ().as_deref().unwrap_or_default();
        let bind = kind == "bind"
            || mount
                .options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        let destination = mount.destination().display();
        match mount.source() {
            Some(source) if bind && !source.exists() => Some(format!(
                "the bind mount at {destination}: its source {} does not exist on the host",
                source.display()
            )),
            _ if !bind
                && !kind.is_empty()
                && !filesystems.is_empty()
                && !filesystems
                    .lines()
                    .any(|l| l.split_whitespace().last() == Some(kind)) =>
            {
                Some(format!(
                    "the mount at {destination}: filesystem type {kind:?} is not supported by \
                     this kernel (not in /proc/filesystems)"
                ))
            }
            _ => None,
        }
    })
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
fn adapt_spec(bundle: &Path, layer: Option<&LayerFile>) -> Result<(), String> {
    use libcgroups::common::{get_cgroup_setup, CgroupSetup};
    use oci_spec::runtime::LinuxNamespaceType;
    let path = bundle.join("config.json");
    let mut spec = Spec::load(&path).map_err(|e| format!("cannot read the runtime spec: {e}"))?;
    let save = |spec: &Spec| save_spec(bundle, spec);
    if let (Some(layer), Some(process)) = (layer, spec.process_mut().as_mut()) {
        if process.args().as_ref().is_none_or(|args| args.is_empty()) {
            log::debug!("no command: the wasm layer runs as {:?}", layer.name);
            process.set_args(Some(vec![layer.name.clone()]));
            save(&spec)?;
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
        return Ok(());
    }
    let Some(mounts) = spec.mounts().clone() else {
        return Ok(());
    };
    let (cgroup, kept): (Vec<_>, Vec<_>) = mounts
        .into_iter()
        .partition(|m| m.typ().as_deref() == Some("cgroup"));
    if cgroup.is_empty() {
        return Ok(());
    }
    log::info!(
        "the container shares its pod's PID namespace on cgroup v1: no /sys/fs/cgroup mount"
    );
    spec.set_mounts(Some(kept));
    save(&spec)
}

/// Reaps the helper's exited children, waiting up to two seconds for those
/// still dying (libcontainer SIGKILLs them on a failed create); how each ended.
fn reap_children() -> Vec<nix::sys::wait::WaitStatus> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut exits = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return exits,
            Ok(status) => exits.push(status),
        }
    }
}

/// The guest's stdio: the helper's stdin and containerd's output fifos.
fn stdio(request: &CreateRequest) -> Result<[OwnedFd; 3], String> {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("cannot duplicate stdin: {e}"))?;
    let stdout =
        open_output(request.stdout.as_deref()).map_err(|e| format!("cannot open stdout: {e}"))?;
    let stderr =
        open_output(request.stderr.as_deref()).map_err(|e| format!("cannot open stderr: {e}"))?;
    Ok([stdin, stdout, stderr])
}

fn builder(request: &CreateRequest, executor: WasmExecutor) -> Result<ContainerBuilder, String> {
    let [stdin, stdout, stderr] = stdio(request)?;
    Ok(
        ContainerBuilder::new(request.id.clone(), SyscallType::default())
            .with_root_path(state_root(&request.bundle))
            .map_err(|e| e.to_string())?
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
    request: &CreateRequest,
    exec: &ExecProcess,
    code: Option<Arc<crate::code::RemoteCache>>,
) -> Result<i32, String> {
    let shown = format!("exec {:?} in container {}", exec.exec_id, request.id);
    let spec = oci_spec::runtime::Spec::load(request.bundle.join("config.json"))
        .map_err(|e| format!("{shown}: cannot read the runtime spec: {e}"))?;
    // The exec runs under the container's filter and its own capabilities,
    // applied by the executor: libcontainer's tenant builder drops the filter.
    let mut process: oci_spec::runtime::Process = serde_json::from_value(exec.process.clone())
        .map_err(|e| format!("{shown}: its process is not valid: {e}"))?;
    let mut confinement = Confinement::take_from_process(&mut process);
    confinement.seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let mut executor = executor(None, code, confinement)?;
    // The tenant's spec keeps no `linux.resources`: the container's memory
    // limit caps the exec's linear memories as it caps the container's.
    executor.memory_limit = shim_image::memory_limit(&spec);
    executor.exec = Some(crate::executor::ExecKind {
        native_allowed: exec.native_allowed,
    });
    // libcontainer names each tenant's notify socket at random in the
    // container's state directory and leaves it there; execs of one container
    // are built one at a time so that each removes only its own.
    let state = state_root(&request.bundle).join(&request.id);
    let _serial = lock_execs(&state)
        .map_err(|e| format!("{shown}: cannot lock the container's state: {e}"))?;
    let staged = request.bundle.join(format!(".exec-{}.json", exec.exec_id));
    serde_json::to_vec(&process)
        .map_err(std::io::Error::other)
        .and_then(|json| std::fs::write(&staged, json))
        .map_err(|e| format!("{shown}: cannot stage its process: {e}"))?;
    let built = builder(request, executor).and_then(|builder| {
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

/// libcontainer leaves a tenant's notify socket in the container's state
/// directory; an exec is done with it once its process runs. Called under the
/// state directory's lock, so no other exec's socket is in use.
fn remove_tenant_sockets(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("tenant-notify-")
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn build(
    request: &CreateRequest,
    code: Option<Arc<crate::code::RemoteCache>>,
) -> Result<i32, String> {
    // libcontainer sees the spec without seccomp and capabilities (the
    // executor applies them, see `confinement`); containerd's file is put
    // back as it was once the container's process has them.
    let path = request.bundle.join("config.json");
    let mut spec = Spec::load(&path).map_err(|e| format!("cannot read the runtime spec: {e}"))?;
    let confinement = Confinement::take_from_spec(&mut spec);
    save_spec(&request.bundle, &spec)?;
    let executor = executor(request.layer.as_ref(), code, confinement.clone());
    let built = executor.and_then(|executor| {
        builder(request, executor)?
            .as_init(&request.bundle)
            .with_systemd(request.systemd_cgroup)
            .with_detach(true)
            .build()
            .map_err(|e| describe(&e))
    });
    confinement.restore_into(&mut spec);
    save_spec(&request.bundle, &spec)?;
    let container = built?;
    container
        .pid()
        .map(|pid| pid.as_raw())
        .ok_or_else(|| "libcontainer created the container but reported no pid".to_string())
}

/// Where the node's code cache lives: `$WASMTIME_SHIM_CACHE_DIR` (`off` for
/// none), else [`shim_engine::cache::DEFAULT_ROOT`]; bounded to
/// `$WASMTIME_SHIM_CACHE_LIMIT_MB` MiB. A cache that cannot be opened costs
/// speed, not the container: it then compiles without one.
pub const CACHE_DIR_ENV: &str = "WASMTIME_SHIM_CACHE_DIR";
pub const CACHE_LIMIT_ENV: &str = "WASMTIME_SHIM_CACHE_LIMIT_MB";

/// The node's cache directory, `None` when the cache is off.
pub fn cache_root() -> Option<PathBuf> {
    let root =
        std::env::var_os(CACHE_DIR_ENV).unwrap_or_else(|| shim_engine::cache::DEFAULT_ROOT.into());
    (root != "off" && !root.is_empty()).then(|| PathBuf::from(root))
}

/// The bound on the cache's size in bytes.
pub fn cache_limit() -> u64 {
    std::env::var(CACHE_LIMIT_ENV)
        .ok()
        .and_then(|mb| mb.parse::<u64>().ok())
        .map_or(shim_engine::cache::DEFAULT_LIMIT, |mb| mb << 20)
}

/// The node's cache, for the code server; `None` when it is off.
fn cache_config(request: &CreateRequest) -> Option<crate::code::CacheConfig> {
    Some(crate::code::CacheConfig {
        root: cache_root()?,
        limit: cache_limit(),
        id: request.id.clone(),
        debug: request.debug,
    })
}

/// Copies the image's wasm layer, stored on the host, into a sealed memfd
/// for the container's process, checking it against its digest on the
/// way: a stored file changed since it was stored is refused, and the
/// container never holds a descriptor of the host's store.
fn open_layer(layer: Option<&LayerFile>) -> Result<Option<(File, LayerFile)>, String> {
    use sha2::Digest;
    let Some(layer) = layer else {
        return Ok(None);
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&layer.path)
        .map_err(|e| format!("{}: cannot open its stored wasm layer: {e}", layer.shown))?;
    let mut hasher = sha2::Sha256::new();
    let copy = shim_engine::cache::sealed_copy(&mut HashingReader {
        from: file,
        hasher: &mut hasher,
    })
    .map_err(|e| format!("{}: cannot read its stored wasm layer: {e}", layer.shown))?;
    if let Some(expected) = &layer.digest {
        let found = format!("sha256:{:x}", hasher.finalize());
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

/// Reads `from`, feeding every byte to `hasher` as well.
struct HashingReader<'a> {
    from: File,
    hasher: &'a mut sha2::Sha256,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.from.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Writes `spec` as the bundle's config.json (staged, then renamed).
fn save_spec(bundle: &Path, spec: &Spec) -> Result<(), String> {
    let staged = bundle.join(".config.json.wasmtime");
    spec.save(&staged)
        .and_then(|()| std::fs::rename(&staged, bundle.join("config.json")).map_err(Into::into))
        .map_err(|e| format!("cannot rewrite the runtime spec: {e}"))
}

/// libcontainer wraps the init process's error (ours, from the executor's
/// `validate`) in channel errors; the innermost message is the useful one.
fn describe(error: &dyn std::error::Error) -> String {
    let mut messages = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        messages.push(e.to_string());
        source = e.source();
    }
    messages.dedup();
    messages.join(": ")
}

/// Opens one of containerd's output fifos for writing without ever blocking:
/// when no reader is attached (yet), it is opened read-write so the guest's
/// output waits in the pipe instead of killing it with SIGPIPE.
///
/// A `file://` log URI (`ctr run --log-uri file:///path`) is the file itself,
/// appended to by the guest directly, stdout and stderr alike (the runc
/// shim's behaviour, without a copy through the shim); `binary://` loggers
/// are not supported.
fn open_output(path: Option<&Path>) -> std::io::Result<OwnedFd> {
    let Some(path) = path else {
        return Ok(OpenOptions::new().write(true).open("/dev/null")?.into());
    };
    if let Some(uri) = path.to_str().filter(|p| p.contains("://")) {
        let Some(file) = uri.strip_prefix("file://") else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("log URI {uri}: only file:// log URIs are supported"),
            ));
        };
        return Ok(OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(file)?
            .into());
    }
    let file = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            OpenOptions::new().read(true).write(true).open(path)?
        }
        Err(e) => return Err(e),
    };
    let fd = file.as_raw_fd();
    let mut flags =
        nix::fcntl::OFlag::from_bits_retain(nix::fcntl::fcntl(fd, nix::fcntl::F_GETFL)?);
    flags.remove(nix::fcntl::OFlag::O_NONBLOCK);
    nix::fcntl::fcntl(fd, nix::fcntl::F_SETFL(flags))?;
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{ProcessBuilder, Spec, SpecBuilder};

    fn bundle_with_args(args: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let process = ProcessBuilder::default()
            .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap();
        let spec = SpecBuilder::default().process(process).build().unwrap();
        spec.save(dir.path().join("config.json")).unwrap();
        dir
    }

    fn args(bundle: &Path) -> Vec<String> {
        let spec = Spec::load(bundle.join("config.json")).unwrap();
        spec.process()
            .as_ref()
            .unwrap()
            .args()
            .clone()
            .unwrap_or_default()
    }

    fn spec_with(mounts: serde_json::Value, memory_limit: Option<i64>) -> Spec {
        let mut spec = serde_json::json!({"ociVersion": "1.0.2", "mounts": mounts});
        if let Some(limit) = memory_limit {
            spec["linux"] = serde_json::json!({"resources": {"memory": {"limit": limit}}});
        }
        serde_json::from_value(spec).unwrap()
    }

    #[test]
    fn a_mount_that_failed_is_named_with_its_problem() {
        let fail = "failed to create container: exec process failed with error error in \
                    executing process : failed to prepare rootfs";
        let spec = spec_with(
            serde_json::json!([
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/x", "type": "bind", "source": "/no/such/dir", "options": ["rbind", "ro"]}
            ]),
            None,
        );
        let message = explain(fail.into(), Some(&spec), &[]);
        assert!(
            message.ends_with(
                "failed to prepare rootfs: the bind mount at /x: its source /no/such/dir does \
                 not exist on the host"
            ),
            "{message}"
        );
        let spec = spec_with(
            serde_json::json!([{"destination": "/y", "type": "nosuchfs", "source": "none"}]),
            None,
        );
        let message = explain(fail.into(), Some(&spec), &[]);
        assert!(
            message.contains("filesystem type \"nosuchfs\" is not supported by this kernel"),
            "{message}"
        );
        let spec = spec_with(
            serde_json::json!([{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["size=bogus"]}]),
            None,
        );
        let message = explain(fail.into(), Some(&spec), &[]);
        assert!(message.ends_with("(one of the spec's mounts could not be set up)"));
    }

    #[test]
    fn libcontainers_cleanup_complaint_goes_once_the_helper_cleaned_up() {
        let error = "failed to create container: exec process failed with error error in \
                     executing process : /x.wasm is not valid WebAssembly: bad. error during \
                     cleanup: failed to cleanup container: io error: at \
                     /sys/fs/cgroup/blkio/default/c1: could not delete";
        assert_eq!(
            without_cleanup_complaint(error.into()),
            "failed to create container: exec process failed with error error in executing \
             process : /x.wasm is not valid WebAssembly: bad"
        );
        assert_eq!(without_cleanup_complaint("plain".into()), "plain");
    }

    #[test]
    fn a_process_killed_while_preparing_the_guest_is_explained() {
        use nix::sys::signal::Signal;
        use nix::sys::wait::WaitStatus;
        use nix::unistd::Pid;
        let broken = "failed to create container: failed to receive. \"waiting for init ready\". \
                      BrokenChannel";
        let killed = [WaitStatus::Signaled(
            Pid::from_raw(7),
            Signal::SIGKILL,
            false,
        )];
        let limited = spec_with(serde_json::json!([]), Some(64 << 20));
        let message = explain(broken.into(), Some(&limited), &killed);
        assert!(
            message.starts_with(
                "the container's process died while it prepared the guest: it was killed \
                 (SIGKILL), most likely by the OOM killer at the container's memory limit of 64 MiB"
            ),
            "{message}"
        );
        assert!(message.ends_with(&format!("({broken})")), "{message}");
        let segv = [WaitStatus::Signaled(
            Pid::from_raw(7),
            Signal::SIGSEGV,
            false,
        )];
        let message = explain(broken.into(), Some(&limited), &segv);
        assert!(message.contains("it was killed by SIGSEGV"), "{message}");
        // Nothing more is known: the error stays as it was.
        let exited = [WaitStatus::Exited(Pid::from_raw(7), 1)];
        assert_eq!(explain(broken.into(), Some(&limited), &exited), broken);
        assert_eq!(explain("other".into(), Some(&limited), &killed), "other");
    }

    #[test]
    fn a_wasm_layer_without_a_command_runs_under_its_own_name() {
        let layer = LayerFile {
            path: "/var/lib/x/layers/sha256-00.wasm".into(),
            shown: "r/hello:v1".into(),
            name: "hello.wasm".into(),
            digest: None,
        };
        let bundle = bundle_with_args(&[]);
        adapt_spec(bundle.path(), Some(&layer)).unwrap();
        assert_eq!(args(bundle.path()), ["hello.wasm"]);
        let bundle = bundle_with_args(&["hi", "x"]);
        adapt_spec(bundle.path(), Some(&layer)).unwrap();
        assert_eq!(
            args(bundle.path()),
            ["hi", "x"],
            "a given command is argv as it is"
        );
        let bundle = bundle_with_args(&[]);
        adapt_spec(bundle.path(), None).unwrap();
        assert!(
            args(bundle.path()).is_empty(),
            "only a layer gets a default"
        );
    }

    #[test]
    fn a_file_log_uri_is_appended_to_and_other_schemes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        std::fs::write(&log, "before\n").unwrap();
        let uri = PathBuf::from(format!("file://{}", log.display()));
        File::from(open_output(Some(&uri)).unwrap())
            .write_all(b"after\n")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "before\nafter\n");
        let err = open_output(Some(Path::new("binary:///usr/bin/logger"))).unwrap_err();
        assert!(err.to_string().contains("only file://"), "{err}");
    }
}
