//! Multimodal rotary positions (M-RoPE) as transformers 4.50's `get_rope_index` computes them
//! for Qwen2.5-VL: a pure function over token ids, tested without tensors.
//!
//! Text runs get consecutive ids on all three axes. A vision block of merged grid
//! `(t, h, w)` starts where the text before it ended: its height and width ids are the row and
//! column, and its temporal id is `trunc(i · seconds_per_grid · tokens_per_second)` for temporal
//! patch `i` (absolute time; 0 for images). The text after a block resumes at the block's
//! largest id + 1. The multiplication is in f32, as the reference's float tensor product
//! (transformers >= 4.52 truncates `seconds_per_grid` to an integer first, which MUSEG's pin
//! does not).

use crate::error::{ModelError, Result};

/// The token ids that mark visual input in a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisionTokenIds {
    pub image: u32,
    pub video: u32,
    pub vision_start: u32,
}

/// The visual inputs of a batch in prompt order: images and videos are each consumed in order
/// across the rows, as the reference does.
#[derive(Debug, Clone, Default)]
pub struct VisualGrids {
    /// Patch grids `[t, h, w]` of the images.
    pub images: Vec<[usize; 3]>,
    /// Patch grids of the videos.
    pub videos: Vec<[usize; 3]>,
    /// Seconds per temporal patch of each video (`temporal_patch_size / fps`); missing means 1.0.
    pub second_per_grid: Vec<f32>,
}

/// The three position axes (temporal, height, width) of one row's real tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowPositions {
    pub axes: [Vec<u32>; 3],
    /// The position the next generated token takes (the largest id + 1); transformers'
    /// `rope_delta` is this minus the padded row length.
    pub next: u32,
}

/// Positions of each row's real tokens (padding removed).
pub fn mrope_positions(
    rows: &[&[u32]],
    tokens: VisionTokenIds,
    grids: &VisualGrids,
    merge_size: usize,
    tokens_per_second: f32,
) -> Result<Vec<RowPositions>> {
    let (mut image_index, mut video_index) = (0usize, 0usize);
    let mut out = Vec::with_capacity(rows.len());
    for (r, ids) in rows.iter().enumerate() {
        let mut axes: [Vec<u32>; 3] = Default::default();
        let mut next = 0u32;
        let push_text = |axes: &mut [Vec<u32>; 3], next: &mut u32, len: usize| {
            for k in 0..len as u32 {
                for axis in axes.iter_mut() {
                    axis.push(*next + k);
                }
            }
            *next += len as u32;
        };
        let mut st = 0usize;
        let blocks = ids
            .windows(2)
            .filter(|w| {
                w[0] == tokens.vision_start && (w[1] == tokens.image || w[1] == tokens.video)
            })
            .count();
        for _ in 0..blocks {
            let find = |id: u32| ids[st..].iter().position(|t| *t == id).map(|p| st + p);
            let (ed_image, ed_video) = (find(tokens.image), find(tokens.video));
            let is_image = match (ed_image, ed_video) {
                (Some(i), Some(v)) => i < v,
                (Some(_), None) => true,
                (None, _) => false,
            };
            let (ed, grid, spg, id, what) = if is_image {
                let grid = *grids.images.get(image_index).ok_or_else(|| {
                    ModelError::InvalidInput(format!(
                        "row {r}: more images in the prompts than the {} given",
                        grids.images.len()
                    ))
                })?;
                image_index += 1;
                (ed_image, grid, 0.0f32, tokens.image, "image")
            } else {
                let grid = *grids.videos.get(video_index).ok_or_else(|| {
                    ModelError::InvalidInput(format!(
                        "row {r}: more videos in the prompts than the {} given",
                        grids.videos.len()
                    ))
                })?;
                let spg = grids
                    .second_per_grid
                    .get(video_index)
                    .copied()
                    .unwrap_or(1.0);
                video_index += 1;
                (ed_video, grid, spg, tokens.video, "video")
            };
            let ed = ed.expect("a vision start is followed by its placeholder");
            let [t, h, w] = grid;
            if h % merge_size != 0 || w % merge_size != 0 {
                return Err(ModelError::InvalidInput(format!(
                    "{what} grid {grid:?} is not a multiple of the merge size {merge_size}"
                )));
            }
            let (lh, lw) = (h / merge_size, w / merge_size);
            let n = t * lh * lw;
            if ids.len() < ed + n || ids[ed..ed + n].iter().any(|x| *x != id) {
                let found = ids[ed..].iter().take_while(|x| **x == id).count();
                return Err(ModelError::InvalidInput(format!(
                    "row {r}: a {what} of grid {grid:?} needs {n} placeholder tokens, the \
                     prompt has {found}"
                )));
            }
            push_text(&mut axes, &mut next, ed - st);
            let base = next;
            let mut largest = base;
            for ti in 0..t {
                let temporal = ((ti as f32) * spg * tokens_per_second) as u32;
                for hi in 0..lh {
                    for wi in 0..lw {
                        let ids3 = [base + temporal, base + hi as u32, base + wi as u32];
                        for (axis, v) in axes.iter_mut().zip(ids3) {
                            axis.push(v);
                            largest = largest.max(v);
                        }
                    }
                }
            }
            next = largest + 1;
            st = ed + n;
        }
        push_text(&mut axes, &mut next, ids.len() - st);
        out.push(RowPositions { axes, next });
    }
    if image_index != grids.images.len() || video_index != grids.videos.len() {
        return Err(ModelError::InvalidInput(format!(
            "the prompts hold {image_index} images and {video_index} videos, but {} image and {} \
             video inputs were given",
            grids.images.len(),
            grids.videos.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: VisionTokenIds = VisionTokenIds {
        image: 60,
        video: 61,
        vision_start: 58,
    };

    #[test]
    fn text_only_rows_count_up_on_every_axis() {
        let rows = mrope_positions(&[&[1, 2, 3]], IDS, &VisualGrids::default(), 2, 2.0).unwrap();
        assert_eq!(rows[0].axes[0], vec![0, 1, 2]);
        assert_eq!(rows[0].axes, [vec![0, 1, 2], vec![0, 1, 2], vec![0, 1, 2]]);
        assert_eq!(rows[0].next, 3);
    }

    #[test]
    fn too_few_placeholders_are_an_error_naming_the_counts() {
        let grids = VisualGrids {
            images: vec![[1, 4, 4]],
            ..Default::default()
        };
        let err = mrope_positions(&[&[58, 60, 60, 59]], IDS, &grids, 2, 2.0).unwrap_err();
        assert!(
            err.to_string()
                .contains("needs 4 placeholder tokens, the prompt has 2"),
            "{err}"
        );
        let err = mrope_positions(&[&[1, 2]], IDS, &grids, 2, 2.0).unwrap_err();
        assert!(err.to_string().contains("hold 0 images"), "{err}");
    }
}
