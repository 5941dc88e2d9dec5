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
    let device = Device::flex();
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
    let vocab = f.model.config().vocab_size;

    // A reference grid of another size.
    let mut input = f.edit();
    input.reference = Some(f.grid(2, 32, 64, 0));
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::GridMismatch {
            tokens: [64, 64],
            reference: [32, 64]
        })
    ));

    // Token ids >= vocab_size (in the grid and in the reference), and negative ones.
    let mut input = f.edit();
    input.tokens = f.grid(2, 64, 64, vocab as i64);
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::TokenOutOfRange { input: "tokens", id, vocab_size })
            if id == vocab as i64 && vocab_size == vocab
    ));
    let mut input = f.edit();
    input.reference = Some(f.grid(2, 64, 64, vocab as i64 + 5));
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::TokenOutOfRange {
            input: "reference",
            ..
        })
    ));
    let mut input = f.edit();
    input.tokens = f.grid(2, 64, 64, -1);
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::TokenOutOfRange { id: -1, .. })
    ));

    // Text length different from the positions.
    let mut input = f.edit();
    let [_, h, w] = f.inputs.tokens.dims();
    input.rotary = Some(
        f.model
            .rotary_table(&f.model.positions(77, h, w), &f.device),
    );
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::TextLength {
            positions: 77,
            found: 256
        })
    ));
    // Image positions of another grid.
    let mut input = f.edit();
    input.rotary = Some(
        f.model
            .rotary_table(&Positions::grid(256, 16, 16), &f.device),
    );
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::ImagePositions {
            positions: 256,
            tokens: 1024
        })
    ));

    // Capture of a block that does not exist, and of rows that do not exist.
    let blocks = f.model.num_blocks();
    let input = f.edit().with_capture(CaptureRequest::blocks([0, blocks]));
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::NoSuchBlock { block, blocks: b, double: 2 }) if block == blocks && b == blocks
    ));
    let input = f
        .edit()
        .with_capture(CaptureRequest::blocks([3]).with_text_rows([256]));
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::CaptureRow {
            what: "text",
            row: 256,
            len: 256
        })
    ));
    let input = f
        .edit()
        .with_capture(CaptureRequest::blocks([3]).with_batch_rows([2]));
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::CaptureRow { what: "batch", .. })
    ));
    let input = f
        .edit()
        .with_capture(CaptureRequest::blocks([3]).with_batch_rows([]));
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
            expected: 2,
            found: 1
        })
    ));
    let mut input = f.edit();
    input.reference = Some(f.grid(1, 64, 64, 0));
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
    input.pooled = input.pooled.narrow(1, 0, 16);
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::WidthMismatch {
            input: "pooled",
            expected: 32,
            found: 16
        })
    ));
    let mut input = f.edit();
    input.encoder_hidden_states = input.encoder_hidden_states.narrow(2, 0, 40);
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::WidthMismatch {
            input: "encoder_hidden_states",
            ..
        })
    ));

    // Grids the model cannot halve; strengths and timesteps that are not numbers.
    let mut input = f.edit();
    input.tokens = f.grid(2, 63, 64, 0);
    input.reference = None;
    assert!(matches!(
        f.model.forward(input),
        Err(MgtError::InvalidGrid { height: 63, .. })
    ));
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
