//! `x @ w^T` for few rows (decode batches) on CPU.
//!
//! gemm packs the whole weight matrix for every call once `x` has more than one row, so a
//! batch-8 decode step reads and rewrites all weights and runs slower than batch 1. Decode is
//! bandwidth-bound: the right kernel streams each weight row once and dots it with every row of
//! `x` (which stays in L1). f16/bf16 weight rows are widened to f32 in a small buffer, so half
//! precision decode reads half the bytes and computes in f32. Inference only (no backward).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType, bail};
use half::{bf16, f16};
use rayon::prelude::*;

/// Rows of `x` up to which the skinny kernel is used (beyond, gemm's blocking wins).
pub const MAX_ROWS: usize = 16;
/// Weight rows per parallel task.
const BLOCK: usize = 64;
/// Lanes of independent accumulators in the portable kernel.
const LANES: usize = 32;

struct SkinnyMatmul;

/// `x [M, K] @ w [N, K]^T -> [M, N]` with the skinny kernel. Both contiguous, same dtype.
pub fn matmul_wt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2_no_bwd(w, &SkinnyMatmul)
}

/// Whether [`matmul_wt`] handles this case.
pub fn applies(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu()
        && x.rank() == 2
        && (1..=MAX_ROWS).contains(&x.dim(0).unwrap_or(0))
        && x.dtype() == w.dtype()
        && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && w.is_contiguous()
}

trait Widen: WithDType {
    fn widen(src: &[Self], dst: &mut [f32]);
    fn narrow(v: f32) -> Self;
}

impl Widen for f32 {
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn narrow(v: f32) -> f32 {
        v
    }
}

impl Widen for f16 {
    fn widen(src: &[f16], dst: &mut [f32]) {
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
    }
    fn narrow(v: f32) -> f16 {
        f16::from_f32(v)
    }
}

impl Widen for bf16 {
    fn widen(src: &[bf16], dst: &mut [f32]) {
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
    }
    fn narrow(v: f32) -> bf16 {
        bf16::from_f32(v)
    }
}

/// Portable dot product with independent lanes, so LLVM vectorises it for whatever target
/// features the calling function enables.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let full = a.len() / LANES * LANES;
    for (ca, cb) in a[..full]
        .chunks_exact(LANES)
        .zip(b[..full].chunks_exact(LANES))
    {
        for j in 0..LANES {
            acc[j] += ca[j] * cb[j];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in a[full..].iter().zip(&b[full..]) {
        sum += x * y;
    }
    sum
}

fn as_f32<T: WithDType>(s: &[T]) -> Option<&[f32]> {
    (T::DTYPE == DType::F32).then(|| {
        // SAFETY: T is f32 (checked through its DType tag), so the cast is the identity.
        unsafe { std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len()) }
    })
}

/// A weight row as f32: borrowed when it already is, else widened into `buf`.
#[inline(always)]
fn widened<'a, T: Widen>(w_row: &'a [T], buf: &'a mut [f32]) -> &'a [f32] {
    match as_f32(w_row) {
        Some(f) => f,
        None => {
            T::widen(w_row, buf);
            buf
        }
    }
}

/// One block of weight rows against every row of `x`; writes `out[n * m + i]`.
#[inline(always)]
fn block_portable<T: Widen>(x: &[f32], m: usize, k: usize, w_block: &[T], out: &mut [f32]) {
    let mut buf = vec![0f32; k];
    for (n, w_row) in w_block.chunks_exact(k).enumerate() {
        let w_row = widened(w_row, &mut buf);
        for i in 0..m {
            out[n * m + i] = dot(&x[i * k..(i + 1) * k], w_row);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use candle_core::DType;

    use super::Widen;

    /// Sixteen weights as f32 lanes, widened in registers for f16 (vcvtph2ps) and bf16 (shift).
    ///
    /// # Safety
    /// avx512f and f16c must be available; `p` must hold 16 elements.
    #[inline(always)]
    unsafe fn load16<T: Widen>(p: *const T) -> __m512 {
        // SAFETY: forwarded contract; the match is resolved at compile time.
        unsafe {
            match T::DTYPE {
                DType::F32 => _mm512_loadu_ps(p as *const f32),
                DType::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
                _ => _mm512_castsi512_ps(_mm512_slli_epi32(
                    _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)),
                    16,
                )),
            }
        }
    }

    /// Dot products of `RW` weight rows with `RX` rows of x in `RW * RX` accumulator registers:
    /// each k-step loads `RW + RX` vectors for `RW * RX` FMAs.
    ///
    /// # Safety
    /// avx512f and f16c must be available; every pointer must hold `k` elements.
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn tile<T: Widen, const RW: usize, const RX: usize>(
        ws: [*const T; RW],
        xs: [*const f32; RX],
        k: usize,
    ) -> [[f32; RX]; RW] {
        let mut acc = [[_mm512_setzero_ps(); RX]; RW];
        let full = k / 16 * 16;
        let mut c = 0;
        while c < full {
            // SAFETY: c + 16 <= k for every pointer (caller's contract).
            unsafe {
                let xv: [__m512; RX] = std::array::from_fn(|j| _mm512_loadu_ps(xs[j].add(c)));
                for r in 0..RW {
                    let wv = load16(ws[r].add(c));
                    for j in 0..RX {
                        acc[r][j] = _mm512_fmadd_ps(xv[j], wv, acc[r][j]);
                    }
                }
            }
            c += 16;
        }
        let mut out = [[0f32; RX]; RW];
        for r in 0..RW {
            for j in 0..RX {
                let mut sum = _mm512_reduce_add_ps(acc[r][j]);
                for i in full..k {
                    // SAFETY: i < k.
                    unsafe { sum += *xs[j].add(i) * (*ws[r].add(i)).to_f64() as f32 };
                }
                out[r][j] = sum;
            }
        }
        out
    }

    /// Runs `tile` over weight rows `n..n+RW` and x rows in groups of 4, then singly.
    ///
    /// # Safety
    /// avx512f and f16c must be available; `ws` rows hold `k` elements; `x` is `m * k`;
    /// `out` is `[N, m]`.
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn rows<T: Widen, const RW: usize>(
        x: &[f32],
        m: usize,
        k: usize,
        ws: [*const T; RW],
        out: &mut [f32],
        n: usize,
    ) {
        let xr = |i: usize| x[i * k..].as_ptr();
        let mut i = 0;
        while i + 4 <= m {
            // SAFETY: forwarded contract.
            let t = unsafe { tile::<T, RW, 4>(ws, std::array::from_fn(|j| xr(i + j)), k) };
            for (r, row) in t.iter().enumerate() {
                out[(n + r) * m + i..(n + r) * m + i + 4].copy_from_slice(row);
            }
            i += 4;
        }
        while i < m {
            // SAFETY: forwarded contract.
            let t = unsafe { tile::<T, RW, 1>(ws, [xr(i)], k) };
            for (r, row) in t.iter().enumerate() {
                out[(n + r) * m + i] = row[0];
            }
            i += 1;
        }
    }

    /// # Safety
    /// avx512f and f16c must be available.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn block<T: Widen>(x: &[f32], m: usize, k: usize, w_block: &[T], out: &mut [f32]) {
        const RW: usize = 4;
        let rows_total = w_block.len() / k;
        let row = |n: usize| w_block[n * k..].as_ptr();
        let mut n = 0;
        while n + RW <= rows_total {
            // SAFETY: each pointer addresses the k elements of one weight row.
            unsafe { rows::<T, RW>(x, m, k, std::array::from_fn(|r| row(n + r)), out, n) };
            n += RW;
        }
        while n < rows_total {
            // SAFETY: as above.
            unsafe { rows::<T, 1>(x, m, k, [row(n)], out, n) };
            n += 1;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_avx2<T: Widen>(x: &[f32], m: usize, k: usize, w: &[T], out: &mut [f32]) {
    block_portable(x, m, k, w, out)
}

fn block<T: Widen>(x: &[f32], m: usize, k: usize, w: &[T], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let f16c = std::arch::is_x86_feature_detected!("f16c");
        if f16c && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the features were detected at run time.
            return unsafe { avx512::block(x, m, k, w, out) };
        }
        if f16c
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were detected at run time.
            return unsafe { block_avx2(x, m, k, w, out) };
        }
    }
    block_portable(x, m, k, w, out)
}

fn run<T: Widen>(x: &[T], (m, k): (usize, usize), w: &[T], n: usize) -> Vec<T> {
    let mut xf = vec![0f32; m * k];
    T::widen(x, &mut xf);
    // Output transposed ([N, M]) so each task writes one contiguous chunk.
    let mut out_t = vec![0f32; n * m];
    out_t
        .par_chunks_mut(BLOCK * m)
        .zip(w.par_chunks(BLOCK * k))
        .for_each(|(out, w_block)| block(&xf, m, k, w_block, out));
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        out.extend((0..n).map(|j| T::narrow(out_t[j * m + i])));
    }
    out
}

/// The slice of a CPU storage a contiguous layout covers (custom ops read inputs through it).
pub(crate) fn contiguous<'a, T: WithDType>(
    data: &'a [T],
    layout: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what} must be contiguous"),
    }
}

impl CustomOp2 for SkinnyMatmul {
    fn name(&self) -> &'static str {
        "skinny-matmul-wt"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            bail!("skinny matmul: inner dimensions differ ({k} vs {k2})");
        }
        let storage = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => CpuStorage::F32(run(
                contiguous(x, l1, "skinny matmul: x")?,
                (m, k),
                contiguous(w, l2, "skinny matmul: w")?,
                n,
            )),
            (CpuStorage::F16(x), CpuStorage::F16(w)) => CpuStorage::F16(run(
                contiguous(x, l1, "skinny matmul: x")?,
                (m, k),
                contiguous(w, l2, "skinny matmul: w")?,
                n,
            )),
            (CpuStorage::BF16(x), CpuStorage::BF16(w)) => CpuStorage::BF16(run(
                contiguous(x, l1, "skinny matmul: x")?,
                (m, k),
                contiguous(w, l2, "skinny matmul: w")?,
                n,
            )),
            _ => bail!(
                "skinny matmul: unsupported dtypes {:?} x {:?}",
                s1.dtype(),
                s2.dtype()
            ),
        };
        Ok((storage, Shape::from((m, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_matmul_for_every_dtype_and_odd_sizes() {
        let dev = Device::Cpu;
        for (m, k, n) in [
            (1, 64, 40),
            (2, 64, 41),
            (8, 1000, 77),
            (16, 33, 5),
            (3, 1, 1),
            (5, 48, 130),
        ] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let want = x.matmul(&w.t().unwrap()).unwrap();
            for (dtype, tol) in [(DType::F32, 1e-4), (DType::F16, 0.1), (DType::BF16, 0.5)] {
                let (xd, wd) = (x.to_dtype(dtype).unwrap(), w.to_dtype(dtype).unwrap());
                assert!(applies(&xd, &wd));
                let got = matmul_wt(&xd, &wd).unwrap().to_dtype(DType::F32).unwrap();
                let want = if dtype == DType::F32 {
                    want.clone()
                } else {
                    xd.to_dtype(DType::F32)
                        .unwrap()
                        .matmul(&wd.to_dtype(DType::F32).unwrap().t().unwrap())
                        .unwrap()
                };
                let diff: f32 = (got - want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                let scale = (k as f32).sqrt();
                assert!(diff <= tol * scale, "{dtype:?} {m}x{k}x{n}: {diff}");
            }
        }
    }
}
