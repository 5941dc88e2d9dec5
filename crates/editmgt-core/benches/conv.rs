//! 3x3 convolutions at the VQ's shapes (padding 1, stride 1): 128 channels at 256x256 (the
//! first level of a 256x256 image), 512 channels at 32x32 (its deepest level) and the encoder's
//! `conv_in` (3 to 128 channels at 256x256), through the direct kernel and through Burn's own op
//! on flex, side by side.

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let device = Device::flex();
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let mut group = c.benchmark_group("conv3x3");
    group.sample_size(10);
    group.measurement_time(std::time::Duration::from_secs(10));
    for (inputs, channels, size) in [(128, 128, 256), (512, 512, 32), (3, 128, 256)] {
        let x = Tensor::<4>::random(
            [1, inputs, size, size],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let w = Tensor::<4>::random(
            [channels, inputs, 3, 3],
            Distribution::Normal(0.0, 0.05),
            &device,
        );
        let b = Tensor::<1>::random([channels], Distribution::Normal(0.0, 1.0), &device);
        let name = if inputs == channels {
            format!("{channels}ch_{size}x{size}")
        } else {
            format!("{inputs}to{channels}ch_{size}x{size}")
        };
        group.bench_function(format!("direct/{name}"), |bench| {
            bench.iter(|| {
                editmgt_core::direct_conv::conv2d(
                    x.clone(),
                    w.clone(),
                    Some(b.clone()),
                    options.clone(),
                )
                .into_data()
            })
        });
        group.bench_function(format!("burn_op/{name}"), |bench| {
            bench
                .iter(|| conv2d(x.clone(), w.clone(), Some(b.clone()), options.clone()).into_data())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
