//! Recipes of the shared trainer (`qforge train sft|dpo|rm`, and the settings part of the
//! recipes built on it): a TOML file of [`TrainConfig`] settings plus, for recipes that add
//! one, a table of their own (e.g. `[solopo]`), with `--set` overrides.

use std::path::Path;

use qforge_util::settings::{parse_set, read_toml, table_into, with_sets};
use serde_json::Value;

use crate::error::{Result, TrainError};
use crate::trainer::TrainConfig;

/// The recipe's training settings (an empty recipe without `path`), overrides applied.
pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<TrainConfig> {
    Ok(load_with_table(path, overrides, None)?.0)
}

/// The recipe's training settings and, if `table` is given, that table (e.g. `solopo`) as
/// JSON. `--set TABLE.KEY=VALUE` overrides go to the table, the rest to the settings.
pub fn load_with_table(
    path: Option<&Path>,
    overrides: &[String],
    table: Option<&str>,
) -> Result<(TrainConfig, Value)> {
    let mut recipe: toml::Table = match path {
        Some(p) => read_toml(p)?,
        None => toml::Table::new(),
    };
    let mut extra = match table.and_then(|t| recipe.remove(t)) {
        Some(v) => serde_json::to_value(v).expect("TOML values are JSON values"),
        None => serde_json::json!({}),
    };
    let mut train_overrides = Vec::new();
    for o in overrides {
        match table.and_then(|t| o.strip_prefix(&format!("{t}."))) {
            // The table's own defaults live in its settings type, so its keys may be absent.
            Some(kv) => {
                let (k, v) = parse_set(kv)?;
                extra[k] = v;
            }
            None => train_overrides.push(o.clone()),
        }
    }
    let base: TrainConfig = table_into(recipe, path.unwrap_or(Path::new("--set")))?;
    let config = with_sets(base, &train_overrides)?;
    if config.model.as_os_str().is_empty() || config.data.as_os_str().is_empty() {
        return Err(TrainError::Invalid(
            "the recipe needs `model` and `data` (in --config or via --set)".into(),
        ));
    }
    Ok((config, extra))
}
