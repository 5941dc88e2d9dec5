//! One [`Editor`] shared by several threads, as `editmgt serve` shares it: it is `Send + Sync`,
//! and concurrent edits give exactly what the same edits give one after another.

use std::sync::Arc;

use editmgt_pipeline::{DeviceSpec, EditOutput, EditRequest, Editor, EditorOptions, RegionHold};
use editmgt_testkit::{case_file, model_dir};

/// Compile-time: an editor can be shared between threads (servers hold one in an `Arc`).
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Editor>();
    shared::<EditRequest>();
    shared::<EditOutput>();
};

#[test]
fn concurrent_edits_equal_sequential_ones() {
    let editor = Arc::new(
        Editor::from_folder(
            model_dir(),
            &DeviceSpec::Cpu.device().unwrap(),
            // 256 instead of 1024: 16 times less work, the same code paths.
            EditorOptions {
                resolution: 256,
                ..EditorOptions::default()
            },
        )
        .unwrap(),
    );
    let source = Arc::new(editmgt_pipeline::load_image(case_file("source.png")).unwrap());
    let requests: Vec<EditRequest> = vec![
        EditRequest::new("make the sky blue").steps(2).seed(1),
        EditRequest::new("add a red boat").steps(3).seed(2),
        EditRequest::new("make it snowy")
            .steps(2)
            .seed(3)
            .region_hold(RegionHold::new(0.2).blocks([2, 3]))
            .record_localisation(true),
    ];
    let sequential: Vec<EditOutput> = requests
        .iter()
        .map(|r| editor.edit(&source, r).unwrap())
        .collect();
    let threads: Vec<_> = requests
        .iter()
        .cloned()
        .map(|request| {
            let (editor, source) = (Arc::clone(&editor), Arc::clone(&source));
            std::thread::spawn(move || editor.edit(&source, &request).unwrap())
        })
        .collect();
    let concurrent: Vec<EditOutput> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (k, (a, b)) in sequential.iter().zip(&concurrent).enumerate() {
        assert_eq!(a.tokens, b.tokens, "request {k}: tokens");
        assert_eq!(a.grid, b.grid, "request {k}: grid");
        assert!(a.image == b.image, "request {k}: image");
        assert_eq!(a.localisation.len(), b.localisation.len(), "request {k}");
        for (x, y) in a.localisation.iter().zip(&b.localisation) {
            assert_eq!(
                x.to_vec().unwrap(),
                y.to_vec().unwrap(),
                "request {k}: localisation"
            );
        }
    }
    // The requests differ, so equal results are not a coincidence of identical inputs.
    assert_ne!(sequential[0].tokens, sequential[1].tokens);
    assert_eq!(concurrent[2].localisation.len(), 2);
}
