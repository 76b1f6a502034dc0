//! The sandbox holds: a guest that tries everything reaches nothing but what
//! the spec grants.
//!
//! Attackers built from C in images/: `escape.wasm` (images/escape/escape.c),
//! a wasm guest that tries /proc, /sys, /dev, `..` walks towards a file planted
//! on the host, and links to /proc/self/mem; `probe` (images/native/probe.c), a
//! native sidecar that attacks its pod's wasm containers through /proc in a
//! pod sharing its PID namespace. Both print `REACHED <what>` for every attempt
//! that got somewhere; here there must be none. And from the host: what the
//! container's process holds (descriptors, the code cache's key in its
//! memory), and that execs run under the container's seccomp filter with its
//! capabilities.
//!
//! What reached and what was denied is printed on stderr: run with
//! `-- --nocapture` to see it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{ContainerConfig, SecurityProfile};
use shim_tests::cri::{share_pid_namespace, CriNode};
use shim_tests::images::sha256_file;
use shim_tests::images::WASM_TEST;
use shim_tests::leaks::dir_names;
use shim_tests::{shim_binary, unique_id, Containerd, NAMESPACE, RUNTIME};

fn containerd() -> Containerd {
    let c = Containerd::start();
    c.import("wasm-test.tar");
    c
}

/// A marker no file of the machine holds by chance.
fn marker(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{what}-marker-{}-{nanos:x}", std::process::id())
}

/// The `REACHED` lines of an attacker's output.
fn reached(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.starts_with("REACHED"))
        .map(str::to_string)
        .collect()
}

/// Prints an attacker's results: what it reached, and how much was denied.
fn show(name: &str, output: &str) {
    let denied = output.lines().filter(|l| l.starts_with("denied")).count();
    let reached = reached(output);
    eprintln!(
        "  {name}: {} attempts reached, {denied} denied",
        reached.len()
    );
    for line in reached {
        eprintln!("    {line}");
    }
}

/// `Seccomp`, `NoNewPrivs`, `CapEff` and `CapBnd` of a `/proc/PID/status`
/// text.
fn security_fields(status: &str) -> BTreeMap<String, String> {
    status
        .lines()
        .filter_map(|l| {
            let (key, value) = l.split_once(':')?;
            ["Seccomp", "NoNewPrivs", "CapEff", "CapBnd"]
                .contains(&key)
                .then(|| (key.to_string(), value.trim().to_string()))
        })
        .collect()
}

/// How an exec's confinement (`of_exec`) differs from its container
/// init's, which must be under a seccomp filter.
fn unlike_its_init(
    exec: &str,
    of_exec: &BTreeMap<String, String>,
    init: &str,
    of_init: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if of_init["Seccomp"] != "2" {
        problems.push(format!("{init} has Seccomp {}", of_init["Seccomp"]));
    }
    for (field, value) in of_init {
        if of_exec[field] != *value {
            problems.push(format!(
                "{exec} has {field} {}, {init} {value}",
                of_exec[field]
            ));
        }
    }
    problems
}

fn security_of(pid: i32) -> BTreeMap<String, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let fields = security_fields(&status);
    assert_eq!(fields.len(), 4, "/proc/{pid}/status: {status}");
    fields
}

/// `ctr run -d` with `extra` flags (e.g. `--seccomp`) before the image.
fn run_detached_with(c: &Containerd, id: &str, extra: &[&str], args: &[&str]) {
    let mut argv = vec!["run", "-d", "--runtime", RUNTIME];
    argv.extend(extra);
    argv.extend([WASM_TEST, id]);
    argv.extend(args);
    let out = c.ctr(&argv);
    assert_eq!(out.code, 0, "ctr run -d {id}: {out:?}");
}

/// The host PIDs `ctr task ps` lists for a task (its init and its execs).
fn task_pids(c: &Containerd, id: &str) -> Vec<i32> {
    c.ctr(&["task", "ps", id])
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

fn bundle(c: &Containerd, id: &str) -> PathBuf {
    c.dir()
        .join("state/io.containerd.runtime.v2.task")
        .join(NAMESPACE)
        .join(id)
}

// --- a wasm guest that tries every way out -----------------------------------

/// `escape.wasm probe` in a container with a writable root, a read-only
/// root, and a writable bind mount of a host directory (under either root).
/// A file with a unique marker is planted on the host next to containerd's
/// root, outside every rootfs. The guest reaches nothing: no REACHED line,
/// the marker never in its output, and afterwards the planted file, the
/// volume, the test directory and the shim binary are as they were. A
/// control run first shows that the guest does find the marker where its
/// grant holds a copy.
#[test]
fn a_guest_that_tries_everything_reaches_nothing() {
    let c = containerd();
    // Once first, so that what a run creates in the test directory (the fifo
    // directory, the code cache) exists before it is listed.
    let out = c.run(
        &unique_id("warm"),
        WASM_TEST,
        &[],
        &["/wasitest.wasm", "hello"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let marker = marker("escape");
    // In the test directory itself: 5 levels of `..` above each rootfs
    // (<dir>/state/io.containerd.runtime.v2.task/default/<id>/rootfs) and one
    // above the volume.
    let planted = c.dir().join("planted-escape.txt");
    fs::write(&planted, &marker).unwrap();
    let planted_arg = planted
        .to_str()
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    let volume = c.dir().join("volume");
    fs::create_dir(&volume).unwrap();
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        volume.display()
    );
    // A volume that holds a copy of the planted file: the control.
    let control = c.dir().join("control");
    fs::create_dir_all(control.join("sub")).unwrap();
    fs::write(control.join("planted-escape.txt"), &marker).unwrap();
    let shim = shim_binary();
    let shim_before = (sha256_file(&shim), identity(&shim));
    let listing_before = dir_names(c.dir());

    // The control: where the grant does hold the file (`..` from a
    // directory of the volume), the guest's walk finds the marker and says
    // so; everywhere else below, the same walk must find nothing.
    let id = unique_id("control");
    let control_mount = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        control.display()
    );
    let out = c.run(
        &id,
        WASM_TEST,
        &["--mount", &control_mount],
        &[
            "/escape.wasm",
            "probe",
            &planted_arg,
            &marker,
            "--",
            "/data/sub",
        ],
    );
    let walks: Vec<String> = reached(&out.stdout)
        .into_iter()
        .filter(|l| l.starts_with("REACHED walk"))
        .collect();
    assert_eq!(
        walks,
        ["REACHED walk /data/sub/../planted-escape.txt"],
        "the control: {out:?}"
    );
    assert!(!out.stdout.contains(&marker), "{out:?}");
    c.assert_clean(&[&id]);

    let variants: [(&str, Vec<&str>, Vec<&str>); 4] = [
        ("writable-root", vec![], vec![]),
        ("read-only-root", vec!["--read-only"], vec![]),
        ("bind-mount", vec!["--mount", &mount], vec!["/data"]),
        (
            "read-only-root-bind-mount",
            vec!["--read-only", "--mount", &mount],
            vec!["/data"],
        ),
    ];
    let mut problems = Vec::new();
    for (name, flags, dirs) in &variants {
        let id = unique_id(name);
        let mut args = vec!["/escape.wasm", "probe", &planted_arg, &marker, "--"];
        args.extend(dirs);
        let out = c.run(&id, WASM_TEST, flags, &args);
        show(name, &out.stdout);
        if out.code != 0 || !out.stdout.lines().any(|l| l == "probe done") {
            problems.push(format!("{name}: the probe did not finish: {out:?}"));
        }
        for line in reached(&out.stdout) {
            problems.push(format!("{name}: {line}"));
        }
        if out.stdout.contains(&marker) || out.stderr.contains(&marker) {
            problems.push(format!("{name}: the planted marker is in the output"));
        }
        c.assert_clean(&[&id]);
    }
    assert_eq!(
        fs::read_to_string(&planted).unwrap(),
        marker,
        "the planted file changed"
    );
    assert_eq!(
        dir_names(&volume),
        Vec::<String>::new(),
        "the guest left files in the volume"
    );
    assert_eq!(
        dir_names(c.dir()),
        listing_before,
        "something new appeared in the test directory"
    );
    // A rebuild replaces the binary (a new inode); a write into it keeps it.
    if identity(&shim) == shim_before.1 {
        assert_eq!(sha256_file(&shim), shim_before.0, "the shim binary changed");
    } else {
        eprintln!(
            "  {} was replaced (rebuilt?) during the test",
            shim.display()
        );
    }
    assert!(
        problems.is_empty(),
        "the guest got out of its sandbox:\n{}",
        problems.join("\n")
    );
}

// --- what the container's process holds --------------------------------------

/// (st_dev, st_ino) of `root` and every directory under it on the same
/// filesystem.
fn directories_under(root: &Path) -> BTreeSet<(u64, u64)> {
    let mut found = BTreeSet::new();
    let Ok(top) = fs::metadata(root) else {
        return found;
    };
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() || meta.dev() != top.dev() {
            continue;
        }
        found.insert((meta.dev(), meta.ino()));
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    found
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A unix socket as `ss` shows it.
struct UnixSocket {
    /// Its address (`*` if none).
    address: String,
    /// The inode of its peer (0 if not connected).
    peer: u64,
    /// The PIDs holding it.
    holders: BTreeSet<i32>,
}

/// The unix sockets `ss` sees in `pid`'s network namespace and the host's,
/// by inode.
fn unix_sockets(pid: i32) -> BTreeMap<u64, UnixSocket> {
    let mut sockets = BTreeMap::new();
    let netns = format!("--net=/proc/{pid}/ns/net");
    for argv in [vec!["nsenter", &netns, "ss", "-xapn"], vec!["ss", "-xapn"]] {
        let out = Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .expect("ss (iproute2)");
        // u_str ESTAB 0 0 * 87311 * 87310 users:(("wasm-container",pid=22211,fd=10))
        for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(Ok(inode)), Some(Ok(peer))) = (
                cols.get(5).map(|c| c.parse::<u64>()),
                cols.get(7).map(|c| c.parse::<u64>()),
            ) else {
                continue;
            };
            let holders = line
                .split("pid=")
                .skip(1)
                .filter_map(|p| p.split(',').next()?.parse().ok())
                .collect();
            sockets.entry(inode).or_insert(UnixSocket {
                address: cols[4].to_string(),
                peer,
                holders,
            });
        }
    }
    sockets
}

/// The descriptors of `pid` that are neither stdio, nor a directory of the
/// container's root, nor an anonymous inode, nor one end of a socket pair
/// whose both ends only `pid` holds, each with what it is.
fn foreign_fds(pid: i32, rootfs: &Path, named: &[(&str, PathBuf)]) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    let sockets = unix_sockets(pid);
    let own_pair = |inode: u64| {
        let only_pid = |inode: u64| {
            sockets
                .get(&inode)
                .is_some_and(|s| s.holders.iter().all(|&h| h == pid))
        };
        sockets
            .get(&inode)
            .is_some_and(|s| s.peer != 0 && only_pid(inode) && only_pid(s.peer))
    };
    let inside = directories_under(rootfs);
    assert!(!inside.is_empty(), "no rootfs at {}", rootfs.display());
    let named: Vec<(&str, (u64, u64))> = named
        .iter()
        .filter_map(|(what, path)| Some((*what, identity(path)?)))
        .collect();
    let mut fds: Vec<(u32, PathBuf)> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
        .collect();
    fds.sort();
    let mut foreign = Vec::new();
    for (n, path) in fds {
        let link = fs::read_link(&path)
            .map(|l| l.display().to_string())
            .unwrap_or_else(|e| format!("(readlink: {e})"));
        let meta = fs::metadata(&path);
        let id = meta.as_ref().ok().map(|m| (m.dev(), m.ino()));
        let is_dir = meta.as_ref().is_ok_and(|m| m.is_dir());
        let verdict = if n <= 2 {
            "stdio"
        } else if link.starts_with("anon_inode:") {
            "anonymous inode"
        } else if link.starts_with("/memfd:") {
            "memfd (no host file)"
        } else if is_dir && id.is_some_and(|id| inside.contains(&id)) {
            "a directory of the container's root"
        } else if link
            .strip_prefix("socket:[")
            .and_then(|l| l.strip_suffix(']')?.parse().ok())
            .is_some_and(own_pair)
        {
            "a socket pair within the process"
        } else {
            ""
        };
        eprintln!(
            "    fd {n} -> {link}{}",
            if verdict.is_empty() {
                String::new()
            } else {
                format!(" ({verdict})")
            }
        );
        if !verdict.is_empty() {
            continue;
        }
        let what = named
            .iter()
            .find(|(_, named)| Some(*named) == id)
            .map(|(what, _)| what.to_string())
            .unwrap_or_else(|| match &meta {
                Ok(m) if m.is_dir() => "a directory outside the container's root".into(),
                Ok(m) if m.is_file() => "a regular file on the host".into(),
                Ok(m) if m.file_type().is_fifo() => "a fifo".into(),
                Ok(m) if m.file_type().is_socket() => {
                    let peer = link
                        .strip_prefix("socket:[")
                        .and_then(|l| l.strip_suffix(']')?.parse::<u64>().ok())
                        .and_then(|inode| sockets.get(&inode));
                    match peer {
                        Some(socket) if socket.peer == 0 => format!(
                            "an unconnected unix socket at {} held by {:?}",
                            socket.address, socket.holders
                        ),
                        Some(socket) => format!(
                            "a unix socket at {} held by {:?}, its peer {} held by {:?}",
                            socket.address,
                            socket.holders,
                            socket.peer,
                            sockets.get(&socket.peer).map(|p| &p.holders)
                        ),
                        None => "a socket (not a unix socket ss sees)".into(),
                    }
                }
                Ok(m) if m.file_type().is_char_device() => "a character device".into(),
                Ok(_) => "something else".into(),
                Err(e) => format!("unreadable ({e})"),
            });
        foreign.push(format!("fd {n} -> {link}: {what}"));
    }
    foreign
}

/// Where in `pid`'s readable memory each of `needles` is: (which needle,
/// address and mapping), and how many bytes were read. Regions over 1 GiB
/// (reservations) and the kernel's [vvar]/[vsyscall] are skipped; so is
/// what cannot be read.
fn find_in_memory(pid: i32, needles: &[&[u8]]) -> (Vec<(usize, String)>, u64) {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/maps: {e}"));
    let mem = fs::File::open(format!("/proc/{pid}/mem"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/mem: {e}"));
    let longest = needles.iter().map(|n| n.len()).max().unwrap_or(0);
    // Which bytes start a needle.
    let mut first = [false; 256];
    for needle in needles {
        first[needle[0] as usize] = true;
    }
    let mut found = Vec::new();
    let mut scanned = 0u64;
    for line in maps.lines() {
        let mut cols = line.split_whitespace();
        let (Some(range), Some(perms)) = (cols.next(), cols.next()) else {
            continue;
        };
        let name = cols.nth(3).unwrap_or("");
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        if !perms.starts_with('r')
            || end - start > 1 << 30
            || name.starts_with("[vvar")
            || name == "[vsyscall]"
        {
            continue;
        }
        const CHUNK: u64 = 4 << 20;
        let mut at = start;
        while at < end {
            let len = (end - at).min(CHUNK + longest as u64) as usize;
            let mut buf = vec![0u8; len];
            let Ok(n) = mem.read_at(&mut buf, at) else {
                break;
            };
            if n == 0 {
                break;
            }
            buf.truncate(n);
            scanned += n as u64;
            // One pass: pages of zeros (most of an idle process) are
            // skipped a word at a time; elsewhere each byte that starts a
            // needle is checked.
            let mut i = 0;
            while i < buf.len().min(CHUNK as usize) {
                if i % 4096 == 0
                    && !first[0]
                    && buf.len() >= i + 4096
                    && buf[i..i + 4096]
                        .chunks_exact(8)
                        .all(|w| u64::from_ne_bytes(w.try_into().unwrap()) == 0)
                {
                    i += 4096;
                    continue;
                }
                if first[buf[i] as usize] {
                    for (which, needle) in needles.iter().enumerate() {
                        if buf[i..].starts_with(needle) {
                            found.push((
                                which,
                                format!("{:#x} ({range} {perms} {name})", at + i as u64),
                            ));
                        }
                    }
                }
                i += 1;
            }
            at += CHUNK;
        }
    }
    (found, scanned)
}

/// What signs the code cache's artifacts, in the forms a process holds it:
/// the key itself, in hex, and HMAC-SHA256's two precomputed states (the
/// SHA-256 state after `key ^ ipad` and after `key ^ opad`: what ring's
/// `hmac::Key` keeps, and all a forger needs), as native (little-endian) and
/// big-endian words.
fn signing_secrets(key: &[u8]) -> Vec<(String, Vec<u8>)> {
    const IV: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut secrets = vec![
        ("the key".to_string(), key.to_vec()),
        (
            "the key in hex".to_string(),
            key.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes(),
        ),
    ];
    for (name, pad) in [("inner", 0x36u8), ("outer", 0x5c)] {
        let mut block = [pad; 64];
        for (b, k) in block.iter_mut().zip(key) {
            *b ^= k;
        }
        let mut state = IV;
        sha2::compress256(&mut state, &[block.into()]);
        secrets.push((
            format!("HMAC's {name} state (little-endian)"),
            state.iter().flat_map(|w| w.to_le_bytes()).collect(),
        ));
        secrets.push((
            format!("HMAC's {name} state (big-endian)"),
            state.iter().flat_map(|w| w.to_be_bytes()).collect(),
        ));
    }
    secrets
}

/// A wasm container's process, seen from the host: its descriptors are
/// stdio, directories of its own root (the preopens) and anonymous inodes
/// only — nothing of the code cache, its bundle or log fifo, /sys, or any
/// file or directory of the host, which native code in it could use
/// (`openat(fd, "..")`); the node cache's key is nowhere in its memory; it
/// runs under the seccomp filter `ctr run --seccomp` asks for.
#[test]
fn the_guest_process_holds_nothing_of_the_host() {
    let c = containerd();
    let id = unique_id("holds");
    run_detached_with(&c, &id, &["--seccomp"], &["/wasitest.wasm", "sleep"]);
    let pid = c.task_pid(&id).expect("the task's pid");
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "wasm-container", "pid {pid} is the guest's");
    // `ctr run -d` returns once the task is started; the guest runs a moment
    // later. It is running once its sleep has made wasmtime-wasi's event
    // loop (an eventpoll descriptor): look only then.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir_names(Path::new(&format!("/proc/{pid}/fd")))
        .iter()
        .any(|fd| {
            fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .is_ok_and(|l| l.to_string_lossy().contains("eventpoll"))
        })
    {
        assert!(
            Instant::now() < deadline,
            "the guest {pid} never ran its sleep"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let bundle = bundle(&c, &id);
    let rootfs = bundle.join("rootfs");
    let cache = c.dir().join("cache");
    let mut problems = Vec::new();

    eprintln!("  descriptors of {id}'s process {pid}:");
    let mut named: Vec<(&str, PathBuf)> = vec![
        ("the code cache directory", cache.clone()),
        ("the code cache's code directory", cache.join("code")),
        ("the code cache's key", cache.join("key")),
        ("the bundle directory", bundle.clone()),
        ("the bundle's log fifo", bundle.join("log")),
        ("the host's /sys", "/sys".into()),
        ("the host's /proc", "/proc".into()),
        ("the host's /", "/".into()),
        ("containerd's test directory", c.dir().to_path_buf()),
    ];
    for entry in fs::read_dir(cache.join("code"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.path().extension().is_some_and(|e| e == "cwasm") {
            named.push(("a compiled artifact of the code cache", entry.path()));
        }
    }
    for fd in foreign_fds(pid, &rootfs, &named) {
        problems.push(fd);
    }

    let security = security_of(pid);
    eprintln!("  {id}'s process: {security:?}");
    if security["Seccomp"] != "2" {
        problems.push(format!(
            "Seccomp: {} with --seccomp (2 is a filter)",
            security["Seccomp"]
        ));
    }

    let key = fs::read(cache.join("key")).expect("the node cache's key");
    assert_eq!(key.len(), 32, "the key is 32 bytes");
    let secrets = signing_secrets(&key);
    let started = Instant::now();
    let needles: Vec<&[u8]> = secrets.iter().map(|(_, s)| s.as_slice()).collect();
    let (found, scanned) = find_in_memory(pid, &needles);
    eprintln!(
        "  scanned {} MiB of {pid}'s memory in {:.1?}: the cache's signing secrets found {} times",
        scanned >> 20,
        started.elapsed(),
        found.len()
    );
    assert!(scanned > 0, "nothing of {pid}'s memory was read");
    for (needle, at) in found {
        problems.push(format!(
            "{} is in the guest's memory at {at}",
            secrets[needle].0
        ));
    }
    // A check of the scan: the guest's own arguments are in its memory.
    let (own, _) = find_in_memory(pid, &[b"/wasitest.wasm"]);
    assert!(!own.is_empty(), "the memory scan finds nothing at all");

    c.remove(&id);
    c.assert_clean(&[&id]);
    assert!(
        problems.is_empty(),
        "the guest's process holds what it must not:\n{}",
        problems.join("\n")
    );
}

// --- execs under the container's seccomp filter ------------------------------

/// `ctr run --seccomp` a native container and a wasm container; a
/// long-running `ctr task exec` into each runs under a seccomp filter
/// (`Seccomp: 2`) with the init's capabilities and no_new_privs, as runc
/// applies the container's `linux.seccomp` to every exec.
#[test]
fn execs_run_under_the_containers_seccomp_filter() {
    let c = containerd();
    let native = unique_id("native");
    let wasm = unique_id("wasm");
    run_detached_with(&c, &native, &["--seccomp"], &["/native-hello", "sleep"]);
    run_detached_with(&c, &wasm, &["--seccomp"], &["/wasitest.wasm", "sleep"]);
    let mut problems = Vec::new();
    for (id, program) in [(&native, "/native-hello"), (&wasm, "/wasitest.wasm")] {
        let init = c.task_pid(id).expect("the task's pid");
        let mut exec = c
            .ctr_command(&["task", "exec", "--exec-id", "sleeper", id, program, "sleep"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ctr task exec");
        // The exec's process, once it runs its program: the cgroup also
        // holds, for a moment, the code server that compiles for the exec
        // (`shim-code`, a host process that joins the cgroup) and the exec's
        // process while libcontainer and the executor still set it up (the
        // filter is the last thing installed before the program runs).
        let deadline = Instant::now() + Duration::from_secs(20);
        let exec_pid = loop {
            let running = task_pids(&c, id).into_iter().find(|&p| {
                let comm = fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                p != init
                    && comm.trim() != "shim-code"
                    && fs::read_to_string(format!("/proc/{p}/status"))
                        .is_ok_and(|status| !status.contains("Seccomp:\t0"))
            });
            if running.is_some() {
                break running;
            }
            if Instant::now() > deadline || exec.try_wait().ok().flatten().is_some() {
                // Whatever it is by now, it is what gets compared.
                break task_pids(&c, id).into_iter().find(|&p| p != init);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let Some(exec_pid) = exec_pid else {
            let _ = exec.kill();
            let out = exec.wait_with_output().expect("ctr task exec");
            problems.push(format!(
                "{id}: the exec of {program} never ran: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            continue;
        };
        let of_init = security_of(init);
        let of_exec = security_of(exec_pid);
        eprintln!("  {id}: init {init} {of_init:?}; exec {exec_pid} {of_exec:?}");
        problems.extend(unlike_its_init(
            &format!("{id} ({program}): the exec {exec_pid}"),
            &of_exec,
            &format!("the init {init}"),
            &of_init,
        ));
        let out = c.ctr(&["task", "kill", "--exec-id", "sleeper", "-s", "SIGKILL", id]);
        assert_eq!(out.code, 0, "{out:?}");
        let status = exec.wait().expect("ctr task exec");
        assert_eq!(status.code(), Some(137), "the exec's SIGKILL status");
    }
    // A wasm program exec'd into the native container builds its guest's
    // view in a mount namespace of its own: nothing of it is left in the
    // native container's (its mounts after are those before).
    let init = c.task_pid(&native).expect("the native task's pid");
    let mounts = || fs::read_to_string(format!("/proc/{init}/mountinfo")).unwrap_or_default();
    let before = mounts();
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "wasm-in-native",
        &native,
        "/wasitest.wasm",
        "hello",
    ]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "hello from wasm\n"),
        "{out:?}"
    );
    if mounts() != before {
        problems.push(format!(
            "{native}: a wasm exec changed the native container's mounts:\n{before}\n---\n{}",
            mounts()
        ));
    }
    c.remove(&native);
    c.remove(&wasm);
    c.assert_clean(&[&native, &wasm]);
    assert!(
        problems.is_empty(),
        "execs escape the container's confinement:\n{}",
        problems.join("\n")
    );
}

// --- a native sidecar attacking its pod's wasm container ----------------------

fn with_seccomp(mut config: ContainerConfig, profile: SecurityProfile) -> ContainerConfig {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .seccomp = Some(profile);
    config
}

fn exec_sync(node: &CriNode, container: &str, cmd: &[&str]) -> k8s_cri::v1::ExecSyncResponse {
    let request = k8s_cri::v1::ExecSyncRequest {
        container_id: container.to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 60,
    };
    node.call(
        "ExecSync",
        |mut c| async move { c.exec_sync(request).await },
    )
}

/// A pod sharing its PID namespace (`shareProcessNamespace: true`): a wasm
/// container and a native sidecar, both under RuntimeDefault. The sidecar
/// (`probe scan`, through CRI ExecSync, as `kubectl exec` would) goes through
/// /proc after the wasm container's process: its descriptors (and `..` from
/// each directory among them towards a file planted in the node's directory,
/// next to the code cache), its memory, environment, maps and root. It
/// reaches none of them: the process is not dumpable, and holds nothing of
/// the host. And an ExecSync process in the sidecar runs under the sidecar's
/// seccomp filter, capabilities and no_new_privs.
#[test]
fn a_sidecar_sharing_the_pid_namespace_reaches_nothing_of_the_wasm_container() {
    let node = CriNode::start();
    let marker = marker("sidecar");
    let basename = "planted-sidecar.txt";
    let planted = node.dir().join(basename);
    fs::write(&planted, &marker).unwrap();
    let runtime_default = SecurityProfile {
        profile_type: ProfileType::RuntimeDefault as i32,
        ..Default::default()
    };
    let mut pod_config = node.pod_config("sandbox");
    let mut app = with_seccomp(
        CriNode::container_config("app", WASM_TEST, &["/wasitest.wasm", "sleep"]),
        runtime_default.clone(),
    );
    let mut attacker = with_seccomp(
        CriNode::container_config("attacker", WASM_TEST, &["/probe", "hold"]),
        runtime_default,
    );
    share_pid_namespace(&mut pod_config, &mut [&mut app, &mut attacker]);
    let pod = node.run_pod(&pod_config);
    let app = node.start_container(&pod, &pod_config, app);
    let attacker = node.start_container(&pod, &pod_config, attacker);
    let mut problems = Vec::new();

    let out = exec_sync(&node, &attacker, &["/probe", "scan", basename, &marker]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    show("probe scan", &stdout);
    for line in stdout.lines().filter(|l| !l.starts_with("REACHED")) {
        eprintln!("    {line}");
    }
    assert_eq!(out.exit_code, 0, "{stdout}{stderr}");
    assert!(stdout.lines().any(|l| l == "scan done"), "{stdout}{stderr}");
    // The scan is real: the sidecar saw the wasm container's process.
    assert!(
        stdout.contains("(wasm-container)"),
        "the sidecar does not see the wasm container's process:\n{stdout}"
    );
    problems.extend(reached(&stdout));
    if stdout.contains(&marker) || stderr.contains(&marker) {
        problems.push("the planted marker is in the sidecar's output".into());
    }

    // ExecSync into the sidecar: the exec's own view of its confinement.
    let out = exec_sync(&node, &attacker, &["/probe", "status"]);
    assert_eq!(out.exit_code, 0, "{out:?}");
    let of_exec = security_fields(&String::from_utf8_lossy(&out.stdout));
    let init = node.task_pid(&attacker).expect("the sidecar's pid");
    let of_init = security_of(init);
    eprintln!("  sidecar: init {init} {of_init:?}; ExecSync {of_exec:?}");
    assert_eq!(of_exec.len(), 4, "{out:?}");
    problems.extend(unlike_its_init(
        "an ExecSync in the sidecar",
        &of_exec,
        "the sidecar's init",
        &of_init,
    ));

    assert_eq!(fs::read_to_string(&planted).unwrap(), marker);
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[pod, app, attacker]);
    assert!(
        problems.is_empty(),
        "the sidecar got into the wasm container:\n{}",
        problems.join("\n")
    );
}
