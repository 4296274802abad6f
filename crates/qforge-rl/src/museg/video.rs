//! Videos as MUSEG feeds them to Qwen2.5-VL (qwen-vl-utils 0.0.10's `fetch_video`): how many
//! frames to take (`smart_nframes`), which ones (`linspace`, rounded), the per-frame pixel
//! budget from the total budget, and the effective fps that sets each temporal patch's absolute
//! time. Videos are read as directories of frame images extracted at a known rate (qforge has
//! no video decoder): `ffmpeg -i v.mp4 -vf fps=4 v/%06d.png`.

use std::path::{Path, PathBuf};

use qforge_model::vl::processor::{self, Patches, ProcessorConfig, RgbImage, smart_resize};

use crate::error::{Result, RlError};

/// qwen-vl-utils' frame constants: frames come in pairs (the temporal patch).
pub const FRAME_FACTOR: usize = 2;
pub const FPS_MIN_FRAMES: usize = 4;
pub const FPS_MAX_FRAMES: usize = 768;
/// `VIDEO_MAX_PIXELS` = 768·28²: the per-frame cap before the total budget divides it.
pub const VIDEO_MAX_PIXELS: usize = 768 * 28 * 28;

/// How a video is sampled and sized: MUSEG's training settings by default.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VideoSampling {
    /// Target frames per second (qwen-vl-utils' `fps`, 2.0).
    pub fps: f64,
    /// At most this many frames (`max_frames`; MUSEG trains with 448).
    pub max_frames: usize,
    /// `min_pixels` per frame (16·28² in MUSEG).
    pub min_pixels: usize,
    /// `total_pixels` over all frames (3584·28² in MUSEG: about 3,584 visual tokens).
    pub total_pixels: usize,
}

impl Default for VideoSampling {
    fn default() -> Self {
        Self {
            fps: 2.0,
            max_frames: 448,
            min_pixels: 16 * 28 * 28,
            total_pixels: 3584 * 28 * 28,
        }
    }
}

fn py_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// `smart_nframes` for a video of `total_frames` at `video_fps`: duration × fps, clamped to
/// [4, max_frames] (each to a multiple of 2) and to the frames there are, rounded down to even.
pub fn smart_nframes(
    sampling: &VideoSampling,
    total_frames: usize,
    video_fps: f64,
) -> Result<usize> {
    let f = FRAME_FACTOR as f64;
    let min_frames = ((FPS_MIN_FRAMES as f64 / f).ceil() * f) as usize;
    let max_frames = ((sampling.max_frames.min(total_frames) as f64 / f).floor() * f) as usize;
    let wanted = total_frames as f64 / video_fps * sampling.fps;
    let n = wanted
        .max(min_frames as f64)
        .min(max_frames as f64)
        .min(total_frames as f64);
    let n = ((n / f).floor() * f) as usize;
    if !(FRAME_FACTOR <= n && n <= total_frames) {
        return Err(RlError::Invalid(format!(
            "a video of {total_frames} frames gives {n} frames to sample; it needs at least {FRAME_FACTOR}"
        )));
    }
    Ok(n)
}

/// `torch.linspace(0, total − 1, n).round()`: torch's float32 kernel (steps from the start for
/// the first half, from the end for the second), rounded half to even.
pub fn frame_indices(total_frames: usize, n: usize) -> Vec<usize> {
    if n == 1 {
        return vec![0];
    }
    let (start, end) = (0f32, (total_frames - 1) as f32);
    let step = (end - start) / (n - 1) as f32;
    (0..n)
        .map(|i| {
            let v = if i < n / 2 {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            };
            py_round(f64::from(v)) as usize
        })
        .collect()
}

/// The per-frame pixel cap for `n` frames: `max(min(768·28², total/n·2), int(1.05·min))`.
pub fn frame_max_pixels(sampling: &VideoSampling, n: usize) -> usize {
    let share = sampling.total_pixels as f64 / n as f64 * FRAME_FACTOR as f64;
    let cap = (VIDEO_MAX_PIXELS as f64).min(share);
    cap.max((sampling.min_pixels as f64 * 1.05).floor()) as usize
}

/// A sampled video ready for the model: its patches and seconds per temporal patch
/// (`temporal_patch_size / sample_fps`, the `second_per_grid_t` of the absolute-time ids).
#[derive(Debug, Clone)]
pub struct SampledVideo {
    pub patches: Patches,
    pub second_per_grid: f32,
    pub frames: usize,
    pub sample_fps: f64,
}

/// Samples `frames` (all decoded, at `video_fps`) as qwen-vl-utils does and patches them with
/// the model's processor, each frame sized by `smart_resize` under the per-frame budget.
pub fn sample_video(
    processor_config: &ProcessorConfig,
    sampling: &VideoSampling,
    frames: &[RgbImage],
    video_fps: f64,
) -> Result<SampledVideo> {
    if !(video_fps > 0.0) {
        return Err(RlError::Invalid(format!(
            "video fps must be positive, got {video_fps}"
        )));
    }
    let n = smart_nframes(sampling, frames.len(), video_fps)?;
    let picked: Vec<RgbImage> = frame_indices(frames.len(), n)
        .into_iter()
        .map(|i| frames[i].clone())
        .collect();
    let first = &picked[0];
    let factor = processor_config.factor();
    let max_pixels = frame_max_pixels(sampling, n);
    let (h, w) = smart_resize(
        first.height,
        first.width,
        factor,
        sampling.min_pixels,
        max_pixels,
    )?;
    // The frames arrive at their final size (qwen-vl-utils resizes before the processor,
    // whose own smart_resize then keeps them).
    let resized: Vec<RgbImage> = picked
        .iter()
        .map(|f| {
            if (f.height, f.width) == (h, w) {
                f.clone()
            } else {
                processor::resize_bicubic(f, h, w)
            }
        })
        .collect();
    let mut config = processor_config.clone();
    config.min_pixels = sampling.min_pixels.min(h * w);
    config.max_pixels = max_pixels.max(h * w);
    let patches = processor::process_video(&config, &resized)?;
    let sample_fps = n as f64 / (frames.len() as f64).max(1e-6) * video_fps;
    Ok(SampledVideo {
        patches,
        second_per_grid: (processor_config.temporal_patch_size as f64 / sample_fps) as f32,
        frames: n,
        sample_fps,
    })
}

/// The frame directory a dataset's `video` path names under `root`: the path itself when it is
/// a directory, else the path without its extension (`charades/3MSZA.mp4` →
/// `charades/3MSZA/`). A video file with no frame directory is an error saying how to make one.
pub fn frame_dir(root: &Path, video: &str) -> Result<PathBuf> {
    let path = root.join(video);
    if path.is_dir() {
        return Ok(path);
    }
    let stem = path.with_extension("");
    if stem.is_dir() {
        return Ok(stem);
    }
    if path.is_file() {
        return Err(RlError::file(
            &path,
            format!(
                "a video file; qforge reads videos as frame directories: extract its frames \
                 with `ffmpeg -i {} -vf fps=4 {}/%06d.png` and give that rate as the frames' fps",
                path.display(),
                stem.display()
            ),
        ));
    }
    Err(RlError::file(
        &path,
        "video not found (no frame directory here)",
    ))
}

/// The frame images of a directory in file-name order; an unreadable or corrupt frame is an
/// error naming it.
pub fn read_frames(dir: &Path) -> Result<Vec<RgbImage>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| RlError::file(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(RlError::file(
            dir,
            "no frame images in the video's directory",
        ));
    }
    paths
        .iter()
        .map(|p| RgbImage::open(p).map_err(RlError::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nframes_follow_qwen_vl_utils() {
        let s = VideoSampling::default();
        // 30 s at 30 fps: 60 frames at 2 fps.
        assert_eq!(smart_nframes(&s, 900, 30.0).unwrap(), 60);
        // Short clip: at least 4.
        assert_eq!(smart_nframes(&s, 30, 30.0).unwrap(), 4);
        // Long video: capped at max_frames.
        assert_eq!(smart_nframes(&s, 100_000, 30.0).unwrap(), 448);
        // Odd counts round down to even.
        assert_eq!(smart_nframes(&s, 7, 1.0).unwrap(), 6);
        assert!(smart_nframes(&s, 1, 1.0).is_err());
    }

    #[test]
    fn indices_span_the_video_and_round_half_to_even() {
        assert_eq!(frame_indices(10, 4), [0, 3, 6, 9]);
        // 0, 2.5, 5, 7.5, 10 → halves to even.
        assert_eq!(frame_indices(11, 5), [0, 2, 5, 8, 10]);
    }

    #[test]
    fn per_frame_budget_divides_the_total() {
        let s = VideoSampling::default();
        // 3584·28²/448·2 = 12,544 is below 1.05·min_pixels.
        assert_eq!(frame_max_pixels(&s, 448), 13_171);
        assert_eq!(frame_max_pixels(&s, 4), VIDEO_MAX_PIXELS);
    }
}
