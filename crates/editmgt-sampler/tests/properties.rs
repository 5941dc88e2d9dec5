//! Properties of the step on random inputs (any batch, grids not a multiple of anything,
//! region hold with a coarser score grid, high temperatures), and its refusals of bad input,
//! on the test device (`$EDITMGT_TEST_DEVICE`).

use burn::tensor::{Device, Int, Tensor, TensorData};
use editmgt_attention::ScoreMap;
use editmgt_sampler::{
    MaskSchedule, NoiseError, RegionHold, ReplayNoise, Sampler, SamplerError, Schedule,
    SchedulerConfig, SeededNoise, StartingRatio, StepInput, StepNoise, Temperature,
};
use editmgt_testkit::device;

const CODEBOOK: usize = 24;
const MASK: u32 = 24;
const H: usize = 8;
const W: usize = 6;
const L: usize = H * W;

fn random_logits(rng: &mut SeededNoise, batch: usize, scale: f32) -> Vec<f32> {
    (0..batch * CODEBOOK * L)
        .map(|_| (rng.next_uniform() - 0.5) * scale)
        .collect()
}

fn random_tokens(rng: &mut SeededNoise, n: usize) -> Vec<i64> {
    (0..n)
        .map(|_| ((rng.next_uniform() * CODEBOOK as f32) as usize % CODEBOOK) as i64)
        .collect()
}

fn floats(data: Vec<f32>, batch: usize, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(data, [batch, CODEBOOK, H, W]), device)
}

fn ints(data: Vec<i64>, shape: [usize; 2], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn read_ints(t: Tensor<2, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().try_to_vec().unwrap()
}

fn masked(tokens: &[i64]) -> usize {
    tokens.iter().filter(|&&t| t == i64::from(MASK)).count()
}

/// Runs full edit loops and checks every step.
fn check_loops(temperature: Temperature, schedule: MaskSchedule, seeds: std::ops::Range<u64>) {
    let device = device();
    let batch = 3;
    let (sh, sw) = (4, 3);
    let mask = i64::from(MASK);
    for seed in seeds {
        let mut rng = SeededNoise::new(seed);
        let steps = 2 + (seed as usize % 6);
        let sampler = Sampler::new(MASK, Schedule::new(schedule, steps, temperature).unwrap());
        let reference = random_tokens(&mut rng, batch * L);
        let scores: Vec<f32> = (0..batch * sh * sw).map(|_| rng.next_uniform()).collect();
        let up = ScoreMap::from_flat(scores, batch, sh, sw, &device)
            .unwrap()
            .resize(H, W)
            .unwrap();
        let up_values = up.to_vec().unwrap();
        let threshold = if seed % 3 == 0 { 0.0 } else { 0.45 };
        // Half the runs start from all mask tokens, half in mask mode.
        let mut sample: Vec<i64> = if seed % 2 == 0 {
            vec![mask; batch * L]
        } else {
            reference
                .iter()
                .map(|&t| if rng.next_uniform() < 0.4 { mask } else { t })
                .collect()
        };
        // Per-row starting ratios in mask mode (the rows' masks differ).
        let starting = if seed % 2 == 0 {
            StartingRatio::All(1.0)
        } else {
            StartingRatio::PerRow(
                sample
                    .chunks(L)
                    .map(|row| masked(row) as f32 / L as f32)
                    .collect(),
            )
        };
        let mut noise = SeededNoise::new(seed ^ 0xABCD);
        for step in 0..steps {
            let scale = [0.5f32, 4.0, 30.0][step % 3];
            let logits = floats(random_logits(&mut rng, batch, scale), batch, &device);
            let last = sampler.schedule().is_last(step);
            let mut input = StepInput::new(
                step,
                logits,
                ints(sample.clone(), [batch, L], &device),
                StepNoise::draw(&mut noise, batch, L, last, &device).unwrap(),
            );
            input.starting_mask_ratio = starting.clone();
            input.region_hold = Some(RegionHold {
                threshold,
                scores: up.rows(),
                reference: ints(reference.clone(), [batch, L], &device),
            });
            let out = sampler.step(input).unwrap();
            out.faults.check().unwrap();
            let prev = read_ints(out.prev_sample);
            let pred = read_ints(out.pred_original_sample);
            for i in 0..batch * L {
                let (s, prev, pred) = (sample[i], prev[i], pred[i]);
                if s != mask {
                    assert_eq!(
                        prev, s,
                        "seed {seed} step {step}: known position {i} changed"
                    );
                    assert_eq!(pred, s, "seed {seed} step {step}: known prediction {i}");
                } else {
                    assert!(
                        (0..CODEBOOK as i64).contains(&pred),
                        "prediction {pred} at {i}"
                    );
                    if threshold > 0.0 && up_values[i] < threshold {
                        assert_eq!(pred, reference[i], "seed {seed} step {step}: held {i}");
                    }
                    assert!(prev == mask || prev == pred);
                }
            }
            for row in 0..batch {
                let r = row * L..(row + 1) * L;
                let before = masked(&sample[r.clone()]);
                let after = masked(&prev[r]);
                assert!(
                    after <= before,
                    "seed {seed} step {step} row {row}: mask count grew"
                );
                if before > 0 {
                    assert!(
                        after < before,
                        "seed {seed} step {step} row {row}: nothing unmasked ({before} masked)"
                    );
                }
            }
            sample = prev;
        }
        assert_eq!(
            masked(&sample),
            0,
            "seed {seed}: tokens left masked after the last step"
        );
    }
}

#[test]
fn properties_hold_on_random_inputs() {
    check_loops(Temperature::default(), MaskSchedule::Cosine, 0..24);
    check_loops(Temperature::Scalar(1.0), MaskSchedule::Linear, 24..36);
}

#[test]
fn known_tokens_survive_high_temperatures() {
    check_loops(
        Temperature::Range(40.0, 10.0),
        MaskSchedule::Cosine,
        100..112,
    );
}

#[test]
fn remasks_exactly_the_least_confident() {
    // Without ties, a step leaves exactly max(1, min(unknown - 1, mask_len)) positions masked.
    let device = device();
    let steps = 6;
    let sampler = Sampler::new(
        MASK,
        Schedule::new(MaskSchedule::Cosine, steps, Temperature::default()).unwrap(),
    );
    let mut rng = SeededNoise::new(5);
    let mut noise = SeededNoise::new(6);
    let mut sample = vec![i64::from(MASK); 2 * L];
    for step in 0..steps - 1 {
        let logits = floats(random_logits(&mut rng, 2, 6.0), 2, &device);
        let input = StepInput::new(
            step,
            logits,
            ints(sample.clone(), [2, L], &device),
            StepNoise::draw(&mut noise, 2, L, false, &device).unwrap(),
        );
        let prev = read_ints(sampler.step(input).unwrap().prev_sample);
        let mask_len = sampler.schedule().mask_len(L, step, 1.0).unwrap();
        for row in 0..2 {
            let before = masked(&sample[row * L..(row + 1) * L]);
            let expected = mask_len.min(before - 1).max(1);
            assert_eq!(
                masked(&prev[row * L..(row + 1) * L]),
                expected,
                "step {step}"
            );
        }
        sample = prev;
    }
}

#[test]
fn samples_by_inverse_cdf() {
    // p = [0.1, 0.2, 0.3, 0.4] at one position: u picks the first k with cumsum > u.
    let device = device();
    let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|v| v.ln()).collect();
    let sampler = Sampler::new(
        9,
        Schedule::new(MaskSchedule::Cosine, 1, Temperature::default()).unwrap(),
    );
    for (u, expected) in [
        (0.0, 0),
        (0.05, 0),
        (0.15, 1),
        (0.25, 1),
        (0.35, 2),
        (0.65, 3),
        (0.99, 3),
        (1.0, 3),
    ] {
        let mut noise = ReplayNoise::new(vec![u]).unwrap();
        let input = StepInput::new(
            0,
            Tensor::from_data(TensorData::new(logits.clone(), [1, 4, 1, 1]), &device),
            ints(vec![9], [1, 1], &device),
            StepNoise::draw(&mut noise, 1, 1, true, &device).unwrap(),
        );
        let out = sampler.step(input).unwrap();
        assert_eq!(
            read_ints(out.pred_original_sample),
            vec![expected],
            "u = {u}"
        );
        assert_eq!(read_ints(out.prev_sample), vec![expected]);
    }
}

#[test]
fn bad_inputs_are_errors() {
    let device = device();
    let sampler = Sampler::new(
        MASK,
        Schedule::new(MaskSchedule::Cosine, 4, Temperature::default()).unwrap(),
    );
    let mask = i64::from(MASK);
    let logits = floats(vec![0f32; CODEBOOK * L], 1, &device);
    let sample = ints(vec![mask; L], [1, L], &device);
    let noise = || StepNoise::draw(&mut SeededNoise::new(0), 1, L, false, &device).unwrap();
    let input = || StepInput::new(0, logits.clone(), sample.clone(), noise());

    assert!(matches!(
        Schedule::new(MaskSchedule::Cosine, 0, Temperature::default()),
        Err(SamplerError::ZeroSteps)
    ));
    let mut bad = input();
    bad.step_index = 4;
    assert!(matches!(
        sampler.step(bad),
        Err(SamplerError::StepOutOfRange { index: 4, steps: 4 })
    ));
    let mut bad = input();
    bad.sample = ints(vec![mask; L - 1], [1, L - 1], &device);
    assert!(matches!(
        sampler.step(bad),
        Err(SamplerError::ShapeMismatch { .. })
    ));
    let mut bad = input();
    bad.noise.gumbel = None;
    assert!(matches!(
        sampler.step(bad),
        Err(SamplerError::InvalidParameter { name: "noise", .. })
    ));
    let mut bad = input();
    bad.starting_mask_ratio = StartingRatio::All(1.5);
    assert!(matches!(
        sampler.step(bad),
        Err(SamplerError::InvalidParameter {
            name: "starting_mask_ratio",
            ..
        })
    ));
    let mut bad = input();
    bad.starting_mask_ratio = StartingRatio::PerRow(vec![1.0, 1.0]);
    assert!(matches!(
        sampler.step(bad),
        Err(SamplerError::LengthMismatch { .. })
    ));

    let hold = RegionHold {
        threshold: 1.5,
        scores: Tensor::full([1, L], 0.1, &device),
        reference: ints(vec![0; L], [1, L], &device),
    };
    let mut bad = input();
    bad.region_hold = Some(hold.clone());
    assert!(matches!(
        sampler.step(bad),
        Err(SamplerError::InvalidParameter {
            name: "threshold",
            ..
        })
    ));
    let mut bad = input();
    bad.region_hold = Some(RegionHold {
        threshold: 0.5,
        scores: Tensor::full([1, L / 2], 0.1, &device),
        ..hold.clone()
    });
    assert!(matches!(
        sampler.step(bad),
        Err(SamplerError::ShapeMismatch { .. })
    ));
    let mut bad = input();
    bad.region_hold = Some(RegionHold {
        threshold: 0.5,
        reference: ints(vec![0; L - 1], [1, L - 1], &device),
        ..hold.clone()
    });
    assert!(matches!(
        sampler.step(bad),
        Err(SamplerError::ShapeMismatch { .. })
    ));
    // Reference tokens outside the codebook at held positions: found on the device and
    // reported by `Faults::check`.
    let mut bad = input();
    let mut reference = vec![0; L];
    reference[7] = mask;
    bad.region_hold = Some(RegionHold {
        threshold: 0.5,
        reference: ints(reference, [1, L], &device),
        ..hold
    });
    let out = sampler.step(bad).unwrap();
    assert!(matches!(
        out.faults.check(),
        Err(SamplerError::TokenOutOfRange { token, batch: 0, position: 7, .. }) if token == mask
    ));

    let mut short = ReplayNoise::new(vec![0.5; L]).unwrap();
    assert!(matches!(
        StepNoise::draw(&mut short, 1, L, false, &device),
        Err(NoiseError::Exhausted { .. })
    ));

    let mut values = vec![0f32; CODEBOOK * L];
    values[3 * L + 5] = f32::NAN;
    let mut bad = input();
    bad.logits = floats(values, 1, &device);
    let out = sampler.step(bad).unwrap();
    assert!(matches!(
        out.faults.clone().check(),
        Err(SamplerError::InvalidLogits {
            batch: 0,
            position: 5
        })
    ));
    // Faults merge: the earlier step's fault wins, a clean step keeps it.
    let clean = sampler.step(input()).unwrap().faults;
    clean.clone().check().unwrap();
    assert!(matches!(
        clean.merge(out.faults.clone()).check(),
        Err(SamplerError::InvalidLogits { position: 5, .. })
    ));
}

#[test]
fn reads_the_tiny_model_scheduler_config() {
    let config = SchedulerConfig::from_model_dir(&editmgt_testkit::model_dir()).expect("config");
    let text = std::fs::read_to_string(
        editmgt_testkit::model_dir().join("scheduler/scheduler_config.json"),
    )
    .unwrap();
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        u64::from(config.mask_token_id),
        raw["mask_token_id"].as_u64().unwrap()
    );
    assert_eq!(
        config.masking_schedule,
        raw["masking_schedule"].as_str().unwrap()
    );
    assert!(config.masking().is_ok());
}

#[test]
fn refuses_an_unknown_masking_schedule() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("scheduler")).unwrap();
    std::fs::write(
        dir.path().join("scheduler/scheduler_config.json"),
        r#"{"mask_token_id": 8255, "masking_schedule": "exponential"}"#,
    )
    .unwrap();
    let err = SchedulerConfig::from_model_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("masking_schedule"), "{err}");
    assert!(Sampler::from_model_dir(dir.path(), 4, Temperature::default()).is_err());
    let missing = SchedulerConfig::from_model_dir(&dir.path().join("nowhere"));
    assert!(missing.is_err());
}

#[test]
fn starting_ratio_of_mask_mode() {
    let sampler = Sampler::new(
        MASK,
        Schedule::new(MaskSchedule::Cosine, 2, Temperature::default()).unwrap(),
    );
    assert_eq!(sampler.starting_mask_ratio(&[MASK, 1, 2, MASK]), 0.5);
    assert_eq!(sampler.starting_mask_ratio(&[]), 0.0);
}
