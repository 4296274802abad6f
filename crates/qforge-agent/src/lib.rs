//! qforge-agent: tool-using agents on any `ChatBackend` (specs/websailor_writingrl.md §1,
//! specs/museg_mobileagent.md §2).
//!
//! - [`websailor`]: WebSailor's web-research agent. So far: the ReAct loop with its budgets and
//!   termination labels, the `search` tool, and the offline search backend (a BM25 index).

pub mod error;
pub mod websailor;

pub use error::{AgentError, Result};
