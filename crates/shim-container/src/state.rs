//! libcontainer's state of a bundle's containers, and removing all a
//! container owns (its processes, cgroup, state and rootfs mount).

use std::path::{Path, PathBuf};

use libcgroups::common::{create_cgroup_manager, CgroupConfig, CgroupManager};
use libcontainer::container::Container;

use crate::{rootfs, Error};

/// Where libcontainer keeps the state of the containers of `bundle`.
pub(crate) fn state_root(bundle: &Path) -> PathBuf {
    bundle.join("libcontainer")
}

/// The private bundle libcontainer builds container `id` from
/// ([`crate::bundle::Bundle::stage`]): containerd's is never written.
pub(crate) fn staged_bundle(bundle: &Path, id: &str) -> PathBuf {
    state_root(bundle).join(format!(".{id}.bundle"))
}

/// The container's memory budget, which the shim and the container's
/// processes map (`shim_engine::budget`).
pub(crate) fn budget_file(bundle: &Path, id: &str) -> PathBuf {
    state_root(bundle).join(format!(".{id}.memory"))
}

/// Kills what is left of container `id`, removes its cgroup and state, and
/// unmounts its rootfs. Safe to call again, and after a shim crash (the
/// `delete` action of the shim binary calls it).
pub fn cleanup(bundle: &Path, id: &str) -> Result<(), Error> {
    shim_image::validate_id("task", id).map_err(|e| Error::Create(format!("invalid id: {e}")))?;
    let state = cleanup_state(bundle, id);
    rootfs::unmount_rootfs(bundle)?;
    state
}

/// How long cleanup keeps trying: SIGKILLed processes take a moment to die
/// and be reaped (by the shim, or by init after a shim crash), and a cgroup v1
/// directory cannot be removed before they are; libcontainer alone retries
/// for about a second, which a loaded node can outlast.
const CLEANUP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) fn cleanup_state(bundle: &Path, id: &str) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + CLEANUP_PATIENCE;
    loop {
        match try_cleanup_state(bundle, id) {
            Err(e) if std::time::Instant::now() < deadline => {
                log::debug!("container {id}: cleanup not done yet ({e}); retrying");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

fn try_cleanup_state(bundle: &Path, id: &str) -> Result<(), Error> {
    let root = state_root(bundle);
    let dir = root.join(id);
    if dir.exists() {
        match Container::load(dir.clone()) {
            Ok(mut container) => container
                .delete(true)
                .map_err(|e| Error::runtime("cannot delete the container", e))?,
            // State written only half-way: there is nothing in it to run hooks with.
            Err(_) => std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::runtime("cannot remove container state", e))?,
        }
    }
    // The spec libcontainer was given (`Bundle::stage`), once its hooks are done.
    match std::fs::remove_dir_all(staged_bundle(bundle, id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::runtime("cannot remove container state", e))
        }
        _ => {}
    }
    match std::fs::remove_file(budget_file(bundle, id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::runtime("cannot remove container state", e))
        }
        _ => {}
    }
    // A create that failed half-way can leave the cgroup without any state
    // that points to it; the spec still names it.
    remove_spec_cgroup(bundle, id)?;
    match std::fs::remove_dir(&root) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::runtime("cannot remove container state", e))
        }
        _ => Ok(()),
    }
}

/// Kills whatever is in the cgroup the bundle's spec names and removes it.
fn remove_spec_cgroup(bundle: &Path, id: &str) -> Result<(), Error> {
    let Ok(bundle) = crate::bundle::Bundle::load(bundle) else {
        return Ok(()); // no spec, so nothing was created from it
    };
    let Some(linux) = bundle.spec().linux() else {
        return Ok(());
    };
    let cgroup_path = libcontainer::utils::get_cgroup_path(linux.cgroups_path(), id);
    // containerd writes cgroupfs paths absolute ("/k8s.io/<id>") and systemd
    // ones as "slice:prefix:name"; with no state left, the shape tells which.
    let systemd_cgroup = cgroup_path
        .to_str()
        .is_some_and(|p| !p.starts_with('/') && p.split(':').count() == 3);
    let manager = create_cgroup_manager(CgroupConfig {
        cgroup_path,
        systemd_cgroup,
        container_name: id.to_string(),
    })
    .map_err(|e| Error::runtime("cannot open the container's cgroup", e))?;
    manager
        .remove()
        .map_err(|e| Error::runtime("cannot remove the container's cgroup", e))
}
