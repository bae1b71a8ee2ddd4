//! `SharedStore` on Envoy shared data.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

use crate::slots::{SharedStore, StoreError};

pub struct EnvoyStore;

impl SharedStore for EnvoyStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        match hostcalls::get_shared_data(key) {
            Ok((None, None)) => Ok(None),
            Ok((value, cas)) => Ok(Some((value.unwrap_or_default(), cas.unwrap_or(0)))),
            Err(_) => Err(StoreError::Host),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let cas = (cas != 0).then_some(cas);
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Host),
        }
    }
}
