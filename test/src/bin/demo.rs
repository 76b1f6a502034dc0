//! `make demo`: runs the hello wasm image through a private containerd with
//! this shim, prints what the guest printed, and stops everything again.

use shim_tests::images::HELLO;
use shim_tests::{unique_id, Containerd, RUNTIME};

fn main() {
    println!(
        "starting a private containerd {} with {RUNTIME} on its PATH",
        shim_tests::containerd_version()
    );
    let containerd = Containerd::start();
    containerd.import("hello.tar");
    let id = unique_id("demo");
    let image = HELLO;
    println!("$ ctr run --rm --runtime {RUNTIME} {image} {id}");
    let out = containerd.run(&id, image, &[], &[]);
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    drop(containerd);
    println!(
        "(containerd stopped, its directory removed; exit status of the guest: {})",
        out.code
    );
    std::process::exit(out.code);
}
