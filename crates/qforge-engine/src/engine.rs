//! Batched generation over caller-visible sequences.
//!
//! A [`Sequence`] owns its KV cache, sampler and text stream. [`Engine::step`] advances any set
//! of sequences by one token each: new ones are prefilled together, running ones decode
//! together, each with its own cache length. `generate` loops `step`; a server can instead
//! call `step` itself and add or drop sequences between steps (continuous batching).

use std::sync::Arc;

use candle_core::IndexOp;
use qforge_model::vl::{Vision, VisualInputs, mrope_positions, vl_batch};
use qforge_model::{Batch, Model, SequenceCache, Tokenizer};
use serde::Serialize;

use crate::detok::TextStream;
use crate::error::{EngineError, Result};
use crate::sampling::{Sampler, SamplingParams, log_softmax, top_logprobs};

#[derive(Debug, Clone, Default)]
pub struct StopConditions {
    pub max_new_tokens: usize,
    pub stop_token_ids: Vec<u32>,
    /// Generation ends when the text contains one of these; it is not part of the output.
    pub stop_strings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
    pub stop: StopConditions,
    /// How many alternatives to report with each token's log-probability (0: none).
    pub top_logprobs: usize,
    /// Drop special tokens from the text (the ids are kept).
    pub skip_special_tokens: bool,
    /// Images and videos whose placeholders the prompt holds (vision-language models).
    pub visual: Option<Arc<VisualInputs>>,
}

impl GenerationRequest {
    pub fn new(prompt_ids: Vec<u32>, max_new_tokens: usize) -> Self {
        Self {
            prompt_ids,
            sampling: SamplingParams::greedy(),
            stop: StopConditions {
                max_new_tokens,
                ..StopConditions::default()
            },
            top_logprobs: 0,
            skip_special_tokens: true,
            visual: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "value")]
pub enum FinishReason {
    /// A stop token was sampled.
    StopToken(u32),
    /// The text reached a stop string.
    StopString(String),
    /// `max_new_tokens` or the model's context was reached.
    Length,
}

impl FinishReason {
    /// OpenAI's `finish_reason`.
    pub fn openai(&self) -> &'static str {
        match self {
            Self::Length => "length",
            _ => "stop",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GeneratedToken {
    pub id: u32,
    /// Log-probability under the model's raw distribution (before sampling filters).
    pub logprob: f32,
    pub top_logprobs: Vec<(u32, f32)>,
}

/// What one step produced for one sequence.
#[derive(Debug, Clone)]
pub struct TokenEvent {
    /// Index of the sequence in the slice given to `step` (or the request index).
    pub index: usize,
    pub token: GeneratedToken,
    /// Text that became final with this token (may be empty; stop strings held back).
    pub text: String,
    pub finish: Option<FinishReason>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerationOutput {
    pub prompt_tokens: usize,
    pub tokens: Vec<GeneratedToken>,
    pub text: String,
    pub finish_reason: FinishReason,
}

impl GenerationOutput {
    pub fn token_ids(&self) -> Vec<u32> {
        self.tokens.iter().map(|t| t.id).collect()
    }
}

/// One sequence being generated.
#[derive(Debug)]
pub struct Sequence {
    tokens: Vec<u32>,
    prompt_len: usize,
    cache: SequenceCache,
    sampler: Sampler,
    stop: StopConditions,
    top_logprobs: usize,
    stream: TextStream,
    /// Next-token logits, present once the sequence's last token has been through the model.
    next_logits: Option<Vec<f32>>,
    generated: Vec<GeneratedToken>,
    finish: Option<FinishReason>,
    /// Visual inputs, until the prompt has been prefilled.
    visual: Option<Arc<VisualInputs>>,
    /// Rotary position of token `i` is `i + position_offset` after the prompt (M-RoPE's
    /// `rope_delta`: a video's tokens take fewer positions than tokens); 0 for text.
    position_offset: i64,
}

impl Sequence {
    /// Whether the prompt holds images or video (its keys and values depend on pixels, not
    /// only on token ids, so prefix caching must not share them).
    pub fn has_visual(&self) -> bool {
        self.visual.is_some() || self.position_offset != 0
    }

    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.finish.as_ref()
    }

    pub fn generated(&self) -> &[GeneratedToken] {
        &self.generated
    }

    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// The prompt's token ids.
    pub fn prompt(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }

    /// The sequence's KV cache.
    pub fn cache(&self) -> &SequenceCache {
        &self.cache
    }

    /// Starts a sequence that has not run yet from the keys and values of the first
    /// `prefix.len()` prompt tokens (a prefix-cache hit); the rest of the prompt is prefilled.
    pub fn reuse_prefix(&mut self, prefix: SequenceCache) -> Result<()> {
        if self.next_logits.is_some() || !self.cache.is_empty() || prefix.len() >= self.prompt_len {
            return Err(EngineError::InvalidParameter(format!(
                "a prefix of {} tokens cannot start a sequence with a {}-token prompt that holds {} cached",
                prefix.len(),
                self.prompt_len,
                self.cache.len()
            )));
        }
        let reserved = self.cache.reserved();
        self.cache = prefix;
        self.cache.reserve(reserved);
        Ok(())
    }

    pub fn text(&self) -> &str {
        self.stream.text()
    }

    /// Bytes held by this sequence's KV cache.
    pub fn cache_bytes(&self) -> usize {
        self.cache.allocated_bytes()
    }

    /// Ends the sequence early (client gone); its cache is dropped with it.
    pub fn cancel(&mut self) {
        if self.finish.is_none() {
            self.finish = Some(FinishReason::Length);
        }
    }

    pub fn into_output(mut self) -> GenerationOutput {
        self.stream.take_rest();
        GenerationOutput {
            prompt_tokens: self.prompt_len,
            text: self.stream.text().to_string(),
            tokens: self.generated,
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
        }
    }
}

/// The embedded generation engine: a model and its tokenizer.
#[derive(Debug, Clone)]
pub struct Engine {
    model: Model,
    /// Present for vision-language models.
    vision: Option<Arc<Vision>>,
    tokenizer: Arc<Tokenizer>,
    pad_id: u32,
    /// What [`Engine::request`] stops at: the model's end-of-turn tokens.
    stop_token_ids: Vec<u32>,
}

impl Engine {
    pub fn new(model: Model, tokenizer: Arc<Tokenizer>) -> Self {
        let pad_id = tokenizer.pad_token_id();
        let stop_token_ids = tokenizer.eos_token_id().into_iter().collect();
        Self {
            model,
            vision: None,
            tokenizer,
            pad_id,
            stop_token_ids,
        }
    }

    /// The engine of a vision-language model: prompts may carry images and video.
    pub fn with_vision(mut self, vision: Vision) -> Self {
        self.vision = Some(Arc::new(vision));
        self
    }

    /// The vision side, for vision-language models.
    pub fn vision(&self) -> Option<&Vision> {
        self.vision.as_deref()
    }

    /// The engine of a loaded checkpoint, stopping at its end-of-turn tokens
    /// (`Checkpoint::stop_token_ids`: generation_config.json's and the tokenizer's EOS).
    pub fn from_checkpoint(ck: qforge_model::Checkpoint) -> Self {
        let stop = ck.stop_token_ids();
        let engine = Self::new(ck.model, Arc::new(ck.tokenizer)).with_stop_token_ids(stop);
        match ck.vision {
            Some(vision) => engine.with_vision(vision),
            None => engine,
        }
    }

    /// Replaces the tokenizer's EOS as the end of a reply (e.g. with `Checkpoint::stop_token_ids`,
    /// which adds generation_config.json's ids).
    pub fn with_stop_token_ids(mut self, ids: Vec<u32>) -> Self {
        self.stop_token_ids = ids;
        self
    }

    /// A greedy request that ends at the model's end-of-turn tokens or after `max_new_tokens`.
    pub fn request(&self, prompt_ids: Vec<u32>, max_new_tokens: usize) -> GenerationRequest {
        let mut r = GenerationRequest::new(prompt_ids, max_new_tokens);
        r.stop.stop_token_ids = self.stop_token_ids.clone();
        r
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// Checks a request and makes its sequence (nothing runs yet).
    pub fn start(&self, index: usize, request: GenerationRequest) -> Result<Sequence> {
        request.sampling.validate()?;
        let max = self.model.config().max_position_embeddings;
        let len = request.prompt_ids.len();
        if len == 0 {
            return Err(EngineError::EmptyPrompt { index });
        }
        if len >= max {
            return Err(EngineError::PromptTooLong { index, len, max });
        }
        let vocab = self.model.config().vocab_size;
        if let Some((bad, _)) = request
            .sampling
            .logit_bias
            .iter()
            .find(|(t, _)| *t as usize >= vocab)
        {
            return Err(EngineError::InvalidParameter(format!(
                "request {index}: logit_bias names token {bad}, outside the vocabulary of {vocab}"
            )));
        }
        if let Some(&bad) = request.prompt_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::Model(qforge_model::ModelError::InvalidInput(
                format!("request {index}: token id {bad} is outside the vocabulary of {vocab}"),
            )));
        }
        let position_offset = match &request.visual {
            None => 0,
            Some(visual) => {
                let vision = self.vision.as_ref().ok_or_else(|| {
                    EngineError::Model(qforge_model::ModelError::InvalidInput(format!(
                        "request {index}: the model is text-only and cannot take images or video"
                    )))
                })?;
                // Checked now so a bad request fails before it is batched.
                let positions = mrope_positions(
                    &[&request.prompt_ids],
                    vision.tokens.rope_ids(),
                    &visual.grids(),
                    vision.tower.config().spatial_merge_size,
                    vision.tower.config().tokens_per_second,
                )?;
                let next = i64::from(positions[0].next);
                if next >= max as i64 {
                    return Err(EngineError::PromptTooLong {
                        index,
                        len: next as usize,
                        max,
                    });
                }
                next - len as i64
            }
        };
        // Allocated once at the longest the sequence can get (what the scheduler reserves).
        let mut cache = self.model.new_cache();
        cache.reserve((len + request.stop.max_new_tokens).min(max));
        Ok(Sequence {
            prompt_len: len,
            stream: TextStream::new(
                request.stop.stop_strings.clone(),
                request.skip_special_tokens,
            ),
            tokens: request.prompt_ids,
            cache,
            sampler: Sampler::new(request.sampling),
            stop: request.stop,
            top_logprobs: request.top_logprobs,
            next_logits: None,
            generated: Vec::new(),
            finish: None,
            visual: request.visual.filter(|v| !v.is_empty()),
            position_offset,
        })
    }

    /// Runs the model over the tokens each sequence has not fed yet, in one batch, and stores
    /// each sequence's next-token logits.
    fn feed(&self, seqs: &mut [&mut Sequence]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let pending: Vec<&[u32]> = seqs.iter().map(|s| &s.tokens[s.cache.len()..]).collect();
        let batch = match &self.vision {
            Some(vision) if seqs.iter().any(|s| s.visual.is_some()) => {
                // Prefills with pixels: rows with and without visual inputs share the batch.
                if seqs.iter().any(|s| !s.cache.is_empty()) {
                    return Err(EngineError::InvalidParameter(
                        "a prompt with images is prefilled whole, never after a cached prefix"
                            .into(),
                    ));
                }
                let mut visual = VisualInputs::default();
                for v in seqs.iter().filter_map(|s| s.visual.as_ref()) {
                    visual.images.extend(v.images.iter().cloned());
                    visual.videos.extend(v.videos.iter().cloned());
                }
                vl_batch(
                    &self.model,
                    &vision.tower,
                    vision.tokens,
                    &pending,
                    &visual,
                    self.pad_id,
                    true,
                )?
                .batch
            }
            _ => {
                let starts: Vec<usize> = seqs
                    .iter()
                    .map(|s| (s.cache.len() as i64 + s.position_offset) as usize)
                    .collect();
                Batch::left_padded(&pending, &starts, self.pad_id, self.model.device())?
            }
        };
        let hidden = {
            let mut caches: Vec<&mut SequenceCache> =
                seqs.iter_mut().map(|s| &mut s.cache).collect();
            self.model.forward(&batch, Some(&mut caches))?
        };
        let logits = self.model.last_logits(&hidden)?;
        for (i, seq) in seqs.iter_mut().enumerate() {
            seq.next_logits = Some(logits.i(i)?.to_vec1::<f32>()?);
            // The pixels are in the cache now.
            seq.visual = None;
        }
        Ok(())
    }

    /// Advances every unfinished sequence by one token. New sequences are prefilled first
    /// (together), then each samples, then those still running are fed (together).
    pub fn step(&self, seqs: &mut [&mut Sequence]) -> Result<Vec<TokenEvent>> {
        {
            let mut fresh: Vec<&mut Sequence> = seqs
                .iter_mut()
                .filter(|s| !s.is_finished() && s.next_logits.is_none())
                .map(|s| &mut **s)
                .collect();
            self.feed(&mut fresh)?;
        }
        let max_ctx = self.model.config().max_position_embeddings;
        let mut events = Vec::new();
        for (index, seq) in seqs.iter_mut().enumerate() {
            if seq.is_finished() {
                continue;
            }
            let Some(logits) = seq.next_logits.take() else {
                continue;
            };
            let id = seq.sampler.sample(&logits, &seq.tokens, seq.prompt_len)?;
            let logprobs = log_softmax(&logits);
            let token = GeneratedToken {
                id,
                logprob: logprobs[id as usize],
                top_logprobs: top_logprobs(&logprobs, seq.top_logprobs),
            };
            seq.tokens.push(id);
            seq.generated.push(token.clone());
            let mut finish = None;
            if seq.stop.stop_token_ids.contains(&id) {
                finish = Some(FinishReason::StopToken(id));
            } else if let Some(stop) = seq.stream.push(&self.tokenizer, id)? {
                finish = Some(FinishReason::StopString(stop));
            } else if seq.generated.len() >= seq.stop.max_new_tokens || seq.tokens.len() >= max_ctx
            {
                finish = Some(FinishReason::Length);
            }
            let text = match &finish {
                None => seq.stream.take_ready(),
                Some(FinishReason::StopString(_)) => seq.stream.take_rest(),
                Some(_) => {
                    seq.stream.flush(&self.tokenizer)?;
                    seq.stream.take_rest()
                }
            };
            seq.finish = finish.clone();
            events.push(TokenEvent {
                index,
                token,
                text,
                finish,
            });
        }
        let mut running: Vec<&mut Sequence> = seqs
            .iter_mut()
            .filter(|s| !s.is_finished())
            .map(|s| &mut **s)
            .collect();
        self.feed(&mut running)?;
        Ok(events)
    }

    /// Generates for every request in one batch, calling `on_event` for each token as it is
    /// produced. Outputs are in request order.
    pub fn generate(
        &self,
        requests: Vec<GenerationRequest>,
        mut on_event: impl FnMut(&TokenEvent),
    ) -> Result<Vec<GenerationOutput>> {
        let mut seqs = requests
            .into_iter()
            .enumerate()
            .map(|(i, r)| self.start(i, r))
            .collect::<Result<Vec<_>>>()?;
        for seq in seqs.iter_mut() {
            if seq.stop.max_new_tokens == 0 {
                seq.finish = Some(FinishReason::Length);
            }
        }
        loop {
            let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
            if refs.iter().all(|s| s.is_finished()) {
                break;
            }
            for event in self.step(&mut refs)? {
                on_event(&event);
            }
        }
        Ok(seqs.into_iter().map(Sequence::into_output).collect())
    }
}
