//! The transformer's parameters by name: which are trained, their checkpoint names and layouts,
//! and reading or replacing them as flat vectors.
//!
//! Parameters are addressed by their *checkpoint name* (`transformer_blocks.0.attn.to_q.weight`;
//! LoRA factors in peft naming, `transformer_blocks.0.attn.to_q.lora_A.weight`). Values are
//! exchanged in the checkpoint's layout: Burn holds a `Linear` weight as `[in, out]`, the
//! checkpoint (and PyTorch) as `[out, in]`; [`ParamInfo::transposed`] says which.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use editmgt_mgt::MgtTransformer;

/// One float parameter of the transformer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// Path in the Burn module (`transformer_blocks.0.attn.to_out.weight`).
    pub module_path: String,
    /// Checkpoint (PyTorch / peft) name.
    pub name: String,
    /// Shape in the checkpoint's layout.
    pub shape: Vec<usize>,
    /// Whether Burn stores it transposed (2-D `Linear` weights).
    pub transposed: bool,
    /// Whether it is a LoRA factor.
    pub lora: bool,
}

impl ParamInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Tracks the module path during a traversal.
#[derive(Default)]
struct PathTracker {
    path: Vec<String>,
    containers: Vec<String>,
}

impl PathTracker {
    fn enter(&mut self, name: &str, container: &str) {
        self.path.push(name.to_string());
        self.containers.push(container.to_string());
    }

    fn exit(&mut self) {
        self.path.pop();
        self.containers.pop();
    }

    fn info(&self, burn_shape: Vec<usize>) -> ParamInfo {
        let module_path = self.path.join(".");
        let struct_type = self
            .containers
            .iter()
            .rev()
            .find(|c| c.starts_with("Struct:"))
            .map(String::as_str)
            .unwrap_or("");
        let leaf = self.path.last().map(String::as_str).unwrap_or("");
        let mut shape = burn_shape;
        let mut transposed = false;
        let mut lora = false;
        let name = if struct_type == "Struct:LoraAdapter" {
            lora = true;
            // <block>.attn.lora.<slot>.lora_a -> <block>.attn.<target>.lora_A.weight
            let n = self.path.len();
            let slot = self
                .path
                .get(n.wrapping_sub(2))
                .map(String::as_str)
                .unwrap_or("");
            let target = if slot == "to_out" { "to_out.0" } else { slot };
            let prefix = self.path[..n.saturating_sub(3)].join(".");
            let factor = if leaf == "lora_a" { "lora_A" } else { "lora_B" };
            format!("{prefix}.{target}.{factor}.weight")
        } else {
            let mut checkpoint_path = self.path.clone();
            match (struct_type, leaf) {
                ("Struct:Linear", "weight") if shape.len() == 2 => {
                    shape.swap(0, 1);
                    transposed = true;
                }
                ("Struct:RmsNorm", "gamma") => {
                    if let Some(last) = checkpoint_path.last_mut() {
                        *last = "weight".to_string();
                    }
                }
                _ => {}
            }
            MgtTransformer::checkpoint_keys().to_checkpoint(&checkpoint_path.join("."))
        };
        ParamInfo {
            module_path,
            name,
            shape,
            transposed,
            lora,
        }
    }
}

/// A parameter's flat value (checkpoint layout) on demand.
type ValueOf<'p> = &'p dyn Fn() -> Tensor<1>;
/// A parameter's flat gradient (checkpoint layout) in a set of gradients, if it has one.
type GradientOf<'p> = &'p dyn Fn(&burn::tensor::Gradients) -> Option<Tensor<1>>;

/// Calls `f` for every float parameter of `model` in traversal order, with its info and ways to
/// read its value or gradient (nothing is read unless `f` asks).
fn visit_params(model: &MgtTransformer, f: &mut dyn FnMut(&ParamInfo, ValueOf, GradientOf)) {
    struct Visitor<'a> {
        tracker: PathTracker,
        f: &'a mut dyn FnMut(&ParamInfo, ValueOf, GradientOf),
    }
    impl ModuleVisitor for Visitor<'_> {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.tracker.enter(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.tracker.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let info = self.tracker.info(param.lazy_shape().to_vec());
            let transposed = info.transposed;
            let value = || to_checkpoint_flat(param.val(), transposed);
            let gradient = |grads: &burn::tensor::Gradients| {
                param
                    .val()
                    .grad(grads)
                    .map(|grad| to_checkpoint_flat(grad, transposed))
            };
            (self.f)(&info, &value, &gradient);
        }
    }
    model.visit(&mut Visitor {
        tracker: PathTracker::default(),
        f,
    });
}

/// Every float parameter of `model`, in traversal order.
pub fn param_infos(model: &MgtTransformer) -> Vec<ParamInfo> {
    let mut out = Vec::new();
    visit_params(model, &mut |info, _, _| out.push(info.clone()));
    out
}

/// A float tensor as a flat vector in the checkpoint's layout.
pub(crate) fn to_checkpoint_flat<const D: usize>(t: Tensor<D>, transposed: bool) -> Tensor<1> {
    let t = if transposed && D == 2 {
        t.swap_dims(0, 1)
    } else {
        t
    };
    let n = t.shape().num_elements();
    t.reshape([n])
}

/// A flat vector in the checkpoint's layout back to Burn's layout of shape `dims`.
fn from_checkpoint_flat<const D: usize>(
    flat: Tensor<1>,
    dims: [usize; D],
    transposed: bool,
) -> Tensor<D> {
    if transposed && D == 2 {
        let mut swapped = dims;
        swapped.swap(0, 1);
        flat.reshape(swapped).swap_dims(0, 1)
    } else {
        flat.reshape(dims)
    }
}

/// Visits every float parameter with its info and its value (flat, checkpoint layout).
pub fn for_each_param(model: &MgtTransformer, mut f: impl FnMut(&ParamInfo, Tensor<1>)) {
    visit_params(model, &mut |info, value, _| f(info, value()));
}

/// The gradient of every parameter that has one in `grads` (flat, checkpoint layout, on the
/// inner device), by checkpoint name.
pub fn gradients(
    model: &MgtTransformer,
    grads: &burn::tensor::Gradients,
) -> Vec<(ParamInfo, Tensor<1>)> {
    let mut out = Vec::new();
    visit_params(model, &mut |info, _, gradient| {
        if let Some(grad) = gradient(grads) {
            out.push((info.clone(), grad));
        }
    });
    out
}

/// Replaces parameters: `f` receives each parameter's info and current value (flat, checkpoint
/// layout) and returns its new value (same layout) or `None` to keep it. New values are put on
/// `device` and marked trainable when `trainable(info)`.
pub fn map_params(
    model: MgtTransformer,
    device: &Device,
    trainable: &dyn Fn(&ParamInfo) -> bool,
    f: &mut dyn FnMut(&ParamInfo, Tensor<1>) -> Option<Tensor<1>>,
) -> MgtTransformer {
    struct Mapper<'a> {
        tracker: PathTracker,
        device: &'a Device,
        trainable: &'a dyn Fn(&ParamInfo) -> bool,
        f: &'a mut dyn FnMut(&ParamInfo, Tensor<1>) -> Option<Tensor<1>>,
    }
    impl ModuleMapper for Mapper<'_> {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.tracker.enter(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.tracker.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, value, mapper) = param.consume();
            let dims = value.dims();
            let info = self.tracker.info(dims.to_vec());
            let current = to_checkpoint_flat(value.clone().detach(), info.transposed);
            let value = match (self.f)(&info, current) {
                Some(flat) => from_checkpoint_flat(flat.without_autodiff(), dims, info.transposed),
                None => value.without_autodiff(),
            };
            let value = value.to_device(&self.device.clone().inner());
            let value = if self.device.is_autodiff() {
                let v = value.autodiff();
                if (self.trainable)(&info) {
                    v.require_grad()
                } else {
                    v
                }
            } else {
                value
            };
            Param::from_mapped_value(id, value, mapper)
        }
    }
    let mut m = Mapper {
        tracker: PathTracker::default(),
        device,
        trainable,
        f,
    };
    model.map(&mut m)
}
