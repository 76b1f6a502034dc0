//! Escaping the root: symlinks planted in the image and in a bind-mounted
//! host directory, hard links, renames and unlinks, against a writable or
//! read-only root and mounts. The guest reads nothing outside its root and
//! writes nothing it may not.

use shim_tests::images::WASM_TEST;

use super::{
    containerd, file, import_hostile_image, run_steps, symlink, wasitest, ENOENT, EPERM, HOSTILE,
    SECRET,
};

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
