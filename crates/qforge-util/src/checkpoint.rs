//! `checkpoint-STEP` directories: which are complete, and keeping the newest few.

use std::path::{Path, PathBuf};

use crate::fs::{IoError, WithPath};

/// `dir/checkpoint-STEP` directories holding `marker` (the file written last, so its presence
/// means the checkpoint is complete), oldest first. A missing `dir` has none.
pub fn list_checkpoints(dir: &Path, marker: &str) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path().join(marker).is_file().then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Deletes the oldest complete checkpoints until at most `keep` (at least one) remain.
pub fn prune_checkpoints(dir: &Path, marker: &str, keep: usize) -> Result<(), IoError> {
    let mut all = list_checkpoints(dir, marker);
    while all.len() > keep.max(1) {
        let (_, oldest) = all.remove(0);
        std::fs::remove_dir_all(&oldest).with_path(&oldest)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_checkpoints_are_neither_listed_nor_pruned() {
        let dir = tempfile::tempdir().unwrap();
        for step in [2, 10, 4] {
            let d = dir.path().join(format!("checkpoint-{step}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("state.json"), "{}").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("checkpoint-12")).unwrap();
        let steps = |d: &Path| list_checkpoints(d, "state.json").into_iter().map(|c| c.0);
        assert_eq!(steps(dir.path()).collect::<Vec<_>>(), [2, 4, 10]);
        prune_checkpoints(dir.path(), "state.json", 2).unwrap();
        assert_eq!(steps(dir.path()).collect::<Vec<_>>(), [4, 10]);
        assert!(dir.path().join("checkpoint-12").exists());
    }
}
