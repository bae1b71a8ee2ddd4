//! The downstream peer as Envoy reports it in `source.address`.

use std::net::{IpAddr, SocketAddr};

/// Parses `source.address`: `1.2.3.4:5678`, `[::1]:80`, or a bare address; an IPv4-mapped IPv6
/// address (`::ffff:a.b.c.d`) is read as the IPv4 address it carries.
pub fn parse_peer(address: &str) -> Option<Peer> {
    let address = address.trim();
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
