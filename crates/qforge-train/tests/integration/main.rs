//! Every integration test of `qforge-train` in one binary (one link step instead of one per file).

mod answers;
mod learning;
mod optim;
mod parity;
