//! `benchkite run` signs its result (issue 17): with its queue's key file and the attempt's
//! `KERNELBOT_RUN_ID`, the `benchkite.result.sig` meta-data it reports verifies, for that
//! attempt only, both the summary meta-data value and the exact `result.json` bytes; without
//! a key the result goes unsigned, said once in the log; the key never shows.

#[path = "tasks/support.rs"]
mod support;

use benchkite::contract;
use benchkite::signing::{self, Key, Signed, Trust};
use serde_json::Value;
use support::*;

const MASTER_HEX: &str = "3f9a0c1e5b7d2468ace13579bdf02468ace13579bdf0246813579bdf02468ace";

fn master() -> Key {
    Key::parse(MASTER_HEX.as_bytes()).expect("test key")
}

/// Runs a vectoradd test with the simulator's meta-data file; returns the run, the
/// meta-data (key → value) and the exact result.json bytes.
fn signed_run(env: &[(&str, &str)]) -> (Run, std::collections::BTreeMap<String, String>, Vec<u8>) {
    let md = Scratch::new("md");
    let md_file = md.path().join("meta-data");
    let md_s = md_file.to_string_lossy().into_owned();
    let mut all = vec![("BUILDKITE_SIM_META_DATA_FILE", md_s.as_str())];
    all.extend_from_slice(env);
    let r = run_with(Some(&encode(&vectoradd("test", "ok"))), &all, &[]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    let text = std::fs::read_to_string(&md_file).unwrap_or_default();
    let meta = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["key"].as_str()?.to_string(), v["value"].as_str()?.to_string())))
        .collect();
    let bytes = std::fs::read(r.scratch.path().join("result.json")).expect("result.json");
    (r, meta, bytes)
}

#[test]
fn the_runner_signs_the_summary_and_result_json_for_its_attempt() {
    let keys = Scratch::new("keys");
    let key_file = keys.path().join("key");
    std::fs::write(&key_file, format!("{}\n", master().queue_key("gpu-q").to_hex())).expect("key file");
    let key_s = key_file.to_string_lossy().into_owned();
    let (r, meta, bytes) = signed_run(&[(signing::RESULT_KEY_FILE_ENV, &key_s), (signing::RUN_ID_ENV, "uid-7-1")]);
    let value = meta.get(contract::META_DATA_KEY).expect("summary meta-data");
    let sig = meta.get(signing::SIG_META_DATA_KEY).map(String::as_str);
    assert!(sig.is_some(), "no signature: {meta:?}\n{}", r.stderr());
    let m = master();
    let check = |queue, run, what, b: &[u8]| signing::check(Some(&m), Some(queue), run, what, b, sig);
    assert_eq!(check("gpu-q", "uid-7-1", Signed::MetaData, value.as_bytes()), Trust::Verified);
    assert_eq!(check("gpu-q", "uid-7-1", Signed::ResultJson, &bytes), Trust::Verified);
    // For that attempt and queue only, and those exact bytes only.
    assert!(matches!(check("gpu-q", "uid-7-2", Signed::MetaData, value.as_bytes()), Trust::NotTrusted(_)));
    assert!(matches!(check("other-q", "uid-7-1", Signed::ResultJson, &bytes), Trust::NotTrusted(_)));
    let mut tampered = bytes.clone();
    tampered.insert(1, b' ');
    assert!(matches!(check("gpu-q", "uid-7-1", Signed::ResultJson, &tampered), Trust::NotTrusted(_)));
    let forged = value.replace("\"passed\":true", "\"passed\":false");
    assert_ne!(&forged, value);
    assert!(matches!(check("gpu-q", "uid-7-1", Signed::MetaData, forged.as_bytes()), Trust::NotTrusted(_)));
    // The key shows nowhere the runner writes.
    let queue_hex = m.queue_key("gpu-q").to_hex();
    for (what, text) in [
        ("stderr", r.stderr()),
        ("stdout", String::from_utf8_lossy(&r.output.stdout).into_owned()),
        ("result.json", String::from_utf8_lossy(&bytes).into_owned()),
        ("meta-data", format!("{meta:?}")),
    ] {
        assert!(!text.contains(&queue_hex) && !text.contains(MASTER_HEX), "key material in {what}");
    }
    assert!(r.stderr().contains("signed for run uid-7-1"), "{}", r.stderr());
}

#[test]
fn without_a_usable_key_the_result_is_unsigned_and_the_log_says_so() {
    // No key file named, none at the default place (this host is not an agent pod).
    let (r, meta, _) = signed_run(&[(signing::RUN_ID_ENV, "uid-1")]);
    assert!(!meta.contains_key(signing::SIG_META_DATA_KEY), "{meta:?}");
    assert!(meta.contains_key(contract::META_DATA_KEY));
    assert!(r.stderr().contains("unsigned"), "{}", r.stderr());
    // A key file too short to be a key: unsigned, and its content is not echoed.
    let keys = Scratch::new("keys");
    let weak = keys.path().join("weak");
    std::fs::write(&weak, "canary-not-a-key\n").expect("write");
    let weak_s = weak.to_string_lossy().into_owned();
    let (r, meta, _) = signed_run(&[(signing::RESULT_KEY_FILE_ENV, &weak_s), (signing::RUN_ID_ENV, "uid-1")]);
    assert!(!meta.contains_key(signing::SIG_META_DATA_KEY));
    assert!(r.stderr().contains("unsigned") && !r.stderr().contains("canary-not-a-key"), "{}", r.stderr());
    // A good key but no run id: nothing to sign for.
    let good = keys.path().join("good");
    std::fs::write(&good, MASTER_HEX).expect("write");
    let good_s = good.to_string_lossy().into_owned();
    let (r, meta, _) = signed_run(&[(signing::RESULT_KEY_FILE_ENV, &good_s)]);
    assert!(!meta.contains_key(signing::SIG_META_DATA_KEY));
    assert!(r.stderr().contains(signing::RUN_ID_ENV), "{}", r.stderr());
}
