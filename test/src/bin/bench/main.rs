//! `make bench`: what a wasm container costs under this shim next to the same
//! work under runc, measured in one run against one private containerd, A/B
//! alternating so drift on the machine hits both sides alike.
//!
//! 1. Start: `ctr run --rm` of the hello wasm image vs `ctr run --rm` of a
//!    static hello binary under runc (`BENCH_RUNS` pairs, default 20).
//! 2. Task throughput: `BENCH_TASKS` (default 500) short tasks created,
//!    started, waited and deleted through containerd (`ctr run --rm`), with
//!    1, 2 and 8 at a time, all in one pod (a pause sandbox holds the pod's
//!    shim, as under kubelet): hello wasm vs the static hello under runc.
//! 3. Memory: PSS of the shim processes and everything under them with K idle
//!    containers running (`BENCH_COUNTS`, default 1,10,100), each in its own
//!    shim ("separate", as `ctr run` does) and all in one shim ("one pod",
//!    grouped by the CRI sandbox-id annotation as kubelet's pods are): a
//!    sleeping wasm guest vs the static `pause` binary under runc.
//!
//! 3b. CRI pod start: RunPodSandbox + CreateContainer + StartContainer until
//!    the container has exited, through containerd's CRI plugin (`BENCH_PODS`
//!    pods per side, default 20): a wasm pod vs a runc pod with a static hello.
//! 3c. Density: `BENCH_DENSITY` (default 100x10) pods of idle containers
//!    through the CRI, all running at once, wasm vs runc: PSS of all shims
//!    and what is under them, per pod and per container, and creation time.
//! 4. Large component, cold vs cached: a Python wasi:http component (~18 MB,
//!    CPython inside) started with an empty code cache, then with the code
//!    cached; time to its first HTTP answer (`BENCH_COLD`, `BENCH_CACHED`).
//! 5. wasi:http load: `wrk` on the same component served by this shim and by
//!    `wasmtime serve` (`BENCH_WASMTIME`, the CLI of the same wasmtime
//!    version), alternating rounds, for the C hello component and the Python one.
//!
//! `BENCH_ONLY` (a comma list of `ctr` = 1–3, `pods` = 3b, `density` = 3c,
//! `http` = 4–5) runs only those parts, to measure one change quickly.
//!
//! The report (markdown) and a plot (SVG) go to `target/bench/`; the shim
//! measured is the one in `SHIM_DIR` (`make bench` builds and points it at
//! the release build).
//!
//! Here: the order of the measurements. `ctr` measures through `ctr`, `pods`
//! through the CRI, `http` the HTTP components; `report` writes it all out.

mod ctr;
mod http;
mod pods;
mod report;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use shim_tests::images::{images_dir, HELLO_HTTP, PYTHON_HTTP};
use shim_tests::Containerd;

use ctr::{resident_pss, throughput, timed_run};
use report::{
    density_report, http_report, plot, pods_report, report, spread, FirstAnswers, MemoryRow,
    ThroughputRow,
};
use shim_tests::cri::{CriNode, NodeOptions};

/// The runtime of the side the shim is compared with.
const RUNC: &str = "io.containerd.runc.v2";

/// The annotation that groups tasks into a pod (one shim), as CRI sets it.
const SANDBOX_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// Which side of an A/B pair a measurement is, or the floor both stand on.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Wasm,
    Runc,
    /// The no-op shim: containerd's, `ctr`'s and the shim protocol's share.
    Floor,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Wasm => "wasm (this shim)",
            Side::Runc => "runc",
            Side::Floor => "no-op shim (floor)",
        }
    }
}

/// `containerd-shim-noop-v1`, built beside this binary (`make build`),
/// which containerd runs by its absolute path; looked up once.
fn noop_shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let exe = std::env::current_exe().expect("the bench's path");
        let shim = exe.with_file_name("containerd-shim-noop-v1");
        assert!(
            shim.is_file(),
            "{} is missing: `make build` builds it",
            shim.display()
        );
        shim
    })
}

impl Side {
    /// The `--runtime` that `ctr run` names for this side.
    fn runtime(self) -> &'static str {
        match self {
            Side::Wasm => shim_tests::RUNTIME,
            Side::Runc => RUNC,
            Side::Floor => noop_shim().to_str().expect("a UTF-8 path"),
        }
    }
}

/// The environment variable `name`, parsed, else `default`.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether `part` is to run: every part unless `BENCH_ONLY` lists others.
fn wanted(part: &str) -> bool {
    std::env::var("BENCH_ONLY")
        .ok()
        .filter(|only| !only.trim().is_empty())
        .is_none_or(|only| only.split(',').any(|p| p.trim() == part))
}

/// Runs the measurements (see the header), then writes the report.
fn main() {
    let mut report = String::new();
    let mut plot_svg = None;
    if wanted("ctr") || wanted("http") {
        let containerd = Containerd::start_logging("info");
        let mut images = vec!["hello.tar", "wasm-test.tar", "pause.tar"];
        if wanted("http") {
            images.extend(["hello-http.tar", "python-http.tar"]);
        }
        for image in images {
            containerd.import(image);
        }
        if wanted("ctr") {
            let (text, svg) = through_ctr(&containerd);
            report.push_str(&text);
            plot_svg = Some(svg);
        }
        if wanted("http") {
            report.push_str(&http_components(&containerd));
        }
    }
    if wanted("pods") || wanted("density") {
        report.push_str(&through_cri());
    }
    let out = shim_tests::workspace().join("target/bench");
    fs::create_dir_all(&out).expect("target/bench");
    fs::write(out.join("report.md"), &report).expect("write the report");
    println!("{report}");
    println!("(written to {}/report.md)", out.display());
    if let Some(svg) = plot_svg {
        fs::write(out.join("plot.svg"), svg).expect("plot");
        println!("(and {}/plot.svg)", out.display());
    }
}

/// 1–3: start, throughput and memory through `ctr`; the report's sections
/// and the plot.
fn through_ctr(containerd: &Containerd) -> (String, String) {
    let runs: usize = env_or("BENCH_RUNS", 20);
    let tasks: usize = env_or("BENCH_TASKS", 500);
    let counts: Vec<usize> = std::env::var("BENCH_COUNTS")
        .unwrap_or_else(|_| "1,10,100".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    // Warm every path once (page cache, snapshots), outside the measurement.
    let sides = [Side::Wasm, Side::Runc, Side::Floor];
    for side in sides {
        timed_run(containerd, side);
    }

    eprintln!("start: {runs} × ctr run --rm, alternating");
    let mut starts = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (n, side) in sides.into_iter().enumerate() {
            starts[n].push(timed_run(containerd, side));
        }
    }
    let [wasm_start, runc_start, floor_start] = starts.map(|s| spread(&s));

    eprintln!("throughput: {tasks} tasks in one pod");
    let mut rates = Vec::new();
    for parallelism in [1, 2, 8] {
        let [wasm, runc, floor] =
            sides.map(|side| throughput(containerd, side, tasks, parallelism));
        rates.push(ThroughputRow {
            parallelism,
            wasm,
            runc,
            floor,
        });
    }

    eprintln!("memory: idle containers, PSS of shims and their children");
    let mut memory = Vec::new();
    for &count in &counts {
        for one_pod in [false, true] {
            let wasm = resident_pss(containerd, Side::Wasm, count, one_pod);
            let runc = resident_pss(containerd, Side::Runc, count, one_pod);
            memory.push(MemoryRow {
                count,
                one_pod,
                wasm: wasm.kib as f64 / 1024.0,
                runc: runc.kib as f64 / 1024.0,
                breakdown: [wasm.breakdown(), runc.breakdown()],
            });
        }
    }
    (
        report(
            runs,
            [&wasm_start, &runc_start, &floor_start],
            tasks,
            &rates,
            &memory,
        ),
        plot(&wasm_start, &runc_start, &memory),
    )
}

/// 4–5: the large component cold and cached, and wasi:http load.
fn http_components(containerd: &Containerd) -> String {
    let cold_runs: usize = env_or("BENCH_COLD", 3);
    let cached_runs: usize = env_or("BENCH_CACHED", 5);
    let wasmtime_cli = std::env::var("BENCH_WASMTIME").unwrap_or_else(|_| "wasmtime".into());
    eprintln!("large component: first answer, cold cache vs cached");
    let python_size = fs::metadata(images_dir().join("python-http.wasm")).map_or(0, |m| m.len());
    let mut cold = Vec::new();
    let mut cached = Vec::new();
    for n in 0..cold_runs.max(cached_runs) {
        if n < cold_runs {
            cold.push(http::first_response(containerd, PYTHON_HTTP, 18_080, true));
        }
        if n < cached_runs {
            cached.push(http::first_response(containerd, PYTHON_HTTP, 18_080, false));
        }
    }
    let starts = FirstAnswers {
        size_mb: python_size as f64 / 1e6,
        cold: spread(&cold.iter().map(|r| r.total).collect::<Vec<_>>()),
        cold_after_start: spread(&cold.iter().map(|r| r.after_start).collect::<Vec<_>>()),
        cached: spread(&cached.iter().map(|r| r.total).collect::<Vec<_>>()),
        cached_after_start: spread(&cached.iter().map(|r| r.after_start).collect::<Vec<_>>()),
    };
    eprintln!(
        "  cold {:.0} ms, cached {:.0} ms ({:.0} ms after start)",
        starts.cold.median, starts.cached.median, starts.cached_after_start.median
    );

    eprintln!("wasi:http load: this shim vs wasmtime serve");
    let mut loads = Vec::new();
    for (name, image, file) in [
        ("hello (C)", HELLO_HTTP, "hello-http.wasm"),
        ("hello (Python)", PYTHON_HTTP, "python-http.wasm"),
    ] {
        let row = http::requests_per_second(
            containerd,
            &wasmtime_cli,
            image,
            &images_dir().join(file),
            16,
            3,
            5,
        );
        loads.push((name, row));
    }
    http_report(&starts, cold_runs, cached_runs, &loads)
}

/// 3b–3c: pod start and density through the CRI, on one CRI node.
fn through_cri() -> String {
    let node = CriNode::start_with(NodeOptions {
        binary_handlers: vec![(pods::NOOP.into(), noop_shim().to_path_buf())],
        ..Default::default()
    });
    let mut report = String::new();
    if wanted("pods") {
        let pods: usize = env_or("BENCH_PODS", 20);
        eprintln!("CRI pod start: {pods} pods each, alternating");
        let starts = pods::pod_starts(&node, pods).map(|s| spread(&s));
        eprintln!(
            "  wasm {:.0} ms, runc {:.0} ms, no-op {:.0} ms (median)",
            starts[0].median, starts[1].median, starts[2].median
        );
        report.push_str(&pods_report(pods, [&starts[0], &starts[1], &starts[2]]));
    }
    if wanted("density") {
        let (pods, per_pod) = std::env::var("BENCH_DENSITY")
            .ok()
            .and_then(|v| {
                let (p, c) = v.split_once('x')?;
                Some((p.trim().parse().ok()?, c.trim().parse().ok()?))
            })
            .unwrap_or((100, 10));
        eprintln!("density: {pods} pods × {per_pod} idle containers through the CRI");
        let wasm = pods::density(&node, "wasmtime", pods, per_pod);
        let runc = pods::density(&node, "runc", pods, per_pod);
        report.push_str(&density_report(pods, per_pod, &wasm, &runc));
    }
    report
}
