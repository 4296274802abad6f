//! Every integration test of `qforge-engine` in one binary (one link step instead of one per file).

mod generate;
