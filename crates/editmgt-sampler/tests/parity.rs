//! Parity with the reference scheduler step on `cases/sampler.safetensors`, replaying the
//! recorded uniforms, on the test device (`$EDITMGT_TEST_DEVICE`). Every case parameter comes
//! from the fixture's `meta`.

use burn::tensor::{Device, Int, Tensor, TensorData};
use editmgt_attention::ScoreMap;
use editmgt_sampler::{
    RegionHold, ReplayNoise, Sampler, SchedulerConfig, StartingRatio, StepInput, StepNoise,
    Temperature,
};
use editmgt_testkit::{Array, Case, device, model_dir};
use serde_json::Value;

/// Required share of identical tokens (fixtures README: ">= 99.9% of tokens identical").
const REQUIRED: f64 = 0.999;

fn tokens(a: Array<i64>) -> Vec<i64> {
    a.data
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
#[derive(Clone)]
struct Fixture {
    sampler: Sampler,
    step_index: usize,
    threshold: f32,
    starting: f32,
    logits: Vec<f32>,
    dims: [usize; 4],
    sample: Vec<i64>,
    reference: Vec<i64>,
    scores: Vec<f32>,
    score_side: usize,
    draws: Vec<Vec<f32>>,
    expected_prev: Vec<i64>,
    expected_pred: Vec<i64>,
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

fn identical(a: &[i64], b: &[i64]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x == y).count()
}

fn ints(data: Vec<i64>, shape: [usize; 2], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn read(t: Tensor<2, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().try_to_vec().expect("tokens")
}

/// The step's outputs read back: `(prev_sample, pred_original_sample)`.
type Outputs = (Vec<i64>, Vec<i64>);

/// Runs a fixture case `copies` times side by side as one batch (rows identical, noise
/// drawn per row in contract order).
fn run(f: &Fixture, copies: usize, device: &Device) -> Outputs {
    let [b, c, h, w] = f.dims;
    let rows = b * copies;
    let l = h * w;
    let logits = Tensor::<4>::from_data(
        TensorData::new(f.logits.repeat(copies), [rows, c, h, w]),
        device,
    );
    let scores = ScoreMap::from_flat(
        f.scores.repeat(copies),
        rows,
        f.score_side,
        f.score_side,
        device,
    )
    .unwrap()
    .resize(h, w)
    .unwrap()
    .rows();
    let mut noise = ReplayNoise::from_draws(f.draws.iter().map(|d| d.repeat(copies))).unwrap();
    let last = f.sampler.schedule().is_last(f.step_index);
    let step_noise = StepNoise::draw(&mut noise, rows, l, last, device).unwrap();
    assert_eq!(
        noise.remaining(),
        0,
        "the step must consume every recorded uniform"
    );
    let mut input = StepInput::new(
        f.step_index,
        logits,
        ints(f.sample.repeat(copies), [rows, l], device),
        step_noise,
    );
    input.starting_mask_ratio = StartingRatio::All(f.starting);
    input.region_hold = Some(RegionHold {
        threshold: f.threshold,
        scores,
        reference: ints(f.reference.repeat(copies), [rows, l], device),
    });
    let out = f.sampler.step(input).expect("step");
    out.faults.check().expect("no faults");
    (read(out.prev_sample), read(out.pred_original_sample))
}

#[test]
fn sampler_matches_reference() {
    let device = device();
    let fixtures = load_cases();
    let mut failures = Vec::new();
    for (i, f) in fixtures.iter().enumerate() {
        let (prev, pred) = run(f, 1, &device);
        let n = f.expected_prev.len();
        let same_prev = identical(&prev, &f.expected_prev);
        let same_pred = identical(&pred, &f.expected_pred);
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
    let device = device();
    for (i, f) in load_cases().iter().enumerate() {
        let single = run(f, 1, &device);
        let batched = run(f, 3, &device);
        let n = single.0.len();
        for row in 0..3 {
            assert_eq!(
                &batched.0[row * n..(row + 1) * n],
                &single.0[..],
                "case {i} row {row}: prev_sample"
            );
            assert_eq!(
                &batched.1[row * n..(row + 1) * n],
                &single.1[..],
                "case {i} row {row}: pred_original_sample"
            );
        }
    }
}

#[test]
fn blocks_of_positions_give_the_same_step() {
    let device = device();
    for (i, f) in load_cases().iter().enumerate() {
        let whole = run(f, 2, &device);
        let [_, c, _, _] = f.dims;
        // Blocks of 7 positions (not a divisor of the grid).
        let blocked = Fixture {
            sampler: f.sampler.clone().with_block_elements(2 * c * 7),
            ..f.clone()
        };
        assert_eq!(run(&blocked, 2, &device), whole, "case {i}");
    }
}
