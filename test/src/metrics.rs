//! A task's metrics as containerd reads them: the shim's `Stats` over its
//! ttrpc socket (the address containerd keeps in the task's bundle), the
//! cgroups message decoded, and the wasm numbers the shim adds as field
//! 1000 of it (docs/architecture.md, "Task metrics").

use std::path::Path;

use containerd_shim_protos::api::StatsRequest;
use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::{CodedInputStream, Message, UnknownFields, UnknownValueRef};
use containerd_shim_protos::ttrpc::context;
use containerd_shim_protos::{Client, TaskClient};

/// The wasm numbers, in the order of the shim's `WasmMetrics` message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WasmMetrics {
    pub instances: u64,
    pub linear_memory_bytes: u64,
    pub linear_memory_limit: u64,
    pub grows_refused: u64,
    pub code_cache_hits: u64,
    pub code_compiles: u64,
}

/// What a task's metrics hold.
#[derive(Debug)]
pub struct TaskMetrics {
    /// The cgroup's memory usage, as the cgroups message has it.
    pub memory_usage: u64,
    /// `None` when the shim added none (a native container).
    pub wasm: Option<WasmMetrics>,
}

/// Asks the shim of task `id` (bundle `bundle`) for its stats, as containerd does.
pub fn task_metrics(bundle: &Path, id: &str) -> TaskMetrics {
    // The shim writes `address` in its first task's bundle; containerd 2
    // writes every task's `bootstrap.json` (a pod's later containers).
    let address = std::fs::read_to_string(bundle.join("address"))
        .ok()
        .or_else(|| {
            let json = std::fs::read(bundle.join("bootstrap.json")).ok()?;
            let value: serde_json::Value = serde_json::from_slice(&json).ok()?;
            Some(value["address"].as_str()?.to_string())
        })
        .unwrap_or_else(|| panic!("no shim address in {}", bundle.display()));
    let client = TaskClient::new(Client::connect(address.trim()).expect("connect to the shim"));
    let stats = client
        .stats(
            context::with_timeout(5_000_000_000),
            &StatsRequest {
                id: id.to_string(),
                ..Default::default()
            },
        )
        .expect("the shim's stats");
    let any = stats.stats.into_option().expect("stats");
    let (memory_usage, unknown): (u64, UnknownFields) = match any.type_url.as_str() {
        "io.containerd.cgroups.v1.Metrics" => {
            let m = v1::Metrics::parse_from_bytes(&any.value).expect("v1 metrics");
            (
                m.memory.usage.usage,
                m.special_fields.unknown_fields().clone(),
            )
        }
        "io.containerd.cgroups.v2.Metrics" => {
            let m = v2::Metrics::parse_from_bytes(&any.value).expect("v2 metrics");
            (m.memory.usage, m.special_fields.unknown_fields().clone())
        }
        other => panic!("metrics of type {other}"),
    };
    let wasm = unknown.get(1000).map(|field| {
        let UnknownValueRef::LengthDelimited(bytes) = field else {
            panic!("field 1000 is {field:?}")
        };
        let mut input = CodedInputStream::from_bytes(bytes);
        let mut values = [0u64; 6];
        while let Some(tag) = input.read_raw_tag_or_eof().expect("wasm metrics") {
            let value = input.read_uint64().expect("a uint64");
            if let Some(slot) = values.get_mut((tag >> 3) as usize - 1) {
                *slot = value;
            }
        }
        let [instances, linear_memory_bytes, linear_memory_limit, grows_refused, code_cache_hits, code_compiles] =
            values;
        WasmMetrics {
            instances,
            linear_memory_bytes,
            linear_memory_limit,
            grows_refused,
            code_cache_hits,
            code_compiles,
        }
    });
    TaskMetrics { memory_usage, wasm }
}
