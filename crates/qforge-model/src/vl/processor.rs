//! Pixels to patches, as transformers' `Qwen2VLImageProcessor` (4.50, the PIL path) turns images
//! and video frames into the vision tower's input.
//!
//! Every step is exact against the reference: `smart_resize` rounds halves to even (Python's
//! `round`), resizing is Pillow's 8-bit bicubic resampler to the last fixed-point bit (one grey
//! level moves log-probs by ~0.08), and rescale + normalise round as numpy does (f64 rescale,
//! f32 normalise).

use std::path::Path;

use serde_json::Value;

use crate::error::{ModelError, Result};

/// `preprocessor_config.json` fields the processor uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub rescale_factor: f64,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub do_resize: bool,
    pub do_rescale: bool,
    pub do_normalize: bool,
}

impl Default for ProcessorConfig {
    /// The released Qwen2.5-VL `preprocessor_config.json` (OpenAI-CLIP mean and std).
    fn default() -> Self {
        Self {
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            min_pixels: 3136,
            max_pixels: 12_845_056,
            rescale_factor: 1.0 / 255.0,
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
        }
    }
}

impl ProcessorConfig {
    /// Reads `preprocessor_config.json`; absent fields keep the released defaults.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&value)
    }

    /// `preprocessor_config.json` of a checkpoint directory, or the released defaults when the
    /// file is absent.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        if path.is_file() {
            Self::from_file(&path)
        } else {
            Ok(Self::default())
        }
    }

    pub fn from_json(value: &Value) -> Result<Self> {
        let mut c = Self::default();
        let field = |name: &str| value.get(name).filter(|v| !v.is_null());
        let wrong = |name: &str, expected: &str| ModelError::InvalidField {
            field: format!("preprocessor_config.{name}"),
            message: format!("must be {expected}"),
        };
        let usize_of = |name: &str, slot: &mut usize| -> Result<()> {
            if let Some(v) = field(name) {
                *slot = v
                    .as_u64()
                    .filter(|x| *x > 0)
                    .ok_or_else(|| wrong(name, "a positive integer"))?
                    as usize;
            }
            Ok(())
        };
        usize_of("patch_size", &mut c.patch_size)?;
        usize_of("temporal_patch_size", &mut c.temporal_patch_size)?;
        usize_of("merge_size", &mut c.merge_size)?;
        // Newer files also carry `size: {shortest_edge, longest_edge}` = the pixel budget.
        let size = field("size");
        let budget = |name: &str, alias: &str| {
            field(name).or_else(|| size.and_then(|s| s.get(alias)).filter(|v| !v.is_null()))
        };
        for (name, alias, slot) in [
            ("min_pixels", "shortest_edge", &mut c.min_pixels),
            ("max_pixels", "longest_edge", &mut c.max_pixels),
        ] {
            if let Some(v) = budget(name, alias) {
                *slot = v
                    .as_u64()
                    .ok_or_else(|| wrong(name, "a non-negative integer"))?
                    as usize;
            }
        }
        if let Some(v) = field("rescale_factor") {
            c.rescale_factor = v
                .as_f64()
                .ok_or_else(|| wrong("rescale_factor", "a number"))?;
        }
        for (name, slot) in [
            ("image_mean", &mut c.image_mean),
            ("image_std", &mut c.image_std),
        ] {
            if let Some(v) = field(name) {
                let values: Option<Vec<f32>> = v
                    .as_array()
                    .map(|a| a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect())
                    .and_then(|x: Option<Vec<f32>>| x);
                match values.as_deref() {
                    Some([a, b, c]) => *slot = [*a, *b, *c],
                    _ => return Err(wrong(name, "three numbers")),
                }
            }
        }
        for (name, slot) in [
            ("do_resize", &mut c.do_resize),
            ("do_rescale", &mut c.do_rescale),
            ("do_normalize", &mut c.do_normalize),
        ] {
            if let Some(v) = field(name) {
                *slot = v.as_bool().ok_or_else(|| wrong(name, "true or false"))?;
            }
        }
        if let Some(s) = c.image_std.iter().find(|s| **s == 0.0) {
            return Err(wrong("image_std", &format!("non-zero (got {s})")));
        }
        Ok(c)
    }

    /// Side length that resized images are multiples of (patch x merge: 28).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// Values per patch row: channels x temporal patch x patch x patch (1176).
    pub fn patch_len(&self) -> usize {
        3 * self.temporal_patch_size * self.patch_size * self.patch_size
    }
}

/// An 8-bit RGB image, rows of interleaved `r, g, b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(height: usize, width: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != height * width * 3 {
            return Err(ModelError::InvalidInput(format!(
                "an RGB image of {height} x {width} needs {} bytes, got {}",
                height * width * 3,
                data.len()
            )));
        }
        Ok(Self {
            height,
            width,
            data,
        })
    }

    /// Decodes PNG or JPEG bytes (alpha and grey scale become RGB, as PIL's `convert("RGB")`).
    pub fn decode(bytes: &[u8], name: &str) -> Result<Self> {
        let image = image::load_from_memory(bytes).map_err(|e| ModelError::BadImage {
            name: name.to_string(),
            message: e.to_string(),
        })?;
        let rgb = image.to_rgb8();
        let (width, height) = (rgb.width() as usize, rgb.height() as usize);
        Self::new(height, width, rgb.into_raw())
    }

    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::decode(&bytes, &path.display().to_string())
    }
}

/// transformers' `smart_resize`: the size nearest `height x width` whose sides are multiples of
/// `factor` and whose area lies in `[min_pixels, max_pixels]`, keeping the aspect ratio.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    if height < factor || width < factor {
        return Err(ModelError::ImageTooSmall {
            height,
            width,
            factor,
        });
    }
    let ratio = height.max(width) as f64 / height.min(width) as f64;
    if ratio > 200.0 {
        return Err(ModelError::ImageAspectRatio { ratio });
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    // Python's round: halves go to even (182 / 28 = 6.5 -> 6).
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = (h / beta / f).floor() * f;
        w_bar = (w / beta / f).floor() * f;
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// Pillow's fixed-point precision for 8-bit resampling (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Pillow's bicubic kernel (a = -0.5), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// One output pixel's source window: first input index and fixed-point weights.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for resizing `in_size` to `out_size`.
fn taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filter_scale;
            // C casts truncate toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    let fixed = w * f64::from(1u32 << PRECISION_BITS);
                    if w < 0.0 {
                        (fixed - 0.5) as i32
                    } else {
                        (fixed + 0.5) as i32
                    }
                })
                .collect();
            Taps {
                start: xmin,
                weights,
            }
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS) << 8 {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Pillow's `Image.resize((width, height), BICUBIC)` on an RGB image: a horizontal pass, then a
/// vertical one, each rounding to 8 bits.
pub fn resize_bicubic(image: &RgbImage, height: usize, width: usize) -> RgbImage {
    if height == image.height && width == image.width {
        return image.clone();
    }
    let round = 1i64 << (PRECISION_BITS - 1);
    let horizontal = if width != image.width {
        let taps = taps(image.width, width);
        let mut out = vec![0u8; image.height * width * 3];
        for y in 0..image.height {
            let row = &image.data[y * image.width * 3..(y + 1) * image.width * 3];
            for (x, t) in taps.iter().enumerate() {
                for c in 0..3 {
                    let mut acc = round;
                    for (k, w) in t.weights.iter().enumerate() {
                        acc += i64::from(row[(t.start + k) * 3 + c]) * i64::from(*w);
                    }
                    out[(y * width + x) * 3 + c] = clip8(acc);
                }
            }
        }
        RgbImage {
            height: image.height,
            width,
            data: out,
        }
    } else {
        image.clone()
    };
    if height == horizontal.height {
        return horizontal;
    }
    let taps = taps(horizontal.height, height);
    let mut out = vec![0u8; height * width * 3];
    for (y, t) in taps.iter().enumerate() {
        for x in 0..width * 3 {
            let mut acc = round;
            for (k, w) in t.weights.iter().enumerate() {
                acc += i64::from(horizontal.data[(t.start + k) * width * 3 + x]) * i64::from(*w);
            }
            out[y * width * 3 + x] = clip8(acc);
        }
    }
    RgbImage {
        height,
        width,
        data: out,
    }
}

/// The vision tower's input for one image or video: `rows x patch_len` values and the patch
/// grid `[t, h, w]`. Rows are merge-block-major: the four patches of each 2 x 2 block follow
/// each other.
#[derive(Debug, Clone, PartialEq)]
pub struct Patches {
    pub pixel_values: Vec<f32>,
    pub grid_thw: [usize; 3],
}

impl Patches {
    pub fn rows(&self) -> usize {
        self.grid_thw.iter().product()
    }

    /// Placeholder tokens this input expands to in the prompt (`t * h * w / merge²`).
    pub fn merged_tokens(&self, merge_size: usize) -> usize {
        self.rows() / (merge_size * merge_size)
    }
}

/// An image: resized, normalised and patched as a two-frame clip of itself.
pub fn process_image(config: &ProcessorConfig, image: &RgbImage) -> Result<Patches> {
    process_frames(config, std::slice::from_ref(image))
}

/// Video frames (all of one size): each resized to the size `smart_resize` gives the first,
/// the last repeated to fill the final temporal patch.
pub fn process_video(config: &ProcessorConfig, frames: &[RgbImage]) -> Result<Patches> {
    process_frames(config, frames)
}

fn process_frames(config: &ProcessorConfig, frames: &[RgbImage]) -> Result<Patches> {
    let Some(first) = frames.first() else {
        return Err(ModelError::InvalidInput("a video with no frames".into()));
    };
    if let Some((i, f)) = frames
        .iter()
        .enumerate()
        .find(|(_, f)| (f.height, f.width) != (first.height, first.width))
    {
        return Err(ModelError::InvalidInput(format!(
            "video frame {i} is {} x {}, frame 0 is {} x {}",
            f.height, f.width, first.height, first.width
        )));
    }
    let (height, width) = if config.do_resize {
        smart_resize(
            first.height,
            first.width,
            config.factor(),
            config.min_pixels,
            config.max_pixels,
        )?
    } else {
        (first.height, first.width)
    };
    let (p, m, tp) = (
        config.patch_size,
        config.merge_size,
        config.temporal_patch_size,
    );
    if height % (p * m) != 0 || width % (p * m) != 0 {
        return Err(ModelError::InvalidInput(format!(
            "{height} x {width} is not a multiple of patch x merge = {}",
            p * m
        )));
    }
    // Channel-first normalised planes per frame.
    let planes: Vec<Vec<f32>> = frames
        .iter()
        .map(|frame| {
            let resized = if config.do_resize {
                resize_bicubic(frame, height, width)
            } else {
                frame.clone()
            };
            normalise(config, &resized)
        })
        .collect();
    let t_frames = planes.len().div_ceil(tp) * tp;
    let (gt, gh, gw) = (t_frames / tp, height / p, width / p);
    let row_len = 3 * tp * p * p;
    let mut pixel_values = Vec::with_capacity(gt * gh * gw * row_len);
    let plane = height * width;
    for t in 0..gt {
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        for c in 0..3 {
                            for ti in 0..tp {
                                // Frames past the end repeat the last one.
                                let f = (t * tp + ti).min(planes.len() - 1);
                                let src = &planes[f][c * plane..(c + 1) * plane];
                                for py in 0..p {
                                    let y = (bh * m + mh) * p + py;
                                    let x0 = (bw * m + mw) * p;
                                    pixel_values.extend_from_slice(
                                        &src[y * width + x0..y * width + x0 + p],
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(Patches {
        pixel_values,
        grid_thw: [gt, gh, gw],
    })
}

/// `(x * rescale_factor - mean) / std` per channel, channel-first; rescaled in f64 and cast to
/// f32, then normalised in f32 (numpy's order).
fn normalise(config: &ProcessorConfig, image: &RgbImage) -> Vec<f32> {
    let plane = image.height * image.width;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in image.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            let mut v = if config.do_rescale {
                (f64::from(px[c]) * config.rescale_factor) as f32
            } else {
                f32::from(px[c])
            };
            if config.do_normalize {
                v = (v - config.image_mean[c]) / config.image_std[c];
            }
            out[c * plane + i] = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizing_to_the_same_size_is_the_identity() {
        let img = RgbImage::new(3, 2, (0..18).collect()).unwrap();
        assert_eq!(resize_bicubic(&img, 3, 2), img);
    }

    #[test]
    fn a_flat_image_stays_flat_under_resizing() {
        let img = RgbImage::new(40, 30, vec![77; 40 * 30 * 3]).unwrap();
        let out = resize_bicubic(&img, 56, 28);
        assert!(out.data.iter().all(|v| *v == 77));
    }

    #[test]
    fn an_image_becomes_two_identical_frames() {
        let config = ProcessorConfig::default();
        let img =
            RgbImage::new(28, 28, (0..28 * 28 * 3).map(|i| (i % 251) as u8).collect()).unwrap();
        let p = process_image(
            &ProcessorConfig {
                min_pixels: 0,
                ..config.clone()
            },
            &img,
        )
        .unwrap();
        assert_eq!(p.grid_thw, [1, 2, 2]);
        let row = &p.pixel_values[..config.patch_len()];
        // [c][t][14][14]: the two temporal halves of each channel are equal.
        let n = 14 * 14;
        assert_eq!(row[..n], row[n..2 * n]);
    }
}
