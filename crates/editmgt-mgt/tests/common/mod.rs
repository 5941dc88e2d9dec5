//! Fixture inputs shared by the integration tests.
#![allow(dead_code)]

use burn::tensor::{Device, Int, Tensor};
use editmgt_mgt::{FloatType, MgtInput, MgtTransformer, Positions};
use editmgt_testkit::{Case, model_dir};
use serde_json::Value;

/// The tiny model from the fixture root.
pub fn tiny_model(device: &Device) -> MgtTransformer {
    MgtTransformer::load(&model_dir(), device, FloatType::F32)
        .unwrap_or_else(|e| panic!("cannot load the tiny transformer: {e}"))
}

/// The shared inputs of `cases/mgt.safetensors`.
pub struct Inputs {
    pub tokens: Tensor<3, Int>,
    pub reference: Tensor<3, Int>,
    pub encoder_hidden_states: Tensor<3>,
    pub pooled: Tensor<2>,
    pub micro_conds: Tensor<2>,
    pub positions: Positions,
}

fn ids(case: &Case, name: &str) -> Vec<[f32; 3]> {
    let a = case.f32(name);
    assert_eq!(a.shape.len(), 2, "{name} must be [rows, 3]");
    assert_eq!(a.shape[1], 3, "{name} must be [rows, 3]");
    a.data.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect()
}

impl Inputs {
    pub fn open(case: &Case, device: &Device) -> Self {
        Self {
            tokens: case.int_tensor::<3>("hidden_states", device),
            reference: case.int_tensor::<3>("reference_tokens", device),
            encoder_hidden_states: case.float_tensor::<3>("encoder_hidden_states", device),
            pooled: case.float_tensor::<2>("pooled_projections", device),
            micro_conds: case.float_tensor::<2>("micro_conds", device),
            positions: Positions::from_ids(ids(case, "txt_ids"), ids(case, "img_ids"))
                .expect("finite ids"),
        }
    }

    /// The forward input of one case (`reference`, `reference_strength`, `timestep` from meta).
    pub fn input(&self, model: &MgtTransformer, params: &CaseParams, device: &Device) -> MgtInput {
        let input = MgtInput::new(
            self.tokens.clone(),
            self.encoder_hidden_states.clone(),
            self.pooled.clone(),
            self.micro_conds.clone(),
            params.timestep,
        )
        .with_rotary(model.rotary_table(&self.positions, device));
        if params.reference {
            input.with_reference(self.reference.clone(), params.strength)
        } else {
            input
        }
    }
}

/// One case's parameters from the fixture's `meta`.
#[derive(Debug, Clone)]
pub struct CaseParams {
    pub name: String,
    pub reference: bool,
    pub strength: f32,
    pub timestep: f32,
    pub capture_blocks: Vec<usize>,
}

/// Every case of `meta.cases`, in key order.
pub fn cases(case: &Case) -> Vec<CaseParams> {
    let cases = case.meta["cases"]
        .as_object()
        .expect("mgt meta has a `cases` object");
    assert!(!cases.is_empty(), "mgt meta lists no cases");
    cases
        .iter()
        .map(|(name, p)| {
            let num = |key: &str| {
                p[key]
                    .as_f64()
                    .unwrap_or_else(|| panic!("case {name}: `{key}` is not a number"))
                    as f32
            };
            CaseParams {
                name: name.clone(),
                reference: p["reference"]
                    .as_bool()
                    .unwrap_or_else(|| panic!("case {name}: `reference` is not a bool")),
                strength: num("reference_strength"),
                timestep: num("timestep"),
                capture_blocks: p["capture_blocks"]
                    .as_array()
                    .unwrap_or_else(|| panic!("case {name}: no `capture_blocks`"))
                    .iter()
                    .map(|b: &Value| b.as_u64().expect("block index") as usize)
                    .collect(),
            }
        })
        .collect()
}

/// The parameters of the case called `name`.
pub fn case_named(case: &Case, name: &str) -> CaseParams {
    cases(case)
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("mgt meta has no case `{name}`"))
}
