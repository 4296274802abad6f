//! File-system writes that a crash cannot leave half done, and the one I/O error type that names
//! its path.

use std::path::{Path, PathBuf};

/// An I/O error with the path it happened on. Every crate's error enum wraps it with `#[from]`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct IoError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    pub fn new(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self {
            path: path.into(),
            source,
        }
    }
}

/// `result.with_path(p)`: attaches the path an `std::io::Result` was about.
pub trait WithPath<T> {
    fn with_path(self, path: &Path) -> Result<T, IoError>;
}

impl<T> WithPath<T> for std::io::Result<T> {
    fn with_path(self, path: &Path) -> Result<T, IoError> {
        self.map_err(|source| IoError::new(path, source))
    }
}

/// Writes `bytes` to a temporary sibling (`name.EXT.tmp`) and renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, bytes).with_path(&tmp)?;
    std::fs::rename(&tmp, path).with_path(path)
}

/// Pretty JSON written with [`write_atomic`].
pub fn write_json_atomic(path: &Path, value: &serde_json::Value) -> Result<(), IoError> {
    let text = serde_json::to_string_pretty(value).expect("JSON values always serialise");
    write_atomic(path, text.as_bytes())
}

/// Fills the directory `dir` through `fill`, which writes into a temporary sibling
/// (`.NAME.tmp`) that is renamed to `dir` once `fill` succeeds; an existing `dir` is replaced.
/// A crash leaves either the old directory or the new one, never half of one.
pub fn write_dir_atomic<E: From<IoError>>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.with_file_name(format!(".{}.tmp", name.unwrap_or_default()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_path(&tmp)?;
    }
    fill(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_path(dir)?;
    }
    std::fs::rename(&tmp, dir).with_path(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_directory_write_leaves_the_old_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("policy");
        write_dir_atomic::<IoError>(&dir, |tmp| {
            std::fs::create_dir_all(tmp).with_path(tmp)?;
            std::fs::write(tmp.join("a"), "old").with_path(tmp)
        })
        .unwrap();
        let failed = write_dir_atomic::<IoError>(&dir, |tmp| {
            std::fs::create_dir_all(tmp).with_path(tmp)?;
            Err(IoError::new(tmp, std::io::Error::other("disk full")))
        });
        assert!(failed.unwrap_err().to_string().contains("disk full"));
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "old");
        write_dir_atomic::<IoError>(&dir, |tmp| {
            std::fs::create_dir_all(tmp).with_path(tmp)?;
            std::fs::write(tmp.join("a"), "new").with_path(tmp)
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "new");
    }
}
