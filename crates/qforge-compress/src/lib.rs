//! qforge-compress: QwenLong-CPRS, instruction-guided context compression (specs/cprs.md).
//!
//! Begun, each pinned to the official functions by fixtures:
//! - [`windows`]: the prefix and the context windows (token windows, CJK sentence packing);
//! - [`postprocess`]: from per-token BIOE labels to kept spans (repair, spans, cleaning).
//!
//! The compressor model, training, the CLI, the server endpoint and evaluation are to come.

pub mod postprocess;
pub mod windows;
