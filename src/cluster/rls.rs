//! The two messages of Envoy's rate limit service API that cluster mode exchanges
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), with only the fields it
//! uses. Written out as `prost` structs rather than generated, so the filter's build needs no
//! `protoc`; the field numbers and types are those of `rls.proto` and
//! `envoy/extensions/common/ratelimit/v3/ratelimit.proto`, and the unit tests below compare
//! the bytes with ones `protoc` produced from those files. Fields a message carries that these
//! structs do not name are skipped when decoding. prost costs the `.wasm` 3.2 KB over a
//! hand-written varint encoder and field skipper (373,889 against 370,680 bytes, measured),
//! for wire-format code nobody here has to get right.

use prost::Message;

/// The gRPC service and method, as `dispatch_grpc_call` takes them.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// The descriptor key the client is sent under; the service's limit names it as its variable
/// (`descriptors[0]['client']` in Limitador), or every client shares one counter.
pub const CLIENT_KEY: &str = "client";

/// `envoy.service.ratelimit.v3.RateLimitRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`.
#[derive(Clone, PartialEq, Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry`.
#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse`: its overall code only.
#[derive(Clone, PartialEq, Message)]
pub struct RateLimitResponse {
    #[prost(int32, tag = "1")]
    pub overall_code: i32,
}

/// `RateLimitResponse.Code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unknown,
    Ok,
    OverLimit,
}

/// One failure of `client` (the resolved, grouped client IP), for `domain`.
pub fn request(domain: &str, client: &str) -> Vec<u8> {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: CLIENT_KEY.to_string(),
                value: client.to_string(),
            }],
        }],
        hits_addend: 1,
    }
    .encode_to_vec()
}

/// The service's verdict; `None` for bytes that are not a `RateLimitResponse`. A code this
/// version does not know reads as `Unknown`.
pub fn verdict(bytes: &[u8]) -> Option<Code> {
    let response = RateLimitResponse::decode(bytes).ok()?;
    Some(match response.overall_code {
        1 => Code::Ok,
        2 => Code::OverLimit,
        _ => Code::Unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The expected bytes come from the published definitions, not from this file:
    //   P=../shared/vendor/limitador/limitador-server/vendor/protobufs
    //   protoc -I$P/data-plane-api -I$P/xds -I$P/protoc-gen-validate \
    //     -I$P/googleapis --encode=envoy.service.ratelimit.v3.RateLimitRequest \
    //     envoy/service/ratelimit/v3/rls.proto < tests/data/rls/request-ipv4.txt
    // tests/rls_wire.rs runs the same commands and fails when these constants disagree.
    const REQUEST_IPV4: &[u8] = include_bytes!("../../tests/data/rls/request-ipv4.bin");
    const REQUEST_IPV6: &[u8] = include_bytes!("../../tests/data/rls/request-ipv6.bin");
    const RESPONSE_OVER_LIMIT: &[u8] =
        include_bytes!("../../tests/data/rls/response-over-limit.bin");
    const RESPONSE_OK: &[u8] = include_bytes!("../../tests/data/rls/response-ok.bin");

    #[test]
    fn a_failure_encodes_as_protoc_encodes_the_same_request() {
        assert_eq!(request("negcache", "203.0.113.7"), REQUEST_IPV4);
        assert_eq!(request("negcache", "2001:db8:1:2::/64"), REQUEST_IPV6);
    }

    #[test]
    fn the_overall_code_is_read_past_the_fields_it_does_not_name() {
        // Both carry statuses, a current limit, headers and a duration until reset.
        assert_eq!(verdict(RESPONSE_OVER_LIMIT), Some(Code::OverLimit));
        assert_eq!(verdict(RESPONSE_OK), Some(Code::Ok));
    }

    #[test]
    fn an_empty_answer_is_unknown_and_garbage_is_no_answer() {
        assert_eq!(verdict(b""), Some(Code::Unknown));
        assert_eq!(verdict(&[0x08, 0x07]), Some(Code::Unknown));
        assert_eq!(verdict(&[0x08]), None);
        assert_eq!(verdict(&[0xff, 0xff, 0xff]), None);
    }
}
