//! The engine's configuration, one per runtime handler.
//!
//! containerd gives each handler its own `options` table; the shim reads it
//! at `start` (see `shim_task::options`), validates it by building an engine
//! from it, and hands it to the pod's shim server in [`OPTIONS_ENV`], so the
//! zygote's warm engine, every container's engine and the node's code cache
//! (whose entries are keyed by the engine's compatibility hash) all use it.
//! Handlers with different options coexist on a node: each pod's shim has
//! the options of its own handler.
//!
//! The defaults keep proposals that need a language runtime's cooperation
//! (GC, exceptions, typed function references, shared-memory threads) off,
//! so a handler that wants them says so; what every toolchain emits today
//! (SIMD, relaxed SIMD, tail calls, reference types) is on.

use serde::{Deserialize, Serialize};

use crate::Error;

/// The environment variable that carries the options (JSON) from `start` to
/// the shim server, and from it to every process that builds an engine.
pub const OPTIONS_ENV: &str = "WASMTIME_SHIM_ENGINE_OPTIONS";

/// Cranelift's optimisation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OptLevel {
    None,
    #[default]
    Speed,
    SpeedAndSize,
}

/// What a handler may set, as `PascalCase` keys of its `options` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
pub struct EngineOptions {
    /// Structs, arrays and `i31ref` (Kotlin, Dart, OCaml, Java to wasm).
    pub wasm_gc: bool,
    /// `try_table`/`throw` (C++ and other languages with exceptions).
    pub wasm_exceptions: bool,
    /// Typed function references, `call_ref` (on with `WasmGc`).
    pub wasm_function_references: bool,
    pub wasm_simd: bool,
    pub wasm_relaxed_simd: bool,
    pub wasm_tail_call: bool,
    /// Shared memories and atomics. The WASI host spawns no threads, so a
    /// module that imports `wasi:thread-spawn` still fails to link.
    pub wasm_threads: bool,
    pub opt_level: OptLevel,
    /// Instances from a pre-reserved pool (fast instantiation, needed by
    /// HTTP servers' per-request instances); off allocates on demand.
    pub pooling_allocator: bool,
    /// How many instances, memories and tables the pool holds per process.
    pub pooling_instances: u32,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            wasm_gc: false,
            wasm_exceptions: false,
            wasm_function_references: false,
            wasm_simd: true,
            wasm_relaxed_simd: true,
            wasm_tail_call: true,
            wasm_threads: false,
            opt_level: OptLevel::Speed,
            pooling_allocator: true,
            pooling_instances: 1000,
        }
    }
}

/// The most instances a pool may be asked for: each is address space for
/// a memory, a table and a stack.
const MAX_POOLING_INSTANCES: u32 = 10_000;

impl EngineOptions {
    /// The options the shim server was started with, or the defaults.
    pub fn from_env() -> Result<Self, Error> {
        match std::env::var(OPTIONS_ENV) {
            Ok(json) if !json.is_empty() => serde_json::from_str(&json)
                .map_err(|e| Error::Engine(format!("{OPTIONS_ENV} is not valid: {e}"))),
            _ => Ok(Self::default()),
        }
    }

    pub fn to_env(&self) -> String {
        serde_json::to_string(self).expect("options serialize")
    }

    /// Builds an engine from these options (without the pool, which only
    /// reserves address space), so a wrong combination fails here, with
    /// wasmtime's reason, and not in a container.
    pub fn validate(&self) -> Result<(), Error> {
        if !(1..=MAX_POOLING_INSTANCES).contains(&self.pooling_instances) {
            return Err(Error::Engine(format!(
                "PoolingInstances = {} is out of range (1-{MAX_POOLING_INSTANCES})",
                self.pooling_instances
            )));
        }
        if self.wasm_threads && self.pooling_allocator {
            return Err(Error::Engine(
                "WasmThreads = true needs PoolingAllocator = false (wasmtime's instance pool \
                 has no shared memories)"
                    .into(),
            ));
        }
        wasmtime::Engine::new(&self.config())
            .map(drop)
            .map_err(|e| Error::Engine(format!("{e:#}")))
    }

    /// The wasmtime configuration, without the allocation strategy.
    pub(crate) fn config(&self) -> wasmtime::Config {
        let mut config = wasmtime::Config::new();
        config
            .wasm_gc(self.wasm_gc)
            // GC is built on typed function references.
            .wasm_function_references(self.wasm_function_references || self.wasm_gc)
            .wasm_exceptions(self.wasm_exceptions)
            .wasm_simd(self.wasm_simd)
            .wasm_relaxed_simd(self.wasm_relaxed_simd)
            .wasm_tail_call(self.wasm_tail_call)
            .wasm_threads(self.wasm_threads)
            .cranelift_opt_level(match self.opt_level {
                OptLevel::None => wasmtime::OptLevel::None,
                OptLevel::Speed => wasmtime::OptLevel::Speed,
                OptLevel::SpeedAndSize => wasmtime::OptLevel::SpeedAndSize,
            });
        // Traps print wasm backtraces with function names: that is what a
        // user debugging a crashed container needs to see in its log.
        config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
        // Every loop and call checks the epoch (a load and a compare), so a
        // guest with a deadline is stopped inside the sandbox when it passes;
        // see `Invocation::arm`.
        config.epoch_interruption(true);
        config
    }

    /// The instance pool: `PoolingInstances` of each kind (wasmtime's default
    /// is 1000). Its 4 GiB per memory are address space, not memory; tables
    /// get room for the function tables of large language runtimes.
    pub(crate) fn pool(&self) -> wasmtime::PoolingAllocationConfig {
        let total = self.pooling_instances;
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.max_tables_per_module(8)
            .max_memories_per_module(4)
            .table_elements(200_000)
            .total_core_instances(total)
            .total_component_instances(total)
            .total_memories(total)
            .total_tables(total)
            .total_stacks(total)
            .total_gc_heaps(total);
        pool
    }
}
