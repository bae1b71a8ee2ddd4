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

    fn proxy_get_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;

    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;

    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;

    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> Status;
}

/// Sends a local reply; `false` when the host refused it. The headers are already in the
/// host's layout (the SDK's wrapper wants them as a new list of pairs to serialize, and panics
/// on a status it does not expect).
pub fn send_local_response(status: u16, map: &[u8], body: &[u8]) -> bool {
    // SAFETY: every pointer is valid for its length for the duration of the call; the host
    // copies what it needs.
    let status = unsafe {
        proxy_send_local_response(
            u32::from(status),
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    };
    status == Status::Ok
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

/// Runs a host call that hands back a buffer (`data`, `size`) and takes ownership of it: the
/// host allocates it through this module's `proxy_on_memory_allocate` (the global allocator),
/// so the Vec may own and free it. `None` unless the call returned `Ok`; empty when the host
/// handed back nothing.
fn host_buffer(call: impl FnOnce(*mut *mut u8, *mut usize) -> Status) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    if call(&mut data, &mut size) != Status::Ok {
        return None;
    }
    if data.is_null() {
        return Some(Vec::new());
    }
    // SAFETY: see above; `size` bytes at `data` belong to this module's allocator.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// The host's serialized header map (see `request::Headers::from_serialized`), as one buffer:
/// the SDK's wrapper would copy every name and value into its own allocation.
pub fn header_map(map_type: MapType) -> Option<Vec<u8>> {
    // SAFETY: the two out-pointers are valid for the call.
    host_buffer(|data, size| unsafe { proxy_get_header_map_pairs(map_type, data, size) })
}

/// One header's value (the first line of it); `None` when absent. A header the map does not
/// carry costs the host no allocation in the VM.
pub fn header_value(map_type: MapType, name: &str) -> Option<Vec<u8>> {
    // SAFETY: `name` is valid for its length and the out-pointers for the call.
    host_buffer(|data, size| unsafe {
        proxy_get_header_map_value(map_type, name.as_ptr(), name.len(), data, size)
    })
}

/// The downstream peer's address (`source.address`), read with a constant path: the SDK's
/// wrapper would build the path in two allocations on every request.
pub fn source_address() -> Option<Vec<u8>> {
    const PATH: &[u8] = b"source\0address";
    // SAFETY: `PATH` is valid for its length and the out-pointers for the call.
    host_buffer(|data, size| unsafe { proxy_get_property(PATH.as_ptr(), PATH.len(), data, size) })
        .filter(|address| !address.is_empty())
}
