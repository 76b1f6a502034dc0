//! The node's code cache, with real engines: compiled once, mapped after,
//! never loading what this node's shim did not write.

use super::*;

/// A cache in a fresh directory, with an engine of its own (as each container
/// process has).
fn cached_engine(root: &std::path::Path, limit: u64) -> Engine {
    let cache = Cache::open(root, limit).expect("cache");
    engine().with_cache(std::sync::Arc::new(cache))
}

fn artifacts(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(root.join("code"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    found.sort();
    found
}

fn exit_code(code: i32) -> Vec<u8> {
    wasm(&EXIT_42.replace("i32.const 42", &format!("i32.const {code}")))
}

#[test]
fn the_cache_compiles_once_and_later_engines_map_the_code() {
    let dir = tempfile::tempdir().unwrap();
    let first = cached_engine(dir.path(), node::DEFAULT_LIMIT);
    let program = first.prepare("/x.wasm", &wasm(EXIT_42), None).unwrap();
    assert_eq!(program.cache_outcome(), Some(Outcome::Compiled));
    assert_eq!(artifacts(dir.path()).len(), 1);
    let second = cached_engine(dir.path(), node::DEFAULT_LIMIT);
    let program = second.prepare("/x.wasm", &wasm(EXIT_42), None).unwrap();
    assert_eq!(program.cache_outcome(), Some(Outcome::Hit));
    assert_eq!(program.run(&Invocation::default()).unwrap(), Exit::Code(42));
    // Other bytes are another entry.
    let other = second.prepare("/y.wasm", &exit_code(7), None).unwrap();
    assert_eq!(other.cache_outcome(), Some(Outcome::Compiled));
    assert_eq!(other.run(&Invocation::default()).unwrap(), Exit::Code(7));
    assert_eq!(artifacts(dir.path()).len(), 2);
    // Files are private to the shim's user.
    use std::os::unix::fs::PermissionsExt;
    for path in artifacts(dir.path()) {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{}: mode {mode:o}", path.display());
    }
    let key = std::fs::metadata(dir.path().join("key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o077, 0);
}

#[test]
fn components_are_cached_and_mapped_too() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = wasm("(component)");
    for expected in [Outcome::Compiled, Outcome::Hit] {
        let engine = cached_engine(dir.path(), node::DEFAULT_LIMIT);
        // `(component)` runs nothing, so prepare refuses it after compiling;
        // the code step itself is what is checked here.
        let (component, outcome) = engine
            .code(
                Kind::Component,
                &bytes,
                || unreachable!("the cache compiles"),
                |file| unsafe {
                    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
                    Component::deserialize_file(&engine.inner, path)
                },
            )
            .unwrap();
        assert_eq!(outcome, Some(expected));
        assert_eq!(component.component_type().exports(&engine.inner).count(), 0);
    }
}

#[test]
fn a_changed_artifact_is_never_loaded_and_is_compiled_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let engine = cached_engine(dir.path(), node::DEFAULT_LIMIT);
    engine.prepare("/x.wasm", &wasm(EXIT_42), None).unwrap();
    let [artifact] = &artifacts(dir.path())[..] else {
        panic!("one artifact expected")
    };
    // One byte changed (the shim itself writes them read-only).
    let mut bytes = std::fs::read(artifact).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::remove_file(artifact).unwrap();
    std::fs::write(artifact, &bytes).unwrap();
    let program = cached_engine(dir.path(), node::DEFAULT_LIMIT)
        .prepare("/x.wasm", &wasm(EXIT_42), None)
        .unwrap();
    assert_eq!(program.cache_outcome(), Some(Outcome::Compiled));
    assert_ne!(std::fs::read(artifact).unwrap(), bytes, "rewritten");
    assert_eq!(program.run(&Invocation::default()).unwrap(), Exit::Code(42));
}

#[test]
fn a_genuine_artifact_planted_from_elsewhere_is_refused() {
    // Real wasmtime code for exit(7), tagged by another node's cache, put
    // where this node's cache keeps the code for exit(42): never loaded.
    let elsewhere = tempfile::tempdir().unwrap();
    cached_engine(elsewhere.path(), node::DEFAULT_LIMIT)
        .prepare("/x.wasm", &exit_code(7), None)
        .unwrap();
    let here = tempfile::tempdir().unwrap();
    cached_engine(here.path(), node::DEFAULT_LIMIT)
        .prepare("/x.wasm", &wasm(EXIT_42), None)
        .unwrap();
    let [planted] = &artifacts(elsewhere.path())[..] else {
        panic!()
    };
    let [target] = &artifacts(here.path())[..] else {
        panic!()
    };
    for suffix in ["cwasm", "tag"] {
        let to = target.with_extension(suffix);
        std::fs::remove_file(&to).unwrap();
        std::fs::copy(planted.with_extension(suffix), &to).unwrap();
    }
    let program = cached_engine(here.path(), node::DEFAULT_LIMIT)
        .prepare("/x.wasm", &wasm(EXIT_42), None)
        .unwrap();
    assert_eq!(program.cache_outcome(), Some(Outcome::Compiled));
    assert_eq!(program.run(&Invocation::default()).unwrap(), Exit::Code(42));
}

#[test]
fn concurrent_starts_of_one_binary_compile_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    let engine = cached_engine(dir.path(), node::DEFAULT_LIMIT);
                    let program = engine.prepare("/x.wasm", &wasm(EXIT_42), None).unwrap();
                    assert_eq!(program.run(&Invocation::default()).unwrap(), Exit::Code(42));
                    program.cache_outcome().unwrap()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let compiled = outcomes.iter().filter(|o| **o == Outcome::Compiled).count();
    assert_eq!(compiled, 1, "{outcomes:?}");
    assert_eq!(artifacts(dir.path()).len(), 1);
}

#[test]
fn engine_options_are_part_of_the_cache_key() {
    let dir = tempfile::tempdir().unwrap();
    let cache = || std::sync::Arc::new(Cache::open(dir.path(), node::DEFAULT_LIMIT).unwrap());
    let with = |options: EngineOptions| Engine::new(&options).unwrap().with_cache(cache());
    let plain = with(EngineOptions::default());
    let gc = with(EngineOptions {
        wasm_gc: true,
        ..EngineOptions::default()
    });
    let unoptimised = with(EngineOptions {
        opt_level: OptLevel::None,
        ..EngineOptions::default()
    });
    for engine in [&plain, &gc, &unoptimised] {
        let program = engine.prepare("/x.wasm", &wasm(EXIT_42), None).unwrap();
        assert_eq!(program.cache_outcome(), Some(Outcome::Compiled));
        assert_eq!(program.run(&Invocation::default()).unwrap(), Exit::Code(42));
    }
    assert_eq!(
        artifacts(dir.path()).len(),
        3,
        "one entry per engine configuration"
    );
    let again = with(EngineOptions {
        wasm_gc: true,
        ..EngineOptions::default()
    });
    let program = again.prepare("/x.wasm", &wasm(EXIT_42), None).unwrap();
    assert_eq!(program.cache_outcome(), Some(Outcome::Hit));
}

#[test]
fn the_cache_stays_within_its_limit_dropping_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    // Room for about two of these artifacts.
    let engine = cached_engine(dir.path(), node::DEFAULT_LIMIT);
    engine.prepare("/a.wasm", &exit_code(1), None).unwrap();
    let one = std::fs::metadata(&artifacts(dir.path())[0]).unwrap().len();
    let engine = cached_engine(dir.path(), 2 * one + one / 2);
    std::thread::sleep(std::time::Duration::from_millis(20));
    engine.prepare("/b.wasm", &exit_code(2), None).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    // Using `a` again makes `b` the least recently used.
    let a = engine.prepare("/a.wasm", &exit_code(1), None).unwrap();
    assert_eq!(a.cache_outcome(), Some(Outcome::Hit));
    std::thread::sleep(std::time::Duration::from_millis(20));
    engine.prepare("/c.wasm", &exit_code(3), None).unwrap();
    assert_eq!(artifacts(dir.path()).len(), 2);
    let b = engine.prepare("/b.wasm", &exit_code(2), None).unwrap();
    assert_eq!(b.cache_outcome(), Some(Outcome::Compiled), "b was evicted");
    let c = engine.prepare("/c.wasm", &exit_code(3), None).unwrap();
    assert_eq!(c.cache_outcome(), Some(Outcome::Hit));
}

#[test]
fn bad_wasm_leaves_nothing_in_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = wasm(EXIT_42);
    let err = cached_engine(dir.path(), node::DEFAULT_LIMIT)
        .prepare("/t.wasm", &bytes[..bytes.len() - 5], None)
        .err()
        .unwrap();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("code")).unwrap().count(),
        0
    );
}

#[test]
fn a_cache_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = Cache::open(&root, node::DEFAULT_LIMIT).unwrap_err();
    assert!(err.to_string().contains("writable by no one else"), "{err}");
}

#[test]
fn the_cache_hands_out_sealed_code_nobody_can_write() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path(), node::DEFAULT_LIMIT).unwrap();
    let engine = engine();
    for expected in [Outcome::Compiled, Outcome::Hit] {
        let Ok(Artifact::Code(file, outcome)) =
            cache.artifact(engine.wasmtime(), Kind::Module, &wasm(EXIT_42))
        else {
            panic!("code expected")
        };
        assert_eq!(outcome, expected);
        assert!(memfd::is_sealed(&file));
        assert!(
            (&file).write_all(b"patched").is_err(),
            "written through its fd"
        );
        let reopened = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()));
        if let Ok(mut reopened) = reopened {
            assert!(reopened.write_all(b"patched").is_err(), "written reopened");
        }
    }
}

#[test]
fn a_start_waits_for_another_compile_only_so_long_then_compiles_a_private_copy() {
    let dir = tempfile::tempdir().unwrap();
    let patience = std::time::Duration::from_millis(300);
    let cache = Cache::open(dir.path(), node::DEFAULT_LIMIT)
        .unwrap()
        .with_patience(patience);
    let engine = engine();
    let bytes = wasm(EXIT_42);
    // Another start holds the entry's lock (say, compiling under a 1m CPU quota).
    let name = Cache::name(engine.wasmtime(), Kind::Module, &bytes);
    let lock = std::fs::File::create(dir.path().join(format!("code/{name}.lock"))).unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let began = std::time::Instant::now();
    let Ok(Artifact::Code(file, outcome)) = cache.artifact(engine.wasmtime(), Kind::Module, &bytes)
    else {
        panic!("code expected")
    };
    assert!(began.elapsed() >= patience, "{:?}", began.elapsed());
    assert_eq!(outcome, Outcome::CompiledUnstored);
    assert!(
        artifacts(dir.path()).is_empty(),
        "the holder stores it, not us"
    );
    // SAFETY: the cache's own code, just compiled.
    let module = unsafe { wasmtime::Module::deserialize_open_file(engine.wasmtime(), file) };
    assert!(module.is_ok());
    drop(held);
}

#[test]
fn an_artifact_that_verifies_but_does_not_load_is_kept_and_compiled_here() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = wasm(EXIT_42);
    cached_engine(dir.path(), node::DEFAULT_LIMIT)
        .prepare("/x.wasm", &bytes, None)
        .unwrap();
    let [artifact] = &artifacts(dir.path())[..] else {
        panic!("one artifact expected")
    };
    // Garbage with a genuine tag (as a shim of another wasmtime build that
    // computed the same name would leave): verification passes, loading fails.
    let key = std::fs::read(dir.path().join("key")).unwrap();
    let garbage = b"not native code".to_vec();
    let name = artifact.file_stem().unwrap().to_str().unwrap().to_string();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(name.as_bytes());
    ctx.update(&garbage);
    for (path, contents) in [
        (artifact.clone(), garbage.clone()),
        (artifact.with_extension("tag"), ctx.sign().as_ref().to_vec()),
    ] {
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, contents).unwrap();
    }
    let program = cached_engine(dir.path(), node::DEFAULT_LIMIT)
        .prepare("/x.wasm", &bytes, None)
        .unwrap();
    assert_eq!(program.cache_outcome(), None, "compiled in the process");
    assert_eq!(program.run(&Invocation::default()).unwrap(), Exit::Code(42));
    assert_eq!(
        std::fs::read(artifact).unwrap(),
        garbage,
        "kept: it verified"
    );
}
