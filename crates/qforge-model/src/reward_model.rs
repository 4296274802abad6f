//! A Bradley-Terry reward model for scoring (trained by `qforge train rm`, served by
//! `/pooling`, used as a judge by the preference recipes): the backbone plus the `score` head
//! (Qwen*ForSequenceClassification layout), read at each sequence's last non-pad token.

use std::path::Path;
use std::sync::Arc;

use candle_core::{D, DType, Device, IndexOp, Tensor};
use serde_json::Value;

use crate::{Batch, ChatOptions, Model, Result, Tokenizer, WeightStore, error::ModelError};

/// `config.json` for a checkpoint with a one-label `score` head: `task` is transformers'
/// head name (`SequenceClassification` for a reward model, `TokenClassification` for a PPO
/// critic), so `AutoModelFor{task}` loads it.
pub fn one_label_head_config(config: &crate::ModelConfig, task: &str) -> Value {
    let mut json = config.to_json();
    let family = if config.model_type() == "qwen2" {
        "Qwen2"
    } else {
        "Qwen3"
    };
    json["architectures"] = serde_json::json!([format!("{family}For{task}")]);
    json["num_labels"] = serde_json::json!(1);
    json["id2label"] = serde_json::json!({"0": "LABEL_0"});
    json["label2id"] = serde_json::json!({"LABEL_0": 0});
    json
}

/// Rewards `[N]` (f32) of a batch's final hidden states at each row's last valid position.
pub fn last_token_rewards(hidden: &Tensor, lengths: &[usize], score: &Tensor) -> Result<Tensor> {
    let last: Vec<Tensor> = lengths
        .iter()
        .enumerate()
        .map(|(b, &len)| hidden.i((b, len - 1)))
        .collect::<candle_core::Result<_>>()?;
    Ok(Tensor::stack(&last, 0)?
        .matmul(&score.t()?)?
        .squeeze(D::Minus1)?
        .to_dtype(DType::F32)?)
}

pub struct RewardModel {
    model: Model,
    score: Tensor,
    tokenizer: Arc<Tokenizer>,
}

impl RewardModel {
    /// Loads a checkpoint written by `qforge train rm` (or transformers' sequence
    /// classification layout with one label).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let store = WeightStore::open_dir(dir)?;
        if !store.contains("score.weight") {
            return Err(ModelError::InvalidInput(format!(
                "{}: not a reward model (no `score.weight`)",
                dir.display()
            )));
        }
        let model = Model::load(dir, dtype, device, &["score."])?;
        let score = store.load(
            "score.weight",
            &[1, model.config().hidden_size],
            dtype,
            device,
        )?;
        Ok(Self {
            model,
            score,
            tokenizer: Arc::new(Tokenizer::from_dir(dir)?),
        })
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// Rewards of token sequences, in batches of `batch`.
    pub fn score_ids(&self, seqs: &[Vec<u32>], batch: usize) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(batch.max(1)) {
            let rows: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
            let batch =
                Batch::right_padded(&rows, self.tokenizer.pad_token_id(), self.model.device())?;
            let hidden = self.model.forward(&batch, None)?;
            let lengths: Vec<usize> = rows.iter().map(|r| r.len()).collect();
            out.extend(last_token_rewards(&hidden, &lengths, &self.score)?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Rewards of whole conversations (ending with the assistant response to judge), rendered
    /// with the reward model's own chat template.
    pub fn score_conversations(
        &self,
        conversations: &[Vec<Value>],
        batch: usize,
    ) -> Result<Vec<f32>> {
        let seqs = conversations
            .iter()
            .map(|c| {
                let text = self
                    .tokenizer
                    .apply_chat_template(c, &ChatOptions::default())?;
                self.tokenizer.encode(&text, false)
            })
            .collect::<Result<Vec<_>>>()?;
        self.score_ids(&seqs, batch)
    }
}
