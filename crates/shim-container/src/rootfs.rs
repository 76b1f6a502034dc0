//! The container's root filesystem as containerd hands it over: a list of
//! mounts (usually one overlay) to stack on `<bundle>/rootfs`.
//!
//! Mounting happens in the single-threaded helper process (see `helper`),
//! unmounting in the shim on delete and on every failed create, so a failure
//! never leaves a mount behind.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use crate::idmap::{IdMappings, IdmappedLayers};
use crate::Error;

/// One mount from containerd's CreateTask request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsMount {
    pub kind: String,
    pub source: String,
    pub target: String,
    pub options: Vec<String>,
}

/// The directory the rootfs is mounted on.
pub fn rootfs_dir(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

/// Splits mount options into flags and the data string passed to the filesystem.
fn parse_options(options: &[String]) -> (MsFlags, MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        let (set, clear) = match option.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => {
                propagation |= match option.as_str() {
                    "private" => MsFlags::MS_PRIVATE,
                    "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                    "shared" => MsFlags::MS_SHARED,
                    "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_SLAVE | MsFlags::MS_REC,
                };
                continue;
            }
            _ => {
                data.push(option.as_str());
                continue;
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, propagation, data.join(","))
}

/// Mounts `mounts` in order onto `<bundle>/rootfs`. On failure, whatever was
/// already mounted is unmounted again.
pub fn mount_rootfs(bundle: &Path, mounts: &[RootfsMount]) -> Result<(), Error> {
    let target = rootfs_dir(bundle);
    for (done, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(&target, m) {
            for _ in 0..done {
                let _ = umount2(&target, MntFlags::MNT_DETACH);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(rootfs: &Path, m: &RootfsMount) -> Result<(), Error> {
    let target = if m.target.is_empty() {
        rootfs.to_path_buf()
    } else {
        rootfs.join(m.target.trim_start_matches('/'))
    };
    // A pod with its own user namespace: idmapped lower layers, held until
    // the overlay is mounted over them (see `idmap`).
    let mut options = m.options.clone();
    let _layers = match IdMappings::take_from(&mut options)
        .map_err(|e| Error::Rootfs(format!("{} ({}): {e}", m.source, m.kind)))?
    {
        Some(mappings) if m.kind == "overlay" => {
            let dir = rootfs.with_file_name(".idmapped");
            Some(
                IdmappedLayers::prepare(&mut options, &mappings, &dir)
                    .map_err(|e| Error::Rootfs(format!("{} ({}): {e}", m.source, m.kind)))?,
            )
        }
        Some(_) => {
            return Err(Error::Rootfs(format!(
                "{} ({}): ID mappings are supported on overlay mounts only",
                m.source, m.kind
            )))
        }
        None => None,
    };
    let (flags, propagation, data) = parse_options(&options);
    let fail = |what: &str, e: nix::Error| {
        Error::Rootfs(format!(
            "{what} {} ({}) on {}: {e}",
            m.source,
            m.kind,
            target.display()
        ))
    };
    let data = (!data.is_empty()).then_some(data.as_str());
    let kind = (!m.kind.is_empty() && m.kind != "bind").then_some(m.kind.as_str());
    mount(Some(m.source.as_str()), &target, kind, flags, data)
        .map_err(|e| fail("cannot mount", e))?;
    // A bind mount ignores MS_RDONLY on creation; it takes a remount.
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(|e| fail("cannot make read-only", e))?;
    }
    if !propagation.is_empty() {
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            propagation,
            None::<&str>,
        )
        .map_err(|e| fail("cannot set propagation of", e))?;
    }
    Ok(())
}

/// Unmounts everything stacked on `<bundle>/rootfs`. Unmounting what is not
/// mounted is not an error: delete may run twice (task delete, then `shim delete`).
pub fn unmount_rootfs(bundle: &Path) -> Result<(), Error> {
    let target = rootfs_dir(bundle);
    loop {
        match umount2(&target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => {
                return Err(Error::Rootfs(format!(
                    "cannot unmount {}: {e}",
                    target.display()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlay_options_become_data() {
        let (flags, propagation, data) = parse_options(&opts(&[
            "index=off",
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/l",
        ]));
        assert_eq!(flags, MsFlags::empty());
        assert!(propagation.is_empty());
        assert_eq!(data, "index=off,workdir=/w,upperdir=/u,lowerdir=/l");
    }

    #[test]
    fn bind_read_only_flags() {
        let (flags, propagation, data) =
            parse_options(&opts(&["rbind", "ro", "nosuid", "rprivate"]));
        assert_eq!(
            flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        );
        assert_eq!(propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert!(data.is_empty());
    }

    #[test]
    fn later_options_override_earlier_ones() {
        let (flags, _, _) = parse_options(&opts(&["ro", "rw"]));
        assert!(!flags.contains(MsFlags::MS_RDONLY));
    }
}
