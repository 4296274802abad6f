//! qforge-compress: QwenLong-CPRS, instruction-guided context compression (specs/cprs.md).
//!
//! Begun: [`postprocess`], the released path from per-token BIOE labels to kept spans (repair,
//! span extraction, cleaning), pinned to the official functions by fixtures. The compressor
//! model, windowing, training, the CLI, the server endpoint and evaluation are to come.

pub mod postprocess;
