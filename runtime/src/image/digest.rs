//! Content digests as the store names files by them. Every digest and id that comes from a
//! registry, a layout or an image config is checked here before it becomes part of a path:
//! only `sha256:` followed by 64 lowercase hex digits is a name the store accepts.

use crate::error::{Error, Result};

/// The hex part of `digest` when it is `sha256:` + 64 lowercase hex digits; otherwise an
/// InvalidArgument naming `field` and the offending value.
pub fn sha256_hex<'a>(field: &'static str, digest: &'a str) -> Result<&'a str> {
    match digest.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(hex)
        }
        Some((algorithm, _)) if algorithm != "sha256" && !algorithm.is_empty() => {
            Err(Error::invalid(
                field,
                format!("{digest:?}: digest algorithm {algorithm:?} is not supported (sha256 is)"),
            ))
        }
        _ => Err(Error::invalid(
            field,
            format!("{digest:?} is not a sha256 digest (sha256: and 64 lowercase hex digits)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_sha256_digests_pass() {
        let good = format!("sha256:{}", "0123456789abcdef".repeat(4));
        assert_eq!(sha256_hex("f", &good).unwrap(), &good[7..]);
        for bad in [
            "sha256:/etc".to_owned(),
            "sha256:../../../etc".to_owned(),
            "sha256:".to_owned(),
            "/etc".to_owned(),
            String::new(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}/", "a".repeat(64)),
            format!("sha512:{}", "a".repeat(128)),
        ] {
            match sha256_hex("rootfs.diff_ids", &bad) {
                Err(Error::InvalidArgument { field, reason }) => {
                    assert_eq!(field, "rootfs.diff_ids");
                    assert!(reason.contains(&format!("{bad:?}")), "{reason}");
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
