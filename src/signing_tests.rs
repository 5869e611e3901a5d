use super::*;

fn master() -> Key {
    Key::parse(b"00112233445566778899aabbccddeeff0123456789abcdef0f1e2d3c4b5a6978\n").expect("test key")
}

fn sig_for(queue: &str, run: &str, md: &str, rj: Option<&[u8]>) -> String {
    Signatures::new(&master().queue_key(queue).attempt_key(run), run, md, rj).to_value()
}

#[test]
fn secret_names_are_valid_and_distinct() {
    assert_eq!(result_key_secret_name("h100"), "h100-benchkite-result-key");
    let long_a = format!("{}a", "x".repeat(252));
    let long_b = format!("{}b", "x".repeat(252));
    let (a, b) = (result_key_secret_name(&long_a), result_key_secret_name(&long_b));
    assert!(a.len() <= 253 && b.len() <= 253);
    assert_ne!(a, b);
    // A multi-byte character across the cut does not panic.
    let wide = format!("{}é{}", "x".repeat(199), "y".repeat(100));
    assert!(result_key_secret_name(&wide).len() <= 253);
}

#[test]
fn key_files_are_hex_or_raw_and_long_enough() {
    let hex_key = master();
    assert_eq!(hex_key.to_hex(), "00112233445566778899aabbccddeeff0123456789abcdef0f1e2d3c4b5a6978");
    // Raw bytes, with or without a trailing newline, are the same key.
    let raw: Vec<u8> = (1u8..=40).collect();
    let mut with_nl = raw.clone();
    with_nl.extend_from_slice(b"\r\n");
    assert_eq!(Key::parse(&raw).map(|k| k.to_hex()), Key::parse(&with_nl).map(|k| k.to_hex()));
    assert_eq!(Key::parse(b"abcd\n"), Err(KeyError::TooShort { bytes: 2 }));
    assert_eq!(Key::parse(&[0u8; 31]), Err(KeyError::TooShort { bytes: 31 }));
    assert_eq!(Key::parse(&[b'a'; 64]), Err(KeyError::Weak), "64 hex 'a' is 32 bytes of 0xaa");
    assert_eq!(Key::parse(&[7u8; 64]), Err(KeyError::Weak));
    assert_eq!(Key::parse(b""), Err(KeyError::TooShort { bytes: 0 }));
}

#[test]
fn key_errors_and_debug_never_show_key_material() {
    let k = master();
    assert_eq!(format!("{k:?}"), "Key(…)");
    let dir = std::env::temp_dir().join(format!("benchkite-signing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let short = dir.join("short");
    std::fs::write(&short, b"secret-canary\n").expect("write");
    let e = Key::read_file(&short).expect_err("too short").to_string();
    assert!(!e.contains("secret-canary"), "{e}");
    let big = dir.join("big");
    std::fs::write(&big, vec![b'z'; 5000]).expect("write");
    assert!(matches!(Key::read_file(&big), Err(KeyError::TooLarge { .. })));
    assert!(matches!(Key::read_file(&dir.join("absent")), Err(KeyError::Read { .. })));
    let good = dir.join("good");
    std::fs::write(&good, format!("{}\n", k.to_hex())).expect("write");
    assert_eq!(Key::read_file(&good).map(|g| g.to_hex()), Ok(k.to_hex()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn derivations_are_domain_separated() {
    let m = master();
    let (qa, qb) = (m.queue_key("a"), m.queue_key("b"));
    assert_ne!(qa, qb);
    assert_ne!(qa.attempt_key("r-1"), qa.attempt_key("r-2"));
    assert_ne!(qa.attempt_key("r-1"), qb.attempt_key("r-1"));
    // A queue key is not an attempt key of the master for the same label.
    assert_ne!(m.queue_key("x"), m.attempt_key("x"));
    assert_eq!(qa.to_hex().len(), 64);
    // Stable across releases (agents and controllers of different versions agree).
    assert_eq!(m.queue_key("a").to_hex(), Key(m.queue_key("a").0.clone()).to_hex());
}

#[test]
fn a_signature_verifies_for_its_attempt_only() {
    let m = master();
    let md = r#"{"success":true,"passed":true,"score":1.5}"#;
    let rj = b"{\"success\": true}\n";
    let sig = sig_for("q", "uid-1", md, Some(rj));
    let check = |queue, run, what, bytes: &[u8], sig: Option<&str>| check(Some(&m), queue, run, what, bytes, sig);
    assert_eq!(check(Some("q"), "uid-1", Signed::MetaData, md.as_bytes(), Some(&sig)), Trust::Verified);
    assert_eq!(check(Some("q"), "uid-1", Signed::ResultJson, rj, Some(&sig)), Trust::Verified);
    // Tampered value, result.json, run id, queue, kind: each refused.
    let forged = md.replace("1.5", "0.1");
    assert!(matches!(check(Some("q"), "uid-1", Signed::MetaData, forged.as_bytes(), Some(&sig)), Trust::NotTrusted(_)));
    assert!(matches!(check(Some("q"), "uid-1", Signed::ResultJson, b"{}\n", Some(&sig)), Trust::NotTrusted(_)));
    assert!(matches!(check(Some("q"), "uid-2", Signed::MetaData, md.as_bytes(), Some(&sig)), Trust::NotTrusted(_)));
    assert!(matches!(check(Some("other"), "uid-1", Signed::MetaData, md.as_bytes(), Some(&sig)), Trust::NotTrusted(_)));
    assert!(matches!(check(Some("q"), "uid-1", Signed::ResultJson, md.as_bytes(), Some(&sig)), Trust::NotTrusted(_)));
    // Another master key.
    let other = Key::parse(&(1u8..=32).rev().collect::<Vec<_>>()).expect("key");
    assert!(matches!(
        super::check(Some(&other), Some("q"), "uid-1", Signed::MetaData, md.as_bytes(), Some(&sig)),
        Trust::NotTrusted(_)
    ));
}

#[test]
fn unsigned_malformed_and_uncheckable_results() {
    let m = master();
    let md = b"{}";
    assert_eq!(check(Some(&m), Some("q"), "r-1", Signed::MetaData, md, None), Trust::Unsigned);
    assert_eq!(check(Some(&m), Some("q"), "r-1", Signed::MetaData, md, Some("")), Trust::Unsigned);
    assert_eq!(check(None, Some("q"), "r-1", Signed::MetaData, md, None), Trust::Unsigned);
    for junk in ["nope", r#"{"v":2,"meta-data":"00"}"#, &"x".repeat(2000)] {
        assert!(matches!(check(Some(&m), Some("q"), "r-1", Signed::MetaData, md, Some(junk)), Trust::NotTrusted(_)));
    }
    // Only result.json signed: the meta-data value is not covered.
    let only_rj = Signatures { v: 1, meta_data: None, result_json: Some("00".into()) }.to_value();
    assert!(matches!(check(Some(&m), Some("q"), "r-1", Signed::MetaData, md, Some(&only_rj)), Trust::NotTrusted(_)));
    // Not hex.
    let bad_hex = Signatures { v: 1, meta_data: Some("zz".into()), result_json: None }.to_value();
    assert!(matches!(check(Some(&m), Some("q"), "r-1", Signed::MetaData, md, Some(&bad_hex)), Trust::NotTrusted(_)));
    let sig = sig_for("q", "r-1", "{}", None);
    // A signed result the controller cannot check (no master key, no queue) is not trusted.
    assert!(matches!(check(None, Some("q"), "r-1", Signed::MetaData, md, Some(&sig)), Trust::NotTrusted(_)));
    assert!(matches!(check(Some(&m), None, "r-1", Signed::MetaData, md, Some(&sig)), Trust::NotTrusted(_)));
    assert_eq!(check(Some(&m), Some("q"), "r-1", Signed::MetaData, md, Some(&sig)), Trust::Verified);
    // Reasons carry no key material.
    if let Trust::NotTrusted(why) = check(Some(&m), Some("q"), "r-2", Signed::MetaData, md, Some(&sig)) {
        assert!(!why.contains(&m.to_hex()) && !why.contains(&m.queue_key("q").to_hex()), "{why}");
    }
}
