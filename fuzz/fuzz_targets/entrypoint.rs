//! `process.args[0]` → `Entrypoint` (path + optional `#export`) → the paths
//! tried inside the container's root.
//!
//! Input: `arg0 \n cwd \n PATH` (later lines optional); the whole input is
//! also parsed as one arg0, newlines and all.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::{ProcessBuilder, SpecBuilder};
use shim_image::{Entrypoint, SpecError, WasmProcess};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_parse(text);
    let mut lines = text.splitn(3, '\n');
    let arg0 = lines.next().unwrap_or_default();
    let cwd = lines.next().unwrap_or("/");
    let path_env = lines.next();
    let Some(entry) = check_parse(arg0) else {
        return;
    };
    check_candidates(&entry, Path::new(cwd), path_env, data.len());
    check_from_spec(arg0, &entry, cwd, path_env);
});

/// `parse` splits at the last `#`: the export is never empty and never holds
/// a `#`, and path + `#` + export gives back arg0.
fn check_parse(arg0: &str) -> Option<Entrypoint> {
    match Entrypoint::parse(arg0) {
        Ok(entry) => {
            match &entry.export {
                None => {
                    assert!(!arg0.contains('#'), "{arg0:?}: a `#` but no export");
                    assert_eq!(entry.path, arg0);
                }
                Some(export) => {
                    assert!(!export.is_empty(), "{arg0:?}: empty export");
                    assert!(
                        !export.contains('#'),
                        "{arg0:?}: export {export:?} holds a #"
                    );
                    let joined = format!("{}#{export}", entry.path);
                    assert_eq!(joined, arg0, "path#export is not arg0");
                    assert_eq!(Entrypoint::parse(&joined).as_ref(), Ok(&entry));
                }
            }
            // The path alone names the same file; it reparses to itself when
            // it has no `#` of its own (else its last `#` would be taken as
            // an export).
            if !entry.path.contains('#') {
                let path_only = Entrypoint::parse(&entry.path).expect("a path without #");
                assert_eq!(path_only.path, entry.path);
                assert_eq!(path_only.export, None);
            }
            Some(entry)
        }
        Err(SpecError::EmptyExport(shown)) => {
            assert_eq!(shown, arg0);
            assert!(
                arg0.ends_with('#'),
                "{arg0:?}: EmptyExport without a trailing #"
            );
            None
        }
        Err(other) => panic!("{arg0:?}: unexpected error {other:?}"),
    }
}

/// A name with a `/` is tried in cwd only; a bare name in cwd, then in each
/// non-empty `PATH` directory, in order, every one joined onto cwd.
fn check_candidates(entry: &Entrypoint, cwd: &Path, path_env: Option<&str>, pick: usize) {
    let candidates = entry.candidates(cwd, path_env);
    assert!(!candidates.is_empty());
    let name = Path::new(&entry.path);
    assert_eq!(candidates[0], cwd.join(name));
    if entry.path.contains('/') {
        assert_eq!(candidates.len(), 1);
    } else {
        let dirs: Vec<&str> = path_env
            .unwrap_or_default()
            .split(':')
            .filter(|d| !d.is_empty())
            .collect();
        assert_eq!(candidates.len(), 1 + dirs.len());
        for (dir, candidate) in dirs.iter().zip(&candidates[1..]) {
            assert_eq!(*candidate, cwd.join(dir).join(name));
        }
    }
    // Nothing found: the first candidate; found: exactly the one that is a file.
    assert_eq!(entry.resolve(cwd, path_env, |_| false), candidates[0]);
    assert_eq!(entry.resolve(cwd, path_env, |_| true), candidates[0]);
    let wanted: PathBuf = candidates[pick % candidates.len()].clone();
    assert_eq!(entry.resolve(cwd, path_env, |p| p == wanted), wanted);
}

/// The same arg0 in a spec: `from_spec` takes its entrypoint from args[0]
/// and keeps argv as given.
fn check_from_spec(arg0: &str, entry: &Entrypoint, cwd: &str, path_env: Option<&str>) {
    let mut env = vec!["HOME=/".to_string()];
    if let Some(path) = path_env {
        env.push(format!("PATH={path}"));
    }
    let Ok(process) = ProcessBuilder::default()
        .args(vec![arg0.to_string(), "x".to_string()])
        .env(env)
        .cwd(cwd)
        .build()
    else {
        return;
    };
    let Ok(spec) = SpecBuilder::default().process(process).build() else {
        return;
    };
    match WasmProcess::from_spec(&spec) {
        Ok(p) => {
            assert_eq!(&p.entrypoint, entry);
            assert_eq!(p.args, [arg0, "x"]);
            assert!(p.cwd.is_absolute());
            // PATH can hold `=`; only the first splits key from value.
            if let Some(path) = path_env {
                assert_eq!(p.path_env(), Some(path));
            }
        }
        Err(SpecError::RelativeCwd(_)) => assert!(!Path::new(cwd).is_absolute()),
        Err(other) => panic!("{arg0:?} in {cwd:?}: unexpected error {other:?}"),
    }
}
