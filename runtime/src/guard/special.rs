//! Addresses a webhook may not reach: every block of IANA's IPv4 and IPv6
//! Special-Purpose Address Registries that is not globally reachable, the
//! deprecated forms that still route somewhere internal (IPv4-compatible
//! `::a.b.c.d`, site-local `fec0::/10`), and multicast. An address that
//! carries an IPv4 address a packet finally reaches (IPv4-mapped, NAT64,
//! 6to4) is judged by that address.
//!
//! Taken from <https://www.iana.org/assignments/iana-ipv4-special-registry>
//! and <https://www.iana.org/assignments/iana-ipv6-special-registry>
//! (both as updated 2025); a block the registry marks globally reachable
//! is left out, so that a public receiver is never refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::IpNet;

/// (block, what it is), in the registries' order.
const BLOCKS: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignment"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    // IPv4-compatible (deprecated): `[::a.b.c.d]`.
    ("::/96", "IPv4-compatible"),
    ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation"),
    ("100::/64", "discard-only"),
    ("100:0:0:1::/64", "dummy prefix"),
    // Teredo (2001::/32) among them.
    ("2001::/23", "IETF protocol assignment"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing SID"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
];

static NETS: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    BLOCKS
        .iter()
        .filter_map(|(net, why)| Some((net.parse().ok()?, *why)))
        .collect()
});

/// The IPv4 address an IPv6 one finally reaches, where it carries one:
/// IPv4-mapped (`::ffff:a.b.c.d`), NAT64 (`64:ff9b::/96`), 6to4
/// (`2002::/16`).
fn carried_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let seg = v6.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match seg {
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

/// What kind of internal address `ip` is, or `None` for a public one.
pub fn blocked(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => carried_v4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Some("broadcast");
    }
    NETS.iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_parses() {
        assert_eq!(NETS.len(), BLOCKS.len());
    }

    #[test]
    fn internal_forms_are_blocked_and_public_ones_pass() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "100.100.100.200",
            "169.254.169.254",
            "255.255.255.255",
            "::1",
            "::",
            "::127.0.0.1",
            "::a9fe:a9fe",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a00:1",
            "2002:7f00:1::",
            "2001:0:4136:e378::1",
            "fec0::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(blocked(ip).is_some(), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "64:ff9b::808:808",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(blocked(ip), None, "{ip}");
        }
    }
}
