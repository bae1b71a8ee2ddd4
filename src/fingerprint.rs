//! Keyed 128-bit fingerprints (SipHash-1-3 with a secret key). The key makes slot positions
//! unpredictable, so nobody can aim credentials at one slot; the width makes collisions
//! between two real keys negligible. Every input is length-prefixed and tagged, so no two
//! different inputs hash the same bytes.

use siphasher::sip128::{Hasher128, SipHasher13};
use std::hash::Hasher;

use crate::config::KeyShape;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Fingerprint(pub [u8; 16]);

impl Fingerprint {
    /// A short, non-reversible name for logs: never the credential itself.
    pub fn short(&self) -> String {
        self.0[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn low_u64(&self) -> u64 {
        u64::from_le_bytes([
            self.0[0], self.0[1], self.0[2], self.0[3], self.0[4], self.0[5], self.0[6], self.0[7],
        ])
    }

    pub fn high_u64(&self) -> u64 {
        u64::from_le_bytes([
            self.0[8], self.0[9], self.0[10], self.0[11], self.0[12], self.0[13], self.0[14],
            self.0[15],
        ])
    }
}

/// Who a request is, for the cache: a credential from a named source, or an anonymous client.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    Credential { source: &'a str, value: &'a [u8] },
    Anonymous { client_ip: &'a str },
}

/// The request attributes an entry may be keyed on.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub client_ip: &'a str,
}

const IDENTITY_DOMAIN: &[u8] = b"negcache/identity/v1";
const ENTRY_DOMAIN: &[u8] = b"negcache/entry/v1";
const CLIENT_DOMAIN: &[u8] = b"negcache/client/v1";

#[derive(Clone)]
pub struct Fingerprinter {
    key: [u8; 16],
}

impl Fingerprinter {
    /// Derives the 128-bit SipHash key from a secret of any length (at least 16 bytes by
    /// configuration), so all of the secret counts.
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut hasher = SipHasher13::new_with_key(b"negcache/key-v1\0");
        write_part(&mut hasher, secret);
        let derived = hasher.finish128();
        Fingerprinter {
            key: derived.as_bytes(),
        }
    }

    /// The derived key, to tell whether two fingerprinters agree.
    pub fn key_bytes(&self) -> [u8; 16] {
        self.key
    }

    fn hasher(&self, domain: &[u8]) -> SipHasher13 {
        let mut hasher = SipHasher13::new_with_key(&self.key);
        write_part(&mut hasher, domain);
        hasher
    }

    /// The identity fingerprint: which slots an identity's entries may live in.
    pub fn identity(&self, authority: &[u8], who: Who<'_>) -> Fingerprint {
        let mut hasher = self.hasher(IDENTITY_DOMAIN);
        write_part(&mut hasher, authority);
        match who {
            Who::Credential { source, value } => {
                hasher.write_u8(1);
                write_part(&mut hasher, source.as_bytes());
                write_part(&mut hasher, value);
            }
            Who::Anonymous { client_ip } => {
                hasher.write_u8(0);
                write_part(&mut hasher, client_ip.as_bytes());
            }
        }
        Fingerprint(hasher.finish128().as_bytes())
    }

    /// The rate limiter's key for a client (its grouped address), across all virtual hosts.
    pub fn client(&self, client: &str) -> Fingerprint {
        let mut hasher = self.hasher(CLIENT_DOMAIN);
        write_part(&mut hasher, client.as_bytes());
        Fingerprint(hasher.finish128().as_bytes())
    }

    /// The fingerprint of one entry: an identity plus the parts its status is keyed on.
    pub fn entry(
        &self,
        identity: &Fingerprint,
        shape: KeyShape,
        parts: &KeyParts<'_>,
    ) -> Fingerprint {
        // An entry keyed on its identity alone is that identity: it is a keyed fingerprint
        // already, in another domain than every other entry's key, so no two entries' keys
        // meet, and a second SipHash would only cost time on every hit and every store.
        if shape == KeyShape::IDENTITY_ONLY {
            return *identity;
        }
        let mut hasher = self.hasher(ENTRY_DOMAIN);
        hasher.write(&identity.0);
        hasher.write_u8(shape.to_bits());
        if shape.method {
            write_part(&mut hasher, parts.method.as_bytes());
        }
        if shape.path {
            write_part(&mut hasher, parts.path.as_bytes());
        }
        if shape.query {
            write_part(&mut hasher, parts.query.as_bytes());
        }
        if shape.client_ip {
            write_part(&mut hasher, parts.client_ip.as_bytes());
        }
        Fingerprint(hasher.finish128().as_bytes())
    }
}

fn write_part(hasher: &mut SipHasher13, part: &[u8]) {
    hasher.write_u64(part.len() as u64);
    hasher.write(part);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> Fingerprinter {
        Fingerprinter::from_secret(b"0123456789abcdef0123")
    }

    fn cred<'a>(source: &'a str, value: &'a [u8]) -> Who<'a> {
        Who::Credential { source, value }
    }

    #[test]
    fn different_inputs_never_meet_by_concatenation() {
        let f = fp();
        let all = [
            f.identity(b"a", cred("header:authorization", b"bc")),
            f.identity(b"ab", cred("header:authorization", b"c")),
            f.identity(b"a", cred("header:x-api-key", b"bc")),
            f.identity(b"a", cred("header:authorizationb", b"c")),
            f.identity(b"a", Who::Anonymous { client_ip: "bc" }),
            f.identity(b"b", cred("header:authorization", b"bc")),
            f.client("bc"),
        ];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn fingerprints_depend_on_the_secret() {
        let a = fp().identity(b"host", cred("header:authorization", b"t"));
        let b = Fingerprinter::from_secret(b"another secret of 16+ bytes")
            .identity(b"host", cred("header:authorization", b"t"));
        assert_ne!(a, b);
        assert_eq!(
            a,
            fp().identity(b"host", cred("header:authorization", b"t"))
        );
    }

    #[test]
    fn entries_use_only_the_parts_of_their_shape() {
        let f = fp();
        let id = f.identity(b"h", cred("s", b"v"));
        let get_a = KeyParts {
            method: "GET",
            path: "/a",
            query: "x=1",
            client_ip: "1.2.3.4",
        };
        let post_b = KeyParts {
            method: "POST",
            path: "/b",
            query: "",
            client_ip: "5.6.7.8",
        };
        let only = KeyShape::IDENTITY_ONLY;
        assert_eq!(f.entry(&id, only, &get_a), f.entry(&id, only, &post_b));
        assert_eq!(
            f.entry(&id, only, &get_a),
            id,
            "no second hash for the default shape"
        );
        let by_path = KeyShape {
            method: true,
            path: true,
            ..KeyShape::IDENTITY_ONLY
        };
        assert_ne!(
            f.entry(&id, by_path, &get_a),
            f.entry(&id, by_path, &post_b)
        );
        // The same parts under two shapes are two keys.
        assert_ne!(f.entry(&id, only, &get_a), f.entry(&id, by_path, &get_a));
        // Moving bytes between parts changes the key.
        let split1 = KeyParts {
            method: "GE",
            path: "T/a",
            ..get_a
        };
        assert_ne!(
            f.entry(&id, by_path, &get_a),
            f.entry(&id, by_path, &split1)
        );
    }

    #[test]
    fn short_names_are_eight_hex_digits() {
        let id = fp().identity(b"h", cred("s", b"secret-token"));
        let short = id.short();
        assert_eq!(short.len(), 8);
        assert!(!short.contains("secret"));
    }
}
