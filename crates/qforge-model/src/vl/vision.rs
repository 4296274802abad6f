//! Qwen2.5-VL's vision tower (transformers 4.50 `Qwen2_5_VisionTransformerPretrainedModel`):
//! patch embedding, 2D rotary positions, blocks that attend within windows of 8 x 8 patches
//! except the full-attention ones (each whole frame), and the 2 x 2 patch merger into the
//! language model's width.
//!
//! Everything runs through the crate's differentiable ops, so the tower trains like the
//! decoder. No block attends across frames, so frames are independent: attention runs per
//! window or frame segment instead of over a block-diagonal mask.

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::model::Linear;
use crate::ops;
use crate::weights::WeightStore;

/// `vision_config` of a Qwen2.5-VL config.json. Absent fields take transformers' class
/// defaults (which are the 7B's, except `tokens_per_second`: the class says 4, released
/// checkpoints say 2, so configs must set it).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    pub in_channels: usize,
    pub window_size: usize,
    pub fullatt_block_indexes: Vec<usize>,
    pub tokens_per_second: f32,
    pub out_hidden_size: usize,
}

impl VisionConfig {
    pub fn from_json(value: &Value) -> Result<Self> {
        let get = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| value.get(*n).filter(|v| !v.is_null()))
        };
        let wrong = |name: &str, expected: &str| ModelError::InvalidField {
            field: format!("vision_config.{name}"),
            message: format!("must be {expected}"),
        };
        let positive = |names: &[&str], default: usize| -> Result<usize> {
            match get(names) {
                None => Ok(default),
                Some(v) => v
                    .as_u64()
                    .filter(|x| *x > 0)
                    .map(|x| x as usize)
                    .ok_or_else(|| wrong(names[0], "a positive integer")),
            }
        };
        if let Some(act) = get(&["hidden_act"])
            && act.as_str() != Some("silu")
        {
            return Err(wrong("hidden_act", "`silu` (Qwen2.5-VL's)"));
        }
        let depth = positive(&["depth"], 32)?;
        let fullatt_block_indexes = match get(&["fullatt_block_indexes"]) {
            None => vec![7, 15, 23, 31],
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
                .ok_or_else(|| wrong("fullatt_block_indexes", "a list of block indexes"))?,
        };
        let tokens_per_second = match get(&["tokens_per_second"]) {
            None => 4.0,
            Some(v) => {
                v.as_f64()
                    .ok_or_else(|| wrong("tokens_per_second", "a number"))? as f32
            }
        };
        let c = Self {
            depth,
            hidden_size: positive(&["hidden_size", "embed_dim"], 3584)?,
            intermediate_size: positive(&["intermediate_size"], 3420)?,
            num_heads: positive(&["num_heads"], 16)?,
            patch_size: positive(&["patch_size", "spatial_patch_size"], 14)?,
            temporal_patch_size: positive(&["temporal_patch_size"], 2)?,
            spatial_merge_size: positive(&["spatial_merge_size"], 2)?,
            in_channels: positive(&["in_channels", "in_chans"], 3)?,
            window_size: positive(&["window_size"], 112)?,
            fullatt_block_indexes,
            tokens_per_second,
            out_hidden_size: positive(&["out_hidden_size"], 3584)?,
        };
        if !c.hidden_size.is_multiple_of(c.num_heads)
            || !(c.hidden_size / c.num_heads).is_multiple_of(4)
        {
            return Err(wrong(
                "num_heads",
                &format!(
                    "a divisor of hidden_size {} leaving a head size divisible by 4",
                    c.hidden_size
                ),
            ));
        }
        if c.in_channels != 3 {
            return Err(wrong("in_channels", "3 (RGB)"));
        }
        Ok(c)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Values per patch row (channels x temporal patch x patch²).
    pub fn patch_len(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Side of an attention window in merged tokens (112 px / 14 / 2 = 4).
    pub fn merged_window(&self) -> usize {
        (self.window_size / self.spatial_merge_size / self.patch_size).max(1)
    }

    /// Names and shapes of the tower's parameters under `prefix` (`visual.`).
    pub fn expected_shapes(&self, prefix: &str) -> Vec<(String, Vec<usize>)> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let merged = h * self.spatial_merge_size * self.spatial_merge_size;
        let mut out = vec![(
            format!("{prefix}patch_embed.proj.weight"),
            vec![
                h,
                self.in_channels,
                self.temporal_patch_size,
                self.patch_size,
                self.patch_size,
            ],
        )];
        for b in 0..self.depth {
            let p = format!("{prefix}blocks.{b}");
            for (name, shape) in [
                ("norm1.weight", vec![h]),
                ("norm2.weight", vec![h]),
                ("attn.qkv.weight", vec![3 * h, h]),
                ("attn.qkv.bias", vec![3 * h]),
                ("attn.proj.weight", vec![h, h]),
                ("attn.proj.bias", vec![h]),
                ("mlp.gate_proj.weight", vec![i, h]),
                ("mlp.gate_proj.bias", vec![i]),
                ("mlp.up_proj.weight", vec![i, h]),
                ("mlp.up_proj.bias", vec![i]),
                ("mlp.down_proj.weight", vec![h, i]),
                ("mlp.down_proj.bias", vec![h]),
            ] {
                out.push((format!("{p}.{name}"), shape));
            }
        }
        for (name, shape) in [
            ("merger.ln_q.weight", vec![h]),
            ("merger.mlp.0.weight", vec![merged, merged]),
            ("merger.mlp.0.bias", vec![merged]),
            ("merger.mlp.2.weight", vec![self.out_hidden_size, merged]),
            ("merger.mlp.2.bias", vec![self.out_hidden_size]),
        ] {
            out.push((format!("{prefix}{name}"), shape));
        }
        out
    }
}

#[derive(Debug, Clone)]
struct Block {
    norm1: Tensor,
    norm2: Tensor,
    qkv: Linear,
    proj: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The vision tower. Cheap to clone (tensors are reference-counted).
#[derive(Debug, Clone)]
pub struct VisionTower {
    config: VisionConfig,
    /// The Conv3d kernel as a matrix `[hidden, patch_len]` (kernel = stride: one matmul).
    patch_embed: Tensor,
    blocks: Vec<Block>,
    ln_q: Tensor,
    merger_in: Linear,
    merger_out: Linear,
    inv_freq: Vec<f32>,
    differentiable: bool,
}

/// Key prefixes of the tower: the Hub layout, and transformers >= 4.52's in-memory one.
pub const VISION_PREFIXES: [&str; 2] = ["visual.", "model.visual."];

impl VisionTower {
    /// Loads the tower from a checkpoint's store under whichever prefix it uses.
    pub fn from_store(
        config: VisionConfig,
        store: &WeightStore,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let prefix = VISION_PREFIXES
            .iter()
            .find(|p| store.contains(&format!("{p}patch_embed.proj.weight")))
            .copied()
            .unwrap_or(VISION_PREFIXES[0]);
        let expected = config.expected_shapes(prefix);
        store.check(&expected)?;
        let mut tensors = std::collections::HashMap::new();
        for (key, shape) in &expected {
            let name = key.strip_prefix(prefix).expect("built with the prefix");
            tensors.insert(name.to_string(), store.load(key, shape, dtype, device)?);
        }
        Self::from_tensors(config, tensors)
    }

    /// A randomly initialised tower (tests, synthetic demos).
    pub fn random(config: VisionConfig, dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        let shapes = config.expected_shapes("");
        let tensors = crate::model::random_for_shapes(shapes, dtype, device, seed)?;
        Self::from_tensors(config, tensors)
    }

    /// Builds the tower from tensors named without prefix (`blocks.0.attn.qkv.weight`).
    pub fn from_tensors(
        config: VisionConfig,
        mut tensors: std::collections::HashMap<String, Tensor>,
    ) -> Result<Self> {
        crate::weights::check_shapes(&config.expected_shapes(""), |key| {
            tensors.get(key).map(|t| t.dims().to_vec())
        })?;
        let mut take = |k: &str| tensors.remove(k).expect("checked above");
        let linear = |take: &mut dyn FnMut(&str) -> Tensor, name: &str| Linear {
            weight: take(&format!("{name}.weight")),
            bias: Some(take(&format!("{name}.bias"))),
            lora: None,
        };
        let patch_embed =
            take("patch_embed.proj.weight").reshape((config.hidden_size, config.patch_len()))?;
        let blocks = (0..config.depth)
            .map(|b| {
                let p = format!("blocks.{b}");
                Block {
                    norm1: take(&format!("{p}.norm1.weight")),
                    norm2: take(&format!("{p}.norm2.weight")),
                    qkv: linear(&mut take, &format!("{p}.attn.qkv")),
                    proj: linear(&mut take, &format!("{p}.attn.proj")),
                    gate: linear(&mut take, &format!("{p}.mlp.gate_proj")),
                    up: linear(&mut take, &format!("{p}.mlp.up_proj")),
                    down: linear(&mut take, &format!("{p}.mlp.down_proj")),
                }
            })
            .collect();
        let ln_q = take("merger.ln_q.weight");
        let merger_in = linear(&mut take, "merger.mlp.0");
        let merger_out = linear(&mut take, "merger.mlp.2");
        // Qwen2_5_VisionRotaryEmbedding(head_dim / 2): theta 10^4 over head_dim / 4 pairs,
        // `base ** (arange(0, dim, 2) / dim)` in f32.
        let dim = config.head_dim() / 2;
        let inv_freq = (0..dim / 2)
            .map(|i| 1.0 / 10_000f32.powf((2 * i) as f32 / dim as f32))
            .collect();
        Ok(Self {
            config,
            patch_embed,
            blocks,
            ln_q,
            merger_in,
            merger_out,
            inv_freq,
            differentiable: false,
        })
    }

    pub fn config(&self) -> &VisionConfig {
        &self.config
    }

    pub fn set_differentiable(&mut self, differentiable: bool) {
        self.differentiable = differentiable;
    }

    /// Every parameter under its checkpoint name (`visual.` prefix), in checkpoint order.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let c = &self.config;
        let mut by_name = std::collections::HashMap::new();
        by_name.insert(
            "patch_embed.proj.weight".to_string(),
            self.patch_embed
                .reshape((
                    c.hidden_size,
                    c.in_channels,
                    c.temporal_patch_size,
                    c.patch_size,
                    c.patch_size,
                ))
                .expect("same number of elements"),
        );
        let mut linear = |name: String, l: &Linear| {
            by_name.insert(format!("{name}.weight"), l.weight.clone());
            if let Some(b) = &l.bias {
                by_name.insert(format!("{name}.bias"), b.clone());
            }
        };
        for (b, block) in self.blocks.iter().enumerate() {
            let p = format!("blocks.{b}");
            linear(format!("{p}.attn.qkv"), &block.qkv);
            linear(format!("{p}.attn.proj"), &block.proj);
            linear(format!("{p}.mlp.gate_proj"), &block.gate);
            linear(format!("{p}.mlp.up_proj"), &block.up);
            linear(format!("{p}.mlp.down_proj"), &block.down);
        }
        linear("merger.mlp.0".into(), &self.merger_in);
        linear("merger.mlp.2".into(), &self.merger_out);
        for (b, block) in self.blocks.iter().enumerate() {
            by_name.insert(format!("blocks.{b}.norm1.weight"), block.norm1.clone());
            by_name.insert(format!("blocks.{b}.norm2.weight"), block.norm2.clone());
        }
        by_name.insert("merger.ln_q.weight".into(), self.ln_q.clone());
        c.expected_shapes("")
            .into_iter()
            .map(|(name, _)| {
                let t = by_name.remove(&name).expect("every parameter is named");
                (format!("{}{name}", VISION_PREFIXES[0]), t)
            })
            .collect()
    }

    /// Every projection by module path (`visual.blocks.0.attn.qkv`), for LoRA.
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::new();
        for (b, block) in self.blocks.iter().enumerate() {
            let p = format!("{}blocks.{b}", VISION_PREFIXES[0]);
            out.push((format!("{p}.attn.qkv"), &block.qkv));
            out.push((format!("{p}.attn.proj"), &block.proj));
            out.push((format!("{p}.mlp.gate_proj"), &block.gate));
            out.push((format!("{p}.mlp.up_proj"), &block.up));
            out.push((format!("{p}.mlp.down_proj"), &block.down));
        }
        out
    }

    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (b, block) in self.blocks.iter_mut().enumerate() {
            let p = format!("{}blocks.{b}", VISION_PREFIXES[0]);
            out.push((format!("{p}.attn.qkv"), &mut block.qkv));
            out.push((format!("{p}.attn.proj"), &mut block.proj));
            out.push((format!("{p}.mlp.gate_proj"), &mut block.gate));
            out.push((format!("{p}.mlp.up_proj"), &mut block.up));
            out.push((format!("{p}.mlp.down_proj"), &mut block.down));
        }
        out
    }

    /// The tower with every parameter a `Var` (named as in the checkpoint), differentiable.
    pub fn into_trainable(self) -> Result<(Self, Vec<(String, candle_core::Var)>)> {
        let named = self.named_tensors();
        let mut vars = Vec::with_capacity(named.len());
        let mut map = std::collections::HashMap::with_capacity(named.len());
        for (name, t) in named {
            let var = candle_core::Var::from_tensor(&t)?;
            let short = name
                .strip_prefix(VISION_PREFIXES[0])
                .expect("named with the prefix");
            map.insert(short.to_string(), var.as_tensor().clone());
            vars.push((name, var));
        }
        let mut tower = Self::from_tensors(self.config, map)?;
        tower.differentiable = true;
        Ok((tower, vars))
    }

    /// Merged embeddings `[rows / merge², out_hidden_size]` of inputs `pixel_values`
    /// `[rows, patch_len]` with patch grids `grids`, in the processor's order.
    pub fn forward(&self, pixel_values: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        let (x, order) = self.blocks_forward(pixel_values, grids)?;
        let unit = self.unit();
        let h = self.config.hidden_size;
        let x = ops::rms_norm(&x, &self.ln_q, 1e-6, self.differentiable)?;
        let x = x.reshape((x.dim(0)? / unit, unit * h))?;
        let x = self
            .merger_in
            .forward(&x, self.differentiable)?
            .gelu_erf()?;
        let x = self.merger_out.forward(&x, self.differentiable)?;
        Ok(x.index_select(&inverse(&order, x.device())?, 0)?)
    }

    /// The blocks' output `[rows, hidden]` before the merger, in the processor's order.
    pub fn hidden_before_merger(
        &self,
        pixel_values: &Tensor,
        grids: &[[usize; 3]],
    ) -> Result<Tensor> {
        let (x, order) = self.blocks_forward(pixel_values, grids)?;
        let (unit, h) = (self.unit(), self.config.hidden_size);
        let rows = x.dim(0)?;
        Ok(x.reshape((rows / unit, unit * h))?
            .index_select(&inverse(&order, x.device())?, 0)?
            .reshape((rows, h))?)
    }

    fn unit(&self) -> usize {
        self.config.spatial_merge_size * self.config.spatial_merge_size
    }

    /// Patch embedding and blocks, in window order; returns the merged-token order used.
    fn blocks_forward(
        &self,
        pixel_values: &Tensor,
        grids: &[[usize; 3]],
    ) -> Result<(Tensor, Vec<usize>)> {
        let c = &self.config;
        let rows: usize = grids.iter().map(|g| g.iter().product::<usize>()).sum();
        if pixel_values.dims() != [rows, c.patch_len()] {
            return Err(ModelError::InvalidInput(format!(
                "pixel values of shape {:?} for grids {grids:?} (expected [{rows}, {}])",
                pixel_values.dims(),
                c.patch_len()
            )));
        }
        let m = c.spatial_merge_size;
        if let Some(g) = grids
            .iter()
            .find(|g| g[1] % m != 0 || g[2] % m != 0 || g[0] == 0)
        {
            return Err(ModelError::InvalidInput(format!(
                "patch grid {g:?} is empty or not a multiple of the merge size {m}"
            )));
        }
        let device = pixel_values.device();
        let dtype = self.patch_embed.dtype();
        let x = pixel_values
            .to_dtype(dtype)?
            .matmul(&self.patch_embed.t()?)?;
        let (order, windows) = window_order(grids, m, c.merged_window());
        let unit = self.unit();
        let index = Tensor::from_vec(
            order.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            order.len(),
            device,
        )?;
        let mut x = x
            .reshape((rows / unit, unit * c.hidden_size))?
            .index_select(&index, 0)?
            .reshape((rows, c.hidden_size))?;
        let (cos, sin) = self.rotary(grids, &order, device)?;
        let frames = frame_bounds(grids);
        for (b, block) in self.blocks.iter().enumerate() {
            let segments = if c.fullatt_block_indexes.contains(&b) {
                &frames
            } else {
                &windows
            };
            let h = ops::rms_norm(&x, &block.norm1, 1e-6, self.differentiable)?;
            x = (x + self.attention(block, &h, &cos, &sin, segments)?)?;
            let h = ops::rms_norm(&x, &block.norm2, 1e-6, self.differentiable)?;
            let h = ops::swiglu(
                &block.gate.forward(&h, self.differentiable)?,
                &block.up.forward(&h, self.differentiable)?,
                self.differentiable,
            )?;
            x = (x + block.down.forward(&h, self.differentiable)?)?;
        }
        Ok((x, order))
    }

    /// cos/sin tables `[1, rows, head_dim / 2]` (f32) in window order: each patch's row angles
    /// then its column angles.
    fn rotary(
        &self,
        grids: &[[usize; 3]],
        order: &[usize],
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let m = self.config.spatial_merge_size;
        let mut rc: Vec<(u32, u32)> = Vec::new();
        for &[t, h, w] in grids {
            for _ in 0..t {
                for bh in 0..h / m {
                    for bw in 0..w / m {
                        for mh in 0..m {
                            for mw in 0..m {
                                rc.push(((bh * m + mh) as u32, (bw * m + mw) as u32));
                            }
                        }
                    }
                }
            }
        }
        let unit = m * m;
        let half = 2 * self.inv_freq.len();
        let (mut cos, mut sin) = (
            Vec::with_capacity(rc.len() * half),
            Vec::with_capacity(rc.len() * half),
        );
        for &merged in order {
            for &(r, c) in &rc[merged * unit..(merged + 1) * unit] {
                for p in [r, c] {
                    for &f in &self.inv_freq {
                        let angle = p as f32 * f;
                        cos.push(angle.cos());
                        sin.push(angle.sin());
                    }
                }
            }
        }
        let n = rc.len();
        Ok((
            Tensor::from_vec(cos, (1, n, half), device)?,
            Tensor::from_vec(sin, (1, n, half), device)?,
        ))
    }

    /// Non-causal attention within each `[start, end)` segment, output projection included.
    fn attention(
        &self,
        block: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        segments: &[(usize, usize)],
    ) -> Result<Tensor> {
        let (n, width) = x.dims2()?;
        let heads = self.config.num_heads;
        let d = width / heads;
        let qkv = block
            .qkv
            .forward(x, self.differentiable)?
            .reshape((n, 3, heads, d))?;
        let dtype = x.dtype();
        let part = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(1, i, 1)?
                .squeeze(1)?
                .transpose(0, 1)?
                .contiguous()?
                .unsqueeze(0)?)
        };
        // The reference rotates in f32 whatever the model dtype.
        let rotate = |t: Tensor| -> Result<Tensor> {
            Ok(
                ops::rope(&t.to_dtype(DType::F32)?, cos, sin, self.differentiable)?
                    .to_dtype(dtype)?,
            )
        };
        let (q, k, v) = (rotate(part(0)?)?, rotate(part(1)?)?, part(2)?);
        let scale = 1.0 / (d as f64).sqrt();
        // Runs of equal-length segments (the windows of a frame mostly are) go through one
        // batched matmul: `[1, H, n*L, d]` -> `[n, H, L, d]`.
        let mut outs = Vec::with_capacity(segments.len());
        let mut i = 0;
        while i < segments.len() {
            let (start, end) = segments[i];
            let len = end - start;
            let mut n = 1;
            while i + n < segments.len() && segments[i + n].1 - segments[i + n].0 == len {
                n += 1;
            }
            let run = |t: &Tensor| -> Result<Tensor> {
                Ok(t.narrow(2, start, n * len)?
                    .reshape((heads, n, len, d))?
                    .transpose(0, 1)?
                    .contiguous()?)
            };
            let (qs, ks, vs) = (run(&q)?, run(&k)?, run(&v)?);
            let scores = qs.matmul(&ks.t()?)?.to_dtype(DType::F32)?;
            let probs = ops::attention_softmax(&scores, scale, None, self.differentiable)?
                .to_dtype(dtype)?;
            outs.push(
                probs
                    .matmul(&vs)?
                    .transpose(0, 1)?
                    .reshape((1, heads, n * len, d))?,
            );
            i += n;
        }
        let out = Tensor::cat(&outs, 2)?
            .squeeze(0)?
            .transpose(0, 1)?
            .reshape((n, width))?;
        block.proj.forward(&out, self.differentiable)
    }
}

/// `argsort` of a permutation, as an index tensor.
fn inverse(order: &[usize], device: &Device) -> Result<Tensor> {
    let mut inv = vec![0u32; order.len()];
    for (pos, &i) in order.iter().enumerate() {
        inv[i] = pos as u32;
    }
    Ok(Tensor::from_vec(inv, order.len(), device)?)
}

/// `get_window_index`: the merged-token order that makes each window contiguous (windows of
/// `window x window` merged tokens in raster order per frame, padding dropped), and the patch
/// segments `[start, end)` of the non-empty windows in that order.
pub fn window_order(
    grids: &[[usize; 3]],
    merge: usize,
    window: usize,
) -> (Vec<usize>, Vec<(usize, usize)>) {
    let unit = merge * merge;
    let (mut order, mut segments) = (Vec::new(), Vec::new());
    let (mut base, mut start) = (0usize, 0usize);
    for &[t, h, w] in grids {
        let (lh, lw) = (h / merge, w / merge);
        // The reference pads by `window - n % window`: a whole empty window when it divides.
        let (nh, nw) = (
            (lh + window - lh % window) / window,
            (lw + window - lw % window) / window,
        );
        for ti in 0..t {
            for wh in 0..nh {
                for ww in 0..nw {
                    let mut count = 0;
                    for y in wh * window..((wh + 1) * window).min(lh) {
                        for x in ww * window..((ww + 1) * window).min(lw) {
                            order.push(base + ti * lh * lw + y * lw + x);
                            count += 1;
                        }
                    }
                    if count > 0 {
                        segments.push((start, start + count * unit));
                        start += count * unit;
                    }
                }
            }
        }
        base += t * lh * lw;
    }
    (order, segments)
}

/// Patch segments of whole frames (`h * w` patches each), for the full-attention blocks.
fn frame_bounds(grids: &[[usize; 3]]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for &[t, h, w] in grids {
        for _ in 0..t {
            out.push((start, start + h * w));
            start += h * w;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_merged_token_once_and_skip_empty_padding() {
        // Merged grid 6 x 10 with windows of 2: padding adds a whole empty row of windows.
        let (order, segments) = window_order(&[[1, 12, 20]], 2, 2);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..60).collect::<Vec<_>>());
        assert_eq!(segments.len(), 15);
        assert!(segments.iter().all(|(a, b)| b - a == 16));
        // The reference's measured case: merged grid 3 x 5 -> windows of 4, 4, 2 per row pair.
        let (_, segments) = window_order(&[[1, 6, 10]], 2, 2);
        let sizes: Vec<usize> = segments.iter().map(|(a, b)| (b - a) / 4).collect();
        assert_eq!(sizes, vec![4, 4, 2, 2, 2, 1]);
    }
}
