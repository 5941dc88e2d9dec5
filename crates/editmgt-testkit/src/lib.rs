//! Test support shared by the editmgt-rs crates: where the parity fixtures are, and reading them.
//!
//! The fixture root is `$EDITMGT_FIXTURES` when set, otherwise the repository's copy of the tiny
//! model (`fixtures/tiny`). It is a model folder in the released layout (so it loads like the
//! real model) with a `cases/` folder of reference outputs. Every input, expected output and case
//! parameter a parity test uses comes from there; a missing file or tensor panics, which fails
//! the test (never a skip).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Shape, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

pub mod weights;

/// The environment variable naming the fixture root.
pub const FIXTURES_ENV: &str = "EDITMGT_FIXTURES";

/// The environment variable choosing the device of every model test: `cpu` (default), `wgpu`
/// or `cuda`.
pub const DEVICE_ENV: &str = "EDITMGT_TEST_DEVICE";

/// The device every model test runs on: `$EDITMGT_TEST_DEVICE` (`cpu`, the default; `wgpu`;
/// `cuda`). A device that is asked for but not compiled in (the testkit's `wgpu` / `cuda`
/// features, which the model crates pass through) or not available fails the test with a message
/// that says so: it never falls back to the CPU.
pub fn device() -> Device {
    let name = std::env::var(DEVICE_ENV).unwrap_or_default();
    match name.trim().to_ascii_lowercase().as_str() {
        "" | "cpu" | "flex" => Device::flex(),
        "wgpu" => wgpu_device(),
        "cuda" => cuda_device(),
        other => panic!("${DEVICE_ENV} = {other:?}: expected cpu, wgpu or cuda"),
    }
}

/// Whether the tests run on the CPU (`$EDITMGT_TEST_DEVICE` unset or `cpu`).
pub fn on_cpu() -> bool {
    matches!(
        std::env::var(DEVICE_ENV)
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
            .as_str(),
        "" | "cpu" | "flex"
    )
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Device {
    let device = Device::wgpu(Default::default());
    // Fail here, with a clear message, when no adapter is there.
    let probe = Tensor::<1>::from_data(TensorData::new(vec![1f32, 2.0], [2]), &device);
    match probe.try_into_data() {
        Ok(_) => device,
        Err(e) => panic!(
            "${DEVICE_ENV}=wgpu but no wgpu adapter works here ({e:?}); on Linux install a Vulkan driver (e.g. Debian's mesa-vulkan-drivers for lavapipe)"
        ),
    }
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Device {
    panic!(
        "${DEVICE_ENV}=wgpu but this test build lacks the `wgpu` feature: run `cargo test -p <crate> --features wgpu`"
    )
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Device {
    Device::cuda(0)
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Device {
    panic!(
        "${DEVICE_ENV}=cuda but this test build lacks the `cuda` feature: run `cargo test -p <crate> --features cuda`"
    )
}

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fixture root: `$EDITMGT_FIXTURES`, or the repository's `fixtures/tiny`.
pub fn fixtures_root() -> PathBuf {
    match std::env::var_os(FIXTURES_ENV) {
        Some(root) if !root.is_empty() => PathBuf::from(root),
        _ => repo_root().join("fixtures/tiny"),
    }
}

/// The tiny model folder (the fixture root itself, which has the released layout).
pub fn model_dir() -> PathBuf {
    fixtures_root()
}

/// A `--hold-blocks` range that every fixture model has: from the middle of its blocks (double
/// then single, as counted in `editmgt/config.json`) to its last block, exclusive (`"2..4"` for
/// 5 blocks).
pub fn hold_blocks_arg() -> String {
    let path = model_dir().join("editmgt/config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let config: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    let count = |key: &str| {
        config[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{} has no integer `{key}`", path.display()))
    };
    let blocks = count("num_layers") + count("num_single_layers");
    format!("{}..{}", (blocks - 1) / 2, blocks - 1)
}

/// A file under the fixture root's `cases/` folder; panics if it does not exist.
pub fn case_file(name: &str) -> PathBuf {
    let path = fixtures_root().join("cases").join(name);
    assert!(
        path.is_file(),
        "fixture `{}` is missing (fixture root from ${FIXTURES_ENV} or fixtures/tiny)",
        path.display()
    );
    path
}

/// The folder of released tensor lists: `$EDITMGT_REAL_SHAPES`, or `fixtures/real-shapes`.
pub fn real_shapes_root() -> PathBuf {
    match std::env::var_os("EDITMGT_REAL_SHAPES") {
        Some(root) if !root.is_empty() => PathBuf::from(root),
        _ => repo_root().join("fixtures/real-shapes"),
    }
}

/// A released component's configuration, tensor list and parameter count
/// (`real-shapes/<component>.json`).
#[derive(Debug, Clone)]
pub struct RealShapes {
    /// The component's `config.json` as released.
    pub config: Value,
    /// Every tensor name with its shape.
    pub tensors: std::collections::BTreeMap<String, Vec<usize>>,
    /// The total parameter count the file states.
    pub parameters: u64,
    /// The whole file.
    pub raw: Value,
}

impl RealShapes {
    /// Reads `real-shapes/<component>.json` (`editmgt`, `vqvae`, `text_encoder`, `llm_encoder`).
    pub fn load(component: &str) -> Self {
        let path = real_shapes_root().join(format!("{component}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read `{}`: {e}", path.display()));
        let raw: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("cannot parse `{}`: {e}", path.display()));
        let config = raw
            .get("config")
            .cloned()
            .unwrap_or_else(|| panic!("`{}` has no `config`", path.display()));
        let parameters = raw
            .get("parameters")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("`{}` has no `parameters`", path.display()));
        let listed = raw
            .get("tensors")
            .unwrap_or_else(|| panic!("`{}` has no `tensors`", path.display()));
        let tensors = parse_tensor_list(listed)
            .unwrap_or_else(|| panic!("`{}`: unrecognised `tensors` layout", path.display()));
        Self {
            config,
            tensors,
            parameters,
            raw,
        }
    }
}

fn parse_tensor_list(value: &Value) -> Option<std::collections::BTreeMap<String, Vec<usize>>> {
    let shape = |v: &Value| -> Option<Vec<usize>> {
        let arr = v.as_array().or_else(|| v.get("shape")?.as_array())?;
        arr.iter().map(|d| d.as_u64().map(|d| d as usize)).collect()
    };
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| Some((k.clone(), shape(v)?)))
            .collect(),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let name = item.get("name")?.as_str()?.to_string();
                Some((name, shape(item)?))
            })
            .collect(),
        _ => None,
    }
}

/// A dense array read from a fixture: row-major data and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Array<T> {
    /// Row-major values.
    pub data: Vec<T>,
    /// Dimensions.
    pub shape: Vec<usize>,
}

/// One `cases/<name>.safetensors` file: its tensors and the JSON `meta` of its cases.
pub struct Case {
    path: PathBuf,
    bytes: Vec<u8>,
    /// The parsed `meta` metadata entry (`Value::Null` when absent).
    pub meta: Value,
}

impl Case {
    /// Opens `cases/<name>.safetensors` under the fixture root; panics if it is missing.
    pub fn open(name: &str) -> Self {
        let path = case_file(&format!("{name}.safetensors"));
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("cannot read `{}`: {e}", path.display()));
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .unwrap_or_else(|e| panic!("`{}` is not safetensors: {e}", path.display()));
        let meta = header
            .metadata()
            .as_ref()
            .and_then(|m: &HashMap<String, String>| m.get("meta"))
            .map(|m| {
                serde_json::from_str(m)
                    .unwrap_or_else(|e| panic!("`{}`: bad meta JSON: {e}", path.display()))
            })
            .unwrap_or(Value::Null);
        Self { path, bytes, meta }
    }

    fn view(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes)
            .unwrap_or_else(|e| panic!("`{}` is not safetensors: {e}", self.path.display()))
    }

    /// Whether the file has a tensor called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.view().tensor(name).is_ok()
    }

    /// All tensor names in the file.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .view()
            .names()
            .into_iter()
            .map(str::to_string)
            .collect();
        names.sort();
        names
    }

    fn raw(&self, name: &str, dtype: Dtype) -> (Vec<u8>, Vec<usize>) {
        let view = self.view();
        let tensor = view
            .tensor(name)
            .unwrap_or_else(|_| panic!("fixture `{}` has no tensor `{name}`", self.path.display()));
        assert_eq!(
            tensor.dtype(),
            dtype,
            "fixture `{}`: tensor `{name}` is {:?}, expected {dtype:?}",
            self.path.display(),
            tensor.dtype()
        );
        (tensor.data().to_vec(), tensor.shape().to_vec())
    }

    /// An F32 tensor.
    pub fn f32(&self, name: &str) -> Array<f32> {
        let (bytes, shape) = self.raw(name, Dtype::F32);
        let data = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Array { data, shape }
    }

    /// An I64 tensor.
    pub fn i64(&self, name: &str) -> Array<i64> {
        let (bytes, shape) = self.raw(name, Dtype::I64);
        let data = bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Array { data, shape }
    }

    /// A U8 tensor.
    pub fn u8(&self, name: &str) -> Array<u8> {
        let (data, shape) = self.raw(name, Dtype::U8);
        Array { data, shape }
    }

    /// An F32 tensor on `device`, with rank `D` (panics if the rank differs).
    pub fn float_tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let a = self.f32(name);
        assert_eq!(
            a.shape.len(),
            D,
            "tensor `{name}` has rank {}",
            a.shape.len()
        );
        Tensor::from_data(TensorData::new(a.data, Shape::from(a.shape)), device)
    }

    /// An I64 tensor on `device` as an Int tensor of rank `D`.
    pub fn int_tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D, Int> {
        let a = self.i64(name);
        assert_eq!(
            a.shape.len(),
            D,
            "tensor `{name}` has rank {}",
            a.shape.len()
        );
        Tensor::from_data(TensorData::new(a.data, Shape::from(a.shape)), device)
    }
}

/// Max abs difference of `actual` from `expected`, relative to `expected`'s max abs value.
pub fn relative_max_error(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let scale = expected
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let err = actual.iter().zip(expected).fold(0f32, |m, (a, e)| {
        if a.is_nan() || e.is_nan() {
            f32::INFINITY
        } else {
            m.max((a - e).abs())
        }
    });
    err / scale
}

/// Asserts `relative_max_error(actual, expected) <= tol`, printing the measured error (run tests
/// with `--nocapture` to see it); returns the error.
pub fn assert_close(name: &str, actual: &[f32], expected: &[f32], tol: f32) -> f32 {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{name}: {} values, expected {}",
        actual.len(),
        expected.len()
    );
    let err = relative_max_error(actual, expected);
    println!("parity {name}: max abs error / max abs value = {err:.3e} (tolerance {tol:.0e})");
    assert!(
        err <= tol,
        "{name}: relative max error {err:.3e} > {tol:.0e}"
    );
    err
}

/// The values of a float tensor as f32.
pub fn to_f32_vec<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}

/// The values of an int tensor as i64.
pub fn to_i64_vec<const D: usize>(tensor: Tensor<D, Int>) -> Vec<i64> {
    tensor
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("i64 data")
}
