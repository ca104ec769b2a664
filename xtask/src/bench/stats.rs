//! Figures from rounds: the median and quartiles the report prints, and its verdicts
//! against a target.

/// The median of the finite values (the upper one of an even count); NaN if none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
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
