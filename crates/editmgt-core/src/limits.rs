//! How large one tensor may be on a device.
//!
//! GPU adapters bound the size of a single storage-buffer binding: WebGPU's default and the
//! minimum many adapters report is 128 MiB (lavapipe's `maxStorageBufferRange`, for one), and
//! Burn's wgpu runtime already requests the adapter's own limits but cannot allocate a tensor
//! beyond them. The released model's largest intermediates go past that (the attention scores of
//! a naive attention, the head's logits), so the crates split such work into row blocks sized by
//! [`max_buffer_bytes`], the same way on every backend; on the CPU nothing is split.

use burn::tensor::Device;

/// Overrides [`max_buffer_bytes`] for every device (bytes, e.g. `268435456`).
pub const MAX_BUFFER_ENV: &str = "EDITMGT_MAX_BUFFER_BYTES";

/// The bound assumed on GPU backends: 128 MiB, WebGPU's default `maxStorageBufferBindingSize`
/// and the smallest limit common adapters report (Burn 0.22 does not expose the adapter's).
pub const DEFAULT_GPU_BUFFER_BYTES: u64 = 128 << 20;

/// Whether `device` is one of Burn's CPU backends (`flex`, `ndarray`), where buffers are only
/// bounded by memory.
pub fn is_cpu(device: &Device) -> bool {
    let name = format!("{device:?}");
    name.starts_with("Device<Flex") || name.starts_with("Device<NdArray")
}

/// The largest single tensor, in bytes, that work on `device` should create: `$EDITMGT_MAX_BUFFER_BYTES`
/// when set, unbounded on the CPU, [`DEFAULT_GPU_BUFFER_BYTES`] elsewhere.
pub fn max_buffer_bytes(device: &Device) -> u64 {
    if let Some(bytes) = std::env::var(MAX_BUFFER_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&v| v > 0)
    {
        return bytes;
    }
    if is_cpu(device) {
        u64::MAX
    } else {
        DEFAULT_GPU_BUFFER_BYTES
    }
}

/// How many rows of `row_bytes` bytes fit in `limit` bytes: at least 1, at most `rows`.
pub fn rows_within(limit: u64, row_bytes: u64, rows: usize) -> usize {
    let fit = limit / row_bytes.max(1);
    (fit.min(rows as u64) as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_is_unbounded_and_rows_fit() {
        if std::env::var_os(MAX_BUFFER_ENV).is_none() {
            assert_eq!(max_buffer_bytes(&Device::flex()), u64::MAX);
        }
        assert!(is_cpu(&Device::flex()));
        assert_eq!(rows_within(100, 30, 10), 3);
        assert_eq!(rows_within(10, 30, 10), 1);
        assert_eq!(rows_within(u64::MAX, 30, 10), 10);
    }
}
