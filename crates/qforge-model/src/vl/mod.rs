//! Vision-language models on the one decoder: Qwen2.5-VL (transformers 4.50, MUSEG's pin).
//!
//! - [`processor`]: pixels to patches (`smart_resize`, Pillow's bicubic, normalise, patchify).
//! - [`vision`]: the vision tower ([`VisionTower`]) that turns patches into embeddings of the
//!   decoder's width.
//! - [`rope_index`]: the three-axis M-RoPE positions of a prompt with images and videos.
//! - [`VlModel`]: the decoder ([`crate::Model`], which applies M-RoPE from
//!   [`crate::Batch::mrope`] and scatters [`crate::Batch::visual`] into the token embeddings)
//!   plus the tower; [`VlModel::batch`] builds a batch from prompts and their visual inputs.

pub mod processor;
pub mod rope_index;
pub mod vision;

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::model::{Batch, Model, VisualEmbeds};
use crate::weights::WeightStore;
pub use processor::{Patches, ProcessorConfig, RgbImage};
pub use rope_index::{RowPositions, VisionTokenIds, VisualGrids, mrope_positions};
pub use vision::{VisionConfig, VisionTower};

/// The vision side of a loaded vision-language checkpoint: what a text engine adds to see.
#[derive(Debug, Clone)]
pub struct Vision {
    pub tower: VisionTower,
    pub tokens: VlTokens,
    pub processor: ProcessorConfig,
}

impl Vision {
    /// An image's placeholder count and patches.
    pub fn process_image(&self, image: &RgbImage) -> Result<Patches> {
        processor::process_image(&self.processor, image)
    }

    /// Replaces each rendered placeholder with one per merged token (see [`expand_placeholders`]).
    pub fn expand(&self, ids: &[u32], visual: &VisualInputs) -> Result<Vec<u32>> {
        expand_placeholders(
            ids,
            self.tokens,
            visual,
            self.tower.config().spatial_merge_size,
        )
    }
}

/// A prompt batch's visual inputs, each in prompt order across the rows.
#[derive(Debug, Clone, Default)]
pub struct VisualInputs {
    pub images: Vec<Patches>,
    /// Each video's patches and seconds per temporal patch (`temporal_patch_size / fps`).
    pub videos: Vec<(Patches, f32)>,
}

impl VisualInputs {
    pub fn is_empty(&self) -> bool {
        self.images.is_empty() && self.videos.is_empty()
    }

    pub fn grids(&self) -> VisualGrids {
        VisualGrids {
            images: self.images.iter().map(|p| p.grid_thw).collect(),
            videos: self.videos.iter().map(|(p, _)| p.grid_thw).collect(),
            second_per_grid: self.videos.iter().map(|(_, s)| *s).collect(),
        }
    }
}

/// The special token ids of a vision-language config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlTokens {
    pub image: u32,
    pub video: u32,
    pub vision_start: u32,
    pub vision_end: u32,
}

impl VlTokens {
    /// Reads `image_token_id` etc. from the top level (or `text_config`), with the released
    /// Qwen2.5-VL ids as defaults.
    pub fn from_config(config: &ModelConfig) -> Result<Self> {
        let text = config.raw.get("text_config");
        let id = |name: &str, default: u32| -> Result<u32> {
            match config
                .raw
                .get(name)
                .or_else(|| text.and_then(|t| t.get(name)))
                .filter(|v| !v.is_null())
            {
                None => Ok(default),
                Some(v) => v
                    .as_u64()
                    .filter(|x| (*x as usize) < config.vocab_size)
                    .map(|x| x as u32)
                    .ok_or_else(|| ModelError::InvalidField {
                        field: name.into(),
                        message: format!(
                            "must be a token id below vocab_size {}",
                            config.vocab_size
                        ),
                    }),
            }
        };
        Ok(Self {
            image: id("image_token_id", 151_655)?,
            video: id("video_token_id", 151_656)?,
            vision_start: id("vision_start_token_id", 151_652)?,
            vision_end: id("vision_end_token_id", 151_653)?,
        })
    }

    pub fn rope_ids(&self) -> VisionTokenIds {
        VisionTokenIds {
            image: self.image,
            video: self.video,
            vision_start: self.vision_start,
        }
    }
}

/// A batch ready for [`Model::forward`] and each row's `rope_delta` (the offset from the padded
/// length to the next position, for cached decoding).
#[derive(Debug, Clone)]
pub struct VlBatch {
    pub batch: Batch,
    /// Per row, the position of the next generated token.
    pub next_positions: Vec<u32>,
    pub rope_deltas: Vec<i64>,
}

/// Qwen2.5-VL: the decoder and the vision tower.
#[derive(Debug, Clone)]
pub struct VlModel {
    pub text: Model,
    pub vision: VisionTower,
    pub tokens: VlTokens,
}

impl VlModel {
    /// Loads config.json and the weights (Hub layout `visual.*`, or `model.visual.*`).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let store = WeightStore::open_dir(dir)?;
        Self::from_store(config, &store, dtype, device)
    }

    pub fn from_store(
        config: ModelConfig,
        store: &WeightStore,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (vision, tokens) = Self::vision_parts(&config)?;
        let text = Model::from_store(config, store, dtype, device, &vision::VISION_PREFIXES)?;
        let vision = VisionTower::from_store(vision, store, dtype, device)?;
        Ok(Self {
            text,
            vision,
            tokens,
        })
    }

    /// A randomly initialised model for a vision-language `config` (tests, synthetic demos).
    pub fn random(config: ModelConfig, dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        let (vision, tokens) = Self::vision_parts(&config)?;
        let text = Model::random(config, dtype, device, seed)?;
        let vision = VisionTower::random(vision, dtype, device, seed ^ 0x9e37_79b9_7f4a_7c15)?;
        Ok(Self {
            text,
            vision,
            tokens,
        })
    }

    /// The tower's config and the special tokens of a vision-language config, checked against
    /// the decoder.
    fn vision_parts(config: &ModelConfig) -> Result<(VisionConfig, VlTokens)> {
        let vision_json = match config.raw.get("vision_config") {
            Some(v @ Value::Object(_)) => v.clone(),
            _ => {
                return Err(ModelError::MissingField {
                    field: "vision_config".into(),
                });
            }
        };
        if config.mrope_section.is_none() {
            return Err(ModelError::MissingField {
                field: "rope_scaling.mrope_section".into(),
            });
        }
        let vision = VisionConfig::from_json(&vision_json)?;
        if vision.out_hidden_size != config.hidden_size {
            return Err(ModelError::InvalidField {
                field: "vision_config.out_hidden_size".into(),
                message: format!(
                    "= {} must equal the decoder's hidden_size {}",
                    vision.out_hidden_size, config.hidden_size
                ),
            });
        }
        Ok((vision, VlTokens::from_config(config)?))
    }

    /// Every parameter a `Var` (decoder and tower), differentiable; names as in the checkpoint.
    pub fn into_trainable(self) -> Result<(Self, Vec<(String, Var)>)> {
        self.into_trainable_with(true)
    }

    /// As [`Self::into_trainable`]; with `train_vision` off the tower stays frozen (plain
    /// tensors, inference ops: its embeddings are constants of the loss) and only the decoder's
    /// parameters are returned.
    pub fn into_trainable_with(self, train_vision: bool) -> Result<(Self, Vec<(String, Var)>)> {
        let (text, mut vars) = self.text.into_trainable()?;
        let vision = if train_vision {
            let (vision, vision_vars) = self.vision.into_trainable()?;
            vars.extend(vision_vars);
            vision
        } else {
            let mut vision = self.vision;
            vision.set_differentiable(false);
            vision
        };
        Ok((
            Self {
                text,
                vision,
                tokens: self.tokens,
            },
            vars,
        ))
    }

    pub fn set_differentiable(&mut self, differentiable: bool) {
        self.text.set_differentiable(differentiable);
        self.vision.set_differentiable(differentiable);
    }

    /// Saves config.json and the weights in the Hub layout (`model.*`, `visual.*`).
    pub fn save_pretrained(&self, dir: &Path, max_shard_bytes: usize) -> Result<()> {
        let mut tensors = self.text.named_tensors();
        tensors.extend(self.vision.named_tensors());
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        crate::weights::save_safetensors(dir, &tensors, max_shard_bytes)?;
        Ok(qforge_util::write_json_atomic(
            &dir.join("config.json"),
            &self.text.config().to_json(),
        )?)
    }

    /// The tower's embeddings of `patches`, encoded together `[sum of merged tokens, hidden]`.
    pub fn encode(&self, patches: &[&Patches]) -> Result<Option<Tensor>> {
        encode(&self.vision, self.text.device(), patches)
    }

    /// A batch of prompts with their visual inputs: see [`vl_batch`].
    pub fn batch(
        &self,
        rows: &[&[u32]],
        visual: &VisualInputs,
        pad_id: u32,
        left_padded: bool,
    ) -> Result<VlBatch> {
        vl_batch(
            &self.text,
            &self.vision,
            self.tokens,
            rows,
            visual,
            pad_id,
            left_padded,
        )
    }
}

/// The tower's embeddings of `patches`, encoded together `[sum of merged tokens, hidden]`.
pub fn encode(
    vision: &VisionTower,
    device: &Device,
    patches: &[&Patches],
) -> Result<Option<Tensor>> {
    if patches.is_empty() {
        return Ok(None);
    }
    let len = vision.config().patch_len();
    let mut values = Vec::with_capacity(patches.iter().map(|p| p.pixel_values.len()).sum());
    for (i, p) in patches.iter().enumerate() {
        if p.pixel_values.len() != p.rows() * len {
            return Err(ModelError::InvalidInput(format!(
                "visual input {i}: {} values for grid {:?} (rows of {len})",
                p.pixel_values.len(),
                p.grid_thw
            )));
        }
        values.extend_from_slice(&p.pixel_values);
    }
    let rows = values.len() / len;
    let pixels = Tensor::from_vec(values, (rows, len), device)?;
    let grids: Vec<[usize; 3]> = patches.iter().map(|p| p.grid_thw).collect();
    Ok(Some(vision.forward(&pixels, &grids)?))
}

/// A batch of prompts (token ids with each image and video already expanded to its
/// placeholders, see [`expand_placeholders`]), padded on the left or right with `pad_id`:
/// M-RoPE positions as the reference computes them (padding at 1), and the tower's embeddings
/// at the placeholders. Rows with and without visual inputs mix freely.
pub fn vl_batch(
    text: &Model,
    vision: &VisionTower,
    tokens: VlTokens,
    rows: &[&[u32]],
    visual: &VisualInputs,
    pad_id: u32,
    left_padded: bool,
) -> Result<VlBatch> {
    let device = text.device();
    let mut batch = if left_padded {
        Batch::left_padded(rows, &vec![0; rows.len()], pad_id, device)?
    } else {
        Batch::right_padded(rows, pad_id, device)?
    };
    let merge = vision.config().spatial_merge_size;
    let placed = place_visual(
        &mut batch,
        rows,
        tokens,
        &visual.grids(),
        merge,
        vision.config().tokens_per_second,
        left_padded,
    )?;
    let (image_at, video_at) = (placed.image_at, placed.video_at);
    let images: Vec<&Patches> = visual.images.iter().collect();
    let videos: Vec<&Patches> = visual.videos.iter().map(|(p, _)| p).collect();
    let mut embeds = Vec::new();
    for (what, patches, at) in [("image", &images, &image_at), ("video", &videos, &video_at)] {
        let expected: usize = patches.iter().map(|p| p.merged_tokens(merge)).sum();
        if expected != at.len() {
            return Err(ModelError::InvalidInput(format!(
                "the prompts have {} {what} placeholder tokens, the {what} inputs give {expected}",
                at.len()
            )));
        }
        if let Some(e) = encode(vision, device, patches)? {
            embeds.push(e);
        }
    }
    if !embeds.is_empty() {
        batch.visual = Some(VisualEmbeds {
            embeds: Tensor::cat(&embeds, 0)?,
            at: image_at.into_iter().chain(video_at).collect(),
        });
    }
    let (_, t) = batch.dims()?;
    let rope_deltas = placed
        .next_positions
        .iter()
        .map(|n| i64::from(*n) - t as i64)
        .collect();
    Ok(VlBatch {
        batch,
        next_positions: placed.next_positions,
        rope_deltas,
    })
}

/// Where a padded batch's visual inputs go: see [`place_visual`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisualPlacement {
    /// Per row, the position of the next token after it.
    pub next_positions: Vec<u32>,
    /// Flat `b·T + i` indices of the image placeholders, row-major (images in prompt order).
    pub image_at: Vec<usize>,
    /// The same for video placeholders.
    pub video_at: Vec<usize>,
}

/// Sets a padded batch's M-RoPE positions as the reference computes them for `rows` (the
/// unpadded ids, placeholders expanded; padding at position 1) and finds the placeholders
/// that the tower's embeddings replace: images in row-major order, then videos.
pub fn place_visual(
    batch: &mut Batch,
    rows: &[&[u32]],
    tokens: VlTokens,
    grids: &VisualGrids,
    merge: usize,
    tokens_per_second: f32,
    left_padded: bool,
) -> Result<VisualPlacement> {
    let positions = mrope_positions(rows, tokens.rope_ids(), grids, merge, tokens_per_second)?;
    let (_, t) = batch.dims()?;
    let mut axes: [Vec<Vec<u32>>; 3] = Default::default();
    for (row, p) in rows.iter().zip(&positions) {
        let pad = t - row.len();
        for (axis, ids) in axes.iter_mut().zip(&p.axes) {
            let mut full = Vec::with_capacity(t);
            if left_padded {
                full.extend(std::iter::repeat_n(1, pad));
            }
            full.extend_from_slice(ids);
            if !left_padded {
                full.extend(std::iter::repeat_n(1, pad));
            }
            axis.push(full);
        }
    }
    batch.positions = axes[0].clone();
    batch.mrope = Some(axes);
    let (mut image_at, mut video_at) = (Vec::new(), Vec::new());
    let offset = |b: usize| if left_padded { t - rows[b].len() } else { 0 };
    for (b, row) in rows.iter().enumerate() {
        for (i, id) in row.iter().enumerate() {
            if *id == tokens.image {
                image_at.push(b * t + offset(b) + i);
            } else if *id == tokens.video {
                video_at.push(b * t + offset(b) + i);
            }
        }
    }
    Ok(VisualPlacement {
        next_positions: positions.iter().map(|p| p.next).collect(),
        image_at,
        video_at,
    })
}

/// Replaces each image and video placeholder that follows a vision start (the single
/// `<|image_pad|>` / `<|video_pad|>` a chat template renders) with one copy per merged token
/// of its input, as the released processor does, in prompt order.
pub fn expand_placeholders(
    ids: &[u32],
    tokens: VlTokens,
    visual: &VisualInputs,
    merge_size: usize,
) -> Result<Vec<u32>> {
    let (mut images, mut videos) = (visual.images.iter(), visual.videos.iter());
    let mut out = Vec::with_capacity(ids.len());
    for (i, &id) in ids.iter().enumerate() {
        let after_start = i > 0 && ids[i - 1] == tokens.vision_start;
        let n = if after_start && id == tokens.image {
            let p = images.next().ok_or_else(|| {
                ModelError::InvalidInput(format!(
                    "the prompt has more images than the {} given",
                    visual.images.len()
                ))
            })?;
            p.merged_tokens(merge_size)
        } else if after_start && id == tokens.video {
            let (p, _) = videos.next().ok_or_else(|| {
                ModelError::InvalidInput(format!(
                    "the prompt has more videos than the {} given",
                    visual.videos.len()
                ))
            })?;
            p.merged_tokens(merge_size)
        } else {
            1
        };
        out.extend(std::iter::repeat_n(id, n));
    }
    let (left_images, left_videos) = (images.count(), videos.count());
    if left_images + left_videos > 0 {
        return Err(ModelError::InvalidInput(format!(
            "{left_images} images and {left_videos} videos were given beyond the prompt's placeholders"
        )));
    }
    Ok(out)
}
