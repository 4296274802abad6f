//! Every integration test of `qforge-serve` in one binary (one link step instead of one per file).

mod compress_endpoint;
mod compress_proxy;
mod reward_pooling;
mod server;
