//! ColourTime: a synthetic video grounding task with known answers, for tests and the demo.
//! A video of 8–20 s is solid blue with one to three red intervals at whole seconds (even
//! seconds at 1 fps, so no boundary falls inside a temporal patch) and, sometimes, a green
//! distractor second; the question asks for the red segments. Frames are sampled at 1, 2 or
//! 4 fps, so tokens per second vary and only the absolute-time M-RoPE ids tell a model when a
//! frame is: the alignment MUSEG relies on. Solid colours keep the pixel path exact.
//!
//! [`write_checkpoint`] writes a random ~1M-parameter Qwen2.5-VL with a word-level tokenizer
//! that covers the answer grammar, the starting point of the demo and the learning tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use qforge_model::ModelConfig;
use qforge_model::vl::processor::{self, ProcessorConfig, RgbImage};
use qforge_model::vl::{VisualInputs, VlModel};
use qforge_util::SplitMix;
use serde_json::{Value, json};

use super::reward::Segment;
use crate::error::{Result, RlError};

/// The question every ColourTime video asks.
pub const QUESTION: &str = "Find all red segments.";

const BLUE: [u8; 3] = [0, 0, 255];
const RED: [u8; 3] = [255, 0, 0];
const GREEN: [u8; 3] = [0, 255, 0];

/// How videos are drawn.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColourTimeConfig {
    pub min_seconds: u32,
    pub max_seconds: u32,
    /// Sampling rates, one drawn per video.
    pub fps: Vec<f64>,
    /// Frames are square, this many pixels a side (28: one merged token per temporal patch).
    pub frame_size: usize,
    pub max_segments: usize,
    /// A green second in some videos (not an answer).
    pub distractors: bool,
}

impl Default for ColourTimeConfig {
    fn default() -> Self {
        Self {
            min_seconds: 8,
            max_seconds: 20,
            fps: vec![1.0, 2.0, 4.0],
            frame_size: 28,
            max_segments: 3,
            distractors: true,
        }
    }
}

/// One video: frames at `fps` and the red segments.
#[derive(Debug, Clone)]
pub struct ColourTimeVideo {
    pub frames: Vec<RgbImage>,
    pub fps: f64,
    pub duration: u32,
    pub segments: Vec<Segment>,
}

impl ColourTimeVideo {
    pub fn generate(config: &ColourTimeConfig, seed: u64) -> Result<Self> {
        if config.min_seconds < 2
            || config.max_seconds < config.min_seconds
            || config.fps.is_empty()
        {
            return Err(RlError::Invalid(
                "colour_time needs 2 <= min_seconds <= max_seconds and some fps".into(),
            ));
        }
        let mut rng = SplitMix(seed ^ 0xC0105_7143);
        let fps = config.fps[rng.below(config.fps.len())];
        // At 1 fps a temporal patch is two seconds: boundaries on even seconds.
        let unit: u32 = if fps < 2.0 { 2 } else { 1 };
        let span = config.max_seconds - config.min_seconds + 1;
        let mut duration = config.min_seconds + rng.below(span as usize) as u32;
        duration -= duration % unit;
        let points: Vec<u32> = (0..=duration / unit).map(|p| p * unit).collect();
        let k = (1 + rng.below(config.max_segments.max(1))).min(points.len() / 2);
        let mut picked = points.clone();
        rng.shuffle(&mut picked);
        let mut bounds: Vec<u32> = picked[..2 * k].to_vec();
        bounds.sort_unstable();
        let segments: Vec<Segment> = bounds
            .chunks(2)
            .map(|b| [f64::from(b[0]), f64::from(b[1])])
            .collect();
        let red = |t: f64| segments.iter().any(|s| s[0] <= t && t < s[1]);
        // A green distractor: one unit of blue, in some videos.
        let green: Option<f64> = if config.distractors && rng.below(2) == 0 {
            let blue_units: Vec<u32> = (0..duration / unit)
                .map(|u| u * unit)
                .filter(|&s| !red(f64::from(s)))
                .collect();
            (!blue_units.is_empty()).then(|| f64::from(blue_units[rng.below(blue_units.len())]))
        } else {
            None
        };
        let n = (f64::from(duration) * fps).round() as usize;
        let side = config.frame_size;
        let frames = (0..n)
            .map(|i| {
                let t = i as f64 / fps;
                let colour = if red(t) {
                    RED
                } else if green.is_some_and(|g| g <= t && t < g + f64::from(unit)) {
                    GREEN
                } else {
                    BLUE
                };
                RgbImage::new(side, side, colour.repeat(side * side))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self {
            frames,
            fps,
            duration,
            segments,
        })
    }

    /// The control: the same frames in a shuffled order of temporal patches (pairs), so the
    /// colours no longer say when.
    pub fn shuffled(&self, seed: u64) -> Self {
        let mut pairs: Vec<&[RgbImage]> = self.frames.chunks(2).collect();
        SplitMix(seed ^ 0x5EED_F4A3E5).shuffle(&mut pairs);
        Self {
            frames: pairs.concat(),
            ..self.clone()
        }
    }

    /// The frames through the model's processor at their own size (no upscaling to the
    /// processor's `min_pixels`), with seconds per temporal patch `temporal_patch / fps`.
    pub fn visual(&self, processor_config: &ProcessorConfig) -> Result<Arc<VisualInputs>> {
        let mut config = processor_config.clone();
        let pixels = self.frames[0].height * self.frames[0].width;
        config.min_pixels = config.min_pixels.min(pixels);
        let patches = processor::process_video(&config, &self.frames)?;
        let spg = (config.temporal_patch_size as f64 / self.fps) as f32;
        Ok(Arc::new(VisualInputs {
            images: Vec::new(),
            videos: vec![(patches, spg)],
        }))
    }

    /// The ideal response: every boundary cited in the thinking (as phase 1's timestamp check
    /// wants), then the segments.
    pub fn target(&self) -> String {
        target_for(&self.segments)
    }
}

/// `<think>3.0 7.0</think><answer>3.00-7.00</answer>` for the given segments.
pub fn target_for(segments: &[Segment]) -> String {
    let cited: Vec<String> = segments
        .iter()
        .flatten()
        .map(|t| super::python_text::py_float_repr(*t))
        .collect();
    let answer: Vec<String> = segments
        .iter()
        .map(|[s, e]| format!("{s:.2}-{e:.2}"))
        .collect();
    format!(
        "<think>{}</think><answer>{}</answer>",
        cited.join(" "),
        answer.join(" ")
    )
}

/// The checkpoint's vocabulary, by id; Qwen's special tokens follow at [`SPECIAL_BASE`].
const WORDS: [&str; 40] = [
    "[UNK]",
    " ",
    "\n",
    "system",
    "user",
    "assistant",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    ".",
    "-",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "Find",
    "all",
    "red",
    "segments",
    "You",
    "are",
    "a",
    "helpful",
    "First",
    "output",
    "reasoning",
    "in",
    "tags",
    "the",
    "video",
    "and",
    "\"",
    ",",
];
const SPECIAL_BASE: usize = WORDS.len();
const SPECIALS: [&str; 8] = [
    "<|im_start|>",
    "<|vision_pad|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|endoftext|>",
    "<|im_end|>",
];
const CHAT_TEMPLATE: &str = include_str!("../../../../tools/fixtures/templates/qwen2_5_vl.jinja");

/// Writes a random tiny Qwen2.5-VL (text 128 wide × 4 layers, vision 64 wide × 2 blocks, about
/// 1M parameters) with the ColourTime tokenizer and the Qwen2.5-VL chat template to `dir`,
/// unless one is already there.
pub fn write_checkpoint(dir: &Path, seed: u64) -> Result<PathBuf> {
    if dir.join("config.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    let id = |name: &str| SPECIAL_BASE + SPECIALS.iter().position(|s| *s == name).expect("special");
    let vocab = SPECIAL_BASE + SPECIALS.len();
    let config = ModelConfig::from_json(json!({
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "vocab_size": vocab, "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},
        "tie_word_embeddings": true, "hidden_act": "silu", "sliding_window": 4096,
        "use_sliding_window": false, "max_window_layers": 4,
        "bos_token_id": id("<|endoftext|>"), "eos_token_id": id("<|im_end|>"),
        "pad_token_id": id("<|endoftext|>"),
        "vision_start_token_id": id("<|vision_start|>"), "vision_end_token_id": id("<|vision_end|>"),
        "vision_token_id": id("<|vision_pad|>"), "image_token_id": id("<|image_pad|>"),
        "video_token_id": id("<|video_pad|>"),
        "vision_config": {
            "depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4,
            "hidden_act": "silu", "in_channels": 3, "out_hidden_size": 128, "patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "tokens_per_second": 2,
            "window_size": 112, "fullatt_block_indexes": [1]
        }
    }))?;
    let model = VlModel::random(config, DType::F32, &Device::Cpu, seed)?;
    qforge_util::write_dir_atomic(dir, |tmp| {
        model.save_pretrained(tmp, usize::MAX)?;
        write_tokenizer(tmp)?;
        let files = [
            (
                "generation_config.json",
                json!({"bos_token_id": id("<|endoftext|>"), "eos_token_id": id("<|im_end|>"),
                       "pad_token_id": id("<|endoftext|>")}),
            ),
            (
                "preprocessor_config.json",
                json!({"do_convert_rgb": true, "do_normalize": true, "do_rescale": true,
                       "do_resize": true, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                       "image_std": [0.26862954, 0.26130258, 0.27577711],
                       "image_processor_type": "Qwen2VLImageProcessor", "max_pixels": 12845056,
                       "min_pixels": 784, "merge_size": 2, "patch_size": 14, "resample": 3,
                       "rescale_factor": 1.0 / 255.0, "temporal_patch_size": 2}),
            ),
        ];
        for (name, value) in files {
            qforge_util::write_json_atomic(&tmp.join(name), &value)?;
        }
        Ok::<_, RlError>(())
    })?;
    Ok(dir.to_path_buf())
}

fn write_tokenizer(dir: &Path) -> Result<()> {
    let mut vocab = serde_json::Map::new();
    for (i, w) in WORDS.iter().chain(&SPECIALS).enumerate() {
        vocab.insert((*w).to_string(), i.into());
    }
    let added = |i: usize, content: &str| {
        json!({"id": i, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    let mut added_tokens = vec![added(0, "[UNK]")];
    added_tokens.extend(
        SPECIALS
            .iter()
            .enumerate()
            .map(|(i, s)| added(SPECIAL_BASE + i, s)),
    );
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added_tokens, "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": r#"</?(?:think|answer)>|\s|[?.:,\-"]|[0-9]"#},
                          "behavior": "Isolated", "invert": false},
        "post_processor": null, "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": Value::Object(vocab), "unk_token": "[UNK]"}
    });
    let mut decoder = serde_json::Map::new();
    for t in &added_tokens {
        let mut entry = t.clone();
        let id = entry["id"].to_string();
        entry.as_object_mut().expect("object").remove("id");
        decoder.insert(id, entry);
    }
    let config = json!({
        "added_tokens_decoder": Value::Object(decoder), "bos_token": null,
        "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": false,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": "[UNK]",
        "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 2048
    });
    qforge_util::write_json_atomic(&dir.join("tokenizer.json"), &tokenizer)?;
    qforge_util::write_json_atomic(&dir.join("tokenizer_config.json"), &config)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_lie_on_the_grid_and_the_frames_show_them() {
        for seed in 0..40 {
            let v = ColourTimeVideo::generate(&ColourTimeConfig::default(), seed).unwrap();
            assert!((8..=20).contains(&v.duration));
            assert!(!v.segments.is_empty() && v.segments.len() <= 3);
            let unit = if v.fps < 2.0 { 2.0 } else { 1.0 };
            for w in v.segments.windows(2) {
                assert!(w[0][1] < w[1][0], "segments neither overlap nor touch");
            }
            for s in &v.segments {
                assert!(s[0] < s[1] && s[1] <= f64::from(v.duration));
                assert_eq!(s[0] % unit, 0.0);
                assert_eq!(s[1] % unit, 0.0);
            }
            assert_eq!(v.frames.len() as f64, f64::from(v.duration) * v.fps);
            for (i, f) in v.frames.iter().enumerate() {
                let t = i as f64 / v.fps;
                let red = v.segments.iter().any(|s| s[0] <= t && t < s[1]);
                assert_eq!(f.data[..3] == RED, red, "seed {seed} frame {i}");
            }
        }
    }

    #[test]
    fn the_target_scores_full_marks() {
        let v = ColourTimeVideo::generate(&ColourTimeConfig::default(), 3).unwrap();
        let t = v.target();
        assert_eq!(super::super::reward::format_reward(&t, true), 1.0);
        let m = super::super::reward::segment_matching(&t, &v.segments);
        assert!(m > 1.99, "{m}");
    }
}
