//! Every integration test of `qforge-guard` in one binary (one link step instead of one per file).

mod eval;
mod generative;
mod proxy;
mod stream;
