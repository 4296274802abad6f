//! Every integration test of `qforge-agent` in one binary (one link step instead of one per file).

mod common;
mod mobile_loop;
mod websailor_e2e;
mod websailor_eval;
mod websailor_loop;
mod websailor_rft;
mod websailor_rl;
mod websailor_synth;
mod websailor_tools;
