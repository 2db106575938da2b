//! Products with a short side on AVX-512 CPUs: `y[i][j] = sum_k a[i][k] b[j][k]` for `n <= 16`
//! columns `j`, both factors contiguous along `k`: the shape of `Crop_Net_2`'s forward (each of
//! the 34 crop weights `[256, 36864]` against a batch's crop features `[b, 36864]`).
//!
//! Written by hand because gemm, built for large products, packs the big factor panel by panel and
//! sums it in a microkernel shaped for many columns; with 8 columns every weight is used 8 times,
//! so the product is a stream of the weights from memory and nothing else matters. Here each pair
//! of weight rows is read once, with a software prefetch ahead of the loads, against the columns
//! held in the L2 cache (whole, or a block of them: [`block_len`]). Measured on the Intel Xeon
//! (Sapphire Rapids) VM, one thread, the 34 products of a resnet18 batch of 8 (1.28 GB of
//! weights): gemm 180-190 ms, this kernel 127-134 ms in blocks of 4096 and 121 ms on whole rows
//! (docs/PERFORMANCE.md).
//!
//! The sums run in another order than gemm's: 16 lanes per block of values of `k`, each lane
//! summed in order, the lanes added pairwise, the blocks added in order. The order depends on
//! the sizes and on the machine's L2 cache size (the blocks), not on the thread count.

/// Values of `k` per block when the columns do not fit in the L2 cache ([`block_len`]): a block
/// of 16 columns (256 KiB) stays in any L2 cache of 1 MiB.
const BLOCK: usize = 4096;

/// Values of `k` per block for `n` columns: the whole rows when the columns take at most 3/4 of
/// this CPU's L2 cache, else [`BLOCK`]. Blocks cut each weight row's stream into pieces, and the
/// next pair of rows starts elsewhere; whole rows are read as one stream, row after row. Measured
/// on the Intel Xeon (Sapphire Rapids) VM (2 MiB of L2), one thread, the 34 `[256, 36864]`
/// products: 8 columns (1.2 MB) 175 -> 121 ms, 4 columns 151 -> 104 ms; with 16 columns (2.4
/// MB, past the L2) whole rows took 565 ms against 309 in blocks.
fn block_len(n: usize, k: usize) -> usize {
    if n * k * size_of::<f32>() <= l2_bytes() / 4 * 3 { k.max(1) } else { BLOCK }
}

/// The size of the first CPU's L2 cache (Linux sysfs), 1 MiB where it cannot be read.
fn l2_bytes() -> usize {
    static L2: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *L2.get_or_init(|| {
        (0..8)
            .find_map(|i| {
                let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
                let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).ok();
                if read("level")?.trim() != "2" {
                    return None;
                }
                parse_cache_size(&read("size")?)
            })
            .unwrap_or(1 << 20)
    })
}

/// A sysfs cache size (`2048K`, `1M`, `512`) in bytes.
fn parse_cache_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (digits, unit) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    digits.parse::<usize>().ok().map(|v| v * unit)
}

/// Floats ahead of the loads that each weight row is prefetched (1 KiB).
const PREFETCH: usize = 256;

/// Whether [`dot_rows_f32`] runs here: an x86-64 CPU with AVX-512F.
pub(crate) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`dot_rows_f32`] takes a product with `n` columns.
pub(crate) fn takes(n: usize) -> bool {
    (1..=16).contains(&n) && supported()
}

/// `y[i * ldy + j] = sum_k a[i * lda + k] * b[j * ldb + k]` for `i < m`, `j < n`; with
/// `accumulate`, `+=` (else `y` is written without being read).
///
/// # Safety
/// [`takes`]`(n)` must hold; rows `0..m` of `a` (`k` values each, `lda` apart), rows `0..n` of `b`
/// (`ldb` apart) and rows `0..m` of `y` (`n` values each, `ldy` apart, initialised when
/// `accumulate`) must lie in their allocations, `y`'s rows not overlapping `a`, `b` or each other.
pub(crate) unsafe fn dot_rows_f32(
    (m, n, k): (usize, usize, usize),
    (a, lda): (*const f32, usize),
    (b, ldb): (*const f32, usize),
    (y, ldy): (*mut f32, usize),
    accumulate: bool,
) {
    // SAFETY: the caller's contract.
    unsafe {
        dot_rows_in_blocks((m, n, k), (a, lda), (b, ldb), (y, ldy), accumulate, block_len(n, k))
    }
}

/// [`dot_rows_f32`] over blocks of `block` values of `k`.
///
/// # Safety
/// As [`dot_rows_f32`]; `block > 0`.
unsafe fn dot_rows_in_blocks(
    (m, n, k): (usize, usize, usize),
    (a, lda): (*const f32, usize),
    (b, ldb): (*const f32, usize),
    (y, ldy): (*mut f32, usize),
    accumulate: bool,
    block: usize,
) {
    debug_assert!(takes(n) && block > 0);
    // SAFETY: the caller's contract; `takes` checked AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        if !accumulate {
            for i in 0..m {
                std::ptr::write_bytes(y.add(i * ldy), 0, n);
            }
        }
        if k == 0 {
            return;
        }
        // Column j of block k0; columns past n read row n - 1 again, their sums dropped.
        let col = |j: usize, k0: usize| b.add(j.min(n - 1) * ldb + k0);
        // Adds a row's sums into row i of y.
        let add = |i: usize, sums: &[f32]| {
            let out = std::slice::from_raw_parts_mut(y.add(i * ldy), n);
            out.iter_mut().zip(sums).for_each(|(o, s)| *o += s);
        };
        for k0 in (0..k).step_by(block) {
            let len = block.min(k - k0);
            if n <= 8 {
                let cols: [*const f32; 8] = std::array::from_fn(|j| col(j, k0));
                for i in (0..m).step_by(2) {
                    // An odd last row is paired with itself (its second sums dropped).
                    let i1 = (i + 1).min(m - 1);
                    let rows = [a.add(i * lda + k0), a.add(i1 * lda + k0)];
                    let mut sums = [[0f32; 8]; 2];
                    x86::block::<2, 8>(rows, cols, len, &mut sums);
                    add(i, &sums[0]);
                    if i1 != i {
                        add(i1, &sums[1]);
                    }
                }
            } else {
                let cols: [*const f32; 16] = std::array::from_fn(|j| col(j, k0));
                for i in 0..m {
                    let mut sums = [[0f32; 16]; 1];
                    x86::block::<1, 16>([a.add(i * lda + k0)], cols, len, &mut sums);
                    add(i, &sums[0]);
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (m, n, k, a, lda, b, ldb, y, ldy, accumulate, block);
        unreachable!("dot_rows_f32 without AVX-512F");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::PREFETCH;

    /// `sums[r][c] = sum_{t < len} rows[r][t] * cols[c][t]`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block<const R: usize, const C: usize>(
        rows: [*const f32; R],
        cols: [*const f32; C],
        len: usize,
        sums: &mut [[f32; C]; R],
    ) {
        // SAFETY (whole body): the caller's pointers reach `len` values; prefetches may point
        // past them (`wrapping_add`), which never faults.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); C]; R];
            let full = len / 16 * 16;
            let mut t = 0;
            while t < full {
                let mut x = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    _mm_prefetch::<_MM_HINT_T0>(rows[r].wrapping_add(t + PREFETCH).cast::<i8>());
                    x[r] = _mm512_loadu_ps(rows[r].add(t));
                }
                for c in 0..C {
                    let v = _mm512_loadu_ps(cols[c].add(t));
                    for r in 0..R {
                        acc[r][c] = _mm512_fmadd_ps(x[r], v, acc[r][c]);
                    }
                }
                t += 16;
            }
            if full < len {
                let mask: __mmask16 = (1u16 << (len - full)) - 1;
                let mut x = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    x[r] = _mm512_maskz_loadu_ps(mask, rows[r].add(full));
                }
                for c in 0..C {
                    let v = _mm512_maskz_loadu_ps(mask, cols[c].add(full));
                    for r in 0..R {
                        acc[r][c] = _mm512_fmadd_ps(x[r], v, acc[r][c]);
                    }
                }
            }
            for r in 0..R {
                for c in 0..C {
                    sums[r][c] = _mm512_reduce_add_ps(acc[r][c]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The products against an f64 sum of the same values, at sizes that take every path (odd
    /// row counts, 1-16 columns, a `k` with a masked tail), in this machine's blocks and in blocks
    /// of 1000 (several, the last one short), written and accumulated into a `y` with spare
    /// columns, which stay as they were.
    #[test]
    fn cache_sizes_parse() {
        assert_eq!(parse_cache_size("2048K\n"), Some(2 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("K"), None);
        assert_eq!(parse_cache_size(""), None);
        assert!(l2_bytes() > 0);
        // Whole rows only for columns that fit.
        assert_eq!(block_len(1, 1000), 1000);
        assert_eq!(block_len(16, 1 << 24), BLOCK);
    }

    #[test]
    fn dot_rows_match_f64_sums() {
        if !supported() {
            eprintln!("skipped: no AVX-512F");
            return;
        }
        let val = |i: usize| ((i * 7919 + 13) % 1009) as f32 / 1009.0 - 0.5;
        for (m, n, k) in
            [(1, 1, 1), (3, 8, 17), (5, 3, 4096), (4, 9, 5000), (7, 16, 9000), (2, 8, 0)]
        {
            let (lda, ldb, ldy) = (k + 3, k + 1, n + 2);
            let a: Vec<f32> = (0..m * lda).map(val).collect();
            let b: Vec<f32> = (0..n * ldb).map(|i| val(i + 5)).collect();
            for (accumulate, block) in
                [(false, block_len(n, k)), (true, block_len(n, k)), (false, 1000)]
            {
                let init: Vec<f32> = (0..m * ldy).map(|i| val(i + 11)).collect();
                let mut y = init.clone();
                if !accumulate {
                    for i in 0..m {
                        y[i * ldy..i * ldy + n].fill(f32::NAN);
                    }
                }
                // SAFETY: takes(n) holds; every row lies in its vector.
                unsafe {
                    let (pa, pb, py) = (a.as_ptr(), b.as_ptr(), y.as_mut_ptr());
                    let (a, b, y) = ((pa, lda), (pb, ldb), (py, ldy));
                    if block == block_len(n, k) {
                        dot_rows_f32((m, n, k), a, b, y, accumulate);
                    } else {
                        dot_rows_in_blocks((m, n, k), a, b, y, accumulate, block);
                    }
                }
                for i in 0..m {
                    for j in 0..ldy {
                        let (got, start) = (y[i * ldy + j], init[i * ldy + j]);
                        if j >= n {
                            assert_eq!(got.to_bits(), start.to_bits(), "spare column {j} written");
                            continue;
                        }
                        let terms = (0..k).map(|t| a[i * lda + t] as f64 * b[j * ldb + t] as f64);
                        let base = if accumulate { start as f64 } else { 0.0 };
                        let exact: f64 = base + terms.clone().sum::<f64>();
                        let scale: f64 = base.abs() + terms.map(f64::abs).sum::<f64>();
                        // Each sum is a chain of at most `depth` roundings (a lane's FMAs, the
                        // lane reduction, the blocks, the start value): |error| <= depth * eps/2
                        // * sum |terms|, to first order.
                        let depth = k.div_ceil(16) + 4 + k.div_ceil(block) + 2;
                        let bound = 1.01 * depth as f64 * f32::EPSILON as f64 / 2.0 * scale;
                        let err = (got as f64 - exact).abs();
                        assert!(
                            err <= bound,
                            "m {m} n {n} k {k} accumulate {accumulate}: y[{i}][{j}] = {got} \
                             against {exact}"
                        );
                    }
                }
            }
        }
    }
}
