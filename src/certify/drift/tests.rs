use super::*;

fn cfg() -> DriftConfig {
    DriftConfig::default()
}

#[test]
fn medians_odd_even_and_empty() {
    assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    assert_eq!(median(&[]), None);
    assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0), "non-finite values are ignored");
}

#[test]
fn the_bound_is_k_robust_sigmas_or_the_relative_floor() {
    // basis 10, 11, 12, 13, 30: median 12, |x-12| = 2,1,0,1,18 → MAD 1; 5×1.4826 = 7.413.
    let b = [10.0, 11.0, 12.0, 13.0, 30.0];
    let d = compare(Basis::Own, &b, 19.0, 3, &cfg()).unwrap();
    assert_eq!((d.median, d.mad), (12.0, 1.0));
    assert!((d.bound - 7.413).abs() < 1e-9);
    assert!(!d.outlier, "7 from the median is within 7.413");
    assert!(compare(Basis::Own, &b, 19.5, 3, &cfg()).unwrap().outlier, "7.5 is not");
    assert!((compare(Basis::Own, &b, 19.5, 3, &cfg()).unwrap().relative - 0.625).abs() < 1e-12);
    // A steady basis (MAD 0): the 5 % floor decides. 100 → bound 5.
    let s = [100.0; 4];
    assert!(!compare(Basis::Own, &s, 104.9, 3, &cfg()).unwrap().outlier);
    assert!(compare(Basis::Own, &s, 105.1, 3, &cfg()).unwrap().outlier);
    assert!(compare(Basis::Own, &s, 94.9, 3, &cfg()).unwrap().outlier, "faster is drift too");
    assert!(compare(Basis::Own, &s, f64::NAN, 3, &cfg()).unwrap().outlier, "no number is an outlier");
}

#[test]
fn too_little_evidence_judges_nothing() {
    assert!(compare(Basis::Own, &[1.0, 1.0], 9.0, 3, &cfg()).is_none());
    let mut h = SlotHistory::default();
    // The first three canaries build the history whatever they are (no fleet).
    for (i, t) in [1.0, 5.0, 1.0].into_iter().enumerate() {
        assert!(matches!(record(&mut h, t, i as i64, &[], &cfg()), Verdict::Good(d) if d.is_empty()));
    }
    assert_eq!(h.samples, [1.0, 5.0, 1.0]);
    assert_eq!(h.last_good_at, Some(2));
}

#[test]
fn consecutive_outliers_quarantine_and_a_good_sample_resets() {
    let mut h = SlotHistory { samples: vec![1.0; 5], strikes: 0, last_good_at: Some(10) };
    let v = record(&mut h, 1.2, 11, &[], &cfg());
    assert!(matches!(v, Verdict::Suspect { strikes: 1, .. }), "{v:?}");
    assert_eq!(h.samples.len(), 5, "an outlier is not recorded as good");
    assert_eq!(h.last_good_at, Some(10));
    assert!(matches!(record(&mut h, 1.01, 12, &[], &cfg()), Verdict::Good(_)), "back in bounds");
    assert_eq!((h.strikes, h.last_good_at), (0, Some(12)));
    assert!(matches!(record(&mut h, 1.3, 13, &[], &cfg()), Verdict::Suspect { strikes: 1, .. }));
    let v = record(&mut h, 1.4, 14, &[], &cfg());
    let Verdict::Quarantine { strikes: 2, deviations } = v else { panic!("{v:?}") };
    assert_eq!(deviations.len(), 1);
    assert_eq!(deviations[0].basis, Basis::Own);
    assert!((deviations[0].relative - 0.4).abs() < 1e-12);
    assert_eq!(h.last_good_at, Some(12), "the last good canary is still the one before the drift");
}

#[test]
fn the_fleet_catches_a_slot_that_was_slow_from_the_start() {
    // Its own history is steady (it has always been 30 % slow); the other slots are not.
    let mut h = SlotHistory { samples: vec![1.3; 5], ..Default::default() };
    let fleet = [1.0, 1.01, 0.99, 1.0];
    let v = record(&mut h, 1.3, 1, &fleet, &cfg());
    let Verdict::Suspect { deviations, .. } = v else { panic!("{v:?}") };
    let own = deviations.iter().find(|d| d.basis == Basis::Own).unwrap();
    let fleet_d = deviations.iter().find(|d| d.basis == Basis::Fleet).unwrap();
    assert!(!own.outlier && fleet_d.outlier);
    // With fewer than 3 other slots the fleet does not judge.
    let mut h = SlotHistory { samples: vec![1.3; 5], ..Default::default() };
    assert!(matches!(record(&mut h, 1.3, 1, &fleet[..2], &cfg()), Verdict::Good(_)));
}

#[test]
fn the_history_is_bounded_oldest_out() {
    let c = DriftConfig { history: 3, min_history: 100, ..cfg() };
    let mut h = SlotHistory::default();
    for i in 0..5 {
        record(&mut h, 1.0 + f64::from(i) / 100.0, i64::from(i), &[], &c);
    }
    assert_eq!(h.samples, [1.02, 1.03, 1.04]);
}

#[test]
fn one_strike_quarantines_when_configured_and_zero_means_one() {
    for consecutive in [0, 1] {
        let c = DriftConfig { consecutive, ..cfg() };
        let mut h = SlotHistory { samples: vec![1.0; 3], ..Default::default() };
        assert!(matches!(record(&mut h, 2.0, 1, &[], &c), Verdict::Quarantine { strikes: 1, .. }));
    }
}
