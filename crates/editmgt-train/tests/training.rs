//! Training behaviour on the tiny fixture model: over-fitting a few pairs, save/resume, data
//! parallelism, accumulation, LoRA adapters. Sizes come from the model's configuration.

use burn::tensor::Device;
use editmgt_core::FloatType;
use editmgt_mgt::{LoraStreams, MgtTransformer};
use editmgt_testkit::{model_dir, to_f32_vec};
use editmgt_train::data::PreparedDataset;
use editmgt_train::data::shards::PreparedIndex;
use editmgt_train::rng::SplitMix64;
use editmgt_train::{Example, LoraConfig, OptimizerConfig, TrainConfig, TrainRun, Trainer};

fn tiny_model(device: &Device) -> MgtTransformer {
    MgtTransformer::load(&model_dir(), device, FloatType::F32).expect("tiny model")
}

/// `count` random edit pairs for `model` on a `side x side` grid with `text_len` text rows.
fn synthetic(
    model: &MgtTransformer,
    count: usize,
    side: usize,
    text_len: usize,
    seed: u64,
) -> PreparedDataset {
    let config = model.config();
    let mut rng = SplitMix64::new(seed);
    let codebook = config.codebook_size;
    let width = config.text_state_dim();
    let pooled = config.pooled_projection_dim;
    let mut normal = || (rng.next_f64() * 2.0 - 1.0) as f32;
    let examples: Vec<Example> = (0..count)
        .map(|_| Example {
            target: (0..side * side).map(|_| 0).collect(),
            reference: (0..side * side).map(|_| 0).collect(),
            grid: [side, side],
            states: (0..text_len * width).map(|_| normal()).collect(),
            states_shape: [text_len, width],
            pooled: (0..pooled).map(|_| normal()).collect(),
            micro_conds: [1024.0, 1024.0, 0.0, 0.0, 6.0],
        })
        .collect();
    let mut rng = SplitMix64::new(seed ^ 0xABCD);
    let examples = examples
        .into_iter()
        .map(|mut e| {
            e.target = (0..side * side)
                .map(|_| rng.below(codebook) as i64)
                .collect();
            e.reference = (0..side * side)
                .map(|_| rng.below(codebook) as i64)
                .collect();
            e
        })
        .collect::<Vec<_>>();
    PreparedDataset {
        dir: "synthetic".into(),
        index: PreparedIndex {
            shards: vec![],
            examples: count,
            skipped: 0,
            grid: [side, side],
            text: [text_len, width],
            pooled,
        },
        examples,
        empty: None,
    }
}

fn config(lr: f64, steps: u64) -> TrainConfig {
    TrainConfig {
        optimizer: OptimizerConfig {
            lr,
            ..OptimizerConfig::default()
        },
        steps,
        batch_size: 2,
        seed: 3,
        ..TrainConfig::default()
    }
}

/// The tiny model memorises two pairs: the loss falls by at least 90%.
#[test]
fn tiny_model_overfits_a_few_pairs() {
    let device = Device::flex();
    let model = tiny_model(&device);
    let data = synthetic(&model, 2, 8, 8, 1);
    let steps = 60;
    let trainer =
        Trainer::new(model, config(3e-3, steps), std::slice::from_ref(&device)).expect("trainer");
    let mut run = TrainRun::new(trainer, &data).expect("run");
    let losses: Vec<f32> = (0..steps).map(|_| run.step().expect("step").loss).collect();
    let head: f32 = losses[..5].iter().sum::<f32>() / 5.0;
    let tail: f32 = losses[losses.len() - 5..].iter().sum::<f32>() / 5.0;
    let drop = 1.0 - tail / head;
    println!(
        "over-fit: mean loss of the first 5 steps {head:.4}, of the last 5 {tail:.4}: drop {:.1}%",
        drop * 100.0
    );
    assert!(
        drop >= 0.9,
        "loss fell by {:.1}% only ({losses:?})",
        drop * 100.0
    );
}

fn values(trainer: &Trainer) -> Vec<f32> {
    trainer
        .trained_values()
        .into_values()
        .flat_map(to_f32_vec)
        .collect()
}

/// Stopping after two steps, saving and resuming gives the weights of four uninterrupted steps.
#[test]
fn resume_equals_an_uninterrupted_run() {
    let device = Device::flex();
    for lora in [false, true] {
        let model = tiny_model(&device);
        let data = synthetic(&model, 3, 4, 4, 2);
        let mut cfg = config(1e-3, 4);
        cfg.ema = Some(Default::default());
        if lora {
            cfg.lora = Some(LoraConfig {
                rank: 2,
                ..LoraConfig::default()
            });
        }
        let straight = {
            let trainer = Trainer::new(
                tiny_model(&device),
                cfg.clone(),
                std::slice::from_ref(&device),
            )
            .unwrap();
            let mut run = TrainRun::new(trainer, &data).unwrap();
            for _ in 0..4 {
                run.step().unwrap();
            }
            values(run.trainer())
        };
        let dir = tempfile::tempdir().unwrap();
        {
            let trainer = Trainer::new(
                tiny_model(&device),
                cfg.clone(),
                std::slice::from_ref(&device),
            )
            .unwrap();
            let mut run = TrainRun::new(trainer, &data).unwrap();
            run.step().unwrap();
            run.step().unwrap();
            run.save(dir.path()).unwrap();
        }
        let trainer = Trainer::new(
            tiny_model(&device),
            cfg.clone(),
            std::slice::from_ref(&device),
        )
        .unwrap();
        let mut run = TrainRun::resume(trainer, &data, dir.path()).unwrap();
        assert_eq!(run.trainer().step(), 2);
        run.step().unwrap();
        run.step().unwrap();
        let resumed = values(run.trainer());
        assert_eq!(straight.len(), resumed.len());
        let max = straight
            .iter()
            .zip(&resumed)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        println!(
            "resume (lora {lora}): max abs difference {max:e} over {} values",
            straight.len()
        );
        assert!(max <= 1e-7, "resumed run differs by {max}");
    }
}

/// Two devices with one batch each equal one device with both batches.
#[test]
fn two_devices_equal_one_device_with_the_doubled_batch() {
    let device = Device::flex();
    let model = tiny_model(&device);
    let data = synthetic(&model, 4, 4, 4, 5);
    let mut two = config(1e-3, 1);
    two.batch_size = 2;
    let mut one = two.clone();
    one.batch_size = 4;
    let run_with = |cfg: TrainConfig, devices: Vec<Device>| {
        let trainer = Trainer::new(tiny_model(&device), cfg, &devices).unwrap();
        let mut run = TrainRun::new(trainer, &data).unwrap();
        let stats = run.step().unwrap();
        (stats, values(run.trainer()))
    };
    let (s2, v2) = run_with(two, vec![Device::flex(), Device::flex()]);
    let (s1, v1) = run_with(one, vec![Device::flex()]);
    println!(
        "data parallel: loss {} vs {}, grad norm {} vs {}",
        s2.loss, s1.loss, s2.grad_norm, s1.grad_norm
    );
    assert!((s2.loss - s1.loss).abs() <= 1e-5 * s1.loss.abs());
    assert!((s2.grad_norm - s1.grad_norm).abs() <= 1e-4 * s1.grad_norm);
    let max = v1
        .iter()
        .zip(&v2)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("data parallel: max abs weight difference {max:e}");
    // Summing two halves differs from one sum in the last bits; AdamW's first step
    // (`g / (|g| + eps)`) amplifies that where a gradient is near `eps` (lr is 1e-3).
    assert!(max <= 1e-5, "weights differ by {max}");
}

/// LoRA on the reference stream leaves text-to-image forwards untouched; on every stream it
/// changes them, and merged weights give the same logits as the unmerged adapters.
#[test]
fn lora_streams_and_merging() {
    let device = Device::flex();
    let model = tiny_model(&device);
    let data = synthetic(&model, 2, 4, 4, 9);
    let mut cfg = config(1e-2, 3);
    cfg.lora = Some(LoraConfig {
        rank: 2,
        streams: LoraStreams::All,
        ..LoraConfig::default()
    });
    let trainer = Trainer::new(model, cfg, std::slice::from_ref(&device)).unwrap();
    let mut run = TrainRun::new(trainer, &data).unwrap();
    for _ in 0..3 {
        run.step().unwrap();
    }
    let trained = run.trainer().inference_model(false);
    assert!(!trained.adapters().is_empty());
    let batch = editmgt_train::TrainBatch::draw(
        &data.examples.iter().collect::<Vec<_>>(),
        trained.config().vocab_size as i64 - 1,
        0.0,
        0.0,
        None,
        &mut SplitMix64::new(1),
        &device,
    )
    .unwrap();
    let logits =
        |m: &MgtTransformer| to_f32_vec(editmgt_train::objective::logits(m, &batch).unwrap());
    let base = logits(&tiny_model(&device));
    let adapted = logits(&trained);
    let merged_model = trained.clone().merge_adapters().unwrap();
    assert!(merged_model.adapters().is_empty());
    let merged = logits(&merged_model);
    let scale = adapted.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff =
        |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
    println!(
        "lora: adapted vs base {:.3e}, merged vs adapted {:.3e}",
        diff(&adapted, &base),
        diff(&merged, &adapted)
    );
    assert!(
        diff(&adapted, &base) > 1e-4,
        "the adapter changes the output"
    );
    assert!(
        diff(&merged, &adapted) <= 1e-5,
        "merged weights equal the adapters"
    );

    // Reference-only adapters cannot be merged.
    let mut reference_only = trained.clone();
    reference_only.set_lora_streams(LoraStreams::Reference);
    assert!(reference_only.merge_adapters().is_err());
}
