//! The one reader of an OCI bundle's `config.json`, and the one writer of
//! what libcontainer is given instead. containerd's file is never written:
//! what libcontainer must see differently (seccomp and capabilities left to
//! the executor, a wasm layer's default argv, no cgroup mount where
//! libcontainer would mount the wrong one) goes to a private copy beside
//! the container's state, removed with it (docs/architecture.md, "Lifecycle").

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

/// A bundle and its runtime spec, loaded once.
#[derive(Debug, Clone)]
pub struct Bundle {
    dir: PathBuf,
    spec: Spec,
}

/// `error` and its sources: oci-spec says only "serde failed" and keeps
/// what failed (the field, the value, where) in its source.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

impl Bundle {
    /// Loads `dir`'s `config.json`; the error says what in it is wrong.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let spec = Spec::load(dir.join("config.json")).map_err(|e| {
            format!(
                "its runtime spec (config.json) is not valid: {}",
                with_causes(&e)
            )
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            spec,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The root directory the spec names: `root.path`, relative to the
    /// bundle unless absolute (a spec given whole, as `ctr run --config`
    /// gives, may name any directory); `<bundle>/rootfs` when it says nothing.
    pub fn root(&self) -> PathBuf {
        match self.spec.root() {
            Some(root) => self.dir.join(root.path()),
            None => self.dir.join("rootfs"),
        }
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.spec
            .annotations()
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    /// `linux.cgroupsPath`, which tells the cgroup driver when the runtime
    /// options do not.
    pub fn cgroups_path(&self) -> Option<String> {
        let path = self.spec.linux().as_ref()?.cgroups_path().as_ref()?;
        Some(path.display().to_string())
    }

    /// Whether the spec asks for a terminal (`process.terminal`).
    pub fn terminal(&self) -> bool {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
    }

    /// Writes `spec` (this bundle's, as libcontainer is to see it) as the
    /// private bundle `dir` (`state::staged_bundle`), its root made absolute.
    pub(crate) fn stage(&self, dir: &Path, spec: &Spec) -> Result<(), String> {
        let mut spec = spec.clone();
        if let Some(root) = spec.root().clone() {
            let mut root = root;
            root.set_path(self.root());
            spec.set_root(Some(root));
        }
        std::fs::create_dir_all(dir)
            .map_err(Into::into)
            .and_then(|()| spec.save(dir.join("config.json")))
            .map_err(|e| format!("cannot write the runtime spec for libcontainer: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(spec: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), spec).unwrap();
        dir
    }

    #[test]
    fn the_root_is_the_bundles_unless_the_spec_names_an_absolute_one() {
        let dir = bundle(r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#);
        let loaded = Bundle::load(dir.path()).unwrap();
        assert_eq!(loaded.root(), dir.path().join("rootfs"));
        let dir = bundle(r#"{"ociVersion":"1.0.2","root":{"path":"/srv/root"}}"#);
        assert_eq!(
            Bundle::load(dir.path()).unwrap().root(),
            Path::new("/srv/root")
        );
    }

    #[test]
    fn a_bad_spec_says_what_is_wrong() {
        let dir = bundle(r#"{"ociVersion":"1.0.2","process":{"args":"x"}}"#);
        let e = Bundle::load(dir.path()).unwrap_err();
        assert!(
            e.starts_with("its runtime spec (config.json) is not valid: ") && e.contains("line 1"),
            "{e}"
        );
    }

    #[test]
    fn staging_leaves_containerds_file_as_it_was() {
        let text = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"annotations":{"a":"b"}}"#;
        let dir = bundle(text);
        let loaded = Bundle::load(dir.path()).unwrap();
        let mut spec = loaded.spec().clone();
        spec.set_annotations(None);
        let staged = dir.path().join("libcontainer/.c1.bundle");
        loaded.stage(&staged, &spec).unwrap();
        let read = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        assert_eq!(read, text, "containerd's config.json is not rewritten");
        let copy = Bundle::load(&staged).unwrap();
        assert_eq!(copy.annotation("a"), None);
        assert_eq!(
            copy.root(),
            dir.path().join("rootfs"),
            "its root is absolute"
        );
        assert_eq!(loaded.annotation("a"), Some("b"));
    }
}
