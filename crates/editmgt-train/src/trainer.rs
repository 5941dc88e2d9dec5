//! One optimizer step: forward and backward over the micro-batches (and devices), gradient
//! accumulation, global clipping, AdamW and the EMA.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor};
use editmgt_mgt::{LoraAdapter, MgtTransformer};

use crate::config::TrainConfig;
use crate::objective::{TrainBatch, batch_loss};
use crate::optim::{AdamW, Ema, clip_factor, global_norm};
use crate::params::{ParamInfo, gradients, map_params, param_infos};
use crate::rng::SplitMix64;
use crate::{TrainError, lora};

/// One device's loss and gradients.
type PartResult = Result<(f32, Vec<(ParamInfo, Tensor<1>)>), TrainError>;

/// What one optimizer step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The step's loss: the mean over its micro-batches of each micro-batch's mean cross
    /// entropy (what the reference logs).
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Optimizer steps done after this one.
    pub step: u64,
}

/// The parameters, optimizer state and EMA of one training run.
///
/// The model's trained parameters live on the autodiff version of the first device; frozen ones
/// (every base weight with LoRA) are held without gradients. Several devices train
/// data-parallel: each runs its part of the batch on a copy of the weights, the gradients are
/// summed on the first device (each part's loss is divided by the whole batch's masked count,
/// so the sum is exactly the gradient of the whole batch) and one update follows.
pub struct Trainer {
    model: MgtTransformer,
    devices: Vec<Device>,
    config: TrainConfig,
    optimizer: AdamW,
    ema: Option<Ema>,
    infos: Vec<ParamInfo>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("devices", &self.devices)
            .field("config", &self.config)
            .field("step", &self.optimizer.steps)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// Prepares `model` (loaded on any device, float32) for training on `devices` (plain
    /// devices; the first holds the weights and the optimizer state).
    ///
    /// With `config.lora`, adapters are attached to every targeted projection unless the model
    /// already has adapters (then those are trained, e.g. the fixture's starting factors or a
    /// resumed adapter), and the base weights are frozen. New adapters are initialised as peft
    /// does (`A` Kaiming-uniform, `B` zero) from `config.seed`.
    pub fn new(
        mut model: MgtTransformer,
        config: TrainConfig,
        devices: &[Device],
    ) -> Result<Self, TrainError> {
        config.validate()?;
        let first = devices.first().ok_or_else(|| TrainError::Config {
            field: "devices",
            value: "[]".into(),
            reason: "name at least one device".into(),
        })?;
        if let Some(lora_config) = &config.lora {
            model.set_lora_streams(lora_config.streams);
            if model.adapters().is_empty() {
                let mut rng = SplitMix64::new(config.seed ^ 0x4C6F_5241);
                lora::attach_new(&mut model, lora_config, &mut rng, first)?;
            }
        }
        let lora_mode = config.lora.is_some();
        let trainable = move |info: &ParamInfo| info.lora == lora_mode;
        let device = first.clone().inner().autodiff();
        let model = map_params(model, &device, &trainable, &mut |_, _| None);
        let infos = param_infos(&model);
        let ema = config.ema.as_ref().map(|_| Ema::default());
        Ok(Self {
            model,
            devices: devices.iter().map(|d| d.clone().inner()).collect(),
            config,
            optimizer: AdamW::default(),
            ema,
            infos,
        })
    }

    /// The model (parameters on the first device, with autodiff).
    pub fn model(&self) -> &MgtTransformer {
        &self.model
    }

    /// The model without autodiff, for inference or saving (with the EMA weights if `ema` and
    /// an EMA is kept).
    pub fn inference_model(&self, ema: bool) -> MgtTransformer {
        let device = self.devices[0].clone();
        let shadow = self.ema.as_ref().filter(|_| ema).map(|e| &e.shadow);
        map_params(
            self.model.clone(),
            &device,
            &|_: &ParamInfo| false,
            &mut |info, _| shadow.and_then(|s| s.get(&info.name)).cloned(),
        )
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Optimizer steps done.
    pub fn step(&self) -> u64 {
        self.optimizer.steps
    }

    /// The devices (plain).
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// Every float parameter of the model.
    pub fn param_infos(&self) -> &[ParamInfo] {
        &self.infos
    }

    /// Whether the parameter is trained.
    pub fn is_trained(&self, info: &ParamInfo) -> bool {
        info.lora == self.config.lora.is_some()
    }

    /// The trained parameters' current values by checkpoint name (flat, checkpoint layout).
    pub fn trained_values(&self) -> BTreeMap<String, Tensor<1>> {
        let mut out = BTreeMap::new();
        let lora_mode = self.config.lora.is_some();
        crate::params::for_each_param(&self.model, |info, value| {
            if info.lora == lora_mode {
                out.insert(info.name.clone(), value.without_autodiff());
            }
        });
        out
    }

    /// The optimizer state.
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// The EMA, if kept.
    pub fn ema(&self) -> Option<&Ema> {
        self.ema.as_ref()
    }

    /// Restores optimizer state, EMA and trained values (from a checkpoint).
    pub(crate) fn restore(
        &mut self,
        values: BTreeMap<String, Tensor<1>>,
        optimizer: AdamW,
        ema: Option<Ema>,
    ) {
        let device = self.devices[0].clone().autodiff();
        let lora_mode = self.config.lora.is_some();
        let trainable = move |info: &ParamInfo| info.lora == lora_mode;
        let model = self.model.clone();
        self.model = map_params(model, &device, &trainable, &mut |info, _| {
            values.get(&info.name).cloned()
        });
        self.optimizer = optimizer;
        if self.config.ema.is_some() {
            self.ema = Some(ema.unwrap_or_default());
        }
    }

    /// Forward and backward of `batch` on device `replica`'s copy `model`: the loss (the batch's
    /// own mean, for logging) and the gradients scaled so that the loss is
    /// `sum(nll) / normalizer * weight`.
    fn backward(
        model: &MgtTransformer,
        batch: &TrainBatch,
        normalizer: f32,
        weight: f32,
    ) -> PartResult {
        let (loss, _) = batch_loss(model, batch, normalizer / weight)?;
        let grads = loss.backward();
        let value = scalar(loss.without_autodiff());
        let own_mean = value * normalizer / weight / batch.masked_count() as f32;
        Ok((own_mean, gradients(model, &grads)))
    }

    /// The gradients of one micro-step: `parts[i]` runs on device `i` (fewer parts than devices
    /// leave devices idle). Each part's loss is divided by the masked count of all parts, so the
    /// summed gradient is the gradient of the whole micro-batch's mean; returns that mean loss
    /// and the gradients on the first device.
    pub fn micro_step(
        &self,
        parts: &[TrainBatch],
        weight: f32,
    ) -> Result<(f32, BTreeMap<String, Tensor<1>>), TrainError> {
        if parts.is_empty() || parts.len() > self.devices.len() {
            return Err(TrainError::Batch(format!(
                "{} batch parts for {} devices",
                parts.len(),
                self.devices.len()
            )));
        }
        let total: usize = parts.iter().map(TrainBatch::masked_count).sum();
        let normalizer = total as f32;
        let first = self.devices[0].clone();
        let lora_mode = self.config.lora.is_some();
        let results: Vec<PartResult> = std::thread::scope(|scope| {
            let handles: Vec<_> = parts
                .iter()
                .enumerate()
                .map(|(i, part)| {
                    let device = self.devices[i].clone();
                    let model = self.model.clone();
                    let part = part.clone();
                    scope.spawn(move || {
                        let part = part.to_device(&device.clone().autodiff());
                        if i == 0 {
                            Self::backward(&model, &part, normalizer, weight)
                        } else {
                            let trainable = move |info: &ParamInfo| info.lora == lora_mode;
                            let replica = map_params(
                                model,
                                &device.clone().autodiff(),
                                &trainable,
                                &mut |_, _| None,
                            );
                            Self::backward(&replica, &part, normalizer, weight)
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(TrainError::Batch("a device's backward panicked".into()))
                    })
                })
                .collect()
        });
        let mut sum: BTreeMap<String, Tensor<1>> = BTreeMap::new();
        let mut loss = 0.0f32;
        for (part, result) in parts.iter().zip(results) {
            let (part_loss, grads) = result?;
            loss += part_loss * part.masked_count() as f32 / normalizer;
            for (info, g) in grads {
                let g = g.to_device(&first);
                let entry = match sum.remove(&info.name) {
                    Some(acc) => acc + g,
                    None => g,
                };
                sum.insert(info.name, entry);
            }
        }
        Ok((loss, sum))
    }

    /// One optimizer step over `micro_batches` (`config.accumulation` of them, each a list of
    /// per-device parts): the gradients of each micro-batch's mean loss are averaged (as
    /// Accelerate's accumulation does), clipped, and applied.
    pub fn train_step(
        &mut self,
        micro_batches: &[Vec<TrainBatch>],
    ) -> Result<StepStats, TrainError> {
        if micro_batches.is_empty() {
            return Err(TrainError::Batch("no micro-batch".into()));
        }
        let weight = 1.0 / micro_batches.len() as f32;
        let mut grads: BTreeMap<String, Tensor<1>> = BTreeMap::new();
        let mut loss = 0.0;
        for parts in micro_batches {
            let (l, g) = self.micro_step(parts, weight)?;
            loss += l * weight;
            for (name, g) in g {
                let entry = match grads.remove(&name) {
                    Some(acc) => acc + g,
                    None => g,
                };
                grads.insert(name, entry);
            }
        }
        if !loss.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.optimizer.steps,
                loss,
            });
        }
        let (grad_norm, lr) = self.apply(grads)?;
        Ok(StepStats {
            loss,
            grad_norm,
            lr,
            step: self.optimizer.steps,
        })
    }

    /// Clips `grads` (flat, checkpoint layout, by name) to the global norm and applies one
    /// AdamW step and the EMA. Returns the norm before clipping and the learning rate.
    pub fn apply(&mut self, grads: BTreeMap<String, Tensor<1>>) -> Result<(f64, f64), TrainError> {
        let opt = self.config.optimizer.clone();
        let norm = global_norm(grads.values());
        if !norm.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.optimizer.steps,
                loss: f32::NAN,
            });
        }
        let factor = opt.max_grad_norm.map_or(1.0, |max| clip_factor(norm, max));
        let lr = opt.lr_at(self.optimizer.steps);
        let device = self.devices[0].clone().autodiff();
        let lora_mode = self.config.lora.is_some();
        let trainable = move |info: &ParamInfo| info.lora == lora_mode;
        let optimizer = &mut self.optimizer;
        let ema_decay = match (&mut self.ema, &self.config.ema) {
            (Some(ema), Some(config)) => Some(ema.begin(config)),
            _ => None,
        };
        let ema = &mut self.ema;
        let model = self.model.clone();
        self.model = map_params(model, &device, &trainable, &mut |info, value| {
            if !trainable(info) {
                return None;
            }
            let grad = grads.get(&info.name)?.clone();
            let grad = if factor != 1.0 { grad * factor } else { grad };
            let value = value.without_autodiff();
            let updated =
                optimizer.update(&opt, &info.name, value, grad, lr, opt.decays(&info.name));
            if let (Some(ema), Some(decay)) = (ema.as_mut(), ema_decay) {
                ema.update(&info.name, &updated, decay);
            }
            Some(updated)
        });
        self.optimizer.finish_step();
        Ok((norm, lr))
    }
}

/// The single value of a `[1]` tensor.
pub(crate) fn scalar(t: Tensor<1>) -> f32 {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(f32::NAN)
}

/// Attaches `adapter` factors given in checkpoint naming (`<module>.lora_A.weight`).
pub fn attach_factors(
    model: &mut MgtTransformer,
    factors: &BTreeMap<String, (Tensor<2>, Tensor<2>)>,
    scale: f32,
) -> Result<(), TrainError> {
    for (module, (a, b)) in factors {
        model.attach_adapter(module, LoraAdapter::new(a.clone(), b.clone(), scale))?;
    }
    Ok(())
}
