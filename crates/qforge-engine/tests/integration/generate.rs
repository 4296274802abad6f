//! Generation invariants on a tiny fixture checkpoint.

use std::sync::Arc;

use candle_core::{DType, Device, IndexOp};
use qforge_engine::{Engine, EngineError, FinishReason, GenerationRequest, SamplingParams};
use qforge_model::{Batch, Checkpoint};

fn engine(variant: &str) -> Engine {
    let dir = qforge_testkit::fixture("model").join(variant);
    let ck = Checkpoint::load_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    Engine::new(ck.model, Arc::new(ck.tokenizer))
}

const PROMPTS: [&[u32]; 3] = [&[17, 250, 99, 3, 141, 77, 200], &[64, 12, 300], &[120]];

fn greedy(prompt: &[u32], n: usize) -> GenerationRequest {
    GenerationRequest::new(prompt.to_vec(), n)
}

#[test]
fn batched_generation_equals_single_generation() {
    for variant in [
        "qwen3_tied_gqa",
        "qwen3_untied_mqa_yarn",
        "qwen2_bias_linear",
    ] {
        let e = engine(variant);
        let batched = e
            .generate(PROMPTS.iter().map(|p| greedy(p, 12)).collect(), |_| {})
            .unwrap();
        for (i, p) in PROMPTS.iter().enumerate() {
            let single = e.generate(vec![greedy(p, 12)], |_| {}).unwrap().remove(0);
            assert_eq!(
                batched[i].token_ids(),
                single.token_ids(),
                "{variant} prompt {i}"
            );
            for (a, b) in batched[i].tokens.iter().zip(&single.tokens) {
                assert!(
                    (a.logprob - b.logprob).abs() < 1e-4,
                    "{variant} prompt {i}: logprob {} vs {}",
                    a.logprob,
                    b.logprob
                );
            }
        }
    }
}

#[test]
fn cached_greedy_generation_equals_recomputing_the_full_prefix() {
    let e = engine("qwen3_untied_mqa_yarn");
    let out = e
        .generate(vec![greedy(PROMPTS[0], 10)], |_| {})
        .unwrap()
        .remove(0);
    let mut ids = PROMPTS[0].to_vec();
    for (step, tok) in out.tokens.iter().enumerate() {
        let batch = Batch::left_padded(&[&ids], &[0], 0, &Device::Cpu).unwrap();
        let logits = e
            .model()
            .last_logits(&e.model().forward(&batch, None).unwrap())
            .unwrap();
        let logits = logits.i(0).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(
            qforge_engine::sampling::argmax(&logits),
            tok.id,
            "step {step}"
        );
        let lp = qforge_engine::sampling::log_softmax(&logits)[tok.id as usize];
        assert!((lp - tok.logprob).abs() < 1e-4, "step {step}");
        ids.push(tok.id);
    }
}

#[test]
fn logprobs_equal_scoring_the_generated_text() {
    let e = engine("qwen3_tied_gqa");
    let out = e
        .generate(vec![greedy(PROMPTS[1], 8)], |_| {})
        .unwrap()
        .remove(0);
    let mut ids = PROMPTS[1].to_vec();
    ids.extend(out.token_ids());
    let batch = Batch::left_padded(&[&ids], &[0], 0, &Device::Cpu).unwrap();
    let scored = e
        .model()
        .next_token_logprobs(&batch)
        .unwrap()
        .i(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (i, tok) in out.tokens.iter().enumerate() {
        let s = scored[PROMPTS[1].len() - 1 + i];
        assert!(
            (s - tok.logprob).abs() < 1e-4,
            "token {i}: {s} vs {}",
            tok.logprob
        );
    }
}

#[test]
fn each_sequence_stops_on_its_own() {
    let e = engine("qwen3_tied_gqa");
    let reference = e
        .generate(vec![greedy(PROMPTS[0], 10)], |_| {})
        .unwrap()
        .remove(0);
    let stop_id = reference.tokens[3].id;
    let first = reference
        .tokens
        .iter()
        .position(|t| t.id == stop_id)
        .unwrap();
    let mut with_stop = greedy(PROMPTS[0], 10);
    with_stop.stop.stop_token_ids = vec![stop_id];
    let outs = e
        .generate(
            vec![with_stop, greedy(PROMPTS[1], 5), greedy(PROMPTS[2], 7)],
            |_| {},
        )
        .unwrap();
    assert_eq!(outs[0].finish_reason, FinishReason::StopToken(stop_id));
    assert_eq!(
        outs[0].tokens.len(),
        first + 1,
        "the stop token is the last token"
    );
    assert_eq!(outs[1].tokens.len(), 5);
    assert_eq!(outs[1].finish_reason, FinishReason::Length);
    assert_eq!(outs[2].tokens.len(), 7);
}

#[test]
fn stop_strings_cut_the_text_and_never_stream() {
    let e = engine("qwen3_tied_gqa");
    let reference = e
        .generate(vec![greedy(PROMPTS[0], 24)], |_| {})
        .unwrap()
        .remove(0);
    let text = reference.text.clone();
    assert!(text.chars().count() >= 6, "need some text to cut: {text:?}");
    // A stop string from the middle of the greedy text.
    let start = text.char_indices().nth(text.chars().count() / 2).unwrap().0;
    let stop: String = text[start..].chars().take(3).collect();
    let cut_at = text.find(&stop).unwrap();
    let mut req = greedy(PROMPTS[0], 24);
    req.stop.stop_strings = vec![stop.clone()];
    let mut streamed = String::new();
    let out = e
        .generate(vec![req], |ev| streamed.push_str(&ev.text))
        .unwrap()
        .remove(0);
    assert_eq!(out.finish_reason, FinishReason::StopString(stop.clone()));
    assert_eq!(out.text, text[..cut_at]);
    assert_eq!(streamed, out.text);
    assert!(!streamed.contains(&stop));
}

#[test]
fn streamed_text_equals_final_text() {
    let e = engine("qwen2_bias_linear");
    let mut streamed = vec![String::new(); PROMPTS.len()];
    let mut counts = vec![0; PROMPTS.len()];
    let outs = e
        .generate(PROMPTS.iter().map(|p| greedy(p, 15)).collect(), |ev| {
            streamed[ev.index].push_str(&ev.text);
            counts[ev.index] += 1;
        })
        .unwrap();
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(streamed[i], out.text);
        assert_eq!(counts[i], out.tokens.len());
        assert_eq!(
            out.text,
            e.tokenizer().decode(&out.token_ids(), true).unwrap()
        );
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_independent_of_the_batch() {
    let e = engine("qwen3_tied_gqa");
    let sampled = |seed: u64| {
        let mut r = greedy(PROMPTS[0], 16);
        r.sampling = SamplingParams {
            temperature: 1.5,
            top_k: 50,
            top_p: 0.95,
            min_p: 0.01,
            repetition_penalty: 1.1,
            presence_penalty: 0.5,
            frequency_penalty: 0.2,
            logit_bias: vec![(5, 1.0)],
            seed: Some(seed),
        };
        r
    };
    let a = e.generate(vec![sampled(1)], |_| {}).unwrap().remove(0);
    let b = e.generate(vec![sampled(1)], |_| {}).unwrap().remove(0);
    assert_eq!(a.token_ids(), b.token_ids());
    let in_batch = e
        .generate(vec![greedy(PROMPTS[1], 4), sampled(1)], |_| {})
        .unwrap()
        .remove(1);
    assert_eq!(a.token_ids(), in_batch.token_ids());
    let others: Vec<Vec<u32>> = (2..6)
        .map(|s| {
            e.generate(vec![sampled(s)], |_| {})
                .unwrap()
                .remove(0)
                .token_ids()
        })
        .collect();
    assert!(
        others.iter().any(|o| o != &a.token_ids()),
        "different seeds should sample differently"
    );
}

#[test]
fn top_logprobs_are_sorted_and_include_greedy_choice() {
    let e = engine("qwen3_tied_gqa");
    let mut r = greedy(PROMPTS[2], 4);
    r.top_logprobs = 5;
    let out = e.generate(vec![r], |_| {}).unwrap().remove(0);
    for t in &out.tokens {
        assert_eq!(t.top_logprobs.len(), 5);
        assert_eq!(t.top_logprobs[0].0, t.id);
        assert!(t.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1));
    }
}

#[test]
fn generation_stops_at_the_context_length() {
    let e = engine("qwen3_tied_gqa"); // 1024 positions
    let prompt: Vec<u32> = (0..1018).map(|i| (i % 300) as u32).collect();
    let out = e
        .generate(vec![greedy(&prompt, 100)], |_| {})
        .unwrap()
        .remove(0);
    assert_eq!(out.tokens.len(), 6);
    assert_eq!(out.finish_reason, FinishReason::Length);
}

#[test]
fn bad_requests_are_errors() {
    let e = engine("qwen3_tied_gqa");
    assert!(matches!(
        e.generate(vec![greedy(&[], 4)], |_| {}),
        Err(EngineError::EmptyPrompt { index: 0 })
    ));
    let long = vec![5u32; 1024];
    assert!(matches!(
        e.generate(vec![greedy(&[1], 1), greedy(&long, 4)], |_| {}),
        Err(EngineError::PromptTooLong {
            index: 1,
            len: 1024,
            max: 1024
        })
    ));
    let err = e.generate(vec![greedy(&[9999], 1)], |_| {}).unwrap_err();
    assert!(err.to_string().contains("9999"), "{err}");
    let mut bad = greedy(&[1], 1);
    bad.sampling.top_p = 0.0;
    assert!(matches!(
        e.generate(vec![bad], |_| {}),
        Err(EngineError::InvalidParameter(_))
    ));
}

/// A request's generated ids and their log-probs.
type Generated = (Vec<u32>, Vec<f32>);

/// Runs `requests` one after another through a scheduler (prefix cache of `cache_bytes`):
/// each one's generated ids and log-probs, and the scheduler's metrics.
fn through_scheduler(
    e: &Engine,
    cache_bytes: usize,
    requests: &[GenerationRequest],
) -> (Vec<Generated>, Arc<qforge_engine::Metrics>) {
    use qforge_engine::scheduler::SeqEvent;
    let metrics = Arc::new(qforge_engine::Metrics::default());
    let scheduler = qforge_engine::Scheduler::spawn(
        e.clone(),
        qforge_engine::SchedulerConfig {
            prefix_cache_bytes: cache_bytes,
            ..Default::default()
        },
        metrics.clone(),
    );
    let outputs = requests
        .iter()
        .map(|r| {
            let mut rx = scheduler.submit(r.clone()).unwrap();
            let (mut ids, mut logprobs) = (Vec::new(), Vec::new());
            while let Some(event) = rx.blocking_recv() {
                match event {
                    SeqEvent::Started => {}
                    SeqEvent::Token(t) => {
                        ids.push(t.token.id);
                        logprobs.push(t.token.logprob);
                    }
                    SeqEvent::Error(e) => panic!("{e}"),
                }
            }
            (ids, logprobs)
        })
        .collect();
    (outputs, metrics)
}

/// Prompts sharing a long prefix (a system prompt, a guard template): with the prefix cache,
/// later ones restore the shared blocks and prefill only the rest, and generate what they
/// generate without it.
#[test]
fn prefix_cached_prompts_generate_what_uncached_ones_do() {
    for variant in [
        "qwen3_tied_gqa",
        "qwen3_untied_mqa_yarn",
        "qwen2_bias_linear",
    ] {
        let e = engine(variant);
        let shared: Vec<u32> = (0..70).map(|i| (i * 37 + 11) % 300 + 5).collect();
        let requests: Vec<GenerationRequest> = [&[7u32, 8, 9][..], &[250, 3], &[7, 8, 9], &[1]]
            .iter()
            .map(|suffix| greedy(&[shared.as_slice(), suffix].concat(), 10))
            .collect();
        let (cached, metrics) = through_scheduler(&e, 64 << 20, &requests);
        let (uncached, off) = through_scheduler(&e, 0, &requests);
        for (i, ((ci, cl), (ui, ul))) in cached.iter().zip(&uncached).enumerate() {
            assert_eq!(ci, ui, "{variant} request {i}");
            for (a, b) in cl.iter().zip(ul) {
                assert!((a - b).abs() < 1e-4, "{variant} request {i}: {a} vs {b}");
            }
        }
        // Every later prompt found the 64 shared tokens (4 blocks); the repeated one found 64
        // too (its own 73 tokens hold 4 full blocks).
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(get(&metrics.prefix_cache_hits), 3 * 64, "{variant}");
        assert_eq!(
            get(&metrics.prefix_cache_queries),
            requests
                .iter()
                .map(|r| r.prompt_ids.len() as u64)
                .sum::<u64>()
        );
        assert_eq!(get(&off.prefix_cache_hits), 0);
        assert!(metrics.render().contains("qforge_prefix_cache_hit_rate 0."));
    }
}

/// The scheduler thread drains its channel into its own waiting list at every step, so a
/// queue bounded by the channel alone let every request in (CI saw eight 200s where
/// `max_queue = 1` allows two).
#[test]
fn a_full_queue_refuses_even_after_the_scheduler_drained_it() {
    use qforge_engine::scheduler::SeqEvent;
    use qforge_engine::scheduler::SubmitError;
    use qforge_engine::{Scheduler, SchedulerConfig};
    use std::sync::atomic::Ordering::Relaxed;
    let e = engine("qwen3_tied_gqa"); // 1024 positions
    let metrics = Arc::new(qforge_engine::Metrics::default());
    let scheduler = Scheduler::spawn(
        e,
        SchedulerConfig {
            max_seqs: 1,
            max_queue: 1,
            ..Default::default()
        },
        metrics.clone(),
    );
    // Without stop tokens the first request decodes until the context is full: it holds the
    // only running slot while the rest is submitted.
    let mut running = scheduler.submit(greedy(&[5], 1020)).unwrap();
    assert!(matches!(running.blocking_recv(), Some(SeqEvent::Started)));
    let waiting = scheduler.submit(greedy(&[6], 4)).unwrap();
    // Let the scheduler take the waiting request off its channel (it does at every step).
    let submitted_at = metrics.steps.load(Relaxed);
    while metrics.steps.load(Relaxed) < submitted_at + 2 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let refused = scheduler.submit(greedy(&[7], 4));
    assert!(
        matches!(refused, Err(SubmitError::QueueFull(1))),
        "{refused:?}"
    );
    assert_eq!(metrics.requests_rejected.load(Relaxed), 1);
    // The first request was still running: the refusal was the queue's, not a race.
    assert_eq!(metrics.requests_finished.load(Relaxed), 0);
    // Once the waiting request leaves, its place is free again.
    drop(waiting);
    drop(running);
    let mut admitted = None;
    for _ in 0..2000 {
        match scheduler.submit(greedy(&[8], 2)) {
            Ok(rx) => {
                admitted = Some(rx);
                break;
            }
            Err(SubmitError::QueueFull(_)) => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            Err(other) => panic!("{other}"),
        }
    }
    let mut rx = admitted.expect("a cancelled request frees its queue place");
    let mut tokens = 0;
    while let Some(event) = rx.blocking_recv() {
        if let SeqEvent::Token(_) = event {
            tokens += 1;
        }
    }
    assert_eq!(tokens, 2);
}

/// A vision-language engine: greedy generation after an image equals recomputing the full
/// forward (with M-RoPE positions) at every step, and rows with images, video and text alone
/// share a batch without changing each other's output.
#[test]
fn vision_language_generation_equals_the_full_forward_and_mixes_with_text_rows() {
    use qforge_model::vl::{RgbImage, VisualInputs, processor, vl_batch};
    let dir = qforge_testkit::fixture("vlm/qwen2_5_vl_tied");
    let ck = qforge_model::Checkpoint::load_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    let model = ck.model.clone();
    let vision = ck.vision.clone().expect("a vision-language checkpoint");
    let engine = Engine::from_checkpoint(ck);
    let image = |name: &str| {
        let img = RgbImage::open(&qforge_testkit::fixture("vlm").join(name)).unwrap();
        vision.process_image(&img).unwrap()
    };
    let frames: Vec<RgbImage> = (0..3)
        .map(|_| RgbImage::open(&qforge_testkit::fixture("vlm/image_b.png")).unwrap())
        .collect();
    let video = processor::process_video(&vision.processor, &frames).unwrap();
    let (vs, ve, img, vid) = (58, 59, vision.tokens.image, vision.tokens.video);
    let with_image = VisualInputs {
        images: vec![image("image_b.png")],
        videos: vec![],
    };
    let with_both = VisualInputs {
        images: vec![image("image_a.png")],
        videos: vec![(video, 0.5)],
    };
    let prompts = [
        (vec![8, vs, img, ve, 9, 10], Some(with_image)),
        (vec![11, 12, 13], None),
        (vec![1, vs, img, ve, 2, vs, vid, ve, 3], Some(with_both)),
    ];
    let requests: Vec<GenerationRequest> = prompts
        .iter()
        .map(|(ids, visual)| {
            let ids = match visual {
                Some(v) => vision.expand(ids, v).unwrap(),
                None => ids.clone(),
            };
            let mut r = greedy(&ids, 6);
            r.visual = visual.clone().map(Arc::new);
            r
        })
        .collect();
    let together = engine.generate(requests.clone(), |_| {}).unwrap();
    for (i, request) in requests.iter().enumerate() {
        let alone = engine
            .generate(vec![request.clone()], |_| {})
            .unwrap()
            .remove(0);
        assert_eq!(together[i].token_ids(), alone.token_ids(), "row {i}");
        // Recompute every step from scratch: the full forward's argmax is the token chosen.
        let visual = request.visual.as_deref().cloned().unwrap_or_default();
        for k in 0..alone.tokens.len() {
            let ids: Vec<u32> = request
                .prompt_ids
                .iter()
                .copied()
                .chain(alone.token_ids()[..k].iter().copied())
                .collect();
            let batch = vl_batch(
                &model,
                &vision.tower,
                vision.tokens,
                &[&ids],
                &visual,
                62,
                true,
            )
            .unwrap()
            .batch;
            let logits = model
                .last_logits(&model.forward(&batch, None).unwrap())
                .unwrap()
                .i(0)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let argmax = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0 as u32;
            assert_eq!(alone.token_ids()[k], argmax, "row {i} step {k}");
        }
    }
    // A text-only engine refuses pixels with a typed error.
    let text_only = engine_for_text();
    let err = text_only
        .generate(vec![requests[0].clone()], |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("text-only"), "{err}");
}

fn engine_for_text() -> Engine {
    engine("qwen3_tied_gqa")
}

/// Visual tokens count like any prompt token: a video longer than the context is refused when
/// submitted (typed error with the expanded length), and the scheduler's KV budget is charged
/// for the expanded prompt, not the rendered one.
#[test]
fn visual_tokens_count_against_the_context_and_the_kv_budget() {
    use qforge_engine::scheduler::SubmitError;
    use qforge_engine::{EngineError, Scheduler, SchedulerConfig};
    use qforge_model::vl::{RgbImage, VisualInputs, processor};
    let dir = qforge_testkit::fixture("vlm/qwen2_5_vl_tied");
    let ck = qforge_model::Checkpoint::load_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    let vision = ck.vision.clone().unwrap();
    let engine = Engine::from_checkpoint(ck);
    let frame = RgbImage::open(&qforge_testkit::fixture("vlm/image_a.png")).unwrap();
    // 100 frames of 168 x 112: 50 temporal patches of 24 merged tokens, over the 1024 context.
    let video = processor::process_video(&vision.processor, &vec![frame.clone(); 100]).unwrap();
    let visual = VisualInputs {
        images: vec![],
        videos: vec![(video, 1.0)],
    };
    let ids = vision
        .expand(&[1, 58, vision.tokens.video, 59, 2], &visual)
        .unwrap();
    assert_eq!(ids.len(), 4 + 50 * 24);
    let mut long = greedy(&ids, 4);
    long.visual = Some(Arc::new(visual));
    match engine.start(0, long) {
        Err(EngineError::PromptTooLong {
            len: 1204,
            max: 1024,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // One image of 24 merged tokens: a budget for the 5 rendered tokens is too small.
    let image = VisualInputs {
        images: vec![vision.process_image(&frame).unwrap()],
        videos: vec![],
    };
    let ids = vision
        .expand(&[1, 58, vision.tokens.image, 59, 2], &image)
        .unwrap();
    let kv_per_token = 2 * 2 * 2 * 16 * 4; // layers x K/V x kv heads x head dim x f32
    let scheduler = Scheduler::spawn(
        engine,
        SchedulerConfig {
            max_kv_bytes: (5 + 4) * kv_per_token * 2,
            ..Default::default()
        },
        Arc::new(qforge_engine::Metrics::default()),
    );
    let mut request = greedy(&ids, 4);
    request.visual = Some(Arc::new(image));
    match scheduler.submit(request) {
        Err(SubmitError::TooLarge { needed, .. }) => {
            assert_eq!(needed, (ids.len() + 4) * kv_per_token)
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}
