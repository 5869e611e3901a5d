//! Hand-computed cases for the parity gate. Each comment gives the pair counts the figures come
//! from (n₀ pairs, n₁ reference ties, n₂ candidate ties, C concordant, D discordant).

use super::*;

fn times(entries: &[(&str, f64)]) -> BTreeMap<String, f64> {
    entries.iter().map(|&(k, t)| (k.to_string(), t)).collect()
}

fn defaults() -> ParityThresholds {
    ParityThresholds::default()
}

fn with_k(top_k: u32) -> ParityThresholds {
    ParityThresholds { top_k, ..ParityThresholds::default() }
}

fn eval(r: &[(&str, f64)], c: &[(&str, f64)], t: &ParityThresholds) -> ParityReport {
    evaluate(&times(r), &times(c), t).unwrap()
}

fn change(kernel: &str, reference_rank: u32, candidate_rank: u32) -> RankChange {
    RankChange { kernel: kernel.into(), reference_rank, candidate_rank }
}

const ABCD: &[(&str, f64)] = &[("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0)];
/// a and b are 2 % apart: tied under the default 5 % epsilon.
const CLOSE: &[(&str, f64)] = &[("a", 1.00), ("b", 1.02), ("c", 2.0), ("d", 3.0)];

const ALL_PASS: ParityChecks = ParityChecks {
    complete: true,
    kendall_tau: true,
    inversion_rate: true,
    top_k_overlap: true,
    top_k_mean_displacement: true,
    tolerant_rank_changes: true,
};

#[test]
fn seed_defaults() {
    let t = ParityThresholds::default();
    assert_eq!(t.tie_epsilon, 0.05);
    assert_eq!(t.top_k, 20);
    assert_eq!(t.max_inversion_rate, 0.025);
    assert_eq!(t.min_kendall_tau, 0.96);
    assert_eq!(t.max_top_k_mean_displacement, 4.0);
    assert_eq!(t.min_top_k_overlap, 0.80);
    assert_eq!(t.max_tolerant_rank_changes, 20);
}

#[test]
fn tie_relation_is_relative_to_the_faster_time() {
    assert!(tied(1.0, 1.04, 0.05));
    assert!(tied(1.04, 1.0, 0.05));
    assert!(!tied(1.0, 1.06, 0.05));
    // 5.2 % of the faster time, 4.9 % of the slower: relative to the faster, so not tied.
    assert!(!tied(1.0, 1.052, 0.05));
    assert!(tied(2.0, 2.0, 0.0), "exact ties are ties even with epsilon 0");
    assert!(!tied(1.0, 1.000_000_1, 0.0));
    assert!(tied(100.0, 104.0, 0.05) && !tied(100.0, 106.0, 0.05), "scale-free");
}

#[test]
fn identical_rankings_pass_with_perfect_figures() {
    // Times scaled by 1.5: the same ranking. n0 = 6, no ties, C = 6.
    let scaled: Vec<(&str, f64)> = ABCD.iter().map(|&(k, t)| (k, t * 1.5)).collect();
    let r = eval(ABCD, &scaled, &defaults());
    assert_eq!(r.compared, 4);
    assert_eq!(r.kendall_tau, Some(1.0));
    assert_eq!(r.inversion_rate, Some(0.0));
    assert_eq!((r.concordant_pairs, r.discordant_pairs, r.reference_ordered_pairs), (6, 0, 6));
    assert_eq!(r.top_k, 4);
    assert_eq!(r.top_k_overlap, Some(1.0));
    assert_eq!(r.top_k_mean_displacement, Some(0.0));
    assert_eq!(r.tolerant_rank_changes, 0);
    assert_eq!(r.checks, ALL_PASS);
    assert!(r.passed);
}

#[test]
fn identical_rankings_with_a_close_pair_score_tau_one() {
    // (a,b) tied on both sides: n1 = n2 = 1, C = 5, tau = 5 / sqrt(5 * 5).
    let r = eval(CLOSE, CLOSE, &defaults());
    assert_eq!(r.kendall_tau, Some(1.0));
    assert_eq!(r.inversion_rate, Some(0.0));
    assert_eq!(r.reference_ordered_pairs, 5);
    assert!(r.passed);
}

#[test]
fn swapping_a_close_pair_within_epsilon_is_no_inversion() {
    // Candidate a = 1.02, b = 1.00: tied on both sides, C = 5, D = 0 -> tau 1, inversion 0.
    // Strict ranks swap (displacement (1 + 1 + 0 + 0) / 4), but both stay inside the
    // reference's tolerant interval [1, 2]: no tolerant rank change.
    let cand = [("a", 1.02), ("b", 1.00), ("c", 2.0), ("d", 3.0)];
    let r = eval(CLOSE, &cand, &defaults());
    assert_eq!(r.kendall_tau, Some(1.0));
    assert_eq!(r.inversion_rate, Some(0.0));
    assert_eq!(r.discordant_pairs, 0);
    assert_eq!(r.top_k_overlap, Some(1.0));
    assert_eq!(r.top_k_mean_displacement, Some(0.5));
    assert_eq!(r.tolerant_rank_changes, 0);
    assert!(r.rank_changes.is_empty());
    assert!(r.passed);
}

#[test]
fn a_close_pair_the_candidate_separates_costs_tau_but_is_no_inversion() {
    // Candidate a = 1.5, b = 1.0: (a,b) tied in the reference only. n1 = 1, n2 = 0, C = 5,
    // D = 0: tau = 5 / sqrt(5 * 6) = 0.9129 < 0.96, inversion 0 / 5.
    let cand = [("a", 1.5), ("b", 1.0), ("c", 2.0), ("d", 3.0)];
    let r = eval(CLOSE, &cand, &defaults());
    assert_eq!(r.kendall_tau, Some(5.0 / 30f64.sqrt()));
    assert_eq!(r.inversion_rate, Some(0.0));
    assert_eq!(r.tolerant_rank_changes, 0);
    assert_eq!(r.checks, ParityChecks { kendall_tau: false, ..ALL_PASS });
    assert!(!r.passed);
}

#[test]
fn swapping_a_pair_beyond_epsilon_is_an_inversion() {
    // Candidate a = 2, b = 1: (a,b) discordant, 5 others concordant. tau = (5 - 1) / 6,
    // inversion 1 / 6, displacement (1 + 1) / 4, a and b both moved outside [r, r].
    let cand = [("a", 2.0), ("b", 1.0), ("c", 3.0), ("d", 4.0)];
    let r = eval(ABCD, &cand, &defaults());
    assert_eq!(r.kendall_tau, Some(4.0 / 6.0));
    assert_eq!(r.inversion_rate, Some(1.0 / 6.0));
    assert_eq!((r.concordant_pairs, r.discordant_pairs), (5, 1));
    assert_eq!(r.top_k_overlap, Some(1.0));
    assert_eq!(r.top_k_mean_displacement, Some(0.5));
    assert_eq!(r.tolerant_rank_changes, 2);
    assert_eq!(r.rank_changes, vec![change("a", 1, 2), change("b", 2, 1)]);
    assert_eq!(r.checks, ParityChecks { kendall_tau: false, inversion_rate: false, ..ALL_PASS });
    assert!(!r.passed);
}

#[test]
fn a_swap_across_the_top_k_boundary_costs_overlap() {
    // K = 2, candidate swaps b and c: reference top {a, b}, candidate top {a, c}: overlap 1/2;
    // displacement over {a, b}: (0 + 1) / 2.
    let cand = [("a", 1.0), ("b", 3.0), ("c", 2.0), ("d", 4.0)];
    let r = eval(ABCD, &cand, &with_k(2));
    assert_eq!(r.top_k, 2);
    assert_eq!(r.top_k_overlap, Some(0.5));
    assert_eq!(r.top_k_mean_displacement, Some(0.5));
    assert!(!r.checks.top_k_overlap);
    assert!(r.checks.top_k_mean_displacement);
}

#[test]
fn overlap_exactly_at_the_threshold_passes() {
    // K = 5 over 6 kernels, e and f swapped: top {a..e} vs {a, b, c, d, f}: 4/5 = 0.8 >= 0.8.
    let reference = [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0), ("e", 5.0), ("f", 6.0)];
    let cand = [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0), ("e", 6.0), ("f", 5.0)];
    let r = eval(&reference, &cand, &with_k(5));
    assert_eq!(r.top_k_overlap, Some(0.8));
    assert!(r.checks.top_k_overlap);
    // The same case one kernel tighter: 2 tolerant changes against a maximum of 2, then 1.
    let at = ParityThresholds { max_tolerant_rank_changes: 2, ..with_k(5) };
    assert!(eval(&reference, &cand, &at).checks.tolerant_rank_changes);
    let below = ParityThresholds { max_tolerant_rank_changes: 1, ..with_k(5) };
    assert!(!eval(&reference, &cand, &below).checks.tolerant_rank_changes);
}

#[test]
fn reversed_ranking() {
    // D = 6, C = 0: tau -1, inversion 1. Ranks 1<->4, 2<->3: displacement (3+1+1+3)/4 = 2.
    let cand = [("a", 4.0), ("b", 3.0), ("c", 2.0), ("d", 1.0)];
    let r = eval(ABCD, &cand, &defaults());
    assert_eq!(r.kendall_tau, Some(-1.0));
    assert_eq!(r.inversion_rate, Some(1.0));
    assert_eq!(r.top_k_overlap, Some(1.0), "k = 4 = n: every kernel is in both tops");
    assert_eq!(r.top_k_mean_displacement, Some(2.0));
    assert_eq!(r.tolerant_rank_changes, 4);
    // K = 2: tops {a, b} and {d, c} are disjoint; displacement over {a, b}: (3 + 1) / 2.
    let r2 = eval(ABCD, &cand, &with_k(2));
    assert_eq!(r2.top_k_overlap, Some(0.0));
    assert_eq!(r2.top_k_mean_displacement, Some(2.0));
    assert!(!r.passed && !r2.passed);
}

#[test]
fn exact_ties_on_both_sides_with_epsilon_zero() {
    // Reference a = b; candidate b = c. n0 = 6, n1 = 1 (a,b), n2 = 1 (b,c), C = 4, D = 0:
    // tau = 4 / sqrt(5 * 5) = 0.8 (scipy.stats.kendalltau([1,1,2,3], [1,2,2,3]) = 0.8).
    let eps0 = ParityThresholds { tie_epsilon: 0.0, ..defaults() };
    let reference = [("a", 1.0), ("b", 1.0), ("c", 2.0), ("d", 3.0)];
    let cand = [("a", 1.0), ("b", 2.0), ("c", 2.0), ("d", 3.0)];
    let r = eval(&reference, &cand, &eps0);
    assert_eq!(r.kendall_tau, Some(0.8));
    assert_eq!(r.inversion_rate, Some(0.0));
    assert_eq!(r.reference_ordered_pairs, 5);
    // Strict ranks break exact ties by name: a1 b2 c3 d4 on both sides.
    assert_eq!(r.top_k_mean_displacement, Some(0.0));
    assert_eq!(r.tolerant_rank_changes, 0);
}

#[test]
fn a_reference_that_ties_everything_certifies_nothing() {
    // 1.00, 1.02, 1.04: every pair within 5 %: n1 = n0 = 3: tau and inversion rate undefined.
    let reference = [("a", 1.00), ("b", 1.02), ("c", 1.04)];
    let cand = [("a", 3.0), ("b", 2.0), ("c", 1.0)];
    let r = eval(&reference, &cand, &defaults());
    assert_eq!(r.reference_ordered_pairs, 0);
    assert_eq!(r.kendall_tau, None);
    assert_eq!(r.inversion_rate, None);
    assert_eq!(r.tolerant_rank_changes, 0, "every rank is allowed within a tie");
    assert!(!r.checks.kendall_tau && !r.checks.inversion_rate && !r.passed);
}

#[test]
fn a_candidate_that_ties_everything_fails_tau() {
    // n2 = n0: tau undefined; no pair is discordant (inversion 0), yet the gate fails.
    let cand = [("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 1.0)];
    let r = eval(ABCD, &cand, &defaults());
    assert_eq!(r.kendall_tau, None);
    assert_eq!(r.inversion_rate, Some(0.0));
    assert!(!r.checks.kendall_tau && !r.passed);
}

#[test]
fn non_transitive_ties_are_judged_pair_by_pair() {
    // 1.00 ~ 1.04 ~ 1.08 but 1.00 < 1.08 beyond 5 %. Candidate reverses: (a,c) discordant,
    // (a,b), (b,c) tied on both sides: n1 = n2 = 2, C = 0, D = 1: tau = -1 / sqrt(1 * 1),
    // inversion 1 / 1. Tolerant intervals a [1,2], b [1,3], c [2,3];
    // candidate ranks a 3, b 2, c 1: a and c moved.
    let reference = [("a", 1.00), ("b", 1.04), ("c", 1.08)];
    let cand = [("a", 1.08), ("b", 1.04), ("c", 1.00)];
    let r = eval(&reference, &cand, &defaults());
    assert_eq!(r.kendall_tau, Some(-1.0));
    assert_eq!(r.inversion_rate, Some(1.0));
    assert_eq!(r.rank_changes, vec![change("a", 1, 3), change("c", 3, 1)]);
}

#[test]
fn fewer_kernels_than_k() {
    let reference = [("a", 1.0), ("b", 2.0), ("c", 3.0)];
    let r = eval(&reference, &reference, &defaults());
    assert_eq!(r.top_k, 3);
    assert_eq!(r.top_k_overlap, Some(1.0));
    assert!(r.passed);
    // One kernel: no pair to rank, so no tau: the gate fails.
    let one = [("a", 1.0)];
    let r1 = eval(&one, &one, &defaults());
    assert_eq!((r1.compared, r1.top_k), (1, 1));
    assert_eq!((r1.kendall_tau, r1.inversion_rate), (None, None));
    assert_eq!((r1.top_k_overlap, r1.top_k_mean_displacement), (Some(1.0), Some(0.0)));
    assert!(!r1.passed);
}

#[test]
fn missing_kernels_fail_the_gate_and_extra_ones_are_ignored() {
    let cand = [("a", 1.0), ("b", 2.0), ("c", 3.0), ("x", 0.5)];
    let r = eval(ABCD, &cand, &defaults());
    assert_eq!(r.compared, 3);
    assert_eq!(r.missing, vec!["d".to_string()]);
    assert_eq!(r.unexpected, vec!["x".to_string()]);
    assert_eq!(r.kendall_tau, Some(1.0), "figures cover the compared kernels");
    assert_eq!(r.checks, ParityChecks { complete: false, ..ALL_PASS });
    assert!(!r.passed);

    let none = eval(ABCD, &[], &defaults());
    assert_eq!(none.compared, 0);
    assert_eq!(none.missing.len(), 4);
    assert_eq!((none.kendall_tau, none.top_k_overlap, none.top_k_mean_displacement), (None, None, None));
    assert!(!none.passed);
}

#[test]
fn bad_times_are_rejected_with_a_typed_error() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -1.0] {
        let reference = times(&[("a", 1.0), ("k", bad)]);
        let good = times(&[("a", 1.0), ("k", 2.0)]);
        match evaluate(&reference, &good, &defaults()) {
            Err(ParityError::InvalidTime { side: Side::Reference, kernel, .. }) => assert_eq!(kernel, "k"),
            other => panic!("reference time {bad}: {other:?}"),
        }
        match evaluate(&good, &reference, &defaults()) {
            Err(ParityError::InvalidTime { side: Side::Candidate, kernel, .. }) => assert_eq!(kernel, "k"),
            other => panic!("candidate time {bad}: {other:?}"),
        }
    }
    // Unexpected candidate kernels are checked too.
    let err = evaluate(&times(ABCD), &times(&[("z", f64::NAN)]), &defaults()).unwrap_err();
    assert!(err.to_string().contains("candidate time of kernel \"z\" is NaN"), "{err}");
    assert_eq!(evaluate(&BTreeMap::new(), &times(ABCD), &defaults()), Err(ParityError::EmptyReference));
}

#[test]
fn bad_thresholds_are_rejected() {
    let cases = [
        ParityThresholds { tie_epsilon: f64::NAN, ..defaults() },
        ParityThresholds { tie_epsilon: -0.01, ..defaults() },
        ParityThresholds { min_kendall_tau: f64::INFINITY, ..defaults() },
        ParityThresholds { top_k: 0, ..defaults() },
    ];
    for t in cases {
        let result = evaluate(&times(ABCD), &times(ABCD), &t);
        assert!(matches!(result, Err(ParityError::InvalidThreshold { .. })), "{t:?}: {result:?}");
    }
}

#[test]
fn report_and_thresholds_serialise_for_a_status() {
    let parsed: ParityThresholds = serde_json::from_str(r#"{"topK": 10}"#).unwrap();
    assert_eq!(parsed, ParityThresholds { top_k: 10, ..defaults() });
    let cand = [("a", 2.0), ("b", 1.0), ("c", 3.0)];
    let r = eval(ABCD, &cand, &defaults());
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["kendallTau"], serde_json::json!(1.0 / 3.0));
    assert_eq!(json["missing"], serde_json::json!(["d"]));
    assert_eq!(json["checks"]["complete"], serde_json::json!(false));
    assert_eq!(json["thresholds"]["tieEpsilon"], serde_json::json!(0.05));
    let back: ParityReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, r);
    // An undefined figure is null, never NaN.
    let one = eval(&[("a", 1.0)], &[("a", 1.0)], &defaults());
    assert_eq!(serde_json::to_value(&one).unwrap()["kendallTau"], serde_json::Value::Null);
}
