//! Figures from rounds: the median and quartiles the report prints, and its verdicts
//! against a target.

/// The `q`-quantile (0 to 1) of sorted finite values, interpolated linearly between the two
/// nearest ranks (position `(n - 1) * q`). The median and the quartiles all come from this
/// one rule, so the median always lies between the quartiles; an even count's median is the
/// mean of the middle two.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return f64::NAN;
    };
    let at = last as f64 * q;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64)
}

/// The finite values, sorted.
fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    v
}

/// The median of the finite values (the mean of the middle two of an even count); NaN if none.
pub fn median(v: Vec<f64>) -> f64 {
    quantile(&sorted(v), 0.5)
}

/// The first and third quartiles, by the same interpolation as [`median`].
pub fn quartiles(v: Vec<f64>) -> (f64, f64) {
    let v = sorted(v);
    (quantile(&v, 0.25), quantile(&v, 0.75))
}

/// A target met or not, as the report says it.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

/// Which way a before/after ratio (current over baseline) improves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Better {
    /// Throughput, rates: above 1 is better.
    Higher,
    /// Time, CPU, memory: below 1 is better.
    Lower,
}

/// How far from the no-change line (1) a ratio's quartile may reach on the worse side and
/// still count as no change: the machine's round-to-round noise is larger than this.
pub const TOLERANCE: f64 = 0.03;

/// The verdict on a current/baseline ratio from its quartiles (`(q1, q3)`; a single figure
/// has both equal). "not worse" when the quartile on the worse side stays within
/// [`TOLERANCE`] of no change (or beyond it on the better side); "worse" when even the
/// quartile on the better side is past no change on the worse side; otherwise, the range
/// straddles the line: "inconclusive".
pub fn change(q: (f64, f64), better: Better) -> &'static str {
    let (q1, q3) = q;
    if !q1.is_finite() || !q3.is_finite() {
        return "inconclusive";
    }
    let (not_worse, worse) = match better {
        Better::Higher => (q1 >= 1.0 - TOLERANCE, q3 < 1.0),
        Better::Lower => (q3 <= 1.0 + TOLERANCE, q1 > 1.0),
    };
    if not_worse {
        "not worse"
    } else if worse {
        "**worse**"
    } else {
        "inconclusive"
    }
}

/// A ratio's rounds, as the report prints them: `median [q1–q3]`, or one figure.
pub struct Ratio {
    pub median: f64,
    pub spread: (f64, f64),
    /// Rounds with a finite figure.
    pub rounds: usize,
    /// Rounds in all.
    values: usize,
    /// The smallest finite figure.
    least: f64,
}

impl Ratio {
    pub fn of(v: Vec<f64>) -> Ratio {
        let values = v.len();
        let v = sorted(v);
        Ratio {
            median: quantile(&v, 0.5),
            spread: (quantile(&v, 0.25), quantile(&v, 0.75)),
            rounds: v.len(),
            values,
            least: v.first().copied().unwrap_or(f64::NAN),
        }
    }

    /// `0.982 [0.95–1.01]`, or `0.982` for fewer than two rounds.
    pub fn show(&self) -> String {
        if self.rounds < 2 {
            format!("{:.3}", self.median)
        } else {
            format!(
                "{:.3} [{:.2}–{:.2}]",
                self.median, self.spread.0, self.spread.1
            )
        }
    }

    /// Why this figure cannot be judged at all, if it cannot: no round, a round that is not a
    /// positive number, or a median outside its own quartiles.
    fn meaningless(&self) -> Option<&'static str> {
        let (q1, q3) = self.spread;
        if self.rounds == 0 || !self.median.is_finite() {
            Some("no figure")
        } else if self.rounds < self.values {
            Some("a round's figure is not a number")
        } else if self.least <= 0.0 {
            Some("a round's figure is zero or negative: the noise is larger than the effect")
        } else if !(q1 <= self.median && self.median <= q3) {
            Some("the median lies outside its quartiles")
        } else {
            None
        }
    }

    /// This figure (its rounds' figures) against a target: "met" only when the whole quartile
    /// range is on the good side of `limit`, "not met" when the whole range is on the bad
    /// side. Otherwise "inconclusive", with why: the range straddles the limit (this
    /// machine's noise decides nothing then), there is one round (no spread to judge), or a
    /// round's figure is zero, negative or not a number (a cost or a ratio of costs can be
    /// none of these: the noise is larger than what is measured, and its median means
    /// nothing).
    pub fn against(&self, limit: f64, better: Better) -> String {
        if let Some(why) = self.meaningless() {
            return format!("inconclusive: {why}");
        }
        if self.rounds < 2 {
            return "inconclusive: one round, no spread".into();
        }
        let (q1, q3) = self.spread;
        let (met, missed) = match better {
            Better::Higher => (q1 >= limit, q3 < limit),
            Better::Lower => (q3 <= limit, q1 > limit),
        };
        if met {
            "met".into()
        } else if missed {
            "**not met**".into()
        } else {
            format!("inconclusive: the quartiles straddle {limit}")
        }
    }

    /// This current/baseline ratio's verdict (see [`change`]); "inconclusive" with why when
    /// the ratio cannot be judged.
    pub fn verdict(&self, better: Better) -> String {
        match self.meaningless() {
            Some(why) => format!("inconclusive: {why}"),
            None => change(self.spread, better).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Better, Ratio, change, median, quartiles};

    fn against(v: &[f64], limit: f64, better: Better) -> String {
        Ratio::of(v.to_vec()).against(limit, better)
    }

    #[test]
    fn a_target_is_met_only_when_the_quartiles_are_inside_it() {
        let lower = |v: &[f64]| against(v, 1.03, Better::Lower);
        assert_eq!(lower(&[0.98, 1.0, 1.02]), "met");
        assert!(lower(&[1.01, 1.04, 1.08]).starts_with("inconclusive"));
        assert_eq!(lower(&[1.04, 1.05, 1.08]), "**not met**");
        assert_eq!(against(&[610e3, 650e3], 600e3, Better::Higher), "met");
        assert!(
            against(&[570e3, 590e3, 650e3, 660e3], 600e3, Better::Higher)
                .starts_with("inconclusive")
        );
        assert!(lower(&[f64::NAN, 1.0]).starts_with("inconclusive"));
    }

    #[test]
    fn a_negative_or_lone_figure_is_never_met() {
        // The smoke run of a fresh clone once printed "TCP -20.77× (met)".
        assert!(against(&[-20.77], 1.2, Better::Lower).starts_with("inconclusive"));
        assert!(against(&[-20.0, 0.5, 0.6, 0.7], 1.2, Better::Lower).starts_with("inconclusive"));
        assert!(against(&[0.5], 1.2, Better::Lower).starts_with("inconclusive"));
        assert!(
            Ratio::of(vec![-1.0, 1.0, 1.0])
                .verdict(Better::Lower)
                .starts_with("inconclusive")
        );
    }

    #[test]
    fn the_median_lies_inside_its_quartiles() {
        for v in [
            vec![0.22, 1.09, 1.79, 1.0, 0.5],
            vec![1.0, 2.0],
            vec![5.0, 1.0, 9.0, 2.0, 2.5, 100.0],
        ] {
            let m = median(v.clone());
            let (q1, q3) = quartiles(v);
            assert!(q1 <= m && m <= q3, "{q1} {m} {q3}");
        }
        assert_eq!(quartiles(vec![1.0, 2.0, 3.0, 4.0, 5.0]), (2.0, 4.0));
        assert_eq!(quartiles(vec![1.0, 2.0, 3.0, 4.0]), (1.75, 3.25));
    }

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert!(median(vec![f64::NAN]).is_nan());
    }

    #[test]
    fn verdicts_on_ratios() {
        assert_eq!(change((0.98, 1.10), Better::Higher), "not worse");
        assert_eq!(change((0.80, 0.95), Better::Higher), "**worse**");
        assert_eq!(change((0.90, 1.05), Better::Higher), "inconclusive");
        assert_eq!(change((0.90, 1.02), Better::Lower), "not worse");
        assert_eq!(change((1.05, 1.20), Better::Lower), "**worse**");
        assert_eq!(change((0.95, 1.10), Better::Lower), "inconclusive");
        assert_eq!(change((0.5, 0.5), Better::Higher), "**worse**");
        assert_eq!(change((f64::NAN, 1.0), Better::Higher), "inconclusive");
    }
}
