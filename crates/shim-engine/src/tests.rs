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
        memory: crate::MemoryBudget::new(Some(4 << 20)),
        ..Invocation::default()
    };
    // 1 + 32 pages = 2 MiB fits in 4 MiB; 1 + 128 pages = 8.06 MiB does not.
    let small = engine.prepare("/g.wasm", &wasm(&grow(32)), None).unwrap();
    assert_eq!(small.run(&limited).unwrap(), Exit::Code(0));
    let large = engine.prepare("/g.wasm", &wasm(&grow(128)), None).unwrap();
    assert_eq!(large.run(&limited).unwrap(), Exit::Code(1));
    assert_eq!(
        limited.memory.held(),
        0,
        "a finished run gives back its memory"
    );
    assert_eq!(limited.memory.refused(), 1);
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

// The node's code cache.
mod code_cache;
