//! Joint attention over `[text, image, reference]` with reference injection.
//!
//! Every block runs one attention over the concatenated sequence `[text, image, reference]`
//! (reference last, present only when a reference grid is given). Image and reference tokens are
//! projected with the same weights. With a reference strength `s != 1`, `log(s)` is added to the
//! logits of every (reference query, non-reference key) and (non-reference query, reference key)
//! pair: a `[S, S]` bias built once per forward and broadcast over batch and heads by the fused
//! attention op, which never materialises the full attention matrix.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{DType, Device, Tensor, TensorData};

use editmgt_core::fused_attention::{attention, attention_bf16};

use crate::capture::{CaptureRows, text_to_image};
use crate::lora::{AttentionLora, LoraAdapter, LoraStreams, Rows, adapter_of, project};
use crate::norm::RmsNorm;
use crate::rotary::{RotaryTable, apply_rotary};

/// What every attention of one forward shares: sequence layout, rotary table, strength bias.
pub(crate) struct JointContext {
    /// Number of heads.
    pub heads: usize,
    /// Text rows `T`.
    pub text_len: usize,
    /// Image tokens `N` (the reference adds as many again).
    pub image_len: usize,
    /// 1 (image) or 2 (image and reference): the image stream is `[B, streams * N, D]`.
    pub streams: usize,
    /// Which streams LoRA adapters apply to.
    pub lora: LoraStreams,
    cos: Tensor<4>,
    sin: Tensor<4>,
    bias: Option<Tensor<4>>,
    /// The largest attention-score buffer, in bytes, that one attention call may need; longer
    /// query sequences are attended in row blocks ([`editmgt_core::limits`]).
    pub max_buffer_bytes: u64,
    /// Whether the attention's products run in bf16 (a model with bf16 products on the CPU).
    pub bf16_products: bool,
}

impl JointContext {
    /// The context for `heads` heads over `[text, image(, reference)]` rows of `rotary`, with the
    /// strength bias when `strength != 1` and a reference is present.
    pub fn new(
        heads: usize,
        rotary: &RotaryTable,
        with_reference: bool,
        strength: f32,
        dtype: DType,
        device: &Device,
    ) -> Self {
        let (cos, sin) = rotary.joint(with_reference);
        let (text_len, image_len) = (rotary.text_len(), rotary.image_len());
        let bias = (with_reference && strength != 1.0)
            .then(|| strength_bias(text_len + image_len, image_len, strength, dtype, device));
        Self {
            heads,
            text_len,
            image_len,
            streams: if with_reference { 2 } else { 1 },
            lora: LoraStreams::default(),
            cos,
            sin,
            bias,
            max_buffer_bytes: editmgt_core::limits::max_buffer_bytes(device),
            bf16_products: false,
        }
    }

    /// The image stream's row layout (image rows, then reference rows).
    pub fn image_rows(&self) -> Rows {
        Rows::Image {
            image: self.image_len,
            reference: (self.streams - 1) * self.image_len,
        }
    }

    /// Joint sequence length.
    pub fn seq_len(&self) -> usize {
        self.text_len + self.streams * self.image_len
    }
}

/// `[1, 1, S, S]` bias: `log(strength)` where exactly one of query and key is a reference token
/// (the last `reference` of `S = main + reference` rows), zero elsewhere.
fn strength_bias(
    main: usize,
    reference: usize,
    strength: f32,
    dtype: DType,
    device: &Device,
) -> Tensor<4> {
    let seq = main + reference;
    let is_ref: Vec<f32> = (0..seq)
        .map(|i| if i >= main { 1.0 } else { 0.0 })
        .collect();
    let is_ref = Tensor::<1>::from_data(TensorData::new(is_ref, [seq]), (device, DType::F32));
    let rows = is_ref.clone().reshape([seq, 1]);
    let cols = is_ref.reshape([1, seq]);
    let crossing = (rows - cols).abs();
    (crossing * (strength as f64).ln())
        .reshape([1, 1, seq, seq])
        .cast(dtype)
}

/// `[B, S, H * d]` to `[B, H, S, d]` (a view).
fn heads_of(x: Tensor<3>, heads: usize, norm: Option<&RmsNorm>) -> Tensor<4> {
    let [b, s, width] = x.dims();
    let x = x.reshape([b, s, heads, width / heads]);
    let x = match norm {
        Some(norm) => norm.forward(x),
        None => x,
    };
    x.swap_dims(1, 2)
}

/// `[B, H, S, d]` to `[B, S, H * d]`.
fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, h, s, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, s, h * d])
}

/// One projection of one stream: the layer, its adapter (if any) and the optional RMSNorm over
/// the head width.
struct Projection<'a> {
    layer: &'a Linear,
    adapter: Option<&'a LoraAdapter>,
    norm: Option<&'a RmsNorm>,
}

impl<'a> Projection<'a> {
    fn new(layer: &'a Linear, adapter: Option<&'a LoraAdapter>, norm: Option<&'a RmsNorm>) -> Self {
        Self {
            layer,
            adapter,
            norm,
        }
    }

    /// `[B, S, D]` (rows of kind `rows`) to `[B, H, S, d]`.
    fn heads(&self, ctx: &JointContext, x: &Tensor<3>, rows: Rows) -> Tensor<4> {
        let y = project(self.layer, self.adapter, ctx.lora, x.clone(), rows);
        heads_of(y, ctx.heads, self.norm)
    }
}

/// One projection over the joint sequence: the text rows `[B, T, D]` (kind `text_rows`) and the
/// image-stream rows `[B, streams*N, D]`, each through its own projection, concatenated as
/// `[B, H, T + streams*N, d]`.
fn project_joint(
    ctx: &JointContext,
    text: (&Tensor<3>, Projection<'_>, Rows),
    image: (&Tensor<3>, Projection<'_>),
) -> Tensor<4> {
    let text = text.1.heads(ctx, text.0, text.2);
    let image = image.1.heads(ctx, image.0, ctx.image_rows());
    Tensor::cat(vec![text, image], 2)
}

/// Splits an attention output over the joint sequence (`[B, H, S, d]`) into the text rows and
/// the image-stream rows, heads merged (`[B, T, H*d]`, `[B, S - T, H*d]`).
fn split_text_rows(ctx: &JointContext, out: Tensor<4>) -> (Tensor<3>, Tensor<3>) {
    let t = ctx.text_len;
    let rest = ctx.seq_len() - t;
    let text = merge_heads(out.clone().narrow(2, 0, t));
    (text, merge_heads(out.narrow(2, t, rest)))
}

/// Which query rows an attention computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueryRows {
    /// Every row of the joint sequence.
    All,
    /// Only the image rows (the last block: nothing else is read afterwards).
    ImageOnly,
}

/// Rotary, optional capture, then the fused attention. `q`, `k`, `v` are `[B, H, S, d]` over
/// the joint sequence; returns `[B, H, S', d]` for the requested query rows.
fn attend(
    ctx: &JointContext,
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    capture: Option<&CaptureRows>,
    rows: QueryRows,
) -> (Tensor<4>, Option<Tensor<3>>) {
    let q = apply_rotary(q, &ctx.cos, &ctx.sin);
    let k = apply_rotary(k, &ctx.cos, &ctx.sin);
    let captured = capture.map(|r| text_to_image(&q, &k, ctx.text_len, ctx.image_len, r));
    let (q, bias) = match rows {
        QueryRows::All => (q, ctx.bias.clone()),
        QueryRows::ImageOnly => (
            q.narrow(2, ctx.text_len, ctx.image_len),
            ctx.bias
                .clone()
                .map(|b| b.narrow(2, ctx.text_len, ctx.image_len)),
        ),
    };
    (attention_in_blocks(q, k, v, bias, ctx), captured)
}

/// The fused attention ([`editmgt_core::fused_attention`]: a fused kernel on the CPU, Burn's op
/// elsewhere), over blocks of query rows when the `[B, H, rows, S]` scores of all rows
/// at once would exceed `max_buffer_bytes` (a backend without a fused kernel materialises them;
/// GPU adapters cannot bind a buffer past their limit). Every query row attends to all keys
/// either way, so the result is the same; on the CPU the bound is infinite and there is one call.
fn attention_in_blocks(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    bias: Option<Tensor<4>>,
    ctx: &JointContext,
) -> Tensor<4> {
    let [b, h, rows, _] = q.dims();
    let keys = k.dims()[2];
    let block =
        editmgt_core::limits::rows_within(ctx.max_buffer_bytes, (b * h * keys * 4) as u64, rows);
    let attention = if ctx.bf16_products {
        attention_bf16
    } else {
        attention
    };
    if block >= rows {
        return attention(q, k, v, bias, None);
    }
    let mut outputs = Vec::with_capacity(rows.div_ceil(block));
    let mut start = 0;
    while start < rows {
        let len = block.min(rows - start);
        outputs.push(attention(
            q.clone().narrow(2, start, len),
            k.clone(),
            v.clone(),
            bias.clone().map(|b| b.narrow(2, start, len)),
            None,
        ));
        start += len;
    }
    Tensor::cat(outputs, 2)
}

/// The attention of a double-stream block: image/reference projections (`to_q/k/v`, `norm_q/k`,
/// `to_out.0`) and text projections (`add_q/k/v_proj`, `norm_added_q/k`, `to_add_out`).
#[derive(Module, Debug)]
pub struct DoubleStreamAttention {
    /// Image/reference queries.
    pub to_q: Linear,
    /// Image/reference keys.
    pub to_k: Linear,
    /// Image/reference values.
    pub to_v: Linear,
    /// RMSNorm of image/reference queries over the head width.
    pub norm_q: RmsNorm,
    /// RMSNorm of image/reference keys over the head width.
    pub norm_k: RmsNorm,
    /// Text queries.
    pub add_q_proj: Linear,
    /// Text keys.
    pub add_k_proj: Linear,
    /// Text values.
    pub add_v_proj: Linear,
    /// RMSNorm of text queries.
    pub norm_added_q: RmsNorm,
    /// RMSNorm of text keys.
    pub norm_added_k: RmsNorm,
    /// Image/reference output projection (`to_out.0` in the checkpoint).
    pub to_out: Linear,
    /// Text output projection.
    pub to_add_out: Linear,
    /// LoRA adapters, if attached.
    pub lora: Option<AttentionLora>,
}

impl DoubleStreamAttention {
    /// Attention of width `heads * head_dim`.
    pub fn new(heads: usize, head_dim: usize, device: &Device) -> Self {
        let dim = heads * head_dim;
        let linear = || LinearConfig::new(dim, dim).init(device);
        Self {
            to_q: linear(),
            to_k: linear(),
            to_v: linear(),
            norm_q: RmsNorm::new(head_dim, device),
            norm_k: RmsNorm::new(head_dim, device),
            add_q_proj: linear(),
            add_k_proj: linear(),
            add_v_proj: linear(),
            norm_added_q: RmsNorm::new(head_dim, device),
            norm_added_k: RmsNorm::new(head_dim, device),
            to_out: linear(),
            to_add_out: linear(),
            lora: None,
        }
    }

    /// Attends normalised text `[B, T, D]` and image stream `[B, streams*N, D]`; returns their
    /// projected outputs and the capture, if requested.
    pub(crate) fn forward(
        &self,
        ctx: &JointContext,
        text: Tensor<3>,
        image: Tensor<3>,
        capture: Option<&CaptureRows>,
    ) -> (Tensor<3>, Tensor<3>, Option<Tensor<3>>) {
        let lora = self.lora.as_ref();
        let adapter = |name| adapter_of(lora, name);
        let text_rows = Rows::Text;
        let q = project_joint(
            ctx,
            (
                &text,
                Projection::new(
                    &self.add_q_proj,
                    adapter("add_q_proj"),
                    Some(&self.norm_added_q),
                ),
                text_rows,
            ),
            (
                &image,
                Projection::new(&self.to_q, adapter("to_q"), Some(&self.norm_q)),
            ),
        );
        let k = project_joint(
            ctx,
            (
                &text,
                Projection::new(
                    &self.add_k_proj,
                    adapter("add_k_proj"),
                    Some(&self.norm_added_k),
                ),
                text_rows,
            ),
            (
                &image,
                Projection::new(&self.to_k, adapter("to_k"), Some(&self.norm_k)),
            ),
        );
        let v = project_joint(
            ctx,
            (
                &text,
                Projection::new(&self.add_v_proj, adapter("add_v_proj"), None),
                text_rows,
            ),
            (&image, Projection::new(&self.to_v, adapter("to_v"), None)),
        );
        let (out, captured) = attend(ctx, q, k, v, capture, QueryRows::All);
        let (text_out, image_out) = split_text_rows(ctx, out);
        (
            project(
                &self.to_add_out,
                adapter("to_add_out"),
                ctx.lora,
                text_out,
                Rows::Text,
            ),
            project(
                &self.to_out,
                adapter("to_out.0"),
                ctx.lora,
                image_out,
                ctx.image_rows(),
            ),
            captured,
        )
    }
}

/// The attention of a single-stream block: one set of projections for text, image and
/// reference, no output projection (the block's `proj_out` follows).
#[derive(Module, Debug)]
pub struct SingleStreamAttention {
    /// Queries.
    pub to_q: Linear,
    /// Keys.
    pub to_k: Linear,
    /// Values.
    pub to_v: Linear,
    /// RMSNorm of queries over the head width.
    pub norm_q: RmsNorm,
    /// RMSNorm of keys over the head width.
    pub norm_k: RmsNorm,
    /// LoRA adapters, if attached (`to_q`, `to_k`, `to_v`).
    pub lora: Option<AttentionLora>,
}

impl SingleStreamAttention {
    /// Attention of width `heads * head_dim`.
    pub fn new(heads: usize, head_dim: usize, device: &Device) -> Self {
        let dim = heads * head_dim;
        let linear = || LinearConfig::new(dim, dim).init(device);
        Self {
            to_q: linear(),
            to_k: linear(),
            to_v: linear(),
            norm_q: RmsNorm::new(head_dim, device),
            norm_k: RmsNorm::new(head_dim, device),
            lora: None,
        }
    }

    /// Attends normalised text `[B, T, D]` and image stream `[B, streams*N, D]`. Returns the
    /// text rows' output (`None` with [`QueryRows::ImageOnly`]), the image stream's (only the
    /// image rows with [`QueryRows::ImageOnly`]) and the capture, if requested.
    pub(crate) fn forward(
        &self,
        ctx: &JointContext,
        text: Tensor<3>,
        image: Tensor<3>,
        capture: Option<&CaptureRows>,
        rows: QueryRows,
    ) -> (Option<Tensor<3>>, Tensor<3>, Option<Tensor<3>>) {
        let lora = self.lora.as_ref();
        let project = |linear: &Linear, name: &'static str, norm: Option<&RmsNorm>| {
            let adapter = adapter_of(lora, name);
            project_joint(
                ctx,
                (&text, Projection::new(linear, adapter, norm), Rows::Main),
                (&image, Projection::new(linear, adapter, norm)),
            )
        };
        let q = project(&self.to_q, "to_q", Some(&self.norm_q));
        let k = project(&self.to_k, "to_k", Some(&self.norm_k));
        let v = project(&self.to_v, "to_v", None);
        let (out, captured) = attend(ctx, q, k, v, capture, rows);
        match rows {
            QueryRows::All => {
                let (text_out, image_out) = split_text_rows(ctx, out);
                (Some(text_out), image_out, captured)
            }
            QueryRows::ImageOnly => (None, merge_heads(out), captured),
        }
    }
}
