//! The rootfs of a pod with its own user namespace (`hostUsers: false`):
//! containerd hands over an overlay whose options carry the pod's ID
//! mappings (`uidmap=`, `gidmap=`), which overlayfs itself does not know.
//! Each lower layer is given to overlayfs through an *idmapped* mount (a
//! detached copy of the layer's directory whose files appear owned by the
//! mapped IDs), so the image's root-owned files are the container's root's
//! inside its user namespace and nobody's outside it. The upper directory
//! is the snapshotter's, which made it the mapped root's.
//!
//! The mappings need a user namespace to hang on: a child process enters a
//! new one, its maps are written, its namespace is opened, and it is killed.
//! The idmapped layers are mounted in a private directory of the bundle for
//! the overlay mount, then detached: the overlay holds on to them.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{fork, pipe, read, write, ForkResult, Pid};

use crate::detached;

/// One range of an ID mapping: `size` IDs from `container` inside are
/// `host` and on outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

/// The pod's ID mappings, from an overlay's `uidmap=` and `gidmap=` options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdMappings {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

impl IdMappings {
    /// Takes `uidmap=` and `gidmap=` out of `options`: `None` if there were none.
    pub fn take_from(options: &mut Vec<String>) -> Result<Option<Self>, String> {
        let mut mappings = IdMappings::default();
        let mut found = false;
        let mut error = None;
        options.retain(|option| {
            let (list, value) = if let Some(v) = option.strip_prefix("uidmap=") {
                (&mut mappings.uids, v)
            } else if let Some(v) = option.strip_prefix("gidmap=") {
                (&mut mappings.gids, v)
            } else {
                return true;
            };
            found = true;
            match parse_ranges(value) {
                Ok(ranges) => list.extend(ranges),
                Err(e) => error = Some(format!("{option:?}: {e}")),
            }
            false
        });
        if let Some(error) = error {
            return Err(error);
        }
        if !found {
            return Ok(None);
        }
        if mappings.uids.is_empty() || mappings.gids.is_empty() {
            return Err("an overlay with uidmap= needs gidmap= too, and the reverse".into());
        }
        Ok(Some(mappings))
    }
}

impl IdMappings {
    /// From the spec's mappings (a mount's, or `linux.uidMappings`).
    pub fn from_spec(
        uids: &[oci_spec::runtime::LinuxIdMapping],
        gids: &[oci_spec::runtime::LinuxIdMapping],
    ) -> Self {
        let ranges = |list: &[oci_spec::runtime::LinuxIdMapping]| {
            list.iter()
                .map(|m| IdRange {
                    container: m.container_id(),
                    host: m.host_id(),
                    size: m.size(),
                })
                .collect()
        };
        Self {
            uids: ranges(uids),
            gids: ranges(gids),
        }
    }
}

/// `container:host:size` ranges, separated by `,` or spaces.
fn parse_ranges(value: &str) -> Result<Vec<IdRange>, String> {
    value
        .split([',', ' '])
        .filter(|range| !range.is_empty())
        .map(|range| {
            let numbers: Vec<u32> = range
                .split(':')
                .map(|n| n.parse::<u32>())
                .collect::<Result<_, _>>()
                .map_err(|_| format!("{range:?} is not container:host:size"))?;
            match numbers[..] {
                [container, host, size] if size > 0 => Ok(IdRange {
                    container,
                    host,
                    size,
                }),
                _ => Err(format!("{range:?} is not container:host:size")),
            }
        })
        .collect()
}

fn map_text(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.container, r.host, r.size))
        .collect()
}

/// A user namespace with `mappings`, as a descriptor. Forks: call only in
/// a single-threaded process (the create helper).
pub(crate) fn user_namespace(mappings: &IdMappings) -> Result<OwnedFd, String> {
    let (ready_read, ready_write) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let (hold_read, hold_write) = pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the helper has one thread; the child only makes raw
    // syscalls and ends with _exit.
    let child = match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(ready_read);
            drop(hold_write);
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok();
            let _ = write(&ready_write, &[u8::from(ok)]);
            // Held until the parent has opened the namespace (its end closes).
            let _ = read(hold_read.as_raw_fd(), &mut [0u8]);
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => child,
    };
    drop(ready_write);
    drop(hold_read);
    let result = (|| {
        let mut ready = [0u8];
        match read(ready_read.as_raw_fd(), &mut ready) {
            Ok(1) if ready[0] == 1 => {}
            _ => return Err("cannot make a user namespace (unshare)".to_string()),
        }
        let proc = PathBuf::from(format!("/proc/{child}"));
        fs::write(proc.join("uid_map"), map_text(&mappings.uids))
            .map_err(|e| format!("cannot write the uid map: {e}"))?;
        fs::write(proc.join("gid_map"), map_text(&mappings.gids))
            .map_err(|e| format!("cannot write the gid map: {e}"))?;
        fs::File::open(proc.join("ns/user"))
            .map(OwnedFd::from)
            .map_err(|e| format!("cannot open the user namespace: {e}"))
    })();
    drop(hold_write);
    let _ = kill(child, Signal::SIGKILL);
    reap(child);
    result
}

/// Waits for `child`; one the kernel reaped already (SIGCHLD ignored, as in
/// the zygote's helpers) is gone.
fn reap(child: Pid) {
    let _ = nix::sys::wait::waitpid(child, None);
}

/// Mounts an idmapped copy of `dir` on `at`.
fn idmapped_copy(dir: &Path, userns: &OwnedFd, at: &Path) -> Result<(), String> {
    let fail = |what: &str, e: std::io::Error| {
        format!("cannot {what} an idmapped mount of {}: {e}", dir.display())
    };
    let tree = detached::clone_tree(dir, false).map_err(|e| fail("make", e))?;
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    detached::set_attributes(&tree, &attr, false).map_err(|error| {
        let hint = if error.raw_os_error() == Some(libc::EINVAL) {
            " (its filesystem cannot be idmapped with this kernel: tmpfs needs Linux 6.3 or later)"
        } else {
            ""
        };
        format!(
            "cannot map the IDs of an idmapped mount of {}: {error}{hint}",
            dir.display()
        )
    })?;
    detached::place(&tree, at).map_err(|e| fail("place", e))
}

/// The idmapped lower layers of one overlay mount, under `<dir>/<n>`;
/// dropping it detaches and removes them (the overlay keeps its own hold).
pub struct IdmappedLayers {
    dir: PathBuf,
    mounted: Vec<PathBuf>,
}

impl IdmappedLayers {
    /// Replaces the overlay's `lowerdir=` layers in `options` by idmapped
    /// copies under `dir`.
    pub fn prepare(
        options: &mut [String],
        mappings: &IdMappings,
        dir: &Path,
    ) -> Result<Self, String> {
        let mut layers = IdmappedLayers {
            dir: dir.to_path_buf(),
            mounted: Vec::new(),
        };
        let Some(lower) = options.iter_mut().find(|o| o.starts_with("lowerdir=")) else {
            return Err("an idmapped overlay without lowerdir=".into());
        };
        let userns = user_namespace(mappings)?;
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut mapped = Vec::new();
        for (n, layer) in lower["lowerdir=".len()..].split(':').enumerate() {
            let at = dir.join(n.to_string());
            fs::create_dir(&at).map_err(|e| format!("cannot create {}: {e}", at.display()))?;
            idmapped_copy(Path::new(layer), &userns, &at)?;
            layers.mounted.push(at.clone());
            mapped.push(at.display().to_string());
        }
        *lower = format!("lowerdir={}", mapped.join(":"));
        Ok(layers)
    }
}

impl Drop for IdmappedLayers {
    fn drop(&mut self) {
        for at in &self.mounted {
            let _ = umount2(at, MntFlags::MNT_DETACH);
            let _ = fs::remove_dir(at);
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn mappings_are_taken_out_of_the_options() {
        let mut opts = options(&[
            "index=off",
            "lowerdir=/a:/b",
            "uidmap=0:6553600:65536",
            "gidmap=0:6553600:1,1:7000000:65535",
        ]);
        let mappings = IdMappings::take_from(&mut opts).unwrap().unwrap();
        assert_eq!(opts, options(&["index=off", "lowerdir=/a:/b"]));
        assert_eq!(
            mappings.uids,
            [IdRange {
                container: 0,
                host: 6553600,
                size: 65536
            }]
        );
        assert_eq!(mappings.gids.len(), 2);
        assert_eq!(map_text(&mappings.gids), "0 6553600 1\n1 7000000 65535\n");
        let mut plain = options(&["index=off", "lowerdir=/a"]);
        assert_eq!(IdMappings::take_from(&mut plain).unwrap(), None);
    }

    #[test]
    fn bad_mappings_are_refused() {
        for bad in [
            &["uidmap=0:1", "gidmap=0:1:1"][..],
            &["uidmap=0:1:0", "gidmap=0:1:1"],
            &["uidmap=x:1:1", "gidmap=0:1:1"],
            &["uidmap=0:1:1"],
        ] {
            assert!(IdMappings::take_from(&mut options(bad)).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod mount_tests {
    use super::*;

    /// Needs root (mounts): `make unit-test` runs it.
    #[test]
    #[ignore = "needs root"]
    fn an_idmapped_layer_shows_the_hosts_root_as_the_mapped_root() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer");
        fs::create_dir(&layer).unwrap();
        fs::write(layer.join("file"), "x").unwrap();
        let mut options = vec![format!("lowerdir={}", layer.display())];
        let range = IdRange {
            container: 0,
            host: 6553600,
            size: 65536,
        };
        let mappings = IdMappings {
            uids: vec![range],
            gids: vec![range],
        };
        let mapped =
            IdmappedLayers::prepare(&mut options, &mappings, &dir.path().join("m")).unwrap();
        let through = dir.path().join("m/0/file");
        assert_eq!(
            options,
            [format!("lowerdir={}", dir.path().join("m/0").display())]
        );
        assert_eq!(fs::metadata(layer.join("file")).unwrap().uid(), 0);
        assert_eq!(fs::metadata(&through).unwrap().uid(), 6553600);
        drop(mapped);
        assert!(!dir.path().join("m").exists(), "removed once dropped");
    }
}
