//! One sampler step over the released model's sizes: 4096 positions (64x64) x 8192 codebook,
//! batch 1, at the first step (every position masked, so every position is sampled), and the
//! guidance combination over the same logits.

use criterion::{Criterion, criterion_group, criterion_main};
use editmgt_sampler::{
    Logits, MaskSchedule, Sampler, Schedule, SeededNoise, StepInput, Temperature, Workspace, guide,
};
use std::hint::black_box;

const CODEBOOK: usize = 8192;
const SIDE: usize = 64;
const MASK: u32 = 8255;

fn bench(c: &mut Criterion) {
    let mut rng = SeededNoise::new(7);
    let logits: Vec<f32> = (0..CODEBOOK * SIDE * SIDE)
        .map(|_| rng.next_uniform() * 12.0 - 6.0)
        .collect();
    let sampler = Sampler::new(
        MASK,
        Schedule::new(MaskSchedule::Cosine, 36, Temperature::default()).unwrap(),
    );
    let sample = vec![MASK; SIDE * SIDE];
    let view = Logits::new(&logits, 1, CODEBOOK, SIDE, SIDE).unwrap();
    let mut workspace = Workspace::default();
    let mut group = c.benchmark_group("sampler");
    group.sample_size(10);
    group.bench_function("step 4096 positions x 8192 codebook (all masked)", |b| {
        let mut noise = SeededNoise::new(1);
        let mut prev = vec![0u32; SIDE * SIDE];
        let mut pred = vec![0u32; SIDE * SIDE];
        b.iter(|| {
            let input = StepInput::new(0, view, &sample);
            sampler
                .step_into(&input, &mut noise, &mut workspace, &mut prev, &mut pred)
                .unwrap();
            black_box(&prev);
        })
    });
    let half = vec![0.5f32; logits.len()];
    let mut out = vec![0f32; logits.len()];
    group.bench_function("guidance u + g (c - u) over 4096 x 8192", |b| {
        b.iter(|| guide(black_box(&logits), black_box(&half), 6.0, &mut out).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
