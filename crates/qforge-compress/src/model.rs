//! The compressor (QwenLong-CPRS, arXiv 2505.18092): a Qwen2/Qwen3 decoder whose layers from
//! `bidirectional_start` on attend bidirectionally (key-padding mask only), a BIOE token
//! classifier `cls_head` (with bias; classes 0 B, 1 I, 2 O, 3 E) and the LM head as token critic.
//! Loads the released layout (`cls_head.weight`, `cls_head.bias` beside the backbone). Windows
//! run as one right-padded batch, positions restarting at 0 in each; the output does not depend
//! on how windows are batched.

use std::path::Path;
use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor};
use qforge_model::weights::WeightStore;
use qforge_model::{Batch, Model, ModelError, Tokenizer};

use crate::postprocess::Tag;

/// The released code's first bidirectional layer (a literal in `Qwen2Model.__init__`; the
/// `BiLLM_START_INDEX` setting it shadows is never read). A model with fewer layers has none, as
/// upstream.
pub const RELEASED_BIDIRECTIONAL_START: usize = 21;

pub struct Compressor {
    pub model: Model,
    pub tokenizer: Arc<Tokenizer>,
    cls_weight: Tensor,
    cls_bias: Tensor,
    pub bidirectional_start: usize,
}

impl Compressor {
    /// Loads a compressor checkpoint. The first bidirectional layer is config.json's
    /// `bidirectional_start` when present, else the released 21.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        let mut model = Model::load(dir, dtype, device, &["cls_head."])?;
        let store = WeightStore::open_dir(dir)?;
        let hidden = model.config().hidden_size;
        let cls_weight = store.load("cls_head.weight", &[4, hidden], dtype, device)?;
        let cls_bias = store.load("cls_head.bias", &[4], dtype, device)?;
        let layers = model.config().num_hidden_layers;
        let bidirectional_start = model
            .config()
            .extra("bidirectional_start")
            .and_then(|v| v.as_u64())
            .map_or(RELEASED_BIDIRECTIONAL_START, |v| v as usize);
        model.set_bidirectional_top_layers(layers.saturating_sub(bidirectional_start))?;
        Ok(Self {
            model,
            tokenizer: Arc::new(Tokenizer::from_dir(dir)?),
            cls_weight,
            cls_bias,
            bidirectional_start,
        })
    }

    /// A compressor from parts (random heads for benchmarks, converted checkpoints).
    pub fn from_parts(
        mut model: Model,
        tokenizer: Arc<Tokenizer>,
        cls_weight: Tensor,
        cls_bias: Tensor,
        bidirectional_start: usize,
    ) -> Result<Self, ModelError> {
        let layers = model.config().num_hidden_layers;
        model.set_bidirectional_top_layers(layers.saturating_sub(bidirectional_start))?;
        Ok(Self {
            model,
            tokenizer,
            cls_weight,
            cls_bias,
            bidirectional_start,
        })
    }

    /// `[B, T, 4]` BIOE logits and the `[B, T, H]` hidden states of right-padded windows.
    pub fn forward(&self, windows: &[&[u32]]) -> Result<(Tensor, Tensor), ModelError> {
        let batch =
            Batch::right_padded(windows, self.tokenizer.pad_token_id(), self.model.device())?;
        let hidden = self.model.forward(&batch, None)?;
        let logits = hidden
            .broadcast_matmul(&self.cls_weight.t()?)?
            .broadcast_add(&self.cls_bias)?;
        Ok((logits, hidden))
    }

    /// The released decision: argmax of the cls_head per token (no threshold), for each window
    /// from `skip` on (the prefix).
    pub fn tags(&self, windows: &[&[u32]], skip: usize) -> Result<Vec<Vec<Tag>>, ModelError> {
        Ok(self.label(windows, skip, None)?.0)
    }

    /// Tags and, with `tag_ids`, category mode (QwenLong-CPRS, arXiv 2505.18092): the LM head's logits at the
    /// tag words' first-token ids, softmaxed over those ids, per context token
    /// (`[window][token][tag]`).
    #[allow(clippy::type_complexity)]
    pub fn label(
        &self,
        windows: &[&[u32]],
        skip: usize,
        tag_ids: Option<&[u32]>,
    ) -> Result<(Vec<Vec<Tag>>, Option<Vec<Vec<Vec<f32>>>>), ModelError> {
        let (logits, hidden) = self.forward(windows)?;
        let classes: Vec<Vec<u32>> = logits.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec2()?;
        let tags = windows
            .iter()
            .zip(classes)
            .map(|(w, row)| {
                row[skip.min(w.len())..w.len()]
                    .iter()
                    .map(|&c| Tag::from_class(c as usize).unwrap_or(Tag::O))
                    .collect()
            })
            .collect();
        let categories = match tag_ids {
            None => None,
            Some(ids) => {
                let picked = self.model.logits_at(&hidden, ids)?;
                let probs: Vec<Vec<Vec<f32>>> = qforge_model::ops::softmax(&picked, false)?
                    .to_dtype(DType::F32)?
                    .to_vec3()?;
                Some(
                    windows
                        .iter()
                        .zip(probs)
                        .map(|(w, rows)| rows[skip.min(w.len())..w.len()].to_vec())
                        .collect(),
                )
            }
        };
        Ok((tags, categories))
    }
}
