//! The kernel-evaluation contract: payload codec, result.json, compact summary.
//!
//! Pure data and functions, no Kubernetes or HTTP: the controller, the runner and the
//! simulator all speak the seeds' platform's formats through this one module, so they
//! cannot drift apart. See `shared/reference/kernel-evaluation.md` for the contract.

pub mod case;
pub mod fingerprint;
mod lenient;
pub mod payload;
pub mod result;
pub mod summary;
pub(crate) mod text;

pub use fingerprint::{Fingerprint, MAX_FINGERPRINT_FIELD_BYTES};
pub use payload::{
    Arch, Case, CaseLineError, ConfigError, DEFAULT_MAX_DECOMPRESSED_BYTES, DEFAULT_MAX_SOURCE_BYTES, DEFAULT_TIMEOUT,
    DEFAULT_TIMEOUT_SECS, EvalConfig, Lang, MAX_PAYLOAD_PARTS, Mode, PAYLOAD_ENV, PAYLOAD_ENV_MAX, PAYLOAD_PART_PREFIX,
    PAYLOAD_PARTS_ENV, PAYLOAD_SHA256_ENV, PayloadError, PayloadLimits, RankingBy, SplitPayloadError, decode_payload,
    decode_payload_json, decode_payload_with, decode_runnable_payload, encode_payload, encode_payload_with,
    file_content_from_bytes, is_payload_env, payload_env, payload_from_env, payload_part_env,
};
pub use result::{
    CompileResult, DEFAULT_MAX_RESULT_BYTES, EvalResult, FullResult, OUTPUT_LIMIT, ProfileResult, ResultError,
    RunResult, SystemInfo, exit_code, format_naive_datetime, parse_naive_datetime, parse_result_json,
    parse_result_json_limited, passed, run_name, run_success, truncate_output, truncate_output_to,
};
pub use summary::{
    BenchmarkSummary, CanarySummary, MAX_SUMMARY_BYTES, META_DATA_KEY, ResultSummary, RunSummary, SUMMARY_VERSION,
    SummaryError, SystemSummary, TestFailure, TestsSummary, parse_meta_data_summary, score, score_from_result_map,
    summarize, verdict,
};
