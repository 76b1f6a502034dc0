//! The benchmark's figures, summarized (median, p10, p90) and written out:
//! the markdown report and the SVG plot that go to `target/bench/`.

use std::fmt::Write as _;

use super::{http, pods, Side};

/// Nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median and the 10th and 90th percentiles of a sample.
pub(crate) struct Spread {
    pub(crate) median: f64,
    p10: f64,
    p90: f64,
}

/// The [`Spread`] of `values`.
pub(crate) fn spread(values: &[f64]) -> Spread {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Spread {
        median: percentile(&sorted, 50.0),
        p10: percentile(&sorted, 10.0),
        p90: percentile(&sorted, 90.0),
    }
}

/// Tasks per second, `parallelism` at a time, for each side.
pub(crate) struct ThroughputRow {
    pub(crate) parallelism: usize,
    pub(crate) wasm: f64,
    pub(crate) runc: f64,
    /// The no-op shim's: the most containerd and `ctr` allow.
    pub(crate) floor: f64,
}

/// Rows of start times (wasm, runc, the no-op floor), then the ratio and
/// each side's time above the floor, which is what a runtime can cut.
fn start_table(r: &mut String, names: [&str; 3], [wasm, runc, floor]: [&Spread; 3]) {
    let _ = writeln!(r, "| | median ms | p10 ms | p90 ms |");
    let _ = writeln!(r, "|---|---|---|---|");
    for (name, s) in names.into_iter().zip([wasm, runc, floor]) {
        let _ = writeln!(
            r,
            "| {name} | {:.0} | {:.0} | {:.0} |",
            s.median, s.p10, s.p90
        );
    }
    let _ = writeln!(
        r,
        "\nwasm / runc median: **{:.2}**; above the no-op floor: wasm {:.0} ms, runc {:.0} ms \
         (**{:.2}**); the floor is {:.2} of runc's time\n",
        wasm.median / runc.median,
        wasm.median - floor.median,
        runc.median - floor.median,
        (wasm.median - floor.median) / (runc.median - floor.median),
        floor.median / runc.median
    );
}

/// MiB of PSS with `count` idle containers, separate or in one pod.
pub(crate) struct MemoryRow {
    pub(crate) count: usize,
    pub(crate) one_pod: bool,
    pub(crate) wasm: f64,
    pub(crate) runc: f64,
    /// PSS by process name, wasm and runc ([`super::ctr::Tree::breakdown`]).
    pub(crate) breakdown: [String; 2],
}

/// How soon the large component answered: cold cache vs cached.
pub(crate) struct FirstAnswers {
    pub(crate) size_mb: f64,
    pub(crate) cold: Spread,
    pub(crate) cold_after_start: Spread,
    pub(crate) cached: Spread,
    pub(crate) cached_after_start: Spread,
}

/// The report's start, throughput and memory sections.
pub(crate) fn report(
    runs: usize,
    starts: [&Spread; 3],
    tasks: usize,
    rates: &[ThroughputRow],
    memory: &[MemoryRow],
) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "### Start: `ctr run --rm` to exit, {runs} runs each, alternating\n"
    );
    start_table(
        &mut r,
        [Side::Wasm.name(), Side::Runc.name(), Side::Floor.name()],
        starts,
    );
    let _ = writeln!(
        r,
        "### Throughput: {tasks} tasks (`ctr run --rm`) in one pod, tasks per second\n"
    );
    let _ = writeln!(
        r,
        "| at a time | wasm | runc | wasm / runc | no-op shim (ceiling) | ms per task above the no-op's: wasm / runc |"
    );
    let _ = writeln!(r, "|---|---|---|---|---|---|");
    for row in rates {
        let above = |rate: f64| 1000.0 / rate - 1000.0 / row.floor;
        let _ = writeln!(
            r,
            "| {} | {:.1} | {:.1} | **{:.2}** | {:.1} | {:.1} / {:.1} |",
            row.parallelism,
            row.wasm,
            row.runc,
            row.wasm / row.runc,
            row.floor,
            above(row.wasm),
            above(row.runc)
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
    if let Some(one) = memory.iter().find(|row| row.count == 1 && row.one_pod) {
        let _ = writeln!(
            r,
            "\nOne container in a pod, by process: wasm: {}; runc: {}.",
            one.breakdown[0], one.breakdown[1]
        );
    }
    r
}

/// The report's CRI pod start section.
pub(crate) fn pods_report(pods: usize, starts: [&Spread; 3]) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "\n### CRI pod start: RunPodSandbox until the hello container has exited, {pods} pods each, alternating\n"
    );
    start_table(
        &mut r,
        [
            "wasm pod (wasmtime handler)",
            "runc pod",
            "no-op shim pod (floor)",
        ],
        starts,
    );
    r
}

/// The report's density section: N pods of K idle containers, all at once.
pub(crate) fn density_report(
    pods: usize,
    per_pod: usize,
    wasm: &pods::Density,
    runc: &pods::Density,
) -> String {
    let mut r = String::new();
    let containers = (pods * per_pod) as f64;
    let _ = writeln!(
        r,
        "\n### Density: {pods} pods × {per_pod} idle containers through the CRI, all running\n"
    );
    let _ = writeln!(
        r,
        "| | PSS of all shims, MiB | processes | MiB per pod (sandbox, shim) | MiB per container | pods created in s | containers started in s |"
    );
    let _ = writeln!(r, "|---|---|---|---|---|---|---|");
    for (name, d) in [("wasm (wasmtime handler)", wasm), ("runc", runc)] {
        let _ = writeln!(
            r,
            "| {name} | {:.0} | {} | {:.2} | {:.2} | {:.1} | {:.1} |",
            d.total_mib,
            d.processes,
            d.pods_mib / pods as f64,
            (d.total_mib - d.pods_mib) / containers,
            d.pods_secs,
            d.containers_secs
        );
    }
    let _ = writeln!(
        r,
        "\nBy process: wasm: {}; runc: {}.",
        wasm.breakdown, runc.breakdown
    );
    let _ = writeln!(
        r,
        "\nwasm / runc PSS: **{:.2}** ({:.2} GB for the wasm side)\n",
        wasm.total_mib / runc.total_mib,
        wasm.total_mib * 1024.0 * 1024.0 / 1e9
    );
    r
}

/// The report's large component and wasi:http load sections.
pub(crate) fn http_report(
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

/// Two bar charts side by side: start latency (median, p10–p90 whiskers) and
/// PSS per container for each memory scenario.
pub(crate) fn plot(wasm: &Spread, runc: &Spread, memory: &[MemoryRow]) -> String {
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
