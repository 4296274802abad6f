//! qforge-compress: QwenLong-CPRS, instruction-guided context compression (QwenLong-CPRS, arXiv 2505.18092).
//!
//! - [`model`]: the compressor (hybrid causal/bidirectional Qwen2 with the BIOE `cls_head`),
//!   against a transformers reference;
//! - [`pipeline`]: one call end to end (windows, tags, repair, spans, cleaning) with the
//!   released token accounting and the downstream prompt;
//! - [`windows`]: the prefix and the context windows (token windows, CJK sentence packing);
//! - [`postprocess`]: from per-token BIOE labels to kept spans (repair, spans, cleaning);
//! - [`loss`], [`labels`], [`synth`], [`train`]: training (the released loss, window labels,
//!   synthetic tasks, the trainer with checkpoints and resume);
//! - [`eval`]: span recall, answer recall, ratio and throughput; a reader on both contexts;
//! - [`middleware`]: a `ChatBackend` that compresses a request's long context before forwarding.
//!
//! `qforge compress`, `qforge train cprs`, `qforge compress eval|data|proxy` and
//! `qforge serve --compressor` (`POST /v1/compress`) use it.

pub mod error;
pub mod eval;
pub mod labels;
pub mod loss;
pub mod middleware;
pub mod model;
pub mod pipeline;
pub mod postprocess;
pub mod synthetic;
pub mod train;
pub mod windows;

pub use error::{CompressError, Result};
