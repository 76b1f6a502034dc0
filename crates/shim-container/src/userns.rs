//! Containers with their own user namespace (`hostUsers: false`): their
//! bind mounts, and execs into them.
//!
//! Bind mounts: libcontainer makes a bind mount from inside the container's
//! process, as the container's root, which is nobody on the host: it cannot
//! reach a source under containerd's 0700 directories (the pod's
//! `/dev/shm`, `/etc/resolv.conf`, every volume). So, as runc does, the
//! source is opened on the host: the create helper takes the spec's bind
//! mounts out of what libcontainer sees and makes each a detached copy of
//! its source (`open_tree`), with the spec's flags; the container's process
//! inherits the copies and moves each onto its destination in its root
//! ([`DetachedBinds::attach`]) before anything else of the container is looked at.
//!
//! Execs: libcontainer 0.7's tenant (exec) builder joins every namespace of
//! the container but its user namespace, so an exec would run as the
//! host's root. The exec's helper opens the container's user namespace
//! ([`container_user_namespace`]); the exec's process joins it first thing
//! ([`join_user_namespace`]), and takes its user's IDs there.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::detached;
use crate::idmap::{user_namespace, IdMappings};

/// One bind mount, opened on the host.
#[derive(Debug)]
pub struct DetachedBind {
    destination: PathBuf,
    tree: OwnedFd,
    is_dir: bool,
}

/// The container's bind mounts, until its process has attached them, and
/// the host IDs of its root (who owns the mountpoints made for them).
#[derive(Debug, Default)]
pub struct DetachedBinds(Mutex<Vec<DetachedBind>>, Option<(u32, u32)>);

/// Whether the container gets a user namespace of its own (or joins its pod's).
pub fn has_user_namespace(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|linux| linux.namespaces().as_ref())
        .is_some_and(|namespaces| {
            namespaces
                .iter()
                .any(|ns| ns.typ() == LinuxNamespaceType::User)
        })
}

impl DetachedBinds {
    /// Helper side: takes the bind mounts out of `spec` when the container
    /// has its own user namespace, and opens each.
    pub fn take_from(spec: &mut Spec) -> Result<Self, String> {
        if !has_user_namespace(spec) {
            return Ok(Self::default());
        }
        let Some(mounts) = spec.mounts().clone() else {
            return Ok(Self::default());
        };
        let (binds, kept): (Vec<_>, Vec<_>) = mounts.into_iter().partition(|m| {
            m.typ().as_deref() == Some("bind")
                || m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind")
        });
        let linux = spec.linux().clone().unwrap_or_default();
        let container_mappings = IdMappings::from_spec(
            linux.uid_mappings().as_deref().unwrap_or_default(),
            linux.gid_mappings().as_deref().unwrap_or_default(),
        );
        let mut binds_out = Vec::new();
        for mount in &binds {
            let source = mount.source().clone().ok_or_else(|| {
                format!(
                    "the bind mount at {} has no source",
                    mount.destination().display()
                )
            })?;
            let options = mount.options().clone().unwrap_or_default();
            let has = |o: &str| options.iter().any(|x| x == o);
            let tree = detached::clone_tree(&source, has("rbind")).map_err(|e| {
                format!(
                    "the bind mount of {}: cannot open it: {e}",
                    source.display()
                )
            })?;
            let mut attr_set = 0;
            for (option, attr) in [
                ("ro", libc::MOUNT_ATTR_RDONLY),
                ("nosuid", libc::MOUNT_ATTR_NOSUID),
                ("nodev", libc::MOUNT_ATTR_NODEV),
                ("noexec", libc::MOUNT_ATTR_NOEXEC),
            ] {
                if has(option) {
                    attr_set |= attr;
                }
            }
            let propagation = if has("rshared") || has("shared") {
                libc::MS_SHARED
            } else if has("rslave") || has("slave") {
                libc::MS_SLAVE
            } else {
                libc::MS_PRIVATE
            };
            // An idmapped mount (`idmap`, `ridmap`, or mappings of its
            // own): its files owned as the mappings say, seen from inside.
            let mount_mappings = IdMappings::from_spec(
                mount.uid_mappings().as_deref().unwrap_or_default(),
                mount.gid_mappings().as_deref().unwrap_or_default(),
            );
            let idmapped = has("idmap") || has("ridmap") || !mount_mappings.uids.is_empty();
            let userns = if idmapped {
                let mappings = if mount_mappings.uids.is_empty() {
                    &container_mappings
                } else {
                    &mount_mappings
                };
                attr_set |= libc::MOUNT_ATTR_IDMAP;
                Some(
                    user_namespace(mappings)
                        .map_err(|e| format!("the idmapped mount of {}: {e}", source.display()))?,
                )
            } else {
                None
            };
            let attr = libc::mount_attr {
                attr_set,
                attr_clr: 0,
                propagation,
                userns_fd: userns.as_ref().map_or(0, |fd| fd.as_raw_fd() as u64),
            };
            detached::set_attributes(&tree, &attr, has("rbind") || has("ridmap")).map_err(|e| {
                format!(
                    "the bind mount of {}: cannot set its flags: {e}",
                    source.display()
                )
            })?;
            binds_out.push(DetachedBind {
                destination: mount.destination().clone(),
                is_dir: source.is_dir(),
                tree,
            });
        }
        spec.set_mounts(Some(kept));
        let host_id = |ranges: &[crate::idmap::IdRange]| {
            ranges.iter().find(|r| r.container == 0).map(|r| r.host)
        };
        let root = host_id(&container_mappings.uids).zip(host_id(&container_mappings.gids));
        Ok(Self(Mutex::new(binds_out), root))
    }

    /// Helper side: makes each bind mount's mountpoint in the container's
    /// root, mounted on the host at `rootfs`, while it is still writable
    /// (libcontainer may make it read-only), owned by the container's root
    /// as if it had made them. One component at a time, never
    /// following a link: a path through a link of the image is left to
    /// [`DetachedBinds::attach`], which resolves it inside the container.
    pub fn make_mountpoints(&self, rootfs: &std::path::Path) {
        use nix::fcntl::{openat, OFlag};
        use nix::sys::stat::{mkdirat, Mode};
        let binds = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let owner = |dir: &OwnedFd, name: &std::ffi::OsStr| {
            if let Some((uid, gid)) = self.1 {
                let _ = nix::unistd::fchownat(
                    Some(dir.as_raw_fd()),
                    name,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                );
            }
        };
        for bind in binds.iter() {
            let Ok(root) =
                nix::fcntl::open(rootfs, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
            else {
                return;
            };
            // SAFETY: open returned a descriptor we now own.
            let mut dir = unsafe { OwnedFd::from_raw_fd(root) };
            let parts: Vec<_> = bind
                .destination
                .components()
                .filter_map(|c| match c {
                    std::path::Component::Normal(name) => Some(name),
                    _ => None,
                })
                .collect();
            let Some((last, parents)) = parts.split_last() else {
                continue;
            };
            let mut reached = true;
            for name in parents {
                if mkdirat(
                    Some(dir.as_raw_fd()),
                    *name,
                    Mode::from_bits_truncate(0o755),
                )
                .is_ok()
                {
                    owner(&dir, name);
                }
                match openat(
                    Some(dir.as_raw_fd()),
                    *name,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) {
                    // SAFETY: openat returned a descriptor we now own.
                    Ok(next) => dir = unsafe { OwnedFd::from_raw_fd(next) },
                    Err(_) => {
                        reached = false;
                        break;
                    }
                }
            }
            if !reached {
                continue;
            }
            if bind.is_dir {
                if mkdirat(
                    Some(dir.as_raw_fd()),
                    *last,
                    Mode::from_bits_truncate(0o755),
                )
                .is_ok()
                {
                    owner(&dir, last);
                }
            } else if let Ok(file) = openat(
                Some(dir.as_raw_fd()),
                *last,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC
                    | OFlag::O_WRONLY,
                Mode::from_bits_truncate(0o644),
            ) {
                // SAFETY: closes the file openat just created.
                unsafe { libc::close(file) };
                owner(&dir, last);
            }
        }
    }

    /// Container side, in its root: moves each bind mount onto its
    /// destination (made if missing), in the spec's order, and closes it.
    pub fn attach(&self) -> Result<(), String> {
        let binds = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for bind in binds {
            let destination = &bind.destination;
            let fail = |what: &str, e: &dyn std::fmt::Display| {
                format!(
                    "the bind mount at {}: cannot {what}: {e}",
                    destination.display()
                )
            };
            if bind.is_dir {
                std::fs::create_dir_all(destination).map_err(|e| fail("make it", &e))?;
            } else {
                if let Some(parent) = destination.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| fail("make its directory", &e))?;
                }
                if !destination.exists() {
                    std::fs::File::create(destination).map_err(|e| fail("make it", &e))?;
                }
            }
            detached::place(&bind.tree, destination).map_err(|e| fail("mount it", &e))?;
        }
        Ok(())
    }

    /// The descriptors it holds (inherited by the container's process).
    pub fn descriptors(&self) -> Vec<i32> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|b| b.tree.as_raw_fd())
            .collect()
    }
}

/// Exec side, in the helper: the user namespace of the container's process
/// `pid`, if the container has its own.
pub fn container_user_namespace(spec: &Spec, pid: i32) -> Result<Option<OwnedFd>, String> {
    if !has_user_namespace(spec) {
        return Ok(None);
    }
    std::fs::File::open(format!("/proc/{pid}/ns/user"))
        .map(|file| Some(file.into()))
        .map_err(|e| format!("cannot open the container's user namespace: {e}"))
}

/// Exec side, in its process before anything else: joins the container's
/// user namespace and becomes the process's user there (with its
/// capabilities kept, for the rest of the set-up; `confinement` drops them).
pub fn join_user_namespace(namespace: &OwnedFd, spec: &Spec) -> Result<(), String> {
    use libcontainer::syscall::syscall::create_syscall;
    use nix::unistd::{Gid, Uid};
    nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|e| format!("cannot join the container's user namespace: {e}"))?;
    let user = spec
        .process()
        .as_ref()
        .map(|p| p.user().clone())
        .unwrap_or_default();
    let syscall = create_syscall();
    if let Some(groups) = user.additional_gids().as_ref().filter(|g| !g.is_empty()) {
        let groups: Vec<Gid> = groups.iter().map(|&g| Gid::from_raw(g)).collect();
        syscall
            .set_groups(&groups)
            .map_err(|e| format!("cannot set the exec's groups in its user namespace: {e}"))?;
    }
    syscall
        .set_id(Uid::from_raw(user.uid()), Gid::from_raw(user.gid()))
        .map_err(|e| format!("cannot become the exec's user in its user namespace: {e}"))?;
    libcontainer::capabilities::reset_effective(syscall.as_ref())
        .map_err(|e| format!("cannot keep the exec's capabilities: {e}"))
}
