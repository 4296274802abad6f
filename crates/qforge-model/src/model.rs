//! The Qwen2/Qwen3 decoder: one forward for training and inference.
//!
//! Layout follows transformers' `modeling_qwen3` / `modeling_qwen2` so that safetensors keys and
//! numerics match. The KV cache is not inside the model: callers own one [`SequenceCache`] per
//! sequence and pass them in, so sequences of different lengths share a batch ("ragged" cache).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, IndexOp, Tensor, Var};

use crate::config::{Architecture, ModelConfig};
use crate::error::{ModelError, Result};
use crate::ops;
use crate::weights::{WeightStore, save_safetensors};
use qforge_util::write_json_atomic;

/// The seven projections of every layer, by module path, borrowed as `$r` via `$iter`.
macro_rules! linears {
    ($model:expr, $iter:ident, $($r:tt)+) => {{
        let mut out = Vec::new();
        for (l, layer) in $model.layers.$iter().enumerate() {
            let p = format!("model.layers.{l}");
            let (a, m) = ($($r)+ layer.self_attn, $($r)+ layer.mlp);
            out.push((format!("{p}.self_attn.q_proj"), $($r)+ a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), $($r)+ a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), $($r)+ a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), $($r)+ a.o_proj));
            out.push((format!("{p}.mlp.gate_proj"), $($r)+ m.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), $($r)+ m.up_proj));
            out.push((format!("{p}.mlp.down_proj"), $($r)+ m.down_proj));
        }
        out
    }};
}

/// Which keys a layer attends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// Each position sees itself and earlier positions.
    Causal,
    /// Each position sees every non-padding position (QwenLong-CPRS top layers).
    Bidirectional,
}

/// One forward batch: token ids, per-token positions and which tokens are real.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, T]` u32.
    pub input_ids: Tensor,
    /// `[B, T]` rotary positions, per sequence.
    pub positions: Vec<Vec<u32>>,
    /// `[B, T]`, false for padding. `None` means no padding.
    pub valid: Option<Vec<Vec<bool>>>,
    /// Multimodal rotary positions `[3][B][T]` (temporal, height, width axis) for models with
    /// an `mrope_section`; `None` means every axis is `positions` (plain text).
    pub mrope: Option<[Vec<Vec<u32>>; 3]>,
    /// Embeddings that replace the token embeddings at some positions (image and video
    /// placeholders).
    pub visual: Option<VisualEmbeds>,
}

/// Rows `embeds` `[N, hidden]` placed at flat batch positions `at` (`b * T + t`), in order.
#[derive(Debug, Clone)]
pub struct VisualEmbeds {
    pub embeds: Tensor,
    pub at: Vec<usize>,
}

impl Batch {
    /// Sequences left-padded to a common length, positions starting at `starts[i]` (the
    /// number of tokens already in that sequence's cache, 0 without a cache).
    pub fn left_padded(
        sequences: &[&[u32]],
        starts: &[usize],
        pad_id: u32,
        device: &Device,
    ) -> Result<Self> {
        Self::padded(sequences, starts, pad_id, device, true)
    }

    /// Sequences right-padded to a common length (the usual training layout).
    pub fn right_padded(sequences: &[&[u32]], pad_id: u32, device: &Device) -> Result<Self> {
        let starts = vec![0; sequences.len()];
        Self::padded(sequences, &starts, pad_id, device, false)
    }

    fn padded(
        sequences: &[&[u32]],
        starts: &[usize],
        pad_id: u32,
        device: &Device,
        left: bool,
    ) -> Result<Self> {
        if sequences.is_empty() {
            return Err(ModelError::InvalidInput("empty batch".into()));
        }
        if let Some(i) = sequences.iter().position(|s| s.is_empty()) {
            return Err(ModelError::InvalidInput(format!(
                "sequence {i} of the batch is empty"
            )));
        }
        let t = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        let b = sequences.len();
        let mut ids = Vec::with_capacity(b * t);
        let mut positions = Vec::with_capacity(b);
        let mut valid = Vec::with_capacity(b);
        for (seq, &start) in sequences.iter().zip(starts) {
            let pad = t - seq.len();
            let (mut row_ids, mut row_pos, mut row_valid) = (
                Vec::with_capacity(t),
                Vec::with_capacity(t),
                Vec::with_capacity(t),
            );
            if left {
                row_ids.extend(std::iter::repeat_n(pad_id, pad));
                // transformers fills padded positions with 1; their value never matters.
                row_pos.extend(std::iter::repeat_n(1, pad));
                row_valid.extend(std::iter::repeat_n(false, pad));
            }
            row_ids.extend_from_slice(seq);
            row_pos.extend((0..seq.len()).map(|i| (start + i) as u32));
            row_valid.extend(std::iter::repeat_n(true, seq.len()));
            if !left {
                row_ids.extend(std::iter::repeat_n(pad_id, pad));
                row_pos.extend(std::iter::repeat_n(1, pad));
                row_valid.extend(std::iter::repeat_n(false, pad));
            }
            ids.extend(row_ids);
            positions.push(row_pos);
            valid.push(row_valid);
        }
        let any_pad = valid.iter().any(|r| r.iter().any(|v| !v));
        Ok(Self {
            input_ids: Tensor::from_vec(ids, (b, t), device)?,
            positions,
            valid: any_pad.then_some(valid),
            mrope: None,
            visual: None,
        })
    }

    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(self.input_ids.dims2()?)
    }

    /// `true` where position `t` of row `b` is a real token.
    pub fn is_valid(&self, b: usize, t: usize) -> bool {
        self.valid.as_ref().is_none_or(|v| v[b][t])
    }

    /// Number of real tokens at the end of row `b` (its new tokens, for cached forwards).
    fn valid_suffix(&self, b: usize) -> Result<usize> {
        let (_, t) = self.dims()?;
        let Some(valid) = &self.valid else {
            return Ok(t);
        };
        let n = valid[b].iter().filter(|v| **v).count();
        if valid[b][t - n..].iter().any(|v| !v) {
            return Err(ModelError::InvalidInput(format!(
                "row {b}: a cached forward needs left padding (real tokens at the end)"
            )));
        }
        Ok(n)
    }
}

/// Keys and values of one layer for one sequence, in a buffer that grows by doubling.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    /// Positions to allocate at once when the buffers (re)grow to at most this many: a
    /// sequence whose final length is known allocates once, not by doubling.
    reserved: usize,
}

impl LayerCache {
    /// Appends `[1, KV, n, D]` keys and values; returns views of everything cached.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.dim(2)?;
        let needed = self.len + n;
        let capacity = self.k.as_ref().map_or(0, |t| t.dim(2).unwrap_or(0));
        if needed > capacity {
            let new_cap = if needed <= self.reserved {
                self.reserved
            } else {
                needed.max(capacity * 2).max(16)
            };
            let (_, kv, _, d) = k.dims4()?;
            let grow = |old: &Option<Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((1, kv, new_cap, d), k.dtype(), k.device())?;
                if let Some(old) = old
                    && self.len > 0
                {
                    buf.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
                Ok(buf)
            };
            self.k = Some(grow(&self.k)?);
            self.v = Some(grow(&self.v)?);
        }
        let (kb, vb) = (
            self.k.as_ref().expect("allocated"),
            self.v.as_ref().expect("allocated"),
        );
        kb.slice_set(&k.contiguous()?, 2, self.len)?;
        vb.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = needed;
        Ok((kb.narrow(2, 0, self.len)?, vb.narrow(2, 0, self.len)?))
    }

    /// Drops everything after the first `len` positions.
    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// The KV cache of one sequence across all layers.
#[derive(Debug, Clone)]
pub struct SequenceCache {
    layers: Vec<LayerCache>,
}

impl SequenceCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
        }
    }

    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sequence will hold at most `positions` positions: buffers that grow are allocated at
    /// that size at once (no doubling past what the sequence can use).
    pub fn reserve(&mut self, positions: usize) {
        self.layers.iter_mut().for_each(|l| l.reserved = positions);
    }

    /// What [`SequenceCache::reserve`] set.
    pub fn reserved(&self) -> usize {
        self.layers.first().map_or(0, |l| l.reserved)
    }

    /// Forgets positions from `len` on (the buffers are kept for reuse).
    pub fn truncate(&mut self, len: usize) {
        self.layers.iter_mut().for_each(|l| l.truncate(len));
    }

    /// A copy of positions `start..start + len` of every layer's keys and values
    /// (`[1, KV, len, D]` each), sharing nothing with this cache.
    pub fn copy_span(&self, start: usize, len: usize) -> Result<Vec<(Tensor, Tensor)>> {
        if start + len > self.len() {
            return Err(ModelError::InvalidInput(format!(
                "positions {start}..{} of a cache holding {}",
                start + len,
                self.len()
            )));
        }
        self.layers
            .iter()
            .map(|l| {
                let span = |t: &Option<Tensor>| -> Result<Tensor> {
                    // `force_contiguous` copies just the view (`copy` would clone the whole
                    // buffer behind it).
                    Ok(t.as_ref()
                        .expect("a non-empty cache has buffers")
                        .narrow(2, start, len)?
                        .force_contiguous()?)
                };
                Ok((span(&l.k)?, span(&l.v)?))
            })
            .collect()
    }

    /// A cache holding `spans` one after another (each as [`SequenceCache::copy_span`] returns
    /// them, one `(k, v)` per layer).
    pub fn from_spans(spans: &[&[(Tensor, Tensor)]]) -> Result<Self> {
        let Some(first) = spans.first() else {
            return Err(ModelError::InvalidInput(
                "no spans to build a cache from".into(),
            ));
        };
        let layers = (0..first.len())
            .map(|i| {
                let ks: Vec<&Tensor> = spans.iter().map(|s| &s[i].0).collect();
                let vs: Vec<&Tensor> = spans.iter().map(|s| &s[i].1).collect();
                // Capacity equals length, so the first append moves to a new buffer and
                // nothing ever writes into the spans (`cat` of one span may share its storage).
                let k = Tensor::cat(&ks, 2)?;
                let v = Tensor::cat(&vs, 2)?;
                let len = k.dim(2)?;
                Ok(LayerCache {
                    k: Some(k),
                    v: Some(v),
                    len,
                    reserved: 0,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Bytes held by the buffers.
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| [&l.k, &l.v])
            .flatten()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}

#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// A low-rank update `scale · B·A` added to the output (LoRA, PEFT's layout).
    pub lora: Option<LoraAdapter>,
}

/// `A` `[r, in]`, `B` `[out, r]`, `scale = lora_alpha / r`.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

impl Linear {
    /// `x @ weight^T + bias` over the last dimension. `differentiable` keeps to ops with a
    /// backward; otherwise few-row inputs (decode batches) take the skinny CPU kernel.
    pub fn forward(&self, x: &Tensor, differentiable: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (rows, inner) = (
            dims[..dims.len() - 1].iter().product::<usize>(),
            dims[dims.len() - 1],
        );
        let x2 = x.reshape((rows, inner))?;
        let y = if !differentiable && crate::skinny::applies(&x2, &self.weight) {
            crate::skinny::matmul_wt(&x2.contiguous()?, &self.weight)?
        } else {
            x2.matmul(&self.weight.t()?)?
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let y = match &self.lora {
            // In the adapter's dtype (f32 adapters on a bf16 base, as PEFT does).
            Some(l) => {
                let update = (x2
                    .to_dtype(l.a.dtype())?
                    .matmul(&l.a.t()?)?
                    .matmul(&l.b.t()?)?
                    * l.scale)?;
                let dtype = y.dtype();
                (y + update.to_dtype(dtype)?)?
            }
            None => y,
        };
        let mut out = dims;
        *out.last_mut().expect("rank >= 1") = self.weight.dim(0)?;
        Ok(y.reshape(out)?)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

#[derive(Debug, Clone)]
struct Layer {
    input_layernorm: Tensor,
    self_attn: Attention,
    post_attention_layernorm: Tensor,
    mlp: Mlp,
}

/// What every layer of one forward shares.
struct LayerContext {
    rotary: Rotary,
    padding_bias: Option<Tensor>,
}

/// Rotary tables for one batch, in the model dtype.
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

/// The decoder. Cheap to clone (tensors are reference-counted).
#[derive(Debug, Clone)]
pub struct Model {
    config: ModelConfig,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `None` when tied to `embed_tokens`.
    lm_head: Option<Tensor>,
    attention_kinds: Vec<AttentionKind>,
    inv_freq: Vec<f32>,
    rope_attention_factor: f32,
    differentiable: bool,
    dtype: DType,
    device: Device,
    /// Bumped by every in-place weight reload; shared by the clones that share the weights, so
    /// caches of computed keys and values (the engine's prefix cache) know when they are stale.
    weights_version: Arc<AtomicU64>,
}

/// Names and shapes of every parameter for `config`, in checkpoint order.
pub fn expected_shapes(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i, d) = (
        config.hidden_size,
        config.intermediate_size,
        config.head_dim,
    );
    let (q, kv) = (
        config.num_attention_heads * d,
        config.num_key_value_heads * d,
    );
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![config.vocab_size, h],
    )];
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let mut push = |name: &str, shape: Vec<usize>| out.push((format!("{p}.{name}"), shape));
        push("input_layernorm.weight", vec![h]);
        push("self_attn.q_proj.weight", vec![q, h]);
        push("self_attn.k_proj.weight", vec![kv, h]);
        push("self_attn.v_proj.weight", vec![kv, h]);
        if config.qkv_bias {
            push("self_attn.q_proj.bias", vec![q]);
            push("self_attn.k_proj.bias", vec![kv]);
            push("self_attn.v_proj.bias", vec![kv]);
        }
        push("self_attn.o_proj.weight", vec![h, q]);
        if config.o_bias {
            push("self_attn.o_proj.bias", vec![h]);
        }
        if config.architecture == Architecture::Qwen3 {
            push("self_attn.q_norm.weight", vec![d]);
            push("self_attn.k_norm.weight", vec![d]);
        }
        push("post_attention_layernorm.weight", vec![h]);
        push("mlp.gate_proj.weight", vec![i, h]);
        push("mlp.up_proj.weight", vec![i, h]);
        push("mlp.down_proj.weight", vec![h, i]);
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !config.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![config.vocab_size, h]));
    }
    out
}

/// Keys some checkpoints carry that transformers ignores when loading.
const IGNORED_KEY_SUFFIXES: &[&str] = &["rotary_emb.inv_freq"];

impl Model {
    /// Loads config.json and the safetensors weights of a checkpoint directory. Tensors the
    /// model does not use are an error unless they start with one of `allowed_extra` (heads
    /// that another crate loads from the same store).
    pub fn load(dir: &Path, dtype: DType, device: &Device, allowed_extra: &[&str]) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let store = WeightStore::open_dir(dir)?;
        Self::from_store(config, &store, dtype, device, allowed_extra)
    }

    pub fn from_store(
        config: ModelConfig,
        store: &WeightStore,
        dtype: DType,
        device: &Device,
        allowed_extra: &[&str],
    ) -> Result<Self> {
        let expected = expected_shapes(&config);
        store.check(&expected)?;
        let used: Vec<String> = expected.iter().map(|(k, _)| k.clone()).collect();
        let mut allowed: Vec<&str> = allowed_extra.to_vec();
        if config.tie_word_embeddings {
            // Tied checkpoints sometimes still carry the head; transformers ties it over.
            allowed.push("lm_head.weight");
        }
        let unexpected: Vec<String> = store
            .unexpected(&used, &allowed)
            .into_iter()
            .filter(|k| !IGNORED_KEY_SUFFIXES.iter().any(|s| k.ends_with(s)))
            .collect();
        if !unexpected.is_empty() {
            return Err(ModelError::UnexpectedTensors(unexpected));
        }
        let mut tensors = HashMap::with_capacity(expected.len());
        for (key, shape) in &expected {
            tensors.insert(key.clone(), store.load(key, shape, dtype, device)?);
        }
        Self::from_tensors(config, tensors)
    }

    /// Builds the model from named tensors (all of one dtype and device).
    pub fn from_tensors(config: ModelConfig, mut tensors: HashMap<String, Tensor>) -> Result<Self> {
        crate::weights::check_shapes(&expected_shapes(&config), |key| {
            tensors.get(key).map(|t| t.dims().to_vec())
        })?;
        let mut take = |k: &str| tensors.remove(k).expect("checked above");
        let embed_tokens = take("model.embed_tokens.weight");
        let dtype = embed_tokens.dtype();
        let device = embed_tokens.device().clone();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let mut linear = |name: &str, bias: bool| Linear {
                weight: take(&format!("{p}.{name}.weight")),
                bias: bias.then(|| take(&format!("{p}.{name}.bias"))),
                lora: None,
            };
            let self_attn = Attention {
                q_proj: linear("self_attn.q_proj", config.qkv_bias),
                k_proj: linear("self_attn.k_proj", config.qkv_bias),
                v_proj: linear("self_attn.v_proj", config.qkv_bias),
                o_proj: linear("self_attn.o_proj", config.o_bias),
                q_norm: None,
                k_norm: None,
            };
            let mlp = Mlp {
                gate_proj: linear("mlp.gate_proj", false),
                up_proj: linear("mlp.up_proj", false),
                down_proj: linear("mlp.down_proj", false),
            };
            let qk_norm = config.architecture == Architecture::Qwen3;
            let self_attn = Attention {
                q_norm: qk_norm.then(|| take(&format!("{p}.self_attn.q_norm.weight"))),
                k_norm: qk_norm.then(|| take(&format!("{p}.self_attn.k_norm.weight"))),
                ..self_attn
            };
            layers.push(Layer {
                input_layernorm: take(&format!("{p}.input_layernorm.weight")),
                self_attn,
                post_attention_layernorm: take(&format!("{p}.post_attention_layernorm.weight")),
                mlp,
            });
        }
        let norm = take("model.norm.weight");
        let lm_head = (!config.tie_word_embeddings).then(|| take("lm_head.weight"));
        let (inv_freq, rope_attention_factor) = config.rope_inv_freq();
        Ok(Self {
            attention_kinds: vec![AttentionKind::Causal; config.num_hidden_layers],
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            rope_attention_factor,
            differentiable: false,
            dtype,
            device,
            weights_version: Arc::default(),
        })
    }

    /// A model with random weights (normal-ish, std 0.02; norms around 1), for benchmarks and
    /// tests. Deterministic for a given seed.
    pub fn random(config: ModelConfig, dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        let tensors = random_tensors(&config, dtype, device, seed)?;
        Self::from_tensors(config, tensors)
    }

    /// Turns every parameter into a [`Var`] and the model into its differentiable form.
    /// Returns the variables by checkpoint name (tied embeddings appear once).
    pub fn into_trainable(self) -> Result<(Self, Vec<(String, Var)>)> {
        let named = self.named_tensors();
        let mut vars = Vec::with_capacity(named.len());
        let mut map = HashMap::with_capacity(named.len());
        for (name, t) in named {
            let var = Var::from_tensor(&t)?;
            map.insert(name.clone(), var.as_tensor().clone());
            vars.push((name, var));
        }
        let kinds = self.attention_kinds.clone();
        let mut model = Self::from_tensors(self.config, map)?;
        model.attention_kinds = kinds;
        model.differentiable = true;
        Ok((model, vars))
    }

    /// Chooses the differentiable ops (training) or the fused inference kernels.
    pub fn set_differentiable(&mut self, differentiable: bool) {
        self.differentiable = differentiable;
    }

    pub fn is_differentiable(&self) -> bool {
        self.differentiable
    }

    /// Per-layer attention kinds; must have one entry per layer.
    pub fn set_attention_kinds(&mut self, kinds: Vec<AttentionKind>) -> Result<()> {
        if kinds.len() != self.layers.len() {
            return Err(ModelError::InvalidInput(format!(
                "{} attention kinds for {} layers",
                kinds.len(),
                self.layers.len()
            )));
        }
        self.attention_kinds = kinds;
        Ok(())
    }

    /// Makes the top `n` layers bidirectional (QwenLong-CPRS).
    pub fn set_bidirectional_top_layers(&mut self, n: usize) -> Result<()> {
        let total = self.layers.len();
        if n > total {
            return Err(ModelError::InvalidInput(format!(
                "{n} bidirectional layers requested, the model has {total}"
            )));
        }
        let kinds = (0..total)
            .map(|l| {
                if l >= total - n {
                    AttentionKind::Bidirectional
                } else {
                    AttentionKind::Causal
                }
            })
            .collect();
        self.set_attention_kinds(kinds)
    }

    pub fn attention_kinds(&self) -> &[AttentionKind] {
        &self.attention_kinds
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// How many times the weights were reloaded in place (see [`Model::reload_weights`]).
    pub fn weights_version(&self) -> u64 {
        self.weights_version.load(Ordering::SeqCst)
    }

    pub fn new_cache(&self) -> SequenceCache {
        SequenceCache::new(self.layers.len())
    }

    /// Every projection with its module path (`model.layers.0.self_attn.q_proj`, ...).
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        linears!(self, iter, &)
    }

    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        linears!(self, iter_mut, &mut)
    }

    /// Every parameter by checkpoint name, in checkpoint order.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        )];
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            let a = &layer.self_attn;
            let mut push = |name: &str, t: &Tensor| out.push((format!("{p}.{name}"), t.clone()));
            push("input_layernorm.weight", &layer.input_layernorm);
            for (name, lin) in [
                ("q_proj", &a.q_proj),
                ("k_proj", &a.k_proj),
                ("v_proj", &a.v_proj),
            ] {
                push(&format!("self_attn.{name}.weight"), &lin.weight);
            }
            for (name, lin) in [
                ("q_proj", &a.q_proj),
                ("k_proj", &a.k_proj),
                ("v_proj", &a.v_proj),
            ] {
                if let Some(b) = &lin.bias {
                    push(&format!("self_attn.{name}.bias"), b);
                }
            }
            push("self_attn.o_proj.weight", &a.o_proj.weight);
            if let Some(b) = &a.o_proj.bias {
                push("self_attn.o_proj.bias", b);
            }
            if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
                push("self_attn.q_norm.weight", qn);
                push("self_attn.k_norm.weight", kn);
            }
            push(
                "post_attention_layernorm.weight",
                &layer.post_attention_layernorm,
            );
            push("mlp.gate_proj.weight", &layer.mlp.gate_proj.weight);
            push("mlp.up_proj.weight", &layer.mlp.up_proj.weight);
            push("mlp.down_proj.weight", &layer.mlp.down_proj.weight);
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), head.clone()));
        }
        out
    }

    /// Overwrites every parameter in place with the same-named tensor of the checkpoint in
    /// `dir` (shapes must match; converted to this model's dtype). Every clone of this model
    /// (an engine, a scheduler thread) sees the new weights: this is how a server takes a
    /// trainer's new policy without restarting. Returns how many tensors were replaced.
    pub fn reload_weights(&self, dir: &Path) -> Result<usize> {
        let store = WeightStore::open_dir(dir)?;
        let tensors = self.named_tensors();
        let mut fresh = Vec::with_capacity(tensors.len());
        // Load and check everything first, so a bad checkpoint changes nothing.
        for (name, t) in &tensors {
            fresh.push(store.load(name, t.dims(), t.dtype(), t.device())?);
        }
        for ((_, t), new) in tensors.iter().zip(&fresh) {
            t.slice_set(new, 0, 0)?;
        }
        self.weights_version.fetch_add(1, Ordering::SeqCst);
        Ok(tensors.len())
    }

    /// Writes config.json and the weights (sharded above `max_shard_bytes`) in the layout
    /// transformers reads. Tokenizer files are the caller's business.
    pub fn save_pretrained(&self, dir: &Path, max_shard_bytes: usize) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let mut config = self.config.to_json();
        if let Some(obj) = config.as_object_mut() {
            let dtype = match self.dtype {
                DType::F16 => "float16",
                DType::BF16 => "bfloat16",
                _ => "float32",
            };
            // transformers >= 4.56 writes `dtype`; older readers look for `torch_dtype`.
            obj.insert("torch_dtype".into(), dtype.into());
            if obj.contains_key("dtype") {
                obj.insert("dtype".into(), dtype.into());
            }
        }
        save_safetensors(dir, &self.named_tensors(), max_shard_bytes)?;
        Ok(write_json_atomic(&dir.join("config.json"), &config)?)
    }

    fn rotary(&self, batch: &Batch) -> Result<Rotary> {
        let (b, t) = batch.dims()?;
        let half = self.inv_freq.len();
        // Which position axis each frequency reads (transformers' chunked M-RoPE layout).
        let axis: Vec<usize> = match &self.config.mrope_section {
            Some(s) => (0..half)
                .map(|j| match j {
                    j if j < s[0] => 0,
                    j if j < s[0] + s[1] => 1,
                    _ => 2,
                })
                .collect(),
            None => vec![0; half],
        };
        let mut cos = Vec::with_capacity(b * t * half);
        let mut sin = Vec::with_capacity(b * t * half);
        for row in 0..b {
            for i in 0..t {
                for (j, &f) in self.inv_freq.iter().enumerate() {
                    let p = match &batch.mrope {
                        Some(m) => m[axis[j]][row][i],
                        None => batch.positions[row][i],
                    };
                    // transformers: (inv_freq @ position) in f32, then cos/sin, then scale.
                    let angle = f * p as f32;
                    cos.push(angle.cos() * self.rope_attention_factor);
                    sin.push(angle.sin() * self.rope_attention_factor);
                }
            }
        }
        let cos = Tensor::from_vec(cos, (b, t, half), &self.device)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, (b, t, half), &self.device)?.to_dtype(self.dtype)?;
        Ok(Rotary { cos, sin })
    }

    /// Final hidden states `[B, T, hidden]` (after the final norm) for every position.
    ///
    /// Without caches, attention runs over the batch with a padding mask (training, scoring).
    /// With one cache per row, each row's real tokens (a suffix: left padding) are appended to
    /// its cache and attend to everything cached for that sequence. Hidden states at padding
    /// positions are unspecified (finite).
    pub fn forward(
        &self,
        batch: &Batch,
        mut caches: Option<&mut [&mut SequenceCache]>,
    ) -> Result<Tensor> {
        let (b, _) = batch.dims()?;
        if let Some(caches) = caches.as_deref()
            && caches.len() != b
        {
            return Err(ModelError::InvalidInput(format!(
                "{} caches for a batch of {b}",
                caches.len()
            )));
        }
        let ctx = self.prepare(batch)?;
        let mut x = self.embed(batch)?;
        for l in 0..self.layers.len() {
            x = self.layer_forward(l, &x, &ctx, batch, caches.as_deref_mut())?;
        }
        self.final_norm(&x)
    }

    /// Checks a batch and builds what every layer needs (rotary tables, padding bias).
    fn prepare(&self, batch: &Batch) -> Result<LayerContext> {
        let (b, t) = batch.dims()?;
        if batch.positions.len() != b || batch.positions.iter().any(|r| r.len() != t) {
            return Err(ModelError::InvalidInput(
                "positions must be [B, T] like input_ids".into(),
            ));
        }
        if let Some(m) = &batch.mrope {
            if self.config.mrope_section.is_none() {
                return Err(ModelError::InvalidInput(
                    "multimodal positions for a model without mrope_section".into(),
                ));
            }
            if m.iter()
                .any(|axis| axis.len() != b || axis.iter().any(|r| r.len() != t))
            {
                return Err(ModelError::InvalidInput(
                    "multimodal positions must be [3, B, T] like input_ids".into(),
                ));
            }
        }
        let max_pos = self.config.max_position_embeddings;
        let all_positions = batch
            .positions
            .iter()
            .chain(batch.mrope.iter().flat_map(|m| m.iter().flatten()));
        if let Some(p) = all_positions.flatten().copied().max()
            && p as usize >= max_pos
        {
            return Err(ModelError::ContextOverflow {
                len: p as usize + 1,
                max: max_pos,
            });
        }
        Ok(LayerContext {
            rotary: self.rotary(batch)?,
            padding_bias: self.padding_bias(batch)?,
        })
    }

    fn embed(&self, batch: &Batch) -> Result<Tensor> {
        let (b, t) = batch.dims()?;
        let ids = batch.input_ids.flatten_all()?;
        let tokens = self.embed_tokens.index_select(&ids, 0)?;
        let flat = match &batch.visual {
            None => tokens,
            Some(visual) => {
                let n = visual.at.len();
                if visual.embeds.dims() != [n, self.config.hidden_size] {
                    return Err(ModelError::InvalidInput(format!(
                        "{n} visual positions but embeddings of shape {:?} (hidden size {})",
                        visual.embeds.dims(),
                        self.config.hidden_size
                    )));
                }
                // One gather over [tokens; visual] keeps both differentiable.
                let mut index: Vec<u32> = (0..(b * t) as u32).collect();
                for (k, &at) in visual.at.iter().enumerate() {
                    if at >= b * t {
                        return Err(ModelError::InvalidInput(format!(
                            "visual position {at} outside the batch of {b} x {t}"
                        )));
                    }
                    index[at] = (b * t + k) as u32;
                }
                let index = Tensor::from_vec(index, b * t, &self.device)?;
                let embeds = visual.embeds.to_dtype(tokens.dtype())?;
                Tensor::cat(&[&tokens, &embeds], 0)?.index_select(&index, 0)?
            }
        };
        Ok(flat.reshape((b, t, self.config.hidden_size))?)
    }

    fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::rms_norm(
            x,
            &self.norm,
            self.config.rms_norm_eps,
            self.differentiable,
        )?)
    }

    /// One decoder layer: pre-norm attention and pre-norm SwiGLU MLP, both residual.
    fn layer_forward(
        &self,
        l: usize,
        x: &Tensor,
        ctx: &LayerContext,
        batch: &Batch,
        caches: Option<&mut [&mut SequenceCache]>,
    ) -> Result<Tensor> {
        let layer = &self.layers[l];
        let eps = self.config.rms_norm_eps;
        let h = ops::rms_norm(x, &layer.input_layernorm, eps, self.differentiable)?;
        let h = self.attention(
            &layer.self_attn,
            &h,
            &ctx.rotary,
            self.attention_kinds[l],
            batch,
            &ctx.padding_bias,
            caches,
            l,
        )?;
        let x = (x + h)?;
        let h = ops::rms_norm(
            &x,
            &layer.post_attention_layernorm,
            eps,
            self.differentiable,
        )?;
        let mlp = &layer.mlp;
        let h = ops::swiglu(
            &mlp.gate_proj.forward(&h, self.differentiable)?,
            &mlp.up_proj.forward(&h, self.differentiable)?,
            self.differentiable,
        )?;
        Ok((x + mlp.down_proj.forward(&h, self.differentiable)?)?)
    }

    /// Gradient checkpointing: runs the forward keeping only each layer's input, then
    /// back-propagates layer by layer from the top, recomputing one layer's activations at a
    /// time. `head` maps the final hidden states `[B, T, H]` to a scalar loss. Returns the loss
    /// and the gradients of every parameter (same as `head(forward(batch)).backward()`), with
    /// activation memory bounded by one layer instead of all of them. Gradients are kept only
    /// for the model's parameters, its LoRA adapters and `extra_params` (e.g. a reward head).
    pub fn checkpointed_backward(
        &self,
        batch: &Batch,
        extra_params: &[&Tensor],
        head: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<(Tensor, candle_core::backprop::GradStore)> {
        let mut params: std::collections::HashSet<candle_core::TensorId> =
            self.named_tensors().iter().map(|(_, t)| t.id()).collect();
        params.extend(crate::lora::lora_tensors(self).iter().map(|(_, t)| t.id()));
        params.extend(extra_params.iter().map(|t| t.id()));
        // Only parameter gradients are kept; each partial store (with every intermediate's
        // gradient) is dropped as soon as it is folded in.
        let mut grads = Var::zeros(1, DType::F32, &self.device)?
            .as_tensor()
            .sum_all()?
            .backward()?;
        let mut fold = |partial: &candle_core::backprop::GradStore| -> Result<()> {
            for id in partial.get_ids().filter(|id| params.contains(id)) {
                let g = partial.get_id(*id).expect("listed");
                let sum = match grads.get_id(*id) {
                    Some(prev) => (prev + g)?,
                    None => g.clone(),
                };
                grads.insert_id(*id, sum);
            }
            Ok(())
        };
        let ctx = self.prepare(batch)?;
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = self.embed(batch)?.detach();
        for l in 0..self.layers.len() {
            inputs.push(x.clone());
            x = self.layer_forward(l, &x, &ctx, batch, None)?.detach();
        }
        // Top: norm and head, with the last hidden state as a leaf.
        let top = Var::from_tensor(&x)?;
        let loss = head(&self.final_norm(top.as_tensor())?)?;
        let partial = loss.backward()?;
        let mut upstream = partial.get(top.as_tensor()).cloned().ok_or_else(|| {
            ModelError::InvalidInput("the loss does not depend on the hidden states".into())
        })?;
        fold(&partial)?;
        drop(partial);
        for l in (0..self.layers.len()).rev() {
            let input = Var::from_tensor(&inputs[l])?;
            let out = self.layer_forward(l, input.as_tensor(), &ctx, batch, None)?;
            let partial = (out * &upstream)?.sum_all()?.backward()?;
            upstream = partial.get(input.as_tensor()).cloned().ok_or_else(|| {
                ModelError::InvalidInput(format!("layer {l} input got no gradient"))
            })?;
            fold(&partial)?;
        }
        let partial = (self.embed(batch)? * &upstream)?.sum_all()?.backward()?;
        fold(&partial)?;
        Ok((loss, grads))
    }

    /// Logits over the vocabulary for hidden states `[.., hidden]`, in f32.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        self.head_logits(hidden, head.clone())
    }

    /// The logits of only the vocabulary entries `ids`, `[.., ids.len()]` (f32), without
    /// computing the rest of the vocabulary.
    pub fn logits_at(&self, hidden: &Tensor, ids: &[u32]) -> Result<Tensor> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let rows = head.index_select(&Tensor::new(ids, head.device())?, 0)?;
        self.head_logits(hidden, rows)
    }

    fn head_logits(&self, hidden: &Tensor, weight: Tensor) -> Result<Tensor> {
        let logits = Linear {
            weight,
            bias: None,
            lora: None,
        }
        .forward(hidden, self.differentiable)?;
        Ok(logits.to_dtype(DType::F32)?)
    }

    /// Logits `[B, V]` at the last position of each row (the next-token distribution).
    pub fn last_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let t = hidden.dim(1)?;
        self.logits(&hidden.i((.., t - 1, ..))?)
    }

    /// Additive `[B, 1, T]` key-padding bias (0 or the dtype minimum), or `None`.
    fn padding_bias(&self, batch: &Batch) -> Result<Option<Tensor>> {
        let Some(valid) = &batch.valid else {
            return Ok(None);
        };
        let (b, t) = batch.dims()?;
        let data: Vec<f32> = valid
            .iter()
            .flat_map(|r| r.iter().map(|&v| if v { 0.0 } else { f32::MIN }))
            .collect();
        Ok(Some(Tensor::from_vec(data, (b, 1, t), &self.device)?))
    }

    /// q, k, v `[B, heads, T, D]` after q/k norm and rotary embedding.
    fn project_qkv(
        &self,
        attn: &Attention,
        x: &Tensor,
        rotary: &Rotary,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let d = self.config.head_dim;
        let (nh, nkv) = (
            self.config.num_attention_heads,
            self.config.num_key_value_heads,
        );
        let q = attn
            .q_proj
            .forward(x, self.differentiable)?
            .reshape((b, t, nh, d))?;
        let k = attn
            .k_proj
            .forward(x, self.differentiable)?
            .reshape((b, t, nkv, d))?;
        let v = attn
            .v_proj
            .forward(x, self.differentiable)?
            .reshape((b, t, nkv, d))?;
        let eps = self.config.rms_norm_eps;
        let q = match &attn.q_norm {
            Some(w) => ops::rms_norm(&q, w, eps, self.differentiable)?,
            None => q,
        };
        let k = match &attn.k_norm {
            Some(w) => ops::rms_norm(&k, w, eps, self.differentiable)?,
            None => k,
        };
        let q = ops::rope_to_heads(&q, &rotary.cos, &rotary.sin, self.differentiable)?;
        let k = ops::rope_to_heads(&k, &rotary.cos, &rotary.sin, self.differentiable)?;
        let v = v.transpose(1, 2)?.contiguous()?;
        Ok((q, k, v))
    }

    /// Scaled dot-product attention with grouped KV heads and no KV copy: the query heads that
    /// share a KV head are stacked along the rows, `[B, KV, G*Tq, D] @ [B, KV, D, Tk]`.
    /// `bias` `[Bb, Tqb, Tk]` is added to the f32 scores of every head (see
    /// [`ops::attention_softmax`]).
    ///
    /// Without gradients, queries go in blocks whose f32 scores stay under
    /// [`SCORE_BLOCK_BYTES`], so long windows never hold the whole `[B, H, T, T]` matrix.
    fn sdpa(&self, q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (b, nh, tq, _) = q.dims4()?;
        let tk = k.dim(2)?;
        let rows = (SCORE_BLOCK_BYTES / (4 * b * nh * tk).max(1)).max(1);
        if self.differentiable || rows >= tq {
            return self.sdpa_block(q, k, v, bias);
        }
        self.sdpa_in_blocks(q, k, v, bias, rows)
    }

    /// [`Self::sdpa`] over blocks of `rows` queries.
    fn sdpa_in_blocks(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
        rows: usize,
    ) -> Result<Tensor> {
        let tq = q.dim(2)?;
        let mut out = Vec::with_capacity(tq.div_ceil(rows));
        for start in (0..tq).step_by(rows) {
            let n = rows.min(tq - start);
            let qb = q.narrow(2, start, n)?.contiguous()?;
            // The bias has one row per query or one row for all.
            let bb = match bias {
                Some(bias) if bias.dim(1)? == tq => Some(bias.narrow(1, start, n)?.contiguous()?),
                other => other.cloned(),
            };
            out.push(self.sdpa_block(&qb, k, v, bb.as_ref())?);
        }
        Ok(Tensor::cat(&out, 2)?)
    }

    fn sdpa_block(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, nh, tq, d) = q.dims4()?;
        let (_, nkv, tk, _) = k.dims4()?;
        let g = nh / nkv;
        let scale = 1.0 / (d as f64).sqrt();
        let q = q.reshape((b, nkv, g * tq, d))?;
        // The rows of [B, KV, G*Tq, Tk] are those of [B, H, Tq, Tk]: same memory.
        let scores = q
            .matmul(&k.t()?)?
            .to_dtype(DType::F32)?
            .reshape((b, nh, tq, tk))?;
        let probs = ops::attention_softmax(&scores, scale, bias, self.differentiable)?
            .to_dtype(v.dtype())?
            .reshape((b, nkv, g * tq, tk))?;
        Ok(probs.matmul(v)?.reshape((b, nh, tq, d))?)
    }

    /// Attention of one layer, output projection included.
    ///
    /// Without caches, or when every cache is still empty (a prefill), attention runs over the
    /// whole batch with causal and padding masks, and the prefill's keys and values are then
    /// stored. Otherwise each row attends to its own cache.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        attn: &Attention,
        x: &Tensor,
        rotary: &Rotary,
        kind: AttentionKind,
        batch: &Batch,
        padding_bias: &Option<Tensor>,
        caches: Option<&mut [&mut SequenceCache]>,
        layer: usize,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let width = self.config.num_attention_heads * self.config.head_dim;
        let (q, k, v) = self.project_qkv(attn, x, rotary)?;
        let row_suffix = |x: &Tensor, i: usize, n: usize| -> Result<Tensor> {
            Ok(x.narrow(0, i, 1)?.narrow(2, t - n, n)?)
        };
        let out = match caches {
            Some(caches) if caches.iter().any(|c| c.layers[layer].len > 0) => {
                let mut rows = Vec::with_capacity(b);
                for (i, cache) in caches.iter_mut().enumerate() {
                    let n = batch.valid_suffix(i)?;
                    let qi = row_suffix(&q, i, n)?;
                    let past = cache.layers[layer].len;
                    let (k_all, v_all) = cache.layers[layer]
                        .append(&row_suffix(&k, i, n)?, &row_suffix(&v, i, n)?)?;
                    let bias = (kind == AttentionKind::Causal && n > 1)
                        .then(|| causal_bias(n, past + n, past, &self.device))
                        .transpose()?
                        .map(|c| c.reshape((1, n, past + n)))
                        .transpose()?;
                    let out = self
                        .sdpa(&qi, &k_all, &v_all, bias.as_ref())?
                        .transpose(1, 2)?
                        .reshape((1, n, width))?;
                    rows.push(if n < t {
                        let pad = Tensor::zeros((1, t - n, width), out.dtype(), &self.device)?;
                        Tensor::cat(&[&pad, &out], 1)?
                    } else {
                        out
                    });
                }
                if rows.len() == 1 {
                    rows.pop().expect("one row")
                } else {
                    Tensor::cat(&rows, 0)?
                }
            }
            caches => {
                if let Some(caches) = caches {
                    for (i, cache) in caches.iter_mut().enumerate() {
                        let n = batch.valid_suffix(i)?;
                        cache.layers[layer]
                            .append(&row_suffix(&k, i, n)?, &row_suffix(&v, i, n)?)?;
                    }
                }
                let causal = (kind == AttentionKind::Causal && t > 1)
                    .then(|| causal_bias(t, t, 0, &self.device))
                    .transpose()?;
                // [Bb, Tqb, Tk], see `ops::attention_softmax`.
                let bias = match (causal, padding_bias) {
                    (None, None) => None,
                    (Some(c), None) => Some(c.reshape((1, t, t))?),
                    (None, Some(p)) => Some(p.clone()),
                    // Adding two dtype minima overflows to -inf; take the minimum instead.
                    (Some(c), Some(p)) => Some(c.reshape((1, t, t))?.broadcast_minimum(p)?),
                };
                self.sdpa(&q, &k, &v, bias.as_ref())?
                    .transpose(1, 2)?
                    .reshape((b, t, width))?
            }
        };
        attn.o_proj.forward(&out, self.differentiable)
    }

    /// Log-probabilities of each next token: entry `t` is `log p(ids[t+1] | ids[..=t])`, shape
    /// `[B, T-1]`, f32. Positions whose target is padding are 0.
    pub fn next_token_logprobs(&self, batch: &Batch) -> Result<Tensor> {
        let (b, t) = batch.dims()?;
        if t < 2 {
            return Err(ModelError::InvalidInput(
                "scoring needs at least two tokens".into(),
            ));
        }
        let hidden = self.forward(batch, None)?;
        let logits = self.logits(&hidden.narrow(1, 0, t - 1)?)?;
        // `logits` is f32 whatever the model dtype.
        let targets = batch.input_ids.narrow(1, 1, t - 1)?.to_dtype(DType::U32)?;
        let picked = crate::fused::selective_log_softmax(&logits, &targets)?;
        match &batch.valid {
            None => Ok(picked),
            Some(valid) => {
                let mask: Vec<f32> = (0..b)
                    .flat_map(|i| (1..t).map(move |j| (i, j)))
                    .map(|(i, j)| {
                        if valid[i][j] && valid[i][j - 1] {
                            1.0
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, (b, t - 1), &self.device)?;
                Ok((picked * mask)?)
            }
        }
    }
}

/// `[tq, tk]` additive bias: query `i` (absolute position `offset + i`) sees keys `0..=offset+i`.
/// Largest f32 attention-score block of a forward without gradients (256 MiB).
const SCORE_BLOCK_BYTES: usize = 256 << 20;

fn causal_bias(tq: usize, tk: usize, offset: usize, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..tq)
        .flat_map(|i| (0..tk).map(move |j| if j <= offset + i { 0.0 } else { f32::MIN }))
        .collect();
    Ok(Tensor::from_vec(data, (tq, tk), device)?)
}

/// Deterministic random parameters (fast uniform noise with std 0.02; norms 1 +- 0.1).
pub fn random_tensors(
    config: &ModelConfig,
    dtype: DType,
    device: &Device,
    seed: u64,
) -> Result<HashMap<String, Tensor>> {
    random_for_shapes(expected_shapes(config), dtype, device, seed)
}

/// Random parameters for named shapes: norm weights near 1, the rest uniform with std 0.02.
pub(crate) fn random_for_shapes(
    shapes: impl IntoIterator<Item = (String, Vec<usize>)>,
    dtype: DType,
    device: &Device,
    seed: u64,
) -> Result<HashMap<String, Tensor>> {
    let mut rng = qforge_util::XorShift64Star::new(seed);
    let mut next = move || rng.signed_unit();
    // Uniform on [-a, a] has std a/sqrt(3).
    let amp = 0.02 * 3f32.sqrt();
    let mut out = HashMap::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let last = name.rsplit('.').nth(1).unwrap_or("");
        let is_norm = name.ends_with(".weight")
            && (last.ends_with("norm") || last.starts_with("norm") || last == "ln_q");
        let data: Vec<f32> = (0..n)
            .map(|_| {
                if is_norm {
                    1.0 + 0.1 * next()
                } else {
                    amp * next()
                }
            })
            .collect();
        let t = Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?;
        out.insert(name, t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logits_at_equals_the_full_logits_gathered() {
        let dir = qforge_testkit::tiny_model();
        let model = Model::load(&dir, DType::F32, &Device::Cpu, &[]).unwrap();
        let hidden =
            Tensor::randn(0f32, 1.0, (2, 3, model.config.hidden_size), &Device::Cpu).unwrap();
        let ids = [7u32, 0, 300];
        let full = model
            .logits(&hidden)
            .unwrap()
            .index_select(&Tensor::new(&ids, &Device::Cpu).unwrap(), 2)
            .unwrap();
        let some = model.logits_at(&hidden, &ids).unwrap();
        let diff = (full - some).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn attention_in_query_blocks_equals_attention_at_once() {
        let dir = qforge_testkit::tiny_model();
        let model = Model::load(&dir, DType::F32, &Device::Cpu, &[]).unwrap();
        let (nh, nkv, d) = (
            model.config.num_attention_heads,
            model.config.num_key_value_heads,
            model.config.head_dim,
        );
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, nh, 10, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, nkv, 10, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, nkv, 10, d), &dev).unwrap();
        let causal = causal_bias(10, 10, 0, &dev)
            .unwrap()
            .reshape((1, 10, 10))
            .unwrap();
        let key_padding = Tensor::new(
            &[
                [[0f32; 10]],
                [[0., 0., 0., 0., 0., 0., 0., -1e30, -1e30, -1e30]],
            ],
            &dev,
        )
        .unwrap();
        for bias in [None, Some(&causal), Some(&key_padding)] {
            let whole = model.sdpa_block(&q, &k, &v, bias).unwrap();
            let blocks = model.sdpa_in_blocks(&q, &k, &v, bias, 3).unwrap();
            let diff = (whole - blocks).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
        }
    }
}
