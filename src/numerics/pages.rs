//! Memory-system helpers: large, long-lived arrays on transparent huge pages, and cache prefetch
//! hints.
//!
//! A product with a kNN graph reads rows of its n × r operand at scattered positions. On 4 KiB
//! pages nearly every such read of an operand of tens of megabytes misses the TLB and walks the
//! page tables; on 2 MiB pages the whole operand is covered by a few dozen TLB entries. Linux backs
//! an anonymous mapping with huge pages when it is marked `MADV_HUGEPAGE` before its pages are
//! first touched (the kernel setting `transparent_hugepage/enabled = madvise`, the common default,
//! does so only for marked mappings). Elsewhere, or with the setting `never`, the advice is a no-op.

use ndarray::Array2;

/// Buffers smaller than this stay on ordinary pages.
pub(crate) const HUGE_ABOVE_BYTES: usize = 8 << 20;

/// Asks the kernel to back the whole pages of `buf` with transparent huge pages. Has an effect on
/// pages not yet touched (a fresh zeroed allocation); harmless on others.
pub(crate) fn advise_huge<T>(buf: &mut [T]) {
    let bytes = std::mem::size_of_val(buf);
    if bytes < HUGE_ABOVE_BYTES {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = buf.as_mut_ptr() as usize;
        let first = start.div_ceil(PAGE) * PAGE;
        let last = (start + bytes) / PAGE * PAGE;
        if last > first {
            // SAFETY: [first, last) lies inside `buf`, which this process owns and which stays
            // allocated for the call; MADV_HUGEPAGE changes how the range is backed, never its
            // contents, and a refusal (EINVAL where THP is not built in) leaves it as it was.
            unsafe {
                libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_HUGEPAGE);
            }
        }
    }
}

/// A zero n × r array (row-major) whose pages, when it is large, are advised onto huge pages
/// before they are touched (a zeroed allocation of this size is a fresh mapping, still untouched).
pub(crate) fn zeros(shape: (usize, usize)) -> Array2<f64> {
    let mut buf = vec![0.0f64; shape.0 * shape.1];
    advise_huge(&mut buf);
    Array2::from_shape_vec(shape, buf).expect("buffer of the shape's length")
}

/// Hints the CPU to load the cache line at `p` (no effect where unsupported; `p` may be anywhere).
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    prefetch_hint::<3, T>(p) // x86 _MM_HINT_T0: every cache level
}

/// [`prefetch`] into the second-level cache only.
#[inline(always)]
pub(crate) fn prefetch_l2<T>(p: *const T) {
    prefetch_hint::<2, T>(p) // x86 _MM_HINT_T1
}

#[inline(always)]
fn prefetch_hint<const HINT: i32, T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint and never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<HINT>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AnonHugePages (kB) of the mapping that holds `addr`, from /proc/self/smaps.
    #[cfg(target_os = "linux")]
    fn huge_kb_at(addr: usize) -> Option<usize> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                        inside = a <= addr && addr < b;
                        continue;
                    }
                }
            }
            if inside {
                if let Some(v) = line.strip_prefix("AnonHugePages:") {
                    return v.trim().trim_end_matches("kB").trim().parse().ok();
                }
            }
        }
        None
    }

    #[test]
    fn large_zero_arrays_are_zero_and_land_on_huge_pages_where_the_kernel_offers_them() {
        let small = zeros((3, 5));
        assert_eq!(small.dim(), (3, 5));
        assert!(small.iter().all(|&v| v == 0.0));
        let n = (64 << 20) / 8 / 4;
        let mut big = zeros((n, 4));
        assert!(big.is_standard_layout() && big.iter().all(|&v| v == 0.0));
        big.fill(1.0);
        assert_eq!(big.sum(), (4 * n) as f64);
        #[cfg(target_os = "linux")]
        {
            let setting = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
            // "[madvise]" or "[always]" selected: the touched 64 MiB must hold huge pages.
            if setting.contains("[madvise]") || setting.contains("[always]") {
                let kb = huge_kb_at(big.as_ptr() as usize + (32 << 20)).expect("the array's mapping in smaps");
                assert!(kb >= 2 << 10, "no huge page in the 64 MiB array (THP: {})", setting.trim());
            }
        }
    }
}
