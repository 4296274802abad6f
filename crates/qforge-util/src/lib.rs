//! Helpers below every other qforge crate (rust-analyzer's `stdx` in spirit): nothing here knows
//! of models, recipes or HTTP. Each helper exists once; crates convert [`IoError`] and
//! [`JsonlError`] into their own error enum with `#[from]`, keeping the source.

pub mod checkpoint;
pub mod fs;
pub mod jsonl;
pub mod rng;
pub mod settings;

pub use checkpoint::{list_checkpoints, prune_checkpoints};
pub use fs::{IoError, WithPath, write_atomic, write_dir_atomic, write_json_atomic};
pub use jsonl::{JsonlError, RowError, read_jsonl, write_jsonl_atomic};
pub use rng::{SplitMix, XorShift, XorShift64Star};
pub use settings::{parse_device, parse_dtype};
