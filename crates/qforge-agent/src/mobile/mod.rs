//! Mobile-Agent-v2 (arXiv 2406.01014): planning, decision and reflection agents with memory,
//! driving an Android phone over adb (Mobile-Agent-v2, arXiv 2406.01014).
//!
//! - [`agent`]: the multi-agent loop (decision, memory, reflection A/B/C, planning) with a step
//!   limit, a time budget and step logs with screenshots.
//! - [`eval`]: task suites on the simulator with state-checked success; SR, CR, DA and RA
//!   against the simulator's truth; an HTML timeline per run.
//! - [`ops`]: the operation space and how the decision agent's action is read.
//! - [`adb`]: the `Device` trait and its adb implementation (the released command lines,
//!   per-character typing, the ADB Keyboard broadcast, keyboard state, `uiautomator dump`).
//! - [`perception`]: screen elements from the accessibility tree, the released OCR-line merge,
//!   the keyboard-label test and the `[x, y]; text: …` lines the agents read.
//! - [`sim`]: a simulated phone (apps as screen state machines, PNG screenshots, uiautomator
//!   XML), in process or behind adb's command line as the `qforge-sim-adb` binary.

pub mod adb;
pub mod agent;
pub mod eval;
pub mod ops;
pub mod perception;
pub mod sim;
