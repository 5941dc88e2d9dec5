//! Parity with the reference scheduler step on `cases/sampler.safetensors`, replaying the
//! recorded uniforms. Every case parameter comes from the fixture's `meta`.

use editmgt_sampler::{
    Logits, RegionHold, ReplayNoise, Sampler, SchedulerConfig, StepInput, StepOutput, Temperature,
    Workspace,
};
use editmgt_testkit::{Array, Case, model_dir};
use serde_json::Value;

/// Required share of identical tokens (fixtures README: ">= 99.9% of tokens identical").
const REQUIRED: f64 = 0.999;

fn tokens(a: Array<i64>) -> Vec<u32> {
    a.data
        .into_iter()
        .map(|t| u32::try_from(t).expect("token ids are non-negative"))
        .collect()
}

fn temperature(v: &Value) -> Temperature {
    match v {
        Value::Array(pair) if pair.len() == 2 => Temperature::Range(
            pair[0].as_f64().expect("temperature") as f32,
            pair[1].as_f64().expect("temperature") as f32,
        ),
        Value::Number(t) => Temperature::Scalar(t.as_f64().expect("temperature") as f32),
        other => panic!("unrecognised temperature {other}"),
    }
}

fn usize_of(meta: &Value, key: &str) -> usize {
    meta[key]
        .as_u64()
        .unwrap_or_else(|| panic!("sampler meta case has no `{key}`")) as usize
}

fn f32_of(meta: &Value, key: &str) -> f32 {
    meta[key]
        .as_f64()
        .unwrap_or_else(|| panic!("sampler meta case has no `{key}`")) as f32
}

/// One fixture case's inputs and expected outputs.
struct Fixture {
    sampler: Sampler,
    step_index: usize,
    threshold: f32,
    starting: f32,
    logits: Vec<f32>,
    dims: [usize; 4],
    sample: Vec<u32>,
    reference: Vec<u32>,
    scores: Vec<f32>,
    score_side: usize,
    draws: Vec<Vec<f32>>,
    expected_prev: Vec<u32>,
    expected_pred: Vec<u32>,
}

fn load_cases() -> Vec<Fixture> {
    let case = Case::open("sampler");
    let config = SchedulerConfig::from_model_dir(&model_dir()).expect("scheduler config");
    let cases = case.meta["cases"]
        .as_array()
        .expect("sampler meta has `cases`");
    assert!(!cases.is_empty(), "no sampler cases");
    cases
        .iter()
        .enumerate()
        .map(|(i, meta)| {
            let steps = usize_of(meta, "steps");
            let step_index = usize_of(meta, "step_index");
            let sampler = Sampler::from_config(&config, steps, temperature(&meta["temperature"]))
                .expect("sampler");
            assert_eq!(
                sampler.schedule().timestep(step_index).unwrap(),
                usize_of(meta, "timestep"),
                "case {i}: timestep of step {step_index}"
            );
            let logits = case.f32(&format!("{i}.logits"));
            let dims: [usize; 4] = logits.shape[..].try_into().expect("logits [B, C, H, W]");
            assert_eq!(dims[2] * dims[3], usize_of(meta, "L"), "case {i}: L");
            let scores = case.f32(&format!("{i}.scores32"));
            let score_side = (scores.shape[1] as f64).sqrt().round() as usize;
            assert_eq!(score_side * score_side, scores.shape[1]);
            let draws = (0..usize_of(meta, "uniform_draws"))
                .map(|k| case.f32(&format!("{i}.uniform{k}")).data)
                .collect();
            Fixture {
                sampler,
                step_index,
                threshold: f32_of(meta, "local_guidance"),
                starting: f32_of(meta, "starting_mask_ratio"),
                logits: logits.data,
                dims,
                sample: tokens(case.i64(&format!("{i}.sample"))),
                reference: tokens(case.i64(&format!("{i}.reference"))),
                scores: scores.data,
                score_side,
                draws,
                expected_prev: tokens(case.i64(&format!("{i}.prev_sample"))),
                expected_pred: tokens(case.i64(&format!("{i}.pred_original_sample"))),
            }
        })
        .collect()
}

fn identical(a: &[u32], b: &[u32]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x == y).count()
}

/// Runs a fixture case `copies` times side by side as one batch (rows identical, noise
/// drawn per row in contract order).
fn run(f: &Fixture, copies: usize) -> StepOutput {
    let [b, c, h, w] = f.dims;
    let rep = |v: &[f32]| v.repeat(copies);
    let rep_u = |v: &[u32]| v.repeat(copies);
    let logits = rep(&f.logits);
    let sample = rep_u(&f.sample);
    let reference = rep_u(&f.reference);
    let scores = rep(&f.scores);
    let mut noise = ReplayNoise::from_draws(f.draws.iter().map(|d| d.repeat(copies))).unwrap();
    let input = StepInput {
        step_index: f.step_index,
        logits: Logits::new(&logits, b * copies, c, h, w).unwrap(),
        sample: &sample,
        starting_mask_ratio: f.starting,
        region_hold: Some(RegionHold {
            threshold: f.threshold,
            scores: &scores,
            score_height: f.score_side,
            score_width: f.score_side,
            reference: &reference,
        }),
    };
    let out = f
        .sampler
        .step(&input, &mut noise, &mut Workspace::default())
        .expect("step");
    assert_eq!(
        noise.remaining(),
        0,
        "the step must consume every recorded uniform"
    );
    out
}

#[test]
fn sampler_matches_reference() {
    let fixtures = load_cases();
    let mut failures = Vec::new();
    for (i, f) in fixtures.iter().enumerate() {
        let out = run(f, 1);
        let n = f.expected_prev.len();
        let same_prev = identical(&out.prev_sample, &f.expected_prev);
        let same_pred = identical(&out.pred_original_sample, &f.expected_pred);
        println!(
            "parity sampler case {i} (step {} of {}, threshold {}, starting ratio {}): \
             prev_sample {same_prev}/{n} identical, pred_original_sample {same_pred}/{n} identical",
            f.step_index,
            f.sampler.schedule().num_steps(),
            f.threshold,
            f.starting
        );
        for (what, same) in [
            ("prev_sample", same_prev),
            ("pred_original_sample", same_pred),
        ] {
            if (same as f64) < REQUIRED * n as f64 {
                failures.push(format!("case {i} {what}: {same}/{n}"));
            }
        }
    }
    assert!(failures.is_empty(), "below 99.9% identical: {failures:?}");
}

#[test]
fn batch_rows_are_independent() {
    for (i, f) in load_cases().iter().enumerate() {
        let single = run(f, 1);
        let batched = run(f, 3);
        let n = single.prev_sample.len();
        for row in 0..3 {
            assert_eq!(
                &batched.prev_sample[row * n..(row + 1) * n],
                &single.prev_sample[..],
                "case {i} row {row}: prev_sample"
            );
            assert_eq!(
                &batched.pred_original_sample[row * n..(row + 1) * n],
                &single.pred_original_sample[..],
                "case {i} row {row}: pred_original_sample"
            );
        }
    }
}

#[test]
fn result_does_not_depend_on_thread_count() {
    let fixtures = load_cases();
    let parallel: Vec<_> = fixtures.iter().map(|f| run(f, 2)).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let serial: Vec<_> = pool.install(|| fixtures.iter().map(|f| run(f, 2)).collect());
    assert_eq!(parallel, serial);
}
