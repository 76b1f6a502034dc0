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
//! 4. Large component, cold vs cached: a Python wasi:http component (~18 MB,
//!    CPython inside) started with an empty code cache, then with the code
//!    cached; time to its first HTTP answer (`BENCH_COLD`, `BENCH_CACHED`).
//! 5. wasi:http load: `wrk` on the same component served by this shim and by
//!    `wasmtime serve` (`BENCH_WASMTIME`, the CLI of the same wasmtime
//!    version), alternating rounds, for the C hello component and the Python one.
//!
//! The report (markdown) and a plot (SVG) go to `target/bench/`; the shim
//! measured is the one in `SHIM_DIR` (`make bench` builds and points it at
//! the release build).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::time::{Duration, Instant};

use shim_tests::images::{images_dir, HELLO, HELLO_HTTP, PAUSE, PYTHON_HTTP, WASM_TEST};
use shim_tests::procfs::shim_servers;
use shim_tests::{unique_id, Containerd, RUNTIME};

mod http;
mod pods;

const RUNC: &str = "io.containerd.runc.v2";
const SANDBOX_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Wasm,
    Runc,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Wasm => "wasm (this shim)",
            Side::Runc => "runc",
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Spread {
    median: f64,
    p10: f64,
    p90: f64,
}

fn spread(values: &[f64]) -> Spread {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Spread {
        median: percentile(&sorted, 50.0),
        p10: percentile(&sorted, 10.0),
        p90: percentile(&sorted, 90.0),
    }
}

/// One `ctr run --rm` to completion, in milliseconds.
fn timed_run(containerd: &Containerd, side: Side) -> f64 {
    timed_run_in(containerd, side, None)
}

/// [`timed_run`] in the pod `pod` (its sandbox-id annotation), if given.
fn timed_run_in(containerd: &Containerd, side: Side, pod: Option<&str>) -> f64 {
    let id = unique_id("bench-start");
    let annotation = pod.map(|pod| format!("{SANDBOX_ANNOTATION}={pod}"));
    let mut args = vec!["run", "--rm"];
    if let Some(annotation) = &annotation {
        args.extend(["--annotation", annotation]);
    }
    match side {
        Side::Wasm => args.extend(["--runtime", RUNTIME, HELLO, &id]),
        Side::Runc => args.extend(["--runtime", RUNC, WASM_TEST, &id, "/native-hello"]),
    }
    let started = Instant::now();
    let out = containerd.ctr(&args);
    let elapsed = started.elapsed();
    assert_eq!(out.code, 0, "{} run failed: {out:?}", side.name());
    elapsed.as_secs_f64() * 1000.0
}

/// PSS in KiB of every shim of this containerd and all their descendants.
fn shim_tree_pss_kib(containerd: &Containerd) -> (u64, usize) {
    let shims: Vec<i32> = shim_servers(&containerd.socket())
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The field after the command (which may hold spaces) is the state, then the ppid.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut total = 0;
    let mut count = 0;
    let mut stack = shims;
    while let Some(pid) = stack.pop() {
        let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let pss: u64 = rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        total += pss;
        count += 1;
        stack.extend(children.get(&pid).into_iter().flatten());
    }
    (total, count)
}

/// Starts `count` idle containers, measures, and removes them again.
fn resident_pss(containerd: &Containerd, side: Side, count: usize, one_pod: bool) -> f64 {
    let pod = unique_id("bench-pod");
    let ids: Vec<String> = (0..count).map(|_| unique_id("bench-idle")).collect();
    for id in &ids {
        let annotation = format!("{SANDBOX_ANNOTATION}={pod}");
        let mut args = vec!["run", "-d"];
        if one_pod {
            args.extend(["--annotation", &annotation]);
        }
        match side {
            Side::Wasm => args.extend([
                "--runtime",
                RUNTIME,
                WASM_TEST,
                id,
                "/wasitest.wasm",
                "sleep",
            ]),
            Side::Runc => args.extend(["--runtime", RUNC, PAUSE, id]),
        }
        let out = containerd.ctr(&args);
        assert_eq!(out.code, 0, "{} start failed: {out:?}", side.name());
    }
    std::thread::sleep(Duration::from_secs(2));
    let (kib, processes) = shim_tree_pss_kib(containerd);
    for id in &ids {
        containerd.remove(id);
    }
    eprintln!(
        "  {:<16} {count:>3} {:<9} {processes:>4} processes, {:.1} MiB PSS",
        side.name(),
        if one_pod { "one pod" } else { "separate" },
        kib as f64 / 1024.0
    );
    kib as f64 / 1024.0
}

/// Tasks per second for `tasks` runs, `parallelism` at a time, in one pod.
fn throughput(containerd: &Containerd, side: Side, tasks: usize, parallelism: usize) -> f64 {
    let pod = unique_id("bench-pod");
    let sandbox = unique_id("bench-sandbox");
    let annotation = format!("{SANDBOX_ANNOTATION}={pod}");
    let runtime = match side {
        Side::Wasm => RUNTIME,
        Side::Runc => RUNC,
    };
    let out = containerd.ctr(&[
        "run",
        "-d",
        "--annotation",
        &annotation,
        "--runtime",
        runtime,
        PAUSE,
        &sandbox,
    ]);
    assert_eq!(out.code, 0, "the pod's sandbox: {out:?}");
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..parallelism {
            scope.spawn(|| {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < tasks {
                    timed_run_in(containerd, side, Some(&pod));
                }
            });
        }
    });
    let rate = tasks as f64 / started.elapsed().as_secs_f64();
    containerd.remove(&sandbox);
    eprintln!(
        "  {:<16} {tasks} tasks, {parallelism} at a time: {rate:.1}/s",
        side.name()
    );
    rate
}

struct ThroughputRow {
    parallelism: usize,
    wasm: f64,
    runc: f64,
}

struct MemoryRow {
    count: usize,
    one_pod: bool,
    wasm: f64,
    runc: f64,
}

fn main() {
    let runs: usize = env_or("BENCH_RUNS", 20);
    let tasks: usize = env_or("BENCH_TASKS", 500);
    let counts: Vec<usize> = std::env::var("BENCH_COUNTS")
        .unwrap_or_else(|_| "1,10,100".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let containerd = Containerd::start_logging("info");
    let cold_runs: usize = env_or("BENCH_COLD", 3);
    let cached_runs: usize = env_or("BENCH_CACHED", 5);
    let wasmtime_cli = std::env::var("BENCH_WASMTIME").unwrap_or_else(|_| "wasmtime".into());
    for image in [
        "hello.tar",
        "wasm-test.tar",
        "pause.tar",
        "hello-http.tar",
        "python-http.tar",
    ] {
        containerd.import(image);
    }
    // Warm both paths once (page cache, snapshots), outside the measurement.
    timed_run(&containerd, Side::Wasm);
    timed_run(&containerd, Side::Runc);

    eprintln!("start: {runs} × ctr run --rm, alternating");
    let (mut wasm, mut runc) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        wasm.push(timed_run(&containerd, Side::Wasm));
        runc.push(timed_run(&containerd, Side::Runc));
    }
    let (wasm_start, runc_start) = (spread(&wasm), spread(&runc));

    eprintln!("throughput: {tasks} tasks in one pod");
    let mut rates = Vec::new();
    for parallelism in [1, 2, 8] {
        let wasm = throughput(&containerd, Side::Wasm, tasks, parallelism);
        let runc = throughput(&containerd, Side::Runc, tasks, parallelism);
        rates.push(ThroughputRow {
            parallelism,
            wasm,
            runc,
        });
    }

    eprintln!("memory: idle containers, PSS of shims and their children");
    let mut memory = Vec::new();
    for &count in &counts {
        for one_pod in [false, true] {
            let wasm = resident_pss(&containerd, Side::Wasm, count, one_pod);
            let runc = resident_pss(&containerd, Side::Runc, count, one_pod);
            memory.push(MemoryRow {
                count,
                one_pod,
                wasm,
                runc,
            });
        }
    }
    eprintln!("large component: first answer, cold cache vs cached");
    let python_size = fs::metadata(images_dir().join("python-http.wasm")).map_or(0, |m| m.len());
    let mut cold = Vec::new();
    let mut cached = Vec::new();
    for n in 0..cold_runs.max(cached_runs) {
        if n < cold_runs {
            cold.push(http::first_response(&containerd, PYTHON_HTTP, 18_080, true));
        }
        if n < cached_runs {
            cached.push(http::first_response(
                &containerd,
                PYTHON_HTTP,
                18_080,
                false,
            ));
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
            &containerd,
            &wasmtime_cli,
            image,
            &images_dir().join(file),
            16,
            3,
            5,
        );
        loads.push((name, row));
    }
    drop(containerd);

    let pods: usize = env_or("BENCH_PODS", 20);
    eprintln!("CRI pod start: {pods} pods each, alternating");
    let (wasm_pods, runc_pods) = pods::pod_starts(pods);
    let (wasm_pods, runc_pods) = (spread(&wasm_pods), spread(&runc_pods));
    eprintln!(
        "  wasm {:.0} ms, runc {:.0} ms (median)",
        wasm_pods.median, runc_pods.median
    );

    let mut report = report(runs, &wasm_start, &runc_start, tasks, &rates, &memory);
    report.push_str(&pods_report(pods, &wasm_pods, &runc_pods));
    report.push_str(&http_report(&starts, cold_runs, cached_runs, &loads));
    let out = shim_tests::workspace().join("target/bench");
    fs::create_dir_all(&out).expect("target/bench");
    fs::write(out.join("report.md"), &report).expect("write the report");
    fs::write(
        out.join("plot.svg"),
        plot(&wasm_start, &runc_start, &memory),
    )
    .expect("plot");
    println!("{report}");
    println!("(written to {0}/report.md and {0}/plot.svg)", out.display());
}

fn pods_report(pods: usize, wasm: &Spread, runc: &Spread) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "\n### CRI pod start: RunPodSandbox until the hello container has exited, {pods} pods each, alternating\n"
    );
    let _ = writeln!(r, "| | median ms | p10 ms | p90 ms |");
    let _ = writeln!(r, "|---|---|---|---|");
    for (name, s) in [("wasm pod (wasmtime handler)", wasm), ("runc pod", runc)] {
        let _ = writeln!(
            r,
            "| {name} | {:.0} | {:.0} | {:.0} |",
            s.median, s.p10, s.p90
        );
    }
    let _ = writeln!(
        r,
        "\nwasm / runc median: **{:.2}**\n",
        wasm.median / runc.median
    );
    r
}

struct FirstAnswers {
    size_mb: f64,
    cold: Spread,
    cold_after_start: Spread,
    cached: Spread,
    cached_after_start: Spread,
}

fn http_report(
    starts: &FirstAnswers,
    cold_runs: usize,
    cached_runs: usize,
    loads: &[(&str, http::LoadRow)],
) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "\n### Large component: first HTTP answer, cold vs cached ({:.1} MB Python component)\n",
        starts.size_mb
    );
    let _ = writeln!(
        r,
        "| | runs | `ctr run -d` to first 200, median ms (p10–p90) | after start returned, median ms |"
    );
    let _ = writeln!(r, "|---|---|---|---|");
    for (name, runs, total, after) in [
        (
            "cold (empty cache: compiles)",
            cold_runs,
            &starts.cold,
            &starts.cold_after_start,
        ),
        (
            "cached (new shim, code mapped)",
            cached_runs,
            &starts.cached,
            &starts.cached_after_start,
        ),
    ] {
        let _ = writeln!(
            r,
            "| {name} | {runs} | {:.0} ({:.0}–{:.0}) | {:.0} |",
            total.median, total.p10, total.p90, after.median
        );
    }
    let _ = writeln!(
        r,
        "\ncached / cold: **{:.3}**\n",
        starts.cached.median / starts.cold.median
    );
    let _ = writeln!(
        r,
        "### wasi:http: this shim vs `wasmtime serve`, wrk 16 connections, median of 3 × 5 s\n"
    );
    let _ = writeln!(
        r,
        "| component | shim req/s | wasmtime serve req/s | shim / wasmtime | shim p99 ms | wasmtime p99 ms |"
    );
    let _ = writeln!(r, "|---|---|---|---|---|---|");
    for (name, row) in loads {
        let _ = writeln!(
            r,
            "| {name} | {:.0} | {:.0} | **{:.2}** | {:.2} | {:.2} |",
            row.shim.rps,
            row.wasmtime.rps,
            row.shim.rps / row.wasmtime.rps,
            row.shim.p99_ms,
            row.wasmtime.p99_ms
        );
    }
    r
}

fn report(
    runs: usize,
    wasm: &Spread,
    runc: &Spread,
    tasks: usize,
    rates: &[ThroughputRow],
    memory: &[MemoryRow],
) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "### Start: `ctr run --rm` to exit, {runs} runs each, alternating\n"
    );
    let _ = writeln!(r, "| | median ms | p10 ms | p90 ms |");
    let _ = writeln!(r, "|---|---|---|---|");
    for (side, s) in [(Side::Wasm, wasm), (Side::Runc, runc)] {
        let _ = writeln!(
            r,
            "| {} | {:.0} | {:.0} | {:.0} |",
            side.name(),
            s.median,
            s.p10,
            s.p90
        );
    }
    let _ = writeln!(
        r,
        "\nwasm / runc median: **{:.2}**\n",
        wasm.median / runc.median
    );
    let _ = writeln!(
        r,
        "### Throughput: {tasks} tasks (`ctr run --rm`) in one pod, tasks per second\n"
    );
    let _ = writeln!(r, "| at a time | wasm | runc | wasm / runc |");
    let _ = writeln!(r, "|---|---|---|---|");
    for row in rates {
        let _ = writeln!(
            r,
            "| {} | {:.1} | {:.1} | **{:.2}** |",
            row.parallelism,
            row.wasm,
            row.runc,
            row.wasm / row.runc
        );
    }
    let _ = writeln!(
        r,
        "\n### Memory: PSS of the shims and everything under them, idle containers\n"
    );
    let _ = writeln!(
        r,
        "| containers | shims | wasm MiB | runc MiB | wasm MiB per container | runc MiB per container | wasm / runc |"
    );
    let _ = writeln!(r, "|---|---|---|---|---|---|---|");
    for row in memory {
        let _ = writeln!(
            r,
            "| {} | {} | {:.1} | {:.1} | {:.2} | {:.2} | **{:.2}** |",
            row.count,
            if row.one_pod {
                "one (a pod)"
            } else {
                "one each"
            },
            row.wasm,
            row.runc,
            row.wasm / row.count as f64,
            row.runc / row.count as f64,
            row.wasm / row.runc
        );
    }
    r
}

/// Two bar charts side by side: start latency (median, p10–p90 whiskers) and
/// PSS per container for each memory scenario.
fn plot(wasm: &Spread, runc: &Spread, memory: &[MemoryRow]) -> String {
    const WASM_COLOR: &str = "#6a4fd6";
    const RUNC_COLOR: &str = "#9a9a9a";
    let (width, height, top, bottom) = (900.0, 340.0, 40.0, 280.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<rect x="620" y="8" width="12" height="12" fill="{WASM_COLOR}"/><text x="638" y="19">wasm (this shim)</text>
<rect x="760" y="8" width="12" height="12" fill="{RUNC_COLOR}"/><text x="778" y="19">runc</text>
"#
    );
    let bar = |svg: &mut String, x: f64, value: f64, max: f64, color: &str, label: String| {
        let h = (bottom - top) * value / max;
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="24" height="{h:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{label}</text>"#,
            bottom - h,
            x + 12.0,
            bottom - h - 4.0
        );
    };
    // Panel 1: start latency.
    let max = wasm.p90.max(runc.p90) * 1.15;
    let _ = writeln!(
        svg,
        r#"<text x="20" y="24" font-weight="bold">ctr run --rm, median ms (p10–p90)</text>"#
    );
    for (i, (s, color)) in [(wasm, WASM_COLOR), (runc, RUNC_COLOR)]
        .into_iter()
        .enumerate()
    {
        let x = 60.0 + i as f64 * 50.0;
        bar(
            &mut svg,
            x,
            s.median,
            max,
            color,
            format!("{:.0}", s.median),
        );
        let y = |v: f64| bottom - (bottom - top) * v / max;
        let _ = writeln!(
            svg,
            r#"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="black"/>"#,
            x + 12.0,
            y(s.p10),
            y(s.p90)
        );
    }
    // Panel 2: memory per container.
    let max = memory
        .iter()
        .map(|m| (m.wasm.max(m.runc)) / m.count as f64)
        .fold(0.1, f64::max)
        * 1.15;
    let _ = writeln!(
        svg,
        r#"<text x="220" y="24" font-weight="bold">PSS per idle container, MiB</text>"#
    );
    for (i, row) in memory.iter().enumerate() {
        let x = 220.0 + i as f64 * 110.0;
        let per = |v: f64| v / row.count as f64;
        bar(
            &mut svg,
            x,
            per(row.wasm),
            max,
            WASM_COLOR,
            format!("{:.1}", per(row.wasm)),
        );
        bar(
            &mut svg,
            x + 28.0,
            per(row.runc),
            max,
            RUNC_COLOR,
            format!("{:.1}", per(row.runc)),
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{} {}</text>"#,
            x + 26.0,
            bottom + 16.0,
            row.count,
            if row.one_pod { "in a pod" } else { "separate" }
        );
    }
    let _ = writeln!(
        svg,
        r#"<line x1="40" x2="{:.1}" y1="{bottom}" y2="{bottom}" stroke="black"/>"#,
        width - 20.0
    );
    svg.push_str("</svg>\n");
    svg
}
