//! The SSRF guard: webhook targets may not reach loopback, private,
//! link-local, unique-local, multicast, unspecified or cloud-metadata
//! addresses unless allow-listed. It is enforced on the resolved address
//! (a DNS resolver for reqwest that drops refused addresses) and on
//! literal-IP URLs, so DNS tricks cannot get around it; redirects are off.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A CIDR block, `10.1.0.0/16` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse()
                .map_err(|_| format!("{s:?} has a bad prefix length"))?
        };
        if prefix > max {
            return Err(format!("{s:?} has a prefix longer than {max}"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Why an address is refused, or None when it is a public address.
pub fn refused(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local or cloud metadata")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("multicast or broadcast")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if o[0] >= 240 {
        Some("reserved")
    } else {
        None
    }
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if (seg[0] & 0xfe00) == 0xfc00 {
        Some("unique-local or cloud metadata")
    } else if (seg[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if seg[0] == 0x64 && seg[1] == 0xff9b {
        // NAT64 carries an IPv4 address in the last 32 bits.
        refused_v4(Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        ))
    } else {
        None
    }
}

/// Which addresses delivery may reach.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Everything allowed (tests and local demos).
    pub allow_private: bool,
    pub allowed: Vec<Cidr>,
}

impl Policy {
    /// Err with the reason when delivery to `ip` is refused.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        if self.allow_private || self.allowed.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match refused(ip) {
            Some(why) => Err(format!(
                "refused to deliver to {ip}: a {why} address (SSRF guard); allow it with delivery.allowed_cidrs"
            )),
            None => Ok(()),
        }
    }

    /// Checks a URL whose host is a literal IP (the resolver is not asked for those).
    pub fn check_url(&self, url: &url::Url) -> Result<(), String> {
        match url.host() {
            Some(url::Host::Ipv4(v4)) => self.check(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => self.check(IpAddr::V6(v6)),
            _ => Ok(()),
        }
    }
}

/// A reqwest resolver that drops refused addresses after resolution.
pub struct GuardedResolver {
    pub policy: Arc<Policy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut reasons = Vec::new();
            let ok: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        reasons.push(e);
                        false
                    }
                })
                .collect();
            if ok.is_empty() {
                let why = reasons
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| format!("{host} did not resolve"));
                return Err(format!("{host}: {why}").into());
            }
            Ok(Box::new(ok.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_internal_addresses() {
        for a in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "ff02::1",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "64:ff9b::a00:1",
        ] {
            assert!(refused(ip(a)).is_some(), "{a} must be refused");
        }
        for a in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "8.8.8.8",
            "::ffff:8.8.8.8",
        ] {
            assert!(refused(ip(a)).is_none(), "{a} must be allowed");
        }
    }

    #[test]
    fn allow_lists_open_exactly_their_blocks() {
        let p = Policy {
            allow_private: false,
            allowed: vec!["10.1.0.0/16".parse().unwrap(), "fd00::/8".parse().unwrap()],
        };
        assert!(p.check(ip("10.1.2.3")).is_ok());
        assert!(p.check(ip("::ffff:10.1.2.3")).is_ok());
        assert!(p.check(ip("10.2.0.1")).is_err());
        assert!(p.check(ip("fd12::1")).is_ok());
        assert!(p.check(ip("127.0.0.1")).unwrap_err().contains("loopback"));
        assert!(
            Policy {
                allow_private: true,
                allowed: vec![]
            }
            .check(ip("127.0.0.1"))
            .is_ok()
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        let u = url::Url::parse("http://[::ffff:127.0.0.1]:8080/x").unwrap();
        assert!(p.check_url(&u).is_err());
    }
}
