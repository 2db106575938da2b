//! Keeping freed memory for reuse: a process-wide setting of the C allocator for the binaries.
//!
//! A training step allocates and frees the same large buffers every time (activations, gradients,
//! Crop_Net_2's 1.3 GB weight gradient). glibc's malloc serves every allocation above its mmap
//! threshold (at most 32 MiB) with a fresh `mmap` and unmaps it on free, so each step faulted its
//! pages in again and the kernel zeroed them: on the development VM that was more than half of a
//! stage-2 step (measured with `aue-bench`: 4.4 s -> 1.5 s per resnet18 step at batch 8, one
//! thread). Turning mmap off makes every block come from the heap, where freed blocks are reused.
//! jemalloc was tried too (tikv-jemallocator, default and no-decay settings): it still returned
//! the large blocks' pages to the OS and was slower than either.
//!
//! One arena for every thread, too: training steps and forward passes run on the threads of
//! Rayon's pool (`aue_model::in_pool`), and glibc gives each thread that allocates an arena of its
//! own, whose heaps (64 MiB each, outside the main heap's settings above) are mapped and unmapped
//! as the step's buffers come and go (measured: a resnet18 stage-2 step at batch 8, two threads,
//! 1.10 s -> 1.59 s with per-thread arenas, 1.03 s with one).
//!
//! And transparent huge pages for large blocks ([`HugePages`], which every aue binary declares
//! its global allocator with [`global_allocator!`](crate::global_allocator); a library cannot
//! choose the allocator of the programs that link it). On Linux THP is usually in `madvise`
//! mode, so the heap was otherwise mapped in 4 KiB pages, and the TLB misses of streaming through
//! hundreds of MB of activations and weights depended on where a process's pages happened to lie.
//! On the development VM (Intel Xeon, 2 vCPUs) three copies of one resnet18 inference worker
//! (batch 8, one thread), started one after the other and stepped in turn, took 943, 731 and 647
//! ms per pass, the first started the slowest every time (648, 643 and 699 with glibc's
//! `glibc.malloc.hugetlb=1` tunable); with this allocator 747, 747 and 724. Benchmarks that
//! start aue's worker first had measured that penalty as aue's.

use std::alloc::{GlobalAlloc, Layout, System};

/// The C allocator (Rust's `System`), whose blocks of [`HUGE_MIN`] bytes or more are advised to
/// the kernel as wanting transparent huge pages (`madvise(MADV_HUGEPAGE)` on the whole 2 MiB
/// pages inside the block, before its memory is first touched), on Linux; elsewhere `System`
/// as it is. One system call per large allocation: a resnet18 training step makes a few hundred.
pub struct HugePages;

/// Declares [`HugePages`] the global allocator of the binary whose main file invokes it (at
/// the top level): `aue_cli::global_allocator!();`.
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[global_allocator]
        static AUE_GLOBAL_ALLOCATOR: $crate::alloc::HugePages = $crate::alloc::HugePages;
    };
}

/// Blocks from this size on get huge pages (the whole 2 MiB pages inside them).
const HUGE_MIN: usize = 4 << 20;

/// The huge page size of x86-64 and aarch64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

impl HugePages {
    /// Advises the whole huge pages inside `[p, p + size)` when the block is large.
    fn advise(p: *mut u8, size: usize) {
        #[cfg(target_os = "linux")]
        if !p.is_null() && size >= HUGE_MIN {
            let start = (p as usize).next_multiple_of(HUGE_PAGE);
            let end = (p as usize + size) / HUGE_PAGE * HUGE_PAGE;
            if end > start {
                // SAFETY: the range lies inside the block just allocated (owned by the caller);
                // MADV_HUGEPAGE changes how its pages are backed, never its contents. A failure
                // (THP compiled out) leaves ordinary pages, so it is ignored.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE)
                };
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (p, size);
    }
}

// SAFETY: every method forwards to `System` with the same arguments and returns its block; the
// advice only changes how the block's pages are backed.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller promises for `layout`.
        let p = unsafe { System.alloc(layout) };
        Self::advise(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller promises for `layout`.
        let p = unsafe { System.alloc_zeroed(layout) };
        Self::advise(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (every block of this allocator does).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller promises; `ptr` came from `System`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        Self::advise(p, new_size);
        p
    }
}

/// Makes the C allocator keep freed memory for reuse (glibc on Linux: no `mmap` for large blocks,
/// no trimming of the heap below 2 GiB of free space at its top, one arena for all threads). Call
/// it once, first thing in `main`; elsewhere (other C libraries) it does nothing. Returns whether
/// it applied.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; it is called before other threads
        // allocate and is valid at any time in any case.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
                && libc::mallopt(libc::M_ARENA_MAX, 1) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Hands the free memory the C allocator holds back to the OS (glibc on Linux: `malloc_trim(0)`,
/// which also releases whole free pages inside the heap); elsewhere it does nothing. For a point
/// where a large amount of memory has just been freed and will not be needed again soon, e.g.
/// after building the fused inference model (`aue_model::InferenceModel`) and dropping the loaded
/// model whose unfolded weights it replaces, so that those pages do not stay resident beside it.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the OS; it is valid at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
