//! Every integration test of `qforge-compress` in one binary (one link step instead of one per file).

mod learning;
mod loss_parity;
mod model_parity;
mod pipeline;
mod postprocess_parity;
mod synthetic;
mod windows_parity;
