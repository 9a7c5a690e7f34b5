//! Unpacking one image layer (a tar, plain, gzip or zstd) into its own directory, as an
//! overlayfs lower layer: OCI whiteouts (`.wh.NAME`) become overlay whiteouts (a 0/0
//! character device), opaque markers (`.wh..wh..opq`) become the `trusted.overlay.opaque`
//! xattr. The uncompressed stream is hashed on the way, so the layer's diff id is
//! verified against the image config before the directory is published.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Opens `blob` and undoes its compression, judged by its first bytes (media types lie).
fn decompressed(blob: &Path) -> Result<Box<dyn Read>> {
    let mut f = fs::File::open(blob).map_err(Error::io("opening layer", blob))?;
    let mut magic = [0u8; 4];
    let n = f
        .read(&mut magic)
        .map_err(Error::io("reading layer", blob))?;
    let f = fs::File::open(blob).map_err(Error::io("opening layer", blob))?;
    let reader = io::BufReader::new(f);
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(reader)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(
            zstd::stream::read::Decoder::with_buffer(reader).map_err(Error::io("zstd", blob))?,
        ),
        _ => Box::new(reader),
    })
}

/// Unpacks `blob` into `dest` (which must not exist yet) and returns the layer's diff id
/// ("sha256:" + hex of the uncompressed tar).
pub fn unpack(blob: &Path, dest: &Path) -> Result<String> {
    fs::create_dir(dest).map_err(Error::io("creating layer dir", dest))?;
    let mut hashing = Hashing {
        inner: decompressed(blob)?,
        hash: Sha256::new(),
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_unpack_xattrs(true);
        archive.set_overwrite(true);
        let bad = |e: io::Error| Error::io("unpacking layer", blob)(e);
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let path = entry.path().map_err(bad)?.into_owned();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                entry.unpack_in(dest).map_err(bad)?;
                continue;
            };
            if name == ".wh..wh..opq" {
                let dir = safe_join(dest, path.parent().unwrap_or(Path::new("")))?;
                fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
                set_opaque(&dir)?;
            } else if let Some(hidden) = name.strip_prefix(".wh.") {
                let parent = safe_join(dest, path.parent().unwrap_or(Path::new("")))?;
                fs::create_dir_all(&parent).map_err(Error::io("creating", &parent))?;
                whiteout(&parent.join(hidden))?;
            } else if let Some(kind) = special_kind(entry.header().entry_type()) {
                let node = safe_join(dest, &path)?;
                make_node(&node, kind, entry.header())?;
            } else {
                entry.unpack_in(dest).map_err(bad)?;
            }
        }
    }
    // Read to the end: a tar may carry padding after its end marker, and it is hashed.
    io::copy(&mut hashing, &mut io::sink()).map_err(Error::io("reading layer", blob))?;
    Ok(format!("sha256:{}", hex(&hashing.hash.finalize())))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `dest` joined with an archive path that may not climb out of it, neither by `..` nor
/// through a symlink an earlier entry made (a layer could point `etc` at the node's /etc).
fn safe_join(dest: &Path, rel: &Path) -> Result<PathBuf> {
    let escape = || {
        Error::invalid(
            "image layer",
            format!("path {} escapes the layer", rel.display()),
        )
    };
    let mut out = dest.to_owned();
    for c in rel.components() {
        match c {
            Component::Normal(p) => {
                out.push(p);
                if fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(escape());
                }
            }
            Component::CurDir | Component::RootDir => {}
            _ => return Err(escape()),
        }
    }
    Ok(out)
}

/// Device nodes and FIFOs, which the tar crate would unpack as empty files: made as the
/// image has them, as containerd does. What a container may do with a device is the
/// device cgroup's decision, not the file's.
fn special_kind(kind: tar::EntryType) -> Option<nix::sys::stat::SFlag> {
    use nix::sys::stat::SFlag;
    match kind {
        tar::EntryType::Char => Some(SFlag::S_IFCHR),
        tar::EntryType::Block => Some(SFlag::S_IFBLK),
        tar::EntryType::Fifo => Some(SFlag::S_IFIFO),
        _ => None,
    }
}

fn make_node(path: &Path, kind: nix::sys::stat::SFlag, header: &tar::Header) -> Result<()> {
    let bad = |e: io::Error| Error::io("reading a layer entry", path)(e);
    let mode = header.mode().map_err(bad)? & 0o7777;
    let dev = nix::sys::stat::makedev(
        header.device_major().map_err(bad)?.unwrap_or(0) as u64,
        header.device_minor().map_err(bad)?.unwrap_or(0) as u64,
    );
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(Error::io("creating", parent))?;
    }
    let _ = fs::remove_file(path);
    nix::sys::stat::mknod(
        path,
        kind,
        nix::sys::stat::Mode::from_bits_truncate(mode),
        dev,
    )
    .map_err(Error::sys(format!("mknod {}", path.display())))?;
    let (uid, gid) = (header.uid().map_err(bad)?, header.gid().map_err(bad)?);
    nix::unistd::chown(path, Some((uid as u32).into()), Some((gid as u32).into()))
        .map_err(Error::sys(format!("chown {}", path.display())))?;
    // mknod's mode went through the umask.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(Error::io("chmod", path))
}

fn whiteout(path: &Path) -> Result<()> {
    let _ = fs::remove_file(path);
    let _ = fs::remove_dir_all(path);
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    )
    .map_err(Error::sys(format!("mknod whiteout {}", path.display())))
}

fn set_opaque(dir: &Path) -> Result<()> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| Error::Internal(e.to_string()))?;
    // SAFETY: valid NUL-terminated strings and a 1-byte value buffer that outlive the call.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            c"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if rc != 0 {
        return Err(Error::io("marking opaque", dir)(io::Error::last_os_error()));
    }
    Ok(())
}

/// The chain id of a layer stack (OCI image spec): the first layer's diff id, then
/// sha256(parent chain id + " " + diff id).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let id = match out.last() {
            None => diff.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex(&Sha256::digest(format!("{parent} {diff}").as_bytes()))
            ),
        };
        out.push(id);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;

    fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_and_opaque_dirs_become_overlay_markers_and_diff_id_is_of_the_tar() {
        let dir = tempfile::tempdir().unwrap();
        let tar = layer(&[
            ("etc/.wh.gone", b""),
            ("var/.wh..wh..opq", b""),
            ("var/new", b"x"),
            ("bin/tool", b"#!"),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let blob = dir.path().join("blob");
        fs::write(&blob, gz.finish().unwrap()).unwrap();
        let dest = dir.path().join("layer");
        let diff = unpack(&blob, &dest).unwrap();
        assert_eq!(diff, format!("sha256:{}", hex(&Sha256::digest(&tar))));
        let meta = fs::symlink_metadata(dest.join("etc/gone")).unwrap();
        assert!(meta.file_type().is_char_device());
        assert_eq!(fs::read(dest.join("var/new")).unwrap(), b"x");
        assert_eq!(fs::read(dest.join("bin/tool")).unwrap(), b"#!");
        let mut buf = [0u8; 4];
        let c = std::ffi::CString::new(dest.join("var").as_os_str().as_encoded_bytes()).unwrap();
        let n = unsafe {
            libc::getxattr(
                c.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                buf.as_mut_ptr().cast(),
                4,
            )
        };
        assert_eq!(&buf[..n as usize], b"y");
    }

    #[test]
    fn zstd_and_plain_layers_unpack_to_the_same_diff_id() {
        let dir = tempfile::tempdir().unwrap();
        let tar = layer(&[("hello", b"world")]);
        let plain = dir.path().join("plain");
        fs::write(&plain, &tar).unwrap();
        let zst = dir.path().join("zst");
        fs::write(&zst, zstd::encode_all(&tar[..], 3).unwrap()).unwrap();
        let a = unpack(&plain, &dir.path().join("a")).unwrap();
        let b = unpack(&zst, &dir.path().join("b")).unwrap();
        assert_eq!(a, b);
        assert_eq!(fs::read(dir.path().join("b/hello")).unwrap(), b"world");
    }

    #[test]
    fn whiteouts_through_a_symlink_cannot_touch_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("precious"), b"keep").unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_link(&mut h, "evil", &outside).unwrap();
        let tar = {
            let mut t = b.into_inner().unwrap();
            let extra = layer(&[("evil/.wh.precious", b"")]);
            t.truncate(t.len() - 1024); // drop the end marker, then append the next entry
            t.extend_from_slice(&extra);
            t
        };
        let blob = dir.path().join("blob");
        fs::write(&blob, tar).unwrap();
        let err = unpack(&blob, &dir.path().join("layer")).unwrap_err();
        assert!(err.to_string().contains("escapes"), "{err}");
        assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep");
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let ids = chain_ids(&["sha256:a".into(), "sha256:b".into()]);
        assert_eq!(ids[0], "sha256:a");
        assert_eq!(
            ids[1],
            format!("sha256:{}", hex(&Sha256::digest(b"sha256:a sha256:b")))
        );
    }
}
