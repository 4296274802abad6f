//! Every integration test of `qforge-pref` in one binary (one link step instead of one per file).

mod learning;
mod mutual_taught;
mod mutual_taught_demo;
mod parity;
mod solopo_long_accuracy;
