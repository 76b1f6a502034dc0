//! Task stats: the container's cgroup usage in the metrics type containerd
//! expects for this host (`io.containerd.cgroups.v1.Metrics` on cgroup v1 and
//! hybrid hosts, `io.containerd.cgroups.v2.Metrics` on a unified hierarchy).

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{self, CodedOutputStream};
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::util::convert_to_any;
use libcgroups::common::{get_cgroup_setup, CgroupSetup};
use shim_container::Stats;
use shim_engine::budget::WasmMetrics;

/// The field of the cgroups metrics message that carries a wasm
/// container's [`WasmMetrics`]: far above the fields either version has.
pub const WASM_METRICS_FIELD: u32 = 1000;

/// The task's metrics: the cgroups message containerd, CRI and `ctr` read,
/// and for a wasm container its [`WasmMetrics`] as one more field of that
/// message ([`WASM_METRICS_FIELD`]), which those readers skip as an
/// unknown field (docs/architecture.md, "Task metrics").
pub fn metrics_any(stats: &Stats, wasm: Option<&WasmMetrics>) -> containerd_shim::Result<Any> {
    let unified = matches!(get_cgroup_setup(), Ok(CgroupSetup::Unified));
    let metrics: Box<dyn MessageDyn> = if unified {
        Box::new(v2_metrics(stats))
    } else {
        Box::new(v1_metrics(stats))
    };
    let mut any = convert_to_any(metrics)?;
    if let Some(wasm) = wasm {
        any.value.extend(encode_wasm_metrics(wasm)?);
    }
    Ok(any)
}

/// `WasmMetrics` as protobuf field [`WASM_METRICS_FIELD`] (a message of
/// six uint64 fields, 1 to 6, in [`WasmMetrics`]' order).
fn encode_wasm_metrics(wasm: &WasmMetrics) -> protobuf::Result<Vec<u8>> {
    let mut message = Vec::new();
    {
        let mut out = CodedOutputStream::vec(&mut message);
        for (field, value) in [
            wasm.instances,
            wasm.linear_memory_bytes,
            wasm.linear_memory_limit,
            wasm.grows_refused,
            wasm.code_cache_hits,
            wasm.code_compiles,
        ]
        .into_iter()
        .enumerate()
        {
            out.write_uint64(field as u32 + 1, value)?;
        }
        out.flush()?;
    }
    let mut field = Vec::new();
    {
        let mut out = CodedOutputStream::vec(&mut field);
        out.write_bytes(WASM_METRICS_FIELD, &message)?;
        out.flush()?;
    }
    Ok(field)
}

fn v1_metrics(stats: &Stats) -> v1::Metrics {
    let memory = &stats.memory;
    let entry = |data: &libcgroups::stats::MemoryData| v1::MemoryEntry {
        limit: data.limit,
        usage: data.usage,
        max: data.max_usage,
        failcnt: data.fail_count,
        ..Default::default()
    };
    let stat = |key: &str| memory.stats.get(key).copied().unwrap_or_default();
    v1::Metrics {
        pids: MessageField::some(v1::PidsStat {
            current: stats.pids.current,
            limit: stats.pids.limit,
            ..Default::default()
        }),
        cpu: MessageField::some(v1::CPUStat {
            usage: MessageField::some(v1::CPUUsage {
                total: stats.cpu.usage.usage_total,
                kernel: stats.cpu.usage.usage_kernel,
                user: stats.cpu.usage.usage_user,
                per_cpu: stats.cpu.usage.per_core_usage_total.clone(),
                ..Default::default()
            }),
            throttling: MessageField::some(v1::Throttle {
                periods: stats.cpu.throttling.periods,
                throttled_periods: stats.cpu.throttling.throttled_periods,
                throttled_time: stats.cpu.throttling.throttled_time,
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(v1::MemoryStat {
            // Every counter of memory.stat, the `total_` ones (this cgroup
            // and its descendants) being what CRI reads: RSS, page faults,
            // and the working set (usage less total_inactive_file).
            cache: memory.cache,
            rss: stat("rss"),
            rss_huge: stat("rss_huge"),
            mapped_file: stat("mapped_file"),
            dirty: stat("dirty"),
            writeback: stat("writeback"),
            pg_pg_in: stat("pgpgin"),
            pg_pg_out: stat("pgpgout"),
            pg_fault: stat("pgfault"),
            pg_maj_fault: stat("pgmajfault"),
            inactive_anon: stat("inactive_anon"),
            active_anon: stat("active_anon"),
            inactive_file: stat("inactive_file"),
            active_file: stat("active_file"),
            unevictable: stat("unevictable"),
            hierarchical_memory_limit: stat("hierarchical_memory_limit"),
            hierarchical_swap_limit: stat("hierarchical_memsw_limit"),
            total_cache: stat("total_cache"),
            total_rss: stat("total_rss"),
            total_rss_huge: stat("total_rss_huge"),
            total_mapped_file: stat("total_mapped_file"),
            total_dirty: stat("total_dirty"),
            total_writeback: stat("total_writeback"),
            total_pg_pg_in: stat("total_pgpgin"),
            total_pg_pg_out: stat("total_pgpgout"),
            total_pg_fault: stat("total_pgfault"),
            total_pg_maj_fault: stat("total_pgmajfault"),
            total_inactive_anon: stat("total_inactive_anon"),
            total_active_anon: stat("total_active_anon"),
            total_inactive_file: stat("total_inactive_file"),
            total_active_file: stat("total_active_file"),
            total_unevictable: stat("total_unevictable"),
            usage: MessageField::some(entry(&memory.memory)),
            swap: MessageField::some(entry(&memory.memswap)),
            kernel: MessageField::some(entry(&memory.kernel)),
            kernel_tcp: MessageField::some(entry(&memory.kernel_tcp)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn v2_metrics(stats: &Stats) -> v2::Metrics {
    let memory = &stats.memory;
    let stat = |key: &str| memory.stats.get(key).copied().unwrap_or_default();
    v2::Metrics {
        pids: MessageField::some(v2::PidsStat {
            current: stats.pids.current,
            limit: stats.pids.limit,
            ..Default::default()
        }),
        cpu: MessageField::some(v2::CPUStat {
            usage_usec: stats.cpu.usage.usage_total / 1000,
            user_usec: stats.cpu.usage.usage_user / 1000,
            system_usec: stats.cpu.usage.usage_kernel / 1000,
            nr_periods: stats.cpu.throttling.periods,
            nr_throttled: stats.cpu.throttling.throttled_periods,
            throttled_usec: stats.cpu.throttling.throttled_time / 1000,
            ..Default::default()
        }),
        memory: MessageField::some(v2::MemoryStat {
            usage: memory.memory.usage,
            usage_limit: memory.memory.limit,
            max_usage: memory.memory.max_usage,
            swap_usage: memory.memswap.usage,
            swap_limit: memory.memswap.limit,
            // Every counter of memory.stat; CRI reads anon (RSS), the page
            // faults, and the working set (usage less inactive_file).
            anon: stat("anon"),
            file: stat("file"),
            kernel_stack: stat("kernel_stack"),
            slab: stat("slab"),
            sock: stat("sock"),
            shmem: stat("shmem"),
            file_mapped: stat("file_mapped"),
            file_dirty: stat("file_dirty"),
            file_writeback: stat("file_writeback"),
            anon_thp: stat("anon_thp"),
            inactive_anon: stat("inactive_anon"),
            active_anon: stat("active_anon"),
            inactive_file: stat("inactive_file"),
            active_file: stat("active_file"),
            unevictable: stat("unevictable"),
            slab_reclaimable: stat("slab_reclaimable"),
            slab_unreclaimable: stat("slab_unreclaimable"),
            pgfault: stat("pgfault"),
            pgmajfault: stat("pgmajfault"),
            // Split into _anon and _file since Linux 5.9.
            workingset_refault: stat("workingset_refault")
                + stat("workingset_refault_anon")
                + stat("workingset_refault_file"),
            workingset_activate: stat("workingset_activate")
                + stat("workingset_activate_anon")
                + stat("workingset_activate_file"),
            workingset_nodereclaim: stat("workingset_nodereclaim"),
            pgrefill: stat("pgrefill"),
            pgscan: stat("pgscan"),
            pgsteal: stat("pgsteal"),
            pgactivate: stat("pgactivate"),
            pgdeactivate: stat("pgdeactivate"),
            pglazyfree: stat("pglazyfree"),
            pglazyfreed: stat("pglazyfreed"),
            thp_fault_alloc: stat("thp_fault_alloc"),
            thp_collapse_alloc: stat("thp_collapse_alloc"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::Message;

    #[test]
    fn v1_metrics_carry_cgroup_usage() {
        let mut stats = Stats::default();
        stats.memory.memory.usage = 4096;
        stats.memory.memory.limit = 64 << 20;
        stats.cpu.usage.usage_total = 1_000_000;
        stats.pids.current = 1;
        stats.memory.stats = [("total_rss", 8192), ("total_pgfault", 7), ("rss", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let any = convert_to_any(Box::new(v1_metrics(&stats))).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let back = v1::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back.memory.usage.usage, 4096);
        assert_eq!(back.memory.usage.limit, 64 << 20);
        assert_eq!(back.cpu.usage.total, 1_000_000);
        assert_eq!(back.pids.current, 1);
        // What CRI reads as RSS and page faults.
        assert_eq!(
            (back.memory.total_rss, back.memory.total_pg_fault),
            (8192, 7)
        );
    }

    #[test]
    fn wasm_metrics_ride_as_a_field_the_cgroups_readers_skip() {
        let mut stats = Stats::default();
        stats.memory.memory.usage = 4096;
        let wasm = WasmMetrics {
            instances: 2,
            linear_memory_bytes: 3 << 20,
            linear_memory_limit: 0,
            grows_refused: 1,
            code_cache_hits: 5,
            code_compiles: 300,
        };
        let any = metrics_any(&stats, Some(&wasm)).unwrap();
        // What containerd's readers do: decode the cgroups message.
        let unified = matches!(get_cgroup_setup(), Ok(CgroupSetup::Unified));
        let unknown = if unified {
            let back = v2::Metrics::parse_from_bytes(&any.value).unwrap();
            assert_eq!(back.memory.usage, 4096);
            back.special_fields.unknown_fields().clone()
        } else {
            let back = v1::Metrics::parse_from_bytes(&any.value).unwrap();
            assert_eq!(back.memory.usage.usage, 4096);
            back.special_fields.unknown_fields().clone()
        };
        let field = unknown.get(WASM_METRICS_FIELD).expect("the wasm field");
        let protobuf::UnknownValueRef::LengthDelimited(bytes) = field else {
            panic!("{field:?}")
        };
        let mut input = protobuf::CodedInputStream::from_bytes(bytes);
        let mut values = Vec::new();
        while let Some(tag) = input.read_raw_tag_or_eof().unwrap() {
            values.push((tag >> 3, input.read_uint64().unwrap()));
        }
        assert_eq!(
            values,
            [(1, 2), (2, 3 << 20), (3, 0), (4, 1), (5, 5), (6, 300)]
        );
        let plain = metrics_any(&stats, None).unwrap();
        assert!(plain.value.len() < any.value.len());
    }

    #[test]
    fn v2_metrics_use_microseconds() {
        let mut stats = Stats::default();
        stats.cpu.usage.usage_total = 5_000_000;
        stats.memory.stats = [("anon", 4096), ("pgfault", 9), ("pgmajfault", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let any = convert_to_any(Box::new(v2_metrics(&stats))).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let back = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back.cpu.usage_usec, 5000);
        let memory = &back.memory;
        assert_eq!(
            (memory.anon, memory.pgfault, memory.pgmajfault),
            (4096, 9, 1)
        );
    }
}
