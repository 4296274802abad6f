//! WebSailor (arXiv 2507.02592): a ReAct agent with `search` and `visit` tools.
//!
//! - [`agent`]: the ReAct loop on any `ChatBackend`, with budgets, the forced final answer and
//!   the termination labels; the `Tool` trait and the `search` tool.
//! - [`index`]: a BM25 inverted index over a local corpus, the offline search backend.
//! - [`search`]: the `search` tool's output (one block per query, joined by `=======`), and
//!   its backends: the offline index, or Google through Serper's API.
//! - [`visit`]: the `visit` tool: pages from the offline corpus or over HTTP ([`html`] turns
//!   HTML into text), goal-directed extraction by a summary model or an extractive fallback.

pub mod agent;
pub mod html;
pub mod index;
pub mod search;
pub mod visit;
