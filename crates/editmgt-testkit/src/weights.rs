//! Reading and writing whole safetensors checkpoints in tests (for example to store the tiny
//! weights again as f16 or bf16, or to corrupt one tensor).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// A checkpoint's tensors as `(name, shape, f32 values)`.
pub type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Every tensor of the F32 safetensors file at `path`, sorted by name. Panics (failing the
/// test) when the file is missing or a tensor is not F32.
pub fn read_f32_safetensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{}: not a safetensors file: {e}", path.display()));
    let mut out: Tensors = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), Dtype::F32, "{}: {name}", path.display());
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, view.shape().to_vec(), values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Writes `tensors` to `path` stored as `dtype` (F32, F16 or BF16; anything else panics).
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) {
    let bytes: Vec<(&str, &[usize], Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, values)| (name.as_str(), shape.as_slice(), encode(values, dtype)))
        .collect();
    let views: Vec<(&str, TensorView<'_>)> = bytes
        .iter()
        .map(|(name, shape, data)| {
            let view = TensorView::new(dtype, shape.to_vec(), data)
                .unwrap_or_else(|e| panic!("tensor `{name}`: {e}"));
            (*name, view)
        })
        .collect();
    let data = safetensors::serialize(views, None::<HashMap<String, String>>)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::fs::write(path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        other => panic!("writing {other:?} tensors is not supported"),
    }
}
