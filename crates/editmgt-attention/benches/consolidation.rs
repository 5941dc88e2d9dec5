//! Consolidation of 9 captured blocks x 256 text rows x 1024 image tokens (the released model's
//! localisation setting), and the rescale + smoothing + upsampling that follows, on the CPU
//! (flex) device.

use burn::tensor::{Device, Tensor, TensorData};
use criterion::{Criterion, criterion_group, criterion_main};
use editmgt_attention::{AdaptiveSmoothing, Localizer, TextRows, consolidate};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let device = Device::flex();
    let blocks: Vec<Tensor<3>> = (0..9)
        .map(|k| {
            let values: Vec<f32> = (0..256 * 1024)
                .map(|i| {
                    let (t, n) = (i / 1024, i % 1024);
                    (((k * 31 + t * 17 + n * 7) % 101) as f32) / 101.0 / 1024.0
                })
                .collect();
            Tensor::from_data(TensorData::new(values, [1, 256, 1024]), &device)
        })
        .collect();
    let sync = |t: Tensor<3>| t.into_data();
    c.bench_function("consolidate 9 blocks x 256 rows x 1024 tokens", |b| {
        b.iter(|| {
            sync(
                consolidate(black_box(&blocks), &TextRows::all(), 32, 32)
                    .unwrap()
                    .into_tensor(),
            )
        })
    });
    let scores = consolidate(&blocks, &TextRows::all(), 32, 32).unwrap();
    let smoother = AdaptiveSmoothing::default()
        .prepare(32, 32, &device)
        .unwrap();
    let resize = editmgt_attention::Resize::new((32, 32), (64, 64), &device).unwrap();
    c.bench_function("rescale + adaptive smoothing + bicubic x2 (32x32)", |b| {
        b.iter(|| {
            let smoothed = smoother.apply(&black_box(&scores).rescale()).unwrap();
            sync(resize.apply(&smoothed).unwrap().into_tensor())
        })
    });
    let localizer = Localizer::new(
        TextRows::all(),
        (32, 32),
        (64, 64),
        &AdaptiveSmoothing::default(),
        &device,
    )
    .unwrap();
    c.bench_function("localizer: all of the above, one step", |b| {
        b.iter(|| {
            let out = localizer.locate(black_box(&blocks)).unwrap();
            out.on_tokens.into_data()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
