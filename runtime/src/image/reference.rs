//! Image names as CRI clients give them, normalized as docker and containerd do: a name
//! without a registry is on docker.io (single components under `library/`), and a name
//! without a tag or digest means `:latest`.

use oci_client::Reference;

use crate::error::{Error, Result};

/// "busybox" -> "docker.io/library/busybox:latest"; "host:5000/x@sha256:..." unchanged.
pub fn normalize(name: &str) -> Result<String> {
    parse(name).map(|r| r.whole())
}

pub fn parse(name: &str) -> Result<Reference> {
    if name.is_empty() {
        return Err(Error::invalid("image.image", "must not be empty"));
    }
    name.parse::<Reference>()
        .map_err(|e| Error::invalid("image.image", format!("{name:?}: {e}")))
}

/// "registry/repo" of a reference, without tag or digest.
pub fn repository(r: &Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_docker_hub_and_latest() {
        assert_eq!(
            normalize("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(normalize("user/app:1").unwrap(), "docker.io/user/app:1");
        assert_eq!(
            normalize("127.0.0.1:5000/busybox").unwrap(),
            "127.0.0.1:5000/busybox:latest"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize(&format!("registry.k8s.io/pause@{d}")).unwrap(),
            format!("registry.k8s.io/pause@{d}")
        );
        assert!(normalize("").is_err());
        assert!(normalize("UPPER/Case").is_err());
    }
}
