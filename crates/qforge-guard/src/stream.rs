//! Qwen3Guard-Stream: a Qwen3 backbone plus two head branches that give a risk level and a
//! category at every token (Qwen3Guard, arXiv 2510.14276). A [`StreamSession`] holds one
//! conversation's KV cache: the prompt is judged once at the user turn's `<|im_end|>`, then each
//! pushed token costs one cached decode step and its verdict comes from the response heads.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, IndexOp, Tensor};
use qforge_model::{Batch, Model, SequenceCache, Tokenizer, WeightStore};
use serde::Serialize;
use serde_json::Value;

use crate::error::{GuardError, Result};
use crate::labels::{Category, Policy, Safety};

/// Key prefixes of the eight head tensors, which the backbone loader must accept as extra.
const HEAD_PREFIXES: [&str; 4] = [
    "risk_level_category_",
    "risk_level_head.",
    "category_head.",
    "query_",
];

/// Label maps and sizes from a Stream checkpoint's config.json.
#[derive(Debug, Clone)]
pub struct StreamLabels {
    pub guard_inner_size: usize,
    pub response_risk: Vec<Safety>,
    pub response_category: Vec<Category>,
    pub query_risk: Vec<Safety>,
    pub query_category: Vec<Category>,
}

impl StreamLabels {
    /// The official label orders (eval/eval_stream.py) with a given inner size.
    pub fn official(guard_inner_size: usize) -> Self {
        use Category::*;
        let response = vec![
            Violent,
            SexualContent,
            SuicideSelfHarm,
            PoliticallySensitive,
            Pii,
            CopyrightViolation,
            NonViolentIllegalActs,
            UnethicalActs,
        ];
        let mut query = response.clone();
        query.push(Jailbreak);
        Self {
            guard_inner_size,
            response_risk: Safety::ALL.to_vec(),
            response_category: response,
            query_risk: Safety::ALL.to_vec(),
            query_category: query,
        }
    }

    pub fn from_config(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| GuardError::InvalidInput(format!("reading {}: {e}", path.display())))?;
        let config: Value = serde_json::from_str(&text)
            .map_err(|e| GuardError::InvalidInput(format!("{}: not JSON: {e}", path.display())))?;
        let shown = path.display().to_string();
        let missing = |field: &str| GuardError::MissingConfig {
            path: shown.clone(),
            field: field.into(),
            why: "not a Qwen3Guard-Stream checkpoint?",
        };
        let invalid = |field: &str, reason: String| GuardError::InvalidConfig {
            path: shown.clone(),
            field: field.into(),
            reason,
        };
        let map = |field: &str| -> Result<Vec<String>> {
            let obj = config
                .get(field)
                .and_then(Value::as_object)
                .ok_or_else(|| missing(field))?;
            let mut labels = vec![None; obj.len()];
            for (k, v) in obj {
                let i: usize = k.parse().ok().filter(|&i| i < obj.len()).ok_or_else(|| {
                    invalid(field, format!("key {k:?} is not an index < {}", obj.len()))
                })?;
                let label = v
                    .as_str()
                    .ok_or_else(|| invalid(field, format!("label of {k} is not a string")))?;
                labels[i] = Some(label.to_string());
            }
            Ok(labels.into_iter().map(Option::unwrap_or_default).collect())
        };
        let risks = |field: &str| -> Result<Vec<Safety>> {
            map(field)?
                .iter()
                .map(|l| {
                    Safety::from_label(l)
                        .ok_or_else(|| invalid(field, format!("unknown risk level {l:?}")))
                })
                .collect()
        };
        let categories = |field: &str| -> Result<Vec<Category>> {
            map(field)?
                .iter()
                .map(|l| {
                    Category::from_label(l)
                        .ok_or_else(|| invalid(field, format!("unknown category {l:?}")))
                })
                .collect()
        };
        let inner = config
            .get("guard_inner_size")
            .and_then(Value::as_u64)
            .ok_or_else(|| missing("guard_inner_size"))? as usize;
        let labels = Self {
            guard_inner_size: inner,
            response_risk: risks("response_risk_level_map")?,
            response_category: categories("response_category_map")?,
            query_risk: risks("query_risk_level_map")?,
            query_category: categories("query_category_map")?,
        };
        for (field, size, n) in [
            ("num_risk_level", labels.response_risk.len(), 3),
            ("num_category", labels.response_category.len(), 8),
            ("num_query_risk_level", labels.query_risk.len(), 3),
            ("num_query_category", labels.query_category.len(), 9),
        ] {
            let declared = config
                .get(field)
                .and_then(Value::as_u64)
                .unwrap_or(n as u64) as usize;
            if declared != size {
                return Err(invalid(
                    field,
                    format!("{declared}, but its label map has {size} entries"),
                ));
            }
        }
        Ok(labels)
    }
}

/// One head branch: projection, RMSNorm, risk head and category head.
struct Branch {
    pre: Tensor,
    norm: Tensor,
    risk: Tensor,
    category: Tensor,
}

impl Branch {
    /// `get(key, shape)` fetches a tensor, checking its shape.
    fn load(
        get: &dyn Fn(String, &[usize]) -> Result<Tensor>,
        prefix: &str,
        hidden: usize,
        inner: usize,
        (risks, categories): (usize, usize),
    ) -> Result<Self> {
        Ok(Self {
            pre: get(
                format!("{prefix}risk_level_category_pre.weight"),
                &[inner, hidden],
            )?,
            norm: get(
                format!("{prefix}risk_level_category_layernorm.weight"),
                &[inner],
            )?,
            risk: get(format!("{prefix}risk_level_head.weight"), &[risks, inner])?,
            category: get(
                format!("{prefix}category_head.weight"),
                &[categories, inner],
            )?,
        })
    }

    /// `[N, hidden]` normed hidden states -> (risk, category) logits, f32.
    fn forward(&self, h: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        let x = h.matmul(&self.pre.t()?)?;
        let x = qforge_model::ops::rms_norm(&x, &self.norm, eps, false)?;
        Ok((
            x.matmul(&self.risk.t()?)?.to_dtype(DType::F32)?,
            x.matmul(&self.category.t()?)?.to_dtype(DType::F32)?,
        ))
    }
}

/// Logits of both branches at some positions, `[N, n]` each, f32.
pub struct HeadLogits {
    pub risk: Tensor,
    pub category: Tensor,
    pub query_risk: Tensor,
    pub query_category: Tensor,
}

/// A verdict at one position: the argmax risk level and category with their probabilities.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenVerdict {
    /// Index in the whole token sequence of the session.
    pub position: usize,
    pub token: u32,
    pub risk: Safety,
    /// Softmax over the risk levels, in the order Safe, Unsafe, Controversial.
    pub risk_probs: [f32; 3],
    /// Meaningful only when `risk` is not Safe (training masked the category loss otherwise).
    pub category: Category,
    pub category_prob: f32,
}

/// How consecutive non-Safe tokens become a flag (Qwen3Guard, arXiv 2510.14276).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Debounce {
    /// The paper's rule: flag at token i when tokens i−1 and i are both non-Safe.
    #[default]
    Paper,
    /// `eval/eval_stream.py`: the first two consecutive Unsafe anywhere, else the first two
    /// consecutive Controversial (mixed pairs never fire); the flag is the pair's second token.
    /// Online, only Unsafe pairs can fire (a later Unsafe pair would take precedence over a
    /// Controversial one); [`StreamSession::final_flag`] applies the whole rule.
    EvalScript,
}

/// The first flagged index of a sequence of risk levels under `rule`, if any.
pub fn first_flag(risks: &[Safety], rule: Debounce) -> Option<usize> {
    let pair = |ok: &dyn Fn(Safety, Safety) -> bool| {
        (1..risks.len()).find(|&i| ok(risks[i - 1], risks[i]))
    };
    match rule {
        Debounce::Paper => pair(&|a, b| a != Safety::Safe && b != Safety::Safe),
        Debounce::EvalScript => pair(&|a, b| a == Safety::Unsafe && b == Safety::Unsafe)
            .or_else(|| pair(&|a, b| a == Safety::Controversial && b == Safety::Controversial)),
    }
}

/// Where response scoring begins, found from the assistant header as tokens arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScoringStart {
    /// No `<|im_start|>assistant` seen yet.
    AwaitingHeader,
    /// Header at this position; waiting to see whether an empty think block follows.
    Header(usize),
    Known(usize),
}

/// Token ids the streaming protocol looks for, from the tokenizer. Role names and newlines
/// are single tokens in Qwen's vocabulary but need not be in others (the test tokenizer).
#[derive(Debug, Clone)]
struct ProtocolTokens {
    im_start: u32,
    im_end: u32,
    user: Vec<u32>,
    assistant: Vec<u32>,
    newline: Vec<u32>,
    /// `<think>\n\n</think>\n\n`: the empty think block of a non-thinking reply.
    empty_think: Vec<u32>,
    think: u32,
}

impl ProtocolTokens {
    fn from_tokenizer(tok: &Tokenizer) -> Result<Self> {
        let special = |t: &str| {
            tok.token_to_id(t).ok_or_else(|| {
                GuardError::InvalidInput(format!("the tokenizer has no `{t}` token"))
            })
        };
        let think = special("<think>")?;
        special("</think>")?;
        Ok(Self {
            im_start: special("<|im_start|>")?,
            im_end: special("<|im_end|>")?,
            user: tok.encode("user", false)?,
            assistant: tok.encode("assistant", false)?,
            newline: tok.encode("\n", false)?,
            empty_think: tok.encode("<think>\n\n</think>\n\n", false)?,
            think,
        })
    }

    /// Positions `p` where `ids[p..]` starts with `<|im_start|>` followed by `role`.
    fn turn_starts<'a>(
        &'a self,
        ids: &'a [u32],
        role: &'a [u32],
    ) -> impl DoubleEndedIterator<Item = usize> + 'a {
        (0..ids.len()).filter(move |&p| ids[p] == self.im_start && ids[p + 1..].starts_with(role))
    }
}

/// A loaded Qwen3Guard-Stream model. Cheap to share: sessions hold an `Arc` of it.
pub struct StreamGuard {
    model: Model,
    tokenizer: Arc<Tokenizer>,
    response: Branch,
    query: Branch,
    labels: StreamLabels,
    tokens: ProtocolTokens,
    next_session: AtomicU64,
}

impl StreamGuard {
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let labels = StreamLabels::from_config(dir)?;
        // The heads are extra keys for the backbone loader; a tied `lm_head.weight` is ignored.
        let model = Model::load(dir, dtype, device, &HEAD_PREFIXES)?;
        let store = WeightStore::open_dir(dir)?;
        let get = |key: String, shape: &[usize]| -> Result<Tensor> {
            Ok(store.load(&key, shape, dtype, device)?)
        };
        Self::from_parts(model, Tokenizer::from_dir(dir)?, &get, labels)
    }

    /// A guard from a loaded backbone, a tokenizer and a source of head tensors (keys of
    /// Qwen3Guard, arXiv 2510.14276), e.g. random heads for benchmarks.
    pub fn from_parts(
        model: Model,
        tokenizer: Tokenizer,
        heads: &dyn Fn(String, &[usize]) -> Result<Tensor>,
        labels: StreamLabels,
    ) -> Result<Self> {
        let hidden = model.config().hidden_size;
        let inner = labels.guard_inner_size;
        let response = Branch::load(
            heads,
            "",
            hidden,
            inner,
            (labels.response_risk.len(), labels.response_category.len()),
        )?;
        let query = Branch::load(
            heads,
            "query_",
            hidden,
            inner,
            (labels.query_risk.len(), labels.query_category.len()),
        )?;
        let tokenizer = Arc::new(tokenizer);
        let tokens = ProtocolTokens::from_tokenizer(&tokenizer)?;
        Ok(Self {
            model,
            tokenizer,
            response,
            query,
            labels,
            tokens,
            next_session: AtomicU64::new(1),
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn labels(&self) -> &StreamLabels {
        &self.labels
    }

    /// Head logits at every position of normed hidden states `[T, hidden]`.
    pub fn head_logits(&self, hidden: &Tensor) -> Result<HeadLogits> {
        let eps = self.model.config().rms_norm_eps;
        let (risk, category) = self.response.forward(hidden, eps)?;
        let (query_risk, query_category) = self.query.forward(hidden, eps)?;
        Ok(HeadLogits {
            risk,
            category,
            query_risk,
            query_category,
        })
    }

    /// All four head logits for a whole sequence in one forward (no cache).
    pub fn full_sequence(&self, ids: &[u32]) -> Result<HeadLogits> {
        let batch = Batch::left_padded(&[ids], &[0], 0, self.model.device())?;
        let hidden = self.model.forward(&batch, None)?.i(0)?;
        self.head_logits(&hidden)
    }

    /// The position of the `<|im_end|>` closing the last user turn. A conversation with no
    /// user turn (a system prompt alone) is judged from its last complete turn instead, so
    /// that a reply to it can still be moderated.
    pub fn user_turn_end(&self, ids: &[u32]) -> Result<usize> {
        let t = &self.tokens;
        match t.turn_starts(ids, &t.user).next_back() {
            Some(start) => (start..ids.len())
                .find(|&i| ids[i] == t.im_end)
                .ok_or_else(|| {
                    GuardError::InvalidInput("the last user turn has no `<|im_end|>`".into())
                }),
            None => ids.iter().rposition(|&i| i == t.im_end).ok_or_else(|| {
                GuardError::InvalidInput(
                    "no complete turn (`<|im_start|>…<|im_end|>`) in the conversation".into(),
                )
            }),
        }
    }

    /// Opens a session on a conversation's tokens (the standard Qwen3 chat template, thinking
    /// off or on). Everything up to the last user turn's `<|im_end|>` is prefilled and judged by
    /// the query heads; the tokens after it (e.g. the assistant header) are pushed as a chunk.
    pub fn open(
        self: &Arc<Self>,
        ids: &[u32],
        debounce: Debounce,
    ) -> Result<(StreamSession, QueryVerdict)> {
        let end = self.user_turn_end(ids)?;
        let max_len = self.model.config().max_position_embeddings;
        if end + 1 > max_len {
            return Err(GuardError::TooLong(format!(
                "the conversation up to the judged user turn has {} tokens, more than the \
                 guard's context of {max_len}",
                end + 1
            )));
        }
        let mut session = StreamSession {
            guard: Arc::clone(self),
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            cache: Some(self.model.new_cache()),
            ids: Vec::new(),
            user_end: end,
            verdicts: Vec::new(),
            start: ScoringStart::AwaitingHeader,
            debounce,
            flag: None,
            checked: 0,
            text: String::new(),
            text_tokens: 0,
            max_len,
            dropped: 0,
        };
        let hidden = session.forward(&ids[..=end])?;
        let last = hidden.i(hidden.dim(0)? - 1)?.unsqueeze(0)?;
        let logits = self.head_logits(&last)?;
        let verdict = QueryVerdict::read(&logits, &self.labels)?;
        session.ids.extend_from_slice(&ids[..=end]);
        session.verdicts.resize(end + 1, None);
        session.push(&ids[end + 1..])?;
        Ok((session, verdict))
    }

    /// Renders `messages` with the standard template (thinking off, with the assistant header)
    /// and opens a session on them: the entry point for moderating a reply as it streams.
    pub fn open_messages(
        self: &Arc<Self>,
        messages: &[Value],
        debounce: Debounce,
    ) -> Result<(StreamSession, QueryVerdict)> {
        self.open_rendered(messages, false, debounce)
    }

    /// Opens a session for a reply that is yet to come: `messages` rendered with the
    /// assistant header alone (thinking on), so the caller writes the think block as the reply
    /// has it (`<think>\n…` for a trace, the empty block before a plain answer) and scoring
    /// starts where the protocol says for either.
    pub fn open_reply(
        self: &Arc<Self>,
        messages: &[Value],
        debounce: Debounce,
    ) -> Result<(StreamSession, QueryVerdict)> {
        self.open_rendered(messages, true, debounce)
    }

    /// `messages` rendered with the generation prompt; with `thinking`, the header alone (an
    /// empty think block a template appends anyway is cut).
    fn open_rendered(
        self: &Arc<Self>,
        messages: &[Value],
        thinking: bool,
        debounce: Debounce,
    ) -> Result<(StreamSession, QueryVerdict)> {
        let options = qforge_model::ChatOptions::generation().with_enable_thinking(thinking);
        let text = self.tokenizer.apply_chat_template(messages, &options)?;
        let text = if thinking {
            text.strip_suffix("<think>\n\n</think>\n\n")
                .unwrap_or(&text)
        } else {
            &text
        };
        let ids = self.tokenizer.encode(text, false)?;
        self.open(&ids, debounce)
    }
}

/// The prompt's verdict, from the query heads at the user turn's `<|im_end|>`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryVerdict {
    pub risk: Safety,
    pub risk_probs: [f32; 3],
    pub category: Category,
    pub category_prob: f32,
}

impl QueryVerdict {
    fn read(logits: &HeadLogits, labels: &StreamLabels) -> Result<Self> {
        let (risk, risk_probs) = argmax_risk(&logits.query_risk.i(0)?, &labels.query_risk)?;
        let (category, category_prob) =
            argmax_category(&logits.query_category.i(0)?, &labels.query_category)?;
        Ok(Self {
            risk,
            risk_probs,
            category,
            category_prob,
        })
    }

    pub fn is_flagged(&self, policy: Policy) -> bool {
        self.risk.is_flagged(policy)
    }
}

/// Softmax of a few head logits `[n]`.
fn softmax(logits: &Tensor) -> Result<Vec<f32>> {
    let x = logits.to_vec1::<f32>()?;
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    Ok(e.into_iter().map(|v| v / sum).collect())
}

fn argmax(p: &[f32]) -> usize {
    (0..p.len()).fold(0, |best, i| if p[i] > p[best] { i } else { best })
}

/// `[n]` logits -> (label, probabilities in Safe/Unsafe/Controversial order).
fn argmax_risk(logits: &Tensor, labels: &[Safety]) -> Result<(Safety, [f32; 3])> {
    let p = softmax(logits)?;
    let mut ordered = [0f32; 3];
    for (i, l) in labels.iter().enumerate() {
        let slot = Safety::ALL
            .iter()
            .position(|s| s == l)
            .expect("all levels listed");
        ordered[slot] += p[i];
    }
    Ok((labels[argmax(&p)], ordered))
}

fn argmax_category(logits: &Tensor, labels: &[Category]) -> Result<(Category, f32)> {
    let p = softmax(logits)?;
    let i = argmax(&p);
    Ok((labels[i], p[i]))
}

/// Where and why a stream was flagged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flag {
    pub position: usize,
    pub risk: Safety,
    pub category: Category,
}

/// One conversation being moderated as it streams. Dropping it (or [`Self::close`]) frees its
/// KV cache.
pub struct StreamSession {
    guard: Arc<StreamGuard>,
    id: u64,
    cache: Option<SequenceCache>,
    ids: Vec<u32>,
    /// The `<|im_end|>` of the judged user turn.
    user_end: usize,
    /// Response verdict at every position after the user turn (`None` before it).
    verdicts: Vec<Option<TokenVerdict>>,
    start: ScoringStart,
    debounce: Debounce,
    flag: Option<Flag>,
    /// Positions below this were already checked by the online debounce.
    checked: usize,
    /// Text pushed through [`Self::push_text`] since the last token push, and how many of its
    /// tokens are in the cache (the last token is held back: more text may merge into it).
    text: String,
    text_tokens: usize,
    /// The guard's context (`max_position_embeddings`).
    max_len: usize,
    /// Reply tokens left out of the cache by the sliding window (see [`Self::push`]): the cache
    /// holds `ids[..scoring_start]` followed by `ids[scoring_start + dropped..]`.
    dropped: usize,
}

impl StreamSession {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.guard.tokenizer
    }

    /// Every token fed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The first flag under the session's debounce rule, online (see [`Debounce`]).
    pub fn flag(&self) -> Option<&Flag> {
        self.flag.as_ref()
    }

    /// The first position whose verdict counts (after the assistant header), once known.
    pub fn scoring_start(&self) -> Option<usize> {
        match self.start {
            ScoringStart::Known(s) => Some(s),
            _ => None,
        }
    }

    /// Reply tokens the sliding window currently leaves out of view (0 until a reply
    /// outgrows the guard's context; see [`Self::push`]).
    pub fn dropped_tokens(&self) -> usize {
        self.dropped
    }

    /// Verdicts of the scored positions so far.
    pub fn scored(&self) -> Vec<&TokenVerdict> {
        let from = self.scoring_start().unwrap_or(self.verdicts.len());
        self.verdicts[from.min(self.verdicts.len())..]
            .iter()
            .flatten()
            .collect()
    }

    /// The flag under the whole debounce rule, over everything scored so far (for evaluation
    /// at the end of a response; the eval-script rule can prefer a later Unsafe pair).
    pub fn final_flag(&self) -> Option<Flag> {
        let scored = self.scored();
        let risks: Vec<Safety> = scored.iter().map(|v| v.risk).collect();
        first_flag(&risks, self.debounce).map(|i| Flag {
            position: scored[i].position,
            risk: scored[i].risk,
            category: scored[i].category,
        })
    }

    fn forward(&mut self, ids: &[u32]) -> Result<Tensor> {
        let cache = self
            .cache
            .as_mut()
            .ok_or(GuardError::SessionClosed(self.id))?;
        let model = self.guard.model();
        let batch = Batch::left_padded(&[ids], &[cache.len()], 0, model.device())?;
        Ok(model.forward(&batch, Some(&mut [cache]))?.i(0)?)
    }

    /// Feeds tokens (one or a chunk) and returns the response verdict of each; earlier tokens
    /// are never processed again.
    ///
    /// A reply longer than the guard's context keeps being judged through a sliding window:
    /// when the cache is full, the conversation up to the scoring start (prompt and assistant
    /// header) is kept, the oldest half of the reply is dropped, and the cache is rebuilt from
    /// the kept tokens (one prefill every half-window of reply tokens). Later tokens are then
    /// judged with the prompt and the most recent part of the reply in view, as a guard
    /// re-run on a truncated reply would judge them; positions in verdicts and flags stay
    /// those of the whole reply.
    pub fn push(&mut self, tokens: &[u32]) -> Result<Vec<TokenVerdict>> {
        if self.cache.is_none() {
            return Err(GuardError::SessionClosed(self.id));
        }
        self.flush_text()?;
        self.push_tokens(tokens)
    }

    fn push_tokens(&mut self, tokens: &[u32]) -> Result<Vec<TokenVerdict>> {
        let mut out = Vec::with_capacity(tokens.len());
        let mut rest = tokens;
        while !rest.is_empty() {
            let cached = self.ids.len() - self.dropped;
            if cached >= self.max_len {
                self.rebuild(self.ids.len())?;
                continue;
            }
            let (now, later) = rest.split_at(rest.len().min(self.max_len - cached));
            out.extend(self.push_piece(now)?);
            rest = later;
        }
        Ok(out)
    }

    /// Tokens kept at the front of the cache when the window slides: everything before the
    /// scoring start.
    fn window_prefix(&self) -> Result<usize> {
        let prefix = self.scoring_start().ok_or_else(|| {
            GuardError::TooLong(format!(
                "the conversation reached the guard's context of {} tokens before the reply began",
                self.max_len
            ))
        })?;
        if prefix + 2 > self.max_len {
            return Err(GuardError::TooLong(format!(
                "the prompt and assistant header take {prefix} of the guard's {} tokens: no \
                 room left to judge the reply",
                self.max_len
            )));
        }
        Ok(prefix)
    }

    /// Recomputes the cache for the first `len` tokens (verdicts are kept: they were judged
    /// when the tokens arrived). What fits the context stays whole; otherwise the window
    /// prefix and the newest half-window of the reply are kept (see [`Self::push`]).
    fn rebuild(&mut self, len: usize) -> Result<()> {
        let (prefix, dropped) = if len < self.max_len {
            (len, 0)
        } else {
            let prefix = self.window_prefix()?;
            (prefix, len - prefix - (self.max_len - prefix) / 2)
        };
        let kept: Vec<u32> = self.ids[..prefix]
            .iter()
            .chain(&self.ids[prefix + dropped..len])
            .copied()
            .collect();
        self.cache = Some(self.guard.model.new_cache());
        self.dropped = dropped;
        if !kept.is_empty() {
            self.forward(&kept)?;
        }
        Ok(())
    }

    fn push_piece(&mut self, tokens: &[u32]) -> Result<Vec<TokenVerdict>> {
        let hidden = self.forward(tokens)?;
        let logits = self.guard.head_logits(&hidden)?;
        let labels = &self.guard.labels;
        let mut out = Vec::with_capacity(tokens.len());
        for (j, &token) in tokens.iter().enumerate() {
            let (risk, risk_probs) = argmax_risk(&logits.risk.i(j)?, &labels.response_risk)?;
            let (category, category_prob) =
                argmax_category(&logits.category.i(j)?, &labels.response_category)?;
            out.push(TokenVerdict {
                position: self.ids.len(),
                token,
                risk,
                risk_probs,
                category,
                category_prob,
            });
            self.ids.push(token);
        }
        if !matches!(self.start, ScoringStart::Known(_)) {
            self.start = self.find_start();
        }
        self.verdicts.extend(out.iter().cloned().map(Some));
        self.debounce_online();
        Ok(out)
    }

    /// Finds the assistant header after the user turn: non-thinking replies are scored from
    /// after the empty think block `<think>\n\n</think>\n\n`; thinking traces from the token
    /// after `<think>\n` (in Qwen's vocabulary, `assistant` + 4, as eval/eval_stream.py).
    fn find_start(&self) -> ScoringStart {
        let t = &self.guard.tokens;
        let ids = &self.ids[..];
        let Some(p) = t
            .turn_starts(ids, &t.assistant)
            .find(|&p| p > self.user_end)
        else {
            return ScoringStart::AwaitingHeader;
        };
        let block = p + 1 + t.assistant.len() + t.newline.len();
        let seen = &ids[block.min(ids.len())..];
        if seen.len() < t.empty_think.len() && seen == &t.empty_think[..seen.len()] {
            return ScoringStart::Header(p);
        }
        ScoringStart::Known(if seen.starts_with(&t.empty_think) {
            block + t.empty_think.len()
        } else if seen.first() == Some(&t.think) {
            // eval/eval_stream.py: the `assistant` token's index + 4, i.e. past `<think>` and
            // the newline after it (in Qwen's vocabulary `\n` is one token).
            block + 1 + t.newline.len()
        } else {
            block
        })
    }

    fn debounce_online(&mut self) {
        let Some(start) = self.scoring_start() else {
            return;
        };
        if self.flag.is_some() {
            return;
        }
        let from = self.checked.max(start + 1);
        for i in from..self.verdicts.len() {
            let (Some(prev), Some(cur)) = (&self.verdicts[i - 1], &self.verdicts[i]) else {
                continue;
            };
            let fires = match self.debounce {
                Debounce::Paper => prev.risk != Safety::Safe && cur.risk != Safety::Safe,
                Debounce::EvalScript => prev.risk == Safety::Unsafe && cur.risk == Safety::Unsafe,
            };
            if fires {
                self.flag = Some(Flag {
                    position: i,
                    risk: cur.risk,
                    category: cur.category,
                });
                break;
            }
        }
        self.checked = self.verdicts.len();
    }

    /// Feeds text from a generator with another vocabulary: it is re-tokenized into the
    /// guard's. The last token is held back until more text or [`Self::flush_text`] (it may
    /// still merge with what follows); when new text changes an earlier token, the cache is
    /// rolled back to the change and re-fed. Returns the verdicts of the tokens committed now.
    pub fn push_text(&mut self, text: &str) -> Result<Vec<TokenVerdict>> {
        if self.cache.is_none() {
            return Err(GuardError::SessionClosed(self.id));
        }
        self.text.push_str(text);
        let tokens = self.guard.tokenizer.encode(&self.text, false)?;
        let committed_from = self.ids.len() - self.text_tokens;
        let old = &self.ids[committed_from..];
        let same = old.iter().zip(&tokens).take_while(|(a, b)| a == b).count();
        if same < old.len() {
            self.rollback(committed_from + same)?;
        }
        let keep = tokens.len().saturating_sub(1);
        let new: Vec<u32> = tokens[same..keep.max(same)].to_vec();
        self.text_tokens = keep.max(same);
        self.push_tokens(&new)
    }

    /// Commits the held-back tail of [`Self::push_text`] (call at the end of a reply).
    pub fn flush_text(&mut self) -> Result<Vec<TokenVerdict>> {
        if self.text.is_empty() {
            return Ok(Vec::new());
        }
        let tokens = self.guard.tokenizer.encode(&self.text, false)?;
        let committed_from = self.ids.len() - self.text_tokens;
        let same = self.ids[committed_from..]
            .iter()
            .zip(&tokens)
            .take_while(|(a, b)| a == b)
            .count();
        self.rollback(committed_from + same)?;
        self.text.clear();
        self.text_tokens = 0;
        self.push_tokens(&tokens[same..])
    }

    /// Forgets every token from `len` on (cache, verdicts, a flag raised there).
    fn rollback(&mut self, len: usize) -> Result<()> {
        if len >= self.ids.len() {
            return Ok(());
        }
        let window_from = self.scoring_start().unwrap_or(0) + self.dropped;
        if self.dropped == 0 || len >= window_from {
            if let Some(cache) = self.cache.as_mut() {
                cache.truncate(len - self.dropped);
            }
        } else {
            // Back into the dropped part of the reply: the window moves back with it.
            self.rebuild(len)?;
        }
        self.ids.truncate(len);
        self.verdicts.truncate(len);
        if self.flag.as_ref().is_some_and(|f| f.position >= len) {
            self.flag = None;
        }
        self.checked = self.checked.min(len);
        self.start = self.find_start();
        Ok(())
    }

    /// Frees the KV cache; later pushes are [`GuardError::SessionClosed`].
    pub fn close(&mut self) {
        self.cache = None;
    }

    pub fn is_closed(&self) -> bool {
        self.cache.is_none()
    }

    pub fn cache_bytes(&self) -> usize {
        self.cache
            .as_ref()
            .map_or(0, SequenceCache::allocated_bytes)
    }
}
