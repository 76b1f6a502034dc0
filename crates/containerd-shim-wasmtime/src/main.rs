//! `containerd-shim-wasmtime-v1`: containerd's shim for runtime `io.containerd.wasmtime.v1`.
//!
//! The binary has three faces: the shim (`start`, `delete`, the ttrpc server)
//! run by containerd, with its zygote (`shim_container::zygote`); the
//! single-threaded create helper, re-executed for a container when there is
//! no zygote (`shim_container::helper`); and `--version`.

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-info" || a == "--info") {
        let mut stdout = std::io::stdout();
        let written = stdout
            .write_all(&shim_task::runtime_info())
            .and_then(|()| stdout.flush());
        std::process::exit(if written.is_ok() { 0 } else { 1 });
    }
    match args.first().map(String::as_str) {
        Some(shim_container::helper::HELPER_ARG) => {
            std::process::exit(shim_container::helper::main(&args[1..]))
        }
        Some("-v" | "--version" | "-version") => {
            println!("containerd-shim-wasmtime-v1 {}", env!("CARGO_PKG_VERSION"));
            println!("runtime {}", shim_task::RUNTIME_ID);
        }
        _ => {
            // The server (neither `start` nor `delete`): fork the pod's
            // zygote now, while this process still has one thread.
            let action = args.last().map(String::as_str);
            if args.iter().any(|a| a == "-id") && !matches!(action, Some("start" | "delete")) {
                shim_container::zygote::start();
            }
            containerd_shim::run::<shim_task::WasmtimeShim>(shim_task::RUNTIME_ID, None)
        }
    }
}
