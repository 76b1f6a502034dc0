use super::*;

const EXIT_42: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 42)))
  (func (export "other")))"#;

fn engine() -> Engine {
    Engine::new(&EngineOptions::default()).expect("engine")
}

fn wasm(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("valid wat")
}

#[test]
fn detects_modules_components_and_other_files() {
    assert_eq!(Kind::detect("m", &wasm("(module)")).unwrap(), Kind::Module);
    assert_eq!(
        Kind::detect("c", &wasm("(component)")).unwrap(),
        Kind::Component
    );
    let err = Kind::detect("/app.wasm", b"#!/bin/sh\necho").unwrap_err();
    assert!(
        err.to_string()
            .contains("/app.wasm is not a WebAssembly binary"),
        "{err}"
    );
    let err = Kind::detect("/e.wasm", b"").unwrap_err();
    assert!(matches!(err, Error::NotWasm { .. }), "{err}");
}

#[test]
fn precompiled_artifacts_are_recognised_whatever_engine_wrote_them() {
    let mut config = wasmtime::Config::new();
    config.cranelift_opt_level(wasmtime::OptLevel::None);
    let other = wasmtime::Engine::new(&config).unwrap();
    let module = wasm(EXIT_42);
    assert!(is_precompiled(&other.precompile_module(&module).unwrap()));
    assert!(is_precompiled(
        &other.precompile_component(&wasm("(component)")).unwrap()
    ));
    assert!(!is_precompiled(&module));
    assert!(!is_precompiled(b"\x7fELF\x02\x01\x01\0 a native program"));
    let native = std::fs::read("/proc/self/exe").unwrap();
    assert!(!is_precompiled(&native));
}

#[test]
fn truncated_wasm_is_reported_as_invalid_with_the_reason() {
    let bytes = wasm(EXIT_42);
    let err = engine()
        .prepare("/t.wasm", &bytes[..bytes.len() - 5], None)
        .err()
        .unwrap();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("/t.wasm is not valid WebAssembly: "),
        "{err}"
    );
}

#[test]
fn unknown_import_is_named() {
    let bytes = wasm(r#"(module (import "env" "mystery" (func)) (func (export "_start")))"#);
    let err = engine().prepare("/u.wasm", &bytes, None).err().unwrap();
    assert!(matches!(err, Error::Link { .. }), "{err}");
    assert!(err.to_string().contains("env::mystery"), "{err}");
}

#[test]
fn missing_export_is_named() {
    let err = engine()
        .prepare("/m.wasm", &wasm(EXIT_42), Some("nope"))
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "/m.wasm has no exported function `nope` to run"
    );
    let err = engine()
        .prepare("/r.wasm", &wasm("(module)"), None)
        .err()
        .unwrap();
    assert!(err.to_string().contains("`_start`"), "{err}");
}

#[test]
fn components_reject_export_selectors() {
    let err = engine()
        .prepare("/c.wasm", &wasm("(component)"), Some("run"))
        .err()
        .unwrap();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}

#[test]
fn component_without_cli_run_is_unsupported() {
    let err = engine()
        .prepare("/c.wasm", &wasm("(component)"), None)
        .err()
        .unwrap();
    assert!(err.to_string().contains("wasi:cli/run"), "{err}");
}

#[test]
fn exit_codes_follow_wasmtime_run() {
    let engine = engine();
    let program = engine.prepare("/x.wasm", &wasm(EXIT_42), None).unwrap();
    assert_eq!(program.kind(), Kind::Module);
    assert_eq!(program.run(&Invocation::default()).unwrap(), Exit::Code(42));

    let other = engine
        .prepare("/x.wasm", &wasm(EXIT_42), Some("other"))
        .unwrap();
    assert_eq!(other.run(&Invocation::default()).unwrap(), Exit::Code(0));

    let trap = wasm(r#"(module (func (export "_start") unreachable))"#);
    let exit = engine
        .prepare("/t.wasm", &trap, None)
        .unwrap()
        .run(&Invocation::default())
        .unwrap();
    assert_eq!(exit.code(), TRAP_EXIT_CODE);
    let Exit::Trap(message) = exit else {
        panic!("expected a trap")
    };
    assert!(message.contains("unreachable"), "{message}");
}

#[test]
fn missing_preopen_directory_is_a_wasi_error() {
    let program = engine().prepare("/x.wasm", &wasm(EXIT_42), None).unwrap();
    let invocation = Invocation {
        preopens: vec![Preopen {
            host: "/definitely/not/here".into(),
            guest: "/".into(),
            read_only: false,
            dir: None,
        }],
        ..Invocation::default()
    };
    let err = program.run(&invocation).unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot preopen /definitely/not/here"),
        "{err}"
    );
}

#[test]
fn memory_growth_stops_at_the_limit() {
    // Grows memory by `pages` and exits with 1 if memory.grow failed, 0 if it worked.
    let grow = |pages: u32| {
        format!(
            r#"(module
              (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
              (memory (export "memory") 1)
              (func (export "_start")
                (call $exit (i32.eq (memory.grow (i32.const {pages})) (i32.const -1)))))"#
        )
    };
    let engine = engine();
    let limited = Invocation {
        memory_limit: Some(4 << 20),
        ..Invocation::default()
    };
    // 1 + 32 pages = 2 MiB fits in 4 MiB; 1 + 128 pages = 8.06 MiB does not.
    let small = engine.prepare("/g.wasm", &wasm(&grow(32)), None).unwrap();
    assert_eq!(small.run(&limited).unwrap(), Exit::Code(0));
    let large = engine.prepare("/g.wasm", &wasm(&grow(128)), None).unwrap();
    assert_eq!(large.run(&limited).unwrap(), Exit::Code(1));
    assert_eq!(
        large.run(&Invocation::default()).unwrap(),
        Exit::Code(0),
        "no limit, no failure"
    );
}

#[test]
fn infinite_recursion_traps_with_a_clear_message() {
    const RECURSE: &str = r#"(module
      (memory (export "memory") 1)
      (func $down (call $down))
      (func (export "_start") (call $down)))"#;
    let program = engine().prepare("/r.wasm", &wasm(RECURSE), None).unwrap();
    let exit = program.run(&Invocation::default()).unwrap();
    assert_eq!(exit.code(), TRAP_EXIT_CODE);
    let message = exit.message().unwrap();
    assert!(message.contains("call stack exhausted"), "{message}");
}

#[test]
fn a_looping_guest_is_stopped_at_its_deadline() {
    const LOOP: &str = r#"(module
      (memory (export "memory") 1)
      (func (export "_start") (loop $forever (br $forever))))"#;
    let program = engine().prepare("/loop.wasm", &wasm(LOOP), None).unwrap();
    let deadline = std::time::Duration::from_millis(200);
    let began = std::time::Instant::now();
    let exit = program
        .run(&Invocation {
            deadline: Some(deadline),
            ..Invocation::default()
        })
        .unwrap();
    assert_eq!(exit, Exit::Deadline(deadline));
    assert_eq!(exit.code(), DEADLINE_EXIT_CODE);
    assert!(
        exit.message().unwrap().contains("deadline of 200ms"),
        "{exit:?}"
    );
    let took = began.elapsed();
    assert!(took >= deadline && took < deadline * 10, "{took:?}");
    // A deadline far off changes nothing for a guest that ends by itself.
    let quick = engine().prepare("/x.wasm", &wasm(EXIT_42), None).unwrap();
    let far = Invocation {
        deadline: Some(std::time::Duration::from_secs(3600)),
        ..Invocation::default()
    };
    assert_eq!(quick.run(&far).unwrap(), Exit::Code(42));
}

// --- the node's code cache -------------------------------------------------

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
    let first = cached_engine(dir.path(), cache::DEFAULT_LIMIT);
    let program = first.prepare("/x.wasm", &wasm(EXIT_42), None).unwrap();
    assert_eq!(program.cache_outcome(), Some(Outcome::Compiled));
    assert_eq!(artifacts(dir.path()).len(), 1);
    let second = cached_engine(dir.path(), cache::DEFAULT_LIMIT);
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
        let engine = cached_engine(dir.path(), cache::DEFAULT_LIMIT);
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
    let engine = cached_engine(dir.path(), cache::DEFAULT_LIMIT);
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
    let program = cached_engine(dir.path(), cache::DEFAULT_LIMIT)
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
    cached_engine(elsewhere.path(), cache::DEFAULT_LIMIT)
        .prepare("/x.wasm", &exit_code(7), None)
        .unwrap();
    let here = tempfile::tempdir().unwrap();
    cached_engine(here.path(), cache::DEFAULT_LIMIT)
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
    let program = cached_engine(here.path(), cache::DEFAULT_LIMIT)
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
                    let engine = cached_engine(dir.path(), cache::DEFAULT_LIMIT);
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
    let cache = || std::sync::Arc::new(Cache::open(dir.path(), cache::DEFAULT_LIMIT).unwrap());
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
fn gc_modules_need_the_gc_option() {
    const GC: &str = r#"(module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (type $point (struct (field i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (call $exit (struct.get $point 0 (struct.new $point (i32.const 7))))))"#;
    let err = engine().prepare("/gc.wasm", &wasm(GC), None).err().unwrap();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    let gc = Engine::new(&EngineOptions {
        wasm_gc: true,
        ..EngineOptions::default()
    })
    .unwrap();
    let program = gc.prepare("/gc.wasm", &wasm(GC), None).unwrap();
    assert_eq!(program.run(&Invocation::default()).unwrap(), Exit::Code(7));
}

#[test]
fn the_cache_stays_within_its_limit_dropping_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    // Room for about two of these artifacts.
    let engine = cached_engine(dir.path(), cache::DEFAULT_LIMIT);
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
    let err = cached_engine(dir.path(), cache::DEFAULT_LIMIT)
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
    let err = Cache::open(&root, cache::DEFAULT_LIMIT).unwrap_err();
    assert!(err.to_string().contains("writable by no one else"), "{err}");
}

#[test]
fn the_cache_hands_out_sealed_code_nobody_can_write() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path(), cache::DEFAULT_LIMIT).unwrap();
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
    let cache = Cache::open(dir.path(), cache::DEFAULT_LIMIT)
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
    cached_engine(dir.path(), cache::DEFAULT_LIMIT)
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
    let program = cached_engine(dir.path(), cache::DEFAULT_LIMIT)
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
