//! Images in OpenAI-format chat messages, for vision-language models.
//!
//! A content part `{"type": "image_url", "image_url": {"url": ...}}` (OpenAI) or
//! `{"type": "image", "image": ...}` (transformers) names its image by a data URL
//! (`data:image/png;base64,...`) or, where [`ImageSources::local_root`] allows it, a local path
//! (relative to that root, or `file://`). Remote `http(s)` URLs are refused: fetching what a
//! request names is a server-side request forgery risk, so it stays off (vLLM's
//! `--allowed-local-media-path` is the same switch for files).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use qforge_model::ModelError;
use qforge_model::template::ChatOptions;
use qforge_model::vl::{RgbImage, Vision, VisualInputs};
use qforge_model::{Result as ModelResult, Tokenizer};
use serde_json::Value;

/// Where images named in messages may come from.
#[derive(Debug, Clone, Default)]
pub struct ImageSources {
    /// Local paths are read relative to this directory (and must stay inside it); `None`
    /// refuses local paths.
    pub local_root: Option<PathBuf>,
}

/// Largest decoded image accepted, in bytes of the encoded file (64 MiB).
pub const MAX_IMAGE_BYTES: usize = 64 << 20;

/// The image reference of a content part, if it is an image part.
fn image_ref(part: &Value) -> Option<&Value> {
    part.get("image_url")
        .map(|u| u.get("url").unwrap_or(u))
        .or_else(|| part.get("image"))
        .filter(|_| part.get("type").and_then(Value::as_str) != Some("text"))
}

/// Whether any message has an image or video part.
pub fn has_visual_parts(messages: &[Value]) -> bool {
    messages.iter().any(|m| {
        m.get("content")
            .and_then(Value::as_array)
            .is_some_and(|parts| {
                parts.iter().any(|p| {
                    image_ref(p).is_some()
                        || matches!(
                            p.get("type").and_then(Value::as_str),
                            Some("video" | "video_url")
                        )
                })
            })
    })
}

/// The images of `messages` in the order a chat template renders their placeholders.
pub fn images_in_messages(
    messages: &[Value],
    sources: &ImageSources,
) -> ModelResult<Vec<RgbImage>> {
    let mut out = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let Some(parts) = m.get("content").and_then(Value::as_array) else {
            continue;
        };
        for (j, part) in parts.iter().enumerate() {
            let name = format!("messages[{i}].content[{j}]");
            if matches!(
                part.get("type").and_then(Value::as_str),
                Some("video" | "video_url")
            ) {
                return Err(ModelError::InvalidInput(format!(
                    "{name}: video parts are not accepted in messages yet (give frames with \
                     `qforge generate --video DIR`)"
                )));
            }
            let Some(reference) = image_ref(part) else {
                continue;
            };
            let url = reference.as_str().ok_or_else(|| {
                ModelError::InvalidInput(format!("{name}: the image URL must be a string"))
            })?;
            out.push(load_image(url, &name, sources)?);
        }
    }
    Ok(out)
}

fn load_image(url: &str, name: &str, sources: &ImageSources) -> ModelResult<RgbImage> {
    let bad = |message: String| ModelError::BadImage {
        name: name.to_string(),
        message,
    };
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| bad("a data URL needs a `,` before its data".into()))?;
        if !meta.ends_with(";base64") {
            return Err(bad("only base64 data URLs are accepted".into()));
        }
        if data.len() / 4 * 3 > MAX_IMAGE_BYTES {
            return Err(bad(format!("over the {MAX_IMAGE_BYTES}-byte limit")));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| bad(format!("invalid base64: {e}")))?;
        return RgbImage::decode(&bytes, name);
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(bad(
            "remote image URLs are not fetched; send a data URL (or allow a local directory)"
                .into(),
        ));
    }
    let Some(root) = &sources.local_root else {
        return Err(bad(
            "local image paths are off; send a data URL (the server allows them with \
             --allowed-local-media-path DIR)"
                .into(),
        ));
    };
    let relative = url.strip_prefix("file://").unwrap_or(url);
    let path = resolve_inside(root, Path::new(relative))
        .ok_or_else(|| bad(format!("`{url}` is outside {}", root.display())))?;
    let size = std::fs::metadata(&path)
        .map_err(|e| bad(format!("{}: {e}", path.display())))?
        .len();
    if size as usize > MAX_IMAGE_BYTES {
        return Err(bad(format!(
            "{} is over the {MAX_IMAGE_BYTES}-byte limit",
            path.display()
        )));
    }
    let bytes = std::fs::read(&path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    RgbImage::decode(&bytes, name)
}

/// `root/path` (or `path` when absolute) if it lies inside `root` once resolved.
fn resolve_inside(root: &Path, path: &Path) -> Option<PathBuf> {
    let root = root.canonicalize().ok()?;
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    };
    let full = full.canonicalize().ok()?;
    full.starts_with(&root).then_some(full)
}

/// A chat prompt with images: rendered by the chat template, tokenized, and each placeholder
/// expanded to its image's merged tokens, with the processed images.
pub fn visual_chat_prompt(
    tokenizer: &Tokenizer,
    vision: &Vision,
    messages: &[Value],
    options: &ChatOptions,
    sources: &ImageSources,
) -> ModelResult<(Vec<u32>, VisualInputs)> {
    let images = images_in_messages(messages, sources)?;
    let visual = VisualInputs {
        images: images
            .iter()
            .map(|im| vision.process_image(im))
            .collect::<ModelResult<_>>()?,
        videos: Vec::new(),
    };
    let text = tokenizer.apply_chat_template(messages, options)?;
    let ids = tokenizer.encode(&text, false)?;
    Ok((vision.expand(&ids, &visual)?, visual))
}
