//! MUSEG: the rewards and the evaluation metrics against fixtures made by running the official
//! functions (`tools/fixtures/gen_museg.py`), their properties, bad input, and the phased
//! recipe end to end on ColourTime with a tiny random Qwen2.5-VL (resumable across the phase
//! switch).

use std::path::{Path, PathBuf};

use qforge_rl::grpo::GrpoConfig;
use qforge_rl::museg::colour_time::{ColourTimeConfig, ColourTimeVideo, write_checkpoint};
use qforge_rl::museg::data::{load_eval, load_train};
use qforge_rl::museg::eval::{EvalKind, answer_text, grounding_stats, predicted_segments};
use qforge_rl::museg::reward::{
    format_reward, global_matching, iou, local_matching, segment_matching,
};
use qforge_rl::museg::trainer::{
    ColourTimeData, MusegConfig, MusegEvent, MusegPhase, museg_grpo_defaults, run,
};
use qforge_rl::museg::video::{frame_dir, read_frames};
use qforge_rl::museg::{QuestionTemplate, RewardColumn, Segment};
use qforge_util::SplitMix;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = qforge_testkit::fixture(&format!("museg/{name}"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn segments(v: &Value) -> Vec<Segment> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()])
        .collect()
}

fn same(expected: &Value, got: f64) -> bool {
    match expected {
        Value::String(s) if s == "nan" => got.is_nan(),
        v => (v.as_f64().unwrap() - got).abs() <= 1e-12,
    }
}

#[test]
fn rewards_match_the_official_functions_on_every_recorded_case() {
    let cases = fixture("rewards.json");
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for case in cases {
        let c = case["completion"].as_str().unwrap();
        let gts = segments(&case["solution"]);
        let got = [
            ("format", format_reward(c, true)),
            ("format_n_timestamp", format_reward(c, false)),
            ("global", global_matching(c, &gts)),
            ("local", local_matching(c, &gts)),
        ];
        for (key, value) in got {
            if !same(&case[key], value) {
                failures.push(format!("{c:?} {key}: official {} ours {value}", case[key]));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_spec_table_cases_hold() {
    // Spot checks of museg_mobileagent.md §1.8 that read well on their own.
    let think = |t: &str, a: &str| format!("<think>{t}</think><answer>{a}</answer>");
    let reversed = think("4.0 6.0 0.0 1.0", "4.00-6.00 0.00-1.00");
    let gts = [[0.0, 1.0], [4.0, 6.0]];
    assert_eq!(local_matching(&reversed, &gts), 0.25);
    assert!((global_matching(&reversed, &gts) - 0.999999).abs() < 1e-6);
    // "1.5" as a regex matches "125".
    assert_eq!(format_reward(&think("125 and 2x5", "1.5-2.5"), true), 1.0);
    assert_eq!(
        format_reward(&think("see 1.0 and 2.0", "1.0-2.0 foo"), true),
        0.2
    );
    assert_eq!(
        format_reward(&(think("1.0 2.0", "1.0-2.0") + " trailing"), true),
        0.0
    );
}

#[test]
fn eval_metrics_match_the_official_script() {
    let cases = fixture("eval.json");
    for case in cases["cases"].as_array().unwrap() {
        let kind: EvalKind = case["eval_type"].as_str().unwrap().parse().unwrap();
        let rows: Vec<(Vec<Segment>, String)> = case["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    segments(&r["groundtruth"]),
                    r["output"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let ours = grounding_stats(&rows, kind).to_reference_json();
        let theirs = case["stat"].as_object().unwrap();
        assert_eq!(
            ours.as_object().unwrap().len(),
            theirs.len(),
            "{ours} vs {theirs:?}"
        );
        for (k, v) in theirs {
            let got = ours[k]
                .as_f64()
                .unwrap_or_else(|| panic!("{k} missing in {ours}"));
            assert!(
                (got - v.as_f64().unwrap()).abs() < 1e-9,
                "{kind:?} {k}: {got} vs {v}"
            );
        }
    }
}

#[test]
fn eval_extraction_is_the_scripts() {
    assert_eq!(
        answer_text("<think>x</think><answer> 1.0-2.0 </answer>"),
        "1.0-2.0"
    );
    assert_eq!(answer_text("<answer>1</answer><answer>2</answer>"), "");
    assert_eq!(answer_text("no tags"), "");
    assert_eq!(predicted_segments("from 0 to 4"), vec![[0.0, 4.0]]);
    assert!(predicted_segments("1.0-2.0 3.0").is_empty(), "odd count");
    assert!(predicted_segments("2-1").is_empty(), "reversed");
    assert!(
        predicted_segments("1..5-3").is_empty(),
        "float('1..5') fails"
    );
}

/// Random completions in and around the grammar.
fn random_completion(rng: &mut SplitMix) -> String {
    let n = rng.below(4);
    let items: Vec<String> = (0..n)
        .map(|_| {
            let a = rng.below(20) as f64 / 2.0;
            let b = rng.below(20) as f64 / 2.0;
            match rng.below(6) {
                0 => format!("{b:.2}-{a:.2}"),
                1 => "x-y".into(),
                _ => format!("{:.2}-{:.2}", a.min(b), a.max(b) + 0.5),
            }
        })
        .collect();
    format!("<think>t</think><answer>{}</answer>", items.join(" "))
}

#[test]
fn segment_reward_stays_in_bounds_and_iou_is_symmetric() {
    let mut rng = SplitMix(7);
    for _ in 0..2000 {
        let c = random_completion(&mut rng);
        let gts = vec![[1.0, 3.0], [5.0, 9.0]];
        let r = segment_matching(&c, &gts);
        assert!((0.0..=2.0).contains(&r), "{c}: {r}");
        for f in [format_reward(&c, true), format_reward(&c, false)] {
            assert!([0.0, 0.2, 0.6, 1.0].contains(&f), "{c}: {f}");
        }
        let a = [rng.below(10) as f64, 10.0 + rng.below(10) as f64];
        let b = [rng.below(15) as f64, 15.0 + rng.below(10) as f64];
        assert_eq!(iou(a, b), iou(b, a));
        assert!((0.0..=1.0).contains(&iou(a, b)));
    }
}

#[test]
fn the_local_reward_is_order_sensitive_and_the_global_is_not() {
    let gts = [[0.0, 2.0], [5.0, 7.0], [10.0, 12.0]];
    let ordered = "<answer>0.00-2.00 5.00-7.00 10.00-12.00</answer>";
    let shuffled = "<answer>10.00-12.00 0.00-2.00 5.00-7.00</answer>";
    assert!(local_matching(ordered, &gts) > 0.999);
    assert!(local_matching(shuffled, &gts) < 0.5);
    assert_eq!(
        global_matching(ordered, &gts),
        global_matching(shuffled, &gts)
    );
}

#[test]
fn malformed_answers_score_as_the_official_code_scores_them() {
    let gts = [[3.0, 5.0]];
    let think = |a: &str| format!("<think>3.0 5.0</think><answer>{a}</answer>");
    // No segments: format 1.0, segment reward ~1e-9 (one dummy pair).
    assert_eq!(format_reward(&think(""), true), 1.0);
    assert!(segment_matching(&think(""), &gts) < 1e-8);
    // Reversed, empty, out-of-range, text: each as recorded in the fixture.
    assert_eq!(segment_matching(&think("5.00-3.00"), &gts), 0.0);
    assert_eq!(segment_matching(&think("3.00-3.00"), &gts), 0.0);
    assert_eq!(format_reward(&think("three-five"), true), 0.2);
    assert_eq!(segment_matching(&think("three-five"), &gts), 0.0);
    assert!(segment_matching(&think("100-200"), &gts) < 0.3);
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn bad_data_files_are_errors_naming_the_file_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("stage.jsonl");
    write(
        &train,
        "{\"idx\": 0, \"problem\": \"p\", \"solution\": [[1, 2]], \"video\": \"v.mp4\", \"task\": \"tvg\"}\n{\"idx\": 1, \"problem\": \"p\", \"solution\": [[1, \"x\"]], \"video\": \"v.mp4\"}\n",
    );
    let e = load_train(&train).unwrap_err().to_string();
    assert!(
        e.contains("stage.jsonl") && e.contains(":2") && e.contains("solution"),
        "{e}"
    );
    write(
        &train,
        "{\"problem\": \"p\", \"solution\": [[1, 2]], \"video\": \"v.mp4\"}\nnot json\n",
    );
    let e = load_train(&train).unwrap_err().to_string();
    assert!(e.contains("stage.jsonl"), "{e}");
    let ok = "{\"idx\": 3, \"problem\": \"p\", \"solution\": [[1, 2], [4, 8.5]], \"video\": \"a/v.mp4\", \"task\": \"tal\", \"duration\": 20.0}\n";
    write(&train, ok);
    let rows = load_train(&train).unwrap();
    assert_eq!(rows[0].solution, vec![[1.0, 2.0], [4.0, 8.5]]);
    assert_eq!(rows[0].duration, Some(20.0));

    let eval = dir.path().join("eval.json");
    write(&eval, "{\"video\": \"v\"}");
    assert!(
        load_eval(&eval)
            .unwrap_err()
            .to_string()
            .contains("JSON array")
    );
    write(
        &eval,
        "[{\"video\": \"v\", \"question\": \"q\", \"groundtruth\": []}]",
    );
    let e = load_eval(&eval).unwrap_err().to_string();
    assert!(e.contains("query 0") && e.contains("groundtruth"), "{e}");
}

#[test]
fn missing_encoded_and_corrupt_videos_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = frame_dir(dir.path(), "charades/ABC.mp4")
        .unwrap_err()
        .to_string();
    assert!(e.contains("ABC.mp4") && e.contains("not found"), "{e}");
    write(&dir.path().join("charades/ABC.mp4"), "not decoded here");
    let e = frame_dir(dir.path(), "charades/ABC.mp4")
        .unwrap_err()
        .to_string();
    assert!(e.contains("ffmpeg"), "{e}");
    let frames = dir.path().join("charades/ABC");
    write(&frames.join("000001.png"), "corrupt");
    assert_eq!(frame_dir(dir.path(), "charades/ABC.mp4").unwrap(), frames);
    let e = read_frames(&frames).unwrap_err().to_string();
    assert!(e.contains("000001.png"), "{e}");
}

fn tiny_config(out: &Path, model: PathBuf, steps: [u64; 2]) -> MusegConfig {
    let phase = |steps, rewards, template| MusegPhase {
        data: PathBuf::new(),
        steps,
        rewards,
        template,
    };
    MusegConfig {
        model,
        output_dir: out.to_path_buf(),
        seed: 5,
        grpo: GrpoConfig {
            group_size: 2,
            prompts_per_step: 2,
            max_new_tokens: 6,
            temperature: 1.0,
            lr: 1e-3,
            save_steps: 1,
            ..museg_grpo_defaults()
        },
        phases: vec![
            phase(
                steps[0],
                vec![RewardColumn::Format, RewardColumn::SegmentMatching],
                QuestionTemplate::FrameSelectionThinking,
            ),
            phase(
                steps[1],
                vec![
                    RewardColumn::FormatNTimestamp,
                    RewardColumn::SegmentMatching,
                ],
                QuestionTemplate::FrameSelectionThinkingNTimestamp,
            ),
        ],
        colour_time: Some(ColourTimeData {
            videos: ColourTimeConfig {
                max_seconds: 10,
                ..ColourTimeConfig::default()
            },
            train: 4,
            held_out: 2,
            warmup_steps: 2,
            warmup_batch: 2,
            ..ColourTimeData::default()
        }),
        ..MusegConfig::default()
    }
}

#[test]
fn phased_training_runs_on_video_and_resumes_across_the_phase_switch() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_checkpoint(&dir.path().join("model"), 3).unwrap();
    let out = dir.path().join("run");
    let config = tiny_config(&out, model, [2, 1]);
    let mut steps = Vec::new();
    let summary = run(&config, |e| {
        if let MusegEvent::Step { phase, report } = e {
            steps.push((*phase, report.step));
        }
    })
    .unwrap();
    assert_eq!(steps, [(0, 1), (0, 2), (1, 1)]);
    assert_eq!(summary.policy, out.join("phase-2/policy"));
    // The saved policy is a Qwen2.5-VL checkpoint with its processor and tokenizer.
    let ck = qforge_model::Checkpoint::load_dir(
        &summary.policy,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(ck.vision.is_some());
    assert!(out.join("held_out.json").is_file());
    assert!(!summary.held_out.is_empty());

    // Killed after the switch, before phase 2 finished: phase 1 is not trained again and
    // phase 2 continues from its own checkpoint.
    std::fs::remove_dir_all(out.join("phase-2")).unwrap();
    let config = tiny_config(&out, config.model.clone(), [2, 2]);
    let mut again = Vec::new();
    run(&config, |e| {
        if let MusegEvent::Step { phase, report } = e {
            again.push((*phase, report.step));
        }
    })
    .unwrap();
    assert_eq!(again, [(1, 1), (1, 2)]);
    std::fs::remove_dir_all(out.join("phase-2/policy")).unwrap();
    std::fs::remove_dir_all(out.join("phase-2/checkpoint-2")).unwrap();
    let mut resumed = Vec::new();
    run(&config, |e| {
        if let MusegEvent::Step { phase, report } = e {
            resumed.push((*phase, report.step));
        }
    })
    .unwrap();
    assert_eq!(resumed, [(1, 2)], "resumed from phase-2/checkpoint-1");
}

#[test]
fn colour_time_targets_get_the_full_reward_and_shuffling_breaks_the_timing() {
    let config = ColourTimeConfig::default();
    for seed in 0..10 {
        let v = ColourTimeVideo::generate(&config, seed).unwrap();
        let total = RewardColumn::Format.score(&v.target(), &v.segments)
            + RewardColumn::SegmentMatching.score(&v.target(), &v.segments);
        assert!(total > 2.99, "{total}");
        let s = v.shuffled(seed);
        assert_eq!(s.frames.len(), v.frames.len());
    }
}

#[test]
fn a_text_only_model_cannot_train_on_video() {
    let dir = tempfile::tempdir().unwrap();
    let config = MusegConfig {
        model: qforge_testkit::tiny_model(),
        ..tiny_config(&dir.path().join("run"), PathBuf::new(), [1, 1])
    };
    let config = MusegConfig {
        colour_time: Some(ColourTimeData {
            warmup_steps: 0,
            ..config.colour_time.clone().unwrap()
        }),
        ..config
    };
    let e = run(&config, |_| {}).unwrap_err().to_string();
    assert!(e.contains("text-only"), "{e}");
}

#[test]
fn frame_directories_are_sampled_as_qwen_vl_utils_samples_them() {
    use qforge_rl::museg::trainer::FrameDirMedia;
    use qforge_rl::museg::video::VideoSampling;
    use qforge_rl::visual::MediaSource;
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("charades/ABC");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 1..=8 {
        std::fs::copy(
            qforge_testkit::fixture("vlm/image_a.png"),
            frames.join(format!("{i:06}.png")),
        )
        .unwrap();
    }
    let media = FrameDirMedia {
        root: dir.path().to_path_buf(),
        video_fps: 4.0,
        sampling: VideoSampling::default(),
        processor: qforge_model::vl::ProcessorConfig::default(),
        videos: vec!["charades/ABC.mp4".into()],
    };
    let visual = media.visual(0).unwrap().unwrap();
    let (patches, spg) = &visual.videos[0];
    // 8 frames over 2 s at 2 fps: 4 frames, sampled at 2 fps, so one temporal patch per second.
    assert_eq!(patches.grid_thw[0], 2);
    assert_eq!(*spg, 1.0);
    // Each frame within the per-frame budget, at least min_pixels, on the 28-pixel grid.
    let (h, w) = (patches.grid_thw[1] * 14, patches.grid_thw[2] * 14);
    assert!(
        h * w >= 16 * 28 * 28 && h % 28 == 0 && w % 28 == 0,
        "{h} x {w}"
    );
}
