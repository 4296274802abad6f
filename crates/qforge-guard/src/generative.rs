//! Qwen3Guard-Gen: a plain Qwen3 chat model whose chat template carries the whole moderation
//! instruction (Qwen3Guard, arXiv 2510.14276). The caller passes ordinary messages; the role of the
//! last one picks prompt or response moderation.

use std::path::Path;
use std::sync::Arc;

use candle_core::{D, DType, Device, IndexOp};
use qforge_engine::{Engine, GenerationRequest};
use qforge_model::{Batch, ChatOptions, Checkpoint};
use serde::Serialize;
use serde_json::Value;

use crate::error::{GuardError, Result};
use crate::labels::{Mode, Safety, Verdict, parse_verdict};

/// The official decoding budget (eval scripts: greedy, `max_new_tokens = 128`).
pub const MAX_NEW_TOKENS: usize = 128;

/// A Gen verdict, or the explicit state of output that does not follow the grammar.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum GenOutcome {
    Parsed {
        mode: Mode,
        verdict: Verdict,
        raw: String,
    },
    Unparsable {
        mode: Mode,
        reason: String,
        raw: String,
    },
}

impl GenOutcome {
    pub fn verdict(&self) -> Option<&Verdict> {
        match self {
            GenOutcome::Parsed { verdict, .. } => Some(verdict),
            GenOutcome::Unparsable { .. } => None,
        }
    }

    pub fn raw(&self) -> &str {
        match self {
            GenOutcome::Parsed { raw, .. } | GenOutcome::Unparsable { raw, .. } => raw,
        }
    }
}

/// Probabilities of the three severities read from the next-token distribution after
/// `Safety:` (one prefill, no decoding), renormalised over the three label tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SafetyProbs {
    pub safe: f32,
    #[serde(rename = "unsafe")]
    pub unsafe_: f32,
    pub controversial: f32,
    /// Probability mass the model put on the three label tokens before renormalising (near 1
    /// for a real guard; low values mean the fast path is off-distribution).
    pub label_mass: f32,
}

impl SafetyProbs {
    pub fn argmax(&self) -> Safety {
        let p = [self.safe, self.unsafe_, self.controversial];
        Safety::ALL[(0..3).fold(0, |b, i| if p[i] > p[b] { i } else { b })]
    }
}

pub struct GenGuard {
    engine: Engine,
    stop_ids: Vec<u32>,
    /// First token of " Safe", " Unsafe", " Controversial" (Qwen: 22291, 73067, 2093).
    label_tokens: [u32; 3],
    /// `Safety:` appended for the fast path (Qwen: [73037, 25]).
    safety_prefix: Vec<u32>,
}

impl GenGuard {
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::new(Checkpoint::load_dir(dir, dtype, device)?)
    }

    pub fn new(ck: Checkpoint) -> Result<Self> {
        let stop_ids = ck.stop_token_ids();
        let tokenizer = Arc::new(ck.tokenizer);
        tokenizer.chat_template()?;
        let first = |text: &str| -> Result<u32> {
            tokenizer
                .encode(text, false)?
                .first()
                .copied()
                .ok_or_else(|| GuardError::InvalidInput(format!("{text:?} encodes to nothing")))
        };
        let label_tokens = [first(" Safe")?, first(" Unsafe")?, first(" Controversial")?];
        if label_tokens[0] == label_tokens[1]
            || label_tokens[1] == label_tokens[2]
            || label_tokens[0] == label_tokens[2]
        {
            return Err(GuardError::InvalidInput(format!(
                "the severity labels share their first token ({label_tokens:?}): no fast path"
            )));
        }
        let safety_prefix = tokenizer.encode("Safety:", false)?;
        Ok(Self {
            engine: Engine::new(ck.model, tokenizer),
            stop_ids,
            label_tokens,
            safety_prefix,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The moderation prompt, rendered by the checkpoint's own chat template (which appends the
    /// assistant header and empty think block itself).
    pub fn prompt_ids(&self, messages: &[Value]) -> Result<(Mode, Vec<u32>)> {
        let mode = Mode::of_messages(messages)?;
        let tok = self.engine.tokenizer();
        let text = tok.apply_chat_template(messages, &ChatOptions::default())?;
        Ok((mode, tok.encode(&text, false)?))
    }

    /// Greedy-decodes a verdict for every conversation, in one batch.
    pub fn moderate(&self, conversations: &[Vec<Value>]) -> Result<Vec<GenOutcome>> {
        let mut modes = Vec::with_capacity(conversations.len());
        let mut requests = Vec::with_capacity(conversations.len());
        for messages in conversations {
            let (mode, ids) = self.prompt_ids(messages)?;
            let mut request = GenerationRequest::new(ids, MAX_NEW_TOKENS);
            request.stop.stop_token_ids = self.stop_ids.clone();
            modes.push(mode);
            requests.push(request);
        }
        let outputs = self.engine.generate(requests, |_| {})?;
        Ok(outputs
            .into_iter()
            .zip(modes)
            .map(|(out, mode)| match parse_verdict(&out.text, mode) {
                Ok(verdict) => GenOutcome::Parsed {
                    mode,
                    verdict,
                    raw: out.text,
                },
                Err(GuardError::Unparsable { reason, .. }) => GenOutcome::Unparsable {
                    mode,
                    reason,
                    raw: out.text,
                },
                Err(e) => GenOutcome::Unparsable {
                    mode,
                    reason: e.to_string(),
                    raw: out.text,
                },
            })
            .collect())
    }

    /// The fast path: severity probabilities from one prefill of prompt + `Safety:`.
    pub fn safety_probs(&self, conversations: &[Vec<Value>]) -> Result<Vec<SafetyProbs>> {
        let mut seqs = Vec::with_capacity(conversations.len());
        for messages in conversations {
            let (_, mut ids) = self.prompt_ids(messages)?;
            ids.extend_from_slice(&self.safety_prefix);
            seqs.push(ids);
        }
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let model = self.engine.model();
        let batch = Batch::left_padded(
            &refs,
            &vec![0; refs.len()],
            self.engine.tokenizer().pad_token_id(),
            model.device(),
        )?;
        let hidden = model.forward(&batch, None)?;
        let logp = candle_nn::ops::log_softmax(&model.last_logits(&hidden)?, D::Minus1)?;
        let mut out = Vec::with_capacity(seqs.len());
        for b in 0..seqs.len() {
            let row = logp.i(b)?;
            let p: Vec<f32> = self
                .label_tokens
                .iter()
                .map(|&t| Ok(row.i(t as usize)?.to_scalar::<f32>()?.exp()))
                .collect::<Result<_>>()?;
            let mass: f32 = p.iter().sum();
            out.push(SafetyProbs {
                safe: p[0] / mass,
                unsafe_: p[1] / mass,
                controversial: p[2] / mass,
                label_mass: mass,
            });
        }
        Ok(out)
    }
}
