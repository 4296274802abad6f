//! Every integration test of `qforge` in one binary (one link step instead of one per file).

mod cli;
mod guard_proxy;
mod serve_openai;
mod support;
