//! 3x3 convolutions by Winograd's minimal filtering, `F(2x2, 3x3)`: 16 multiplications per
//! 2x2 output tile and input channel instead of 36.
//!
//! With `B`, `G`, `A` Lavin and Gray's transforms ("Fast Algorithms for Convolutional Neural
//! Networks", 2016), each output tile is `A^T [sum over c of (G g_oc G^T) ⊙ (B^T d_c B)] A`, for
//! `d_c` the tile's 4x4 input window in channel `c`. Over a band of tiles that is 16 matrix
//! products, one per position of the 4x4 transformed window: `[Co, Ci] x [Ci, tiles]`. The
//! transforms only add and halve, so the result differs from the direct sum by float rounding
//! alone (about one order of magnitude above the direct kernel's, still far inside `f32`'s
//! margin for these layers; the tests bound it).
//!
//! The kernel reads the zero-padded planes that [`super::kernel`] makes, so the input maps
//! (GroupNorm + SiLU, upsampling) work unchanged; it covers even output sizes, the rest stay
//! with the direct kernel.

use rayon::prelude::*;

use super::kernel::{Output, split_tasks};

/// Output tiles (2x2) one task transforms and multiplies: the products' shared dimension.
const TILES: usize = 256;
/// The fewest input and output channels a convolution needs for this kernel.
const MIN_WIDTH: usize = 4;

/// The zero-padded input: `batch * in_channels` planes of `plane` elements, each `width` wide,
/// with the padded image's rows at their start.
#[derive(Debug, Clone, Copy)]
pub(super) struct Padded<'a> {
    /// The planes, image-major.
    pub data: &'a [f32],
    /// Elements between consecutive planes.
    pub plane: usize,
    /// Elements between consecutive rows of a plane.
    pub width: usize,
}

/// The sizes of one convolution: images, input and output channels, output height and width.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sizes {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub output: [usize; 2],
}

/// Whether [`conv3x3`] computes a convolution of this kernel size, output size and `[input,
/// output]` channels: 3x3 kernels, even output sizes, at least [`TILES`] output tiles per image
/// and [`MIN_WIDTH`] channels on each side. Below those the transforms and the short products
/// cost more than the multiplications saved (measured: 768 channels at 16x16 took twice as long
/// as the tap products, the VQ's 3-channel `conv_in` and `conv_out` about 10% longer).
pub(super) fn takes(kernel: [usize; 2], output: [usize; 2], channels: [usize; 2]) -> bool {
    let [h, w] = output;
    kernel == [3, 3]
        && h % 2 == 0
        && w % 2 == 0
        && (h / 2) * (w / 2) >= TILES
        && channels.iter().all(|&c| c >= MIN_WIDTH)
}

/// `U = G g G^T` of every 3x3 kernel `g` of `weight` (`[Co, Ci, 3, 3]`), laid out `[Co, 16,
/// Ci]`: output channel, position `4 i + j` of the transformed kernel, input channel.
fn transformed_weights(weight: &[f32], co: usize, ci: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; 16 * co * ci];
    // G applied to a column of three values, in f64 (the weights are transformed once per call).
    let g = |a: f64, b: f64, c: f64| [a, (a + b + c) / 2.0, (a - b + c) / 2.0, c];
    u.par_chunks_mut(16 * ci)
        .zip(weight[..9 * co * ci].par_chunks(9 * ci))
        .for_each(|(u, kernels)| {
            for (c, k) in kernels.chunks_exact(9).enumerate() {
                let k = |i: usize| k[i] as f64;
                // Columns of G g: G applied to each of the kernel's columns.
                let columns = [0, 1, 2].map(|x| g(k(x), k(3 + x), k(6 + x)));
                for i in 0..4 {
                    let row = g(columns[0][i], columns[1][i], columns[2][i]);
                    for (j, &v) in row.iter().enumerate() {
                        u[(4 * i + j) * ci + c] = v as f32;
                    }
                }
            }
        });
    u
}

widest! {
    /// One tile row of one channel: `rows` are the four padded input rows the tiles read (at
    /// least `2 * tiles + 2` long), `v` receives `B^T d B` of every tile, position `p` of tile
    /// `t` at `v[p * stride + t]`. `scratch` holds `4 * (2 * tiles + 2)` values.
    fn input_tiles(rows: [&[f32]; 4], tiles: usize, v: &mut [f32], stride: usize, scratch: &mut [f32]) {
        let width = 2 * tiles + 2;
        let [d0, d1, d2, d3] = rows.map(|r| &r[..width]);
        let (t0, rest) = scratch.split_at_mut(width);
        let (t1, rest) = rest.split_at_mut(width);
        let (t2, t3) = rest.split_at_mut(width);
        for x in 0..width {
            t0[x] = d0[x] - d2[x];
            t1[x] = d1[x] + d2[x];
            t2[x] = d2[x] - d1[x];
            t3[x] = d1[x] - d3[x];
        }
        for (r, t) in [&*t0, &*t1, &*t2, &t3[..width]].into_iter().enumerate() {
            let (v0, rest) = v[4 * r * stride..].split_at_mut(stride);
            let (v1, rest) = rest.split_at_mut(stride);
            let (v2, rest) = rest.split_at_mut(stride);
            let v3 = &mut rest[..tiles];
            for x in 0..tiles {
                let (e, f, g, h) = (t[2 * x], t[2 * x + 1], t[2 * x + 2], t[2 * x + 3]);
                v0[x] = e - g;
                v1[x] = f + g;
                v2[x] = g - f;
                v3[x] = f - h;
            }
        }
    }
}

widest! {
    /// One tile row of one output channel: `m` holds the 16 products of every tile (position
    /// `p` of tile `t` at `m[p * stride + t]`); writes `A^T M A + bias` into the two output
    /// rows `top` and `bottom` (`2 * tiles` long).
    fn output_tiles(m: &[f32], stride: usize, tiles: usize, bias: f32, top: &mut [f32], bottom: &mut [f32]) {
        let p = |i: usize| &m[i * stride..i * stride + tiles];
        let [m00, m01, m02, m03, m10, m11, m12, m13] = [0, 1, 2, 3, 4, 5, 6, 7].map(p);
        let [m20, m21, m22, m23, m30, m31, m32, m33] = [8, 9, 10, 11, 12, 13, 14, 15].map(p);
        for x in 0..tiles {
            let s = [
                m00[x] + m10[x] + m20[x],
                m01[x] + m11[x] + m21[x],
                m02[x] + m12[x] + m22[x],
                m03[x] + m13[x] + m23[x],
            ];
            let u = [
                m10[x] - m20[x] - m30[x],
                m11[x] - m21[x] - m31[x],
                m12[x] - m22[x] - m32[x],
                m13[x] - m23[x] - m33[x],
            ];
            top[2 * x] = s[0] + s[1] + s[2] + bias;
            top[2 * x + 1] = s[1] - s[2] - s[3] + bias;
            bottom[2 * x] = u[0] + u[1] + u[2] + bias;
            bottom[2 * x + 1] = u[1] - u[2] - u[3] + bias;
        }
    }
}

/// The 3x3 convolution of `input` by `weight` (`[Co, Ci, 3, 3]`) plus `bias`, written into `out`
/// (`[B, Co, Ho, Wo]`, every element). The caller checked the lengths and [`takes`].
pub(super) fn conv3x3(
    input: Padded<'_>,
    weight: &[f32],
    bias: Option<&[f32]>,
    sizes: Sizes,
    out: &mut [f32],
) {
    let Sizes {
        batch,
        in_channels: ci,
        out_channels: co,
        output: [ho, wo],
    } = sizes;
    let (tiles_y, tiles_x) = (ho / 2, wo / 2);
    debug_assert!(input.width >= wo + 2);
    debug_assert!(input.plane >= (ho + 2) * input.width);
    debug_assert_eq!(out.len(), batch * co * ho * wo);
    let u = transformed_weights(weight, co, ci);

    // Bands of whole tile rows of about TILES tiles; when that leaves too few tasks for the
    // pool (small images), the output channels are split as well.
    let rows = (TILES / tiles_x).clamp(1, tiles_y);
    let (channels, tasks) = split_tasks(batch, tiles_y, rows, co);
    let capacity = rows * tiles_x;
    let output = Output::new(out);
    let u = &u[..];
    let lengths = [
        16 * ci * capacity,
        16 * channels * capacity,
        4 * (2 * tiles_x + 2),
    ];
    tasks.into_par_iter().for_each(|task| {
        with_buffers(lengths, |[v, m, scratch]| {
            band(
                input,
                u,
                bias,
                sizes,
                &output,
                [rows, channels],
                task,
                [v, m, scratch],
            )
        })
    });
}

/// The most `f32`s a pool thread keeps for [`with_buffers`] between calls (32 MiB; the VQ's
/// largest task at 1024x1024 needs about 19 MiB).
const RETAINED: usize = 8 << 20;

/// The buffers one task works in (the transformed input, the products and a scratch row), of
/// `lengths`: the running thread's own, kept between calls (up to [`RETAINED`] values), so a
/// task neither allocates nor zeroes them (every element a task reads it has written first).
fn with_buffers<R>(lengths: [usize; 3], f: impl FnOnce([&mut [f32]; 3]) -> R) -> R {
    thread_local! {
        static BUFFERS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let total: usize = lengths.iter().sum();
    fn split(all: &mut [f32], lengths: [usize; 3]) -> [&mut [f32]; 3] {
        let (v, rest) = all.split_at_mut(lengths[0]);
        let (m, rest) = rest.split_at_mut(lengths[1]);
        [v, m, &mut rest[..lengths[2]]]
    }
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut all) if total <= RETAINED => {
            if all.len() < total {
                all.resize(total, 0.0);
            }
            f(split(&mut all[..total], lengths))
        }
        // Too large to keep, or re-entered on this thread (a task waiting inside another): a
        // buffer of its own.
        _ => f(split(&mut vec![0.0; total], lengths)),
    })
}

/// One task: output tile rows `ty0..ty0 + rows` (fewer at the end) of image `b`, output channels
/// `c0..c0 + channels` (fewer at the end).
#[allow(clippy::too_many_arguments)]
fn band(
    input: Padded<'_>,
    u: &[f32],
    bias: Option<&[f32]>,
    sizes: Sizes,
    output: &Output,
    [rows, channels]: [usize; 2],
    (b, ty0, c0): (usize, usize, usize),
    [v, m, scratch]: [&mut [f32]; 3],
) {
    let Sizes {
        in_channels: ci,
        out_channels: co,
        output: [ho, wo],
        ..
    } = sizes;
    let (tiles_y, tiles_x) = (ho / 2, wo / 2);
    let n = rows.min(tiles_y - ty0);
    let tb = n * tiles_x;
    let mc = channels.min(co - c0);
    // V: position, input channel, tile.
    for c in 0..ci {
        let plane = &input.data[(b * ci + c) * input.plane..];
        for r in 0..n {
            let y = 2 * (ty0 + r);
            let row = |i: usize| &plane[(y + i) * input.width..(y + i + 1) * input.width];
            input_tiles(
                [row(0), row(1), row(2), row(3)],
                tiles_x,
                &mut v[c * tb + r * tiles_x..],
                ci * tb,
                scratch,
            );
        }
    }
    for p in 0..16 {
        // M_p [mc, tb] = U_p [mc, ci] x V_p [ci, tb].
        // SAFETY: M_p and V_p are inside `m` (`16 * channels * capacity`) and `v`
        // (`16 * ci * capacity`); U_p's rows c0..c0 + mc (row stride 16 ci) are inside
        // `u` (`co * 16 * ci`).
        #[allow(unsafe_code)]
        unsafe {
            gemm::gemm(
                mc,
                tb,
                ci,
                m[p * mc * tb..].as_mut_ptr(),
                1,
                tb as isize,
                false,
                u[(c0 * 16 + p) * ci..].as_ptr(),
                1,
                (16 * ci) as isize,
                v[p * ci * tb..].as_ptr(),
                1,
                tb as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
    for i in 0..mc {
        let c = c0 + i;
        let add = bias.map_or(0.0, |bias| bias[c]);
        for r in 0..n {
            let y = 2 * (ty0 + r);
            let at = ((b * co + c) * ho + y) * wo;
            // SAFETY: output rows y and y + 1 of channel c of image b belong to this
            // task alone (its tile rows, its channels), and `at + 2 * wo` is within the
            // output.
            #[allow(unsafe_code)]
            let (top, bottom) = unsafe { output.rows(at, wo) };
            output_tiles(
                &m[i * tb + r * tiles_x..],
                mc * tb,
                tiles_x,
                add,
                top,
                bottom,
            );
        }
    }
}
