//! Next-token selection: logit bias, then the repetition, frequency and presence penalties
//! (vLLM's order), then temperature, top-k, top-p, min-p (transformers' order), seeded per
//! sequence.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// 0 means off.
    pub top_k: usize,
    /// 1 means off.
    pub top_p: f32,
    /// 0 means off.
    pub min_p: f32,
    /// 1 means off; > 1 discourages tokens already in the prompt or output.
    pub repetition_penalty: f32,
    /// OpenAI's `presence_penalty` in [-2, 2]: subtracted once from the logit of every token the
    /// output already holds (vLLM: output tokens only, not the prompt).
    pub presence_penalty: f32,
    /// OpenAI's `frequency_penalty` in [-2, 2]: subtracted per occurrence in the output.
    pub frequency_penalty: f32,
    /// OpenAI's `logit_bias`: (token id, bias) added to the raw logits, bias clamped to ±100.
    pub logit_bias: Vec<(u32, f32)>,
    /// `None` draws a seed from the OS.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad =
            |field: &str, why: &str| Err(EngineError::InvalidParameter(format!("{field} {why}")));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", "must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "must be in [0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition_penalty", "must be a finite number > 0");
        }
        for (field, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&value) {
                return bad(field, "must be in [-2, 2]");
            }
        }
        if let Some((id, _)) = self.logit_bias.iter().find(|(_, b)| !b.is_finite()) {
            return bad(
                "logit_bias",
                &format!("for token {id} must be a finite number"),
            );
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-6
    }
}

/// Sampling fields as a request or command line gives them (`None`: not given).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
}

impl SamplingFields {
    /// Given fields win; then, like vLLM, the checkpoint's generation_config.json (unless it says
    /// `do_sample: false`); then the filters are off and the temperature is
    /// `default_temperature` (0 = greedy for the CLI, 1 for OpenAI's API).
    pub fn resolve(
        &self,
        generation: &qforge_model::GenerationConfig,
        default_temperature: f32,
    ) -> SamplingParams {
        let from_config = generation.do_sample != Some(false);
        let cfg = |v: Option<f64>| v.filter(|_| from_config).map(|x| x as f32);
        let config_temperature = cfg(generation.temperature);
        SamplingParams {
            temperature: self
                .temperature
                .or(config_temperature)
                .unwrap_or(default_temperature),
            top_k: self
                .top_k
                .or(generation.top_k.filter(|_| from_config))
                .unwrap_or(0),
            top_p: self.top_p.or(cfg(generation.top_p)).unwrap_or(1.0),
            min_p: self.min_p.or(cfg(generation.min_p)).unwrap_or(0.0),
            repetition_penalty: self
                .repetition_penalty
                .or(cfg(generation.repetition_penalty))
                .unwrap_or(1.0),
            // Not generation_config.json fields: off unless the request asks.
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            logit_bias: self.logit_bias.clone(),
            seed: self.seed,
        }
    }
}

/// One sequence's sampler: its parameters and its own random stream, so a sequence samples
/// the same tokens whatever else shares its batch.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from raw logits. `tokens` is every token so far, of which the first
    /// `prompt_len` are the prompt: the repetition penalty sees them all, the frequency and
    /// presence penalties only the output (as vLLM's do).
    pub fn sample(&mut self, logits: &[f32], tokens: &[u32], prompt_len: usize) -> Result<u32> {
        if logits.iter().any(|x| x.is_nan()) {
            return Err(EngineError::NonFiniteLogits);
        }
        let p = &self.params;
        let mut logits = logits.to_vec();
        for &(id, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias.clamp(-100.0, 100.0);
            }
        }
        if p.repetition_penalty != 1.0 {
            let mut seen = vec![false; logits.len()];
            for &t in tokens {
                if let Some(s) = seen.get_mut(t as usize) {
                    *s = true;
                }
            }
            for (l, _) in logits.iter_mut().zip(&seen).filter(|(_, s)| **s) {
                *l = if *l < 0.0 {
                    *l * p.repetition_penalty
                } else {
                    *l / p.repetition_penalty
                };
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut counts: std::collections::HashMap<u32, f32> = Default::default();
            for &t in &tokens[prompt_len.min(tokens.len())..] {
                *counts.entry(t).or_default() += 1.0;
            }
            for (t, count) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.frequency_penalty * count + p.presence_penalty;
                }
            }
        }
        if p.is_greedy() {
            return Ok(argmax(&logits));
        }
        for l in logits.iter_mut() {
            *l /= p.temperature;
        }
        // Candidates sorted by logit, best first; filters only ever cut the tail.
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        if p.top_k > 0 && p.top_k < order.len() {
            order.truncate(p.top_k);
        }
        let max = logits[order[0] as usize];
        let mut probs: Vec<f32> = order
            .iter()
            .map(|&t| (logits[t as usize] - max).exp())
            .collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        if p.top_p < 1.0 {
            let mut cumulative = 0.0;
            let mut keep = probs.len();
            for (i, &q) in probs.iter().enumerate() {
                cumulative += q;
                if cumulative >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            order.truncate(keep);
        }
        if p.min_p > 0.0 {
            let threshold = p.min_p * probs[0];
            let keep = probs.iter().take_while(|&&q| q >= threshold).count().max(1);
            probs.truncate(keep);
            order.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut u = self.rng.random::<f32>() * total;
        for (i, q) in probs.iter().enumerate() {
            if u < *q {
                return Ok(order[i]);
            }
            u -= q;
        }
        Ok(*order.last().expect("at least one candidate"))
    }
}

pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// `log_softmax(logits)` computed stably.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = logits.iter().map(|x| (x - max).exp()).sum::<f32>().ln() + max;
    logits.iter().map(|x| x - lse).collect()
}

/// The `k` most likely tokens with their log-probabilities, best first.
pub fn top_logprobs(logprobs: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..logprobs.len() as u32).collect();
    let k = k.min(idx.len());
    idx.select_nth_unstable_by(k - 1, |&a, &b| {
        logprobs[b as usize].total_cmp(&logprobs[a as usize])
    });
    idx.truncate(k);
    idx.sort_by(|&a, &b| logprobs[b as usize].total_cmp(&logprobs[a as usize]));
    idx.into_iter().map(|i| (i, logprobs[i as usize])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> Sampler {
        let mut p = SamplingParams {
            temperature: 1.0,
            seed: Some(7),
            ..SamplingParams::greedy()
        };
        f(&mut p);
        p.validate().unwrap();
        Sampler::new(p)
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9], &[], 0).unwrap(), 1);
    }

    #[test]
    fn repetition_penalty_follows_transformers() {
        // Token 1 (logit 3.0) is in the context: 3.0 / 2 = 1.5 < 2.9, so token 3 wins.
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9], &[1], 0).unwrap(), 3);
        // Negative logits are multiplied: -0.5 * 2 = -1.0 < -0.9.
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&[-0.5, -0.9], &[0], 0).unwrap(), 1);
    }

    #[test]
    fn presence_and_frequency_penalties_count_only_the_output_as_vllm_does() {
        let logits = [3.0, 2.5, 0.0];
        let greedy = |f: &dyn Fn(&mut SamplingParams)| {
            let mut p = SamplingParams::greedy();
            f(&mut p);
            p.validate().unwrap();
            Sampler::new(p)
        };
        // Token 0 only in the prompt: no penalty, it still wins.
        let mut s = greedy(&|p| p.presence_penalty = 2.0);
        assert_eq!(s.sample(&logits, &[0, 0], 2).unwrap(), 0);
        // Once in the output: 3.0 - 2.0 = 1.0 < 2.5.
        assert_eq!(s.sample(&logits, &[0, 0], 1).unwrap(), 1);
        // Frequency scales with the count: 3.0 - 0.3 * 1 = 2.7 wins, 3.0 - 0.3 * 2 = 2.4 loses.
        let mut s = greedy(&|p| p.frequency_penalty = 0.3);
        assert_eq!(s.sample(&logits, &[0], 0).unwrap(), 0);
        assert_eq!(s.sample(&logits, &[0, 0], 0).unwrap(), 1);
        // A negative presence penalty encourages repeats.
        let mut s = greedy(&|p| p.presence_penalty = -2.0);
        assert_eq!(s.sample(&[3.0, 2.5, 1.5], &[2], 0).unwrap(), 2);
    }

    #[test]
    fn logit_bias_is_added_and_clamped_to_100() {
        let mut s = Sampler::new(SamplingParams {
            logit_bias: vec![(2, 5.0)],
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&[3.0, 2.5, -1.0], &[], 0).unwrap(), 2);
        // -1000 acts as -100: token 0 (3.0 - 100) still beats a -200 logit.
        let mut s = Sampler::new(SamplingParams {
            logit_bias: vec![(0, -1000.0)],
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&[3.0, -200.0], &[], 0).unwrap(), 0);
        for bad in [
            SamplingParams {
                presence_penalty: 2.5,
                ..SamplingParams::greedy()
            },
            SamplingParams {
                frequency_penalty: -3.0,
                ..SamplingParams::greedy()
            },
            SamplingParams {
                logit_bias: vec![(1, f32::NAN)],
                ..SamplingParams::greedy()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn top_k_one_is_greedy_and_filters_restrict_support() {
        let logits = [1.0, 2.0, 3.0, 0.5];
        let mut s = params(|p| p.top_k = 1);
        for _ in 0..50 {
            assert_eq!(s.sample(&logits, &[], 0).unwrap(), 2);
        }
        let mut s = params(|p| p.top_k = 2);
        for _ in 0..200 {
            assert!([1, 2].contains(&s.sample(&logits, &[], 0).unwrap()));
        }
        // probs ~ [0.086, 0.234, 0.636, 0.052]: top_p 0.8 keeps tokens 2 and 1.
        let mut s = params(|p| p.top_p = 0.8);
        for _ in 0..200 {
            assert!([1, 2].contains(&s.sample(&logits, &[], 0).unwrap()));
        }
        // min_p 0.3: threshold 0.19 keeps tokens 2 and 1.
        let mut s = params(|p| p.min_p = 0.3);
        for _ in 0..200 {
            assert!([1, 2].contains(&s.sample(&logits, &[], 0).unwrap()));
        }
    }

    #[test]
    fn sampling_frequencies_follow_the_distribution() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = [0.25, 0.75]
        let mut s = params(|_| {});
        let n = 4000;
        let ones = (0..n)
            .filter(|_| s.sample(&logits, &[], 0).unwrap() == 1)
            .count();
        let freq = ones as f64 / n as f64;
        assert!((freq - 0.75).abs() < 0.03, "{freq}");
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = || {
            let mut s = params(|p| p.seed = Some(42));
            (0..20)
                .map(|_| s.sample(&logits, &[], 0).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(), draw());
    }

    #[test]
    fn bad_parameters_and_nan_logits_are_errors() {
        for p in [
            SamplingParams {
                temperature: -1.0,
                ..SamplingParams::greedy()
            },
            SamplingParams {
                top_p: 0.0,
                ..SamplingParams::greedy()
            },
            SamplingParams {
                min_p: 2.0,
                ..SamplingParams::greedy()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..SamplingParams::greedy()
            },
        ] {
            assert!(p.validate().is_err(), "{p:?}");
        }
        let mut s = Sampler::new(SamplingParams::greedy());
        assert!(matches!(
            s.sample(&[0.0, f32::NAN], &[], 0),
            Err(EngineError::NonFiniteLogits)
        ));
    }

    #[test]
    fn fields_then_generation_config_then_defaults() {
        let qwen3 = qforge_model::GenerationConfig {
            do_sample: Some(true),
            temperature: Some(0.6),
            top_p: Some(0.95),
            top_k: Some(20),
            ..Default::default()
        };
        let none = SamplingFields::default();
        let p = none.resolve(&qwen3, 0.0);
        assert_eq!((p.temperature, p.top_p, p.top_k), (0.6, 0.95, 20));
        let p = SamplingFields {
            temperature: Some(0.0),
            ..none.clone()
        }
        .resolve(&qwen3, 1.0);
        assert!(p.is_greedy());
        let greedy_config = qforge_model::GenerationConfig {
            do_sample: Some(false),
            ..qwen3
        };
        assert_eq!(none.resolve(&greedy_config, 1.0).temperature, 1.0);
        assert_eq!(
            none.resolve(&qforge_model::GenerationConfig::default(), 0.0)
                .top_p,
            1.0
        );
    }

    #[test]
    fn log_softmax_and_top_logprobs() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f32 = lp.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        let top = top_logprobs(&lp, 2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 1]);
    }
}
