//! qforge-guard: Qwen3Guard safety moderation (specs/qwen3guard.md).
//!
//! - [`labels`]: severities, categories, strict/loose policies and the strict parser of the
//!   Gen model's `Safety:` / `Categories:` / `Refusal:` output.
//! - [`stream`]: Qwen3Guard-Stream, per-token verdicts over a KV-cached session, with the
//!   paper's and the official eval script's debounce rules.
//!
//! This crate knows nothing of HTTP; servers and proxies live in `qforge-serve`.

pub mod error;
pub mod labels;
pub mod stream;

pub use error::{GuardError, Result};
pub use labels::{Category, Mode, Policy, Safety, Verdict, parse_verdict};
pub use stream::{
    Debounce, Flag, QueryVerdict, StreamGuard, StreamSession, TokenVerdict, first_flag,
};
