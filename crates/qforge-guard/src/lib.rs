//! qforge-guard: Qwen3Guard safety moderation (Qwen3Guard, arXiv 2510.14276).
//!
//! - [`labels`]: severities, categories, strict/loose policies and the strict parser of the
//!   Gen model's `Safety:` / `Categories:` / `Refusal:` output.
//! - [`generative`]: Qwen3Guard-Gen, verdicts decoded greedily or read from the logits after
//!   `Safety:` (the fast path, for thresholds and ROC curves).
//! - [`stream`]: Qwen3Guard-Stream, per-token verdicts over a KV-cached session, with the
//!   paper's and the official eval script's debounce rules.
//!
//! This crate knows nothing of HTTP; servers and proxies live in `qforge-serve`.

pub mod datasets;
pub mod error;
pub mod eval;
pub mod generative;
pub mod labels;
pub mod metrics;
pub mod proxy;
pub mod stream;

pub use error::{GuardError, Result};
pub use generative::{GenGuard, GenOutcome, SafetyProbs};
pub use labels::{Category, Mode, Policy, Safety, Verdict, parse_verdict};
pub use stream::{
    Debounce, Flag, QueryVerdict, StreamGuard, StreamLabels, StreamSession, TokenVerdict,
    first_flag,
};
