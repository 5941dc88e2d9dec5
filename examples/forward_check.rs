//! One transformer forward at whatever size the model folder has, written out with its inputs
//! so the PyTorch reference can run the same forward and compare the logits (the real-size
//! correctness check of `benches/realscale.sh`; `benches/pytorch/bench_reference.py --only
//! forward_check` reads the file).
//!
//! `cargo run --release -p editmgt-examples --example forward_check -- MODEL OUT.safetensors [SEED]`
//!
//! Batch 1 at a 64x64 token grid (a 1024x1024 edit), 256 text rows: random tokens with 60% of
//! them masked, a random reference grid at strength 1.1, Gaussian text states and pooled vector,
//! timestep 500, in f32. `OUT` holds `tokens`, `reference` (i64), `encoder_hidden_states`,
//! `pooled`, `micro_conds`, `timestep`, `strength` and our `logits` (f32).

use std::collections::BTreeMap;

use editmgt_core::FloatType;
use editmgt_core::rng::SplitMix64;
use editmgt_examples::arg_or;
use editmgt_mgt::{MgtInput, MgtTransformer};
use editmgt_pipeline::{Device, DeviceSpec};
use safetensors::{Dtype, tensor::TensorView};

const GRID: usize = 64;
const TEXT: usize = 256;
const TIMESTEP: f32 = 500.0;
const STRENGTH: f32 = 1.1;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = arg_or(1, editmgt_examples::tiny_model());
    let out = arg_or(2, "forward_check.safetensors".into());
    let seed: u64 = std::env::args()
        .nth(3)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(0);
    let device = DeviceSpec::Cpu.device()?;
    let started = std::time::Instant::now();
    let mgt = MgtTransformer::load(&model, &device, FloatType::F32)?;
    let config = mgt.config().clone();
    println!(
        "loaded the transformer in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut rng = SplitMix64::new(seed);
    let mask_id = (config.vocab_size - 1) as i64;
    let cells = GRID * GRID;
    let tokens: Vec<i64> = (0..cells)
        .map(|_| {
            let token = (rng.next_u64() % config.codebook_size as u64) as i64;
            if rng.next_f64() < 0.6 { mask_id } else { token }
        })
        .collect();
    let reference: Vec<i64> = (0..cells)
        .map(|_| (rng.next_u64() % config.codebook_size as u64) as i64)
        .collect();
    let mut gaussian = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                // Box-Muller from two uniforms in (0, 1].
                let (u, v) = (1.0 - rng.next_f64(), rng.next_f64());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect()
    };
    let states = gaussian(TEXT * config.joint_attention_dim);
    let pooled = gaussian(config.pooled_projection_dim);
    let micro = vec![1024.0f32, 1024.0, 0.0, 0.0, 6.0];

    let int = |values: &[i64], shape: [usize; 3], device: &Device| {
        burn::tensor::Tensor::<3, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(values.to_vec(), shape),
            device,
        )
    };
    let input = MgtInput::new(
        int(&tokens, [1, GRID, GRID], &device),
        burn::tensor::Tensor::<3>::from_data(
            burn::tensor::TensorData::new(states.clone(), [1, TEXT, config.joint_attention_dim]),
            &device,
        ),
        burn::tensor::Tensor::<2>::from_data(
            burn::tensor::TensorData::new(pooled.clone(), [1, config.pooled_projection_dim]),
            &device,
        ),
        burn::tensor::Tensor::<2>::from_data(
            burn::tensor::TensorData::new(micro.clone(), [1, 5]),
            &device,
        ),
        TIMESTEP,
    )
    .with_reference(int(&reference, [1, GRID, GRID], &device), STRENGTH);
    let started = std::time::Instant::now();
    let logits = mgt.forward(input)?.logits;
    let dims = logits.dims();
    let logits: Vec<f32> = logits.into_data().convert::<f32>().try_into_vec()?;
    println!(
        "forward in {:.1} s, logits {dims:?}",
        started.elapsed().as_secs_f64()
    );

    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let ints = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let entries: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
        ("tokens", Dtype::I64, vec![1, GRID, GRID], ints(&tokens)),
        (
            "reference",
            Dtype::I64,
            vec![1, GRID, GRID],
            ints(&reference),
        ),
        (
            "encoder_hidden_states",
            Dtype::F32,
            vec![1, TEXT, config.joint_attention_dim],
            bytes(&states),
        ),
        (
            "pooled",
            Dtype::F32,
            vec![1, config.pooled_projection_dim],
            bytes(&pooled),
        ),
        ("micro_conds", Dtype::F32, vec![1, 5], bytes(&micro)),
        ("timestep", Dtype::F32, vec![1], bytes(&[TIMESTEP])),
        ("strength", Dtype::F32, vec![1], bytes(&[STRENGTH])),
        ("logits", Dtype::F32, dims.to_vec(), bytes(&logits)),
    ];
    let mut views = BTreeMap::new();
    for (name, dtype, shape, data) in &entries {
        views.insert(
            name.to_string(),
            TensorView::new(*dtype, shape.clone(), data)?,
        );
    }
    safetensors::serialize_to_file(views, None, &out)?;
    println!("wrote {}", out.display());
    Ok(())
}
