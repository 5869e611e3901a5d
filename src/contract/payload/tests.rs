use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;

pub(super) fn py_config() -> EvalConfig {
    let mut c = EvalConfig::new(Lang::Py, Mode::Leaderboard);
    c.main = Some("eval.py".into());
    c.sources.insert("eval.py".into(), "print('hi')\n".into());
    c.sources.insert("submission.py".into(), "def custom_kernel(x): return x\n".into());
    c.tests = vec![Case::parse_line("size: 128; seed: 42").unwrap()];
    c.benchmarks = vec![
        Case::parse_line("size: 1024; seed: 5").unwrap(),
        [("size".to_owned(), json!(4096)), ("seed".to_owned(), json!("7"))].into_iter().collect(),
    ];
    c.ranking_by = RankingBy::Geom;
    c.seed = Some(1234);
    c
}

fn cu_config() -> EvalConfig {
    let mut c = EvalConfig::new(Lang::Cu, Mode::Test);
    c.arch = Some(Arch::Name("90a".into()));
    c.sources.insert("eval.cu".into(), "int main() {}\n".into());
    c.sources.insert("submission.cu".into(), "__global__ void k() {}\n".into());
    c.headers = Some(BTreeMap::from([("utils.h".into(), "#pragma once\n".into())]));
    c.defines = Some(json!({"N": 128, "USE_FAST": null}).as_object().unwrap().clone());
    c.compile_flags = Some(vec!["-O3".into(), "--use_fast_math".into()]);
    c.include_dirs = Some(vec!["/opt/cutlass/include".into()]);
    c.libraries = Some(vec!["cublas".into()]);
    c
}

fn raw_encode(json: &[u8]) -> String {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
    e.write_all(json).unwrap();
    BASE64.encode(e.finish().unwrap())
}

#[test]
fn roundtrip_py_and_cu() {
    for c in [py_config(), cu_config()] {
        let enc = encode_payload(&c).unwrap();
        assert!(enc.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
        assert_eq!(enc.len() % 4, 0, "padded");
        let back = decode_payload(&enc).unwrap();
        assert_eq!(back, c);
    }
}

#[test]
fn serialised_shape_uses_contract_field_names() {
    let v = serde_json::to_value(py_config()).unwrap();
    let obj = v.as_object().unwrap();
    for key in [
        "lang",
        "arch",
        "mode",
        "tests",
        "benchmarks",
        "test_timeout",
        "benchmark_timeout",
        "ranked_timeout",
        "ranking_by",
        "seed",
        "multi_gpu",
        "main",
        "sources",
    ] {
        assert!(obj.contains_key(key), "missing {key}");
    }
    for key in ["headers", "defines", "compile_flags", "include_dirs", "libraries"] {
        assert!(!obj.contains_key(key), "py config should not carry {key}");
    }
    assert_eq!(v["lang"], "py");
    assert_eq!(v["mode"], "leaderboard");
    assert_eq!(v["ranking_by"], "geom");
    assert_eq!(v["arch"], Value::Null);
    assert_eq!(v["seed"], 1234);
    assert_eq!(v["test_timeout"], 180);
    let cu = serde_json::to_value(cu_config()).unwrap();
    assert_eq!(cu["arch"], "90a");
    assert_eq!(cu["defines"]["USE_FAST"], Value::Null);
    assert!(cu.get("main").is_none());
}

#[test]
fn unknown_fields_are_preserved() {
    let j = json!({
        "lang": "py", "mode": "test", "main": "a.py", "sources": {"a.py": "x"},
        "submission_id": 17, "nested": {"k": [1, 2, {"z": null}]}, "flag": true
    });
    let enc = raw_encode(j.to_string().as_bytes());
    let c = decode_payload(&enc).unwrap();
    assert_eq!(c.extra["submission_id"], 17);
    assert_eq!(c.extra["nested"]["k"][2]["z"], Value::Null);
    let again = serde_json::to_value(&c).unwrap();
    assert_eq!(again["submission_id"], 17);
    assert_eq!(again["nested"], j["nested"]);
    assert_eq!(again["flag"], true);
    // And through a second encode/decode.
    let back = decode_payload(&encode_payload(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn defaults_apply_when_fields_are_missing_or_null() {
    let j = json!({"lang": "cu", "mode": "benchmark", "sources": {"a.cu": "x"},
                   "arch": null, "seed": null, "tests": null, "test_timeout": null});
    let c = decode_payload(&raw_encode(j.to_string().as_bytes())).unwrap();
    assert_eq!(c.arch, None);
    assert_eq!(c.seed, None);
    assert!(c.tests.is_empty() && c.benchmarks.is_empty());
    assert_eq!((c.test_timeout, c.benchmark_timeout, c.ranked_timeout), (180.0, 180.0, 180.0));
    assert_eq!(c.ranking_by, RankingBy::Last);
    assert!(!c.multi_gpu);
}

#[test]
fn arch_keeps_number_or_string() {
    for (raw, want, sm) in [
        (json!(90), Arch::Number(90), "90"),
        (json!("90a"), Arch::Name("90a".into()), "90a"),
        (json!("100"), Arch::Name("100".into()), "100"),
    ] {
        let j = json!({"lang": "cu", "mode": "test", "sources": {"a.cu": "x"}, "arch": raw});
        let c = decode_payload(&raw_encode(j.to_string().as_bytes())).unwrap();
        assert_eq!(c.arch.as_ref(), Some(&want));
        assert_eq!(c.arch.as_ref().unwrap().sm(), sm);
        assert_eq!(serde_json::to_value(&c).unwrap()["arch"], raw);
    }
}

#[test]
fn timeouts_accept_any_number_of_seconds_like_kernelbot() {
    let j = json!({"lang": "cu", "mode": "test", "sources": {"a.cu": "x"},
                   "test_timeout": 60.0, "benchmark_timeout": 90, "ranked_timeout": 1.5});
    let c = decode_payload(&raw_encode(j.to_string().as_bytes())).unwrap();
    assert_eq!((c.test_timeout, c.benchmark_timeout, c.ranked_timeout), (60.0, 90.0, 1.5));
    // Whole seconds go back out as integers (as Python wrote them), fractions as floats.
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!((v["test_timeout"].as_u64(), v["benchmark_timeout"].as_u64()), (Some(60), Some(90)));
    assert_eq!(v["ranked_timeout"].as_f64(), Some(1.5));
    assert_eq!(decode_payload(&encode_payload(&c).unwrap()).unwrap(), c);
    for bad in [json!("60"), json!([]), json!(true)] {
        let j = json!({"lang": "cu", "mode": "test", "sources": {"a.cu": "x"}, "ranked_timeout": bad});
        let err = decode_payload(&raw_encode(j.to_string().as_bytes())).unwrap_err();
        match err {
            PayloadError::Json { path, .. } => assert_eq!(path, "ranked_timeout"),
            other => panic!("{other:?}"),
        }
    }
    // Zero or less: kernelbot runs it (subprocess.run times out at once), so the runner
    // takes it; the API-side validation refuses it with the reason.
    for t in [0.0, -1.0] {
        let j = json!({"lang": "cu", "mode": "test", "sources": {"a.cu": "x"}, "test_timeout": t});
        let enc = raw_encode(j.to_string().as_bytes());
        assert_eq!(decode_runnable_payload(&enc, &PayloadLimits::default()).unwrap().test_timeout, t);
        let err = decode_payload(&enc).unwrap_err();
        assert!(matches!(err, PayloadError::Invalid(ConfigError::InvalidTimeout { field: "test_timeout", .. })));
        assert_eq!(err.to_string(), "payload config is invalid: test_timeout must be more than 0 seconds");
    }
    let mut c = EvalConfig::new(Lang::Cu, Mode::Test);
    c.sources.insert("a.cu".into(), "x".into());
    c.benchmark_timeout = f64::NAN;
    assert!(matches!(c.validate_runnable(&PayloadLimits::default()), Err(ConfigError::InvalidTimeout { .. })));
}

#[test]
fn runnable_payloads_are_what_kernelbot_runs() {
    let limits = PayloadLimits::default();
    // Empty files: kernelbot writes and runs them.
    let mut c = py_config();
    c.sources.insert("submission.py".into(), String::new());
    assert_eq!(c.validate(&limits), Err(ConfigError::EmptyFile { name: "submission.py".into() }));
    assert_eq!(c.validate_runnable(&limits), Ok(()));
    let enc = raw_encode(&serde_json::to_vec(&c).unwrap());
    assert_eq!(decode_runnable_payload(&enc, &limits).unwrap(), c);
    // A cu config without sources is nvcc's error to report; a py one fails kernelbot's
    // `assert main in sources`.
    let mut cu = cu_config();
    cu.sources.clear();
    assert_eq!(cu.validate_runnable(&limits), Ok(()));
    assert_eq!(cu.validate(&limits), Err(ConfigError::NoSources));
    let mut py = py_config();
    py.main = Some("nope.py".into());
    assert_eq!(py.validate_runnable(&limits), Err(ConfigError::MainNotInSources { main: "nope.py".into() }));
    // Unsafe names and sizes stay refused.
    let mut c = py_config();
    c.sources.insert("../x.py".into(), "x".into());
    assert!(matches!(c.validate_runnable(&limits), Err(ConfigError::UnsafeFileName { .. })));
}

#[test]
fn case_key_order_survives_decoding_and_encoding() {
    let json = br#"{"lang": "py", "mode": "test", "main": "eval.py", "sources": {"eval.py": "x"},
                        "tests": [{"size": 7, "seed": 1}, {"seed": 2, "size": 8}],
                        "benchmarks": [{"z": 1, "a": 2, "m": 3}]}"#;
    let c = decode_payload(&raw_encode(json)).unwrap();
    let lines: Vec<String> = c.tests.iter().chain(&c.benchmarks).map(Case::to_line).collect();
    assert_eq!(lines, ["size: 7; seed: 1", "seed: 2; size: 8", "z: 1; a: 2; m: 3"]);
    let back = decode_payload(&encode_payload(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    let v = String::from_utf8(decode_payload_json(&encode_payload(&c).unwrap(), &PayloadLimits::default()).unwrap())
        .unwrap();
    assert!(v.contains(r#""tests":[{"size":7,"seed":1},{"seed":2,"size":8}]"#), "{v}");
}

#[test]
fn ranking_by_unknown_is_kept() {
    let j = json!({"lang": "cu", "mode": "leaderboard", "sources": {"a.cu": "x"},
                   "ranking_by": "median"});
    let c = decode_payload(&raw_encode(j.to_string().as_bytes())).unwrap();
    assert_eq!(c.ranking_by, RankingBy::Other("median".into()));
    assert_eq!(serde_json::to_value(&c).unwrap()["ranking_by"], "median");
    assert_eq!(RankingBy::from("mean"), RankingBy::Mean);
    assert_eq!(RankingBy::Geom.to_string(), "geom");
}

#[test]
fn whitespace_in_base64_is_ignored() {
    let enc = encode_payload(&py_config()).unwrap();
    let wrapped: String =
        enc.as_bytes().chunks(76).map(|c| std::str::from_utf8(c).unwrap().to_owned() + "\n").collect();
    assert_eq!(decode_payload(&format!("  {wrapped}\r\n")).unwrap(), py_config());
}

#[test]
fn bad_base64_is_its_own_error() {
    for bad in ["not base64!", "abc", "YWJj=", "YW Jj\u{e9}"] {
        assert!(matches!(decode_payload(bad), Err(PayloadError::Base64(_))), "{bad}: {:?}", decode_payload(bad));
    }
    // URL-safe alphabet is not the contract's.
    let enc = encode_payload(&py_config()).unwrap().replace('+', "-").replace('/', "_");
    if enc.contains('-') || enc.contains('_') {
        assert!(matches!(decode_payload(&enc), Err(PayloadError::Base64(_))));
    }
    assert!(matches!(decode_payload(""), Err(PayloadError::Empty)));
    assert!(matches!(decode_payload(" \n\t"), Err(PayloadError::Empty)));
    let msg = decode_payload("!!!!").unwrap_err().to_string();
    assert!(msg.starts_with("payload is not valid base64"), "{msg}");
}

#[test]
fn bad_zlib_is_its_own_error() {
    // Valid base64 of bytes that are not zlib.
    let not_zlib = BASE64.encode(b"{\"lang\": \"py\"}");
    assert!(matches!(decode_payload(&not_zlib), Err(PayloadError::Zlib(_))));
    // Truncated stream.
    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
    e.write_all(serde_json::to_string(&py_config()).unwrap().as_bytes()).unwrap();
    let full = e.finish().unwrap();
    let truncated = BASE64.encode(&full[..full.len() - 6]);
    assert!(matches!(decode_payload(&truncated), Err(PayloadError::Zlib(_))));
    // Corrupted checksum.
    let mut corrupt = full.clone();
    let n = corrupt.len();
    corrupt[n - 1] ^= 0xff;
    assert!(matches!(decode_payload(&BASE64.encode(&corrupt)), Err(PayloadError::Zlib(_))));
    // Raw deflate and gzip are not zlib.
    let mut g = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
    g.write_all(b"{}").unwrap();
    assert!(matches!(decode_payload(&BASE64.encode(g.finish().unwrap())), Err(PayloadError::Zlib(_))));
    let msg = decode_payload(&not_zlib).unwrap_err().to_string();
    assert!(msg.starts_with("payload is not a valid zlib stream"), "{msg}");
}

#[test]
fn bad_json_is_its_own_error_with_a_path() {
    let cases: [(&[u8], &str); 7] = [
        (b"not json", "."),
        (b"[1,2,3]", "."),
        (b"{\"lang\": \"py\"", "."),
        (br#"{"lang": "rust", "mode": "test"}"#, "lang"),
        (br#"{"lang": "py", "mode": "fast"}"#, "mode"),
        (br#"{"lang": "py", "mode": "test", "sources": {"a.py": 5}}"#, "sources.a.py"),
        (br#"{"lang": "py", "mode": "test", "tests": [1]}"#, "tests[0]"),
    ];
    for (json, want_path) in cases {
        match decode_payload(&raw_encode(json)) {
            Err(PayloadError::Json { path, .. }) => {
                assert_eq!(path, want_path, "{}", String::from_utf8_lossy(json))
            }
            other => panic!("{}: {other:?}", String::from_utf8_lossy(json)),
        }
    }
    // Missing required field.
    let err = decode_payload(&raw_encode(br#"{"mode": "test"}"#)).unwrap_err();
    assert!(err.to_string().contains("missing field `lang`"), "{err}");
    // Trailing garbage after the object.
    assert!(matches!(
        decode_payload(&raw_encode(br#"{"lang":"cu","mode":"test","sources":{"a":"x"}} x"#)),
        Err(PayloadError::Json { .. })
    ));
    // Not UTF-8 JSON.
    assert!(matches!(decode_payload(&raw_encode(b"{\"lang\": \"\xff\"}")), Err(PayloadError::Json { .. })));
}

#[test]
fn lone_surrogate_in_a_file_is_refused_as_json() {
    // Python's json.dumps of a str holding undecodable bytes (surrogateescape).
    let j = br#"{"lang": "py", "mode": "test", "main": "a.py", "sources": {"a.py": "x\udc80"}}"#;
    match decode_payload(&raw_encode(j)) {
        Err(PayloadError::Json { path, source }) => {
            assert_eq!(path, "sources.a.py");
            assert!(source.to_string().contains("surrogate"), "{source}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn zlib_bomb_is_capped() {
    // 17 MiB of spaces (just over the default cap) compresses to a few KiB.
    let mut e = ZlibEncoder::new(Vec::new(), Compression::fast());
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..17 {
        e.write_all(&chunk).unwrap();
    }
    let bomb = BASE64.encode(e.finish().unwrap());
    assert!(bomb.len() < 200_000, "{}", bomb.len());
    match decode_payload(&bomb) {
        Err(PayloadError::DecompressedTooLarge { limit }) => {
            assert_eq!(limit, DEFAULT_MAX_DECOMPRESSED_BYTES)
        }
        other => panic!("{other:?}"),
    }
    let small = PayloadLimits { max_decompressed_bytes: 100, ..PayloadLimits::default() };
    let ok = raw_encode(br#"{"lang":"cu","mode":"test","sources":{"a.cu":"x"}}"#);
    assert!(decode_payload_with(&ok, &small).is_ok());
    let big = raw_encode(&[b' '; 101]);
    assert!(matches!(decode_payload_with(&big, &small), Err(PayloadError::DecompressedTooLarge { limit: 100 })));
    let exactly = raw_encode(&[b' '; 100]);
    // 100 spaces decompress fine (then fail as JSON: EOF).
    assert!(matches!(decode_payload_with(&exactly, &small), Err(PayloadError::Json { .. })));
}

#[test]
fn oversized_base64_is_refused_before_decoding() {
    let small = PayloadLimits { max_decompressed_bytes: 1000, ..PayloadLimits::default() };
    let huge = "A".repeat(10_000);
    assert!(matches!(decode_payload_with(&huge, &small), Err(PayloadError::EncodedTooLarge { .. })));
    // A legitimately incompressible payload right at the limit still decodes.
    let limits =
        PayloadLimits { max_decompressed_bytes: 64 * 1024, max_source_bytes: usize::MAX, ..PayloadLimits::default() };
    let mut c = EvalConfig::new(Lang::Cu, Mode::Test);
    // Pseudo-random printable text compresses poorly.
    let mut x: u32 = 12345;
    let noise: String = (0..60_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            char::from(b'!' + ((x >> 16) % 90) as u8)
        })
        .filter(|c| *c != '"' && *c != '\\')
        .collect();
    c.sources.insert("a.cu".into(), noise);
    let enc = encode_payload_with(&c, &limits).unwrap();
    assert_eq!(decode_payload_with(&enc, &limits).unwrap(), c);
}

#[test]
fn validation_rules() {
    let limits = PayloadLimits::default();
    let mut c = py_config();
    assert_eq!(c.validate(&limits), Ok(()));

    c.main = None;
    assert_eq!(c.validate(&limits), Err(ConfigError::MissingMain));
    c.main = Some(String::new());
    assert_eq!(c.validate(&limits), Err(ConfigError::MissingMain));
    c.main = Some("nope.py".into());
    assert_eq!(c.validate(&limits), Err(ConfigError::MainNotInSources { main: "nope.py".into() }));

    let mut c = py_config();
    c.sources.insert("empty.py".into(), String::new());
    assert_eq!(c.validate(&limits), Err(ConfigError::EmptyFile { name: "empty.py".into() }));
    let lax = PayloadLimits { allow_empty_files: true, ..limits };
    assert_eq!(c.validate(&lax), Ok(()));

    let mut c = cu_config();
    c.headers.as_mut().unwrap().insert("h.h".into(), String::new());
    assert_eq!(c.validate(&limits), Err(ConfigError::EmptyFile { name: "h.h".into() }));

    let mut c = cu_config();
    c.sources.clear();
    assert_eq!(c.validate(&limits), Err(ConfigError::NoSources));

    let mut c = cu_config();
    c.headers.as_mut().unwrap().insert("eval.cu".into(), "x".into());
    assert_eq!(c.validate(&limits), Err(ConfigError::DuplicateFile { name: "eval.cu".into() }));

    // cu does not need main.
    assert_eq!(cu_config().validate(&limits), Ok(()));
}

#[test]
fn size_limit_counts_sources_and_headers_and_is_a_parameter() {
    let mut c = cu_config();
    let size = c.source_bytes();
    assert_eq!(size, "int main() {}\n".len() + "__global__ void k() {}\n".len() + "#pragma once\n".len());
    let exact = PayloadLimits { max_source_bytes: size, ..PayloadLimits::default() };
    assert_eq!(c.validate(&exact), Ok(()));
    let under = PayloadLimits { max_source_bytes: size - 1, ..PayloadLimits::default() };
    assert_eq!(c.validate(&under), Err(ConfigError::SourcesTooLarge { size, limit: size - 1 }));
    // Default: 1,000,000 bytes.
    c.sources.insert("big.cu".into(), "x".repeat(1_000_000));
    assert!(matches!(
        encode_payload(&c),
        Err(PayloadError::Invalid(ConfigError::SourcesTooLarge { limit: 1_000_000, .. }))
    ));
    // And the decoder refuses it too, even when produced by someone else.
    let enc = raw_encode(&serde_json::to_vec(&c).unwrap());
    let err = decode_payload(&enc).unwrap_err();
    assert!(err.to_string().contains("over the 1000000-byte limit"), "{err}");
}

#[test]
fn unsafe_file_names_are_refused() {
    for name in ["", "/etc/passwd", "../x.py", "a/../../x", "a//b", "./a", "a/", "-rf", "a\\b", "a\0b", "a\nb"] {
        let mut c = cu_config();
        c.sources.insert(name.into(), "x".into());
        assert!(matches!(c.validate(&PayloadLimits::default()), Err(ConfigError::UnsafeFileName { .. })), "{name:?}");
    }
    let long = "a".repeat(256);
    let mut c = cu_config();
    c.sources.insert(long, "x".into());
    assert!(matches!(c.validate(&PayloadLimits::default()), Err(ConfigError::UnsafeFileName { .. })));
    for ok in ["sub/dir/file.cu", "a.b.c", "ünïcode.py", "a-b_c.h"] {
        let mut c = cu_config();
        c.sources.insert(ok.into(), "x".into());
        assert_eq!(c.validate(&PayloadLimits::default()), Ok(()), "{ok}");
    }
}

#[test]
fn arch_strings_are_checked() {
    for bad in ["", "90a -o /tmp/x", "90;", "compute_90,code=sm_90 --x", "a".repeat(17).as_str()] {
        let mut c = cu_config();
        c.arch = Some(Arch::Name(bad.into()));
        assert_eq!(c.validate(&PayloadLimits::default()), Err(ConfigError::InvalidArch { arch: bad.into() }));
    }
    let mut c = cu_config();
    c.arch = Some(Arch::Number(75));
    assert_eq!(c.validate(&PayloadLimits::default()), Ok(()));
}

#[test]
fn non_utf8_bytes_give_a_clear_error() {
    assert_eq!(file_content_from_bytes("a.py", b"ok".to_vec()), Ok("ok".into()));
    let err = file_content_from_bytes("a.py", b"ab\xffcd".to_vec()).unwrap_err();
    assert_eq!(err, ConfigError::NonUtf8File { name: "a.py".into(), valid_up_to: 2 });
    assert_eq!(err.to_string(), "file \"a.py\" is not valid UTF-8 (invalid byte at offset 2)");
}

#[test]
fn invalid_config_is_reported_as_invalid_not_json() {
    let j = br#"{"lang": "py", "mode": "test", "sources": {"a.py": "x"}}"#;
    let err = decode_payload(&raw_encode(j)).unwrap_err();
    assert!(matches!(err, PayloadError::Invalid(ConfigError::MissingMain)));
    assert_eq!(err.to_string(), "payload config is invalid: lang \"py\" requires `main` (the file to run)");
}

#[test]
fn seed_accepts_negative_and_large() {
    for seed in [json!(-5), json!(9_007_199_254_740_993_i64), json!(null)] {
        let j = json!({"lang": "cu", "mode": "test", "sources": {"a.cu": "x"}, "seed": seed});
        let c = decode_payload(&raw_encode(j.to_string().as_bytes())).unwrap();
        assert_eq!(serde_json::to_value(&c).unwrap()["seed"], seed);
    }
    let j = json!({"lang": "cu", "mode": "test", "sources": {"a.cu": "x"}, "seed": "x"});
    assert!(matches!(decode_payload(&raw_encode(j.to_string().as_bytes())), Err(PayloadError::Json { .. })));
}

#[test]
fn total_timeout_follows_the_mode() {
    let mut c = EvalConfig::new(Lang::Cu, Mode::Test);
    c.test_timeout = 10.0;
    c.benchmark_timeout = 20.0;
    c.ranked_timeout = 30.5;
    assert_eq!(c.total_timeout_secs(), 10);
    c.mode = Mode::Benchmark;
    assert_eq!(c.total_timeout_secs(), 20);
    c.mode = Mode::Profile;
    assert_eq!(c.total_timeout_secs(), 20);
    c.mode = Mode::Leaderboard;
    assert_eq!((c.total_timeout(), c.total_timeout_secs()), (60.5, 61));
    c.test_timeout = -5.0;
    assert_eq!(c.total_timeout(), 50.5);
    c.mode = Mode::Private;
    c.ranked_timeout = 1e300;
    assert_eq!(c.total_timeout_secs(), u64::MAX);
}

#[test]
fn display_spellings() {
    assert_eq!(Lang::Py.to_string(), "py");
    assert_eq!(Lang::Cu.to_string(), "cu");
    for m in [Mode::Test, Mode::Benchmark, Mode::Profile, Mode::Leaderboard, Mode::Private] {
        assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
        assert_eq!(m.to_string(), m.as_str());
    }
    assert_eq!(Arch::Number(80).to_string(), "80");
}
