//! The container's process: libcontainer sets up namespaces, cgroups and the
//! root, then hands control to this executor instead of `execve`.
//!
//! `validate` runs inside the container after `pivot_root` and before the
//! start signal: it resolves the entrypoint in the container's own root,
//! compiles it and links it against WASI, so every bad-input error reaches
//! containerd from `create`. `exec` runs the prepared program after `start`
//! and ends the process with the guest's exit status.
//!
//! A `wasi:http/incoming-handler` component serves HTTP: `validate` binds its
//! port in the container's network namespace (so a taken port fails `create`)
//! and `exec` serves until SIGTERM, then drains.
//!
//! An entrypoint that is a native executable (ELF, or a `#!` script) runs as
//! an ordinary Linux container through libcontainer's default executor: pod
//! sandboxes (pause) and sidecars share a shim with the wasm containers.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::Spec;
use shim_engine::{Engine, Invocation, MemoryBudget, Outcome, Preopen, Program};
use shim_image::{
    annotation, deadline, filesystem_grants, grant_for, memory_limit, narrowed_grants,
    network_policy, WasmProcess, PREOPENS_ANNOTATION,
};

use crate::code::RemoteCache;
use crate::confinement::Confinement;
use crate::guest_view::{self, InheritedFds};
use crate::native;
use crate::process::{close_inherited, set_name};
use crate::request::LayerFile;

/// What `validate` prepared for `exec`; both run in the same init process.
static PREPARED: OnceLock<Workload> = OnceLock::new();
/// The descriptors the process inherited, closed before the guest runs.
static INHERITED: Mutex<Option<InheritedFds>> = Mutex::new(None);

enum Workload {
    Wasm(Program, Invocation),
    Http(Program, Invocation, TcpListener),
    Native,
}

impl Workload {
    /// The descriptors the guest keeps: its preopens, its HTTP socket.
    fn descriptors(&self) -> Vec<RawFd> {
        let (invocation, listener) = match self {
            Workload::Wasm(_, invocation) => (invocation, None),
            Workload::Http(_, invocation, listener) => (invocation, Some(listener.as_raw_fd())),
            Workload::Native => return Vec::new(),
        };
        (invocation.preopens.iter())
            .filter_map(|p| p.dir.as_ref().map(|d| d.as_raw_fd()))
            .chain(listener)
            .collect()
    }
}

/// A guest compiled and linked, before its process drops its privileges.
struct Guest {
    program: Program,
    process: WasmProcess,
}

/// The entrypoint, read and classified; nothing compiled yet.
enum Prepared {
    Wasm {
        shown: String,
        bytes: Vec<u8>,
        process: WasmProcess,
    },
    Native,
}

#[derive(Clone, Default)]
pub struct WasmExecutor {
    /// The node's code cache, served from outside the container
    /// ([`crate::code`]); hung up once the guest is prepared.
    pub code: Option<Arc<RemoteCache>>,
    /// The engine the zygote created for every container of the pod.
    pub engine: Option<Engine>,
    /// The image's wasm layer (a sealed copy), when the guest is not a file
    /// of the root; closed once read.
    pub layer: Option<Arc<(Mutex<Option<std::fs::File>>, LayerFile)>>,
    /// The seccomp filter and capabilities, applied in `validate`.
    pub confinement: Confinement,
    /// The container's memory budget, shared with the shim (which resizes
    /// it) and the container's other processes; without one, a budget of
    /// the spec's limit, for this process alone.
    pub memory: Option<MemoryBudget>,
    /// The bind mounts of a container with its own user namespace, opened
    /// by the helper, attached first thing in `validate`.
    pub binds: Option<Arc<crate::userns::DetachedBinds>>,
    /// An exec's: its container's user namespace, joined first thing in
    /// `validate` (libcontainer's exec joins every other namespace).
    pub user_namespace: Option<Arc<OwnedFd>>,
    /// Set for an exec's process (libcontainer's tenant).
    pub exec: Option<ExecKind>,
}

/// What an exec may run.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecKind {
    /// A native program (the container itself is native).
    pub native_allowed: bool,
}

impl WasmExecutor {
    /// Reads the entrypoint and tells a native program from WebAssembly;
    /// `inherited` learns which inherited descriptors were closed on the way.
    fn prepare(&self, spec: &Spec, inherited: &mut InheritedFds) -> Result<Prepared, String> {
        let layer = self.layer.as_deref().map(|(file, layer)| {
            let file = file.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(file) = &file {
                inherited.forget(file.as_raw_fd());
            }
            (file, layer)
        });
        // A layer run without a command has its name as argv[0] already
        // (the helper's `adapt_spec`).
        let process = WasmProcess::from_spec(spec).map_err(|e| e.to_string())?;
        let entry = &process.entrypoint;
        let path = entry.resolve(&process.cwd, process.path_env(), Path::is_file);
        let (shown, bytes) = match &layer {
            Some((file, layer)) => (
                layer.shown.clone(),
                read_layer(file.as_ref(), &layer.shown)?,
            ),
            None => {
                let shown = path.display().to_string();
                let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
                    // Links resolve inside the container's root (this runs
                    // after pivot_root), never on the host.
                    std::io::ErrorKind::NotFound => match std::fs::read_link(&path) {
                        Ok(target) => format!(
                            "entrypoint {:?} not found in the container: {shown} is a symlink \
                             to {}, which does not exist in the container's root",
                            entry.path,
                            target.display()
                        ),
                        Err(_) => format!(
                            "entrypoint {:?} not found in the container (looked for {shown})",
                            entry.path
                        ),
                    },
                    _ => format!("cannot read entrypoint {shown}: {e}"),
                })?;
                (shown, bytes)
            }
        };
        // A .cwasm is an ELF file, but no program: refuse it by name before
        // the native path sees an ELF file.
        if shim_engine::is_precompiled(&bytes) {
            return Err(format!(
                "{shown} is a precompiled wasmtime artifact (.cwasm), not WebAssembly: native \
                 code from an image is never loaded; ship the .wasm (the node compiles and \
                 caches it)"
            ));
        }
        if layer.is_none() && native::is_native_executable(&bytes) {
            if self.exec.is_some_and(|kind| !kind.native_allowed) {
                return Err(format!(
                    "{shown} is a native program; an exec into a wasm container runs \
                     WebAssembly only"
                ));
            }
            log::info!("{shown}: a native executable; running it as a Linux container");
            // Not DefaultExecutor::validate: it insists on PATH even for an
            // absolute path (pause images set none); the path is resolved already.
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            if mode & 0o111 == 0 {
                return Err(format!(
                    "{shown} is a native program but not executable (mode {mode:o})"
                ));
            }
            if let Some(reason) = native::elf_unrunnable(&bytes) {
                return Err(format!(
                    "{shown} is an ELF file this node cannot run: {reason}"
                ));
            }
            return Ok(Prepared::Native);
        }
        if bytes.is_empty() {
            return Err(format!(
                "{shown} is an empty file (0 bytes), not WebAssembly"
            ));
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(format!(
                "{shown} is neither WebAssembly nor a native executable (it starts with {:02x?})",
                &bytes[..bytes.len().min(8)]
            ));
        }
        Ok(Prepared::Wasm {
            shown,
            bytes,
            process,
        })
    }

    /// Compiles the guest, or maps its code from the node's cache. Called
    /// once the process is confined: the compiler's worker threads inherit
    /// the filter and capabilities they are created with.
    fn compile(&self, shown: &str, bytes: Vec<u8>, process: WasmProcess) -> Result<Guest, String> {
        let entry = &process.entrypoint;
        // One malloc arena: the compiler's worker threads would otherwise each
        // keep an arena of their own (megabytes, for the container's lifetime)
        // that malloc_trim below cannot give back.
        // SAFETY: mallopt only tunes the allocator; no thread has allocated yet.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        let mut engine = match &self.engine {
            Some(engine) => engine.clone(),
            None => shim_engine::EngineOptions::from_env()
                .and_then(|options| Engine::new(&options))
                .map_err(|e| e.to_string())?,
        };
        if let Some(code) = &self.code {
            engine = engine.with_cache(code.clone());
        }
        let program = engine
            .prepare(shown, &bytes, entry.export.as_deref())
            .map_err(|e| e.to_string())?;
        if let Some(budget) = &self.memory {
            budget.count_code(program.cache_outcome() == Some(Outcome::Hit));
        }
        match program.cache_outcome() {
            Some(Outcome::Hit) => log::info!("{shown}: code mapped from the node's cache"),
            Some(Outcome::Compiled) => log::info!("{shown}: compiled into the node's cache"),
            Some(Outcome::CompiledUnstored) => log::info!(
                "{shown}: compiled by the node's cache, not stored (another start held its lock)"
            ),
            None => {}
        }
        drop(bytes);
        // The compiler's scratch memory is free now but still held by the
        // allocator's arenas; hand it back before the guest runs for hours.
        // SAFETY: malloc_trim only releases free heap pages.
        unsafe { libc::malloc_trim(0) };
        log::info!("{shown}: {}", program.describe());
        Ok(Guest { program, process })
    }

    /// What the guest is given, opened once its process has dropped its
    /// privileges (the guest's own credentials decide what it may open,
    /// and bind a port).
    fn finish(&self, guest: Guest, spec: &Spec, root: &OwnedFd) -> Result<Workload, String> {
        let Guest { program, process } = guest;
        let preopens = preopens(spec, &process.cwd, root)?;
        let port = if program.serves_http() {
            let port = process.http_port(spec, shim_engine::http::DEFAULT_PORT);
            Some(port.map_err(|e| e.to_string())?)
        } else {
            None
        };
        let invocation = Invocation {
            args: process.args,
            env: process.env,
            preopens,
            memory: self
                .memory
                .clone()
                .unwrap_or_else(|| MemoryBudget::new(memory_limit(spec))),
            deadline: deadline(spec).map_err(|e| e.to_string())?,
            network: network_policy(spec).map_err(|e| e.to_string())?,
        };
        match port {
            Some(port) => Ok(Workload::Http(program, invocation, listen(port)?)),
            None => Ok(Workload::Wasm(program, invocation)),
        }
    }
}

/// The directories the guest sees: what the spec grants, narrowed by the
/// preopens annotation, plus its working directory as `.` when a grant
/// covers it. A directory the annotation lists must exist in the container.
/// Each is opened here, once; pseudo-filesystems and /proc, /sys and /dev
/// are never among them (see [`guest_view`]).
fn preopens(spec: &Spec, cwd: &Path, root: &OwnedFd) -> Result<Vec<Preopen>, String> {
    let grants = narrowed_grants(spec).map_err(|e| e.to_string())?;
    let spec_grants = filesystem_grants(spec);
    let narrowed = annotation(spec, PREOPENS_ANNOTATION).is_some();
    let pseudo_mounts: Vec<&Path> = (spec.mounts().iter().flatten())
        .filter(|m| guest_view::is_pseudo_filesystem(m.typ().as_deref().unwrap_or_default()))
        .map(|m| m.destination().as_path())
        .collect();
    let mut preopens = Vec::new();
    for grant in &grants {
        if guest_view::is_hidden(&grant.path) || pseudo_mounts.contains(&grant.path.as_path()) {
            log::debug!(
                "{}: not preopened: a guest never sees pseudo-filesystems or /proc, /sys, /dev",
                grant.path.display()
            );
            continue;
        }
        if grant.path != Path::new("/") && !grant.path.is_dir() {
            // File bind mounts cannot be preopened; the directory they sit
            // in governs them. A listed path must be a directory.
            if spec_grants.iter().any(|g| g.path == grant.path) {
                continue;
            }
            return Err(format!(
                "annotation {PREOPENS_ANNOTATION}: {} is not a directory in the container",
                grant.path.display()
            ));
        }
        // A listed path must be the directory itself, or `/data` -> `/`
        // would grant the whole root.
        let dir = guest_view::open_preopen(root, &grant.path, narrowed).map_err(|e| {
            match (narrowed, std::fs::canonicalize(&grant.path)) {
                (true, Ok(real)) if real != grant.path => format!(
                    "annotation {PREOPENS_ANNOTATION}: {} is a symlink to {} in the container; \
                     list the directory itself",
                    grant.path.display(),
                    real.display()
                ),
                _ => format!("cannot preopen {}: {e}", grant.path.display()),
            }
        })?;
        preopens.push(Preopen {
            host: grant.path.clone(),
            guest: grant.path.display().to_string(),
            read_only: grant.read_only,
            dir: Some(Arc::new(dir)),
        });
    }
    // The working directory is judged by where it really is.
    let cwd = &std::fs::canonicalize(cwd).unwrap_or_else(|_| cwd.to_path_buf());
    if cwd != Path::new("/") && !guest_view::is_hidden(cwd) {
        if let Some(grant) = grant_for(&grants, cwd) {
            match guest_view::open_preopen(root, cwd, false) {
                Ok(dir) => preopens.push(Preopen {
                    host: cwd.to_path_buf(),
                    guest: ".".into(),
                    read_only: grant.read_only,
                    dir: Some(Arc::new(dir)),
                }),
                Err(e) => log::debug!("{}: not preopened as `.`: {e}", cwd.display()),
            }
        }
    }
    Ok(preopens)
}

/// Reads the image's wasm layer from the sealed copy the helper made.
fn read_layer(file: Option<&std::fs::File>, shown: &str) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::FileExt;
    let file = file.ok_or_else(|| format!("{shown}: its wasm layer was read already"))?;
    let size = file
        .metadata()
        .map_err(|e| format!("{shown}: cannot read its wasm layer: {e}"))?
        .len();
    let mut bytes = vec![0; usize::try_from(size).map_err(|e| e.to_string())?];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| format!("{shown}: cannot read its wasm layer: {e}"))?;
    Ok(bytes)
}

/// Listens on `port` on every address of the container's network namespace:
/// IPv6 and IPv4 where the namespace has IPv6, IPv4 alone where it has not.
fn listen(port: u16) -> Result<TcpListener, String> {
    TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        .map_err(|e| format!("cannot listen for HTTP on port {port}: {e}"))
}

impl Executor for WasmExecutor {
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        if let Some(namespace) = &self.user_namespace {
            crate::userns::join_user_namespace(namespace, spec)
                .map_err(ExecutorValidationError::ArgValidationError)?;
        }
        if let Some(binds) = &self.binds {
            binds
                .attach()
                .map_err(ExecutorValidationError::ArgValidationError)?;
        }
        close_inherited();
        set_name(crate::WASM_PROCESS_NAME);
        let began = std::time::Instant::now();
        let mut inherited = InheritedFds::snapshot();
        let workload = self
            .prepare(spec, &mut inherited)
            .and_then(|prepared| self.confine(prepared, spec));
        // Done with the code server, whatever happened: it exits.
        if let Some(code) = &self.code {
            if let Some(fd) = code.raw_fd() {
                inherited.forget(fd);
            }
            code.close();
        }
        let workload = workload.map_err(ExecutorValidationError::ArgValidationError)?;
        log::debug!(
            "the guest was prepared in {:.1} ms",
            began.elapsed().as_secs_f64() * 1e3
        );
        // Before start: a SIGTERM sent right after start must not find the
        // process without a handler (it would be dropped, see below). An HTTP
        // server handles it itself (it drains); until its handlers are in
        // place the signal waits, blocked.
        match workload {
            Workload::Http(..) => shim_engine::http::hold_termination_signals(),
            Workload::Wasm(..) => install_termination_handlers(),
            Workload::Native => {}
        }
        *INHERITED.lock().unwrap_or_else(|e| e.into_inner()) = Some(inherited);
        let _ = PREPARED.set(workload);
        Ok(())
    }

    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let workload = PREPARED.get();
        if let Some(workload @ (Workload::Wasm(..) | Workload::Http(..))) = workload {
            // Nothing of the helper's, libcontainer's or the shim's stays
            // with the guest. For an exec this also releases libcontainer's
            // wait for an `execve` a wasm exec never makes (it waits for an
            // inherited close-on-exec pipe to close).
            if let Some(inherited) = INHERITED.lock().unwrap_or_else(|e| e.into_inner()).take() {
                inherited.close_all(&workload.descriptors());
            }
        }
        let exit = match workload {
            Some(Workload::Wasm(program, invocation)) => program.run(invocation),
            Some(Workload::Http(program, invocation, listener)) => listener
                .try_clone()
                .map_err(|e| shim_engine::Error::Wasi(format!("the HTTP socket: {e}")))
                .and_then(|listener| program.serve(invocation, listener)),
            Some(Workload::Native) => {
                // A failed execve (say, the program's dynamic loader is
                // missing from the image) ends the process with 255: say
                // why, on the container's stderr, as runc does.
                let result = DefaultExecutor {}.exec(spec);
                if let Err(ExecutorError::Execution(e)) = &result {
                    let _ = writeln!(std::io::stderr(), "{e}");
                }
                return result;
            }
            None => return Err(ExecutorError::Other("exec called before validate".into())),
        }
        .map_err(|e| ExecutorError::Other(e.to_string()))?;
        let _ = std::io::stdout().flush();
        if let Some(message) = exit.message() {
            let _ = writeln!(std::io::stderr(), "{message}");
        }
        std::process::exit(exit.code());
    }
}

impl WasmExecutor {
    /// Brings the process to what the guest may have: for a wasm guest, its
    /// view of the container without pseudo-filesystems (see
    /// [`guest_view`]); then for every process the container's seccomp
    /// filter and capabilities; a wasm guest's process becomes non-dumpable
    /// and only then compiles (or maps) the guest, whose compiler threads
    /// inherit all of that, and opens the guest's directories and port.
    fn confine(&self, prepared: Prepared, spec: &Spec) -> Result<Workload, String> {
        let (shown, bytes, process) = match prepared {
            Prepared::Native => {
                // Told apart from a wasm container's process by its name
                // from now on, before its program is even started.
                set_name(crate::NATIVE_PROCESS_NAME);
                self.confinement.apply()?;
                return Ok(Workload::Native);
            }
            Prepared::Wasm {
                shown,
                bytes,
                process,
            } => (shown, bytes, process),
        };
        let root = guest_view::guest_root()
            .map_err(|e| format!("cannot make the guest's view of the container: {e}"))?;
        self.confinement.apply()?;
        guest_view::make_undumpable()?;
        // Only now, confined: compiling may start threads.
        let guest = self.compile(&shown, bytes, process)?;
        self.finish(guest, spec, &root)
    }
}

/// The guest runs as PID 1 of its PID namespace, where signals without a
/// handler are dropped. A wasm guest cannot install one, so SIGTERM and SIGINT
/// end the process here with the shell's 128+N status, as they would end a
/// native program.
fn install_termination_handlers() {
    extern "C" fn terminate(signal: libc::c_int) {
        // SAFETY: _exit is async-signal-safe and touches no process state.
        unsafe { libc::_exit(128 + signal) }
    }
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installs a handler that only calls _exit (async-signal-safe).
        unsafe { libc::signal(signal, terminate as *const () as libc::sighandler_t) };
    }
}
