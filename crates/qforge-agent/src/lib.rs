//! qforge-agent: tool-using agents on any `ChatBackend` (specs/websailor_writingrl.md §1,
//! specs/museg_mobileagent.md §2).
//!
//! - [`websailor`]: WebSailor's web-research agent. So far: the offline search backend (a BM25
//!   index over a local corpus) and the `search` tool's output format.

pub mod websailor;
