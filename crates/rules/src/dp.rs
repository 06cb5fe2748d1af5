//! Exact sampling of the discrete Laplace distribution, with integer arithmetic only.
//!
//! The sampler is Algorithm 2 of Canonne, Kamath and Steinke, *The Discrete Gaussian for
//! Differential Privacy* (NeurIPS 2020, arXiv:2004.00010), built on their Algorithm 1 for
//! `Bernoulli(exp(−γ))` with rational `γ`. Every step draws uniform integers from the random
//! generator by rejection sampling and compares integers: no floating-point number is ever
//! computed, so the output distribution is exactly
//!
//! ```text
//! P[Z = z] = (1 − α) / (1 + α) · α^|z|,   α = exp(−1/b),   b = t/s  (the scale)
//! ```
//!
//! and none of the floating-point attacks on textbook Laplace samplers (Mironov, CCS 2012)
//! apply. The random generator is the caller's: the service uses the operating system-seeded
//! CSPRNG of `rand` ([`rand::rng`]); tests use a seeded one to be reproducible. Its running
//! time depends on the random draws only, never on the data the noise is added to.
//!
//! Releasing `value + Z` with scale `b = Δ/ε` is `ε`-differentially private for a value that
//! one person changes by at most `Δ` (the discrete Laplace mechanism).

use rand::Rng;

/// The scale `b = t/s` of a discrete Laplace distribution, as a ratio of positive integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    t: u64,
    s: u64,
}

impl Scale {
    /// The scale `t/s`; `None` when either is 0.
    pub fn new(t: u64, s: u64) -> Option<Self> {
        (t > 0 && s > 0).then_some(Self { t, s })
    }

    /// The numerator `t`.
    pub fn numerator(self) -> u64 {
        self.t
    }

    /// The denominator `s`.
    pub fn denominator(self) -> u64 {
        self.s
    }

    /// The scale as a float, for reports only (sampling never uses it).
    pub fn as_f64(self) -> f64 {
        self.t as f64 / self.s as f64
    }

    /// The smallest `k` with `P[|Z| > k] ≤ 1 − confidence`: `value ± k` holds the true value
    /// with probability at least `confidence` (for reports; computed in floating point).
    pub fn interval(self, confidence: f64) -> u64 {
        // P[|Z| > k] = 2·α^(k+1) / (1 + α).
        let alpha = (-1.0 / self.as_f64()).exp();
        let tail = 1.0 - confidence;
        if alpha <= 0.0 {
            return 0;
        }
        let mut k = ((tail * (1.0 + alpha) / 2.0).ln() / alpha.ln() - 1.0)
            .ceil()
            .max(0.0) as u64;
        // Guard against rounding at the boundary.
        while k > 0 && 2.0 * alpha.powf(k as f64) / (1.0 + alpha) <= tail {
            k -= 1;
        }
        while 2.0 * alpha.powf(k as f64 + 1.0) / (1.0 + alpha) > tail {
            k += 1;
        }
        k
    }

    /// A bound `K` with `P[|Z| > K] < 2^-64`: `K = ⌈46·t/s⌉` (as `2·exp(−46) < 2^-64`).
    pub fn tail_bound(self) -> u64 {
        let k = (u128::from(self.t) * 46).div_ceil(u128::from(self.s));
        u64::try_from(k).unwrap_or(u64::MAX)
    }
}

/// A uniform integer in `[0, n)` (`n > 0`), by rejection: exact, whatever `n`.
fn uniform_below<R: Rng + ?Sized>(rng: &mut R, n: u128) -> u128 {
    debug_assert!(n > 0);
    if let Ok(n) = u64::try_from(n) {
        let zone = (u64::MAX / n) * n;
        loop {
            let x = rng.next_u64();
            if x < zone {
                return u128::from(x % n);
            }
        }
    }
    let zone = (u128::MAX / n) * n;
    loop {
        let x = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        if x < zone {
            return x % n;
        }
    }
}

/// `Bernoulli(num/den)`, `num ≤ den`, `den > 0`.
fn bernoulli<R: Rng + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    uniform_below(rng, den) < num
}

/// `Bernoulli(exp(−num/den))`, `den > 0` (CKS20, Algorithm 1).
fn bernoulli_exp<R: Rng + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    if num <= den {
        // γ ∈ [0, 1]: the first K with A_K = 0, where A_k ~ Bernoulli(γ/k), is odd with
        // probability exp(−γ).
        let mut k: u128 = 1;
        while bernoulli(rng, num, den.saturating_mul(k)) {
            k += 1;
        }
        return k % 2 == 1;
    }
    // γ > 1: exp(−γ) = exp(−1)^⌊γ⌋ · exp(−(γ − ⌊γ⌋)).
    for _ in 0..num / den {
        if !bernoulli_exp(rng, 1, 1) {
            return false;
        }
    }
    bernoulli_exp(rng, num % den, den)
}

/// One draw of the discrete Laplace distribution of scale `t/s` (CKS20, Algorithm 2).
/// Saturates at `i64::MIN + 1` / `i64::MAX`, which no realistic scale reaches.
pub fn sample_discrete_laplace<R: Rng + ?Sized>(rng: &mut R, scale: Scale) -> i64 {
    let (t, s) = (u128::from(scale.t), u128::from(scale.s));
    loop {
        let u = uniform_below(rng, t);
        if !bernoulli_exp(rng, u, t) {
            continue;
        }
        let mut v: u128 = 0;
        while bernoulli_exp(rng, 1, 1) {
            v += 1;
        }
        let x = u.saturating_add(t.saturating_mul(v));
        let y = i64::try_from(x / s).unwrap_or(i64::MAX);
        let negative = bernoulli(rng, 1, 2);
        if negative && y == 0 {
            continue;
        }
        return if negative { -y } else { y };
    }
}

/// [`sample_discrete_laplace`] clamped to `[−bound, bound]` (the release's public bound; with
/// [`Scale::tail_bound`] the clamp changes a draw with probability below `2^-64`).
pub fn sample_bounded<R: Rng + ?Sized>(rng: &mut R, scale: Scale, bound: u64) -> i64 {
    let bound = i64::try_from(bound).unwrap_or(i64::MAX);
    sample_discrete_laplace(rng, scale).clamp(-bound, bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// The exact probability of `z` under scale `b`.
    fn pmf(b: f64, z: i64) -> f64 {
        let alpha = (-1.0 / b).exp();
        (1.0 - alpha) / (1.0 + alpha) * alpha.powi(z.unsigned_abs() as i32)
    }

    /// Pearson's chi-square of `n` draws against the exact distribution, over the bins
    /// `{z}` for `|z| ≤ cut` and the two tails; returns (statistic, degrees of freedom).
    fn chi_square(scale: Scale, n: usize, seed: u64) -> (f64, usize) {
        let b = scale.as_f64();
        let cut = (b * 4.0).ceil().max(2.0) as i64;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut counts = vec![0u64; (2 * cut + 3) as usize];
        for _ in 0..n {
            let z = sample_discrete_laplace(&mut rng, scale);
            let bin = z.clamp(-cut - 1, cut + 1) + cut + 1;
            counts[bin as usize] += 1;
        }
        let tail: f64 = 1.0 - (-cut..=cut).map(|z| pmf(b, z)).sum::<f64>();
        let mut stat = 0.0;
        for (i, &observed) in counts.iter().enumerate() {
            let z = i as i64 - cut - 1;
            let p = if z.abs() > cut { tail / 2.0 } else { pmf(b, z) };
            let expected = p * n as f64;
            stat += (observed as f64 - expected).powi(2) / expected;
        }
        (stat, counts.len() - 1)
    }

    #[test]
    fn empirical_distribution_matches_the_discrete_laplace() {
        // Chi-square critical values at p = 0.0001: the test fails for a wrong sampler (a
        // scale off by 5% already fails at this n), and passes for the right one.
        for (t, s, seed) in [(3, 1, 1), (7, 2, 2), (1, 3, 3), (25, 1, 4)] {
            let scale = Scale::new(t, s).unwrap();
            let (stat, df) = chi_square(scale, 200_000, seed);
            // Wilson–Hilferty approximation of the 0.9999 quantile of chi-square(df).
            let d = df as f64;
            let z = 3.719;
            let critical = d * (1.0 - 2.0 / (9.0 * d) + z * (2.0 / (9.0 * d)).sqrt()).powi(3);
            assert!(
                stat < critical,
                "scale {t}/{s}: chi-square {stat:.1} over {df} degrees of freedom exceeds {critical:.1}"
            );
        }
    }

    #[test]
    fn a_wrong_scale_is_caught_by_the_same_test() {
        // Draws of scale 3.15 judged as scale 3: the statistic must exceed the critical value,
        // or the test above could not fail.
        let wrong = Scale::new(63, 20).unwrap();
        let b = 3.0;
        let n = 200_000;
        let cut = 12i64;
        let mut rng = StdRng::seed_from_u64(5);
        let mut counts = vec![0u64; (2 * cut + 3) as usize];
        for _ in 0..n {
            let z = sample_discrete_laplace(&mut rng, wrong).clamp(-cut - 1, cut + 1);
            counts[(z + cut + 1) as usize] += 1;
        }
        let tail: f64 = 1.0 - (-cut..=cut).map(|z| pmf(b, z)).sum::<f64>();
        let stat: f64 = counts
            .iter()
            .enumerate()
            .map(|(i, &o)| {
                let z = i as i64 - cut - 1;
                let p = if z.abs() > cut { tail / 2.0 } else { pmf(b, z) };
                (o as f64 - p * n as f64).powi(2) / (p * n as f64)
            })
            .sum();
        assert!(stat > 60.0, "a 5% scale error went unnoticed: {stat:.1}");
    }

    #[test]
    fn moments_and_symmetry() {
        let scale = Scale::new(10, 1).unwrap();
        let mut rng = StdRng::seed_from_u64(6);
        let n = 100_000;
        let draws: Vec<i64> = (0..n)
            .map(|_| sample_discrete_laplace(&mut rng, scale))
            .collect();
        let mean = draws.iter().sum::<i64>() as f64 / n as f64;
        let var = draws.iter().map(|&z| (z as f64).powi(2)).sum::<f64>() / n as f64;
        let alpha = (-0.1f64).exp();
        let exact_var = 2.0 * alpha / (1.0 - alpha).powi(2);
        // Standard error of the mean ~ sqrt(var/n) ≈ 0.045; of the variance ~ 1.5.
        assert!(mean.abs() < 0.25, "mean {mean}");
        assert!(
            (var - exact_var).abs() < 8.0,
            "variance {var} vs {exact_var}"
        );
    }

    #[test]
    fn large_scales_are_sampled_quickly_and_bounded() {
        let scale = Scale::new(100_000_000_000, 3).unwrap();
        let bound = scale.tail_bound();
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            assert!(sample_bounded(&mut rng, scale, bound).unsigned_abs() <= bound);
        }
        assert_eq!(sample_bounded(&mut rng, scale, 0), 0);
    }

    #[test]
    fn bernoulli_exp_matches_its_probability() {
        let mut rng = StdRng::seed_from_u64(8);
        for (num, den) in [(1u128, 2u128), (1, 1), (5, 2), (0, 7)] {
            let n = 100_000;
            let hits = (0..n).filter(|_| bernoulli_exp(&mut rng, num, den)).count();
            let p = (-(num as f64) / den as f64).exp();
            let se = (p * (1.0 - p) / n as f64).sqrt().max(1e-9);
            let got = hits as f64 / n as f64;
            assert!(
                (got - p).abs() < 5.0 * se + 1e-9,
                "{num}/{den}: {got} vs {p}"
            );
        }
    }

    #[test]
    fn intervals_and_tail_bounds() {
        let scale = Scale::new(10, 1).unwrap();
        let k = scale.interval(0.95);
        let alpha = (-0.1f64).exp();
        let tail = |k: u64| 2.0 * alpha.powf(k as f64 + 1.0) / (1.0 + alpha);
        assert!(tail(k) <= 0.05 && tail(k - 1) > 0.05, "k = {k}");
        assert_eq!(scale.tail_bound(), 460);
        assert_eq!(Scale::new(1, 3).unwrap().tail_bound(), 16);
        assert!(Scale::new(0, 1).is_none());
    }
}
