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
