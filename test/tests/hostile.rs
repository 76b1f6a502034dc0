//! Hostile guests: a wasm program (images/wasitest/wasitest.c) that tries to
//! leave its root, write where it may not, exhaust memory, stack, CPU and
//! file descriptors, or flood its output; and native code posing as a guest,
//! shipped in an image or planted in the node's code cache. Each must fail
//! inside the guest or end the container, and never hurt the shim or the node.
//!
//! What other suites already cover is not repeated here: `..` out of the root
//! and plain writes to a read-only root or mount (ctr.rs), a guest touching
//! memory past its cgroup limit being OOM-killed (ctr.rs, cri.rs), SIGTERM
//! under a CPU quota (cri.rs), SIGKILL latency without one (kill_latency.rs),
//! a changed cache artifact (ctr.rs) and the cache's unit tests.
//!
//! The figures (throughput, RSS, fd counts) are printed on stderr: run with
//! `-- --nocapture` to see them.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shim_tests::cgroups::Cgroup;
use shim_tests::images::WASM_TEST;
use shim_tests::images::{self, images_dir, Entry, Image};
use shim_tests::procfs::processes_naming;
use shim_tests::{unique_id, Containerd, RUNTIME};

const HOSTILE: &str = "localhost/wasmtime-shim/hostile:latest";
const SECRET: &str = "host only: 5e3c0d1f";

fn containerd() -> Containerd {
    let c = Containerd::start();
    c.import("wasm-test.tar");
    c
}

/// `/wasitest.wasm do STEP -- STEP -- ...`: several checks in one container.
fn each(steps: &[&[&str]]) -> Vec<String> {
    let mut argv = vec!["/wasitest.wasm".to_string(), "do".to_string()];
    for (n, step) in steps.iter().enumerate() {
        if n > 0 {
            argv.push("--".into());
        }
        argv.extend(step.iter().map(|s| s.to_string()));
    }
    argv
}

/// Each step's output and status, from the "=> STATUS" line `do` prints
/// after it.
fn results(stdout: &str) -> Vec<(String, i32)> {
    let mut results = Vec::new();
    let mut output = String::new();
    for line in stdout.lines() {
        match line.strip_prefix("=> ") {
            Some(status) => {
                results.push((std::mem::take(&mut output), status.parse().unwrap()));
            }
            None => {
                output.push_str(line);
                output.push('\n');
            }
        }
    }
    results
}

/// Runs `steps` in one container and checks each against its expectation:
/// `Ok(text)`, it succeeds and prints `text`; `Err(text)`, it fails with
/// `text` (an errno's message) in its output. Returns the outputs.
fn run_steps(
    c: &Containerd,
    name: &str,
    image: &str,
    flags: &[&str],
    steps: &[(&[&str], Result<&str, &str>)],
) -> Vec<String> {
    let argv = each(&steps.iter().map(|(s, _)| *s).collect::<Vec<_>>());
    let id = unique_id(name);
    let out = c.run(
        &id,
        image,
        flags,
        &argv.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let got = results(&out.stdout);
    assert_eq!(got.len(), steps.len(), "{out:?}");
    for ((step, expected), (output, status)) in steps.iter().zip(&got) {
        eprintln!(
            "  {name}: {} -> {status}: {}",
            step.join(" "),
            output.trim()
        );
        match expected {
            Ok(text) => assert!(
                *status == 0 && output.contains(text),
                "{step:?} should succeed with {text:?}: {output:?}"
            ),
            Err(text) => assert!(
                *status != 0 && output.contains(text),
                "{step:?} should fail with {text:?}: {output:?}"
            ),
        }
    }
    assert!(!out.stdout.contains(SECRET), "the secret leaked: {out:?}");
    c.assert_clean(&[&id]);
    got.into_iter().map(|(o, _)| o).collect()
}

const EPERM: &str = "Operation not permitted";
const ENOENT: &str = "No such file or directory";

// --- an image of our own: symlinks, precompiled code ------------------------

/// A regular file of the hostile image.
fn file(path: &str, bytes: Vec<u8>, mode: u32) -> Entry {
    Entry::File {
        path: path.into(),
        bytes,
        mode,
    }
}

/// A symlink of the hostile image, to `target` as given.
fn symlink(path: &str, target: impl Into<String>) -> Entry {
    Entry::Symlink {
        path: path.into(),
        target: target.into(),
    }
}

/// Builds the image `HOSTILE` (one layer of `entries`, run as `entrypoint`)
/// with wasm-image-builder, which unlike `make images` stores symlinks and
/// file modes as given, and imports it.
fn import_hostile_image(c: &Containerd, entrypoint: &str, entries: Vec<Entry>) {
    let mut image = Image::new(HOSTILE);
    image.entrypoint = vec![entrypoint.to_string()];
    image.entries = entries;
    let tarball = c.dir().join("hostile.tar");
    images::write(&image, &tarball);
    let out = c.ctr(&["images", "import", tarball.to_str().unwrap()]);
    assert_eq!(out.code, 0, "import {HOSTILE}: {out:?}");
}

fn wasitest() -> Vec<u8> {
    std::fs::read(images_dir().join("wasitest.wasm")).expect("run `make images`")
}

// --- escaping the root --------------------------------------------------------

/// A secret on the host, outside every rootfs, and symlinks to it planted in
/// the image and in a bind-mounted host directory (absolute, relative, to
/// its directory): the guest reads none of them, and cannot make links of
/// its own that would.
#[test]
fn symlinks_and_links_never_lead_the_guest_outside_its_root() {
    let c = containerd();
    let secret = c.dir().join("host-secret.txt");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let secret_path = secret.to_str().unwrap();
    let deep = format!("../../../../../../../..{secret_path}");
    import_hostile_image(
        &c,
        "/wasitest.wasm",
        vec![
            file("/wasitest.wasm", wasitest(), 0o755),
            file("/data/hello.txt", b"hello\n".to_vec(), 0o644),
            symlink("/data/abs", secret_path),
            symlink("/data/rel", deep.clone()),
            symlink("/data/hostdir", c.dir().display().to_string()),
            symlink("/data/up", "../.."),
        ],
    );
    // Planted on the host side of a read-only bind mount. On the host,
    // `rel` and `up/host-secret.txt` are the secret.
    let volume = c.dir().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::os::unix::fs::symlink(&secret, volume.join("abs")).unwrap();
    std::os::unix::fs::symlink("../host-secret.txt", volume.join("rel")).unwrap();
    std::os::unix::fs::symlink("..", volume.join("up")).unwrap();
    // A hard link is the file itself, not a path: a host that links a file
    // into a volume shares that file, and the guest reads it. What matters is
    // that the guest cannot make one (below).
    let shared = c.dir().join("shared-by-the-host.txt");
    std::fs::write(&shared, "shared by the host\n").unwrap();
    std::fs::hard_link(&shared, volume.join("hardlink")).unwrap();
    let rw = c.dir().join("rw");
    std::fs::create_dir(&rw).unwrap();
    let mounts = [
        format!(
            "type=bind,src={},dst=/mnt,options=rbind:ro",
            volume.display()
        ),
        format!("type=bind,src={},dst=/rw,options=rbind:rw", rw.display()),
    ];
    let flags = ["--mount", &mounts[0], "--mount", &mounts[1]];
    let up_secret = format!("/data/up{secret_path}");
    let mnt_dotdot = "/mnt/../host-secret.txt";
    run_steps(
        &c,
        "escape",
        HOSTILE,
        &flags,
        &[
            (&["cat", "/data/hello.txt"], Ok("hello")),
            // Planted in the image.
            (&["cat", "/data/abs"], Err(EPERM)),
            (&["cat", "/data/rel"], Err(EPERM)),
            (&["cat", "/data/hostdir/host-secret.txt"], Err(EPERM)),
            (&["cat", &up_secret], Err(EPERM)),
            // Planted in the bind-mounted host directory.
            (&["cat", "/mnt/abs"], Err(EPERM)),
            (&["cat", "/mnt/rel"], Err(EPERM)),
            (&["cat", "/mnt/up/host-secret.txt"], Err(EPERM)),
            (&["cat", mnt_dotdot], Err(EPERM)),
            (&["cat", "/mnt/hardlink"], Ok("shared by the host")),
            // Made by the guest in a writable volume.
            (&["symlink", secret_path, "/rw/abs"], Err(EPERM)),
            (&["symlink", "../host-secret.txt", "/rw/rel"], Ok("ok")),
            // /rw is writable like the root, so it is no preopen of its own
            // but a directory of the root's: the link resolves inside the
            // container's root, where there is no such file.
            (&["cat", "/rw/rel"], Err(ENOENT)),
            (&["link", mnt_dotdot, "/rw/hard1"], Err(EPERM)),
            (&["link", secret_path, "/rw/hard2"], Err(ENOENT)),
            (&["link", "/mnt/hardlink", "/rw/hard3"], Err(EPERM)),
            (&["link", "/mnt/rel", "/rw/hard4"], Err(EPERM)),
            (&["rename", "/mnt/hardlink", "/rw/moved"], Err(EPERM)),
        ],
    );
    // Narrowed to the volumes, the rest of the container's root is out of
    // reach too, by name or by a link into it.
    let narrowed = "wasmtime.containerd.io/preopens=/mnt,/rw";
    run_steps(
        &c,
        "narrowed",
        HOSTILE,
        &[&flags[..], &["--annotation", narrowed]].concat(),
        &[
            (
                &["cat", "/data/hello.txt"],
                Err("Capabilities insufficient"),
            ),
            (&["symlink", "../data/hello.txt", "/rw/in-root"], Ok("ok")),
            (&["cat", "/rw/in-root"], Err(EPERM)),
            (&["cat", "/rw/rel"], Err(EPERM)),
            (&["cat", "/mnt/up/data/hello.txt"], Err(EPERM)),
            (
                &["link", "/data/hello.txt", "/rw/hard"],
                Err("Capabilities insufficient"),
            ),
        ],
    );
    std::fs::remove_file(rw.join("in-root")).unwrap();
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        format!("{SECRET}\n")
    );
    assert!(volume.join("hardlink").exists());
    // Only the relative symlink was made. On the host it points at the
    // secret: a host process following links in a volume a container wrote
    // is exposed to that under any runtime (runc's containers can make any
    // link at all), not only this one.
    let made: Vec<String> = std::fs::read_dir(&rw)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(made, ["rel"], "the guest made only /rw/rel");
    eprintln!(
        "  the guest's /rw/rel on the host: -> {}",
        std::fs::read_link(rw.join("rel")).unwrap().display()
    );
}

/// A read-only root and a read-only mount hold against writes through
/// symlinks, hard links, renames and unlinks; and where WASI's own checks
/// would let a write through (a path through the writable root preopen
/// into a read-only mount), the kernel refuses it.
#[test]
fn read_only_files_stay_unwritable_through_links_and_renames() {
    let c = containerd();
    let ro = c.dir().join("ro");
    let rw = c.dir().join("rw");
    std::fs::create_dir(&ro).unwrap();
    std::fs::create_dir(&rw).unwrap();
    std::fs::write(ro.join("file"), "original\n").unwrap();
    for (link, target) in [
        ("abs", "/ro/file"),
        ("rel", "../ro/file"),
        ("rootabs", "/data/hello.txt"),
        ("rootrel", "../data/hello.txt"),
    ] {
        std::os::unix::fs::symlink(target, rw.join(link)).unwrap();
    }
    let mounts = [
        format!("type=bind,src={},dst=/ro,options=rbind:ro", ro.display()),
        format!("type=bind,src={},dst=/rw,options=rbind:rw", rw.display()),
    ];
    let image_text = "hello from a file in the image";
    run_steps(
        &c,
        "rolinks",
        WASM_TEST,
        &["--read-only", "--mount", &mounts[0], "--mount", &mounts[1]],
        &[
            // Writes through symlinks planted in the writable volume.
            (&["write", "/rw/abs"], Err(EPERM)),
            (&["write", "/rw/rel"], Err(EPERM)),
            (&["write", "/rw/rootabs"], Err(EPERM)),
            (&["write", "/rw/rootrel"], Err(EPERM)),
            // Through links and renames into the writable volume.
            (&["link", "/ro/file", "/rw/hard"], Err(EPERM)),
            (&["link", "/data/hello.txt", "/rw/hard2"], Err(EPERM)),
            (&["rename", "/ro/file", "/rw/moved"], Err(EPERM)),
            (&["rename", "/data/hello.txt", "/rw/moved2"], Err(EPERM)),
            (&["unlink", "/ro/file"], Err(EPERM)),
            (&["unlink", "/data/hello.txt"], Err(EPERM)),
            (&["write", "/data/hello.txt"], Err(EPERM)),
            (&["write", "/rw/../data/new"], Err(EPERM)),
            (&["symlink", "/ro/file", "/rw/newabs"], Err(EPERM)),
            (&["symlink", "../ro/file", "/rw/newrel"], Ok("ok")),
            (&["write", "/rw/newrel"], Err(EPERM)),
            // The volume is writable, and links work inside it.
            (&["write", "/rw/ok"], Ok("wrote /rw/ok")),
            (&["link", "/rw/ok", "/rw/ok2"], Ok("ok")),
            (&["rename", "/rw/ok2", "/ro/ok3"], Err(EPERM)),
            (&["rename", "/rw/ok2", "/data/ok3"], Err(EPERM)),
            (&["link", "/rw/ok", "/ro/ok4"], Err(EPERM)),
            (&["cat", "/ro/file"], Ok("original")),
            (&["cat", "/data/hello.txt"], Ok(image_text)),
        ],
    );
    // A writable root: `/./ro/file` is resolved in the root's (writable)
    // preopen, not in /ro's; the read-only bind mount refuses it (wasmtime
    // reports the kernel's EROFS as EIO).
    const EIO: &str = "I/O error";
    run_steps(
        &c,
        "robackstop",
        WASM_TEST,
        &["--mount", &mounts[0]],
        &[
            (&["write", "/./ro/file"], Err(EIO)),
            (&["symlink", "ro/file", "/lnk"], Ok("ok")),
            (&["write", "/lnk"], Err(EIO)),
            (&["link", "/./ro/file", "/hard"], Err(EIO)),
            (&["rename", "/./ro/file", "/moved"], Err(EIO)),
            (&["unlink", "/./ro/file"], Err(EIO)),
            (&["cat", "/./ro/file"], Ok("original")),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(ro.join("file")).unwrap(),
        "original\n"
    );
    let mut left: Vec<String> = std::fs::read_dir(&ro)
        .unwrap()
        .chain(std::fs::read_dir(&rw).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["abs", "file", "newrel", "ok", "ok2", "rel", "rootabs", "rootrel"]
    );
}

// --- exhausting memory, stack and CPU -------------------------------------------

/// `memory.grow` past the container's memory limit fails inside the guest
/// (the engine's store limit), long before the cgroup's OOM killer; without
/// a limit, at wasm32's 4 GiB. (A guest that touches memory past its cgroup
/// limit is OOM-killed with TaskOOM: ctr.rs and cri.rs.)
#[test]
fn memory_growth_past_the_limit_fails_inside_the_guest() {
    let c = containerd();
    let limit = (64u64 << 20).to_string();
    let id = unique_id("grow");
    let out = c.run(
        &id,
        WASM_TEST,
        &["--memory-limit", &limit],
        &["/wasitest.wasm", "grow", "1024"],
    );
    eprintln!("  64 MiB limit: {}", out.stdout.trim());
    assert_eq!(out.code, 1, "{out:?}");
    let mib: u32 = out
        .stdout
        .strip_prefix("memory.grow failed after ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!((32..64).contains(&mib), "{out:?}");
    c.assert_clean(&[&id]);

    // No limit: the engine stops it at 4 GiB (never touched, so never resident).
    let id = unique_id("grow4g");
    let out = c.run(&id, WASM_TEST, &[], &["/wasitest.wasm", "grow", "5000"]);
    eprintln!("  no limit: {}", out.stdout.trim());
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        ["(memory is 4095 MiB)\n", "(memory is 4096 MiB)\n"]
            .iter()
            .any(|end| out.stdout.ends_with(end)),
        "stopped at wasm32's 65536 pages: {out:?}"
    );
    c.assert_clean(&[&id]);
}

#[test]
fn infinite_recursion_traps_with_a_clear_message() {
    let c = containerd();
    let id = unique_id("recurse");
    let out = c.run(&id, WASM_TEST, &[], &["/wasitest.wasm", "recurse"]);
    eprintln!(
        "  exit {}, stderr {} bytes, ends with: {:?}",
        out.code,
        out.stderr.len(),
        out.stderr.trim_end().lines().last()
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (134, "recursing\n"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("wasm trap: call stack exhausted"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("recurse_step"),
        "with a backtrace: {out:?}"
    );
    // wasmtime cuts the backtrace short: thousands of frames are not printed.
    assert!(
        out.stderr.len() < 4096,
        "{} bytes of stderr",
        out.stderr.len()
    );
    let log = c.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&id) && l.contains("exited with status 134")),
        "{log}"
    );
    c.assert_clean(&[&id]);
}

/// CPU time used (ns) and the number of throttled periods of `pid`'s cgroup.
fn cpu_usage(pid: i32) -> (u64, u64) {
    Cgroup::of_process(pid)
        .cpu_usage()
        .unwrap_or_else(|| panic!("the cpu cgroup of {pid}"))
}

/// Waits up to `patience` for `child` to exit.
fn wait_for(child: &mut Child, patience: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A guest spinning under a 10% CPU quota is held to it by the cgroup and
/// still dies at once on SIGKILL (137), with the quota making no difference.
#[test]
fn a_looping_guest_under_a_cpu_quota_is_throttled_and_dies_on_sigkill() {
    let c = containerd();
    let id = unique_id("throttled");
    let argv = c.run_args(
        &id,
        WASM_TEST,
        &["--cpu-quota", "10000", "--cpu-period", "100000"],
        &["/wasitest.wasm", "loop"],
    );
    let mut ctr = c
        .ctr_command(&argv.iter().map(String::as_str).collect::<Vec<_>>())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr run");
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        if let Some(pid) = c.task_pid(&id).filter(|&p| p > 0) {
            break pid;
        }
        assert!(Instant::now() < deadline, "{id} never ran");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));
    let (used0, throttled0) = cpu_usage(pid);
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let (used1, throttled1) = cpu_usage(pid);
    let share = (used1 - used0) as f64 / window.elapsed().as_nanos() as f64;
    eprintln!(
        "  quota 10%: used {:.1}% of a CPU, {} periods throttled in the window",
        share * 100.0,
        throttled1 - throttled0
    );
    assert!(share < 0.2, "used {:.1}% of a CPU", share * 100.0);
    assert!(throttled1 > throttled0, "never throttled");

    let out = c.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    let killed = Instant::now();
    // Gone (or a zombie) once the kill request has returned, as without a
    // quota (kill_latency.rs): a throttled guest is not left to its quota.
    let dead = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    };
    while !dead(pid) && killed.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let gone = killed.elapsed();
    let status = wait_for(&mut ctr, Duration::from_secs(10));
    let took = killed.elapsed();
    if status.is_none() {
        let _ = ctr.kill();
        let _ = ctr.wait();
    }
    let mut stdout = String::new();
    if let Some(mut s) = ctr.stdout.take() {
        let _ = s.read_to_string(&mut stdout);
    }
    eprintln!("  SIGKILL: the guest gone after {gone:?}, ctr's exit after {took:?}");
    assert_eq!(status.and_then(|s| s.code()), Some(137), "{stdout}");
    assert!(
        gone < Duration::from_millis(500),
        "the guest lived {gone:?}"
    );
    assert!(took < Duration::from_secs(5), "ctr took {took:?}");
    assert_eq!(stdout, "looping\n");
    c.assert_clean(&[&id]);
}

// --- flooding output, exhausting descriptors ----------------------------------

/// The processes of `c`'s shims by pid: (comm, VmRSS in KiB, open fds).
/// The shim server is `containerd-shim`, its zygote `shim-zygote`, a wasm
/// container's process `wasm-container`.
fn shim_processes(c: &Containerd) -> Vec<(i32, String, u64, usize)> {
    processes_naming(&c.socket().display().to_string())
        .into_iter()
        .filter_map(|(pid, _)| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let comm = comm.trim().to_string();
            if !["containerd-shim", "shim-zygote", "wasm-container"].contains(&comm.as_str()) {
                return None;
            }
            let rss = shim_tests::procfs::status_kib(pid, "VmRSS")?;
            Some((pid, comm, rss, shim_tests::procfs::open_fds(pid)))
        })
        .collect()
}

fn shim_server(c: &Containerd) -> (i32, u64, usize) {
    let servers: Vec<_> = shim_processes(c)
        .into_iter()
        .filter(|(_, comm, _, _)| comm == "containerd-shim")
        .collect();
    assert_eq!(servers.len(), 1, "one shim: {servers:?}");
    let (pid, _, rss, fds) = servers[0];
    (pid, rss, fds)
}

/// Samples the shim processes every 20 ms until `stop`; the largest VmRSS
/// (KiB) seen per comm.
fn sample_rss(
    c: &Containerd,
    stop: &std::sync::atomic::AtomicBool,
) -> std::collections::BTreeMap<String, u64> {
    let mut max = std::collections::BTreeMap::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for (_, comm, rss, _) in shim_processes(c) {
            let seen = max.entry(comm).or_insert(0);
            *seen = rss.max(*seen);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    max
}

const LINE: &[u8; 64] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\n";

/// Reads `from` to its end, counting bytes and checking the flood's
/// pattern every 4093 bytes (a check at every byte would dominate a debug
/// build's time); the byte count.
fn count_flood(mut from: impl Read) -> u64 {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("reading the flood: {e}"),
        };
        for i in (0..n).step_by(4093).chain([n - 1]) {
            let at = total + i as u64;
            assert_eq!(buf[i], LINE[(at % 64) as usize], "byte {at} of the flood");
        }
        total += n as u64;
    }
}

/// 1 GB of stdout streams through to `ctr` while the shim's memory stays
/// flat: the guest writes into containerd's fifo itself, nothing is copied
/// or buffered in the shim. Then the same for a detached task logging to a
/// file (`--log-uri file://`).
#[test]
fn a_gigabyte_of_output_streams_out_and_the_shim_stays_flat() {
    const FLOOD: u64 = 1_000_000_000;
    const GROWTH_KIB: u64 = 50 << 10;
    let c = containerd();
    let (annotation, sandbox) = c.start_pod();
    let (shim, rss_before, _) = shim_server(&c);

    let id = unique_id("flood");
    let argv = c.run_args(
        &id,
        WASM_TEST,
        &["--annotation", &annotation],
        &["/wasitest.wasm", "flood", &FLOOD.to_string()],
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (received, status, stderr, took, max_rss) = std::thread::scope(|s| {
        let sampler = s.spawn(|| sample_rss(&c, &stop));
        let started = Instant::now();
        let mut ctr = c
            .ctr_command(&argv.iter().map(String::as_str).collect::<Vec<_>>())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ctr run");
        let mut err = ctr.stderr.take().unwrap();
        let stderr = s.spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        let received = count_flood(ctr.stdout.take().unwrap());
        let took = started.elapsed();
        let status = ctr.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (
            received,
            status,
            stderr.join().unwrap(),
            took,
            sampler.join().unwrap(),
        )
    });
    let (_, rss_after, _) = shim_server(&c);
    eprintln!(
        "  {FLOOD} bytes through ctr in {took:.2?}: {:.0} MB/s; shim {shim} VmRSS {} KiB \
         before, {} KiB at most during, {} KiB after; largest RSS per process: {max_rss:?}",
        received as f64 / took.as_secs_f64() / 1e6,
        rss_before,
        max_rss["containerd-shim"],
        rss_after
    );
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(received, FLOOD, "{stderr}");
    assert!(
        stderr.contains(&format!("flooded {FLOOD} bytes")),
        "{stderr}"
    );
    assert!(
        max_rss["containerd-shim"] < rss_before + GROWTH_KIB,
        "the shim grew from {rss_before} KiB to {} KiB",
        max_rss["containerd-shim"]
    );
    assert!(
        max_rss
            .get("wasm-container")
            .is_some_and(|&r| r < 100 << 10),
        "the guest's process: {max_rss:?}"
    );

    // Detached, into a log file: the guest appends to it directly.
    const LOGGED: u64 = 256 << 20;
    let log = c.dir().join("flood.log");
    let id = unique_id("logged");
    let log_uri = format!("file://{}", log.display());
    let out = c.ctr(&[
        "run",
        "-d",
        "--log-uri",
        &log_uri,
        "--annotation",
        &annotation,
        "--runtime",
        RUNTIME,
        WASM_TEST,
        &id,
        "/wasitest.wasm",
        "flood",
        &LOGGED.to_string(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (took, max_rss) = std::thread::scope(|s| {
        let sampler = s.spawn(|| sample_rss(&c, &stop));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        while !c
            .ctr(&["task", "ls"])
            .stdout
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("STOPPED"))
        {
            assert!(Instant::now() < deadline, "{id} never finished");
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (took, sampler.join().unwrap())
    });
    let out = c.ctr(&["task", "rm", &id]);
    assert_eq!(out.code, 0, "exit 0: {out:?}");
    c.ctr(&["containers", "rm", &id]);
    let size = std::fs::metadata(&log).expect("the log file").len();
    // stdout's bytes, then stderr's line, in the same file.
    let mut logged = std::fs::File::open(&log).unwrap().take(LOGGED);
    assert_eq!(count_flood(&mut logged), LOGGED);
    let mut tail = String::new();
    logged.into_inner().read_to_string(&mut tail).unwrap();
    eprintln!(
        "  detached, {LOGGED} bytes into a log file in {took:.2?}: {:.0} MB/s; largest RSS: \
         {max_rss:?}",
        LOGGED as f64 / took.as_secs_f64() / 1e6
    );
    assert_eq!(
        tail,
        format!("flooded {LOGGED} bytes\n"),
        "{size} bytes in the log"
    );
    assert!(max_rss["containerd-shim"] < rss_before + GROWTH_KIB);
    std::fs::remove_file(&log).unwrap();

    c.remove(&sandbox);
    c.assert_clean(&[&sandbox]);
}

/// 5000 files opened and never closed: the guest meets its open-files limit
/// (RLIMIT_NOFILE of the spec, 1024 under ctr) as a failed open, recovers
/// once it closes them, and its pod's shim holds not one descriptor more.
#[test]
fn thousands_of_open_files_fail_inside_the_guest_and_leak_nothing() {
    let c = containerd();
    let (annotation, sandbox) = c.start_pod();
    let fds = |c: &Containerd| {
        let mut by_comm: Vec<(String, usize)> = shim_processes(c)
            .into_iter()
            .filter(|(_, comm, _, _)| comm != "wasm-container")
            .map(|(_, comm, _, fds)| (comm, fds))
            .collect();
        by_comm.sort();
        by_comm
    };
    // One task first: whatever the shim opens once is open before counting.
    // A task's stdin fifo is closed up to a second after its delete (the
    // forwarder's poll interval): counts are taken once that has passed.
    let out = c.run(
        &unique_id("first"),
        WASM_TEST,
        &["--annotation", &annotation],
        &["/wasitest.wasm", "hello"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    std::thread::sleep(Duration::from_millis(1500));
    let before = fds(&c);
    let mut ids = vec![sandbox.clone()];
    for n in 0..3 {
        let id = unique_id(&format!("openmany{n}"));
        let out = c.run(
            &id,
            WASM_TEST,
            &["--annotation", &annotation],
            &["/wasitest.wasm", "openmany", "5000", "/data/hello.txt"],
        );
        eprintln!("  run {n}: {}", out.stdout.trim().replace('\n', "; "));
        assert_eq!(out.code, 0, "{out:?}");
        let opened: u32 = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("opened ")?.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{out:?}"));
        // ctr's spec sets RLIMIT_NOFILE to 1024.
        assert!((900..1024).contains(&opened), "{out:?}");
        assert!(out.stdout.contains("open #"), "a failed open: {out:?}");
        assert!(
            out.stdout.contains("after closing them: open again"),
            "{out:?}"
        );
        ids.push(id);
    }
    let right_after = fds(&c);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = right_after.clone();
    while after != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = fds(&c);
    }
    eprintln!(
        "  open fds of the pod's shim processes: before {before:?}, right after the last \
         task {right_after:?}, then {after:?}"
    );
    assert_eq!(before, after, "descriptors left open in the shim");
    let out = c.run(
        &unique_id("after"),
        WASM_TEST,
        &["--annotation", &annotation],
        &["/wasitest.wasm", "hello"],
    );
    assert_eq!((out.code, out.stdout.as_str()), (0, "hello from wasm\n"));
    c.remove(&sandbox);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    c.assert_clean(&ids);
}

// --- native code posing as a guest -------------------------------------------

/// The node cache's artifact for `/wasitest.wasm`, after a run: (its path,
/// its tag's path).
fn cached_artifact(c: &Containerd) -> (PathBuf, PathBuf) {
    let code = c.dir().join("cache/code");
    let artifacts: Vec<PathBuf> = std::fs::read_dir(&code)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    let artifact = artifacts[0].clone();
    let tag = artifact.with_extension("tag");
    (artifact, tag)
}

/// The header of a 64-bit little-endian executable for aarch64 (EM_AARCH64).
fn arm64_elf() -> Vec<u8> {
    let mut elf = b"\x7fELF\x02\x01\x01\0".to_vec();
    elf.resize(64, 0);
    elf[16] = 2; // ET_EXEC
    elf[18] = 183; // EM_AARCH64
    elf
}

/// A `.cwasm` (wasmtime's precompiled native code; here a genuine one, which
/// this very engine would accept) as an image's entrypoint is refused at
/// create, saying what it is, whatever its mode: never deserialized, never
/// executed.
#[test]
fn a_precompiled_artifact_in_an_image_is_refused() {
    let c = containerd();
    let out = c.run(&unique_id("compile"), WASM_TEST, &[], &["/wasitest.wasm"]);
    assert_eq!(out.code, 0, "{out:?}");
    let (artifact, _) = cached_artifact(&c);
    let cwasm = std::fs::read(&artifact).unwrap();
    assert!(cwasm.starts_with(b"\x7fELF"));
    import_hostile_image(
        &c,
        "/app.cwasm",
        vec![
            file("/app.cwasm", cwasm.clone(), 0o755),
            file("/app.wasm", cwasm.clone(), 0o644),
            file("/wasitest.wasm", wasitest(), 0o755),
            file(
                "/fake-elf",
                b"\x7fELF\x02\x01\x01\0not a program".to_vec(),
                0o755,
            ),
            file("/arm64-elf", arm64_elf(), 0o755),
        ],
    );
    for (name, args) in [
        ("cwasm", &[][..]),
        ("cwasm644", &["/app.wasm", "hello"][..]),
    ] {
        let id = unique_id(name);
        let out = c.run(&id, HOSTILE, &[], args);
        let shown = args.first().unwrap_or(&"/app.cwasm");
        eprintln!("  {shown}: exit {}: {}", out.code, out.stderr.trim());
        assert_ne!(out.code, 0, "{out:?}");
        for needle in [
            format!("container {id}"),
            format!("{shown} is a precompiled wasmtime artifact (.cwasm)"),
            "never loaded".to_string(),
        ] {
            assert!(out.stderr.contains(&needle), "{needle:?} not in {out:?}");
        }
        assert!(!c.log().contains(&format!("{shown}: a native executable")));
        assert!(!c.log().contains(&format!("{shown}: code mapped")));
        c.ctr(&["containers", "rm", &id]);
        c.assert_clean(&[&id]);
    }
    // Any other ELF is a native program, run as a Linux container; one the
    // kernel would not execute is refused at create, saying why.
    for (name, path, reason) in [
        ("fakeelf", "/fake-elf", "is not an executable"),
        ("arm64", "/arm64-elf", "built for ELF machine 183"),
    ] {
        let id = unique_id(name);
        let out = c.run(&id, HOSTILE, &[], &[path]);
        eprintln!("  {path}: exit {}: {}", out.code, out.stderr.trim());
        assert_ne!(out.code, 0, "{out:?}");
        let expected = format!("{path} is an ELF file this node cannot run");
        assert!(out.stderr.contains(&expected), "{out:?}");
        assert!(out.stderr.contains(reason), "{out:?}");
        c.ctr(&["containers", "rm", &id]);
        c.assert_clean(&[&id]);
    }
    // The same image's wasm runs.
    let out = c.run(&unique_id("wasm"), HOSTILE, &[], &["/wasitest.wasm"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "hello from wasm\n"));
}

/// Files planted in the node's cache by someone other than this node's shim
/// (ctr.rs covers an artifact changed in place): a genuine artifact and tag
/// of another node, for other code under this guest's name; an artifact
/// without a tag; a symlink; a file of another owner. None is loaded: the
/// guest always runs its own code.
#[test]
fn artifacts_planted_in_the_node_cache_are_never_loaded() {
    let c = containerd();
    let hello = |c: &Containerd| {
        let out = c.run(&unique_id("planted"), WASM_TEST, &[], &["/wasitest.wasm"]);
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (0, "hello from wasm\n"),
            "{out:?}"
        );
    };
    hello(&c);
    let (artifact, tag) = cached_artifact(&c);
    // Another node (its own key) compiles other code: a guest that traps.
    let other = containerd();
    let out = other.run(&unique_id("other"), WASM_TEST, &[], &["/trap.wasm"]);
    assert_eq!(out.code, 134, "{out:?}");
    let (foreign, foreign_tag) = cached_artifact(&other);
    let foreign = std::fs::read(foreign).unwrap();
    let foreign_tag = std::fs::read(foreign_tag).unwrap();
    drop(other);
    let count = |needle: &str| c.log().matches(needle).count();
    let replace = |with: Option<&[u8]>, path: &Path| {
        let _ = std::fs::remove_file(path);
        if let Some(bytes) = with {
            std::fs::write(path, bytes).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400)).unwrap();
        }
    };
    let refused = count("refusing");
    let degraded = count("compiling without it");

    // Another node's genuine artifact and tag, under this guest's name.
    replace(Some(&foreign), &artifact);
    replace(Some(&foreign_tag), &tag);
    hello(&c);
    assert_eq!(count("refusing"), refused + 1, "{}", c.log());
    assert!(c.log().contains("its tag does not match"));
    // The same artifact without a tag.
    replace(Some(&foreign), &artifact);
    replace(None, &tag);
    hello(&c);
    assert_eq!(count("refusing"), refused + 2, "{}", c.log());
    assert!(c.log().contains("(no tag)"));

    // A symlink to it, with a tag: never followed.
    let elsewhere = c.dir().join("elsewhere.cwasm");
    std::fs::write(&elsewhere, &foreign).unwrap();
    replace(None, &artifact);
    replace(Some(&foreign_tag), &tag);
    std::os::unix::fs::symlink(&elsewhere, &artifact).unwrap();
    hello(&c);
    assert_eq!(count("compiling without it"), degraded + 1, "{}", c.log());
    // Another user's file: not the shim's, not loaded.
    replace(Some(&foreign), &artifact);
    let chown = Command::new("chown")
        .args(["65534:65534", artifact.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(chown.success());
    hello(&c);
    assert_eq!(count("compiling without it"), degraded + 2, "{}", c.log());
    assert!(c.log().contains("is owned by uid 65534"));
    eprintln!(
        "  planted: {} refused by their tag, {} runs without the cache",
        count("refusing") - refused,
        count("compiling without it") - degraded
    );
    // Cleared by root, the cache works again.
    replace(None, &artifact);
    replace(None, &tag);
    let mapped = count("/wasitest.wasm: code mapped from the node's cache");
    hello(&c);
    hello(&c);
    assert_eq!(
        count("/wasitest.wasm: code mapped from the node's cache"),
        mapped + 1
    );
}
