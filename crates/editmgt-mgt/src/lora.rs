//! Low-rank adapters (LoRA) on the attention projections, as peft adds them.
//!
//! An adapter of rank `r` on a linear layer `W` (`in -> out`) adds `scale * B A x`, with
//! `A [r, in]` (`lora_A.weight`), `B [out, r]` (`lora_B.weight`) and `scale = alpha / r`. The
//! base weights are not touched, so an adapter can be attached, removed or switched off per
//! stream.
//!
//! Which tokens see the adapters is [`LoraStreams`]: the reference trains edit models with the
//! adapters on the *reference* stream only (`lora_part_enable = True`: the image and joint
//! text/image streams run the plain projections, the same layers applied to the reference tokens
//! add the adapter); its pipeline applies them to every stream at inference
//! (`lora_part_enable = False`). Projections of the text stream of double-stream blocks
//! (`add_q_proj`, ...) are outside the reference's switch: their adapters apply to the text
//! always.
//!
//! Supported targets (peft's `target_modules`, matched by the last name segment):
//! `to_q`, `to_k`, `to_v` (double- and single-stream blocks), `to_out.0` (double-stream),
//! `add_q_proj`, `add_k_proj`, `add_v_proj`, `to_add_out` (double-stream text stream).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::module::linear;
use burn::tensor::{Device, Tensor};
use editmgt_core::bf16_products::linear as product;
use serde::{Deserialize, Serialize};

/// Which streams the adapters apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraStreams {
    /// Only the reference (source image) tokens: how the reference trains edit models
    /// (`lora_part_enable = True`). Without a reference the adapters have no effect.
    #[default]
    Reference,
    /// Every stream: the reference pipeline's default at inference (`lora_part_enable = False`),
    /// and the only mode that [`LoraAdapter::merge_into`] can reproduce in the base weights.
    All,
}

/// The LoRA target names this port supports, in peft's naming.
pub const SUPPORTED_TARGETS: [&str; 8] = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
];

/// One adapter: `scale * B A x` added to a linear layer's output.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// `A [r, in]` (peft `lora_A.weight`).
    pub lora_a: Param<Tensor<2>>,
    /// `B [out, r]` (peft `lora_B.weight`).
    pub lora_b: Param<Tensor<2>>,
    /// `alpha / r` (times any user scale).
    #[module(skip)]
    pub scale: f32,
}

impl LoraAdapter {
    /// An adapter from its factors `A [r, in]` and `B [out, r]` with `scale`.
    pub fn new(lora_a: Tensor<2>, lora_b: Tensor<2>, scale: f32) -> Self {
        Self {
            lora_a: Param::from_tensor(lora_a),
            lora_b: Param::from_tensor(lora_b),
            scale,
        }
    }

    /// peft's initialisation for rank `rank` on `d_in -> d_out`: `A` Kaiming-uniform
    /// (`a = sqrt(5)`, i.e. uniform in `+-1/sqrt(in)`), `B` zeros, so the adapter starts as a
    /// no-op.
    pub fn init(d_in: usize, d_out: usize, rank: usize, scale: f32, device: &Device) -> Self {
        let bound = 1.0 / (d_in as f64).sqrt();
        let a = Tensor::<2>::random(
            [rank, d_in],
            burn::tensor::Distribution::Uniform(-bound, bound),
            device,
        );
        let b = Tensor::<2>::zeros([d_out, rank], device);
        Self::new(a, b, scale)
    }

    /// Rank `r`.
    pub fn rank(&self) -> usize {
        self.lora_a.dims()[0]
    }

    /// `scale * B A x` for `x [.., in]`.
    pub fn delta<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let a = self.lora_a.val().cast(dtype);
        let b = self.lora_b.val().cast(dtype);
        let hidden = linear(x, a.transpose(), None);
        linear(hidden, b.transpose(), None) * self.scale as f64
    }

    /// `W + scale * (B A)` in Burn's `[in, out]` layout: the layer's weight with the adapter
    /// merged in (exact for [`LoraStreams::All`]).
    pub fn merge_into(&self, layer: Linear) -> Linear {
        let a = self.lora_a.val();
        let b = self.lora_b.val();
        let mut layer = layer;
        let weight = layer.weight.val();
        let dtype = weight.dtype();
        // [in, r] x [r, out] = (B A)^T.
        let update = a.transpose().matmul(b.transpose()) * self.scale as f64;
        layer.weight = layer
            .weight
            .map(|_| (weight.cast(burn::tensor::DType::F32) + update).cast(dtype));
        layer
    }
}

/// The adapters of one attention layer (every field optional).
#[derive(Module, Debug, Default)]
pub struct AttentionLora {
    /// On `to_q`.
    pub to_q: Option<LoraAdapter>,
    /// On `to_k`.
    pub to_k: Option<LoraAdapter>,
    /// On `to_v`.
    pub to_v: Option<LoraAdapter>,
    /// On `to_out.0` (double-stream blocks).
    pub to_out: Option<LoraAdapter>,
    /// On `add_q_proj` (double-stream text stream).
    pub add_q_proj: Option<LoraAdapter>,
    /// On `add_k_proj`.
    pub add_k_proj: Option<LoraAdapter>,
    /// On `add_v_proj`.
    pub add_v_proj: Option<LoraAdapter>,
    /// On `to_add_out`.
    pub to_add_out: Option<LoraAdapter>,
}

impl AttentionLora {
    /// The adapter slot of peft target `name` (see [`SUPPORTED_TARGETS`]), if supported.
    pub fn slot_mut(&mut self, name: &str) -> Option<&mut Option<LoraAdapter>> {
        Some(match name {
            "to_q" => &mut self.to_q,
            "to_k" => &mut self.to_k,
            "to_v" => &mut self.to_v,
            "to_out.0" => &mut self.to_out,
            "add_q_proj" => &mut self.add_q_proj,
            "add_k_proj" => &mut self.add_k_proj,
            "add_v_proj" => &mut self.add_v_proj,
            "to_add_out" => &mut self.to_add_out,
            _ => return None,
        })
    }

    /// The adapter of peft target `name`, if present.
    pub fn get(&self, name: &str) -> Option<&LoraAdapter> {
        match name {
            "to_q" => self.to_q.as_ref(),
            "to_k" => self.to_k.as_ref(),
            "to_v" => self.to_v.as_ref(),
            "to_out.0" => self.to_out.as_ref(),
            "add_q_proj" => self.add_q_proj.as_ref(),
            "add_k_proj" => self.add_k_proj.as_ref(),
            "add_v_proj" => self.add_v_proj.as_ref(),
            "to_add_out" => self.to_add_out.as_ref(),
            _ => None,
        }
    }

    /// Whether no adapter is set.
    pub fn is_empty(&self) -> bool {
        SUPPORTED_TARGETS.iter().all(|t| self.get(t).is_none())
    }
}

/// The adapter `name` of an attention's adapters, if any.
pub(crate) fn adapter_of<'a>(
    lora: Option<&'a AttentionLora>,
    name: &str,
) -> Option<&'a LoraAdapter> {
    lora.and_then(|l| l.get(name))
}

/// Which stream the rows of a projection's input belong to, for [`project`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rows {
    /// The text stream of a double-stream block (its own projections): outside the reference's
    /// switch, adapters always apply.
    Text,
    /// Main-stream rows of a shared projection (the text rows of a single-stream block):
    /// adapted with [`LoraStreams::All`] only.
    Main,
    /// The image stream `[B, image + reference, D]` (image rows, then reference rows; `reference`
    /// is 0 without a reference grid): the reference rows are adapted in either mode, the image
    /// rows with [`LoraStreams::All`] only.
    Image {
        /// Image rows per batch row.
        image: usize,
        /// Reference rows per batch row.
        reference: usize,
    },
}

/// `layer(x)` plus the adapter's contribution on the rows `streams` selects.
pub(crate) fn project(
    layer: &Linear,
    adapter: Option<&LoraAdapter>,
    streams: LoraStreams,
    x: Tensor<3>,
    rows: Rows,
) -> Tensor<3> {
    let Some(adapter) = adapter else {
        return product(layer, x);
    };
    match (rows, streams) {
        (Rows::Text, _) | (_, LoraStreams::All) => product(layer, x.clone()) + adapter.delta(x),
        (Rows::Main, LoraStreams::Reference)
        | (Rows::Image { reference: 0, .. }, LoraStreams::Reference) => product(layer, x),
        (Rows::Image { image, reference }, LoraStreams::Reference) => {
            let out = product(layer, x.clone());
            let delta = adapter.delta(x.narrow(1, image, reference));
            let plain = out.clone().narrow(1, 0, image);
            let adapted = out.narrow(1, image, reference) + delta;
            Tensor::cat(vec![plain, adapted], 1)
        }
    }
}

/// The peft module path of an adapter slot: `transformer_blocks.<i>.attn.<target>` or
/// `single_transformer_blocks.<i>.attn.<target>`.
pub fn adapter_path(single: bool, block: usize, target: &str) -> String {
    let blocks = if single {
        "single_transformer_blocks"
    } else {
        "transformer_blocks"
    };
    format!("{blocks}.{block}.attn.{target}")
}

/// Splits a peft module path (`transformer_blocks.0.attn.to_q`) into (single-stream?, block,
/// target); `None` if it is not an attention projection of a block.
pub fn parse_adapter_path(path: &str) -> Option<(bool, usize, &str)> {
    let (single, rest) = if let Some(rest) = path.strip_prefix("single_transformer_blocks.") {
        (true, rest)
    } else {
        (false, path.strip_prefix("transformer_blocks.")?)
    };
    let (block, rest) = rest.split_once('.')?;
    let block = block.parse().ok()?;
    let target = rest.strip_prefix("attn.")?;
    SUPPORTED_TARGETS
        .contains(&target)
        .then_some((single, block, target))
}

impl crate::MgtTransformer {
    /// Which streams the attached adapters apply to.
    pub fn lora_streams(&self) -> LoraStreams {
        self.lora_streams_value()
    }

    /// Chooses which streams the attached adapters apply to.
    pub fn set_lora_streams(&mut self, streams: LoraStreams) {
        self.set_lora_streams_value(streams);
    }

    /// The base layer an adapter at peft path `path` would wrap, or why there is none.
    pub fn adapter_base(&self, path: &str) -> Result<&Linear, crate::MgtError> {
        let error = |reason: String| crate::MgtError::Lora {
            path: path.to_string(),
            reason,
        };
        let (single, block, target) = parse_adapter_path(path).ok_or_else(|| {
            error(format!(
                "not an attention projection of a block; supported targets: {}",
                SUPPORTED_TARGETS.join(", ")
            ))
        })?;
        if single {
            let b = self.single_transformer_blocks.get(block).ok_or_else(|| {
                error(format!(
                    "the model has {} single-stream blocks",
                    self.single_transformer_blocks.len()
                ))
            })?;
            match target {
                "to_q" => Ok(&b.attn.to_q),
                "to_k" => Ok(&b.attn.to_k),
                "to_v" => Ok(&b.attn.to_v),
                other => Err(error(format!("single-stream blocks have no `{other}`"))),
            }
        } else {
            let b = self.transformer_blocks.get(block).ok_or_else(|| {
                error(format!(
                    "the model has {} double-stream blocks",
                    self.transformer_blocks.len()
                ))
            })?;
            let a = &b.attn;
            Ok(match target {
                "to_q" => &a.to_q,
                "to_k" => &a.to_k,
                "to_v" => &a.to_v,
                "to_out.0" => &a.to_out,
                "add_q_proj" => &a.add_q_proj,
                "add_k_proj" => &a.add_k_proj,
                "add_v_proj" => &a.add_v_proj,
                _ => &a.to_add_out,
            })
        }
    }

    /// Attaches `adapter` at peft module path `path` (e.g. `transformer_blocks.0.attn.to_q`),
    /// replacing any adapter there. The factors must fit the layer: `A [r, in]`, `B [out, r]`.
    pub fn attach_adapter(
        &mut self,
        path: &str,
        adapter: LoraAdapter,
    ) -> Result<(), crate::MgtError> {
        let base = self.adapter_base(path)?;
        let [d_in, d_out] = base.weight.dims();
        let [r, a_in] = adapter.lora_a.dims();
        let [b_out, b_r] = adapter.lora_b.dims();
        if a_in != d_in || b_out != d_out || b_r != r || r == 0 {
            return Err(crate::MgtError::Lora {
                path: path.to_string(),
                reason: format!(
                    "lora_A is [{r}, {a_in}] and lora_B [{b_out}, {b_r}]; the layer needs \
                     [r, {d_in}] and [{d_out}, r] with r > 0"
                ),
            });
        }
        // adapter_base validated the path.
        let (single, block, target) = parse_adapter_path(path).expect("validated path");
        let slots = if single {
            &mut self.single_transformer_blocks[block].attn.lora
        } else {
            &mut self.transformer_blocks[block].attn.lora
        };
        let slot = slots
            .get_or_insert_with(AttentionLora::default)
            .slot_mut(target)
            .expect("validated target");
        *slot = Some(adapter);
        Ok(())
    }

    /// Every attached adapter with its peft module path, double-stream blocks first.
    pub fn adapters(&self) -> Vec<(String, &LoraAdapter)> {
        let doubles = self
            .transformer_blocks
            .iter()
            .enumerate()
            .map(|(i, b)| (false, i, b.attn.lora.as_ref()));
        let singles = self
            .single_transformer_blocks
            .iter()
            .enumerate()
            .map(|(i, b)| (true, i, b.attn.lora.as_ref()));
        doubles
            .chain(singles)
            .flat_map(|(single, block, lora)| {
                SUPPORTED_TARGETS.iter().filter_map(move |target| {
                    let adapter = lora?.get(target)?;
                    Some((adapter_path(single, block, target), adapter))
                })
            })
            .collect()
    }

    /// Removes every adapter.
    pub fn clear_adapters(&mut self) {
        for b in &mut self.transformer_blocks {
            b.attn.lora = None;
        }
        for b in &mut self.single_transformer_blocks {
            b.attn.lora = None;
        }
    }

    /// Folds every adapter into its base weight (`W + scale * B A`) and removes the adapters.
    ///
    /// Only [`LoraStreams::All`] applies an adapter to every token of its layer, so only then
    /// can merged weights reproduce it; with [`LoraStreams::Reference`] this is an error.
    pub fn merge_adapters(mut self) -> Result<Self, crate::MgtError> {
        if self.adapters().is_empty() {
            return Ok(self);
        }
        if self.lora_streams() != LoraStreams::All {
            return Err(crate::MgtError::Lora {
                path: self.adapters()[0].0.clone(),
                reason: "adapters applied to the reference stream only cannot be merged into \
                         shared weights; use LoraStreams::All or keep them unmerged"
                    .into(),
            });
        }
        fn merge(layer: &mut Linear, adapter: Option<LoraAdapter>) {
            if let Some(adapter) = adapter {
                *layer = adapter.merge_into(layer.clone());
            }
        }
        for b in &mut self.transformer_blocks {
            if let Some(l) = b.attn.lora.take() {
                let a = &mut b.attn;
                merge(&mut a.to_q, l.to_q);
                merge(&mut a.to_k, l.to_k);
                merge(&mut a.to_v, l.to_v);
                merge(&mut a.to_out, l.to_out);
                merge(&mut a.add_q_proj, l.add_q_proj);
                merge(&mut a.add_k_proj, l.add_k_proj);
                merge(&mut a.add_v_proj, l.add_v_proj);
                merge(&mut a.to_add_out, l.to_add_out);
            }
        }
        for b in &mut self.single_transformer_blocks {
            if let Some(l) = b.attn.lora.take() {
                let a = &mut b.attn;
                merge(&mut a.to_q, l.to_q);
                merge(&mut a.to_k, l.to_k);
                merge(&mut a.to_v, l.to_v);
            }
        }
        Ok(self)
    }
}
