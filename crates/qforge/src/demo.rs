//! The built-in tiny demo checkpoint (the qwen3_tied_gqa fixture: random weights, real
//! tokenizer and chat template), so every command works on a fresh machine without downloads.

use std::path::PathBuf;

use anyhow::{Context, Result};

macro_rules! demo_file {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!(
                "../../../tools/fixtures/model/qwen3_tied_gqa/",
                $name
            ))
            .as_slice(),
        )
    };
}

const FILES: [(&str, &[u8]); 6] = [
    demo_file!("config.json"),
    demo_file!("model.safetensors"),
    demo_file!("tokenizer.json"),
    demo_file!("tokenizer_config.json"),
    demo_file!("chat_template.jinja"),
    demo_file!("generation_config.json"),
];

/// `$QFORGE_HOME` (default `~/.cache/qforge`).
pub fn qforge_home() -> PathBuf {
    if let Some(h) = std::env::var_os("QFORGE_HOME") {
        return PathBuf::from(h);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("qforge")
}

/// Writes the demo checkpoint under `$QFORGE_HOME/models/demo-tiny` (if missing or stale).
pub fn demo_model_dir() -> Result<PathBuf> {
    let dir = qforge_home().join("models").join("demo-tiny");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, bytes) in FILES {
        let path = dir.join(name);
        if std::fs::read(&path).ok().as_deref() != Some(bytes) {
            qforge_util::write_atomic(&path, bytes)?;
        }
    }
    Ok(dir)
}
