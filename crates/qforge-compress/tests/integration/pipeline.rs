//! One compression call end to end on the tiny compressor (random weights, so the tags are
//! arbitrary but fixed): spans are verbatim slices of the context at their offsets, the token
//! accounting is the released one, the result does not depend on how windows are batched, and
//! bad input gets clear errors.

use candle_core::{DType, Device};
use qforge_compress::CompressError;
use qforge_compress::model::Compressor;
use qforge_compress::pipeline::{CompressOptions, compress, reader_messages};
use qforge_compress::windows::encode;

fn compressor() -> Compressor {
    let dir = qforge_testkit::fixture("cprs/tiny_compressor");
    Compressor::load(&dir, DType::F32, &Device::Cpu).unwrap()
}

const CONTEXT: &str = "The special magic number for kyoto is: 4711. Cats sleep a lot. The river is long. \
    Osaka has a port. The special magic number for nara is: 1234. Trains run on time. \
    Tea is green. 京都是古都。大阪很大！Mountains rise high.";

#[test]
fn spans_are_verbatim_and_accounting_is_the_released_one() {
    let c = compressor();
    let options = CompressOptions {
        window: 80,
        min_keyword_len: 0,
        split_with_sent: false,
        ..CompressOptions::default()
    };
    let out = compress(&c, "Extract the needles.", "kyoto?", CONTEXT, &options).unwrap();
    let chars: Vec<char> = CONTEXT.chars().collect();
    for s in &out.spans {
        let slice: String = chars[s.start..s.end].iter().collect();
        assert_eq!(
            slice.trim(),
            s.text,
            "a span is the context between its offsets"
        );
    }
    let n = encode(&c.tokenizer, CONTEXT).0.len();
    assert_eq!(out.context_tokens, n);
    assert_eq!(out.windows, n.div_ceil(80 - out.prefix_tokens));
    assert_eq!(out.input_tokens, out.prefix_tokens * out.windows + n);
    if let Some(ratio) = out.ratio {
        assert!((ratio - n as f64 / out.kept_tokens as f64).abs() < 1e-12);
    }
    let messages = reader_messages(&out.texts(), "kyoto?");
    assert!(
        messages[0]["content"]
            .as_str()
            .unwrap()
            .starts_with("Doc content:\n\n")
    );
    assert_eq!(messages[1]["content"], "kyoto?");
}

#[test]
fn the_result_does_not_depend_on_window_batching() {
    let c = compressor();
    for split_with_sent in [false, true] {
        let run = |batch| {
            let options = CompressOptions {
                window: 72,
                batch,
                split_with_sent,
                ..CompressOptions::default()
            };
            compress(&c, "Extract the needles.", "kyoto?", CONTEXT, &options).unwrap()
        };
        let one = run(1);
        assert!(one.windows > 2, "{}", one.windows);
        for batch in [2, 3, 8] {
            let many = run(batch);
            assert_eq!(many.spans, one.spans, "batch {batch}");
            assert_eq!(many.input_tokens, one.input_tokens);
        }
    }
}

#[test]
fn bad_input_is_a_clear_error_or_handled() {
    let c = compressor();
    let options = CompressOptions {
        window: 64,
        ..CompressOptions::default()
    };
    assert!(matches!(
        compress(&c, "i", "q", "  \n", &options),
        Err(CompressError::EmptyContext)
    ));
    let err = compress(
        &c,
        &"a long instruction ".repeat(30),
        "q",
        "some context",
        &options,
    )
    .unwrap_err();
    assert!(err.to_string().contains("leaving no room"), "{err}");
    // A context smaller than one window: one window.
    let out = compress(&c, "i", "q", "tiny", &options).unwrap();
    assert_eq!(out.windows, 1);
    // The cap: a context cut to 5 tokens labels at most 5.
    let capped = CompressOptions {
        max_context_tokens: 5,
        ..options
    };
    assert!(
        compress(&c, "i", "q", CONTEXT, &capped)
            .unwrap()
            .context_tokens
            <= 5
    );
}

fn needle_compressor() -> Compressor {
    let dir = qforge_testkit::fixture("cprs/needle_compressor");
    Compressor::load(&dir, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn category_mode_names_the_needle_with_the_critic_head() {
    use qforge_compress::synthetic::{NIAH_INSTRUCTION, NOISE};
    let c = needle_compressor();
    let needle = "One of the special magic numbers for quiet-lantern is: 4072913.";
    let context = format!("{} {needle} {}", [NOISE; 5].join(" "), [NOISE; 4].join(" "));
    let options = CompressOptions {
        window: 512,
        categories: vec!["needle".into()],
        ..CompressOptions::default()
    };
    let query =
        "What is the special magic number for quiet-lantern mentioned in the provided text?";
    let out = compress(&c, NIAH_INSTRUCTION, query, &context, &options).unwrap();
    assert_eq!(out.texts(), vec![needle]);
    let categories = out.categories.unwrap();
    assert_eq!(categories[0].tag, "needle");
    assert!(categories[0].probability > 0.5, "{categories:?}");
    // Off by default, as the released server.
    let plain = compress(
        &c,
        NIAH_INSTRUCTION,
        query,
        &context,
        &CompressOptions {
            window: 512,
            ..CompressOptions::default()
        },
    )
    .unwrap();
    assert!(plain.categories.is_none());
    assert_eq!(plain.spans, out.spans);
}

#[test]
fn mixed_scripts_pack_whole_sentences_and_spans_stay_verbatim() {
    let c = compressor();
    let context = "Tokyo is big. 京都是古都。大阪很大！Kyoto has temples.\nThe end? 東京タワー。";
    for split_with_sent in [true, false] {
        let out = compress(
            &c,
            "i",
            "q",
            context,
            &CompressOptions {
                window: 40,
                min_keyword_len: 0,
                split_with_sent,
                ..CompressOptions::default()
            },
        )
        .unwrap();
        assert!(out.windows > 1);
        let chars: Vec<char> = context.chars().collect();
        for s in &out.spans {
            let slice: String = chars[s.start..s.end].iter().collect();
            assert_eq!(slice.trim(), s.text);
        }
        let n = encode(&c.tokenizer, context).0.len();
        if !split_with_sent {
            assert_eq!(out.context_tokens, n, "token windows partition the context");
        }
    }
}
