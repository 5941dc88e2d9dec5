//! `out = x w + b` with `x` and `w` rounded to bf16 and the products summed in f32, on x86-64
//! CPUs with AMX-BF16 (`tdpbf16ps`, 16x16x32 per instruction) or AVX512-BF16 (`vdpbf16ps`).
//!
//! Knows nothing of EditMGT or of Burn: slices in, a `Vec<f32>` out.
//!
//! Layout of one product, `x` `[m, k]` (f32, rows contiguous) times `w` `[k, n]` (bf16 or f32,
//! any non-negative strides):
//! - `x` is converted to bf16 (round to nearest even) into `[m_pad, k_pad]` rows, `m_pad` a
//!   multiple of 32 and `k_pad` of 32, zero-padded: an AMX tile is 16 of those rows by 32 values.
//! - `w` is repacked into blocks of 16 columns: `[n_blocks][k_pad / 2][16][2]`, the two values of
//!   a pair of `k` side by side, which is the operand layout of both instructions. A tile of it
//!   (16 pairs by 16 columns) is 1 KiB of contiguous memory.
//! - The output is computed in panels of 32 rows by 32 columns (four AMX accumulator tiles, or
//!   four times 8 rows of two AVX-512 registers on the AVX512-BF16 path). Panels are grouped so
//!   that the packed `w` of a group (about 1 MiB) stays in the L2 cache while row panels of `x`
//!   stream past it; rayon tasks take a group's row panels.
//!
//! Every output value is one thread's sum in a fixed order, so results do not depend on the
//! thread count.

#![allow(unsafe_code)]

use std::fmt;

use rayon::prelude::*;

/// Rows of `x`, and columns of `w`, per output panel (two AMX tiles each way).
const PANEL: usize = 32;
/// Columns of `w` per packed block (one AMX tile, one AVX-512 register of pairs).
const BLOCK: usize = 16;
/// Values of `k` per AMX tile row (64 bytes of bf16); `k` is padded to a multiple of it.
const K_CHUNK: usize = 32;
/// Bytes of packed `w` a task group aims to keep in the L2 cache.
const GROUP_BYTES: usize = 1 << 20;

pub use super::Isa;

impl Isa {
    /// Every instruction set of the two that this CPU and operating system let us use, fastest
    /// first (AMX needs the kernel's permission to use tile data, asked for once per process).
    pub fn supported() -> &'static [Isa] {
        static SUPPORTED: std::sync::OnceLock<Vec<Isa>> = std::sync::OnceLock::new();
        SUPPORTED.get_or_init(|| {
            let mut isas = Vec::new();
            if amx_usable() {
                isas.push(Isa::Amx);
            }
            if avx512_bf16_usable() {
                isas.push(Isa::Avx512Bf16);
            }
            isas
        })
    }

    /// The fastest of [`Isa::supported`], if any.
    pub fn best() -> Option<Isa> {
        Isa::supported().first().copied()
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512_bf16_usable() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_bf16_usable() -> bool {
    false
}

/// CPUID leaf 7 says AMX-TILE and AMX-BF16, the OS saves tile state (XCR0 bits 17 and 18), and
/// Linux grants this process the tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_usable() -> bool {
    use std::arch::x86_64::{__cpuid_count, _xgetbv};
    if !std::is_x86_feature_detected!("xsave") || !std::is_x86_feature_detected!("avx512f") {
        return false;
    }
    // CPUID leaf 7 exists on every x86-64 CPU with AVX-512F.
    let leaf7 = __cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
    if !amx_bf16 || !amx_tile {
        return false;
    }
    // SAFETY: XGETBV is available where XSAVE is (checked above).
    let xcr0 = unsafe { _xgetbv(0) };
    if xcr0 & (0b11 << 17) != 0b11 << 17 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    const SYS_ARCH_PRCTL: i64 = 158;
    let result: i64;
    // SAFETY: the arch_prctl system call with these arguments only changes this process's
    // permission to use AMX tile data; it reads no memory of ours.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => result,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    result == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn amx_usable() -> bool {
    false
}

/// The right-hand operand `[k, n]`: element `(i, j)` at `offset + i * strides[0] + j * strides[1]`.
#[derive(Debug, Clone, Copy)]
pub struct Weight<'a, T> {
    /// The storage the elements are read from.
    pub data: &'a [T],
    /// Index of element `(0, 0)`.
    pub offset: usize,
    /// `[k, n]`.
    pub shape: [usize; 2],
    /// Element strides of the two axes.
    pub strides: [usize; 2],
}

impl<T> Weight<'_, T> {
    fn fits(&self) -> bool {
        let [k, n] = self.shape;
        k == 0
            || n == 0
            || self.offset + (k - 1) * self.strides[0] + (n - 1) * self.strides[1] < self.data.len()
    }
}

/// A value the packing reads as bf16 bits.
pub trait Bf16Bits: Copy + Send + Sync {
    /// The value rounded to bf16 (nearest even), as its 16 bits.
    fn bf16_bits(self) -> u16;
}

impl Bf16Bits for f32 {
    #[inline(always)]
    fn bf16_bits(self) -> u16 {
        to_bf16(self)
    }
}

impl Bf16Bits for half::bf16 {
    #[inline(always)]
    fn bf16_bits(self) -> u16 {
        self.to_bits()
    }
}

/// Wrong sizes given to [`linear`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError(pub String);

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ShapeError {}

/// `f32` to bf16 bits, rounding to nearest even (NaN stays NaN).
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        ((bits >> 16) as u16) | 0x40
    } else {
        rounded
    }
}

/// bf16 bits to `f32` (exact).
#[inline(always)]
pub fn from_bf16(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// `x w + bias` for `x` `[m, k]` (rows contiguous), `w` `[k, n]` and `bias` `[n]`, with `x` and
/// `w` rounded to bf16 and every sum in f32, on `isa` (which must be one of
/// [`Isa::supported`]). Returns `[m, n]`, rows contiguous.
pub fn linear<T: Bf16Bits>(
    isa: Isa,
    x: &[f32],
    m: usize,
    weight: Weight<'_, T>,
    bias: Option<&[f32]>,
) -> Result<Vec<f32>, ShapeError> {
    let [k, n] = weight.shape;
    if x.len() != m * k {
        return Err(ShapeError(format!(
            "x holds {} values, not m x k = {m} x {k}",
            x.len()
        )));
    }
    if !weight.fits() {
        return Err(ShapeError(format!(
            "a weight of shape {:?}, offset {} and strides {:?} reads past its {} values",
            weight.shape,
            weight.offset,
            weight.strides,
            weight.data.len()
        )));
    }
    if let Some(bias) = bias
        && bias.len() != n
    {
        return Err(ShapeError(format!(
            "the bias holds {} values, not n = {n}",
            bias.len()
        )));
    }
    if !Isa::supported().contains(&isa) {
        return Err(ShapeError(format!("this CPU cannot run {isa}")));
    }
    let mut out = vec![0.0f32; m * n];
    if m == 0 || n == 0 {
        return Ok(out);
    }
    let k_pad = k.div_ceil(K_CHUNK).max(1) * K_CHUNK;
    let a = pack_rows(x, m, k, k_pad);
    let b = pack_columns(&weight, k_pad);
    let m_panels = m.div_ceil(PANEL);
    let n_panels = n.div_ceil(PANEL);
    let panel_bytes = k_pad * PANEL * 2;
    let group = (GROUP_BYTES / panel_bytes).clamp(1, n_panels);
    let groups = n_panels.div_ceil(group);
    let sink = Sink(out.as_mut_ptr());
    let shape = Shape {
        m,
        n,
        k_pad,
        stride: n,
    };
    (0..groups * m_panels).into_par_iter().for_each(|task| {
        let (g, mi) = (task / m_panels, task % m_panels);
        let panels = g * group..((g + 1) * group).min(n_panels);
        // SAFETY: the ISA was checked above; task `(g, mi)` writes only rows of panel `mi` and
        // columns of group `g`, which no other task writes.
        unsafe { run_task(isa, &a, &b, shape, mi, panels, bias, &sink) }
    });
    Ok(out)
}

/// The sizes a task needs.
#[derive(Clone, Copy)]
struct Shape {
    m: usize,
    n: usize,
    k_pad: usize,
    /// Values between the starts of two output rows.
    stride: usize,
}

/// Operands packed for [`product_into`]: `x` `[m, k]` as bf16 rows, or `w` `[k, n]` as blocks
/// of column pairs, with `k` padded.
#[derive(Debug, Clone)]
pub struct Packed {
    values: Vec<u16>,
    /// Rows of `x` or columns of `w`.
    len: usize,
    k_pad: usize,
}

impl Packed {
    /// Rows `x[i] = row(i)`, `i < m`, of `k` values each (`row` fills a slice of `k`), rounded
    /// to bf16. Runs on the calling thread.
    pub fn rows(m: usize, k: usize, mut row: impl FnMut(usize, &mut [f32])) -> Packed {
        let mut buffer = vec![0.0f32; k];
        Self::converted(m, k, |i, dst| {
            row(i, &mut buffer);
            convert_row(&buffer, dst);
        })
    }

    /// The `m` rows of `k` values each that `values` holds in row-major order, rounded to bf16
    /// (as [`Packed::rows`], without copying each row first). Runs on the calling thread.
    ///
    /// # Panics
    /// When `values` holds fewer than `m * k` values.
    pub fn row_major(values: &[f32], m: usize, k: usize) -> Packed {
        assert!(
            values.len() >= m * k,
            "{} values cannot hold {m} rows of {k}",
            values.len()
        );
        Self::converted(m, k, |i, dst| convert_row(&values[i * k..(i + 1) * k], dst))
    }

    /// `m` rows of `k` bf16 values, each written by `convert(i, row)`.
    fn converted(m: usize, k: usize, mut convert: impl FnMut(usize, &mut [u16])) -> Packed {
        let k_pad = k.div_ceil(K_CHUNK).max(1) * K_CHUNK;
        let m_pad = m.div_ceil(PANEL) * PANEL;
        let mut values = vec![0u16; m_pad * k_pad];
        for (i, dst) in values.chunks_mut(k_pad).take(m).enumerate() {
            convert(i, &mut dst[..k]);
        }
        Packed {
            values,
            len: m,
            k_pad,
        }
    }

    /// The columns of `w` (see [`linear`] for the layout). Spread over the rayon pool.
    pub fn columns<T: Bf16Bits>(w: &Weight<'_, T>) -> Result<Packed, ShapeError> {
        if !w.fits() {
            return Err(ShapeError(format!(
                "a weight of shape {:?}, offset {} and strides {:?} reads past its {} values",
                w.shape,
                w.offset,
                w.strides,
                w.data.len()
            )));
        }
        let k_pad = w.shape[0].div_ceil(K_CHUNK).max(1) * K_CHUNK;
        Ok(Packed {
            values: pack_columns(w, k_pad),
            len: w.shape[1],
            k_pad,
        })
    }
}

/// `out[i * stride + j] = (x w)[i][j]` for packed `x` (`[m, k]`, [`Packed::rows`]) and `w`
/// (`[k, n]`, [`Packed::columns`]), on the calling thread (for callers that are rayon tasks
/// themselves, such as the attention's).
pub fn product_into(
    isa: Isa,
    x: &Packed,
    w: &Packed,
    out: &mut [f32],
    stride: usize,
) -> Result<(), ShapeError> {
    let (m, n) = (x.len, w.len);
    if x.k_pad != w.k_pad {
        return Err(ShapeError(format!(
            "x holds {} values per row and w {}",
            x.k_pad, w.k_pad
        )));
    }
    if m > 0 && n > 0 && (stride < n || out.len() < (m - 1) * stride + n) {
        return Err(ShapeError(format!(
            "an output of {} values with row stride {stride} cannot hold {m} x {n}",
            out.len()
        )));
    }
    if !Isa::supported().contains(&isa) {
        return Err(ShapeError(format!("this CPU cannot run {isa}")));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let shape = Shape {
        m,
        n,
        k_pad: x.k_pad,
        stride,
    };
    let sink = Sink(out.as_mut_ptr());
    let panels = 0..n.div_ceil(PANEL);
    for mi in 0..m.div_ceil(PANEL) {
        // SAFETY: the ISA was checked; the output holds every row and column written (checked
        // above), and this thread is the only writer of `out`.
        unsafe {
            run_task(
                isa,
                &x.values,
                &w.values,
                shape,
                mi,
                panels.clone(),
                None,
                &sink,
            )
        }
    }
    Ok(())
}

/// The output, written by tasks at disjoint places.
struct Sink(*mut f32);
// SAFETY: tasks write disjoint elements (see `linear`).
unsafe impl Sync for Sink {}

/// `x` `[m, k]` to bf16 rows `[m_pad, k_pad]`, zero-padded.
fn pack_rows(x: &[f32], m: usize, k: usize, k_pad: usize) -> Vec<u16> {
    let m_pad = m.div_ceil(PANEL) * PANEL;
    let mut a = vec![0u16; m_pad * k_pad];
    a.par_chunks_mut(k_pad * PANEL)
        .enumerate()
        .for_each(|(panel, rows)| {
            for (r, row) in rows.chunks_mut(k_pad).enumerate() {
                let i = panel * PANEL + r;
                if i < m {
                    convert_row(&x[i * k..(i + 1) * k], &mut row[..k]);
                }
            }
        });
    a
}

fn convert_row(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected.
        unsafe { convert_row_avx512(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = to_bf16(s);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn convert_row_avx512(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = to_bf16(s);
    }
}

/// `w` `[k, n]` to blocks of 16 columns, `[n_blocks][k_pad / 2][16][2]`, with `n_blocks` even
/// and everything past `k` and `n` zero.
fn pack_columns<T: Bf16Bits>(w: &Weight<'_, T>, k_pad: usize) -> Vec<u16> {
    let [k, n] = w.shape;
    let blocks = n.div_ceil(PANEL) * (PANEL / BLOCK);
    let block_len = k_pad * BLOCK;
    let mut b = vec![0u16; blocks * block_len];
    b.par_chunks_mut(block_len)
        .enumerate()
        .for_each(|(block, packed)| {
            let first = block * BLOCK;
            let cols = n.saturating_sub(first).min(BLOCK);
            for i in 0..k {
                let row = w.offset + i * w.strides[0] + first * w.strides[1];
                let (pair, half) = (i / 2, i % 2);
                let out = &mut packed[pair * 2 * BLOCK..(pair + 1) * 2 * BLOCK];
                for c in 0..cols {
                    out[2 * c + half] = w.data[row + c * w.strides[1]].bf16_bits();
                }
            }
        });
    b
}

/// Adds the bias to a `32 x 32` panel of sums and writes its valid part.
///
/// # Safety
/// `sink` must hold `m` rows of `stride` values (the last one `n`) and no other thread may write rows `row0..row0 + 32` of
/// columns `col0..col0 + 32`.
unsafe fn write_panel(
    sums: &[f32; PANEL * PANEL],
    shape: Shape,
    row0: usize,
    col0: usize,
    bias: Option<&[f32]>,
    sink: &Sink,
) {
    let rows = shape.m.saturating_sub(row0).min(PANEL);
    let cols = shape.n.saturating_sub(col0).min(PANEL);
    for r in 0..rows {
        // SAFETY: in bounds (`rows`, `cols` clipped to `m`, `n`); exclusive by the contract.
        let out = unsafe {
            std::slice::from_raw_parts_mut(sink.0.add((row0 + r) * shape.stride + col0), cols)
        };
        let sums = &sums[r * PANEL..r * PANEL + cols];
        match bias {
            Some(bias) => {
                for ((o, s), b) in out.iter_mut().zip(sums).zip(&bias[col0..col0 + cols]) {
                    *o = s + b;
                }
            }
            None => out.copy_from_slice(sums),
        }
    }
}

/// The AMX tile configuration: eight tiles of 16 rows of 64 bytes (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// One task on AMX: row panel `mi` against the column panels `panels`.
///
/// Tiles: 0-3 the sums (rows 0-15 / 16-31 by columns 0-15 / 16-31), 4-5 the two row halves of
/// `x`, 6-7 the two column blocks of `w`.
///
/// # Safety
/// AMX must be usable (`Isa::supported`), `a` and `b` packed for `shape`, and the task's output
/// cells written by no other thread.
#[cfg(target_arch = "x86_64")]
unsafe fn amx_task(
    a: &[u16],
    b: &[u16],
    shape: Shape,
    mi: usize,
    panels: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    sink: &Sink,
) {
    use std::arch::asm;
    let mut config = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [0; 16],
        rows: [0; 16],
    };
    for t in 0..8 {
        config.bytes_per_row[t] = 64;
        config.rows[t] = 16;
    }
    let k_pad = shape.k_pad;
    let a_stride = k_pad * 2;
    let b_stride = 64usize;
    let block_len = k_pad * BLOCK;
    let mut sums = [0.0f32; PANEL * PANEL];
    let sums_stride = PANEL * 4;
    // SAFETY (all asm below): AMX is usable (caller); every tile load reads 16 rows of 64 bytes
    // inside the packed buffers (rows `mi * 32 .. + 32` of `a`, blocks `2 j, 2 j + 1` of `b`, all
    // within their padded sizes); every store writes 16 rows of 64 bytes inside `sums`.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &config as *const TileConfig, options(nostack));
        for panel in panels {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            let a0 = a.as_ptr().add(mi * PANEL * k_pad);
            let a1 = a0.add(16 * k_pad);
            let b0 = b.as_ptr().add(2 * panel * block_len);
            let b1 = b0.add(block_len);
            for chunk in 0..k_pad / K_CHUNK {
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0.add(chunk * K_CHUNK),
                    a1 = in(reg) a1.add(chunk * K_CHUNK),
                    b0 = in(reg) b0.add(chunk * K_CHUNK * BLOCK),
                    b1 = in(reg) b1.add(chunk * K_CHUNK * BLOCK),
                    sa = in(reg) a_stride,
                    sb = in(reg) b_stride,
                    options(nostack, readonly)
                );
            }
            let s = sums.as_mut_ptr();
            asm!(
                "tilestored [{s00} + {ss}*1], tmm0",
                "tilestored [{s01} + {ss}*1], tmm1",
                "tilestored [{s10} + {ss}*1], tmm2",
                "tilestored [{s11} + {ss}*1], tmm3",
                s00 = in(reg) s,
                s01 = in(reg) s.add(16),
                s10 = in(reg) s.add(16 * PANEL),
                s11 = in(reg) s.add(16 * PANEL + 16),
                ss = in(reg) sums_stride,
                options(nostack)
            );
            write_panel(&sums, shape, mi * PANEL, panel * PANEL, bias, sink);
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// One task on AVX512-BF16: row panel `mi` against the column panels `panels`, 8 rows by 32
/// columns (16 accumulators) at a time.
///
/// # Safety
/// AVX512-BF16 must be usable, `a` and `b` packed for `shape`, and the task's output cells
/// written by no other thread.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn avx512_task(
    a: &[u16],
    b: &[u16],
    shape: Shape,
    mi: usize,
    panels: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    sink: &Sink,
) {
    use std::arch::x86_64::*;
    const ROWS: usize = 8;
    let k_pad = shape.k_pad;
    let block_len = k_pad * BLOCK;
    let mut sums = [0.0f32; PANEL * PANEL];
    for panel in panels {
        let b0 = &b[2 * panel * block_len..(2 * panel + 1) * block_len];
        let b1 = &b[(2 * panel + 1) * block_len..(2 * panel + 2) * block_len];
        for group in 0..PANEL / ROWS {
            let row0 = mi * PANEL + group * ROWS;
            let rows: [&[u16]; ROWS] =
                std::array::from_fn(|r| &a[(row0 + r) * k_pad..(row0 + r + 1) * k_pad]);
            let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
            for pair in 0..k_pad / 2 {
                // SAFETY: 32 values from `pair * 32` lie in the block (`k_pad / 2` pairs of 32).
                let (w0, w1): (__m512bh, __m512bh) = unsafe {
                    (
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                            b0.as_ptr().add(pair * 32) as *const _,
                        )),
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                            b1.as_ptr().add(pair * 32) as *const _,
                        )),
                    )
                };
                for r in 0..ROWS {
                    let bits =
                        rows[r][2 * pair] as u32 as i32 | ((rows[r][2 * pair + 1] as i32) << 16);
                    // SAFETY: a bit-for-bit reinterpretation of 32 bf16 pairs.
                    let x: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(bits)) };
                    acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, w0);
                    acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, w1);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let at = (group * ROWS + r) * PANEL;
                // SAFETY: 16 + 16 values from `at` lie in the 32 x 32 panel.
                unsafe {
                    _mm512_storeu_ps(sums.as_mut_ptr().add(at), acc[0]);
                    _mm512_storeu_ps(sums.as_mut_ptr().add(at + 16), acc[1]);
                }
            }
        }
        // SAFETY: the caller's contract.
        unsafe { write_panel(&sums, shape, mi * PANEL, panel * PANEL, bias, sink) };
    }
}

/// Row panel `mi` against the column panels `panels` on `isa`'s kernel.
///
/// # Safety
/// As [`amx_task`] and [`avx512_task`]: `isa` usable ([`Isa::supported`], empty outside
/// x86-64), `a` and `b` packed for `shape`, and the task's output cells written by no other
/// thread.
#[allow(clippy::too_many_arguments)]
unsafe fn run_task(
    isa: Isa,
    a: &[u16],
    b: &[u16],
    shape: Shape,
    mi: usize,
    panels: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    sink: &Sink,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's guarantees are those of both kernels.
    unsafe {
        match isa {
            Isa::Amx => amx_task(a, b, shape, mi, panels, bias, sink),
            Isa::Avx512Bf16 => avx512_task(a, b, shape, mi, panels, bias, sink),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, a, b, shape, mi, panels, bias, sink);
        unreachable!("no bf16 kernels outside x86-64")
    }
}

/// The same product computed plainly: `x` and `w` rounded to bf16, sums in `f64`. For tests.
pub fn reference<T: Bf16Bits>(
    x: &[f32],
    m: usize,
    weight: Weight<'_, T>,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let [k, n] = weight.shape;
    let mut out = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut sum = bias.map_or(0.0, |b| b[j] as f64);
            for l in 0..k {
                let w = weight.data[weight.offset + l * weight.strides[0] + j * weight.strides[1]];
                sum += from_bf16(to_bf16(x[i * k + l])) as f64 * from_bf16(w.bf16_bits()) as f64;
            }
            out[i * n + j] = sum as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_tests::values;

    /// The largest error relative to the sum of the magnitudes of the terms of its element.
    fn check(isa: Isa, m: usize, k: usize, n: usize, transposed: bool, with_bias: bool) {
        let x = values(m * k, 1 + m as u32);
        let w = values(k * n, 2 + n as u32);
        let bias = with_bias.then(|| values(n, 3));
        let weight = if transposed {
            Weight {
                data: &w[..],
                offset: 0,
                shape: [k, n],
                strides: [1, k],
            }
        } else {
            Weight {
                data: &w[..],
                offset: 0,
                shape: [k, n],
                strides: [n, 1],
            }
        };
        let got = linear(isa, &x, m, weight, bias.as_deref()).unwrap();
        let want = reference(&x, m, weight, bias.as_deref());
        for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
            let bound = 1e-5 * (k as f32 + 1.0);
            assert!(
                (g - w).abs() <= bound,
                "{isa} m {m} k {k} n {n}: element {idx}: {g} against {w}"
            );
        }
    }

    #[test]
    fn every_supported_isa_matches_the_plain_product() {
        for &isa in Isa::supported() {
            for &(m, k, n) in &[
                (1, 1, 1),
                (3, 5, 7),
                (32, 32, 32),
                (33, 64, 48),
                (70, 100, 130),
                (64, 1024, 96),
            ] {
                check(isa, m, k, n, false, true);
                check(isa, m, k, n, true, false);
            }
        }
    }

    #[test]
    fn bf16_weights_are_read_as_they_are() {
        for &isa in Isa::supported() {
            let (m, k, n) = (40, 70, 50);
            let x = values(m * k, 9);
            let w: Vec<half::bf16> = values(k * n, 10)
                .into_iter()
                .map(half::bf16::from_f32)
                .collect();
            let weight = Weight {
                data: &w[..],
                offset: 0,
                shape: [k, n],
                strides: [n, 1],
            };
            let got = linear(isa, &x, m, weight, None).unwrap();
            let want = reference(&x, m, weight, None);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-4, "{isa}: {g} against {w}");
            }
        }
    }

    #[test]
    fn rounding_to_bf16_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: ties go up, to even.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        for x in values(1000, 4) {
            let y = from_bf16(to_bf16(x));
            assert!((x - y).abs() <= x.abs() / 256.0, "{x} rounded to {y}");
        }
    }

    #[test]
    fn row_major_packs_what_rows_packs() {
        let (m, k) = (37, 45);
        let x = values(m * k, 11);
        let direct = Packed::row_major(&x, m, k);
        let copied = Packed::rows(m, k, |i, row| row.copy_from_slice(&x[i * k..(i + 1) * k]));
        assert_eq!((direct.len, direct.k_pad), (copied.len, copied.k_pad));
        assert_eq!(direct.values, copied.values);
        for i in 0..direct.values.len() / direct.k_pad {
            for j in 0..direct.k_pad {
                let expected = if i < m && j < k {
                    to_bf16(x[i * k + j])
                } else {
                    0
                };
                assert_eq!(
                    direct.values[i * direct.k_pad + j],
                    expected,
                    "row {i}, column {j}"
                );
            }
        }
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let w = [0.0f32; 6];
        let weight = Weight {
            data: &w[..],
            offset: 0,
            shape: [2, 3],
            strides: [3, 1],
        };
        let Some(isa) = Isa::best() else {
            return;
        };
        assert!(linear(isa, &[0.0; 5], 2, weight, None).is_err());
        assert!(linear(isa, &[0.0; 4], 2, weight, Some(&[0.0; 2])).is_err());
        let past = Weight {
            offset: 1,
            ..weight
        };
        assert!(linear(isa, &[0.0; 4], 2, past, None).is_err());
    }
}
