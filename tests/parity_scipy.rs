//! The parity gate's Kendall τ-b, checked independently against `scipy.stats.kendalltau`
//! (variant `b`, its default) on random cases with exact ties (fixed seed), epsilon 0.
//!
//! Needs `python3` with scipy (`pip install scipy`). Without it the test is skipped with a
//! message, unless `BENCHKITE_REQUIRE_SCIPY=1`, which makes a missing scipy a failure.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use benchkite::certify::parity::{ParityThresholds, evaluate};

/// splitmix64: a fixed-seed generator, so every run checks the same cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A time in seconds: from a small set of values (many exact ties) or continuous.
    fn time(&mut self, levels: u64) -> f64 {
        if levels == 0 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64 + 1e-3
        } else {
            (1 + self.below(levels)) as f64 * 0.25
        }
    }
}

fn scipy_available() -> bool {
    Command::new("python3").args(["-c", "import scipy.stats"]).output().is_ok_and(|o| o.status.success())
}

const PY_TAU: &str = r#"
import json, math, sys
from scipy.stats import kendalltau
for line in sys.stdin:
    x, y = json.loads(line)
    tau = kendalltau(x, y).statistic
    print(json.dumps(None if math.isnan(tau) else float(tau)))
"#;

#[test]
fn kendall_tau_b_agrees_with_scipy() {
    if !scipy_available() {
        let missing = "python3 with scipy is not available (pip install scipy)";
        let required = std::env::var("BENCHKITE_REQUIRE_SCIPY").as_deref() == Ok("1");
        assert!(!required, "parity_scipy: BENCHKITE_REQUIRE_SCIPY=1 but {missing}");
        eprintln!("parity_scipy: {missing}; skipping");
        return;
    }
    let thresholds = ParityThresholds { tie_epsilon: 0.0, ..ParityThresholds::default() };
    let mut rng = Rng(0x00D8_BB97_34D8_E99F);
    let mut cases: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    for case in 0..400u64 {
        let n = 1 + rng.below(40) as usize;
        // Tie density varies per side: 0 = continuous (no ties), 1 = everything tied.
        let (rl, cl) = (rng.below(12), rng.below(12));
        let reference: Vec<f64> = (0..n).map(|_| rng.time(rl)).collect();
        let candidate: Vec<f64> = if case % 5 == 0 {
            // Correlated candidates: the reference with a few perturbed kernels.
            reference.iter().map(|&t| if rng.below(4) == 0 { rng.time(cl) } else { t }).collect()
        } else {
            (0..n).map(|_| rng.time(cl)).collect()
        };
        cases.push((reference, candidate));
    }

    let mut stdin = String::new();
    for (x, y) in &cases {
        stdin.push_str(&serde_json::to_string(&(x, y)).unwrap());
        stdin.push('\n');
    }
    let mut child = Command::new("python3")
        .args(["-c", PY_TAU])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    child.stdin.take().expect("stdin is piped").write_all(stdin.as_bytes()).expect("write to python3");
    let out = child.wait_with_output().expect("python3 runs");
    assert!(out.status.success(), "python3 failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).expect("python3 prints UTF-8");
    let scipy: Vec<Option<f64>> = stdout.lines().map(|l| serde_json::from_str(l).expect("a tau or null")).collect();
    assert_eq!(scipy.len(), cases.len());

    let (mut with_ties, mut undefined) = (0, 0);
    for (i, ((x, y), expected)) in cases.iter().zip(&scipy).enumerate() {
        let name = |j: usize| format!("k{j:03}");
        let reference: BTreeMap<String, f64> = x.iter().enumerate().map(|(j, &t)| (name(j), t)).collect();
        let candidate: BTreeMap<String, f64> = y.iter().enumerate().map(|(j, &t)| (name(j), t)).collect();
        let report = evaluate(&reference, &candidate, &thresholds).expect("valid case");
        let ties = |v: &Vec<f64>| (0..v.len()).any(|a| (a + 1..v.len()).any(|b| v[a] == v[b]));
        if ties(x) || ties(y) {
            with_ties += 1;
        }
        match (report.kendall_tau, expected) {
            (Some(ours), Some(theirs)) => {
                assert!((ours - theirs).abs() <= 1e-9, "case {i}: ours {ours}, scipy {theirs}\nx = {x:?}\ny = {y:?}")
            }
            (None, None) => undefined += 1,
            (ours, theirs) => panic!("case {i}: ours {ours:?}, scipy {theirs:?}\nx = {x:?}\ny = {y:?}"),
        }
    }
    eprintln!("parity_scipy: {} cases agree with scipy ({with_ties} with ties, {undefined} undefined)", cases.len());
    assert!(with_ties > 200 && undefined > 0, "the cases exercise ties ({with_ties}) and undefined tau ({undefined})");
}
