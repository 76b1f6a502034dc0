//! A compiled, linked guest and how it runs: to an exit code (a command)
//! or serving HTTP ([`crate::http`]), within the container's memory limit
//! and the deadline annotation (docs/configuration.md).

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::Store;

use crate::budget::Limiter;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::sync::CommandPre;
use wasmtime_wasi::{I32Exit, WasiCtx};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView};

use crate::{
    network, Error, Invocation, Kind, NetworkPolicy, Outcome, DEADLINE_EXIT_CODE,
    FAILURE_EXIT_CODE, TRAP_EXIT_CODE,
};

/// How often the engine's epoch advances in a process whose guest has a
/// deadline: the deadline's resolution.
const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(10);
/// How long past its deadline a guest blocked in a host call (where epochs
/// are not checked) may stay before it is stopped from outside.
pub(crate) const DEADLINE_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

pub(crate) enum Compiled {
    Module {
        pre: wasmtime::InstancePre<ModuleState>,
        export: String,
    },
    Command {
        pre: CommandPre<ComponentState>,
    },
    Http {
        pre: ProxyPre<ComponentState>,
    },
}

/// A compiled, linked program, ready to run.
pub struct Program {
    pub(crate) engine: wasmtime::Engine,
    pub(crate) compiled: Compiled,
    pub(crate) cached: Option<Outcome>,
}

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Returned normally or called `proc_exit`/`wasi:cli/exit`.
    Code(i32),
    /// Trapped; the message includes the wasm backtrace.
    Trap(String),
    /// Failed at runtime for another reason (instantiation, a host error).
    Failed(String),
    /// Ran past its deadline and was stopped.
    Deadline(std::time::Duration),
}

impl Exit {
    /// The process exit status this outcome maps to.
    pub fn code(&self) -> i32 {
        match self {
            Exit::Code(code) => *code,
            Exit::Trap(_) => TRAP_EXIT_CODE,
            Exit::Failed(_) => FAILURE_EXIT_CODE,
            Exit::Deadline(_) => DEADLINE_EXIT_CODE,
        }
    }

    /// What to tell the user of a guest that did not end by itself.
    pub fn message(&self) -> Option<String> {
        match self {
            Exit::Code(_) => None,
            Exit::Trap(message) | Exit::Failed(message) => Some(message.clone()),
            Exit::Deadline(deadline) => Some(format!(
                "the guest ran past its deadline of {deadline:?} (annotation \
                 wasmtime.containerd.io/deadline) and was stopped"
            )),
        }
    }

    fn from_error(error: wasmtime::Error) -> Exit {
        if let Some(exit) = error.downcast_ref::<I32Exit>() {
            Exit::Code(exit.0)
        } else if error.downcast_ref::<wasmtime::Trap>().is_some() {
            Exit::Trap(format!("{error:?}"))
        } else {
            Exit::Failed(format!("{error:?}"))
        }
    }
}

impl Program {
    pub fn kind(&self) -> Kind {
        match self.compiled {
            Compiled::Module { .. } => Kind::Module,
            Compiled::Command { .. } | Compiled::Http { .. } => Kind::Component,
        }
    }

    /// Whether this is a `wasi:http/incoming-handler` component, to be run
    /// with [`Program::serve`] rather than [`Program::run`].
    pub fn serves_http(&self) -> bool {
        matches!(self.compiled, Compiled::Http { .. })
    }

    /// Whether the code came from the node's cache or was compiled into it;
    /// `None` without a cache.
    pub fn cache_outcome(&self) -> Option<Outcome> {
        self.cached
    }

    /// What the program is and how it runs, for the log.
    pub fn describe(&self) -> &'static str {
        match self.compiled {
            Compiled::Module { .. } => "core module; running it with WASI preview 1",
            Compiled::Command { .. } => "component; running its wasi:cli/run export with WASI 0.2",
            Compiled::Http { .. } => {
                "component exporting wasi:http/incoming-handler; serving HTTP, \
                 one instance per request"
            }
        }
    }

    /// Instantiates the program with `invocation`'s WASI context and runs it to completion.
    pub fn run(&self, invocation: &Invocation) -> Result<Exit, Error> {
        let _watchdog = invocation.deadline.map(Watchdog::start);
        let mut builder = invocation.builder()?;
        let outcome = match &self.compiled {
            Compiled::Module { pre, export } => {
                let state = ModuleState {
                    wasi: builder.build_p1(),
                    limits: invocation.memory.limiter(),
                };
                let mut store = Store::new(&self.engine, state);
                store.limiter(|state| &mut state.limits);
                invocation.arm(&mut store);
                pre.instantiate(&mut store)
                    .and_then(|instance| instance.get_typed_func::<(), ()>(&mut store, export))
                    .and_then(|func| func.call(&mut store, ()))
            }
            Compiled::Command { pre } => {
                let state = ComponentState::new(builder.build(), invocation);
                let mut store = Store::new(&self.engine, state);
                store.limiter(|state| &mut state.limits);
                invocation.arm(&mut store);
                pre.instantiate(&mut store).and_then(|command| {
                    command
                        .wasi_cli_run()
                        .call_run(&mut store)?
                        .map_err(|()| wasmtime::Error::new(I32Exit(FAILURE_EXIT_CODE)))
                })
            }
            Compiled::Http { .. } => {
                return Err(Error::Wasi(
                    "an HTTP component is served, not run to completion".into(),
                ))
            }
        };
        Ok(match (outcome, invocation.deadline) {
            (Ok(()), _) => Exit::Code(0),
            (Err(error), Some(deadline)) if is_interrupt(&error) => Exit::Deadline(deadline),
            (Err(error), _) => Exit::from_error(error),
        })
    }
}

/// Host state of a core module's store.
pub(crate) struct ModuleState {
    pub(crate) wasi: WasiP1Ctx,
    limits: Limiter,
}

/// Host state of a component's store (one per command, one per HTTP request).
pub(crate) struct ComponentState {
    ctx: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    pub(crate) limits: Limiter,
    /// Outgoing wasi:http under a narrowed network; `None`: wasmtime's own.
    outgoing: Option<network::OutgoingHttp>,
}

impl ComponentState {
    pub(crate) fn new(ctx: WasiCtx, invocation: &Invocation) -> Self {
        let outgoing = match &invocation.network {
            NetworkPolicy::All => None,
            limited => Some(network::OutgoingHttp(Arc::new(limited.clone()))),
        };
        Self {
            ctx,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limits: invocation.memory.limiter(),
            outgoing,
        }
    }
}

impl Invocation {
    /// Sets the store's epoch deadline: the invocation's deadline from now,
    /// with the process's epoch ticker running; without one, never.
    pub(crate) fn arm<T>(&self, store: &mut Store<T>) {
        let Some(deadline) = self.deadline else {
            store.set_epoch_deadline(u64::MAX / 2);
            return;
        };
        static TICKER: std::sync::OnceLock<()> = std::sync::OnceLock::new();
        TICKER.get_or_init(|| {
            let engine = store.engine().clone();
            std::thread::Builder::new()
                .name("epoch-ticker".into())
                .spawn(move || loop {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                })
                .expect("spawn the epoch ticker");
        });
        let ticks = deadline.as_nanos().div_ceil(EPOCH_TICK.as_nanos());
        store.epoch_deadline_trap();
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX / 2).max(1));
    }
}

/// Ends the process (exit 124) when a command outlives its deadline by
/// [`DEADLINE_GRACE`]: the guest is blocked in a host call, where epochs are
/// not checked. Dropped when the run returns, which stops it.
struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

impl Watchdog {
    fn start(deadline: std::time::Duration) -> Self {
        let (done, finished) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("deadline".into())
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    finished.recv_timeout(deadline + DEADLINE_GRACE)
                {
                    let exit = Exit::Deadline(deadline);
                    eprintln!("{}", exit.message().unwrap_or_default());
                    // SAFETY: ends the process at once; the guest's state
                    // is abandoned, as a kill would abandon it.
                    unsafe { libc::_exit(exit.code()) };
                }
            })
            .expect("spawn the deadline watchdog");
        Self(Some(done))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            let _ = done.send(());
        }
    }
}

/// Whether `error` is the trap of a passed epoch deadline.
pub(crate) fn is_interrupt(error: &wasmtime::Error) -> bool {
    error.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt)
}

impl wasmtime_wasi::WasiView for ComponentState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: match &mut self.outgoing {
                Some(outgoing) => outgoing,
                None => Default::default(),
            },
        }
    }
}
