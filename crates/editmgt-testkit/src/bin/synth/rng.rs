//! Deterministic random values: SplitMix64 streams and the initialisation of each tensor.

/// The number of values generated from one independent stream (a tensor is cut into chunks so
/// that chunks can be generated in parallel and still give the same values on any machine).
pub const CHUNK: usize = 1 << 20;

/// One SplitMix64 step: advances `state` and returns the next 64 random bits. (The same as
/// `editmgt_core::rng::splitmix64`; the test kit cannot depend on editmgt-core, whose tests
/// depend on the test kit.)
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a string: the part of a tensor's stream seed that comes from its name.
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// The seed of one tensor's values: depends on the run's seed, the component and the tensor
/// name only (never on the order tensors are written in or on which components are chosen).
pub fn tensor_seed(seed: u64, component: &str, name: &str) -> u64 {
    let mut state = seed ^ fnv1a(component).rotate_left(17) ^ fnv1a(name);
    splitmix64(&mut state)
}

/// A value of zero mean and unit variance from 64 random bits: the sum of four 16-bit uniforms
/// (Irwin-Hall, bell-shaped and bounded by about ±3.46, so never an outlier that overflows).
pub fn normalish(bits: u64) -> f32 {
    let sum = (bits & 0xFFFF) + ((bits >> 16) & 0xFFFF) + ((bits >> 32) & 0xFFFF) + (bits >> 48);
    // Four uniforms on {0, ..., 65535}: mean 2 * 65535, standard deviation 65536 / sqrt(3).
    (sum as f32 - 131_070.0) * (3f32.sqrt() / 65_536.0)
}

/// How one tensor's values are drawn: `mean + std * normalish()`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Init {
    /// The centre of the values.
    pub mean: f32,
    /// Their standard deviation (0 gives the constant `mean`).
    pub std: f32,
}

impl Init {
    /// The values of chunk `index` of a tensor whose stream seed is `seed`, `len` of them
    /// (at most [`CHUNK`]).
    pub fn chunk(self, seed: u64, index: u64, len: usize) -> Vec<f32> {
        let mut state = seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
        splitmix64(&mut state);
        (0..len)
            .map(|_| self.mean + self.std * normalish(splitmix64(&mut state)))
            .collect()
    }
}

/// The initialisation of tensor `name` of shape `shape`, chosen so that activations stay finite
/// and of order one through every layer of a randomly initialised model:
///
/// - biases: `N(0, 0.01)`;
/// - norm weights (1-D tensors of a module whose name contains `norm`): near 1, or near 0 when
///   `norm_is_offset` (Gemma's RMSNorm multiplies by `1 + w`); other 1-D tensors near 0;
/// - embedding tables: standard deviation `1/sqrt(dim)`, except a VQ codebook (`quantize.`),
///   which gets unit latents;
/// - AdaLN modulation linears (`norm*.linear.weight`): `0.1/sqrt(fan_in)`, so scales, shifts
///   and gates stay small;
/// - every other matrix or convolution kernel: `1/sqrt(fan_in)`, `fan_in` being the product of
///   every dimension but the first (`in` for a Linear `[out, in]`, `in*k*k` for a convolution).
pub fn init_for(name: &str, shape: &[usize], norm_is_offset: bool) -> Init {
    let segments: Vec<&str> = name.split('.').collect();
    let leaf = segments.last().copied().unwrap_or("");
    let parent = if segments.len() >= 2 {
        segments[segments.len() - 2]
    } else {
        ""
    };
    if leaf == "bias" {
        return Init {
            mean: 0.0,
            std: 0.01,
        };
    }
    if shape.len() <= 1 {
        return if parent.contains("norm") {
            Init {
                mean: if norm_is_offset { 0.0 } else { 1.0 },
                std: 0.02,
            }
        } else {
            Init {
                mean: 0.0,
                std: 0.02,
            }
        };
    }
    let dim = *shape.last().unwrap_or(&1) as f32;
    if parent.ends_with("embedding") || parent.ends_with("embeddings") || parent == "embed_tokens" {
        let std = if segments.first() == Some(&"quantize") {
            1.0
        } else {
            1.0 / dim.sqrt()
        };
        return Init { mean: 0.0, std };
    }
    let fan_in = shape[1..].iter().product::<usize>().max(1) as f32;
    let modulation = parent == "linear"
        && segments.len() >= 3
        && segments[segments.len() - 3].starts_with("norm");
    let gain = if modulation { 0.1 } else { 1.0 };
    Init {
        mean: 0.0,
        std: gain / fan_in.sqrt(),
    }
}
