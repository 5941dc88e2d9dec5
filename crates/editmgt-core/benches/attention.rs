//! The joint attention of one MGT block at the released width, alone: `[2, 8, 2304, 128]` (a
//! guidance pair, 256 text rows and two 32x32 token grids), with and without the strength bias
//! (`log 1.1` between the reference and the rest), through the fused CPU attention and through
//! Burn's own op on flex, side by side. PyTorch's row: `bench_reference.py --only attention`.

use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use criterion::{Criterion, criterion_group, criterion_main};

const SEQ: usize = 2304;
const REFERENCE_FROM: usize = 1280;

fn bias(device: &Device) -> Tensor<4> {
    let scores: Vec<f32> = (0..SEQ * SEQ)
        .map(|i| {
            let (r, c) = (i / SEQ >= REFERENCE_FROM, i % SEQ >= REFERENCE_FROM);
            if r != c { 1.1f32.ln() } else { 0.0 }
        })
        .collect();
    Tensor::from_data(TensorData::new(scores, [1, 1, SEQ, SEQ]), device)
}

fn bench(c: &mut Criterion) {
    let device = Device::flex();
    let x = || Tensor::<4>::random([2, 8, SEQ, 128], Distribution::Normal(0.0, 1.0), &device);
    let (q, k, v) = (x(), x(), x());
    let bias = bias(&device);
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: false,
    };
    let mut group = c.benchmark_group("attention_2x8x2304x128");
    group.sample_size(10);
    group.measurement_time(std::time::Duration::from_secs(10));
    for (name, bias) in [("bias", Some(bias)), ("no_bias", None)] {
        group.bench_function(format!("fused/{name}"), |b| {
            b.iter(|| {
                editmgt_core::fused_attention::attention(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    bias.clone(),
                    None,
                )
                .into_data()
            })
        });
        group.bench_function(format!("burn_op/{name}"), |b| {
            b.iter(|| {
                burn::tensor::module::attention(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    None,
                    bias.clone(),
                    options,
                )
                .into_data()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
