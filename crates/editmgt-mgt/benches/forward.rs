//! One forward at the released width (8 heads x 128, rope [16, 56, 56], codebook 8192, joint
//! dim 2304) with 1 double-stream and 2 single-stream blocks: batch 2 (a guidance pair), a
//! 64x64 token grid plus a 64x64 reference grid, 256 text rows, strength 1.1; without capture
//! and capturing one single-stream block; and, on a CPU with AMX-BF16 or AVX512-BF16, with the
//! bf16 products of `--dtype bf16` (`MgtTransformer::with_bf16_products`). Random weights
//! (lazily initialised on first use).

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use criterion::{Criterion, criterion_group, criterion_main};
use editmgt_mgt::{CaptureRequest, MgtConfig, MgtInput, MgtTransformer};

fn config() -> MgtConfig {
    let json = serde_json::json!({
        "attention_head_dim": 128,
        "num_attention_heads": 8,
        "axes_dims_rope": [16, 56, 56],
        "codebook_size": 8192,
        "vocab_size": 8256,
        "joint_attention_dim": 2304,
        "pooled_projection_dim": 1024,
        "num_layers": 1,
        "num_single_layers": 2,
        "downsample": true,
        "upsample": true,
        "connector_type": "linear",
        "text_encoder_architecture": "CLIP_Gemma2"
    });
    MgtConfig::from_json_value(json, "bench/config.json".as_ref()).expect("config")
}

fn grid(device: &Device, seed: u64) -> Tensor<3, Int> {
    let ids: Vec<i64> = (0..2 * 64 * 64)
        .map(|i| ((i as u64 * 2654435761 + seed) % 8192) as i64)
        .collect();
    Tensor::from_data(TensorData::new(ids, [2, 64, 64]), device)
}

fn bench(c: &mut Criterion) {
    let device = Device::flex();
    let model = MgtTransformer::new(&config(), &device).expect("model");
    let tokens = grid(&device, 1);
    let reference = grid(&device, 7);
    let states = Tensor::<3>::random([2, 256, 2304], Distribution::Normal(0.0, 1.0), &device);
    let pooled = Tensor::<2>::random([2, 1024], Distribution::Normal(0.0, 1.0), &device);
    let micro = Tensor::<2>::from_data(
        TensorData::new([1024.0f32, 1024.0, 0.0, 0.0, 6.0].repeat(2), [2, 5]),
        &device,
    );
    let rotary = model.rotary_table(&model.positions(256, 64, 64), &device);
    let input = |capture: CaptureRequest| {
        MgtInput::new(
            tokens.clone(),
            states.clone(),
            pooled.clone(),
            micro.clone(),
            20.0,
        )
        .with_reference(reference.clone(), 1.1)
        .with_rotary(rotary.clone())
        .with_capture(capture)
    };
    // Materialise the random weights once, outside the measurements.
    let warm = model
        .forward(input(CaptureRequest::none()))
        .expect("forward");
    let _ = warm.logits.into_data();

    let mut group = c.benchmark_group("mgt_forward_real_width_1d_2s");
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_millis(1));
    group.measurement_time(std::time::Duration::from_secs(30));
    group.bench_function("no_capture", |b| {
        b.iter(|| {
            let out = model
                .forward(input(CaptureRequest::none()))
                .expect("forward");
            out.logits.into_data()
        })
    });
    group.bench_function("capture_single_block", |b| {
        b.iter(|| {
            // Block 1 is the first single-stream block.
            let out = model
                .forward(input(CaptureRequest::blocks([1])))
                .expect("forward");
            let map = out.captures[0].text_to_image.clone().into_data();
            (out.logits.into_data(), map)
        })
    });
    let bf16 = MgtTransformer::new(&config(), &device)
        .expect("model")
        .with_bf16_products();
    if let Some(isa) = bf16.bf16_products() {
        let _ = bf16
            .forward(input(CaptureRequest::none()))
            .expect("forward")
            .logits
            .into_data();
        eprintln!("bf16 products on {isa}");
        group.bench_function("no_capture_bf16_products", |b| {
            b.iter(|| {
                let out = bf16
                    .forward(input(CaptureRequest::none()))
                    .expect("forward");
                out.logits.into_data()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
