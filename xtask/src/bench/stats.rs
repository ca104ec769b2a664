//! Figures from rounds: the median and quartiles the report prints, and its verdicts
//! against a target.

/// The median of the finite values (the mean of the middle two of an even count); NaN if none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    // An even count has two middle values: their mean, not the upper one (which leans high).
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

/// The first and third quartiles.
pub fn quartiles(mut v: Vec<f64>) -> (f64, f64) {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.75))
}

/// A target met or not, as the report says it.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

/// A target judged on a figure's quartiles (`(q1, q3)`): "met" only when the whole range is
/// on the good side of `limit`, "not met" when the whole range is on the bad side, and
/// "inconclusive" when it straddles the limit (this machine's noise decides nothing then).
pub fn against(q: (f64, f64), limit: f64, better: Better) -> &'static str {
    let (q1, q3) = q;
    if !q1.is_finite() || !q3.is_finite() {
        return "inconclusive";
    }
    let (met, missed) = match better {
        Better::Higher => (q1 >= limit, q3 < limit),
        Better::Lower => (q3 <= limit, q1 > limit),
    };
    if met {
        "met"
    } else if missed {
        "**not met**"
    } else {
        "inconclusive"
    }
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
    pub rounds: usize,
}

impl Ratio {
    pub fn of(v: Vec<f64>) -> Ratio {
        let rounds = v.iter().filter(|x| x.is_finite()).count();
        Ratio {
            median: median(v.clone()),
            spread: quartiles(v),
            rounds,
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

    pub fn verdict(&self, better: Better) -> &'static str {
        change(self.spread, better)
    }
}

#[cfg(test)]
mod tests {
    use super::{Better, against, change, median};

    #[test]
    fn a_target_is_met_only_when_the_quartiles_are_inside_it() {
        assert_eq!(against((0.98, 1.02), 1.03, Better::Lower), "met");
        assert_eq!(against((1.01, 1.08), 1.03, Better::Lower), "inconclusive");
        assert_eq!(against((1.04, 1.08), 1.03, Better::Lower), "**not met**");
        assert_eq!(against((610e3, 650e3), 600e3, Better::Higher), "met");
        assert_eq!(
            against((590e3, 650e3), 600e3, Better::Higher),
            "inconclusive"
        );
        assert_eq!(
            against((f64::NAN, 1.0), 1.03, Better::Lower),
            "inconclusive"
        );
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
