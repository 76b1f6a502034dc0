//! What a wasm container's process holds, seen from the host: its
//! descriptors (nothing of the host, the code cache or the bundle, which
//! native code in it could use), its memory (never the code cache's signing
//! key) and its seccomp filter.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shim_tests::leaks::dir_names;
use shim_tests::{unique_id, Containerd, NAMESPACE};

use super::{containerd, identity, run_detached_with, security_of};

/// The bundle directory containerd made for task `id`.
fn bundle(c: &Containerd, id: &str) -> PathBuf {
    c.dir()
        .join("state/io.containerd.runtime.v2.task")
        .join(NAMESPACE)
        .join(id)
}

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
