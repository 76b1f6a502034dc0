//! The wasmtime engine: everything that touches WebAssembly lives here.
//!
//! The shim hands this crate the bytes of an entrypoint and a WASI invocation
//! (argv, env, preopened directories). It decides whether the bytes are a core
//! module (WASI preview 1) or a component (WASI 0.2) by parsing the binary
//! header, compiles them, checks every import against the WASI host *before*
//! the container starts (so a bad binary fails `create`, not `start`), and
//! later runs the program to an exit code. A component is a command when it
//! exports `wasi:cli/run` and an HTTP server when it exports
//! `wasi:http/incoming-handler` (see [`http`]).
//!
//! Exit codes follow the conventions of `wasmtime run` on Unix:
//! `proc_exit(n)` gives `n`, a normal return gives 0, a trap gives
//! [`TRAP_EXIT_CODE`] (128 + SIGABRT) and any other runtime failure gives 1.

pub mod budget;
pub mod cache;
pub mod http;
pub mod memfd;
pub mod network;
pub mod node;
pub mod options;
mod program;
pub mod store;
mod wasi;

use std::os::fd::AsRawFd;
use std::sync::Arc;

use log::{debug, warn};
use wasmtime::component::Component;
use wasmtime::{Linker, Module};
use wasmtime_wasi::p2::bindings::sync::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

pub use budget::MemoryBudget;
pub use cache::{Artifact, Cache, CodeSource, Outcome};
pub use network::NetworkPolicy;
pub use node::NodeConfig;
pub use options::{EngineOptions, OptLevel};
pub(crate) use program::{is_interrupt, Compiled, ComponentState, ModuleState, DEADLINE_GRACE};
pub use program::{Exit, Program};
pub use wasi::{Invocation, Preopen};

/// Exit status of a guest that trapped (128 + SIGABRT, as `wasmtime run` does).
pub const TRAP_EXIT_CODE: i32 = 134;
/// Exit status of a guest that failed at runtime without trapping.
pub const FAILURE_EXIT_CODE: i32 = 1;
/// Exit status of a guest stopped at its deadline (as `timeout(1)` reports it).
pub const DEADLINE_EXIT_CODE: i32 = 124;

/// The export a core module runs when the entrypoint names none.
const DEFAULT_MODULE_EXPORT: &str = "_start";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} is not a WebAssembly binary (it starts with {head:02x?}, not \\0asm)")]
    NotWasm { path: String, head: Vec<u8> },
    #[error("{path} is not valid WebAssembly: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path} cannot be linked against WASI: {reason}")]
    Link { path: String, reason: String },
    #[error("{path} has no exported function `{export}` to run")]
    MissingExport { path: String, export: String },
    #[error("{path}: {reason}")]
    Unsupported { path: String, reason: String },
    #[error("failed to configure wasmtime: {0}")]
    Engine(String),
    #[error("failed to prepare WASI for the guest: {0}")]
    Wasi(String),
}

/// What kind of WebAssembly binary the entrypoint is, decided from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A core module, run with WASI preview 1.
    Module,
    /// A component: a WASI 0.2 `wasi:cli/run` command or a
    /// `wasi:http/incoming-handler` server.
    Component,
}

impl Kind {
    /// Classifies `bytes` by the WebAssembly header; `path` only names the file in errors.
    pub fn detect(path: &str, bytes: &[u8]) -> Result<Kind, Error> {
        if wasmparser::Parser::is_component(bytes) {
            Ok(Kind::Component)
        } else if wasmparser::Parser::is_core_wasm(bytes) {
            Ok(Kind::Module)
        } else if bytes.starts_with(b"\0asm") {
            Err(Error::Invalid {
                path: path.to_string(),
                reason: "unsupported WebAssembly binary version or layer".to_string(),
            })
        } else {
            Err(Error::NotWasm {
                path: path.to_string(),
                head: bytes.iter().copied().take(8).collect(),
            })
        }
    }
}

/// Whether `bytes` are wasmtime's precompiled native code (a `.cwasm`: an
/// ELF object marked by wasmtime), of any wasmtime version or configuration.
/// The shim never loads one from an image: deserializing it would run the
/// native code it holds, unchecked. Only the node's cache loads artifacts.
pub fn is_precompiled(bytes: &[u8]) -> bool {
    wasmtime::Engine::detect_precompiled(bytes).is_some()
}

/// A wasmtime engine configured for this shim. One is created per process and
/// reused for every program that process compiles; with a [`CodeSource`]
/// (the node's [`Cache`], reached from outside the container), code compiled
/// once on the node is mapped instead of compiled again.
#[derive(Clone)]
pub struct Engine {
    inner: wasmtime::Engine,
    source: Option<Arc<dyn CodeSource>>,
}

impl Engine {
    pub fn new(options: &EngineOptions) -> Result<Self, Error> {
        let mut config = options.config();
        if !options.pooling_allocator {
            let inner =
                wasmtime::Engine::new(&config).map_err(|e| Error::Engine(format!("{e:#}")))?;
            return Ok(Self {
                inner,
                source: None,
            });
        }
        // Instances come from a pre-reserved pool: an HTTP server instantiates
        // its component once per request, and that must cost microseconds.
        // The pool is only address space until an instance touches it.
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(
            options.pool(),
        ));
        let inner = match wasmtime::Engine::new(&config) {
            Ok(engine) => engine,
            Err(e) => {
                // A host that refuses the reservation (e.g. `ulimit -v`) still runs guests.
                warn!("the pooling allocator is unavailable ({e:#}); allocating on demand");
                config.allocation_strategy(wasmtime::InstanceAllocationStrategy::OnDemand);
                wasmtime::Engine::new(&config).map_err(|e| Error::Engine(format!("{e:#}")))?
            }
        };
        Ok(Self {
            inner,
            source: None,
        })
    }

    /// The wasmtime engine itself (the cache compiles with it).
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner
    }

    /// Takes precompiled code from `source` instead of compiling.
    pub fn with_cache(mut self, source: Arc<dyn CodeSource>) -> Self {
        self.source = Some(source);
        self
    }

    /// Maps the code for `bytes` of `kind` from the code source, or compiles
    /// it here. `load` deserializes an artifact the source verified; an
    /// artifact that does not load is only logged (the source removes only
    /// what fails verification) and the guest compiled here instead.
    fn code<T>(
        &self,
        kind: Kind,
        bytes: &[u8],
        compile: impl FnOnce() -> wasmtime::Result<T>,
        load: impl Fn(std::fs::File) -> wasmtime::Result<T>,
    ) -> wasmtime::Result<(T, Option<Outcome>)> {
        if let Some(source) = &self.source {
            match source.artifact(&self.inner, kind, bytes) {
                Ok(Artifact::Code(file, outcome)) => match load(file) {
                    Ok(code) => return Ok((code, Some(outcome))),
                    Err(e) => warn!("the cached code does not load ({e:#}); compiling it here"),
                },
                Ok(Artifact::Invalid(reason)) => return Err(wasmtime::Error::msg(reason)),
                Err(e) => warn!("the code cache failed ({e}); compiling without it"),
            }
        }
        compile().map(|code| (code, None))
    }

    /// Compiles `bytes` and checks that the program can be linked against the
    /// WASI host and has the export to run. `path` names the file in errors;
    /// `export` is the `#export` part of the entrypoint, if any.
    pub fn prepare(
        &self,
        path: &str,
        bytes: &[u8],
        export: Option<&str>,
    ) -> Result<Program, Error> {
        let kind = Kind::detect(path, bytes)?;
        debug!("{path}: detected a {kind:?} from its header");
        let invalid = |e: wasmtime::Error| Error::Invalid {
            path: path.to_string(),
            reason: format!("{e:#}"),
        };
        let link = |e: wasmtime::Error| Error::Link {
            path: path.to_string(),
            reason: format!("{e:#}"),
        };
        let cached;
        let compiled = match kind {
            Kind::Module => {
                let (module, outcome) = self
                    .code(
                        kind,
                        bytes,
                        || Module::new(&self.inner, bytes),
                        // SAFETY: the code source hands over only artifacts
                        // this shim wrote, verified by their tag, in a sealed
                        // memfd nobody can write.
                        |file| unsafe { Module::deserialize_open_file(&self.inner, file) },
                    )
                    .map_err(invalid)?;
                cached = outcome;
                let export = export.unwrap_or(DEFAULT_MODULE_EXPORT).to_string();
                let is_func = module
                    .get_export(&export)
                    .is_some_and(|e| e.func().is_some());
                if !is_func {
                    return Err(Error::MissingExport {
                        path: path.to_string(),
                        export,
                    });
                }
                let mut linker: Linker<ModuleState> = Linker::new(&self.inner);
                wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |state| &mut state.wasi)
                    .map_err(link)?;
                let pre = linker.instantiate_pre(&module).map_err(link)?;
                Compiled::Module { pre, export }
            }
            Kind::Component => {
                if let Some(export) = export {
                    return Err(Error::Unsupported {
                        path: path.to_string(),
                        reason: format!(
                            "`#{export}` selects a core module export; a component runs its \
                             `wasi:cli/run` or `wasi:http/incoming-handler` export"
                        ),
                    });
                }
                let (component, outcome) = self
                    .code(
                        kind,
                        bytes,
                        || Component::new(&self.inner, bytes),
                        // SAFETY: as for modules. The descriptor's /proc path
                        // reaches the sealed memfd (components have no
                        // deserialize_open_file), else its bytes are copied.
                        |file| unsafe {
                            let path = format!("/proc/self/fd/{}", file.as_raw_fd());
                            if std::path::Path::new(&path).exists() {
                                Component::deserialize_file(&self.inner, path)
                            } else {
                                // No /proc mounted (a spec without it):
                                // a private copy.
                                let mut code = Vec::new();
                                std::io::Read::read_to_end(&mut &file, &mut code)?;
                                Component::deserialize(&self.inner, code)
                            }
                        },
                    )
                    .map_err(invalid)?;
                cached = outcome;
                let exports: Vec<String> = component
                    .component_type()
                    .exports(&self.inner)
                    .map(|(name, _)| name.to_string())
                    .collect();
                let exports_interface = |interface: &str| {
                    exports
                        .iter()
                        .any(|name| name.split('@').next() == Some(interface))
                };
                let mut linker = wasmtime::component::Linker::<ComponentState>::new(&self.inner);
                if exports_interface("wasi:cli/run") {
                    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(link)?;
                    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)
                        .map_err(link)?;
                    let pre = linker.instantiate_pre(&component).map_err(link)?;
                    let pre = CommandPre::new(pre).map_err(link)?;
                    Compiled::Command { pre }
                } else if exports_interface("wasi:http/incoming-handler") {
                    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
                    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
                        .map_err(link)?;
                    let pre = linker.instantiate_pre(&component).map_err(link)?;
                    let pre = ProxyPre::new(pre).map_err(link)?;
                    Compiled::Http { pre }
                } else {
                    return Err(Error::Unsupported {
                        path: path.to_string(),
                        reason: format!(
                            "the component exports neither `wasi:cli/run` (a command) nor \
                             `wasi:http/incoming-handler` (an HTTP server); it exports [{}]",
                            exports.join(", ")
                        ),
                    });
                }
            }
        };
        Ok(Program {
            engine: self.inner.clone(),
            compiled,
            cached,
        })
    }
}

#[cfg(test)]
mod tests;
