//! Host calls whose SDK wrappers panic on statuses the host may return; a panic would kill the
//! VM, so these report the status instead.

use proxy_wasm::types::{MapType, Status};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;

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

/// The host's serialized header map (see `request::Headers::from_serialized`), as one buffer:
/// the SDK's wrapper would copy every name and value into its own allocation.
pub fn header_map(map_type: MapType) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to `size` bytes it allocated through this module's
    // `proxy_on_memory_allocate` (the global allocator), so the Vec may own and free them.
    unsafe {
        if proxy_get_header_map_pairs(map_type, &mut data, &mut size) != Status::Ok {
            return None;
        }
        if data.is_null() {
            return Some(Vec::new());
        }
        Some(Vec::from_raw_parts(data, size, size))
    }
}
