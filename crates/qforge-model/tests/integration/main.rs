//! Every integration test of `qforge-model` in one binary (one link step instead of one per file).

mod checkpoints;
mod lora;
mod parity;
mod text;
mod util;
mod vlm;
