//! Parity with the reference's consolidation pipeline on `cases/consolidation.safetensors`:
//! raw scores -> rescale -> adaptive smoothing (strength 1) -> bicubic 32 -> 64, on the test
//! device (`$EDITMGT_TEST_DEVICE`).

use editmgt_attention::{AdaptiveSmoothing, ScoreMap};
use editmgt_testkit::{Case, assert_close, device};

const TOLERANCE: f32 = 1e-5;

/// A square grid side for `n` tokens.
fn side(n: usize) -> usize {
    let s = (n as f64).sqrt().round() as usize;
    assert_eq!(s * s, n, "{n} tokens are not a square grid");
    s
}

fn values(map: &ScoreMap) -> Vec<f32> {
    map.to_vec().expect("read back")
}

#[test]
fn consolidation_matches_reference() {
    let device = device();
    let case = Case::open("consolidation");
    let count = case.meta["count"]
        .as_u64()
        .expect("consolidation meta has `count`") as usize;
    assert!(count > 0, "no consolidation cases");
    for i in 0..count {
        let raw = case.f32(&format!("{i}.raw"));
        let [batch, n] = raw.shape[..] else {
            panic!("{i}.raw has shape {:?}, expected [B, N]", raw.shape)
        };
        let s = side(n);
        let map = ScoreMap::from_flat(raw.data, batch, s, s, &device).expect("raw map");

        let rescaled = map.rescale();
        let expected = case.f32(&format!("{i}.rescaled"));
        assert_close(
            &format!("case {i} rescaled"),
            &values(&rescaled),
            &expected.data,
            TOLERANCE,
        );

        let smoothed = rescaled
            .smooth(&AdaptiveSmoothing::default())
            .expect("smoothing");
        let expected = case.f32(&format!("{i}.smoothed"));
        assert_close(
            &format!("case {i} smoothed"),
            &values(&smoothed),
            &expected.data,
            TOLERANCE,
        );

        let expected = case.f32(&format!("{i}.upsampled"));
        let factor = side(expected.shape[1]) / s;
        let upsampled = smoothed.upsample(factor).expect("upsampling");
        assert_close(
            &format!("case {i} upsampled"),
            &values(&upsampled),
            &expected.data,
            TOLERANCE,
        );

        // Also chained from the reference's own intermediate values, so each step is checked
        // on its own input.
        let smoothed_ref = ScoreMap::from_flat(
            case.f32(&format!("{i}.rescaled")).data,
            batch,
            s,
            s,
            &device,
        )
        .unwrap()
        .smooth(&AdaptiveSmoothing::default())
        .unwrap();
        assert_close(
            &format!("case {i} smoothed (from reference rescaled)"),
            &values(&smoothed_ref),
            &case.f32(&format!("{i}.smoothed")).data,
            TOLERANCE,
        );
        let upsampled_ref = ScoreMap::from_flat(
            case.f32(&format!("{i}.smoothed")).data,
            batch,
            s,
            s,
            &device,
        )
        .unwrap()
        .upsample(factor)
        .unwrap();
        assert_close(
            &format!("case {i} upsampled (from reference smoothed)"),
            &values(&upsampled_ref),
            &expected.data,
            TOLERANCE,
        );
    }
}

#[test]
fn batched_smoothing_equals_per_item() {
    let device = device();
    let case = Case::open("consolidation");
    let count = case.meta["count"].as_u64().expect("count") as usize;
    let mut data = Vec::new();
    let mut n = 0;
    let mut up = 0;
    for i in 0..count {
        let raw = case.f32(&format!("{i}.raw"));
        n = raw.shape[1];
        data.extend(raw.data);
        up = case.f32(&format!("{i}.upsampled")).shape[1];
    }
    let s = side(n);
    let batch = ScoreMap::from_flat(data, count, s, s, &device).unwrap();
    let out = values(
        &batch
            .rescale()
            .smooth(&AdaptiveSmoothing::default())
            .unwrap()
            .upsample(side(up) / s)
            .unwrap(),
    );
    for i in 0..count {
        let expected = case.f32(&format!("{i}.upsampled"));
        let got = &out[i * expected.data.len()..(i + 1) * expected.data.len()];
        assert_close(
            &format!("batched case {i} upsampled"),
            got,
            &expected.data,
            TOLERANCE,
        );
    }
}

/// The reference's captured maps (`cases/mgt.safetensors`, head-averaged text-to-image attention
/// of two blocks) consolidated and rescaled on the device agree with the same computation in
/// `f64` on the host.
#[test]
fn consolidating_captured_maps_keeps_precision() {
    use burn::tensor::{Tensor, TensorData};
    use editmgt_attention::{TextRows, consolidate};

    let device = device();
    let case = Case::open("mgt");
    let names: Vec<String> = case
        .names()
        .into_iter()
        .filter(|n| n.starts_with("edit.text_to_image_headmean.block"))
        .collect();
    assert!(!names.is_empty(), "mgt fixture has no captured maps");
    let maps: Vec<_> = names.iter().map(|n| case.f32(n)).collect();
    let [b, t, n] = maps[0].shape[..] else {
        panic!("captured maps are [B, T, N]")
    };
    let s = side(n);
    let tensors: Vec<Tensor<3>> = maps
        .iter()
        .map(|m| Tensor::from_data(TensorData::new(m.data.clone(), [b, t, n]), &device))
        .collect();
    let ours = consolidate(&tensors, &TextRows::all(), s, s)
        .unwrap()
        .rescale()
        .to_vec()
        .unwrap();
    let mut expected = Vec::new();
    for item in 0..b {
        let mut sums = vec![0f64; n];
        for m in &maps {
            for row in m.data[item * t * n..(item + 1) * t * n].chunks_exact(n) {
                for (acc, &v) in sums.iter_mut().zip(row) {
                    *acc += f64::from(v);
                }
            }
        }
        let means: Vec<f32> = sums
            .iter()
            .map(|v| (v / (maps.len() * t) as f64) as f32)
            .collect();
        let (lo, hi) = means
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        expected.extend(means.iter().map(|v| (v - lo) / ((hi - lo) + 1e-8)));
    }
    assert_close(
        "rescaled consolidation of captured maps",
        &ours,
        &expected,
        TOLERANCE,
    );
}
