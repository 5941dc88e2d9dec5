//! Parity with the PyTorch reference on the tiny model (`cases/text.safetensors`): token ids
//! identical, float outputs within 1e-4 of each tensor's max abs value.

use editmgt_core::FloatType;
use editmgt_testkit::{Case, assert_close, model_dir, to_f32_vec};
use editmgt_text::{
    ClipTextEncoder, ClipTokenizer, GemmaEncoder, GemmaTokenizer, TextEncoder, TokenIds,
};

const TOL: f32 = 1e-4;

fn prompts(case: &Case) -> Vec<String> {
    case.meta["prompts"]
        .as_array()
        .expect("meta.prompts")
        .iter()
        .map(|p| p.as_str().expect("prompt string").to_string())
        .collect()
}

/// Rows of an I64 fixture tensor as token ids.
fn fixture_ids(case: &Case, name: &str) -> TokenIds {
    let a = case.i64(name);
    let len = a.shape[1];
    let rows = a
        .data
        .chunks(len)
        .map(|r| r.iter().map(|&v| u32::try_from(v).expect("id")).collect())
        .collect();
    TokenIds::from_rows(rows).expect("rows")
}

/// Asserts every row identical, reporting how many are.
fn assert_same_ids(what: &str, ours: &TokenIds, expected: &TokenIds, prompts: &[String]) {
    assert_eq!(ours.batch_size(), expected.batch_size(), "{what}: batch");
    assert_eq!(ours.seq_len(), expected.seq_len(), "{what}: length");
    let same = (0..ours.batch_size())
        .filter(|&i| ours.row(i) == expected.row(i))
        .count();
    println!(
        "parity {what}: {same}/{} rows of {} ids identical",
        ours.batch_size(),
        ours.seq_len()
    );
    for (i, prompt) in prompts.iter().enumerate() {
        assert_eq!(
            ours.row(i),
            expected.row(i),
            "{what}: row {i} differs for prompt {prompt:?}"
        );
    }
}

#[test]
fn clip_token_ids_match_for_both_pad_tokens() {
    let case = Case::open("text");
    let prompts = prompts(&case);
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    for (folder, fixture) in [
        ("tokenizer", "clip_input_ids"),
        ("tokenizer_eot_pad", "clip_input_ids_eot_pad"),
    ] {
        let tokenizer = ClipTokenizer::from_folder(&model_dir().join(folder)).unwrap();
        let ours = tokenizer.encode(&refs).unwrap();
        assert_same_ids(folder, &ours, &fixture_ids(&case, fixture), &prompts);
    }
}

#[test]
fn clip_tokenizer_from_a_tokenizer_json_gives_the_same_ids() {
    // A folder with only `tokenizer.json` (plus the configs naming the special tokens), as a
    // saved fast tokenizer has: written from the vocab/merges build, then loaded from it.
    let case = Case::open("text");
    let prompts = prompts(&case);
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    for (folder, fixture) in [
        ("tokenizer", "clip_input_ids"),
        ("tokenizer_eot_pad", "clip_input_ids_eot_pad"),
    ] {
        let source = model_dir().join(folder);
        let built = ClipTokenizer::from_folder(&source).unwrap();
        let target = dir.path().join(folder);
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(
            target.join("tokenizer.json"),
            built.inner().to_string(false).unwrap(),
        )
        .unwrap();
        for file in ["tokenizer_config.json", "special_tokens_map.json"] {
            std::fs::copy(source.join(file), target.join(file)).unwrap();
        }
        let loaded = ClipTokenizer::from_folder(&target).unwrap();
        let ours = loaded.encode(&refs).unwrap();
        assert_same_ids(
            &format!("{folder} via tokenizer.json"),
            &ours,
            &fixture_ids(&case, fixture),
            &prompts,
        );
    }
}

#[test]
fn gemma_token_ids_match_and_pad_on_the_reference_side() {
    let case = Case::open("text");
    let prompts = prompts(&case);
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let tokenizer = GemmaTokenizer::from_model_dir(&model_dir()).unwrap();
    let side = case.meta["gemma_padding_side"]
        .as_str()
        .expect("meta.gemma_padding_side");
    assert_eq!(tokenizer.padding_side().as_str(), side);
    let ours = tokenizer.encode(&refs).unwrap();
    assert_same_ids(
        "gemma",
        &ours,
        &fixture_ids(&case, "gemma_input_ids"),
        &prompts,
    );
}

#[test]
fn clip_text_embeds_and_hidden_states_match() {
    let case = Case::open("text");
    let device = editmgt_testkit::device();
    let clip = ClipTextEncoder::from_model_dir(&model_dir(), &device, FloatType::F32).unwrap();
    let ids = fixture_ids(&case, "clip_input_ids");
    let out = clip.forward(&ids, true).unwrap();
    let layers = clip.config().num_hidden_layers;
    assert_eq!(out.hidden_states.len(), layers + 1);
    let expected = case.f32("clip_text_embeds");
    assert_eq!(out.text_embeds.dims().to_vec(), expected.shape);
    assert_close(
        "clip_text_embeds",
        &to_f32_vec(out.text_embeds),
        &expected.data,
        TOL,
    );
    let penultimate = out.hidden_states[layers - 1].clone();
    let expected = case.f32("clip_hidden_penultimate");
    assert_eq!(penultimate.dims().to_vec(), expected.shape);
    assert_close(
        "clip_hidden_penultimate",
        &to_f32_vec(penultimate),
        &expected.data,
        TOL,
    );
    assert_close(
        "clip_last_hidden_state",
        &to_f32_vec(out.last_hidden_state),
        &case.f32("clip_last_hidden_state").data,
        TOL,
    );
}

#[test]
fn gemma_penultimate_hidden_state_matches() {
    let case = Case::open("text");
    let device = editmgt_testkit::device();
    let gemma = GemmaEncoder::from_model_dir(&model_dir(), &device, FloatType::F32).unwrap();
    let ids = fixture_ids(&case, "gemma_input_ids");
    let hidden = gemma.forward(&ids).unwrap();
    let expected = case.f32("gemma_hidden_penultimate");
    assert_eq!(hidden.dims().to_vec(), expected.shape);
    assert_close(
        "gemma_hidden_penultimate",
        &to_f32_vec(hidden),
        &expected.data,
        TOL,
    );
}

#[test]
fn text_encoder_encodes_prompts_end_to_end() {
    let case = Case::open("text");
    let prompts = prompts(&case);
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let device = editmgt_testkit::device();
    let encoder = TextEncoder::from_model_dir(&model_dir(), &device, FloatType::F32).unwrap();
    let out = encoder.encode(&refs).unwrap();
    let expected = case.f32("encoder_hidden_states");
    assert_eq!(out.encoder_hidden_states.dims().to_vec(), expected.shape);
    assert_close(
        "encoder_hidden_states",
        &to_f32_vec(out.encoder_hidden_states),
        &expected.data,
        TOL,
    );
    let expected = case.f32("pooled_projections");
    assert_eq!(out.pooled.dims().to_vec(), expected.shape);
    assert_close(
        "pooled_projections",
        &to_f32_vec(out.pooled),
        &expected.data,
        TOL,
    );

    // A batch of one (the empty prompt, the reference's default negative) gives that row.
    let empty = prompts
        .iter()
        .position(String::is_empty)
        .expect("an empty prompt");
    let single = encoder.encode(&[""]).unwrap();
    let all = case.f32("pooled_projections");
    let width = all.shape[1];
    assert_close(
        "pooled_projections[empty]",
        &to_f32_vec(single.pooled),
        &all.data[empty * width..(empty + 1) * width],
        TOL,
    );

    // The one-at-a-time path gives the same result and hands back the tokenizers.
    let (once, tokenizers) =
        TextEncoder::encode_once(&model_dir(), &device, FloatType::F32, &refs).unwrap();
    assert_close(
        "encode_once.encoder_hidden_states",
        &to_f32_vec(once.encoder_hidden_states),
        &case.f32("encoder_hidden_states").data,
        TOL,
    );
    assert_eq!(tokenizers.gemma.max_length(), 256);
    let _tokenizers = encoder.into_tokenizers();
}

#[test]
fn locate_finds_the_gemma_rows_of_query_words() {
    let case = Case::open("text");
    let prompts = prompts(&case);
    let tokenizer = GemmaTokenizer::from_model_dir(&model_dir()).unwrap();
    let ids = fixture_ids(&case, "gemma_input_ids");
    let mut checked = 0;
    for (index, prompt) in prompts.iter().enumerate() {
        let spans = tokenizer.token_spans(prompt).unwrap();
        assert_eq!(
            spans.iter().map(|s| s.id).collect::<Vec<_>>(),
            ids.row(index),
            "token_spans ids of prompt {index}"
        );
        // Every alphabetic word the tokenisation kept is found, in any case.
        let kept_until = spans.iter().map(|s| s.bytes.end).max().unwrap_or(0);
        for (start, word) in prompt
            .split(|c: char| !c.is_alphanumeric())
            .scan(0usize, |offset, w| {
                let start = prompt[*offset..].find(w).map(|i| i + *offset)?;
                *offset = start + w.len();
                Some((start, w))
            })
            .filter(|(_, w)| !w.is_empty())
        {
            if start + word.len() > kept_until {
                continue;
            }
            let rows = tokenizer.locate(prompt, &word.to_uppercase()).unwrap();
            assert!(!rows.is_empty(), "{word:?} not located in {prompt:?}");
            let range = start..start + word.len();
            let covered: usize = range
                .clone()
                .filter(|b| rows.iter().any(|&r| spans[r].bytes.contains(b)))
                .count();
            assert_eq!(covered, word.len(), "rows of {word:?} do not cover it");
            for &r in &rows {
                assert!(!spans[r].special, "special row {r} for {word:?}");
            }
            checked += 1;
        }
        assert!(tokenizer.locate(prompt, "zebra").unwrap().is_empty());
    }
    assert!(checked > 20, "only {checked} words checked");
}
