//! What qforge's tests share (rust-analyzer's `test-utils`): where the committed fixtures are,
//! the tiny checkpoints every crate tests with, and guard checkpoints wired for a test. A
//! dev-dependency only; nothing here ships in a library's API.

pub mod guard;

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `tools/fixtures`: committed fixtures, each made by a pinned generator script next to it.
pub fn fixtures_dir() -> PathBuf {
    repo_root().join("tools/fixtures")
}

/// A file or directory under `tools/fixtures`.
pub fn fixture(relative: &str) -> PathBuf {
    fixtures_dir().join(relative)
}

/// The tiny Qwen3 checkpoint (tied embeddings, grouped-query attention) most tests run.
pub fn tiny_model() -> PathBuf {
    fixture("model/qwen3_tied_gqa")
}

/// `examples/recipes`.
pub fn recipes_dir() -> PathBuf {
    repo_root().join("examples/recipes")
}
