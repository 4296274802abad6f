//! qforge-model: the Qwen2/Qwen3 transformer that every qforge system stands on.
//!
//! - [`ModelConfig`] parses Hugging Face `config.json` (typed errors naming the field).
//! - [`WeightStore`] memory-maps safetensors (single or sharded) and checks keys and shapes.
//! - [`Model`] is the decoder: one forward for training and inference, with caller-owned
//!   per-sequence KV caches ([`SequenceCache`]) and per-layer causal/bidirectional attention.
//! - [`Tokenizer`] and [`ChatTemplate`] render prompts exactly as transformers does.
//! - [`vl`]: vision-language models (Qwen2.5-VL): image/video processor, vision tower, M-RoPE.
//!
//! This crate does no network I/O and knows nothing of HTTP, recipes or datasets.

pub mod config;
pub mod error;
pub mod fused;
pub mod lora;
pub mod model;
pub mod ops;
pub mod resolve;
pub mod reward_model;
pub mod skinny;
pub mod template;
pub mod tokenizer;
pub mod vl;
pub mod weights;

pub use config::{Architecture, ModelConfig, RopeScaling};
pub use error::{ModelError, Result};
pub use lora::{Adaptable, LoraConfig, add_lora, load_adapter, merge_lora, save_adapter};
pub use model::{
    AttentionKind, Batch, Linear, LoraAdapter, Model, SequenceCache, VisualEmbeds, expected_shapes,
    random_tensors,
};
pub use resolve::{resolve_model_dir, resolve_model_path};
pub use reward_model::RewardModel;
pub use template::{ChatOptions, ChatTemplate};
pub use tokenizer::{GenerationConfig, Tokenizer};
pub use weights::{WeightStore, save_safetensors};

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

/// Everything in a checkpoint directory that inference needs.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub generation: GenerationConfig,
    /// The vision tower and processor of a vision-language checkpoint.
    pub vision: Option<vl::Vision>,
}

impl Checkpoint {
    /// Resolves `model` (local directory or cached Hugging Face id) and loads it.
    pub fn load(model: &str, dtype: DType, device: &Device) -> Result<Self> {
        let dir = resolve_model_dir(model)?;
        Self::load_dir(&dir, dtype, device)
    }

    pub fn load_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let (model, vision) = if config.is_vision_language() {
            let store = WeightStore::open_dir(dir)?;
            let vl = vl::VlModel::from_store(config, &store, dtype, device)?;
            let processor = vl::ProcessorConfig::from_dir(dir)?;
            let vision = vl::Vision {
                tower: vl.vision,
                tokens: vl.tokens,
                processor,
            };
            (vl.text, Some(vision))
        } else {
            let store = WeightStore::open_dir(dir)?;
            (Model::from_store(config, &store, dtype, device, &[])?, None)
        };
        let tokenizer = Tokenizer::from_dir(dir)?;
        let generation = GenerationConfig::from_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            model,
            tokenizer,
            generation,
            vision,
        })
    }

    /// Token ids that end generation: generation_config.json's and the tokenizer's EOS.
    pub fn stop_token_ids(&self) -> Vec<u32> {
        self.generation.stop_token_ids(&self.tokenizer)
    }
}

/// Copies the tokenizer and generation files of `from` next to a saved model in `to`.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<()> {
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
        "preprocessor_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
    ] {
        let src = from.join(name);
        if src.is_file() && from != to {
            std::fs::copy(&src, to.join(name)).map_err(|e| error::ModelError::io(&src, e))?;
        }
    }
    Ok(())
}
