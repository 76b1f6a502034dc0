//! HTTP components: how soon a large component answers after its container
//! starts (cold cache vs cached), and requests per second served by this
//! shim vs `wasmtime serve` for the same component.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shim_tests::{unique_id, Containerd, RUNTIME};

/// One GET of `/` on loopback `port`; whether it was answered 200.
fn get_ok(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let request = "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// Polls `port` until it answers 200; panics after `patience`.
fn wait_ok(port: u16, patience: Duration) {
    let deadline = Instant::now() + patience;
    while !get_ok(port) {
        assert!(Instant::now() < deadline, "nothing answered on port {port}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Starts `image` serving on host port `port`; returns the container id.
fn serve(containerd: &Containerd, image: &str, port: u16) -> String {
    let id = unique_id("bench-http");
    let env = format!("PORT={port}");
    let out = containerd.ctr(&[
        "run",
        "-d",
        "--net-host",
        "--env",
        &env,
        "--runtime",
        RUNTIME,
        image,
        &id,
    ]);
    assert_eq!(out.code, 0, "{image} did not start: {out:?}");
    id
}

pub struct FirstResponse {
    /// From `ctr run -d` (create + start) to the first 200, ms.
    pub total: f64,
    /// From the end of `ctr run -d` (StartContainer returned) to the first 200, ms.
    pub after_start: f64,
}

/// Starts `image` and times its first answer; with `cold`, the node's code
/// cache is emptied first.
pub fn first_response(
    containerd: &Containerd,
    image: &str,
    port: u16,
    cold: bool,
) -> FirstResponse {
    if cold {
        let code = containerd.dir().join("cache/code");
        for entry in std::fs::read_dir(&code).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let began = Instant::now();
    let id = serve(containerd, image, port);
    let started = Instant::now();
    wait_ok(port, Duration::from_secs(300));
    let answered = Instant::now();
    containerd.remove(&id);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    FirstResponse {
        total: ms(answered - began),
        after_start: ms(answered - started),
    }
}

pub struct Load {
    pub rps: f64,
    pub p99_ms: f64,
}

/// `wrk` against loopback `port`.
fn wrk(port: u16, connections: usize, seconds: u64) -> Load {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rate in wrk's output:\n{text}"));
    let p99_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| parse_wrk_duration(v.trim()))
        .unwrap_or(f64::NAN);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("  wrk reported errors:\n{text}");
    }
    Load { rps, p99_ms }
}

/// wrk prints durations as "1.23ms", "456.00us" or "1.02s".
fn parse_wrk_duration(text: &str) -> f64 {
    let (number, scale) = if let Some(v) = text.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (text, f64::NAN)
    };
    number.parse::<f64>().unwrap_or(f64::NAN) * scale
}

/// `wasmtime serve` of `component` on loopback `port`.
fn wasmtime_serve(wasmtime: &str, component: &std::path::Path, port: u16) -> Child {
    Command::new(wasmtime)
        // `-S cli=y`: the WASI the shim gives every component (Python needs it).
        .args([
            "serve",
            "-S",
            "cli=y",
            "--addr",
            &format!("127.0.0.1:{port}"),
        ])
        .arg(component)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{wasmtime}: {e}"))
}

pub struct LoadRow {
    pub shim: Load,
    pub wasmtime: Load,
}

/// Alternating rounds of load on the shim's container and on `wasmtime serve`,
/// both serving `component` (the shim from `image`); medians of the rounds.
pub fn requests_per_second(
    containerd: &Containerd,
    wasmtime: &str,
    image: &str,
    component: &std::path::Path,
    connections: usize,
    rounds: usize,
    seconds: u64,
) -> LoadRow {
    let (shim_port, wasmtime_port) = (18_081, 18_082);
    let id = serve(containerd, image, shim_port);
    let mut server = wasmtime_serve(wasmtime, component, wasmtime_port);
    // Both may compile a large component first.
    wait_ok(shim_port, Duration::from_secs(300));
    wait_ok(wasmtime_port, Duration::from_secs(300));
    let (mut shim, mut reference) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        shim.push(wrk(shim_port, connections, seconds));
        reference.push(wrk(wasmtime_port, connections, seconds));
    }
    let _ = server.kill();
    let _ = server.wait();
    containerd.remove(&id);
    let median = |loads: &[Load]| {
        let mut rps: Vec<f64> = loads.iter().map(|l| l.rps).collect();
        let mut p99: Vec<f64> = loads.iter().map(|l| l.p99_ms).collect();
        rps.sort_by(f64::total_cmp);
        p99.sort_by(f64::total_cmp);
        Load {
            rps: rps[rps.len() / 2],
            p99_ms: p99[p99.len() / 2],
        }
    };
    let row = LoadRow {
        shim: median(&shim),
        wasmtime: median(&reference),
    };
    eprintln!(
        "  {connections} connections: shim {:.0} req/s (p99 {:.2} ms), wasmtime serve {:.0} req/s (p99 {:.2} ms)",
        row.shim.rps, row.shim.p99_ms, row.wasmtime.rps, row.wasmtime.p99_ms
    );
    row
}
