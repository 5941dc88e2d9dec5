//! The checkpoint names and shapes a module expects, without materialising its parameters.
//!
//! The real-shape tests build each component at its released configuration (a billion
//! parameters for the transformer) and compare this table with the released tensor list; the
//! parameters are lazy, so nothing is allocated.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

use crate::KeyMap;

/// One parameter of a module, as the checkpoint names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamEntry {
    /// The parameter's path in the Burn module (`blocks.0.norm.gamma`).
    pub module_path: String,
    /// The tensor name in the checkpoint (`blocks.0.norm.weight`).
    pub checkpoint_name: String,
    /// The shape in the checkpoint's layout (PyTorch `Linear` weights are `[out, in]`).
    pub shape: Vec<usize>,
}

/// Every parameter of `module` with its checkpoint name (through `keys`) and checkpoint shape.
pub fn parameter_table<M: Module>(module: &M, keys: &KeyMap) -> Vec<ParamEntry> {
    let mut visitor = TableVisitor {
        keys,
        path: Vec::new(),
        containers: Vec::new(),
        entries: Vec::new(),
    };
    module.visit(&mut visitor);
    visitor.entries
}

/// The total number of scalar parameters in a table.
pub fn parameter_count(table: &[ParamEntry]) -> usize {
    table
        .iter()
        .map(|p| p.shape.iter().product::<usize>())
        .sum()
}

struct TableVisitor<'a> {
    keys: &'a KeyMap,
    path: Vec<String>,
    containers: Vec<String>,
    entries: Vec<ParamEntry>,
}

impl ModuleVisitor for TableVisitor<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let module_path = self.path.join(".");
        let module_type = self
            .containers
            .iter()
            .rev()
            .find(|c| c.starts_with("Struct:") || c.starts_with("Enum:"))
            .map(String::as_str)
            .unwrap_or("");
        let mut shape = param.lazy_shape().to_vec();
        let leaf = self.path.last().map(String::as_str).unwrap_or("");
        let mut checkpoint_path = self.path.clone();
        match (module_type, leaf) {
            ("Struct:Linear", "weight") if shape.len() == 2 => shape.swap(0, 1),
            (
                "Struct:LayerNorm" | "Struct:GroupNorm" | "Struct:RmsNorm" | "Struct:BatchNorm",
                "gamma" | "beta",
            ) => {
                if let Some(last) = checkpoint_path.last_mut() {
                    *last = if leaf == "gamma" { "weight" } else { "bias" }.to_string();
                }
            }
            _ => {}
        }
        self.entries.push(ParamEntry {
            checkpoint_name: self.keys.to_checkpoint(&checkpoint_path.join(".")),
            module_path,
            shape,
        });
    }
}
