//! safetensors checkpoints: single file or sharded, memory-mapped; saved in the same layout.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::{Value, json};

use crate::error::{ModelError, Result};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// All tensors of a checkpoint, memory-mapped. Tensors are copied out (and converted to
/// the requested dtype) only when taken.
pub struct WeightStore {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    /// key -> index into `files`.
    routing: BTreeMap<String, usize>,
}

impl WeightStore {
    /// Opens `model.safetensors` or the shards listed by `model.safetensors.index.json` in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            return Self::open_index(&index);
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Self::open_files(&[single]);
        }
        Err(ModelError::NoWeights {
            dir: dir.to_path_buf(),
        })
    }

    fn open_index(index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: index.to_path_buf(),
            source,
        })?;
        let map = value
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::Safetensors {
                path: index.to_path_buf(),
                message: "no `weight_map` object".into(),
            })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<String> = Vec::new();
        for (key, shard) in map {
            let shard = shard.as_str().ok_or_else(|| ModelError::Safetensors {
                path: index.to_path_buf(),
                message: format!("weight_map entry `{key}` is not a file name"),
            })?;
            if !dir.join(shard).is_file() {
                return Err(ModelError::MissingShard {
                    path: index.to_path_buf(),
                    key: key.clone(),
                    shard: shard.to_string(),
                });
            }
            if !shards.iter().any(|s| s == shard) {
                shards.push(shard.to_string());
            }
        }
        let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        Self::open_files(&paths)
    }

    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut routing = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            // SAFETY: the file is mapped read-only; like every mmap-based loader (transformers,
            // candle) we rely on nobody truncating it while the model is loaded.
            let st =
                unsafe { MmapedSafetensors::new(path) }.map_err(|e| ModelError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            for (name, _) in st.tensors() {
                routing.insert(name, i);
            }
            files.push((path.clone(), st));
        }
        Ok(Self { files, routing })
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.routing.keys().map(String::as_str)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.routing.contains_key(key)
    }

    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        let &i = self.routing.get(key)?;
        self.files[i].1.get(key).ok().map(|v| v.shape().to_vec())
    }

    /// Loads one tensor, checking its shape, converted to `dtype` on `device`.
    pub fn load(
        &self,
        key: &str,
        expected: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let &i = self
            .routing
            .get(key)
            .ok_or_else(|| ModelError::MissingTensor {
                key: key.into(),
                expected: expected.to_vec(),
            })?;
        let (path, st) = &self.files[i];
        let view = st.get(key).map_err(|e| ModelError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if view.shape() != expected {
            return Err(ModelError::ShapeMismatch {
                key: key.into(),
                expected: expected.to_vec(),
                actual: view.shape().to_vec(),
            });
        }
        let tensor = st.load(key, device).map_err(|e| ModelError::Safetensors {
            path: path.clone(),
            message: format!("tensor `{key}`: {e}"),
        })?;
        Ok(tensor.to_dtype(dtype)?)
    }

    /// Checks every expected key up front so that all problems are reported at once.
    pub fn check(&self, expected: &[(String, Vec<usize>)]) -> Result<()> {
        check_shapes(expected, |key| self.shape(key))
    }

    /// Keys present in the checkpoint but not in `used` and not matching any `allowed` prefix.
    pub fn unexpected(&self, used: &[String], allowed_prefixes: &[&str]) -> Vec<String> {
        self.keys()
            .filter(|k| !used.iter().any(|u| u == k))
            .filter(|k| !allowed_prefixes.iter().any(|p| k.starts_with(p)))
            .map(str::to_string)
            .collect()
    }
}

/// Reports every missing key (with its expected shape), then the first shape mismatch.
pub fn check_shapes(
    expected: &[(String, Vec<usize>)],
    shape_of: impl Fn(&str) -> Option<Vec<usize>>,
) -> Result<()> {
    let missing: Vec<(String, Vec<usize>)> = expected
        .iter()
        .filter(|(k, _)| shape_of(k).is_none())
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(ModelError::MissingTensors(missing));
    }
    for (key, shape) in expected {
        let actual = shape_of(key).unwrap_or_default();
        if &actual != shape {
            return Err(ModelError::ShapeMismatch {
                key: key.clone(),
                expected: shape.clone(),
                actual,
            });
        }
    }
    Ok(())
}

/// Writes tensors as safetensors in transformers' layout: `model.safetensors`, or shards of at
/// most `max_shard_bytes` named `model-00001-of-0000N.safetensors` plus the index. Each file
/// is written to a temporary name and renamed, so a crash never leaves a torn checkpoint.
pub fn save_safetensors(
    dir: &Path,
    tensors: &[(String, Tensor)],
    max_shard_bytes: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
    let mut shards: Vec<Vec<&(String, Tensor)>> = vec![Vec::new()];
    let mut current = 0usize;
    for entry in tensors {
        let size = bytes(&entry.1);
        if current > 0 && current + size > max_shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        shards.last_mut().expect("non-empty").push(entry);
        current += size;
    }
    // Remove a stale layout of the other kind so loaders do not pick it up.
    let single = dir.join(SINGLE_FILE);
    let index = dir.join(INDEX_FILE);
    let write = |path: &Path, group: &[&(String, Tensor)]| -> Result<()> {
        let map: HashMap<String, Tensor> = group
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.contiguous()?)))
            .collect::<Result<_>>()?;
        let tmp = path.with_extension("safetensors.tmp");
        candle_core::safetensors::save(&map, &tmp)?;
        std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
    };
    if shards.len() == 1 {
        write(&single, &shards[0])?;
        if index.exists() {
            std::fs::remove_file(&index).map_err(|e| ModelError::io(&index, e))?;
        }
        return Ok(());
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0usize;
    for (i, group) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        write(&dir.join(&name), group)?;
        for (k, t) in group.iter().map(|e| (&e.0, &e.1)) {
            weight_map.insert(k.clone(), Value::String(name.clone()));
            total += bytes(t);
        }
    }
    let index_json = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    qforge_util::write_json_atomic(&index, &index_json)?;
    if single.exists() {
        std::fs::remove_file(&single).map_err(|e| ModelError::io(&single, e))?;
    }
    Ok(())
}
