//! Native programs in a container (a pause process, a sidecar): telling a
//! file `execve` would run from a wasm module, and why the kernel would
//! refuse one, before the container's process commits to it.

/// Whether a file starting with `head` is something `execve` runs.
pub(crate) fn is_native_executable(head: &[u8]) -> bool {
    head.starts_with(b"\x7fELF") || head.starts_with(b"#!")
}

/// Why the kernel would refuse to execute an ELF file starting with `head`
/// here (`execvp` would then try it as a shell script and report ENOENT):
/// not an executable or shared object, or built for another machine.
pub(crate) fn elf_unrunnable(head: &[u8]) -> Option<String> {
    if !head.starts_with(b"\x7fELF") {
        return None;
    }
    let Some(header) = head.get(..20) else {
        return Some("its header is cut short".into());
    };
    let field = |at: usize| match header[5] {
        2 => u16::from_be_bytes([header[at], header[at + 1]]),
        _ => u16::from_le_bytes([header[at], header[at + 1]]),
    };
    let (kind, machine) = (field(16), field(18));
    // ET_EXEC, ET_DYN.
    if kind != 2 && kind != 3 {
        return Some(format!("ELF type {kind} is not an executable"));
    }
    // EM_X86_64 (and EM_386), EM_AARCH64 (and EM_ARM).
    let runs: &[u16] = match std::env::consts::ARCH {
        "x86_64" => &[62, 3],
        "aarch64" => &[183, 40],
        _ => return None,
    };
    if !runs.contains(&machine) {
        return Some(format!(
            "it is built for ELF machine {machine}, not this node's {} (an image for \
             another platform?)",
            std::env::consts::ARCH
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::elf_unrunnable;

    #[test]
    fn elf_files_the_kernel_would_refuse_are_named() {
        let own = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(elf_unrunnable(&own), None, "this test's own binary");
        assert_eq!(elf_unrunnable(b"#!/bin/sh\necho"), None, "not ELF");
        assert!(elf_unrunnable(b"\x7fELF\x02\x01")
            .unwrap()
            .contains("cut short"));
        let mut relocatable = own[..64].to_vec();
        relocatable[16] = 1; // ET_REL, what a .cwasm is
        assert!(elf_unrunnable(&relocatable).unwrap().contains("ELF type 1"));
        let mut foreign = own[..64].to_vec();
        foreign[18] = 8; // EM_MIPS
        assert!(elf_unrunnable(&foreign).unwrap().contains("ELF machine 8"));
    }
}
