use super::*;

fn suite() -> Suite {
    let k = |name: &str, t: f64| {
        format!(
            "  - {{name: {name}, referenceSeconds: {t}, config: {{lang: py, main: eval.py, sources: {{eval.py: x}}, benchmarks: [{{size: 1}}]}}}}\n"
        )
    };
    Suite::parse(&format!("kernels:\n{}{}{}{}", k("a", 1e-3), k("b", 2e-3), k("c", 2.1e-3), k("d", 1e-2))).unwrap()
}

fn report(times: &[(&str, f64)], at: i64) -> String {
    CertReport {
        v: crate::certify::report::VERSION,
        at,
        node: "n".into(),
        slot: "2".into(),
        times: times.iter().map(|(k, t)| (k.to_string(), *t)).collect(),
        passed: true,
        ..Default::default()
    }
    .to_message()
}

const GOOD: &[(&str, f64)] = &[("a", 1e-3), ("b", 2e-3), ("c", 2.1e-3), ("d", 1e-2)];
const FLIPPED: &[(&str, f64)] = &[("a", 1e-3), ("b", 2.2e-3), ("c", 1.89e-3), ("d", 1e-2)];

fn now() -> Timestamp {
    Timestamp::from_second(1_790_000_100).unwrap()
}

#[test]
fn a_report_certifies_or_fails_a_slot_once_per_pod() {
    let mut c = NodeCertification::default();
    let s = suite();
    let t = ParityThresholds::default();
    let a = apply_report(&mut c, "ns/p", "2", "uid-1", 0, &report(GOOD, 1_790_000_000), Ok(&s), &t).unwrap();
    assert_eq!((a.note.warning, a.note.reason), (false, "SlotCertified"));
    assert!(a.note.message.contains("Kendall τ 1.0000"), "{}", a.note.message);
    assert_eq!(c.slots[0].state, "Certified");
    assert_eq!(c.slots[0].epoch.as_deref(), Some("1790000000"));
    assert!(apply_report(&mut c, "ns/p", "2", "uid-1", 0, &report(FLIPPED, 1), Ok(&s), &t).is_none(), "read once");
    // Another pod on slot 1 flips b and c: τ-b below 0.96 → fails.
    let a = apply_report(&mut c, "ns/p", "1", "uid-2", 3, &report(FLIPPED, 1_790_000_050), Ok(&s), &t).unwrap();
    assert_eq!((a.note.warning, a.note.reason), (true, "SlotCertificationFailed"));
    let s1 = c.slots.iter().find(|x| x.slot == "1").unwrap();
    assert_eq!((s1.state.as_str(), s1.epoch.as_deref()), ("Failed", None));
    let tau = s1.figures.as_ref().unwrap().kendall_tau.unwrap();
    // b and c are within the 5 % tie epsilon in the reference: τ-b = 5 / √(5 × 6).
    assert!((tau - 5.0 / 30f64.sqrt()).abs() < 1e-9, "{tau} {:?}", s1.figures);
    assert_eq!(c.slots.iter().map(|s| s.slot.as_str()).collect::<Vec<_>>(), ["1", "2"], "sorted by slot");
    summarize(&mut c, Some(1), now());
    assert_eq!((c.summary.as_str(), c.certified, c.failed), ("1/2", 1, 1));
    assert!((c.min_kendall_tau.unwrap() - 5.0 / 30f64.sqrt()).abs() < 1e-9);
    let cond = c.conditions.iter().find(|x| x.type_ == "Certified").unwrap();
    assert_eq!((cond.status.as_str(), cond.reason.as_str()), ("False", "SlotsNotCertified"));
    assert!(cond.message.contains("slot 1: Failed"), "{}", cond.message);
}

#[test]
fn broken_reports_and_suites_are_errors_that_say_why() {
    let mut c = NodeCertification::default();
    let s = suite();
    let t = ParityThresholds::default();
    let a = apply_report(&mut c, "ns/p", "0", "u1", 2, "certify: the suite has 1 kernels", Ok(&s), &t).unwrap();
    assert_eq!(a.note.reason, "CertificationError");
    assert!(c.slots[0].message.contains("exit code 2: certify: the suite has 1 kernels"), "{}", c.slots[0].message);
    let a = apply_report(&mut c, "ns/p", "0", "u2", 0, &report(GOOD, 5), Err("ConfigMap ns/x not found"), &t).unwrap();
    assert!(a.note.message.contains("ConfigMap ns/x not found"));
    assert_eq!(c.slots[0].state, "Error");
}

fn certified(slot: &str) -> NodeCertification {
    let mut c = NodeCertification::default();
    apply_report(&mut c, "ns/p", slot, "u", 0, &report(GOOD, 100), Ok(&suite()), &ParityThresholds::default()).unwrap();
    c
}

#[test]
fn drifting_canaries_quarantine_after_consecutive_outliers_and_recertification_ends_it() {
    let mut c = certified("2");
    let cfg = DriftConfig::default();
    for (i, t) in [2.0e-3, 2.01e-3, 1.99e-3].into_iter().enumerate() {
        assert_eq!(apply_canary(&mut c, "2", "b", t, 200 + i as i64, &[], &cfg, 300), CanaryApplied::Good);
    }
    assert_eq!(apply_canary(&mut c, "2", "b", 2.0e-3, 201, &[], &cfg, 300), CanaryApplied::Duplicate);
    assert!(matches!(apply_canary(&mut c, "2", "b", 2.4e-3, 210, &[], &cfg, 300), CanaryApplied::Suspect(_)));
    let CanaryApplied::Quarantined { note, suspect_since } =
        apply_canary(&mut c, "2", "b", 2.6e-3, 220, &[], &cfg, 300)
    else {
        panic!()
    };
    assert_eq!(suspect_since, Some(202), "the last good canary");
    assert!(note.message.contains("+30.0 %"), "{}", note.message);
    assert_eq!((c.slots[0].state.as_str(), c.slots[0].epoch.as_deref()), ("Quarantined", None));
    summarize(&mut c, None, now());
    assert_eq!(c.quarantined, 1);
    let q = c.conditions.iter().find(|x| x.type_ == "Quarantined").unwrap();
    assert_eq!((q.status.as_str(), q.reason.as_str()), ("True", "CanaryDrift"));
    assert_eq!(apply_canary(&mut c, "9", "b", 1.0, 1, &[], &cfg, 1), CanaryApplied::NoRecord);
    // The new pod certifies: the quarantine ends, the history starts over.
    let a =
        apply_report(&mut c, "ns/p", "2", "u-new", 0, &report(GOOD, 400), Ok(&suite()), &ParityThresholds::default())
            .unwrap();
    assert_eq!(a.ended_quarantine, Some(202));
    assert_eq!(c.slots[0].state, "Certified");
    assert!(c.slots[0].canary.is_none() && c.slots[0].quarantine.is_none());
}

#[test]
fn the_fleet_median_excludes_the_slot_itself_and_other_kernels() {
    let mut a = certified("0");
    let mut b = certified("0");
    let cfg = DriftConfig { min_history: 1, ..DriftConfig::default() };
    apply_canary(&mut a, "0", "b", 1.0, 1, &[], &cfg, 1);
    apply_canary(&mut b, "0", "b", 3.0, 1, &[], &cfg, 1);
    let nodes = [("gn-a", &a), ("gn-b", &b)];
    assert_eq!(fleet_medians(nodes, "gn-a", "0", "b"), [3.0]);
    assert_eq!(fleet_medians(nodes, "gn-c", "0", "b"), [1.0, 3.0]);
    assert!(fleet_medians(nodes, "gn-c", "0", "other").is_empty());
}

#[test]
fn a_driver_or_product_change_or_age_expires_a_certification() {
    let fresh = || {
        let mut c = certified("0");
        c.slots[0].node_driver = "550.54.15".into();
        c.slots[0].node_product = "NVIDIA-H100-80GB-HBM3".into();
        c
    };
    let (d, p) = ("550.54.15", "NVIDIA-H100-80GB-HBM3");
    let mut c = fresh();
    assert_eq!(expire(&mut c.slots[0], d, p, 100 + 3600, Some(7200)), None, "unchanged and young");
    assert_eq!(expire(&mut c.slots[0], d, p, 100 + 3600, None), None, "no schedule");
    let note = expire(&mut c.slots[0], "570.133.20", p, 200, None).unwrap();
    assert!(note.message.contains("driver changed from \"550.54.15\" to \"570.133.20\""), "{}", note.message);
    assert_eq!((c.slots[0].state.as_str(), c.slots[0].epoch.as_deref()), ("Expired", None));
    assert_eq!(expire(&mut c.slots[0], "x", "y", 0, None), None, "only a certified slot expires");
    let mut c = fresh();
    assert_eq!(expire(&mut c.slots[0], "", "", 200, None), None, "labels gone for a moment are no change");
    assert!(expire(&mut c.slots[0], d, "NVIDIA-A100", 200, None).unwrap().message.contains("product changed"));
    let mut c = fresh();
    assert!(expire(&mut c.slots[0], d, p, 100 + 7200, Some(7200)).unwrap().message.contains("2h old"));
}
