//! Block-hash prefix caching (vLLM's automatic prefix caching, on whole blocks of tokens):
//! the keys and values a prefill computed for each full block of a prompt are kept under the
//! hash of the block and everything before it, so a later prompt that starts the same way (a
//! guard's template, a shared system prompt, an agent re-sending its conversation) restores
//! them and prefills only the rest. Invisible to callers: a restored prefix holds the same
//! keys and values the prefill would compute.
//!
//! Blocks are evicted least recently used first, the deepest block of a chain first among
//! equals, within a byte budget. The cache is valid for one set of weights: when the model's
//! weights are reloaded in place, every block is dropped.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use candle_core::Tensor;
use qforge_model::SequenceCache;

use crate::error::Result;

/// Tokens per block (vLLM's default block size).
pub const BLOCK_TOKENS: usize = 16;

struct Block {
    /// The hash of the chain before this block (0 for the first), and the block's tokens:
    /// checked on lookup so a hash collision cannot restore the wrong keys.
    parent: u64,
    tokens: Vec<u32>,
    /// `(k, v)` of every layer, `[1, KV, BLOCK_TOKENS, D]`.
    kv: Vec<(Tensor, Tensor)>,
    /// Position of the block in its chain (1 = the first).
    depth: usize,
    last_used: u64,
    bytes: usize,
}

pub struct PrefixCache {
    budget_bytes: usize,
    bytes: usize,
    blocks: HashMap<u64, Block>,
    clock: u64,
    weights_version: u64,
}

/// The chained hash of every full block of `tokens`.
fn block_hashes(tokens: &[u32], blocks: usize) -> Vec<u64> {
    let mut parent = 0u64;
    (0..blocks)
        .map(|b| {
            let mut h = DefaultHasher::new();
            parent.hash(&mut h);
            tokens[b * BLOCK_TOKENS..(b + 1) * BLOCK_TOKENS].hash(&mut h);
            parent = h.finish();
            parent
        })
        .collect()
}

/// Full blocks of a prompt that may come from the cache: at least one token must still go
/// through the model to give the next-token logits.
fn reusable_blocks(prompt_len: usize) -> usize {
    prompt_len.saturating_sub(1) / BLOCK_TOKENS
}

impl PrefixCache {
    /// A cache holding at most `budget_bytes` of keys and values (0 turns it off).
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget_bytes,
            bytes: 0,
            blocks: HashMap::new(),
            clock: 0,
            weights_version: 0,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.budget_bytes > 0
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops everything computed with other weights.
    fn check_weights(&mut self, weights_version: u64) {
        if weights_version != self.weights_version {
            self.blocks.clear();
            self.bytes = 0;
            self.weights_version = weights_version;
        }
    }

    /// The longest cached prefix of `prompt` as a fresh sequence cache (its length is a whole
    /// number of blocks), or `None`.
    pub fn lookup(
        &mut self,
        prompt: &[u32],
        weights_version: u64,
    ) -> Result<Option<SequenceCache>> {
        self.check_weights(weights_version);
        if !self.is_enabled() {
            return Ok(None);
        }
        let hashes = block_hashes(prompt, reusable_blocks(prompt.len()));
        let mut parent = 0u64;
        let mut found = Vec::new();
        for (b, h) in hashes.iter().enumerate() {
            let tokens = &prompt[b * BLOCK_TOKENS..(b + 1) * BLOCK_TOKENS];
            match self.blocks.get(h) {
                Some(block) if block.parent == parent && block.tokens == tokens => found.push(*h),
                _ => break,
            }
            parent = *h;
        }
        if found.is_empty() {
            return Ok(None);
        }
        self.clock += 1;
        for h in &found {
            self.blocks.get_mut(h).expect("found").last_used = self.clock;
        }
        let spans: Vec<&[(Tensor, Tensor)]> =
            found.iter().map(|h| self.blocks[h].kv.as_slice()).collect();
        Ok(Some(SequenceCache::from_spans(&spans)?))
    }

    /// Keeps the full blocks of `prompt` that `cache` (a sequence whose prompt went through the
    /// model) holds and the cache does not yet have.
    pub fn insert(
        &mut self,
        prompt: &[u32],
        cache: &SequenceCache,
        weights_version: u64,
    ) -> Result<()> {
        self.check_weights(weights_version);
        if !self.is_enabled() {
            return Ok(());
        }
        let blocks = reusable_blocks(prompt.len()).min(cache.len() / BLOCK_TOKENS);
        let hashes = block_hashes(prompt, blocks);
        self.clock += 1;
        let mut parent = 0u64;
        for (b, h) in hashes.iter().enumerate() {
            if let Some(block) = self.blocks.get_mut(h) {
                block.last_used = self.clock;
            } else {
                let kv = cache.copy_span(b * BLOCK_TOKENS, BLOCK_TOKENS)?;
                let bytes = kv
                    .iter()
                    .flat_map(|(k, v)| [k, v])
                    .map(|t| t.elem_count() * t.dtype().size_in_bytes())
                    .sum();
                if !self.make_room(bytes) {
                    return Ok(());
                }
                self.bytes += bytes;
                self.blocks.insert(
                    *h,
                    Block {
                        parent,
                        tokens: prompt[b * BLOCK_TOKENS..(b + 1) * BLOCK_TOKENS].to_vec(),
                        kv,
                        depth: b + 1,
                        last_used: self.clock,
                        bytes,
                    },
                );
            }
            parent = *h;
        }
        Ok(())
    }

    /// Evicts least recently used blocks (deepest first among equals) until `bytes` more fit;
    /// false when they cannot fit at all.
    fn make_room(&mut self, bytes: usize) -> bool {
        if bytes > self.budget_bytes {
            return false;
        }
        while self.bytes + bytes > self.budget_bytes {
            let victim = self
                .blocks
                .iter()
                // Blocks of the chain being inserted now carry the current clock: never evict
                // them for their own successors.
                .filter(|(_, b)| b.last_used < self.clock)
                .min_by_key(|(_, b)| (b.last_used, std::cmp::Reverse(b.depth)))
                .map(|(h, _)| *h);
            let Some(victim) = victim else {
                return false;
            };
            let block = self.blocks.remove(&victim).expect("listed");
            self.bytes -= block.bytes;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// A one-layer cache whose keys and values at position p are p (and -p).
    fn cache_of(len: usize) -> SequenceCache {
        let k = Tensor::arange(0f32, len as f32, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, len, 1))
            .unwrap();
        let v = k.neg().unwrap();
        SequenceCache::from_spans(&[&[(k, v)]]).unwrap()
    }

    fn positions(cache: &SequenceCache) -> Vec<f32> {
        let (k, _) = &cache.copy_span(0, cache.len()).unwrap()[0];
        k.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn the_longest_shared_prefix_comes_back_in_whole_blocks() {
        let mut pc = PrefixCache::new(1 << 20);
        let a: Vec<u32> = (0..40).collect();
        pc.insert(&a, &cache_of(41), 0).unwrap();
        // 40 tokens hold two full blocks; the second prompt differs in the third.
        let mut b = a.clone();
        b[35] = 999;
        let hit = pc.lookup(&b, 0).unwrap().unwrap();
        assert_eq!(hit.len(), 32);
        assert_eq!(
            positions(&hit),
            (0..32).map(|p| p as f32).collect::<Vec<_>>()
        );
        // A prompt diverging in the first block finds nothing; one of exactly 32 tokens reuses
        // one block (the last token must still be fed).
        let mut c = a.clone();
        c[3] = 7;
        assert!(pc.lookup(&c, 0).unwrap().is_none());
        assert_eq!(pc.lookup(&a[..32], 0).unwrap().unwrap().len(), 16);
        assert!(pc.lookup(&a[..16], 0).unwrap().is_none());
    }

    #[test]
    fn reloaded_weights_empty_the_cache() {
        let mut pc = PrefixCache::new(1 << 20);
        let a: Vec<u32> = (0..40).collect();
        pc.insert(&a, &cache_of(40), 0).unwrap();
        assert!(pc.lookup(&a, 0).unwrap().is_some());
        assert!(pc.lookup(&a, 1).unwrap().is_none());
        assert_eq!(pc.bytes(), 0);
    }

    #[test]
    fn the_budget_evicts_the_least_recently_used_deepest_blocks_first() {
        // One block of one layer: 16 positions x (k + v) x 4 bytes.
        let block = 16 * 2 * DType::F32.size_in_bytes();
        let mut pc = PrefixCache::new(3 * block);
        let a: Vec<u32> = (0..49).collect();
        pc.insert(&a, &cache_of(49), 0).unwrap();
        assert_eq!(pc.bytes(), 3 * block);
        let b: Vec<u32> = (100..117).collect();
        pc.insert(&b, &cache_of(17), 0).unwrap();
        // a's deepest block went; its first two remain.
        assert_eq!(pc.bytes(), 3 * block);
        assert_eq!(pc.lookup(&a, 0).unwrap().unwrap().len(), 32);
        assert_eq!(pc.lookup(&b, 0).unwrap().unwrap().len(), 16);
        // Off: nothing is kept.
        let mut off = PrefixCache::new(0);
        off.insert(&a, &cache_of(49), 0).unwrap();
        assert!(off.lookup(&a, 0).unwrap().is_none());
    }
}
