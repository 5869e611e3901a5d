//! The evaluation config a build carries in `KERNELBOT_PAYLOAD`: JSON → zlib → base64
//! (standard alphabet, padded), exactly what the seeds' Python launcher sends, so a platform
//! can switch to KernelJobs without touching its runner image.

use std::io::{Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;

/// Environment variable the build carries the encoded payload in.
pub const PAYLOAD_ENV: &str = "KERNELBOT_PAYLOAD";

/// Default limit on the total size of all source and header files (bytes), as the seeds'
/// platform refuses submissions over 1,000,000 bytes.
pub const DEFAULT_MAX_SOURCE_BYTES: usize = 1_000_000;

/// Default cap on the decompressed JSON, so a tiny zlib bomb cannot exhaust memory.
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 16 * 1024 * 1024;

/// Default per-mode timeout in seconds, as in the contract.
pub const DEFAULT_TIMEOUT_SECS: u64 = 180;

/// [`DEFAULT_TIMEOUT_SECS`] as the timeout fields hold it.
pub const DEFAULT_TIMEOUT: f64 = DEFAULT_TIMEOUT_SECS as f64;

/// Limits applied when decoding or validating a payload; the defaults follow the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadLimits {
    /// Total bytes of `sources` plus `headers` contents.
    pub max_source_bytes: usize,
    /// Bytes of JSON after zlib decompression.
    pub max_decompressed_bytes: usize,
    /// Whether empty files are accepted (the contract refuses them).
    pub allow_empty_files: bool,
}

impl Default for PayloadLimits {
    fn default() -> Self {
        Self {
            max_source_bytes: DEFAULT_MAX_SOURCE_BYTES,
            max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BYTES,
            allow_empty_files: false,
        }
    }
}

mod config;
mod env;
mod kinds;

pub use super::case::{Case, CaseLineError};
pub use config::{ConfigError, EvalConfig, file_content_from_bytes};
pub use env::{
    MAX_PAYLOAD_PARTS, PAYLOAD_ENV_MAX, PAYLOAD_PART_PREFIX, PAYLOAD_PARTS_ENV, PAYLOAD_SHA256_ENV, SplitPayloadError,
    is_payload_env, payload_env, payload_from_env, payload_part_env,
};
pub use kinds::{Arch, Lang, Mode, RankingBy};

/// Why a `KERNELBOT_PAYLOAD` could not be turned into a config; each layer has its own
/// variant so the runner's `result.json` error says which step failed.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Empty (or whitespace-only) input.
    #[error("payload is empty")]
    Empty,
    /// Larger than any payload within the limits could be once encoded.
    #[error("payload is {size} bytes of base64, over the {limit}-byte limit")]
    EncodedTooLarge {
        /// Bytes of base64 received.
        size: usize,
        /// The limit derived from the decompression cap.
        limit: usize,
    },
    /// Not standard, padded base64.
    #[error("payload is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// Not a complete zlib stream (wrong format, truncated, bad checksum).
    #[error("payload is not a valid zlib stream: {0}")]
    Zlib(std::io::Error),
    /// Decompresses to more than the cap: refused before it fills memory.
    #[error("payload decompresses to more than the {limit}-byte limit")]
    DecompressedTooLarge {
        /// The cap in force.
        limit: usize,
    },
    /// Not JSON, or JSON of the wrong shape (with the path of the offending field).
    #[error("payload is not a valid config JSON at `{path}`: {source}")]
    Json {
        /// Where in the document (`.` for the root).
        path: String,
        /// The parser's message.
        source: serde_json::Error,
    },
    /// Well-formed but refused by [`EvalConfig::validate`].
    #[error("payload config is invalid: {0}")]
    Invalid(#[from] ConfigError),
    /// Neither transport's variables are set.
    #[error("no payload: neither {PAYLOAD_ENV} nor {PAYLOAD_PARTS_ENV} is set")]
    NotSet,
    /// The split transport's variables are inconsistent.
    #[error("split payload: {0}")]
    Split(#[from] SplitPayloadError),
    /// Serialising the config failed (cannot happen with string-keyed maps; kept for safety).
    #[error("config could not be serialised: {0}")]
    Serialize(serde_json::Error),
}

/// Encodes a config as the seeds' launcher does (JSON → zlib → base64), after validating
/// it with the default limits so we never send what the runner would refuse.
pub fn encode_payload(config: &EvalConfig) -> Result<String, PayloadError> {
    encode_payload_with(config, &PayloadLimits::default())
}

/// [`encode_payload`] with explicit limits.
pub fn encode_payload_with(config: &EvalConfig, limits: &PayloadLimits) -> Result<String, PayloadError> {
    config.validate(limits)?;
    let json = serde_json::to_vec(config).map_err(PayloadError::Serialize)?;
    if json.len() > limits.max_decompressed_bytes {
        return Err(PayloadError::DecompressedTooLarge { limit: limits.max_decompressed_bytes });
    }
    // Python's zlib.compress default level is 6, which is flate2's default too.
    let mut enc = ZlibEncoder::new(Vec::with_capacity(json.len() / 2 + 64), Compression::default());
    enc.write_all(&json).map_err(PayloadError::Zlib)?;
    let compressed = enc.finish().map_err(PayloadError::Zlib)?;
    Ok(BASE64.encode(compressed))
}

/// Decodes and validates a payload with the default limits.
pub fn decode_payload(encoded: &str) -> Result<EvalConfig, PayloadError> {
    decode_payload_with(encoded, &PayloadLimits::default())
}

/// Decodes and validates a payload: base64 (whitespace ignored) → zlib (capped) → JSON →
/// [`EvalConfig::validate`].
pub fn decode_payload_with(encoded: &str, limits: &PayloadLimits) -> Result<EvalConfig, PayloadError> {
    let json = decode_payload_json(encoded, limits)?;
    let config = config_from_json(&json)?;
    config.validate(limits)?;
    Ok(config)
}

/// Decodes a payload for `benchkite run`: as [`decode_payload_with`], but checked with
/// [`EvalConfig::validate_runnable`] (what kernelbot's runner accepts, it accepts too).
pub fn decode_runnable_payload(encoded: &str, limits: &PayloadLimits) -> Result<EvalConfig, PayloadError> {
    let json = decode_payload_json(encoded, limits)?;
    let config = config_from_json(&json)?;
    config.validate_runnable(limits)?;
    Ok(config)
}

/// The decompressed JSON bytes of a payload, without parsing them; for tools that want
/// to inspect a payload this version cannot parse.
pub fn decode_payload_json(encoded: &str, limits: &PayloadLimits) -> Result<Vec<u8>, PayloadError> {
    // A valid payload's zlib stream is at most slightly larger than its JSON (stored
    // blocks add 5 bytes per 64 KiB), and base64 adds a third.
    let max_compressed =
        limits.max_decompressed_bytes.saturating_add(limits.max_decompressed_bytes / 1024).saturating_add(64);
    let max_encoded = max_compressed.saturating_add(2) / 3 * 4 + 4;
    if encoded.len() > max_encoded.saturating_mul(2) {
        // Checked before stripping whitespace, with slack for line-wrapped base64.
        return Err(PayloadError::EncodedTooLarge { size: encoded.len(), limit: max_encoded });
    }
    let compact: Vec<u8> = encoded.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err(PayloadError::Empty);
    }
    if compact.len() > max_encoded {
        return Err(PayloadError::EncodedTooLarge { size: compact.len(), limit: max_encoded });
    }
    let compressed = BASE64.decode(&compact)?;
    inflate_capped(&compressed, limits.max_decompressed_bytes)
}

fn inflate_capped(compressed: &[u8], limit: usize) -> Result<Vec<u8>, PayloadError> {
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit));
    ZlibDecoder::new(compressed).take(cap).read_to_end(&mut out).map_err(PayloadError::Zlib)?;
    if out.len() > limit {
        return Err(PayloadError::DecompressedTooLarge { limit });
    }
    Ok(out)
}

pub fn config_from_json(json: &[u8]) -> Result<EvalConfig, PayloadError> {
    // Syntax first, so a malformed document is reported at the root, not at whichever field
    // the typed pass happened to be reading.
    serde_json::from_slice::<serde::de::IgnoredAny>(json)
        .map_err(|source| PayloadError::Json { path: ".".to_owned(), source })?;
    let mut de = serde_json::Deserializer::from_slice(json);
    let config: EvalConfig = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| PayloadError::Json { path: e.path().to_string(), source: e.into_inner() })?;
    de.end().map_err(|source| PayloadError::Json { path: ".".to_owned(), source })?;
    Ok(config)
}

#[cfg(test)]
mod tests;
