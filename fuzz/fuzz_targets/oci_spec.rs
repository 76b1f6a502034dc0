//! Arbitrary bytes as a bundle's config.json (serde_json → oci_spec Spec),
//! then everything shim-image reads from a spec: the process, the HTTP port,
//! the memory limit, the filesystem grants and the preopens and deadline
//! annotations.
#![no_main]

use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::Spec;
use shim_image::{
    annotation, deadline, filesystem_grants, grant_for, memory_limit, narrowed_grants, Entrypoint,
    Grant, SpecError, WasmProcess, DEADLINE_ANNOTATION, HTTP_PORT_ANNOTATION, HTTP_PORT_ENV,
    PREOPENS_ANNOTATION,
};

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<Spec>(data) else {
        return;
    };
    check_process(&spec);
    check_memory_limit(&spec);
    check_grants(&spec);
    check_deadline(&spec);
});

fn check_process(spec: &Spec) {
    let process = match WasmProcess::from_spec(spec) {
        Ok(process) => process,
        Err(SpecError::MissingProcess) => return assert!(spec.process().is_none()),
        Err(_) => return,
    };
    let raw = spec.process().as_ref().expect("from_spec read a process");
    assert!(!process.args.is_empty());
    assert_eq!(Some(&process.args), raw.args().as_ref(), "argv as given");
    assert_eq!(
        Entrypoint::parse(&process.args[0]).as_ref(),
        Ok(&process.entrypoint)
    );
    assert!(process.cwd.is_absolute());
    let env = raw.env().clone().unwrap_or_default();
    assert_eq!(process.env.len(), env.len());
    for ((key, value), entry) in process.env.iter().zip(&env) {
        assert!(!key.contains('='), "{entry:?}: key {key:?}");
        assert_eq!(format!("{key}={value}"), *entry);
    }
    let default = 8080;
    let has_env = process.env.iter().any(|(k, _)| k == HTTP_PORT_ENV);
    match process.http_port(spec, default) {
        Ok(port) => {
            assert_ne!(port, 0);
            if !has_env && annotation(spec, HTTP_PORT_ANNOTATION).is_none() {
                assert_eq!(port, default);
            }
        }
        Err(e) => assert!(matches!(e, SpecError::BadPort { .. }), "{e:?}"),
    }
    let _ = process.path_env();
}

fn check_memory_limit(spec: &Spec) {
    let raw = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit());
    match (memory_limit(spec), raw) {
        (Some(limit), Some(raw)) => assert_eq!(i64::try_from(limit), Ok(raw)),
        (None, raw) => assert!(raw.is_none_or(|r| r < 0), "{raw:?} dropped"),
        (Some(limit), None) => panic!("limit {limit} out of nowhere"),
    }
}

fn check_grants(spec: &Spec) {
    let grants = filesystem_grants(spec);
    assert_eq!(grants[0].path, Path::new("/"), "the root first");
    for grant in &grants[1..] {
        // A mount gets its own grant only where its access differs.
        let parent = grant_for(&grants[..1], &grant.path);
        assert!(parent.is_some(), "{grant:?} is outside the root");
    }
    let narrowed = match narrowed_grants(spec) {
        Ok(narrowed) => narrowed,
        Err(e) => {
            assert!(
                matches!(e, SpecError::BadAnnotation { annotation, .. } if annotation == PREOPENS_ANNOTATION),
                "{e:?}"
            );
            return;
        }
    };
    let Some(value) = annotation(spec, PREOPENS_ANNOTATION) else {
        assert_eq!(narrowed, grants, "no annotation: the spec's grants");
        return;
    };
    for (i, g) in narrowed.iter().enumerate() {
        assert!(g.path.is_absolute(), "{value:?}: {g:?}");
        assert!(
            !narrowed[..i].iter().any(|h| h.path == g.path),
            "{value:?}: {} granted twice",
            g.path.display()
        );
    }
    // Never widens: wherever the narrowed grants let the guest write (at any
    // path where some grant starts), the spec's grants do too.
    let points = narrowed.iter().chain(&grants).map(|g| g.path.as_path());
    for point in points {
        if let Some(g) = grant_for(&narrowed, point) {
            if !g.read_only {
                let spec_grant = grant_for(&grants, point);
                assert!(
                    spec_grant.is_some_and(|s| !s.read_only),
                    "{value:?} widens {}: narrowed {g:?}, spec {spec_grant:?} (grants {grants:?}, narrowed {narrowed:?})",
                    point.display()
                );
            }
        }
    }
    // A `:ro` entry is read-only, and so is everything the guest sees below
    // it whose nearest listed directory is that entry.
    let listed: Vec<(std::path::PathBuf, bool)> = value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| match e.rsplit_once(':') {
            Some((p, mode)) => (Path::new(p).components().collect(), mode == "ro"),
            None => (Path::new(e).components().collect(), false),
        })
        .collect();
    for g in &narrowed {
        let nearest = listed
            .iter()
            .filter(|(p, _)| g.path.starts_with(p))
            .max_by_key(|(p, _)| p.components().count());
        let (listed_path, ro) = nearest.expect("every grant is at or below a listed path");
        assert!(
            !ro || g.read_only,
            "{value:?}: {g:?} is writable below {listed_path:?}:ro"
        );
    }
    let _: Vec<Grant> = narrowed;
}

fn check_deadline(spec: &Spec) {
    match deadline(spec) {
        Ok(None) => assert!(annotation(spec, DEADLINE_ANNOTATION).is_none()),
        Ok(Some(d)) => {
            let value = annotation(spec, DEADLINE_ANNOTATION).expect("set");
            assert!(d > Duration::ZERO, "{value:?}: a zero deadline");
            assert!(d <= Duration::from_secs(366 * 86400), "{value:?}: {d:?}");
        }
        Err(e) => assert!(
            matches!(e, SpecError::BadAnnotation { annotation, .. } if annotation == DEADLINE_ANNOTATION),
            "{e:?}"
        ),
    }
}
