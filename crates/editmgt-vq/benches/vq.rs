//! Encode + decode of one 256x256 image with the released channel widths (random weights) on
//! the flex CPU device.

use burn::tensor::{Device, Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use editmgt_vq::{VqConfig, VqModel};

fn real_config() -> VqConfig {
    VqConfig {
        block_out_channels: vec![128, 256, 256, 512, 768],
        down_block_types: vec!["DownEncoderBlock2D".into(); 5],
        up_block_types: vec!["UpDecoderBlock2D".into(); 5],
        layers_per_block: 2,
        latent_channels: 64,
        num_vq_embeddings: 8192,
        norm_num_groups: 32,
        mid_block_add_attention: false,
        lookup_from_codebook: true,
        ..VqConfig::default()
    }
}

fn bench(c: &mut Criterion) {
    let device = Device::flex();
    let model = VqModel::new(&real_config(), &device);
    let image = Tensor::<4>::random([1, 3, 256, 256], Distribution::Uniform(0.0, 1.0), &device);
    // Materialise the lazily initialised weights outside the measurement.
    let tokens = model.tokenize(image.clone()).unwrap();
    let _ = model.decode(tokens.clone()).unwrap().into_data();

    let mut group = c.benchmark_group("vq_256x256_real_widths");
    group.sample_size(10);
    group.bench_function("encode+quantize", |b| {
        b.iter(|| model.tokenize(image.clone()).unwrap().into_data())
    });
    group.bench_function("decode", |b| {
        b.iter(|| model.decode(tokens.clone()).unwrap().into_data())
    });
    group.bench_function("encode+decode", |b| {
        b.iter(|| {
            let t = model.tokenize(image.clone()).unwrap();
            model.decode(t).unwrap().into_data()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
