//! What the VQ's test binaries share.

use std::path::Path;

use editmgt_testkit::RealShapes;
use editmgt_vq::VqConfig;

/// The released VQ's real-shape listing and its configuration, checked as loading checks it.
pub fn real_config() -> (RealShapes, VqConfig) {
    let real = RealShapes::load("vqvae");
    let config: VqConfig = serde_json::from_value(real.config.clone()).unwrap();
    config
        .validate(Path::new("real-shapes/vqvae.json"))
        .unwrap();
    (real, config)
}
