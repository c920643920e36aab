//! The one rule for device ids, and the one check that a VM's ids are
//! unique.
//!
//! An id is 1 to 20 characters, each an ASCII letter, digit, '_' or '-'.
//! Twenty because a disk's id is also the serial its guest reads (the
//! virtio-blk serial field holds 20 bytes), so every id fits there. The
//! character set is narrower than the printable ASCII disks took before:
//! ids will also name devices in the HTTP API's paths (`/drives/{id}`),
//! where '/', '?', '#' or '%' would need escaping, and in specs, where ','
//! and '=' are syntax. Firecracker's own ids (letters, digits, '_') pass.

use std::collections::HashSet;

/// Longest id: the size of the virtio-blk serial.
pub const MAX_ID_LEN: usize = 20;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("an id cannot be empty; use 1 to {MAX_ID_LEN} letters, digits, '_' or '-'")]
    Empty,
    #[error(
        "id {id:?} is {len} bytes long; use at most {MAX_ID_LEN} characters, each a letter, \
         digit, '_' or '-'"
    )]
    TooLong { id: String, len: usize },
    #[error("id {id:?} contains {bad:?}; use only the printable characters A-Z, a-z, 0-9, '_' and '-'")]
    BadCharacter { id: String, bad: char },
    #[error("id {0:?} is given to more than one device; give each device its own id")]
    Duplicate(String),
}

/// Checks one id against the rule.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if let Some(bad) = id
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(IdError::BadCharacter {
            id: id.to_string(),
            bad,
        });
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            id: id.to_string(),
            len: id.len(),
        });
    }
    Ok(())
}

/// Checks that no id appears twice among all the devices of one VM.
pub fn check_unique<'a>(ids: impl IntoIterator<Item = &'a str>) -> Result<(), IdError> {
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(IdError::Duplicate(id.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_names() {
        for good in ["a", "rootfs", "net0", "data-1", "DISK_2", "12345678901234567890"] {
            assert_eq!(validate_id(good), Ok(()), "{good:?}");
        }
        assert_eq!(validate_id(""), Err(IdError::Empty));
        assert_eq!(
            validate_id("123456789012345678901"),
            Err(IdError::TooLong {
                id: "123456789012345678901".into(),
                len: 21
            })
        );
        for (bad, c) in [
            ("has space", ' '),
            ("a/b", '/'),
            ("a.b", '.'),
            ("a,b", ','),
            ("a=b", '='),
            ("a%2f", '%'),
            ("tab\t", '\t'),
            ("é", 'é'),
        ] {
            let err = validate_id(bad).unwrap_err();
            assert_eq!(
                err,
                IdError::BadCharacter {
                    id: bad.into(),
                    bad: c
                }
            );
            assert!(err.to_string().contains("printable"), "{err}");
        }
    }

    #[test]
    fn a_repeated_id_is_named() {
        assert_eq!(check_unique([]), Ok(()));
        assert_eq!(check_unique(["a", "b", "A"]), Ok(()), "ids are case-sensitive");
        assert_eq!(
            check_unique(["a", "b", "c", "b"]),
            Err(IdError::Duplicate("b".into()))
        );
    }
}
