//! Rollouts and updates with images and video (MUSEG): where a task's visual inputs come from,
//! and how a training batch of full sequences gets its M-RoPE positions and the vision tower's
//! embeddings. Each distinct input is encoded once per forward however many rollouts share it
//! (a group of G rollouts shares one video), and inside the forward, so a trainable tower
//! gets its gradients.

use std::sync::Arc;

use candle_core::Tensor;
use qforge_model::Batch;
use qforge_model::model::VisualEmbeds;
use qforge_model::vl::{self, VisionTower, VisualGrids, VisualInputs, VlTokens};

use crate::error::{Result, RlError};

/// The visual inputs of tasks, by task index (loaded when a task is sampled, so a dataset of
/// thousands of videos is never in memory at once).
pub trait MediaSource: Send + Sync {
    /// `None`: a text-only task.
    fn visual(&self, task: usize) -> Result<Option<Arc<VisualInputs>>>;
}

/// The policy's vision side in training: its tower (trainable or frozen), the reference's
/// tower for the KL term, and the special tokens.
#[derive(Debug, Clone)]
pub(crate) struct VisionPolicy {
    pub tower: VisionTower,
    pub reference: Option<VisionTower>,
    pub tokens: VlTokens,
}

/// A training batch's visual plan: positions are set on the batch once; the embeddings are
/// rebuilt at every forward from `inputs` (row order) at `at`.
#[derive(Debug, Clone)]
pub(crate) struct VisualPlan {
    inputs: Vec<Arc<VisualInputs>>,
    at: Vec<usize>,
}

/// Sets `batch`'s (right-padded) M-RoPE positions for `rows` and returns the plan for the
/// tower's embeddings; `None` when no row has visual inputs.
pub(crate) fn plan_batch(
    batch: &mut Batch,
    rows: &[&[u32]],
    visual: &[Option<Arc<VisualInputs>>],
    policy: &VisionPolicy,
) -> Result<Option<VisualPlan>> {
    if visual.iter().all(Option::is_none) {
        return Ok(None);
    }
    let inputs: Vec<Arc<VisualInputs>> = visual.iter().flatten().cloned().collect();
    let mut grids = VisualGrids::default();
    for v in &inputs {
        let g = v.grids();
        grids.images.extend(g.images);
        grids.videos.extend(g.videos);
        grids.second_per_grid.extend(g.second_per_grid);
    }
    let config = policy.tower.config();
    let placed = vl::place_visual(
        batch,
        rows,
        policy.tokens,
        &grids,
        config.spatial_merge_size,
        config.tokens_per_second,
        false,
    )?;
    Ok(Some(VisualPlan {
        inputs,
        at: placed.image_at.into_iter().chain(placed.video_at).collect(),
    }))
}

/// `batch` with the tower's embeddings of `plan` at their placeholders: images of every row,
/// then videos, each distinct input encoded once.
pub(crate) fn with_embeddings(
    batch: &Batch,
    plan: &VisualPlan,
    tower: &VisionTower,
) -> Result<Batch> {
    let device = batch.input_ids.device();
    let mut cache: Vec<(*const VisualInputs, Option<Tensor>, Option<Tensor>)> = Vec::new();
    for v in &plan.inputs {
        let key = Arc::as_ptr(v);
        if cache.iter().any(|(k, _, _)| *k == key) {
            continue;
        }
        let images: Vec<_> = v.images.iter().collect();
        let videos: Vec<_> = v.videos.iter().map(|(p, _)| p).collect();
        cache.push((
            key,
            vl::encode(tower, device, &images)?,
            vl::encode(tower, device, &videos)?,
        ));
    }
    let lookup = |v: &Arc<VisualInputs>| {
        cache
            .iter()
            .find(|(k, _, _)| *k == Arc::as_ptr(v))
            .expect("encoded above")
    };
    let mut parts: Vec<Tensor> = Vec::new();
    parts.extend(plan.inputs.iter().filter_map(|v| lookup(v).1.clone()));
    parts.extend(plan.inputs.iter().filter_map(|v| lookup(v).2.clone()));
    let embeds = Tensor::cat(&parts, 0)?;
    if embeds.dim(0)? != plan.at.len() {
        return Err(RlError::Invalid(format!(
            "{} visual placeholders in the batch, the inputs give {} embeddings",
            plan.at.len(),
            embeds.dim(0)?
        )));
    }
    let mut out = batch.clone();
    out.visual = Some(VisualEmbeds {
        embeds,
        at: plan.at.clone(),
    });
    Ok(out)
}
