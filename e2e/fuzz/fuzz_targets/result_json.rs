//! `result.json` parser (strict shape, lenient values as Python writes them) and the
//! summary the runner derives from it.
//!
//! Properties: no panic; a parsed result serialises and parses back to the same result;
//! its summary, for every ranking criterion, fits in the meta-data bound and is read back
//! by the controller's meta-data parser as exactly the same summary (what the runner
//! writes, the controller can read, without loss).
#![no_main]

use benchkite::contract::{
    MAX_SUMMARY_BYTES, RankingBy, parse_meta_data_summary, parse_result_json, parse_result_json_limited, score,
    summarize, verdict,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_result_json_limited(data, data.len() / 2);
    let Ok(result) = parse_result_json(data) else { return };

    let json = serde_json::to_vec(&result).unwrap_or_else(|e| panic!("a parsed result must serialise: {e}"));
    let back = parse_result_json(&json)
        .unwrap_or_else(|e| panic!("a serialised result must parse: {e}\n{}", String::from_utf8_lossy(&json)));
    assert_eq!(back, result, "result.json round trip changed the result");

    let _ = verdict(&result);
    let other = String::from_utf8_lossy(&data[..data.len().min(40)]).into_owned();
    for ranking in [RankingBy::Last, RankingBy::Mean, RankingBy::Geom, RankingBy::Other(other)] {
        let _ = score(&result, &ranking);
        let summary = summarize(&result, &ranking);
        let value = summary.to_meta_data_value();
        assert!(value.len() <= MAX_SUMMARY_BYTES, "summary is {} bytes", value.len());
        let read = parse_meta_data_summary(&value)
            .unwrap_or_else(|e| panic!("the controller must read the runner's summary: {e}\n{value}"));
        assert_eq!(read, summary, "summary changed through meta-data\n{value}");
    }
});
