use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::SystemTime;

use super::*;

fn store(dir: &Path, limit: u64) -> Store {
    Store::open(dir, limit, "test store").unwrap()
}

fn put(store: &Store, name: &str, bytes: &[u8]) {
    store.write(&mut [(name, &mut &bytes[..])]).unwrap();
}

/// Sets the modification time of `name` in the store to `secs` ago.
fn age(store: &Store, name: &str, secs: u64) {
    let at = SystemTime::now() - Duration::from_secs(secs);
    let file = fs::File::open(store.path().join(name)).unwrap();
    file.set_modified(at).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn writes_are_whole_read_only_files_and_leave_no_temporary_behind() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/b/store");
    let store = store(&root, 1 << 20);
    assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
    put(&store, "k.data", b"first");
    put(&store, "k.data", b"second");
    store
        .write(&mut [("k.tag", &mut &b"t"[..]), ("k.data", &mut &b"third"[..])])
        .unwrap();
    assert_eq!(names(&root), ["k.data", "k.tag"]);
    assert_eq!(fs::read(root.join("k.data")).unwrap(), b"third");
    assert_eq!(
        fs::metadata(root.join("k.data")).unwrap().mode() & 0o777,
        0o400
    );
    let mut file = store.open_file("k.data").unwrap().unwrap();
    let mut read = String::new();
    file.read_to_string(&mut read).unwrap();
    assert_eq!(read, "third");
    assert!(store.open_file("missing.data").unwrap().is_none());
}

#[test]
fn a_failed_write_leaves_the_file_before_it_and_nothing_else() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("the source failed"))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), 1 << 20);
    put(&store, "k.data", b"whole");
    let err = store.write(&mut [("k.data", &mut Broken)]).unwrap_err();
    assert!(err.to_string().contains("the source failed"), "{err}");
    assert_eq!(names(dir.path()), ["k.data"]);
    assert_eq!(fs::read(dir.path().join("k.data")).unwrap(), b"whole");
}

#[test]
fn only_plain_names_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir.path().join("s"), 1 << 20);
    for name in ["", "../k.data", "a/b", ".hidden", "k.tmp.1", "k data"] {
        let err = store.write(&mut [(name, &mut &b"x"[..])]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        assert!(store.open_file(name).is_err(), "{name:?}");
    }
    assert!(names(&dir.path().join("s")).is_empty());
    assert!(!dir.path().join("k.data").exists());
}

#[test]
fn eviction_drops_whole_entries_least_recently_used_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), 250);
    // Three entries of 100 bytes (data and tag), a, b, c from oldest; a lock
    // alone (a compile in progress) older than all.
    for (n, key) in ["a", "b", "c"].iter().enumerate() {
        put(&store, &format!("{key}.data"), &[0u8; 90]);
        put(&store, &format!("{key}.tag"), &[0u8; 10]);
        for kind in ["data", "tag"] {
            age(&store, &format!("{key}.{kind}"), 300 - n as u64 * 10);
        }
    }
    drop(store.lock("z", Duration::ZERO).unwrap());
    age(&store, "z.lock", 1000);
    // `a`'s artifact was just used: `b` is now the least recently used.
    let a = store.open_file("a.data").unwrap().unwrap();
    store.touch(&a);
    store.evict("c");
    assert_eq!(
        names(dir.path()),
        ["a.data", "a.tag", "c.data", "c.tag", "z.lock"]
    );
    // Over the limit with only the one kept: it stays.
    let store = Store::open(dir.path(), 10, "test store").unwrap();
    age(&store, "c.data", 5000);
    store.evict("c");
    assert_eq!(names(dir.path()), ["c.data", "c.tag", "z.lock"]);
    store.remove("c");
    assert_eq!(names(dir.path()), ["z.lock"]);
}

#[test]
fn stale_temporaries_are_removed_and_fresh_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), 1 << 20);
    let stale = STALE_TEMP_AGE.as_secs() + 60;
    // This store's, and those of earlier versions (code, layers).
    for (name, secs) in [
        (".k.data.7.0.tmp", stale),
        ("k.cwasm.tmp.7", stale),
        (".7.3", stale),
        (".k.data.8.0.tmp", 60),
    ] {
        fs::write(dir.path().join(name), [0u8; 4096]).unwrap();
        age(&store, name, secs);
    }
    put(&store, "k.data", b"kept");
    store.evict("k");
    assert_eq!(names(dir.path()), [".k.data.8.0.tmp", "k.data"]);
}

#[test]
fn a_store_or_file_others_could_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let err = Store::open(&open, 1, "test store").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("writable by no one else"), "{err}");
    let store = store(&dir.path().join("s"), 1 << 20);
    let path = |name: &str| dir.path().join("s").join(name);
    // Group-writable.
    fs::write(path("g.data"), b"x").unwrap();
    fs::set_permissions(path("g.data"), fs::Permissions::from_mode(0o620)).unwrap();
    let err = store.open_file("g.data").unwrap_err();
    assert!(err.to_string().contains("with mode 620"), "{err}");
    // A symlink, to a private file: never followed.
    fs::write(dir.path().join("elsewhere"), b"x").unwrap();
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), path("l.data")).unwrap();
    assert!(store.open_file("l.data").is_err());
    // A fifo: refused without waiting for a writer.
    nix::unistd::mkfifo(&path("f.data"), Mode::from_bits_truncate(0o600)).unwrap();
    let err = store.open_file("f.data").unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    if nix::unistd::geteuid().is_root() {
        // Another user's file, and another user's store.
        fs::write(path("o.data"), b"x").unwrap();
        fs::set_permissions(path("o.data"), fs::Permissions::from_mode(0o400)).unwrap();
        let nobody = Some(nix::unistd::Uid::from_raw(65534));
        nix::unistd::chown(&path("o.data"), nobody, None).unwrap();
        let err = store.open_file("o.data").unwrap_err();
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        fs::set_permissions(&theirs, fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(&theirs, nobody, None).unwrap();
        let err = Store::open(&theirs, 1, "test store").unwrap_err();
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    }
}

#[test]
fn concurrent_writers_of_one_name_never_show_a_reader_a_mixed_file() {
    const SIZE: usize = 256 << 10;
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<Store> = (0..2).map(|_| store(dir.path(), u64::MAX)).collect();
    put(&stores[0], "k.data", &[b'0'; SIZE]);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writers: Vec<_> = (1..=6u8)
            .map(|n| {
                let store = &stores[n as usize % 2];
                scope.spawn(move || {
                    for round in 0..5u8 {
                        let byte = b'a' + n * 5 + round;
                        put(store, "k.data", &[byte; SIZE]);
                        // Another entry too, evicting nothing (no limit).
                        put(store, &format!("w{n}.data"), &[byte; 64]);
                        store.evict("k");
                    }
                })
            })
            .collect();
        let reader = scope.spawn(|| {
            let mut reads = 0;
            while !done.load(Ordering::Relaxed) {
                let mut bytes = Vec::new();
                let mut file = stores[0].open_file("k.data").unwrap().unwrap();
                file.read_to_end(&mut bytes).unwrap();
                assert_eq!(bytes.len(), SIZE, "a whole file");
                assert!(bytes.iter().all(|b| *b == bytes[0]), "one writer's file");
                reads += 1;
            }
            reads
        });
        for writer in writers {
            writer.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    });
    let left = names(dir.path());
    assert!(left.iter().all(|n| !is_temp(n)), "{left:?}");
    assert_eq!(left.len(), 7, "{left:?}");
}

#[test]
fn a_lock_is_waited_for_only_so_long() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), 1 << 20);
    let held = store.lock("k", Duration::ZERO).unwrap().expect("free");
    let began = std::time::Instant::now();
    let patience = Duration::from_millis(100);
    assert!(store.lock("k", patience).unwrap().is_none());
    assert!(began.elapsed() >= patience);
    drop(held);
    assert!(store.lock("k", patience).unwrap().is_some());
}
