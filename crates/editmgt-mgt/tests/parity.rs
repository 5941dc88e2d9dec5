//! Parity with the PyTorch reference on the tiny model (`cases/mgt.safetensors`).

mod common;

use common::{Inputs, case_named, cases, tiny_model};
use editmgt_mgt::{CaptureRequest, Positions};
use editmgt_testkit::{Case, assert_close, relative_max_error, to_f32_vec};

const TOL: f32 = 1e-4;

/// Logits and every captured map of every case, on one model instance: the cases run in key
/// order (`edit`, `edit_strength`, `t2i`), so `t2i` after `edit_strength` also shows that the
/// strength is not left on the model.
#[test]
fn logits_and_captures_match_the_reference() {
    let device = editmgt_testkit::device();
    let case = Case::open("mgt");
    let model = tiny_model(&device);
    let inputs = Inputs::open(&case, &device);
    for params in cases(&case) {
        let input = inputs
            .input(&model, &params, &device)
            .with_capture(CaptureRequest::blocks(params.capture_blocks.clone()));
        let out = model.forward(input).expect("forward");
        let name = &params.name;
        assert_close(
            &format!("{name}.logits"),
            &to_f32_vec(out.logits.clone()),
            &case.f32(&format!("{name}.logits")).data,
            TOL,
        );
        assert_eq!(out.captures.len(), params.capture_blocks.len());
        for &block in &params.capture_blocks {
            let key = format!("{name}.text_to_image_headmean.block{block}");
            let map = out.capture(block).expect("captured").clone();
            assert_eq!(map.dims().to_vec(), case.f32(&key).shape);
            assert_close(&key, &to_f32_vec(map), &case.f32(&key).data, TOL);
        }
    }
}

/// The positions the model builds by itself are the reference pipeline's ids.
#[test]
fn standard_positions_are_the_reference_ids() {
    let device = editmgt_testkit::device();
    let case = Case::open("mgt");
    let model = tiny_model(&device);
    let inputs = Inputs::open(&case, &device);
    let [_, h, w] = inputs.tokens.dims();
    let text = inputs.encoder_hidden_states.dims()[1];
    let standard: Positions = model.positions(text, h, w);
    assert_eq!(standard, inputs.positions);

    // And a forward without an explicit table gives the same logits.
    let params = case_named(&case, "edit_strength");
    let mut input = inputs.input(&model, &params, &device);
    input.rotary = None;
    let out = model.forward(input).expect("forward");
    assert_close(
        "edit_strength.logits (standard positions)",
        &to_f32_vec(out.logits),
        &case.f32("edit_strength.logits").data,
        TOL,
    );
}

/// Double-stream capture with strength != 1 (the reference crashes there). Block 0's input does
/// not depend on the strength, so capturing it with the `edit` inputs at strength 1.1 must give
/// the reference's `edit` map of block 0 (computed at strength 1).
#[test]
fn double_block_capture_works_with_strength() {
    let device = editmgt_testkit::device();
    let case = Case::open("mgt");
    let model = tiny_model(&device);
    let inputs = Inputs::open(&case, &device);
    let mut params = case_named(&case, "edit");
    assert!(params.reference, "the edit case injects the reference");
    assert!(params.capture_blocks.contains(&0));
    params.strength = 1.1;
    let out = model
        .forward(
            inputs
                .input(&model, &params, &device)
                .with_capture(CaptureRequest::blocks([0, 1])),
        )
        .expect("forward");
    let key = "edit.text_to_image_headmean.block0";
    assert_close(
        &format!("{key} (strength 1.1)"),
        &to_f32_vec(out.capture(0).unwrap().clone()),
        &case.f32(key).data,
        TOL,
    );
    // Block 1 (double-stream, after a strength-biased block) is a proper distribution part.
    let map = to_f32_vec(out.capture(1).unwrap().clone());
    let n = 1024;
    for row in map.chunks_exact(n) {
        let sum: f32 = row.iter().sum();
        assert!(row.iter().all(|p| *p >= 0.0) && sum <= 1.0 + 1e-5 && sum > 0.0);
    }
}

/// A subset of text rows and batch rows gives exactly those rows of the full maps.
#[test]
fn capture_subsets_select_rows() {
    let device = editmgt_testkit::device();
    let case = Case::open("mgt");
    let model = tiny_model(&device);
    let inputs = Inputs::open(&case, &device);
    let params = case_named(&case, "edit_strength");
    let blocks = [0usize, 3];
    let full = model
        .forward(
            inputs
                .input(&model, &params, &device)
                .with_capture(CaptureRequest::blocks(blocks)),
        )
        .expect("forward");
    let text_rows = [7usize, 0, 255];
    let subset = model
        .forward(
            inputs.input(&model, &params, &device).with_capture(
                CaptureRequest::blocks(blocks)
                    .with_text_rows(text_rows)
                    .with_batch_rows([1]),
            ),
        )
        .expect("forward");
    // Selecting rows does not change the logits.
    assert!(
        relative_max_error(
            &to_f32_vec(subset.logits.clone()),
            &to_f32_vec(full.logits.clone())
        ) == 0.0
    );
    for block in blocks {
        let full_map = full.capture(block).unwrap().clone();
        let [_, t, n] = full_map.dims();
        let full_map = to_f32_vec(full_map);
        let sub = subset.capture(block).unwrap().clone();
        assert_eq!(sub.dims(), [1, text_rows.len(), n]);
        let sub = to_f32_vec(sub);
        let expected: Vec<f32> = text_rows
            .iter()
            .flat_map(|&r| full_map[(t + r) * n..(t + r + 1) * n].to_vec())
            .collect();
        assert_close(&format!("subset block{block}"), &sub, &expected, 1e-6);
    }
}
