//! A full 6-step edit of the repository's tiny model (source.png, 1024x1024) on the flex CPU
//! device: text encoding, VQ encode, 6 transformer steps with guidance, sampling, VQ decode.

use burn::tensor::Device;
use criterion::{Criterion, criterion_group, criterion_main};
use editmgt_pipeline::{EditRequest, Editor, EditorOptions, RegionHold};
use editmgt_testkit::{case_file, model_dir};

fn bench(c: &mut Criterion) {
    let editor = Editor::from_folder(model_dir(), &Device::flex(), EditorOptions::default())
        .expect("tiny model");
    let image = editmgt_pipeline::load_image(case_file("source.png")).expect("source.png");
    let plain = EditRequest::new("make it into Ghibli style").steps(6);
    let hold = plain
        .clone()
        .region_hold(RegionHold::new(0.3).blocks([2, 4]));

    let mut group = c.benchmark_group("edit_tiny_6_steps");
    group.sample_size(10);
    group.bench_function("plain", |b| b.iter(|| editor.edit(&image, &plain).unwrap()));
    group.bench_function("region_hold", |b| {
        b.iter(|| editor.edit(&image, &hold).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
