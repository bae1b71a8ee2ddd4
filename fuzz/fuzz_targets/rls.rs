//! The rate limit service's answers (cluster mode) are bytes from the network: any of them
//! decode to a verdict or to nothing, never a panic; and every request the filter can encode
//! decodes back to what it said.
#![no_main]

use libfuzzer_sys::fuzz_target;
use negcache::cluster::rls::{self, RateLimitRequest};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let _ = rls::verdict(data);
    let text = String::from_utf8_lossy(data);
    let middle = (0..=text.len() / 2)
        .rev()
        .find(|&at| text.is_char_boundary(at))
        .unwrap_or(0);
    let (domain, client) = text.split_at(middle);
    let request = RateLimitRequest::decode(rls::request(domain, client).as_slice()).unwrap();
    assert_eq!(request.domain, domain);
    assert_eq!(request.descriptors[0].entries[0].value, client);
    assert_eq!(request.hits_addend, 1);
});
