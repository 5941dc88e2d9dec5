//! Consolidation of 9 captured blocks x 256 text rows x 1024 image tokens (the released model's
//! localisation setting), and the rescale + smoothing + upsampling that follows.

use criterion::{Criterion, criterion_group, criterion_main};
use editmgt_attention::{AdaptiveSmoothing, consolidate};
use ndarray::Array3;
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let blocks: Vec<Array3<f32>> = (0..9)
        .map(|k| {
            Array3::from_shape_fn((1, 256, 1024), |(_, t, n)| {
                (((k * 31 + t * 17 + n * 7) % 101) as f32) / 101.0 / 1024.0
            })
        })
        .collect();
    let views: Vec<_> = blocks.iter().map(|b| b.view()).collect();
    c.bench_function("consolidate 9 blocks x 256 rows x 1024 tokens", |b| {
        b.iter(|| consolidate(black_box(&views), None, 32, 32).unwrap())
    });
    let scores = consolidate(&views, None, 32, 32).unwrap();
    c.bench_function("rescale + adaptive smoothing + bicubic x2 (32x32)", |b| {
        b.iter(|| {
            black_box(&scores)
                .rescale()
                .smooth(&AdaptiveSmoothing::default())
                .unwrap()
                .upsample(2)
                .unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
