//! Every integration test of `qforge-rl` in one binary (one link step instead of one per file).

mod judge;
mod learning;
mod museg;
mod qwenlong_l1;
mod remote;
mod robustness;
mod spell;
mod writing_rl;
