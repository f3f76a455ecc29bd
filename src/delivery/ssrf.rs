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

use crate::config::{Cidr, canonical};

/// Blocks refused whatever their use, each with the reason logged.
/// IPv4-mapped addresses are judged as IPv4 (see [`canonical`]) and
/// `64:ff9b::/96` (well-known NAT64) as the IPv4 address it carries.
const BLOCKED: [(&str, &str); 29] = [
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local or cloud metadata"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignment"),
    ("192.0.2.0/24", "documentation"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved or broadcast"),
    // IPv4-compatible (deprecated), with :: and ::1.
    ("::/96", "unspecified, loopback or IPv4-compatible"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    // `::ffff:0:a.b.c.d`: a translator (SIIT) reaches the IPv4 address,
    // which may be internal.
    ("::ffff:0:0:0/96", "IPv4-translated"),
    ("100::/64", "discard-only"),
    // Teredo and 6to4 tunnel to an IPv4 address the guard cannot vouch for.
    ("2001::/32", "Teredo tunnel"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4 tunnel"),
    ("fc00::/7", "unique-local or cloud metadata"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
    // Blocks inside 2001::/23 that are not Teredo but still special.
    ("2001:2::/48", "benchmarking"),
    ("2001:10::/28", "ORCHID"),
    ("2001:20::/28", "ORCHIDv2"),
    ("3fff::/20", "documentation"),
];

static BLOCKS: std::sync::LazyLock<Vec<(Cidr, &'static str)>> = std::sync::LazyLock::new(|| {
    BLOCKED
        .iter()
        .map(|(c, why)| (c.parse().expect("a valid built-in block"), *why))
        .collect()
});

/// Why an address is refused, or None when it is a public address.
pub fn refused(ip: IpAddr) -> Option<&'static str> {
    let ip = match canonical(ip) {
        IpAddr::V6(v6) => nat64_embedded(v6).map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    BLOCKS
        .iter()
        .find(|(c, _)| c.contains(ip))
        .map(|(_, why)| *why)
}

/// The IPv4 address a well-known-prefix NAT64 address (`64:ff9b::/96`)
/// reaches: the gateway forwards to it, so it is judged as that address.
fn nat64_embedded(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]).then(|| {
        let [.., a, b, c, d] = ip.octets();
        Ipv4Addr::new(a, b, c, d)
    })
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

/// How long a check at the door waits for DNS; a name that does not
/// resolve by then passes, and is checked again on every send.
const DOOR_LOOKUP: std::time::Duration = std::time::Duration::from_secs(5);

impl Policy {
    /// The check at the door (a subscription created or changed): Err with
    /// the reason when the URL's host is, or resolves to, a refused address.
    /// Any refused address refuses the URL: a name that mixes public and
    /// internal addresses is how DNS rebinding starts.
    pub async fn check_target(&self, url: &url::Url) -> Result<(), String> {
        self.check_url(url)?;
        let Some(url::Host::Domain(host)) = url.host() else {
            return Ok(());
        };
        if self.allow_private {
            return Ok(());
        }
        let lookup = tokio::net::lookup_host((host, 0));
        let Ok(Ok(addrs)) = tokio::time::timeout(DOOR_LOOKUP, lookup).await else {
            return Ok(());
        };
        self.check_resolved(host, addrs.map(|a| a.ip()))
    }

    fn check_resolved(&self, host: &str, ips: impl Iterator<Item = IpAddr>) -> Result<(), String> {
        for ip in ips {
            self.check(ip)
                .map_err(|e| format!("{host} resolves to {ip}: {e}"))?;
        }
        Ok(())
    }

    /// The check at the door for every `[[subscriptions]]` URL, as problems
    /// naming the key (`subscriptions[0].url: ...`). Resolves with the
    /// system resolver, blocking: for startup and `check-config`.
    pub fn declared_problems(&self, config: &crate::config::Config) -> Vec<String> {
        use std::net::ToSocketAddrs;
        let mut problems = Vec::new();
        for (i, d) in config.subscriptions.iter().enumerate() {
            let Ok(url) = url::Url::parse(&d.settings.url) else {
                continue;
            };
            let checked = self.check_url(&url).and_then(|()| match url.host() {
                Some(url::Host::Domain(host)) if !self.allow_private => {
                    match (host, 0).to_socket_addrs() {
                        Ok(addrs) => self.check_resolved(host, addrs.map(|a| a.ip())),
                        Err(_) => Ok(()),
                    }
                }
                _ => Ok(()),
            });
            if let Err(e) = checked {
                problems.push(format!("subscriptions[{i}].url: {e}"));
            }
        }
        problems
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
            "::ffff:0:7f00:1",
            "::ffff:0:a9fe:a9fe",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "ff02::1",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "64:ff9b::c0a8:101",
            "64:ff9b:1::808:808",
            "::808:808",
            "::1.2.3.4",
            "2002:a00:1::1",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
            "198.18.0.1",
            "198.19.255.254",
            "192.0.0.170",
            "100.127.255.255",
            "240.0.0.1",
            "2001:db8::1",
        ] {
            assert!(refused(ip(a)).is_some(), "{a} must be refused");
        }
        for a in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "8.8.8.8",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "198.20.0.1",
            "100.128.0.1",
            "2001:4860:4860::8888",
            "192.0.1.1",
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
