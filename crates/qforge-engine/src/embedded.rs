//! [`ChatBackend`] on the embedded engine, through the continuous-batching scheduler.

use std::sync::Arc;

use async_trait::async_trait;
use qforge_model::{ChatOptions, GenerationConfig, Tokenizer};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::backend::{BackendError, ChatBackend, ChatStream};
use crate::chat::{
    ChatDelta, ChatEvent, ChatRequest, OutputParser, TokenLogprob, ToolChoice, TopLogprob, Usage,
    thinking_expected,
};
use crate::engine::{GeneratedToken, GenerationRequest, StopConditions};
use crate::sampling::{SamplingFields, SamplingParams};
use crate::scheduler::{Scheduler, SeqEvent, SubmitError};
use crate::vision::{ImageSources, has_visual_parts, visual_chat_prompt};
use qforge_model::vl::VisualInputs;

#[derive(Clone)]
pub struct EmbeddedBackend {
    name: String,
    scheduler: Scheduler,
    tokenizer: Arc<Tokenizer>,
    generation: GenerationConfig,
    stop_token_ids: Vec<u32>,
    /// Split reasoning into `reasoning_content` (vLLM's qwen3 reasoning parser) for replies
    /// that open in a think block ([`thinking_expected`]).
    pub parse_reasoning: bool,
    /// Where image parts may name local files (vision-language models).
    image_sources: ImageSources,
}

impl From<&ChatRequest> for SamplingFields {
    fn from(r: &ChatRequest) -> Self {
        Self {
            temperature: r.temperature,
            top_p: r.top_p,
            top_k: r.top_k,
            min_p: r.min_p,
            repetition_penalty: r.repetition_penalty,
            presence_penalty: r.presence_penalty,
            frequency_penalty: r.frequency_penalty,
            logit_bias: r.logit_bias.clone(),
            seed: r.seed,
        }
    }
}

fn submit_error(e: SubmitError) -> BackendError {
    match e {
        SubmitError::QueueFull(_) => BackendError::Busy(e.to_string()),
        SubmitError::TooLarge { .. } => BackendError::InvalidRequest {
            message: e.to_string(),
            param: Some("max_tokens".into()),
        },
        SubmitError::Closed => BackendError::Unavailable(e.to_string()),
        SubmitError::Invalid(inner) => BackendError::InvalidRequest {
            message: inner.to_string(),
            param: None,
        },
    }
}

/// A chat request rendered for the engine.
struct RenderedPrompt {
    ids: Vec<u32>,
    /// The reply opens inside a think block.
    thinking: bool,
    visual: Option<Arc<VisualInputs>>,
}

/// One streamed sequence's settings for [`EmbeddedBackend::stream`].
struct StreamOptions {
    parse_reasoning: bool,
    parse_tools: bool,
    /// `parallel_tool_calls: false`: only a reply's first tool call is kept.
    one_tool_call: bool,
    logprobs: bool,
}

/// What the embedded engine cannot honour is refused with a 400, never silently ignored:
/// forcing a tool call (`required`, a named function) and JSON output need structured
/// (grammar-constrained) decoding, which qforge does not have.
fn check_supported(request: &ChatRequest) -> Result<(), BackendError> {
    let refuse = |param: &str, message: String| {
        Err(BackendError::InvalidRequest {
            message,
            param: Some(param.into()),
        })
    };
    match &request.tool_choice {
        Some(ToolChoice::Required) => {
            return refuse(
                "tool_choice",
                "tool_choice \"required\" needs structured output, which this server does not \
                 implement; use \"auto\""
                    .into(),
            );
        }
        Some(ToolChoice::Function(name)) => {
            return refuse(
                "tool_choice",
                format!(
                    "a named tool_choice ({name:?}) needs structured output, which this server \
                     does not implement; use \"auto\""
                ),
            );
        }
        _ => {}
    }
    if let Some(format) = &request.response_format {
        let kind = format["type"].as_str().unwrap_or_default();
        if kind != "text" {
            return refuse(
                "response_format",
                format!(
                    "response_format {kind:?} needs structured output, which this server does not \
                     implement; only \"text\" is accepted"
                ),
            );
        }
    }
    Ok(())
}

impl EmbeddedBackend {
    pub fn new(name: String, scheduler: Scheduler, generation: GenerationConfig) -> Self {
        let tokenizer = scheduler.engine().tokenizer().clone();
        let stop_token_ids = generation.stop_token_ids(&tokenizer);
        Self {
            name,
            scheduler,
            tokenizer,
            generation,
            stop_token_ids,
            parse_reasoning: true,
            image_sources: ImageSources::default(),
        }
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn max_context(&self) -> usize {
        self.scheduler
            .engine()
            .model()
            .config()
            .max_position_embeddings
    }

    /// Where images named by local path may be read from (none by default: data URLs only).
    pub fn with_image_sources(mut self, sources: ImageSources) -> Self {
        self.image_sources = sources;
        self
    }

    /// The prompt ids the chat template renders for a request (placeholders expanded).
    pub fn chat_prompt(&self, request: &ChatRequest) -> Result<Vec<u32>, BackendError> {
        self.rendered_prompt(request).map(|p| p.ids)
    }

    /// The prompt ids, whether the reply opens inside a think block, and the images.
    fn rendered_prompt(&self, request: &ChatRequest) -> Result<RenderedPrompt, BackendError> {
        let options = ChatOptions {
            add_generation_prompt: true,
            tools: request.tools.clone(),
            extra: request.chat_template_kwargs.clone(),
        };
        let invalid = |e: qforge_model::ModelError| BackendError::InvalidRequest {
            message: e.to_string(),
            param: Some("messages".into()),
        };
        let visual_parts = has_visual_parts(&request.messages);
        if visual_parts && self.scheduler.engine().vision().is_none() {
            return Err(BackendError::InvalidRequest {
                message: format!(
                    "the model `{}` is text-only: image content parts are not accepted",
                    self.name
                ),
                param: Some("messages".into()),
            });
        }
        let template = self.tokenizer.chat_template().map_err(invalid)?;
        let text = self
            .tokenizer
            .apply_chat_template(&request.messages, &options)
            .map_err(invalid)?;
        let thinking = thinking_expected(
            &text,
            template.has_thinking_switch(),
            &request.chat_template_kwargs,
        );
        if !visual_parts {
            return Ok(RenderedPrompt {
                ids: self.tokenizer.encode(&text, false).map_err(invalid)?,
                thinking,
                visual: None,
            });
        }
        let vision = self.scheduler.engine().vision().expect("checked above");
        let (ids, visual) = visual_chat_prompt(
            &self.tokenizer,
            vision,
            &request.messages,
            &options,
            &self.image_sources,
        )
        .map_err(invalid)?;
        Ok(RenderedPrompt {
            ids,
            thinking,
            visual: Some(Arc::new(visual)),
        })
    }

    /// Request fields, else generation_config.json's defaults, else OpenAI's (temperature 1);
    /// choice `i` of a seeded request uses seed + i.
    fn sampling(&self, fields: &SamplingFields, choice: usize) -> SamplingParams {
        let mut p = fields.resolve(&self.generation, 1.0);
        p.seed = fields.seed.map(|s| s.wrapping_add(choice as u64));
        p
    }

    /// Builds the generation requests (one per choice) for a prompt, checking the context.
    pub fn generation_requests(
        &self,
        prompt: Vec<u32>,
        fields: &SamplingFields,
        max_tokens: Option<usize>,
        stop: &[String],
        n: usize,
        top_logprobs: usize,
    ) -> Result<Vec<GenerationRequest>, BackendError> {
        let max_ctx = self.max_context();
        let len = prompt.len();
        if len == 0 {
            return Err(BackendError::InvalidRequest {
                message: "the prompt is empty".into(),
                param: Some("prompt".into()),
            });
        }
        if len >= max_ctx {
            return Err(BackendError::ContextLength(format!(
                "This model's maximum context length is {max_ctx} tokens. However, your prompt has {len} tokens."
            )));
        }
        let max_new = match max_tokens {
            Some(m) if len + m > max_ctx => {
                return Err(BackendError::ContextLength(format!(
                    "This model's maximum context length is {max_ctx} tokens. However, you requested {} tokens \
                     ({len} in the prompt, {m} for the completion).",
                    len + m
                )));
            }
            Some(m) => m,
            None => max_ctx - len,
        };
        Ok((0..n)
            .map(|i| GenerationRequest {
                prompt_ids: prompt.clone(),
                sampling: self.sampling(fields, i),
                stop: StopConditions {
                    max_new_tokens: max_new,
                    stop_token_ids: self.stop_token_ids.clone(),
                    stop_strings: stop.to_vec(),
                },
                top_logprobs,
                skip_special_tokens: true,
                visual: None,
            })
            .collect())
    }

    fn logprob(&self, t: &GeneratedToken) -> TokenLogprob {
        let text = |id: u32| self.tokenizer.decode(&[id], false).unwrap_or_default();
        TokenLogprob {
            token: text(t.id),
            logprob: t.logprob,
            top_logprobs: t
                .top_logprobs
                .iter()
                .map(|&(id, lp)| TopLogprob {
                    token: text(id),
                    logprob: lp,
                })
                .collect(),
        }
    }

    /// Submits every request and merges their events into one stream (choice i = request i).
    fn stream(
        &self,
        requests: Vec<GenerationRequest>,
        options: StreamOptions,
    ) -> Result<ChatStream, BackendError> {
        let validate = |r: &GenerationRequest| {
            r.sampling
                .validate()
                .map_err(|e| BackendError::InvalidRequest {
                    message: e.to_string(),
                    param: None,
                })
        };
        requests.iter().try_for_each(validate)?;
        let prompt_tokens = requests.first().map_or(0, |r| r.prompt_ids.len());
        let mut receivers = Vec::with_capacity(requests.len());
        for r in requests {
            // An error drops the receivers already made, which cancels those sequences.
            receivers.push(self.scheduler.submit(r).map_err(submit_error)?);
        }
        let (tx, rx) = mpsc::channel(256);
        let this = self.clone();
        let options = Arc::new(options);
        tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            for (index, mut seq) in receivers.into_iter().enumerate() {
                let (tx, this, options) = (tx.clone(), this.clone(), options.clone());
                tasks.spawn(async move {
                    let mut parser =
                        OutputParser::new(options.parse_reasoning, options.parse_tools);
                    let mut generated = 0usize;
                    let mut tool_calls = 0usize;
                    while let Some(event) = seq.recv().await {
                        let token = match event {
                            SeqEvent::Started => continue,
                            SeqEvent::Error(e) => {
                                let _ = tx.send(Err(BackendError::Internal(e))).await;
                                return generated;
                            }
                            SeqEvent::Token(t) => t,
                        };
                        generated += 1;
                        let mut parsed = parser.push(&token.text);
                        if token.finish.is_some() {
                            let rest = parser.finish();
                            parsed.content += &rest.content;
                            parsed.reasoning += &rest.reasoning;
                            parsed.tool_calls.extend(rest.tool_calls);
                        }
                        if options.one_tool_call {
                            parsed
                                .tool_calls
                                .truncate(1usize.saturating_sub(tool_calls));
                        }
                        tool_calls += parsed.tool_calls.len();
                        let nonempty = |s: String| (!s.is_empty()).then_some(s);
                        let delta = ChatDelta {
                            index,
                            content: nonempty(parsed.content),
                            reasoning_content: nonempty(parsed.reasoning),
                            tool_calls: parsed.tool_calls,
                            logprobs: options.logprobs.then(|| vec![this.logprob(&token.token)]),
                            finish_reason: token.finish.as_ref().map(|f| {
                                if parser.saw_tool_call() {
                                    "tool_calls".to_string()
                                } else {
                                    f.openai().to_string()
                                }
                            }),
                        };
                        if tx.send(Ok(ChatEvent::Delta(delta))).await.is_err() {
                            // The consumer is gone: dropping `seq` cancels the sequence.
                            return generated;
                        }
                    }
                    generated
                });
            }
            let mut completion_tokens = 0;
            while let Some(done) = tasks.join_next().await {
                completion_tokens += done.unwrap_or(0);
            }
            let _ = tx
                .send(Ok(ChatEvent::Usage(Usage {
                    prompt_tokens,
                    completion_tokens,
                })))
                .await;
        });
        Ok(rx)
    }

    /// Text completion of raw prompt ids (for `/v1/completions`): content only, no parsing.
    pub fn complete_stream(
        &self,
        prompt: Vec<u32>,
        fields: &SamplingFields,
        max_tokens: Option<usize>,
        stop: &[String],
        n: usize,
        top_logprobs: Option<usize>,
    ) -> Result<ChatStream, BackendError> {
        let requests = self.generation_requests(
            prompt,
            fields,
            max_tokens,
            stop,
            n,
            top_logprobs.unwrap_or(0),
        )?;
        self.stream(
            requests,
            StreamOptions {
                parse_reasoning: false,
                parse_tools: false,
                one_tool_call: false,
                logprobs: top_logprobs.is_some(),
            },
        )
    }
}

#[async_trait]
impl ChatBackend for EmbeddedBackend {
    fn model_name(&self) -> &str {
        &self.name
    }

    async fn chat_stream(&self, request: ChatRequest) -> Result<ChatStream, BackendError> {
        check_supported(&request)?;
        let RenderedPrompt {
            ids: prompt,
            thinking,
            visual,
        } = self.rendered_prompt(&request)?;
        let top = if request.logprobs {
            request.top_logprobs
        } else {
            0
        };
        let mut requests = self.generation_requests(
            prompt,
            &SamplingFields::from(&request),
            request.max_tokens,
            &request.stop,
            request.n,
            top,
        )?;
        for r in &mut requests {
            r.visual = visual.clone();
        }
        self.stream(
            requests,
            StreamOptions {
                parse_reasoning: self.parse_reasoning && thinking,
                // tool_choice "none": the tools stay in the prompt (vLLM's default) but the
                // reply is not parsed for calls.
                parse_tools: request.tools.is_some()
                    && request.tool_choice != Some(ToolChoice::None),
                one_tool_call: request.parallel_tool_calls == Some(false),
                logprobs: request.logprobs,
            },
        )
    }
}
