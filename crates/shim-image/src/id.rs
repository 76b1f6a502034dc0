//! containerd's identifier rule, for the ids the shim turns into file names.
//!
//! Task ids, exec ids and namespaces come from containerd's callers and end up
//! in paths (`<bundle>/libcontainer/<id>`, `<bundle>/.exec-<exec id>.json`,
//! the cgroup named after the id). containerd checks them with
//! `identifiers.Validate` (`^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$`, at most
//! 76 characters); the shim checks again where they come in, so that neither a
//! client that reaches the shim's socket nor an older containerd can name
//! `..`, `/` or an empty component.

/// containerd's `identifiers.maxLength`.
pub const MAX_ID_LEN: usize = 76;

/// Why an id is refused; `kind` says which id ("task", "exec", "namespace").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("the {kind} id is empty")]
    Empty { kind: &'static str },
    #[error(
        "the {kind} id {id:?} is {len} characters long; containerd allows at most {MAX_ID_LEN}"
    )]
    TooLong {
        kind: &'static str,
        id: String,
        len: usize,
    },
    #[error(
        "the {kind} id {id:?} is not a containerd identifier: runs of letters and digits \
         joined by single '.', '_' or '-'"
    )]
    Malformed { kind: &'static str, id: String },
}

/// Checks `id` against containerd's identifier rule. An accepted id is one
/// normal path component: no `/`, never `.` or `..`, never empty.
pub fn validate_id(kind: &'static str, id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            id: id.to_string(),
            len: id.len(),
        });
    }
    // Every separator sits between two alphanumerics: none first, none
    // last, never two in a row.
    let mut after_alnum = false;
    for c in id.bytes() {
        match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => after_alnum = true,
            b'.' | b'_' | b'-' if after_alnum => after_alnum = false,
            _ => {
                return Err(IdError::Malformed {
                    kind,
                    id: id.to_string(),
                })
            }
        }
    }
    if !after_alnum {
        return Err(IdError::Malformed {
            kind,
            id: id.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Component, Path};

    #[test]
    fn containerd_and_cri_ids_are_accepted() {
        for id in [
            "a",
            "a_b-c.d",
            "nginx",
            "k8s.io",
            "Default",
            "0",
            "exec-1a2b",
            &"f".repeat(64), // a CRI container id (hex sha256)
            "6ea6e2c12ac1e52ba0d88ce0b0d1d4d0b1f96e9c1b3e0f28b3c3b9a4d6e2f8a1",
            &"a".repeat(MAX_ID_LEN),
        ] {
            assert_eq!(validate_id("task", id), Ok(()), "{id}");
        }
    }

    #[test]
    fn ids_that_could_leave_their_directory_are_refused() {
        for id in [
            "../x", "..", ".", "a/b", "/a", "a/", "a..b", ".a", "a.", "-a", "a-", "a__b", "a b",
            "a\0b", "a\nb", "é", "a:b", "a\\b",
        ] {
            let err = validate_id("task", id).unwrap_err();
            assert!(matches!(err, IdError::Malformed { .. }), "{id:?}: {err:?}");
        }
        assert_eq!(
            validate_id("exec", ""),
            Err(IdError::Empty { kind: "exec" })
        );
        let long = "a".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            validate_id("task", &long).unwrap_err().to_string(),
            format!("the task id {long:?} is 77 characters long; containerd allows at most 76")
        );
        assert_eq!(
            validate_id("exec", "../x").unwrap_err().to_string(),
            "the exec id \"../x\" is not a containerd identifier: runs of letters and digits \
             joined by single '.', '_' or '-'"
        );
    }

    /// Every accepted id over a small alphabet is a single normal path component.
    #[test]
    fn an_accepted_id_is_one_path_component() {
        let alphabet = ['a', '0', '.', '_', '-', '/'];
        let mut ids = vec![String::new()];
        for _ in 0..4 {
            ids = ids
                .iter()
                .flat_map(|id| alphabet.iter().map(move |c| format!("{id}{c}")))
                .collect();
            for id in &ids {
                if validate_id("task", id).is_ok() {
                    let components: Vec<_> = Path::new(id).components().collect();
                    assert!(
                        matches!(components[..], [Component::Normal(c)] if c == id.as_str()),
                        "{id:?}"
                    );
                }
            }
        }
    }
}
