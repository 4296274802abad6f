//! Recipe files and `--set` overrides, one implementation for every trainer: a recipe is a TOML
//! file whose tables a paper's crate takes apart into its settings types; `--set a.b=value`
//! writes `value` (JSON, else a string) at the dotted path.

use std::path::{Path, PathBuf};

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::fs::{IoError, WithPath};

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{}: invalid recipe: {source}", path.display())]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid [{table}]: {source}")]
    Table {
        table: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("the recipe needs `{key}` ({what})")]
    Missing { key: String, what: String },
    #[error("--set `{0}`: expected key=value")]
    NotKeyValue(String),
    #[error("--set `{0}`: unknown setting")]
    UnknownSetting(String),
    #[error("unknown device `{0}` (use cpu, cuda or cuda:N)")]
    UnknownDevice(String),
    /// candle's own answer, e.g. "not compiled with CUDA support" without the `cuda` feature.
    #[error("device `{name}`: {source}")]
    DeviceUnavailable {
        name: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("{context}: {source}")]
    Invalid {
        context: String,
        #[source]
        source: serde_json::Error,
    },
}

/// `cpu`, `cuda` or `cuda:N`, as written on the command line and in recipes.
pub fn parse_device(spec: &str) -> Result<candle_core::Device, SettingsError> {
    let spec = spec.trim().to_ascii_lowercase();
    let ordinal = match spec.as_str() {
        "cpu" => return Ok(candle_core::Device::Cpu),
        "cuda" => Some(0),
        s => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok()),
    };
    match ordinal {
        Some(n) => candle_core::Device::new_cuda(n)
            .map_err(|source| SettingsError::DeviceUnavailable { name: spec, source }),
        None => Err(SettingsError::UnknownDevice(spec)),
    }
}

/// `f32`/`float32`, `f16`/`float16`/`half`, `bf16`/`bfloat16`.
pub fn parse_dtype(name: &str) -> Option<candle_core::DType> {
    use candle_core::DType;
    match name.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Some(DType::F32),
        "f16" | "float16" | "half" => Some(DType::F16),
        "bf16" | "bfloat16" => Some(DType::BF16),
        _ => None,
    }
}

/// A TOML recipe file read as `T` (a table, or a settings type), errors naming the file.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, SettingsError> {
    let text = std::fs::read_to_string(path).with_path(path)?;
    toml::from_str(&text).map_err(|source| SettingsError::Toml {
        path: path.to_path_buf(),
        source,
    })
}

/// A recipe's remaining keys read as `T`, errors naming the file.
pub fn table_into<T: DeserializeOwned>(
    table: toml::Table,
    path: &Path,
) -> Result<T, SettingsError> {
    table.try_into().map_err(|source| SettingsError::Toml {
        path: path.to_path_buf(),
        source,
    })
}

/// Takes the `[key]` table out of a recipe (`T::default()` when absent).
pub fn take_table<T: DeserializeOwned + Default>(
    recipe: &mut toml::Table,
    key: &str,
) -> Result<T, SettingsError> {
    match recipe.remove(key) {
        Some(v) => v.try_into().map_err(|source| SettingsError::Table {
            table: key.to_string(),
            source,
        }),
        None => Ok(T::default()),
    }
}

/// Reads each relative path that does not exist from the working directory next to the recipe
/// instead, where it does exist there (empty paths are left alone).
pub fn resolve_beside_recipe<'a>(recipe: &Path, paths: impl IntoIterator<Item = &'a mut PathBuf>) {
    let base = recipe.parent().unwrap_or(Path::new("."));
    for p in paths {
        if !p.as_os_str().is_empty() && p.is_relative() && !p.exists() && base.join(&*p).exists() {
            *p = base.join(&*p);
        }
    }
}

/// Takes the required list of paths `key` out of a recipe; `what` says what they hold.
pub fn take_paths(
    recipe: &mut toml::Table,
    key: &str,
    what: &str,
) -> Result<Vec<PathBuf>, SettingsError> {
    let missing = || SettingsError::Missing {
        key: key.to_string(),
        what: format!("a list of {what}"),
    };
    recipe
        .remove(key)
        .ok_or_else(missing)?
        .try_into()
        .map_err(|_| missing())
}

/// Splits `KEY=VALUE`; the value is JSON when it parses as JSON, else the string itself.
pub fn parse_set(item: &str) -> Result<(&str, Value), SettingsError> {
    let (key, raw) = item
        .split_once('=')
        .ok_or_else(|| SettingsError::NotKeyValue(item.to_string()))?;
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    Ok((key, value))
}

/// Writes each `--set a.b=value` into `settings` at its dotted path; every part of the path
/// must already exist (a typo is an error, not a new key that nothing reads).
pub fn apply_sets(settings: &mut Value, overrides: &[String]) -> Result<(), SettingsError> {
    for item in overrides {
        let (key, value) = parse_set(item)?;
        let mut slot = &mut *settings;
        for part in key.split('.') {
            slot = slot
                .get_mut(part)
                .ok_or_else(|| SettingsError::UnknownSetting(key.to_string()))?;
        }
        *slot = value;
    }
    Ok(())
}

/// `settings` with the overrides applied ([`apply_sets`]) and read back as `T`.
pub fn with_sets<T: Serialize + DeserializeOwned>(
    settings: T,
    overrides: &[String],
) -> Result<T, SettingsError> {
    let mut v = serde_json::to_value(settings).expect("settings serialise to JSON");
    apply_sets(&mut v, overrides)?;
    serde_json::from_value(v).map_err(|source| SettingsError::Invalid {
        context: "--set".into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, Default, Debug, PartialEq)]
    struct Inner {
        lr: f64,
        name: String,
    }

    #[derive(Serialize, serde::Deserialize, Default, Debug, PartialEq)]
    struct Outer {
        steps: Option<u64>,
        inner: Inner,
    }

    #[test]
    fn sets_reach_nested_and_optional_settings_and_typos_are_errors() {
        let sets = ["steps=7", "inner.lr=0.5", "inner.name=linear"].map(String::from);
        let out = with_sets(Outer::default(), &sets).unwrap();
        assert_eq!(out.steps, Some(7));
        assert_eq!(
            out.inner,
            Inner {
                lr: 0.5,
                name: "linear".into()
            }
        );
        let typo = with_sets(Outer::default(), &["inner.lrr=1".into()]).unwrap_err();
        assert_eq!(typo.to_string(), "--set `inner.lrr`: unknown setting");
        assert!(with_sets(Outer::default(), &["inner.lr=fast".into()]).is_err());
        assert!(matches!(
            with_sets(Outer::default(), &["steps".into()]),
            Err(SettingsError::NotKeyValue(_))
        ));
    }
}
