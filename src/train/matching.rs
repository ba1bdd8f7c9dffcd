//! Which box query answers which ground-truth box: the assignment of least total cost (Hungarian algorithm,
//! `pathfinding`'s Kuhn–Munkres), as DETR-style detectors train. Queries left over learn "no object".
use pathfinding::prelude::{kuhn_munkres_min, Matrix};

use crate::{Error, Result};

/// Costs are scaled to integers for the exact integer Kuhn–Munkres: 1e-6 resolution, far below what training
/// can tell apart.
const SCALE: f64 = 1e6;

/// The least-cost one-to-one assignment of ground-truth boxes (rows) to queries (columns) of `cost[g][q]`:
/// returns, for each ground-truth box, its query. Needs at least as many queries as boxes (the caller keeps the
/// boxes that fit); costs must be finite.
pub fn hungarian_match(cost: &[Vec<f64>]) -> Result<Vec<usize>> {
    let rows = cost.len();
    if rows == 0 {
        return Ok(Vec::new());
    }
    let cols = cost[0].len();
    if cost.iter().any(|r| r.len() != cols) {
        return Err(Error::invalid("matching cost", "rows of different lengths"));
    }
    if rows > cols {
        return Err(Error::invalid(
            "matching cost",
            format!("{rows} boxes for {cols} queries"),
        ));
    }
    let mut values = Vec::with_capacity(rows * cols);
    for (g, r) in cost.iter().enumerate() {
        for (q, &c) in r.iter().enumerate() {
            if !c.is_finite() {
                return Err(Error::invalid(
                    "matching cost",
                    format!("box {g}, query {q}: {c}"),
                ));
            }
            values.push((c * SCALE).round() as i64);
        }
    }
    let m = Matrix::from_vec(rows, cols, values)
        .map_err(|e| Error::invalid("matching cost", e.to_string()))?;
    let (_, assignment) = kuhn_munkres_min(&m);
    Ok(assignment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The least total cost over every injective assignment, by enumeration.
    fn brute_force(cost: &[Vec<f64>]) -> f64 {
        fn go(cost: &[Vec<f64>], g: usize, used: &mut Vec<bool>) -> f64 {
            if g == cost.len() {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for q in 0..used.len() {
                if !used[q] {
                    used[q] = true;
                    best = best.min(cost[g][q] + go(cost, g + 1, used));
                    used[q] = false;
                }
            }
            best
        }
        go(cost, 0, &mut vec![false; cost[0].len()])
    }

    #[test]
    fn matches_brute_force_on_random_costs() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..300 {
            let rows = rng.random_range(1..=5);
            let cols = rng.random_range(rows..=7);
            let cost: Vec<Vec<f64>> = (0..rows)
                .map(|_| (0..cols).map(|_| rng.random_range(0.0..10.0)).collect())
                .collect();
            let a = hungarian_match(&cost).unwrap();
            let distinct: std::collections::BTreeSet<_> = a.iter().collect();
            assert_eq!(distinct.len(), rows, "one query per box");
            let total: f64 = a.iter().enumerate().map(|(g, &q)| cost[g][q]).sum();
            let best = brute_force(&cost);
            assert!(
                (total - best).abs() < 1e-4,
                "{total} vs {best} for {cost:?}"
            );
        }
    }

    #[test]
    fn bad_costs_are_refused() {
        assert!(hungarian_match(&[vec![1.0], vec![2.0]]).is_err());
        assert!(hungarian_match(&[vec![f64::NAN, 1.0]]).is_err());
        assert!(hungarian_match(&[vec![1.0, 2.0], vec![1.0]]).is_err());
        assert!(hungarian_match(&[]).unwrap().is_empty());
    }
}
