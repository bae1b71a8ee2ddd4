//! Host calls whose SDK wrappers panic on statuses the host may return; a panic would kill the
//! VM, so these report the status instead.

use proxy_wasm::types::Status;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
}

/// Sets filter state `wasm.<name>` (a single-segment property path), readable by the access
/// log as `%FILTER_STATE(wasm.<name>:PLAIN)%`.
pub fn set_filter_state(name: &str, value: &[u8]) -> bool {
    // SAFETY: both pointers are valid for the given lengths for the duration of the call; the
    // host copies the bytes.
    let status =
        unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) };
    status == Status::Ok
}
