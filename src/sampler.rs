//! Token sampling on the CPU from one row of logits: greedy, temperature,
//! top-k, top-p and repetition penalty, seeded (same seed, same output).

#[derive(Clone, Debug)]
pub struct SamplingOptions {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = all.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p; 1 = all.
    pub top_p: f32,
    /// > 1 discourages tokens already in the context (CTRL's penalty, as HF).
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions { temperature: 0.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SamplingOptions {
    /// Whether the next token is the argmax of the raw logits (the GPU then
    /// picks it and only its id is read back).
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 && self.repetition_penalty == 1.0
    }
}

pub struct Sampler {
    options: SamplingOptions,
    state: u64,
}

impl Sampler {
    pub fn new(options: SamplingOptions) -> Sampler {
        let state = options.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        Sampler { options, state }
    }

    fn uniform(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks the next token from `logits`, given the tokens seen so far.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> u32 {
        let o = &self.options;
        if o.repetition_penalty != 1.0 {
            for &id in context {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / o.repetition_penalty } else { *l * o.repetition_penalty };
                }
            }
        }
        if o.temperature <= 0.0 {
            return (0..logits.len()).fold(0, |best, i| if logits[i] > logits[best] { i } else { best }) as u32;
        }
        let mut candidates: Vec<(u32, f32)> =
            logits.iter().enumerate().map(|(i, &l)| (i as u32, l / o.temperature)).collect();
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        if o.top_k > 0 {
            candidates.truncate(o.top_k);
        }
        let max = candidates[0].1;
        let mut probs: Vec<f64> = candidates.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if o.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = probs.iter().position(|p| {
                cumulative += p;
                cumulative >= o.top_p as f64
            });
            let keep = keep.map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let mut r = self.uniform();
        for (i, p) in probs.iter().enumerate() {
            r -= p;
            if r <= 0.0 {
                return candidates[i].0;
            }
        }
        candidates[probs.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingOptions::default());
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_limits() {
        let options = SamplingOptions { temperature: 1.0, top_k: 2, seed: 7, ..Default::default() };
        let logits = [1.0, 0.9, 0.8, 5.0, 4.9];
        let draw = |options: &SamplingOptions| {
            let mut s = Sampler::new(options.clone());
            (0..50).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        let a = draw(&options);
        assert_eq!(a, draw(&options));
        assert!(a.iter().all(|&t| t == 3 || t == 4), "{a:?}");
        assert!(a.contains(&3) && a.contains(&4));
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let options = SamplingOptions { repetition_penalty: 2.0, ..Default::default() };
        let mut s = Sampler::new(options);
        assert_eq!(s.sample(&mut [1.0, 1.5], &[1]), 0);
    }
}
