//! Client resolution over an arbitrary peer and arbitrary header lines, under a configuration
//! with trusted proxies and every kind of client header: never a panic, and an untrusted peer is
//! always the client itself.
#![no_main]

mod lines;

use libfuzzer_sys::fuzz_target;
use negcache::client_ip;
use negcache::config::Config;
use negcache::request::Headers;

const CONFIG: &str = r#"{"client_ip": {
    "trusted_proxies": ["10.0.0.0/8", "::1", "2001:db8::/32", "::ffff:192.0.2.0/120"],
    "headers": [
        {"name": "cf-connecting-ip", "from": ["203.0.113.0/24"]},
        {"name": "x-forwarded-for"},
        {"name": "x-real-ip"}
    ],
    "ipv6_prefix": 56
}}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = Config::parse(CONFIG.as_bytes()) else {
        return;
    };
    let (peer, pairs) = lines::split(data);
    let headers = Headers::from_pairs(&pairs);
    let peer = std::str::from_utf8(peer).ok();
    let resolution = client_ip::resolve(&config.client_ip, peer, &headers);
    if let Some(client) = resolution.client {
        let _ = client_ip::group(client, config.client_ip.ipv6_prefix);
    }
    if let Some(parsed) = peer.and_then(client_ip::parse_peer) {
        let trusted = parsed.port != Some(0)
            && client_ip::contains(&config.client_ip.trusted_proxies, parsed.ip);
        if !trusted {
            assert_eq!(resolution.client, Some(parsed.ip));
        }
    }
});
