//! One training step (forward, backward, clipping, AdamW) at the released width (8 heads x 128,
//! rope [16, 56, 56], codebook 8192, joint dim 2304) with 1 double-stream and 2 single-stream
//! blocks: batch 1, a 64x64 target grid (half of it masked) with a 64x64 reference, 256 text
//! rows; full fine-tuning and LoRA (r 16 on `to_q/k/v`). Random weights. Prints the process's
//! peak resident memory (`VmHWM`) after each group (LoRA first, so that its peak is its own).

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use criterion::{Criterion, criterion_group, criterion_main};
use editmgt_mgt::{MgtConfig, MgtTransformer};
use editmgt_train::{LoraConfig, TrainBatch, TrainConfig, Trainer};

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

fn batch(device: &Device) -> TrainBatch {
    let cells = 64 * 64;
    let target: Vec<i64> = (0..cells)
        .map(|i| ((i as u64 * 2654435761) % 8192) as i64)
        .collect();
    let reference: Vec<i64> = (0..cells)
        .map(|i| ((i as u64 * 40503 + 7) % 8192) as i64)
        .collect();
    let labels: Vec<i64> = target
        .iter()
        .enumerate()
        .map(|(i, &t)| if i % 2 == 0 { t } else { -100 })
        .collect();
    let input: Vec<i64> = target
        .iter()
        .enumerate()
        .map(|(i, &t)| if i % 2 == 0 { 8255 } else { t })
        .collect();
    TrainBatch::from_labels(
        Tensor::from_data(TensorData::new(input, [1, 64, 64]), device),
        Tensor::from_data(TensorData::new(reference, [1, 64, 64]), device),
        &labels,
        Tensor::<3>::random([1, 256, 2304], Distribution::Normal(0.0, 1.0), device),
        Tensor::<2>::random([1, 1024], Distribution::Normal(0.0, 1.0), device),
        Tensor::from_data(
            TensorData::new(vec![1024.0f32, 1024.0, 0.0, 0.0, 6.0], [1, 5]),
            device,
        ),
        vec![500.0],
    )
    .expect("batch")
}

fn peak_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "VmHWM unknown".into())
}

fn bench(c: &mut Criterion) {
    let device = Device::flex();
    let b = batch(&device);
    for (name, lora) in [
        // LoRA first: the peak printed after it is LoRA's own (the peak only grows).
        ("lora_r16_qkv", Some(LoraConfig::default())),
        ("full", None),
    ] {
        let model = MgtTransformer::new(&config(), &device).expect("model");
        let config = TrainConfig {
            lora,
            ..TrainConfig::default()
        };
        let mut trainer =
            Trainer::new(model, config, std::slice::from_ref(&device)).expect("trainer");
        let micro = vec![vec![b.clone()]];
        trainer.train_step(&micro).expect("warm-up step");
        let mut group = c.benchmark_group("train_step_real_width_1d_2s");
        group.sample_size(10);
        group.warm_up_time(std::time::Duration::from_millis(1));
        group.measurement_time(std::time::Duration::from_secs(30));
        group.bench_function(name, |bench| {
            bench.iter(|| trainer.train_step(&micro).expect("step").loss)
        });
        group.finish();
        println!("{name}: peak resident memory {}", peak_memory());
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
