//! Image names as CRI clients give them, normalized as docker and containerd do: a name
//! without a registry is on docker.io (single components under `library/`), and a name
//! without a tag or digest means `:latest`.
//!
//! The grammar is distribution's (`[domain[:port]/]path[:tag][@digest]`), parsed by hand:
//! the regex oci-spec parses it with compiles, on first use, to an automaton of several
//! megabytes that podrund would then keep for its lifetime.

use oci_client::Reference;

use crate::error::{Error, Result};

/// Longest repository path, as distribution allows.
const NAME_MAX: usize = 255;

/// "busybox" -> "docker.io/library/busybox:latest"; "host:5000/x@sha256:..." unchanged.
pub fn normalize(name: &str) -> Result<String> {
    parse(name).map(|r| r.whole())
}

pub fn parse(name: &str) -> Result<Reference> {
    if name.is_empty() {
        return Err(Error::invalid("image.image", "must not be empty"));
    }
    let bad = |why: &str| Error::invalid("image.image", format!("{name:?}: {why}"));
    let (rest, digest) = match name.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (name, None),
    };
    // A ':' with no '/' after it starts the tag; one before a '/' belongs to a port.
    let (path, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(tag) = tag.filter(|t| !tag_ok(t)) {
        return Err(bad(&format!(
            "invalid tag {tag:?} (letters, digits, '_', '.' and '-', at most 128, not starting with '.' or '-')"
        )));
    }
    if let Some(digest) = digest {
        check_digest(digest).map_err(|why| bad(&why))?;
    }
    let (domain, repository) = split_domain(path);
    if let Some(domain) = domain.filter(|d| !domain_ok(d)) {
        return Err(bad(&format!("invalid registry host {domain:?}")));
    }
    if !repository.split('/').all(path_component_ok) {
        return Err(bad(
            "invalid repository path (lowercase letters and digits, separated by '.', '_', '__', '-' or '/')",
        ));
    }
    let registry = match domain {
        None | Some("index.docker.io") => "docker.io",
        Some(d) => d,
    };
    let repository = match (registry, repository.contains('/')) {
        ("docker.io", false) => format!("library/{repository}"),
        _ => repository.to_owned(),
    };
    if repository.len() > NAME_MAX {
        return Err(bad(&format!(
            "repository name longer than {NAME_MAX} characters"
        )));
    }
    let (registry, tag, digest) = (
        registry.to_owned(),
        tag.map(str::to_owned),
        digest.map(str::to_owned),
    );
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t, d),
        (None, Some(d)) => Reference::with_digest(registry, repository, d),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest".into())),
    })
}

/// The registry host, if the first component names one (it has a '.' or a ':', or is
/// `localhost`), and the repository path.
fn split_domain(path: &str) -> (Option<&str>, &str) {
    match path.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (Some(first), rest)
        }
        _ => (None, path),
    }
}

/// `host[:port]`, the host's labels made of letters, digits and inner '-'.
fn domain_ok(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    };
    host.split('.').all(label_ok)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
}

/// Runs of lowercase letters and digits joined by '.', '_', '__' or any number of '-'.
fn path_component_ok(component: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    component.starts_with(alnum)
        && component.ends_with(alnum)
        && component
            .split(alnum)
            .all(|sep| matches!(sep, "" | "." | "_" | "__") || sep.bytes().all(|c| c == b'-'))
}

fn tag_ok(tag: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = tag.as_bytes();
    (1..=128).contains(&b.len())
        && word(b[0])
        && b.iter().all(|c| word(*c) || *c == b'.' || *c == b'-')
}

/// `algorithm:hex`, for the algorithms registries serve.
fn check_digest(digest: &str) -> std::result::Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!("invalid digest {digest:?} (want algorithm:hex)"));
    };
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(format!("unsupported digest algorithm {algorithm:?}")),
    };
    if hex.len() != length || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "invalid {algorithm} digest: want {length} hex digits"
        ));
    }
    Ok(())
}

/// "registry/repo" of a reference, without tag or digest.
pub fn repository(r: &Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any string: no panic; what is accepted normalizes to itself again, and its parts
    /// are what a path in the store may be made of.
    #[test]
    fn fuzz_image_references() {
        let seeds: &[&[u8]] = &[
            b"busybox",
            b"registry.k8s.io/pause:3.9",
            b"127.0.0.1:5000/a/b_c__d-e:v1.2@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            b"localhost/x@sha512:00",
        ];
        let tokens: &[&[u8]] = &[
            b"@sha256:",
            b":",
            b"/",
            b"..",
            b"docker.io",
            b"library/",
            b"\xc3\xa9",
        ];
        podrun_fuzzkit::fuzz("image-reference", seeds, tokens, |input| {
            let Ok(name) = std::str::from_utf8(input) else {
                return;
            };
            if let Ok(whole) = normalize(name) {
                assert_eq!(
                    normalize(&whole).as_deref().ok(),
                    Some(whole.as_str()),
                    "{name:?}"
                );
                let r = parse(&whole).unwrap();
                assert!(!r.repository().contains(".."), "{whole}");
            }
        });
    }

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

    /// The hand-written parser accepts and normalizes what oci-spec's regex does.
    #[test]
    fn agrees_with_the_distribution_grammar() {
        let d256 = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let names = [
            "busybox".to_owned(),
            "busybox:1.36".into(),
            "library/busybox:latest".into(),
            "index.docker.io/foo/bar".into(),
            "localhost/app".into(),
            "localhost:5000/app:v1".into(),
            "127.0.0.1:5000/a/b/c:t_1.2-x".into(),
            "registry.k8s.io/pause:3.10".into(),
            format!("registry.k8s.io/pause@{d256}"),
            format!("registry.k8s.io/pause:3.10@{d256}"),
            "my-reg.example.com/a__b/c.d/e---f:tag".into(),
            "a/b_c".into(),
            // Refused:
            "Busybox".into(),
            "busybox:".into(),
            "busybox:-tag".into(),
            ":tag".into(),
            "busybox@sha256:abc".into(),
            "busybox@md5:0123456789abcdef0123456789abcdef".into(),
            format!("busybox@{}", d256.replace("sha256", "sha512")),
            "-reg.io/app".into(),
            "reg.io:port/app".into(),
            "a//b".into(),
            "a/b_".into(),
            "a/b___c".into(),
            "a/b.-c".into(),
            "reg.io/".into(),
            format!("busybox:{}", "t".repeat(129)),
            format!("reg.io/{}", "a".repeat(256)),
        ];
        for (i, name) in names.iter().enumerate() {
            let ours = parse(name).map(|r| r.whole()).ok();
            let theirs = name.parse::<Reference>().map(|r| r.whole()).ok();
            assert_eq!(ours, theirs, "{name:?}");
            assert_eq!(ours.is_some(), i < 12, "{name:?}");
        }
    }

    #[test]
    fn errors_name_the_field_and_the_fault() {
        let e = format!("{}", parse("busybox:-x").unwrap_err());
        assert!(e.contains("image.image") && e.contains("tag"), "{e}");
        let e = format!("{}", parse("busybox@sha256:abc").unwrap_err());
        assert!(e.contains("64 hex digits"), "{e}");
        let e = format!("{}", parse("Busybox").unwrap_err());
        assert!(e.contains("repository path"), "{e}");
    }
}
