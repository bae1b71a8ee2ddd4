//! The real client IP: the downstream peer, or, when the peer is a trusted proxy, the address
//! the proxies recorded: walked right to left through `X-Forwarded-For` past our own proxies,
//! and single-address headers believed only from where they can be trusted.

use std::borrow::Cow;
use std::fmt::Write;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use arrayvec::ArrayString;
use ipnet::IpNet;

use crate::config::ClientIpConfig;
use crate::decimal;
use crate::request::{Headers, Single};

/// Only this many rightmost `X-Forwarded-For` entries are read: a longer chain cannot push the
/// real hops out, and a huge header costs nothing more.
pub const MAX_FORWARDED_ENTRIES: usize = 64;

/// What the resolver found, and what it noticed on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// `None`: unresolved (no address, or only our own proxies): never counted or blocked.
    pub client: Option<IpAddr>,
    /// The peer had port 0: Envoy derived it from `X-Forwarded-For` (`use_remote_address: false`).
    pub header_derived_peer: bool,
    /// A listed header arrived from a peer that is not a trusted proxy, and was ignored.
    pub untrusted_header: bool,
}

pub fn resolve(
    config: &ClientIpConfig,
    source_address: Option<&str>,
    headers: &Headers,
) -> Resolution {
    let peer = source_address.and_then(parse_peer);
    let mut resolution = Resolution {
        client: None,
        header_derived_peer: peer.is_some_and(|p| p.port == Some(0)),
        untrusted_header: false,
    };
    let Some(peer) = peer else {
        return resolution;
    };
    // A port-0 peer was taken from the client's own X-Forwarded-For: it cannot vouch for
    // anything, whatever its address.
    if resolution.header_derived_peer || !contains(&config.trusted_proxies, peer.ip) {
        resolution.untrusted_header = config
            .headers
            .iter()
            .any(|header| carries_other_than(headers, &header.name, peer.ip));
        resolution.client = Some(peer.ip);
        return resolution;
    }
    let edge = forwarded_edge(headers, &config.trusted_proxies);
    resolution.client = config.headers.iter().find_map(|header| {
        if header.name == "x-forwarded-for" {
            return edge;
        }
        if let Some(from) = &header.from {
            if !edge.is_some_and(|edge| contains(from, edge)) {
                return None;
            }
        }
        match headers.single(&header.name) {
            Single::One(value) => {
                parse_address(value).filter(|ip| !contains(&config.trusted_proxies, *ip))
            }
            _ => None,
        }
    });
    resolution
}

/// The first `X-Forwarded-For` entry, from the right, outside our trusted proxies: the party
/// that handed the request to them. `None` when the chain is empty, all trusted, or the entry
/// at that position is not an address.
pub fn forwarded_edge(headers: &Headers, trusted: &[IpNet]) -> Option<IpAddr> {
    let entries = headers
        .all("x-forwarded-for")
        .rev()
        .flat_map(|line| line.rsplit(|&b| b == b','))
        .filter(|entry| !entry.trim_ascii().is_empty())
        .take(MAX_FORWARDED_ENTRIES);
    for entry in entries {
        let ip = parse_address(entry)?;
        if !contains(trusted, ip) {
            return Some(ip);
        }
    }
    None
}

/// True when `name` is present with something other than the peer itself (Envoy appends the
/// peer to `X-Forwarded-For` under `use_remote_address: true`; that alone is not a client's doing).
fn carries_other_than(headers: &Headers, name: &str, peer: IpAddr) -> bool {
    headers.all(name).any(|line| {
        line.split(|&b| b == b',')
            .any(|entry| parse_address(entry) != Some(peer))
    })
}

/// One address as proxies write it: bare, `a.b.c.d:port`, `[v6]` or `[v6]:port`.
pub fn parse_address(raw: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    parse_peer(text).map(|peer| peer.ip)
}

pub fn contains(networks: &[IpNet], ip: IpAddr) -> bool {
    networks.iter().any(|net| net.contains(&ip))
}

/// A client's group as text, on the stack (it is made on every request the limiter sees, and
/// the decision allocates nothing it does not need). The longest, a full IPv6 address with
/// `/128`, is 43 bytes.
pub type ClientGroup = ArrayString<48>;

/// The key a client is counted under: IPv4 exact, IPv6 grouped by `ipv6_prefix` (one subscriber
/// usually holds a whole /64).
pub fn group(ip: IpAddr, ipv6_prefix: u8) -> ClientGroup {
    let mut text = ClientGroup::new();
    // Writes cannot fail: every group fits (see `ClientGroup`).
    let _ = match ip {
        IpAddr::V4(v4) => {
            dotted_quad(&mut text, v4.octets());
            Ok(())
        }
        IpAddr::V6(v6) if ipv6_prefix >= 128 => write!(text, "{v6}"),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX << (128 - u32::from(ipv6_prefix.max(1)));
            write!(text, "{}/{}", Ipv6Addr::from(bits & mask), ipv6_prefix)
        }
    };
    text
}

/// `a.b.c.d`, written without `Display` (see `decimal`): this runs on every request.
fn dotted_quad(text: &mut ClientGroup, octets: [u8; 4]) {
    for (position, octet) in octets.into_iter().enumerate() {
        if position > 0 {
            let _ = text.try_push('.');
        }
        let digits = decimal::digits(u64::from(octet));
        let _ = text.try_push_str(std::str::from_utf8(digits.as_bytes()).unwrap_or_default());
    }
}

/// Parses `source.address`: `1.2.3.4:5678`, `[::1]:80`, or a bare address; an IPv4-mapped IPv6
/// address (`::ffff:a.b.c.d`) is read as the IPv4 address it carries. An IPv6 zone id
/// (`fe80::1%eth0`, `[fe80::1%2]:80`) names an interface of the host that wrote the address,
/// not a part of the client's: it is dropped, in every form alike.
pub fn parse_peer(address: &str) -> Option<Peer> {
    let address = without_zone(address.trim());
    let address = address.as_ref();
    let (ip, port) = if let Ok(socket) = address.parse::<SocketAddr>() {
        (socket.ip(), Some(socket.port()))
    } else if let Ok(ip) = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address)
        .parse::<IpAddr>()
    {
        (ip, None)
    } else {
        return None;
    };
    Some(Peer {
        ip: canonical(ip),
        port,
    })
}

/// `address` without the `%zone` of an IPv6 address (up to the `]`, or the end).
fn without_zone(address: &str) -> Cow<'_, str> {
    let Some(start) = address.find('%').filter(|&at| address[..at].contains(':')) else {
        return Cow::Borrowed(address);
    };
    let end = address[start..]
        .find(']')
        .map_or(address.len(), |at| start + at);
    Cow::Owned([&address[..start], &address[end..]].concat())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Why a configured network cannot be compared with addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedTooWide;

/// A configured network in the form addresses are compared in (`canonical`): an IPv4-mapped
/// network `::ffff:a.b.c.d/p` with `p` ≥ 96 is `a.b.c.d/(p − 96)`, or a trusted proxy written
/// that way would never match its own (IPv4) address. A mapped network shorter than /96 has no
/// IPv4 equivalent and is refused. Host bits are cleared.
pub fn canonical_network(net: IpNet) -> Result<IpNet, MappedTooWide> {
    let IpNet::V6(v6) = net else {
        return Ok(net.trunc());
    };
    let Some(v4) = v6.addr().to_ipv4_mapped() else {
        return Ok(net.trunc());
    };
    let prefix = v6.prefix_len().checked_sub(96).ok_or(MappedTooWide)?;
    ipnet::Ipv4Net::new(v4, prefix)
        .map(|v4| IpNet::V4(v4.trunc()))
        .map_err(|_| MappedTooWide)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(json: &str) -> ClientIpConfig {
        Config::parse(json.as_bytes()).unwrap().client_ip
    }

    fn resolve_with(config: &ClientIpConfig, peer: &str, pairs: &[(&str, &str)]) -> Resolution {
        resolve(config, Some(peer), &Headers::from_pairs(pairs))
    }

    fn client(config: &ClientIpConfig, peer: &str, pairs: &[(&str, &str)]) -> Option<String> {
        resolve_with(config, peer, pairs)
            .client
            .map(|ip| ip.to_string())
    }

    /// Peer, request headers, and the client expected.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);

    const BEHIND_LB: &str =
        r#"{"client_ip": {"trusted_proxies": ["10.0.0.0/8", "2001:db8:ffff::/48"]}}"#;
    const BEHIND_CLOUDFLARE: &str = r#"{"client_ip": {"trusted_proxies": ["10.0.0.0/8"],
        "headers": [{"name": "cf-connecting-ip", "from": ["173.245.48.0/20"]}, {"name": "x-forwarded-for"}]}}"#;

    #[test]
    fn without_trusted_proxies_the_client_is_the_peer() {
        let config = config("{}");
        let spoofed = resolve_with(
            &config,
            "203.0.113.9:4000",
            &[("x-forwarded-for", "1.1.1.1")],
        );
        assert_eq!(spoofed.client, Some("203.0.113.9".parse().unwrap()));
        assert!(spoofed.untrusted_header);
        // Envoy's own append of the peer is not a client's header.
        let honest = resolve_with(
            &config,
            "203.0.113.9:4000",
            &[("x-forwarded-for", "203.0.113.9")],
        );
        assert!(!honest.untrusted_header);
        assert!(!honest.header_derived_peer);
        assert!(resolve_with(&config, "203.0.113.9:0", &[]).header_derived_peer);
    }

    #[test]
    fn a_peer_envoy_took_from_x_forwarded_for_is_never_trusted() {
        let config = config(BEHIND_LB);
        let spoof = [("x-forwarded-for", "1.2.3.4, 10.0.0.1")];
        assert_eq!(
            client(&config, "10.0.0.1:0", &spoof).as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            client(&config, "10.0.0.1:1234", &spoof).as_deref(),
            Some("1.2.3.4")
        );
    }

    #[test]
    fn the_forwarded_chain_is_walked_right_to_left_past_trusted_proxies() {
        let config = config(BEHIND_LB);
        let cases: &[Case] = &[
            (
                "10.0.0.5:80",
                &[("x-forwarded-for", "198.51.100.7")],
                Some("198.51.100.7"),
            ),
            // The client's own prefix is ignored: only the hop our proxies recorded counts.
            (
                "10.0.0.5:80",
                &[(
                    "x-forwarded-for",
                    "1.1.1.1, 198.51.100.7, 10.0.0.9, 10.0.0.8",
                )],
                Some("198.51.100.7"),
            ),
            // Two header lines read as one list, in order.
            (
                "10.0.0.5:80",
                &[
                    ("x-forwarded-for", "1.1.1.1, 198.51.100.7"),
                    ("x-forwarded-for", "10.0.0.9"),
                ],
                Some("198.51.100.7"),
            ),
            (
                "10.0.0.5:80",
                &[("x-forwarded-for", "198.51.100.7:5555")],
                Some("198.51.100.7"),
            ),
            (
                "10.0.0.5:80",
                &[("x-forwarded-for", "[2001:db8:1::5]:443, 10.0.0.9")],
                Some("2001:db8:1::5"),
            ),
            (
                "10.0.0.5:80",
                &[("x-forwarded-for", "::ffff:198.51.100.7")],
                Some("198.51.100.7"),
            ),
            // Only our own proxies, garbage at the edge, or nothing: unresolved.
            (
                "10.0.0.5:80",
                &[("x-forwarded-for", "10.0.0.1, 10.0.0.2")],
                None,
            ),
            (
                "10.0.0.5:80",
                &[("x-forwarded-for", "1.1.1.1, garbage, 10.0.0.2")],
                None,
            ),
            ("10.0.0.5:80", &[("x-forwarded-for", "")], None),
            ("10.0.0.5:80", &[("x-forwarded-for", " , ,")], None),
            ("10.0.0.5:80", &[], None),
            (
                "[2001:db8:ffff::1]:80",
                &[("x-forwarded-for", "198.51.100.8")],
                Some("198.51.100.8"),
            ),
        ];
        for (peer, headers, expected) in cases {
            assert_eq!(
                client(&config, peer, headers).as_deref(),
                *expected,
                "{peer} {headers:?}"
            );
        }
    }

    #[test]
    fn a_long_chain_cannot_push_the_real_hops_out() {
        let config = config(BEHIND_LB);
        let mut chain: Vec<String> = (0..200).map(|n| format!("192.0.2.{}", n % 250)).collect();
        chain.push("198.51.100.7".into());
        chain.push("10.0.0.9".into());
        let header = chain.join(", ");
        assert_eq!(
            client(&config, "10.0.0.5:80", &[("x-forwarded-for", &header)]).as_deref(),
            Some("198.51.100.7")
        );
        // 64 trusted hops then the client: beyond the window, so unresolved rather than wrong.
        let mut trusted_only: Vec<String> = vec!["198.51.100.7".into()];
        trusted_only.extend((0..64).map(|n| format!("10.0.1.{n}")));
        let header = trusted_only.join(",");
        assert_eq!(
            client(&config, "10.0.0.5:80", &[("x-forwarded-for", &header)]),
            None
        );
    }

    #[test]
    fn a_provider_header_is_believed_only_from_that_provider() {
        let config = config(BEHIND_CLOUDFLARE);
        let via_cloudflare = [
            ("cf-connecting-ip", "203.0.113.50"),
            ("x-forwarded-for", "203.0.113.50, 173.245.48.10"),
        ];
        assert_eq!(
            client(&config, "10.0.0.5:80", &via_cloudflare).as_deref(),
            Some("203.0.113.50")
        );
        // Straight to the load balancer with a forged header: the edge is the attacker.
        let forged = [
            ("cf-connecting-ip", "203.0.113.50"),
            ("x-forwarded-for", "198.51.100.66"),
        ];
        assert_eq!(
            client(&config, "10.0.0.5:80", &forged).as_deref(),
            Some("198.51.100.66")
        );
        // Unusable values fall back to the next header.
        for bad in ["garbage", "", "203.0.113.50, 203.0.113.51", "10.0.0.3"] {
            let headers = [
                ("cf-connecting-ip", bad),
                ("x-forwarded-for", "173.245.48.10"),
            ];
            assert_eq!(
                client(&config, "10.0.0.5:80", &headers).as_deref(),
                Some("173.245.48.10"),
                "{bad:?}"
            );
        }
        let twice = [
            ("cf-connecting-ip", "203.0.113.50"),
            ("cf-connecting-ip", "203.0.113.51"),
            ("x-forwarded-for", "173.245.48.10"),
        ];
        assert_eq!(
            client(&config, "10.0.0.5:80", &twice).as_deref(),
            Some("173.245.48.10")
        );
        // From an untrusted peer, nothing is read and the attempt is noticed.
        let direct = resolve_with(&config, "198.51.100.66:1234", &via_cloudflare);
        assert_eq!(direct.client, Some("198.51.100.66".parse().unwrap()));
        assert!(direct.untrusted_header);
    }

    #[test]
    fn a_header_without_from_is_believed_from_any_trusted_peer() {
        let config = config(
            r#"{"client_ip": {"trusted_proxies": ["10.0.0.0/8"], "headers": [{"name": "x-real-ip"}]}}"#,
        );
        assert_eq!(
            client(&config, "10.0.0.5:80", &[("x-real-ip", "198.51.100.7")]).as_deref(),
            Some("198.51.100.7")
        );
        assert_eq!(
            client(
                &config,
                "10.0.0.5:80",
                &[("x-forwarded-for", "198.51.100.7")]
            ),
            None
        );
        assert_eq!(
            client(&config, "10.0.0.5:80", &[("x-real-ip", "[2001:db8::1]:80")]).as_deref(),
            Some("2001:db8::1")
        );
    }

    #[test]
    fn hostile_values_never_panic() {
        let config = config(BEHIND_CLOUDFLARE);
        let long = "9".repeat(100_000);
        let commas = ",".repeat(100_000);
        for value in [
            long.as_str(),
            commas.as_str(),
            "\u{0}",
            "[",
            "[]:",
            "1.2.3.4:",
            ":::::",
            "1.2.3.4/8",
        ] {
            let _ = client(
                &config,
                "10.0.0.5:80",
                &[("x-forwarded-for", value), ("cf-connecting-ip", value)],
            );
        }
        assert_eq!(
            resolve(&config, None, &Headers::from_pairs::<&str, &str>(&[])).client,
            None
        );
        assert_eq!(
            resolve(
                &config,
                Some("garbage"),
                &Headers::from_pairs::<&str, &str>(&[])
            )
            .client,
            None
        );
    }

    #[test]
    fn ipv6_clients_are_grouped_by_prefix() {
        let ip: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(&*group(ip, 64), "2001:db8:1:2::/64");
        assert_eq!(&*group(ip, 48), "2001:db8:1::/48");
        assert_eq!(&*group(ip, 128), "2001:db8:1:2:3:4:5:6");
        assert_eq!(&*group("192.0.2.1".parse().unwrap(), 64), "192.0.2.1");
        for v4 in ["0.0.0.0", "10.0.100.9", "255.255.255.255", "198.51.100.7"] {
            assert_eq!(&*group(v4.parse().unwrap(), 64), v4);
        }
        let other: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(group(ip, 64), group(other, 64));
        assert_ne!(group(ip, 128), group(other, 128));
    }

    #[test]
    fn peers_in_every_form_envoy_writes() {
        let cases = [
            ("10.1.2.3:55000", Some(("10.1.2.3", Some(55000)))),
            ("10.1.2.3", Some(("10.1.2.3", None))),
            ("[2001:db8::1]:443", Some(("2001:db8::1", Some(443)))),
            ("[2001:db8::1]", Some(("2001:db8::1", None))),
            ("2001:db8::1", Some(("2001:db8::1", None))),
            ("[::ffff:192.0.2.7]:80", Some(("192.0.2.7", Some(80)))),
            ("::ffff:192.0.2.7", Some(("192.0.2.7", None))),
            ("127.0.0.1:0", Some(("127.0.0.1", Some(0)))),
            ("", None),
            ("not-an-ip", None),
            ("1.2.3.4:99999", None),
            ("/var/run/socket", None),
        ];
        for (input, expected) in cases {
            let got = parse_peer(input).map(|p| (p.ip.to_string(), p.port));
            let expected = expected.map(|(ip, port)| (ip.to_string(), port));
            assert_eq!(got, expected, "{input:?}");
        }
    }

    #[test]
    fn mapped_networks_are_compared_as_the_ipv4_networks_they_carry() {
        let net = |text: &str| text.parse::<IpNet>().unwrap();
        let cases = [
            ("::ffff:10.0.0.0/104", Ok("10.0.0.0/8")),
            ("::ffff:10.0.0.5/128", Ok("10.0.0.5/32")),
            ("::ffff:10.1.2.3/96", Ok("0.0.0.0/0")),
            ("::ffff:10.0.0.7/120", Ok("10.0.0.0/24")),
            ("::ffff:10.0.0.0/95", Err(MappedTooWide)),
            ("::ffff:0:0/80", Err(MappedTooWide)),
            ("10.0.0.9/8", Ok("10.0.0.0/8")),
            ("2001:db8::1/32", Ok("2001:db8::/32")),
            ("::/0", Ok("::/0")),
        ];
        for (given, expected) in cases {
            assert_eq!(canonical_network(net(given)), expected.map(net), "{given}");
        }
        // A dual-stack peer (compared as IPv4) falls inside the converted network.
        let peer = parse_peer("[::ffff:10.0.0.5]:443").unwrap().ip;
        let trusted = [canonical_network(net("::ffff:10.0.0.0/104")).unwrap()];
        assert!(contains(&trusted, peer));
    }

    #[test]
    fn zone_ids_are_dropped_in_every_address_form() {
        for raw in [
            "fe80::1%eth0",
            "[fe80::1%eth0]",
            "[fe80::1%eth0]:443",
            "[fe80::1%2]:80",
        ] {
            assert_eq!(
                parse_address(raw.as_bytes()),
                Some("fe80::1".parse().unwrap()),
                "{raw}"
            );
        }
        // Not an address with a zone: still nothing.
        for raw in ["%eth0", "1.2.3.4%eth0x:", "[%]:80"] {
            assert_eq!(parse_address(raw.as_bytes()), None, "{raw}");
        }
    }
}
