//! The `benchkite.result` build meta-data parser: untrusted input (any build step can set
//! meta-data).
//!
//! Properties: no panic; an accepted summary re-serialises within the bound and reads back
//! unchanged.
#![no_main]

use benchkite::contract::{MAX_SUMMARY_BYTES, parse_meta_data_summary};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(summary) = parse_meta_data_summary(text) else { return };
    let _ = summary.tests();
    let _ = summary.ranked_benchmarks();
    let value = summary.to_meta_data_value();
    assert!(value.len() <= MAX_SUMMARY_BYTES, "summary is {} bytes", value.len());
    let again =
        parse_meta_data_summary(&value).unwrap_or_else(|e| panic!("re-serialised summary refused: {e}\n{value}"));
    assert_eq!(again, summary, "summary changed through re-serialisation\n{value}");
});
