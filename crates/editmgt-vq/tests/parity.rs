//! Parity with the PyTorch reference (`cases/vq.safetensors`), in f32 and from f16/bf16 weights.

use burn::tensor::{Device, Int, Tensor};
use editmgt_core::FloatType;
use editmgt_testkit::weights::{read_f32_safetensors, write_safetensors};
use editmgt_testkit::{Case, assert_close, model_dir, relative_max_error, to_f32_vec, to_i64_vec};
use editmgt_vq::VqModel;
use safetensors::Dtype;

struct Outputs {
    latents: Vec<f32>,
    quantized: Vec<f32>,
    indices: Vec<i64>,
    decoded: Vec<f32>,
}

fn run(model: &VqModel, case: &Case, device: &Device) -> Outputs {
    let pixels: Tensor<4> = case.float_tensor("pixel_values", device);
    let latents = model.encode(pixels).unwrap();
    let indices = model.quantize(latents.clone());
    let quantized = model.dequantize(indices.clone()).unwrap();
    // Decoding starts from the fixture's indices, as the reference did.
    let fixture_indices: Tensor<3, Int> = case.int_tensor("indices", device);
    let decoded = model.decode(fixture_indices).unwrap();
    Outputs {
        latents: to_f32_vec(latents),
        quantized: to_f32_vec(quantized),
        indices: to_i64_vec(indices),
        decoded: to_f32_vec(decoded),
    }
}

#[test]
fn matches_reference_in_f32() {
    let device = editmgt_testkit::device();
    let case = Case::open("vq");
    let model = VqModel::from_folder(model_dir().join("vqvae"), &device, FloatType::F32).unwrap();
    let out = run(&model, &case, &device);

    let latents = case.f32("latents");
    assert_close("vq latents", &out.latents, &latents.data, 1e-4);
    let quantized = case.f32("quantized");
    assert_close("vq quantized", &out.quantized, &quantized.data, 1e-4);
    let indices = case.i64("indices");
    let same = out
        .indices
        .iter()
        .zip(&indices.data)
        .filter(|(a, b)| a == b)
        .count();
    println!("parity vq indices: {same}/{} identical", indices.data.len());
    assert_eq!(out.indices, indices.data, "VQ indices differ");
    let decoded = case.f32("decoded");
    assert_close("vq decoded", &out.decoded, &decoded.data, 1e-3);
}

/// Writes the tiny VQ weights converted to `dtype` into a model folder.
fn half_copy(dtype: Dtype, dir: &std::path::Path) {
    let src = model_dir().join("vqvae");
    let tensors = read_f32_safetensors(&src.join("diffusion_pytorch_model.safetensors"));
    std::fs::create_dir_all(dir).unwrap();
    write_safetensors(
        &dir.join("diffusion_pytorch_model.safetensors"),
        &tensors,
        dtype,
    );
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
}

#[test]
fn half_precision_weights_match_f32() {
    let device = editmgt_testkit::device();
    let case = Case::open("vq");
    let reference =
        VqModel::from_folder(model_dir().join("vqvae"), &device, FloatType::F32).unwrap();
    let expected = run(&reference, &case, &device);
    let tmp = tempfile::tempdir().unwrap();
    for (dtype, tol) in [(Dtype::F16, 1e-2), (Dtype::BF16, 5e-2)] {
        let dir = tmp.path().join(format!("{dtype:?}"));
        half_copy(dtype, &dir);
        // Stored in half precision, loaded into f32: only the rounding of the weights differs.
        let model = VqModel::from_folder(&dir, &device, FloatType::F32).unwrap();
        let out = run(&model, &case, &device);
        let latents = relative_max_error(&out.latents, &expected.latents);
        let decoded = relative_max_error(&out.decoded, &expected.decoded);
        let same = out
            .indices
            .iter()
            .zip(&expected.indices)
            .filter(|(a, b)| a == b)
            .count();
        println!(
            "{dtype:?} weights: latents {latents:.2e}, decoded {decoded:.2e}, indices {same}/{} identical",
            expected.indices.len()
        );
        assert!(
            latents <= tol,
            "{dtype:?} latents: {latents:.3e} > {tol:.0e}"
        );
        assert!(
            decoded <= tol,
            "{dtype:?} decoded: {decoded:.3e} > {tol:.0e}"
        );
        // Near-tie codebook distances may flip under weight rounding; nearly all must agree.
        assert!(
            same * 10 >= expected.indices.len() * 9,
            "{dtype:?}: only {same} indices agree"
        );
    }
}

#[test]
fn computes_in_half_precision() {
    let device = editmgt_testkit::device();
    let case = Case::open("vq");
    let reference =
        VqModel::from_folder(model_dir().join("vqvae"), &device, FloatType::F32).unwrap();
    let expected = run(&reference, &case, &device);
    for (dtype, tol) in [(FloatType::F16, 2e-2), (FloatType::BF16, 1e-1)] {
        if !device.supports_dtype(dtype.dtype()) {
            // The CPU backend holds every type; another device may lack one (lavapipe has no
            // bf16): loading is then a typed error naming the type and the device.
            assert_ne!(
                format!("{device:?}"),
                format!("{:?}", Device::flex()),
                "the flex device must support {dtype}"
            );
            let err = VqModel::from_folder(model_dir().join("vqvae"), &device, dtype)
                .expect_err("an unsupported float type is an error");
            let text = err.to_string();
            println!("{dtype} compute: not supported by this device: {text}");
            assert!(
                text.contains(&dtype.to_string()),
                "the error names {dtype}: {text}"
            );
            continue;
        }
        let model = VqModel::from_folder(model_dir().join("vqvae"), &device, dtype).unwrap();
        assert_eq!(model.float_type(), dtype);
        let out = run(&model, &case, &device);
        let latents = relative_max_error(&out.latents, &expected.latents);
        let decoded = relative_max_error(&out.decoded, &expected.decoded);
        println!("{dtype} compute: latents {latents:.2e}, decoded {decoded:.2e}");
        assert!(latents <= tol, "{dtype} latents: {latents:.3e} > {tol:.0e}");
        assert!(decoded <= tol, "{dtype} decoded: {decoded:.3e} > {tol:.0e}");
    }
}
