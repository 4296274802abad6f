//! WebSailor (arXiv 2507.02592): a ReAct agent with `search` and `visit` tools.
//!
//! - [`agent`]: the ReAct loop on any `ChatBackend`, with budgets, the forced final answer and
//!   the termination labels; the `Tool` trait and the `search` tool.
//! - [`corpus`]: the offline corpus (JSONL documents; Wikipedia summaries converted into it).
//! - [`runner`]: the agent over a question set, rollouts concurrent, trajectories appended to
//!   a resumable JSONL log in the trainers' chat format.
//! - [`eval`]: benchmark loaders (xbench-DeepSearch, BrowseComp, BrowseComp-ZH with their
//!   decryption; GAIA; JSONL), the LLM judge or exact match, pass@1/pass@k and tool statistics.
//! - [`rft`]: RFT cold-start filters (judged right, under the token cap, more than 5 tool
//!   calls) and short-thought reconstruction by a second model.
//! - [`rl`]: the RL stage on the RL core: the agent's tools as a `ToolEnv` for multi-turn
//!   GRPO/DUPO rollouts, and Eq. 5's reward (0.1 format + 0.9 judged answer).
//! - [`index`]: a BM25 inverted index over a local corpus, the offline search backend.
//! - [`search`]: the `search` tool's output (one block per query, joined by `=======`), and
//!   its backends: the offline index, or Google through Serper's API.
//! - [`synth`]: SailorFog-QA-style questions from a countries graph (random walk, obfuscated
//!   facts), each verified by a brute-force solver to have exactly one answer.
//! - [`visit`]: the `visit` tool: pages from the offline corpus or over HTTP ([`html`] turns
//!   HTML into text), goal-directed extraction by a summary model or an extractive fallback.

pub mod agent;
pub mod corpus;
pub mod eval;
pub mod html;
pub mod index;
pub mod rft;
pub mod rl;
pub mod runner;
pub mod sailorfog;
pub mod search;
pub mod settings;
pub mod visit;
