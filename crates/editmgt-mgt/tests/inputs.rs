//! Bad inputs are typed errors, never panics.

mod common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{Inputs, case_named, tiny_model};
use editmgt_mgt::{CaptureRequest, MgtError, MgtInput, MgtTransformer, Positions};
use editmgt_testkit::Case;

struct Fixture {
    device: Device,
    model: MgtTransformer,
    inputs: Inputs,
    case: Case,
}

fn fixture() -> Fixture {
    let device = editmgt_testkit::device();
    let case = Case::open("mgt");
    let model = tiny_model(&device);
    let inputs = Inputs::open(&case, &device);
    Fixture {
        device,
        model,
        inputs,
        case,
    }
}

impl Fixture {
    fn edit(&self) -> MgtInput {
        let params = case_named(&self.case, "edit_strength");
        self.inputs.input(&self.model, &params, &self.device)
    }

    fn grid(&self, b: usize, h: usize, w: usize, value: i64) -> Tensor<3, Int> {
        Tensor::from_data(
            TensorData::new(vec![value; b * h * w], [b, h, w]),
            &self.device,
        )
    }
}

#[test]
fn every_bad_input_is_a_typed_error() {
    let f = fixture();
    let config = f.model.config();
    let vocab = config.vocab_size;
    // Every size below comes from the loaded model or the fixture's inputs.
    let [batch, h, w] = f.inputs.tokens.dims();
    let text_len = f.edit().encoder_hidden_states.dims()[1];
    let joint = f.edit().encoder_hidden_states.dims()[2];
    let pooled = f.edit().pooled.dims()[1];
    let image_tokens = if config.downsample {
        (h / 2) * (w / 2)
    } else {
        h * w
    };

    // A reference grid of another size.
    let mut input = f.edit();
    input.reference = Some(f.grid(batch, h / 2, w, 0));
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::GridMismatch { tokens, reference })
            if tokens == [h, w] && reference == [h / 2, w]
    ));

    // Token ids >= vocab_size (in the grid and in the reference), and negative ones.
    let mut input = f.edit();
    input.tokens = f.grid(batch, h, w, vocab as i64);
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::TokenOutOfRange { input: "tokens", id, vocab_size })
            if id == vocab as i64 && vocab_size == vocab
    ));
    let mut input = f.edit();
    input.reference = Some(f.grid(batch, h, w, vocab as i64 + 5));
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::TokenOutOfRange {
            input: "reference",
            ..
        })
    ));
    let mut input = f.edit();
    input.tokens = f.grid(batch, h, w, -1);
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::TokenOutOfRange { id: -1, .. })
    ));

    // Text length different from the positions.
    let mut input = f.edit();
    let other_len = text_len + 1;
    input.rotary = Some(
        f.model
            .rotary_table(&f.model.positions(other_len, h, w), &f.device),
    );
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::TextLength { positions, found })
            if positions == other_len && found == text_len
    ));
    // Image positions of another grid (a quarter of the image tokens).
    let mut input = f.edit();
    let (qh, qw) = (h / 4, w / 4);
    input.rotary = Some(
        f.model
            .rotary_table(&Positions::grid(text_len, qh, qw), &f.device),
    );
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::ImagePositions { positions, tokens })
            if positions == qh * qw && tokens == image_tokens
    ));

    // Capture of a block that does not exist, and of rows that do not exist.
    let blocks = f.model.num_blocks();
    let input = f.edit().with_capture(CaptureRequest::blocks([0, blocks]));
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::NoSuchBlock { block, blocks: b, double })
            if block == blocks && b == blocks && double == config.num_layers
    ));
    let input = f
        .edit()
        .with_capture(CaptureRequest::blocks([0]).with_text_rows([text_len]));
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::CaptureRow {
            what: "text",
            row,
            len
        }) if row == text_len && len == text_len
    ));
    let input = f
        .edit()
        .with_capture(CaptureRequest::blocks([0]).with_batch_rows([batch]));
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::CaptureRow { what: "batch", .. })
    ));
    let input = f
        .edit()
        .with_capture(CaptureRequest::blocks([0]).with_batch_rows([]));
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::CaptureRow { what: "batch", .. })
    ));

    // Batch mismatches.
    let mut input = f.edit();
    input.encoder_hidden_states = input.encoder_hidden_states.narrow(0, 0, 1);
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::BatchMismatch {
            input: "encoder_hidden_states",
            expected,
            found: 1
        }) if expected == batch
    ));
    let mut input = f.edit();
    input.reference = Some(f.grid(batch - 1, h, w, 0));
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::BatchMismatch {
            input: "reference",
            ..
        })
    ));
    let mut input = f.edit();
    input.micro_conds = input.micro_conds.narrow(0, 0, 1);
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::BatchMismatch {
            input: "micro_conds",
            ..
        })
    ));

    // Widths.
    let mut input = f.edit();
    input.pooled = input.pooled.narrow(1, 0, pooled / 2);
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::WidthMismatch {
            input: "pooled",
            expected,
            found
        }) if expected == pooled && found == pooled / 2
    ));
    let mut input = f.edit();
    input.encoder_hidden_states = input.encoder_hidden_states.narrow(2, 0, joint - 1);
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::WidthMismatch {
            input: "encoder_hidden_states",
            ..
        })
    ));

    // Grids the model cannot halve; strengths and timesteps that are not numbers.
    let mut input = f.edit();
    if config.downsample {
        input.tokens = f.grid(batch, h - 1, w, 0);
        input.reference = None;
        assert!(matches!(
            f.model.forward(input),
            Err(MgtError::InvalidGrid { height, .. }) if height == h - 1
        ));
    }
    for strength in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let mut input = f.edit();
        input.reference_strength = strength;
        assert!(matches!(
            f.model.forward(input),
            Err(MgtError::InvalidStrength(_))
        ));
    }
    let mut input = f.edit();
    input.timestep = f32::NAN;
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::InvalidTimestep(_))
    ));
}
