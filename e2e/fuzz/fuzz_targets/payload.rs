//! `KERNELBOT_PAYLOAD` codec (base64 → zlib → JSON → EvalConfig).
//!
//! Input: either the encoded payload itself (any bytes; base64 text in the seeds), or, when
//! it starts with `{`, the JSON document, which the target compresses and encodes first so
//! the fuzzer reaches the config parser without having to find valid zlib streams.
//!
//! Properties: no panic, whatever the input; and where decoding succeeds, encoding the
//! config succeeds, decodes back to the same config, and re-encoding is byte-for-byte
//! stable (encode ∘ decode is the identity on what we encode).
#![no_main]

use std::io::Write;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use benchkite::contract::{PayloadLimits, decode_payload, decode_payload_with, encode_payload};
use flate2::Compression;
use flate2::write::ZlibEncoder;
use libfuzzer_sys::fuzz_target;

fn encode_json(json: &[u8]) -> Option<String> {
    let mut enc = ZlibEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(json).ok()?;
    Some(BASE64.encode(enc.finish().ok()?))
}

fuzz_target!(|data: &[u8]| {
    let encoded = if data.first() == Some(&b'{') {
        match encode_json(data) {
            Some(e) => e,
            None => return,
        }
    } else {
        String::from_utf8_lossy(data).into_owned()
    };

    // Tight limits reach every refusal path (too large, empty files) on small inputs.
    let tight = PayloadLimits { max_source_bytes: 64, max_decompressed_bytes: 512, allow_empty_files: true };
    let _ = decode_payload_with(&encoded, &tight);

    let Ok(config) = decode_payload(&encoded) else { return };
    let again = encode_payload(&config).unwrap_or_else(|e| panic!("a decoded config must encode: {e}\n{config:?}"));
    let back = decode_payload(&again).unwrap_or_else(|e| panic!("an encoded config must decode: {e}\n{config:?}"));
    assert_eq!(back, config, "decode(encode(config)) differs from config");
    let third = encode_payload(&back).unwrap_or_else(|e| panic!("re-encoding failed: {e}"));
    assert_eq!(third, again, "encoding is not stable");
    // The helpers the runner and controller call on a decoded config.
    let _ = config.source_bytes();
    let _ = config.total_timeout_secs();
});
