//! Turns a model argument into a directory: a local path, or a Hugging Face id (`Org/Name`,
//! optionally `@revision`) already in the local HF cache. No network I/O happens here; the
//! `qforge` binary downloads through the hub (feature `hub`) before calling this.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// The hub cache directory, as huggingface_hub computes it.
pub fn hf_hub_cache() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(home).join("hub"));
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(xdg).join("huggingface").join("hub"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// Resolves `model` to a directory holding config.json.
pub fn resolve_model_dir(model: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if let Some(cache) = hf_hub_cache()
        && let Some(dir) = find_in_cache(&cache, model)
    {
        return Ok(dir);
    }
    Err(ModelError::ModelNotFound(model.to_string()))
}

/// [`resolve_model_dir`] for a path-typed setting: recipes name their model as a local directory
/// or as a Hugging Face id in the local cache, exactly as the inference commands do.
pub fn resolve_model_path(model: &Path) -> Result<PathBuf> {
    resolve_model_dir(&model.to_string_lossy())
}

/// `models--ORG--NAME/snapshots/REV/` for `ORG/NAME[@REV]`, where REV is a commit hash or a
/// ref name under `refs/` (default `main`).
pub fn find_in_cache(cache: &Path, model: &str) -> Option<PathBuf> {
    let (id, revision) = match model.split_once('@') {
        Some((id, rev)) => (id, rev),
        None => (model, "main"),
    };
    if !id.contains('/') || id.starts_with('/') || id.starts_with('.') {
        return None;
    }
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    let by_ref = std::fs::read_to_string(repo.join("refs").join(revision))
        .ok()
        .map(|hash| snapshots.join(hash.trim()));
    let candidates = [by_ref, Some(snapshots.join(revision))];
    if let Some(dir) = candidates.into_iter().flatten().find(|d| d.is_dir()) {
        return Some(dir);
    }
    // No ref file (some tools copy snapshots only): take the newest snapshot.
    if revision == "main" {
        let mut entries: Vec<_> = std::fs::read_dir(&snapshots)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("config.json").is_file())
            .collect();
        entries.sort_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
        return entries.last().map(|e| e.path());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_snapshot_through_refs_main() {
        let cache = tempfile::tempdir().unwrap();
        let repo = cache.path().join("models--Qwen--Qwen3-0.6B");
        let snap = repo.join("snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        assert_eq!(
            find_in_cache(cache.path(), "Qwen/Qwen3-0.6B"),
            Some(snap.clone())
        );
        assert_eq!(
            find_in_cache(cache.path(), "Qwen/Qwen3-0.6B@abc123"),
            Some(snap)
        );
        assert_eq!(find_in_cache(cache.path(), "Qwen/Other"), None);
        assert_eq!(find_in_cache(cache.path(), "not-an-id"), None);
    }

    #[test]
    fn unknown_model_is_a_clear_error() {
        let err = resolve_model_dir("no-such-org/no-such-model-xyz").unwrap_err();
        assert!(err.to_string().contains("no-such-org/no-such-model-xyz"));
    }
}
