//! One sampler step over the released model's sizes on the CPU (flex) device: 4096 positions
//! (64x64) x 8192 codebook, batch 1, at the first step (every position masked, so every position
//! is sampled), and the guidance combination over the same logits.

use burn::tensor::{Device, Int, Tensor, TensorData};
use criterion::{Criterion, criterion_group, criterion_main};
use editmgt_sampler::{
    MaskSchedule, Sampler, Schedule, SeededNoise, StepInput, StepNoise, Temperature, guide,
};
use std::hint::black_box;

const CODEBOOK: usize = 8192;
const SIDE: usize = 64;
const MASK: u32 = 8255;

fn bench(c: &mut Criterion) {
    let device = Device::flex();
    let mut rng = SeededNoise::new(7);
    let values: Vec<f32> = (0..CODEBOOK * SIDE * SIDE)
        .map(|_| rng.next_uniform() * 12.0 - 6.0)
        .collect();
    let logits =
        Tensor::<4>::from_data(TensorData::new(values, [1, CODEBOOK, SIDE, SIDE]), &device);
    let sampler = Sampler::new(
        MASK,
        Schedule::new(MaskSchedule::Cosine, 36, Temperature::default()).unwrap(),
    );
    let sample = Tensor::<2, Int>::full([1, SIDE * SIDE], i64::from(MASK), &device);
    let mut group = c.benchmark_group("sampler");
    group.sample_size(10);
    group.bench_function("step 4096 positions x 8192 codebook (all masked)", |b| {
        let mut noise = SeededNoise::new(1);
        b.iter(|| {
            let step_noise = StepNoise::draw(&mut noise, 1, SIDE * SIDE, false, &device).unwrap();
            let out = sampler
                .step(StepInput::new(
                    0,
                    black_box(logits.clone()),
                    sample.clone(),
                    step_noise,
                ))
                .unwrap();
            out.prev_sample.into_data()
        })
    });
    group.bench_function("guidance over 4096 x 8192", |b| {
        b.iter(|| {
            guide(black_box(logits.clone()), logits.clone(), 6.0)
                .unwrap()
                .into_data()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
