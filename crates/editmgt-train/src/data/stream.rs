//! The order examples are drawn in: a fresh shuffle per pass over the data, derived from the
//! seed and the pass number, so a position `(epoch, index)` is enough to resume.

use crate::checkpoint::DataPosition;
use crate::rng::SplitMix64;

/// A resumable, shuffled stream of example indices.
#[derive(Debug, Clone)]
pub struct DataStream {
    len: usize,
    seed: u64,
    order: Vec<usize>,
    epoch: u64,
    index: usize,
}

impl DataStream {
    /// A stream over `len` examples (`len > 0`) starting at the beginning.
    pub fn new(len: usize, seed: u64) -> Self {
        let mut s = Self {
            len,
            seed,
            order: Vec::new(),
            epoch: 0,
            index: 0,
        };
        s.shuffle();
        s
    }

    /// The stream positioned at `position` (epoch and index; the generator state is the
    /// caller's).
    pub fn resume(len: usize, seed: u64, position: &DataPosition) -> Self {
        let mut s = Self::new(len, seed);
        s.epoch = position.epoch;
        s.shuffle();
        s.index = (position.index as usize).min(len);
        s
    }

    fn shuffle(&mut self) {
        let mut rng = SplitMix64::new(self.seed ^ self.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        self.order = (0..self.len).collect();
        rng.shuffle(&mut self.order);
    }

    /// The next `n` example indices, wrapping into a new (reshuffled) pass as needed.
    pub fn take(&mut self, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n && self.len > 0 {
            if self.index >= self.len {
                self.epoch += 1;
                self.index = 0;
                self.shuffle();
            }
            out.push(self.order[self.index]);
            self.index += 1;
        }
        out
    }

    /// `(epoch, index)` now.
    pub fn position(&self) -> (u64, u64) {
        (self.epoch, self.index as u64)
    }
}
