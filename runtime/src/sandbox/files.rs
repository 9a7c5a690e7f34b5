//! The files a pod gives its containers: hostname, hosts, resolv.conf, and its /dev/shm.

use std::fs;
use std::net::IpAddr;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use podrun_proto::cri;

use crate::error::{Error, Result};

/// The pod's `/etc/hosts`: the usual loopback entries and the pod's own IP and hostname.
pub fn hosts(ip: Option<&str>, hostname: &str) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = ip {
        out.push_str(&format!("{ip}\t{hostname}\n"));
    }
    out
}

/// The pod's `/etc/resolv.conf` from its DNSConfig.
pub fn resolv_conf(dns: &cri::DnsConfig) -> String {
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    out
}

pub fn node_hostname() -> Result<String> {
    nix::unistd::gethostname()
        .map_err(Error::sys("gethostname"))
        .map(|h| h.to_string_lossy().into_owned())
}

/// Writes hostname, hosts and resolv.conf into the pod's state dir.
pub fn write(
    dir: &Path,
    config: &cri::PodSandboxConfig,
    host_network: bool,
    ip: Option<&str>,
) -> Result<()> {
    let hostname = if host_network || config.hostname.is_empty() {
        node_hostname()?
    } else {
        config.hostname.clone()
    };
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        fs::write(&path, text).map_err(Error::io("writing", path))
    };
    write("hostname", &format!("{hostname}\n"))?;
    match host_network {
        true => write(
            "hosts",
            &fs::read_to_string("/etc/hosts").unwrap_or_else(|_| hosts(None, &hostname)),
        )?,
        false => write("hosts", &hosts(ip, &hostname))?,
    }
    match &config.dns_config {
        Some(dns) => write("resolv.conf", &resolv_conf(dns)),
        None => write(
            "resolv.conf",
            &fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        ),
    }
}

/// Mounts the pod's shared-memory tmpfs (the containers' /dev/shm) at `path`.
pub fn mount_shm(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(Error::io("creating", path))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        flags,
        Some("mode=1777,size=65536k"),
    )
    .map_err(Error::sys(format!(
        "mounting shm tmpfs on {}",
        path.display()
    )))
}

pub fn unmount_shm(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(Error::sys(format!("unmounting {}", path.display()))(e)),
    }
}

/// The node's IPs for hostNetwork pods: those of the default route's interface, else every
/// global address, IPv4 first.
pub fn node_ips() -> Vec<IpAddr> {
    let default_if = fs::read_to_string("/proc/net/route").ok().and_then(|t| {
        t.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000"))
                .then(|| f[0].to_owned())
        })
    });
    let mut ips: Vec<(String, IpAddr)> = nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| {
                    let addr = a.address?;
                    let ip = match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
                        (Some(v4), _) => IpAddr::V4(v4.ip()),
                        (_, Some(v6)) => IpAddr::V6(v6.ip()),
                        _ => return None,
                    };
                    let link_local =
                        matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
                    (!ip.is_loopback() && !link_local).then_some((a.interface_name, ip))
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(dev) = default_if {
        if ips.iter().any(|(name, _)| *name == dev) {
            ips.retain(|(name, _)| *name == dev);
        }
    }
    let mut ips: Vec<IpAddr> = ips.into_iter().map(|(_, ip)| ip).collect();
    ips.sort_by_key(|ip| !ip.is_ipv4());
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_names_the_pod() {
        let h = hosts(Some("10.88.0.4"), "web-0");
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.88.0.4\tweb-0\n"));
    }

    #[test]
    fn resolv_conf_follows_dns_config() {
        let dns = cri::DnsConfig {
            servers: vec!["10.96.0.10".into(), "10.96.0.11".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver 10.96.0.11\noptions ndots:5\n"
        );
    }
}
