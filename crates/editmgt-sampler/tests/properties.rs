//! Properties of the step on random inputs (any batch, grids not a multiple of the tile width,
//! region hold with a coarser score grid, high temperatures), and its refusals of bad input.

use editmgt_attention::resize_bicubic;
use editmgt_sampler::{
    Logits, MaskSchedule, NoiseError, RegionHold, ReplayNoise, Sampler, SamplerError, Schedule,
    SchedulerConfig, SeededNoise, StepInput, Temperature, Workspace,
};
use ndarray::ArrayView2;

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

fn random_tokens(rng: &mut SeededNoise, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| (rng.next_uniform() * CODEBOOK as f32) as u32 % CODEBOOK as u32)
        .collect()
}

fn upsampled(scores: &[f32], batch: usize, sh: usize, sw: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for b in 0..batch {
        let grid =
            ArrayView2::from_shape((sh, sw), &scores[b * sh * sw..(b + 1) * sh * sw]).unwrap();
        out.extend(resize_bicubic(grid, H, W).unwrap().iter());
    }
    out
}

fn masked(tokens: &[u32]) -> usize {
    tokens.iter().filter(|&&t| t == MASK).count()
}

/// Runs full edit loops and checks every step.
fn check_loops(temperature: Temperature, schedule: MaskSchedule, seeds: std::ops::Range<u64>) {
    let batch = 3;
    let (sh, sw) = (4, 3);
    for seed in seeds {
        let mut rng = SeededNoise::new(seed);
        let steps = 2 + (seed as usize % 6);
        let sampler = Sampler::new(MASK, Schedule::new(schedule, steps, temperature).unwrap());
        let reference = random_tokens(&mut rng, batch * L);
        let scores: Vec<f32> = (0..batch * sh * sw).map(|_| rng.next_uniform()).collect();
        let up = upsampled(&scores, batch, sh, sw);
        let threshold = if seed % 3 == 0 { 0.0 } else { 0.45 };
        // Half the runs start from all mask tokens, half in mask mode.
        let mut sample = if seed % 2 == 0 {
            vec![MASK; batch * L]
        } else {
            reference
                .iter()
                .map(|&t| if rng.next_uniform() < 0.4 { MASK } else { t })
                .collect()
        };
        let starting = masked(&sample) as f32 / sample.len() as f32;
        let mut noise = SeededNoise::new(seed ^ 0xABCD);
        let mut ws = Workspace::default();
        for step in 0..steps {
            let scale = [0.5f32, 4.0, 30.0][step % 3];
            let logits = random_logits(&mut rng, batch, scale);
            let input = StepInput {
                step_index: step,
                logits: Logits::new(&logits, batch, CODEBOOK, H, W).unwrap(),
                sample: &sample,
                starting_mask_ratio: starting,
                region_hold: Some(RegionHold {
                    threshold,
                    scores: &scores,
                    score_height: sh,
                    score_width: sw,
                    reference: &reference,
                }),
            };
            let out = sampler.step(&input, &mut noise, &mut ws).unwrap();
            for i in 0..batch * L {
                let (s, prev, pred) = (sample[i], out.prev_sample[i], out.pred_original_sample[i]);
                if s != MASK {
                    assert_eq!(
                        prev, s,
                        "seed {seed} step {step}: known position {i} changed"
                    );
                    assert_eq!(pred, s, "seed {seed} step {step}: known prediction {i}");
                } else {
                    assert!((pred as usize) < CODEBOOK, "prediction {pred} at {i}");
                    if threshold > 0.0 && up[i] < threshold {
                        assert_eq!(pred, reference[i], "seed {seed} step {step}: held {i}");
                    }
                    assert!(prev == MASK || prev == pred);
                }
            }
            for row in 0..batch {
                let r = row * L..(row + 1) * L;
                let before = masked(&sample[r.clone()]);
                let after = masked(&out.prev_sample[r]);
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
            sample = out.prev_sample;
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
fn samples_by_inverse_cdf() {
    // p = [0.1, 0.2, 0.3, 0.4] at one position: u picks the first k with cumsum > u.
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
        let sample = [9u32];
        let input = StepInput::new(0, Logits::new(&logits, 1, 4, 1, 1).unwrap(), &sample);
        let mut noise = ReplayNoise::new(vec![u]).unwrap();
        let out = sampler
            .step(&input, &mut noise, &mut Workspace::default())
            .unwrap();
        assert_eq!(out.pred_original_sample, vec![expected], "u = {u}");
        assert_eq!(out.prev_sample, vec![expected]);
    }
}

#[test]
fn bad_inputs_are_errors() {
    let sampler = Sampler::new(
        MASK,
        Schedule::new(MaskSchedule::Cosine, 4, Temperature::default()).unwrap(),
    );
    let logits = vec![0f32; CODEBOOK * L];
    let sample = vec![MASK; L];
    let view = Logits::new(&logits, 1, CODEBOOK, H, W).unwrap();
    let mut ws = Workspace::default();
    let mut noise = SeededNoise::new(0);

    assert!(matches!(
        Logits::new(&logits, 1, CODEBOOK, H, W + 1),
        Err(SamplerError::LengthMismatch { .. })
    ));
    assert!(matches!(
        Logits::new(&logits, 0, CODEBOOK, H, W),
        Err(SamplerError::ZeroDimension(_))
    ));
    assert!(matches!(
        Schedule::new(MaskSchedule::Cosine, 0, Temperature::default()),
        Err(SamplerError::ZeroSteps)
    ));

    let run = |input: StepInput<'_>,
               noise: &mut dyn editmgt_sampler::NoiseSource,
               ws: &mut Workspace| { sampler.step(&input, noise, ws) };
    let mut input = StepInput::new(4, view, &sample);
    assert!(matches!(
        run(input, &mut noise, &mut ws),
        Err(SamplerError::StepOutOfRange { index: 4, steps: 4 })
    ));
    input.step_index = 0;
    input.sample = &sample[1..];
    assert!(matches!(
        run(input, &mut noise, &mut ws),
        Err(SamplerError::LengthMismatch { .. })
    ));
    input.sample = &sample;
    input.starting_mask_ratio = 1.5;
    assert!(matches!(
        run(input, &mut noise, &mut ws),
        Err(SamplerError::InvalidParameter {
            name: "starting_mask_ratio",
            ..
        })
    ));
    input.starting_mask_ratio = 1.0;

    let reference = vec![0u32; L];
    let scores = vec![0.1f32; L];
    let hold = RegionHold {
        threshold: 1.5,
        scores: &scores,
        score_height: H,
        score_width: W,
        reference: &reference,
    };
    input.region_hold = Some(hold);
    assert!(matches!(
        run(input, &mut noise, &mut ws),
        Err(SamplerError::InvalidParameter {
            name: "threshold",
            ..
        })
    ));
    input.region_hold = Some(RegionHold {
        threshold: 0.5,
        score_height: H * 2,
        score_width: W / 2,
        ..hold
    });
    assert!(matches!(
        run(input, &mut noise, &mut ws),
        Err(SamplerError::ScoreGrid { .. })
    ));
    input.region_hold = Some(RegionHold {
        threshold: 0.5,
        reference: &reference[1..],
        ..hold
    });
    assert!(matches!(
        run(input, &mut noise, &mut ws),
        Err(SamplerError::LengthMismatch { .. })
    ));
    let masked_reference = vec![MASK; L];
    input.region_hold = Some(RegionHold {
        threshold: 0.5,
        reference: &masked_reference,
        ..hold
    });
    assert!(matches!(
        run(input, &mut noise, &mut ws),
        Err(SamplerError::TokenOutOfRange { .. })
    ));
    input.region_hold = None;

    let mut short = ReplayNoise::new(vec![0.5; L]).unwrap();
    assert!(matches!(
        run(input, &mut short, &mut ws),
        Err(SamplerError::Noise(NoiseError::Exhausted { .. }))
    ));

    let mut bad = logits.clone();
    bad[3 * L + 5] = f32::NAN;
    let bad_view = Logits::new(&bad, 1, CODEBOOK, H, W).unwrap();
    let input = StepInput::new(0, bad_view, &sample);
    assert!(matches!(
        run(input, &mut noise, &mut ws),
        Err(SamplerError::InvalidLogits {
            batch: 0,
            position: 5
        })
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
