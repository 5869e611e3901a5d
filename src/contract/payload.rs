//! The evaluation config a build carries in `KERNELBOT_PAYLOAD`: JSON → zlib → base64
//! (standard alphabet, padded), exactly what the seeds' Python launcher sends, so a platform
//! can switch to KernelJobs without touching its runner image.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Environment variable the build carries the encoded payload in.
pub const PAYLOAD_ENV: &str = "KERNELBOT_PAYLOAD";

/// Default limit on the total size of all source and header files (bytes), as the seeds'
/// platform refuses submissions over 1,000,000 bytes.
pub const DEFAULT_MAX_SOURCE_BYTES: usize = 1_000_000;

/// Default cap on the decompressed JSON, so a tiny zlib bomb cannot exhaust memory.
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 16 * 1024 * 1024;

/// Default per-mode timeout in seconds, as in the contract.
pub const DEFAULT_TIMEOUT_SECS: u64 = 180;

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

/// Language of the submission: decides between running `main` and compiling with nvcc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Lang {
    /// Python: run `main` with the interpreter.
    #[serde(rename = "py")]
    Py,
    /// CUDA: compile `sources` with nvcc, then run the binary.
    #[serde(rename = "cu")]
    Cu,
}

impl Lang {
    /// The contract's spelling (`"py"` / `"cu"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Py => "py",
            Lang::Cu => "cu",
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the evaluation runs; `leaderboard` and `private` chain test → benchmark → ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Run the tests once (`test_timeout`).
    Test,
    /// Run the benchmarks (`benchmark_timeout`).
    Benchmark,
    /// Run each benchmark under the vendor profiler.
    Profile,
    /// Test, then benchmark if passed, then the ranked run (`ranked_timeout`); scored.
    Leaderboard,
    /// Like `leaderboard`, for runs that are not published.
    Private,
}

impl Mode {
    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Test => "test",
            Mode::Benchmark => "benchmark",
            Mode::Profile => "profile",
            Mode::Leaderboard => "leaderboard",
            Mode::Private => "private",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a leaderboard run is scored. Unknown spellings are kept (a platform may be newer
/// than us) and simply produce no score.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum RankingBy {
    /// `benchmark.0.mean` of the ranked run (the seeds only run the last benchmark).
    #[default]
    Last,
    /// Arithmetic mean of the benchmark means.
    Mean,
    /// Geometric mean of the benchmark means.
    Geom,
    /// A value this version does not know; never scored.
    Other(String),
}

impl RankingBy {
    /// The contract's spelling (or the unknown value as received).
    pub fn as_str(&self) -> &str {
        match self {
            RankingBy::Last => "last",
            RankingBy::Mean => "mean",
            RankingBy::Geom => "geom",
            RankingBy::Other(s) => s,
        }
    }
}

impl From<&str> for RankingBy {
    fn from(s: &str) -> Self {
        match s {
            "last" => RankingBy::Last,
            "mean" => RankingBy::Mean,
            "geom" => RankingBy::Geom,
            other => RankingBy::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for RankingBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RankingBy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RankingBy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(RankingBy::from(s.as_str()))
    }
}

/// GPU architecture for nvcc: `90` and `"90a"` are both in use, so both are kept as sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Arch {
    /// A plain SM number, e.g. `80`.
    Number(u64),
    /// A string such as `"90a"` or `"100"`.
    Name(String),
}

impl Arch {
    /// The SM suffix as nvcc wants it in `compute_{..}`/`sm_{..}`.
    pub fn sm(&self) -> String {
        match self {
            Arch::Number(n) => n.to_string(),
            Arch::Name(s) => s.clone(),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sm())
    }
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

/// Accepts an integer or an integral float (`180.0`) for the timeouts.
fn de_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = Value::deserialize(d)?;
    match &v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                return Ok(u);
            }
            if let Some(f) = n.as_f64()
                && f.is_finite()
                && f >= 0.0
                && f.fract() == 0.0
                && f < 18_446_744_073_709_551_616.0
            {
                return Ok(f as u64);
            }
            Err(serde::de::Error::custom(format!("timeout must be a non-negative whole number of seconds, got {n}")))
        }
        Value::Null => Ok(DEFAULT_TIMEOUT_SECS),
        other => Err(serde::de::Error::custom(format!("timeout must be a number of seconds, got {other}"))),
    }
}

/// One test or benchmark case: its `k: v` pairs become a line of the cases file.
/// Values stay as sent (ints and strings both occur) so re-encoding changes nothing.
pub type Case = Map<String, Value>;

/// The evaluation config, field for field as the seeds' platform sends it. Fields this
/// version does not know are kept in `extra` and written back, never dropped.
///
/// Deserialising is tolerant where Python is loose (null → default, `180.0` timeouts) and
/// strict where the runner depends on the value (`lang`, `mode`, file contents).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalConfig {
    /// `"py"` or `"cu"`.
    pub lang: Lang,
    /// SM architecture; `None` (absent or null) → nvcc's native architecture.
    pub arch: Option<Arch>,
    /// What to run.
    pub mode: Mode,
    /// Test cases (list of maps).
    pub tests: Vec<Case>,
    /// Benchmark cases (list of maps).
    pub benchmarks: Vec<Case>,
    /// Seconds for the test run.
    pub test_timeout: u64,
    /// Seconds for the benchmark run.
    pub benchmark_timeout: u64,
    /// Seconds for the ranked (leaderboard) run.
    pub ranked_timeout: u64,
    /// How the ranked run is scored; the seeds' runner defaults to `last`.
    pub ranking_by: RankingBy,
    /// `POPCORN_SEED`; `None` → the harness picks.
    pub seed: Option<i64>,
    /// Whether the harness gets `POPCORN_GPUS`.
    pub multi_gpu: bool,
    /// Python: the file to run (one of `sources`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub main: Option<String>,
    /// File name → content; for `cu`, these are compiled.
    pub sources: BTreeMap<String, String>,
    /// CUDA: header files written beside the sources but not compiled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// CUDA: preprocessor defines (`NAME: value`, value may be null for a bare `-DNAME`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defines: Option<Map<String, Value>>,
    /// CUDA: extra nvcc flags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compile_flags: Option<Vec<String>>,
    /// CUDA: `-I` directories.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_dirs: Option<Vec<String>>,
    /// CUDA: `-l` libraries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub libraries: Option<Vec<String>>,
    /// Everything else the platform sent, written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The known fields as they arrive. Kept separate from [`EvalConfig`] (instead of
/// `#[serde(flatten)]` on deserialisation) so errors carry the path of the offending field.
#[derive(Deserialize)]
struct KnownFields {
    lang: Lang,
    #[serde(default)]
    arch: Option<Arch>,
    mode: Mode,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    tests: Vec<Case>,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    benchmarks: Vec<Case>,
    #[serde(default = "default_timeout", deserialize_with = "de_timeout")]
    test_timeout: u64,
    #[serde(default = "default_timeout", deserialize_with = "de_timeout")]
    benchmark_timeout: u64,
    #[serde(default = "default_timeout", deserialize_with = "de_timeout")]
    ranked_timeout: u64,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    ranking_by: RankingBy,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default, deserialize_with = "super::lenient::bool")]
    multi_gpu: bool,
    #[serde(default)]
    main: Option<String>,
    #[serde(default, deserialize_with = "super::lenient::null_default")]
    sources: BTreeMap<String, String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    defines: Option<Map<String, Value>>,
    #[serde(default)]
    compile_flags: Option<Vec<String>>,
    #[serde(default)]
    include_dirs: Option<Vec<String>>,
    #[serde(default)]
    libraries: Option<Vec<String>>,
}

const KNOWN_FIELDS: &[&str] = &[
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
    "headers",
    "defines",
    "compile_flags",
    "include_dirs",
    "libraries",
];

/// A field-level deserialisation failure: where, and what the parser said.
struct FieldError {
    path: String,
    source: serde_json::Error,
}

impl EvalConfig {
    /// Splits a JSON object into known fields and `extra`, reporting the failing path.
    fn from_json_map(map: Map<String, Value>) -> Result<Self, FieldError> {
        let mut known = Map::new();
        let mut extra = Map::new();
        for (k, v) in map {
            if KNOWN_FIELDS.contains(&k.as_str()) {
                known.insert(k, v);
            } else {
                extra.insert(k, v);
            }
        }
        let k: KnownFields = serde_path_to_error::deserialize(Value::Object(known))
            .map_err(|e| FieldError { path: e.path().to_string(), source: e.into_inner() })?;
        Ok(Self {
            lang: k.lang,
            arch: k.arch,
            mode: k.mode,
            tests: k.tests,
            benchmarks: k.benchmarks,
            test_timeout: k.test_timeout,
            benchmark_timeout: k.benchmark_timeout,
            ranked_timeout: k.ranked_timeout,
            ranking_by: k.ranking_by,
            seed: k.seed,
            multi_gpu: k.multi_gpu,
            main: k.main,
            sources: k.sources,
            headers: k.headers,
            defines: k.defines,
            compile_flags: k.compile_flags,
            include_dirs: k.include_dirs,
            libraries: k.libraries,
            extra,
        })
    }
}

impl<'de> Deserialize<'de> for EvalConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(d)?;
        Self::from_json_map(map).map_err(|e| serde::de::Error::custom(format!("at `{}`: {}", e.path, e.source)))
    }
}

impl EvalConfig {
    /// A config with the contract's defaults, to be filled in by the caller.
    pub fn new(lang: Lang, mode: Mode) -> Self {
        Self {
            lang,
            arch: None,
            mode,
            tests: Vec::new(),
            benchmarks: Vec::new(),
            test_timeout: DEFAULT_TIMEOUT_SECS,
            benchmark_timeout: DEFAULT_TIMEOUT_SECS,
            ranked_timeout: DEFAULT_TIMEOUT_SECS,
            ranking_by: RankingBy::Last,
            seed: None,
            multi_gpu: false,
            main: None,
            sources: BTreeMap::new(),
            headers: None,
            defines: None,
            compile_flags: None,
            include_dirs: None,
            libraries: None,
            extra: Map::new(),
        }
    }

    /// Total bytes of source and header contents: what the size limit is applied to.
    pub fn source_bytes(&self) -> usize {
        let headers = self.headers.iter().flat_map(|h| h.values());
        self.sources.values().chain(headers).map(String::len).sum()
    }

    /// Wall time the whole evaluation may need: the sum of the timeouts its mode runs,
    /// so callers can derive an overall deadline.
    pub fn total_timeout_secs(&self) -> u64 {
        match self.mode {
            Mode::Test => self.test_timeout,
            Mode::Benchmark | Mode::Profile => self.benchmark_timeout,
            Mode::Leaderboard | Mode::Private => {
                self.test_timeout.saturating_add(self.benchmark_timeout).saturating_add(self.ranked_timeout)
            }
        }
    }

    /// Checks what the runner relies on and the platform refuses upstream, so a bad config
    /// fails before a build is created rather than inside it.
    pub fn validate(&self, limits: &PayloadLimits) -> Result<(), ConfigError> {
        if self.sources.is_empty() {
            return Err(ConfigError::NoSources);
        }
        if self.lang == Lang::Py {
            match self.main.as_deref() {
                None | Some("") => return Err(ConfigError::MissingMain),
                Some(main) if !self.sources.contains_key(main) => {
                    return Err(ConfigError::MainNotInSources { main: main.to_owned() });
                }
                Some(_) => {}
            }
        }
        let headers = self.headers.iter().flat_map(|h| h.iter());
        for (name, content) in self.sources.iter().chain(headers) {
            check_file_name(name)?;
            if content.is_empty() && !limits.allow_empty_files {
                return Err(ConfigError::EmptyFile { name: name.clone() });
            }
        }
        if let Some(dup) = self.headers.iter().flat_map(|h| h.keys()).find(|k| self.sources.contains_key(*k)) {
            return Err(ConfigError::DuplicateFile { name: dup.clone() });
        }
        let size = self.source_bytes();
        if size > limits.max_source_bytes {
            return Err(ConfigError::SourcesTooLarge { size, limit: limits.max_source_bytes });
        }
        if let Some(arch) = &self.arch {
            check_arch(arch)?;
        }
        for (field, value) in [
            ("test_timeout", self.test_timeout),
            ("benchmark_timeout", self.benchmark_timeout),
            ("ranked_timeout", self.ranked_timeout),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroTimeout { field });
            }
        }
        Ok(())
    }
}

/// File names become paths in the runner's working directory: refuse anything that could
/// escape it or confuse the compiler command line.
fn check_file_name(name: &str) -> Result<(), ConfigError> {
    let bad = |reason: &'static str| ConfigError::UnsafeFileName { name: name.to_owned(), reason };
    if name.is_empty() {
        return Err(bad("empty name"));
    }
    if name.len() > 255 {
        return Err(bad("longer than 255 bytes"));
    }
    if name.starts_with('/') {
        return Err(bad("absolute path"));
    }
    if name.starts_with('-') {
        return Err(bad("starts with '-'"));
    }
    if name.chars().any(|c| c == '\\' || c == '\0' || c.is_control()) {
        return Err(bad("contains a backslash or control character"));
    }
    if name.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err(bad("empty, '.' or '..' path component"));
    }
    Ok(())
}

/// The arch ends up in `-gencode=arch=compute_{arch},code=sm_{arch}`: only letters and
/// digits are meaningful there, anything else could smuggle in flags.
fn check_arch(arch: &Arch) -> Result<(), ConfigError> {
    match arch {
        Arch::Number(_) => Ok(()),
        Arch::Name(s) => {
            if !s.is_empty() && s.len() <= 16 && s.chars().all(|c| c.is_ascii_alphanumeric()) {
                Ok(())
            } else {
                Err(ConfigError::InvalidArch { arch: s.clone() })
            }
        }
    }
}

/// Turns file bytes (e.g. from a Secret) into a source file, with the same error the
/// payload validation uses, because the contract refuses non-UTF-8 files.
pub fn file_content_from_bytes(name: &str, bytes: Vec<u8>) -> Result<String, ConfigError> {
    String::from_utf8(bytes)
        .map_err(|e| ConfigError::NonUtf8File { name: name.to_owned(), valid_up_to: e.utf8_error().valid_up_to() })
}

/// Why a config is refused even though it is well-formed JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Nothing to run.
    #[error("config has no sources")]
    NoSources,
    /// `lang: py` needs `main`.
    #[error("lang \"py\" requires `main` (the file to run)")]
    MissingMain,
    /// `main` must be one of the files.
    #[error("main file {main:?} is not among the sources")]
    MainNotInSources {
        /// The `main` that was given.
        main: String,
    },
    /// The contract refuses empty files.
    #[error("file {name:?} is empty")]
    EmptyFile {
        /// The offending file.
        name: String,
    },
    /// The contract refuses non-UTF-8 files.
    #[error("file {name:?} is not valid UTF-8 (invalid byte at offset {valid_up_to})")]
    NonUtf8File {
        /// The offending file.
        name: String,
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// A file name that would escape the working directory or look like a flag.
    #[error("file name {name:?} is not allowed: {reason}")]
    UnsafeFileName {
        /// The offending name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The same name in `sources` and `headers` would overwrite one with the other.
    #[error("file {name:?} is both a source and a header")]
    DuplicateFile {
        /// The offending name.
        name: String,
    },
    /// Over the size limit for sources plus headers.
    #[error("sources are {size} bytes, over the {limit}-byte limit")]
    SourcesTooLarge {
        /// Total bytes of sources plus headers.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// An arch string nvcc would not take.
    #[error("arch {arch:?} is not valid (expected letters and digits, e.g. 90 or \"90a\")")]
    InvalidArch {
        /// The offending arch.
        arch: String,
    },
    /// A zero timeout would kill every run at once.
    #[error("{field} must be at least 1 second")]
    ZeroTimeout {
        /// Which timeout.
        field: &'static str,
    },
}

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

fn config_from_json(json: &[u8]) -> Result<EvalConfig, PayloadError> {
    let root = |source| PayloadError::Json { path: ".".to_owned(), source };
    let value: Value = serde_json::from_slice(json).map_err(root)?;
    let Value::Object(map) = value else {
        return Err(root(serde::de::Error::custom(format!("expected a JSON object, got {}", json_kind(&value)))));
    };
    EvalConfig::from_json_map(map).map_err(|e| PayloadError::Json { path: e.path, source: e.source })
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn py_config() -> EvalConfig {
        let mut c = EvalConfig::new(Lang::Py, Mode::Leaderboard);
        c.main = Some("eval.py".into());
        c.sources.insert("eval.py".into(), "print('hi')\n".into());
        c.sources.insert("submission.py".into(), "def custom_kernel(x): return x\n".into());
        c.tests = vec![json!({"size": 128, "seed": 42}).as_object().unwrap().clone()];
        c.benchmarks = vec![
            json!({"size": 1024, "seed": 5}).as_object().unwrap().clone(),
            json!({"size": 4096, "seed": "7"}).as_object().unwrap().clone(),
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
        assert_eq!((c.test_timeout, c.benchmark_timeout, c.ranked_timeout), (180, 180, 180));
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
    fn timeouts_accept_integral_floats_only() {
        let j = json!({"lang": "cu", "mode": "test", "sources": {"a.cu": "x"},
                       "test_timeout": 60.0, "benchmark_timeout": 90});
        let c = decode_payload(&raw_encode(j.to_string().as_bytes())).unwrap();
        assert_eq!((c.test_timeout, c.benchmark_timeout), (60, 90));
        for bad in [json!(1.5), json!(-1), json!("60"), json!([])] {
            let j = json!({"lang": "cu", "mode": "test", "sources": {"a.cu": "x"}, "ranked_timeout": bad});
            let err = decode_payload(&raw_encode(j.to_string().as_bytes())).unwrap_err();
            match err {
                PayloadError::Json { path, .. } => assert_eq!(path, "ranked_timeout"),
                other => panic!("{other:?}"),
            }
        }
        let j = json!({"lang": "cu", "mode": "test", "sources": {"a.cu": "x"}, "test_timeout": 0});
        assert!(matches!(
            decode_payload(&raw_encode(j.to_string().as_bytes())),
            Err(PayloadError::Invalid(ConfigError::ZeroTimeout { field: "test_timeout" }))
        ));
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
                assert_eq!(path, ".");
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
        let limits = PayloadLimits {
            max_decompressed_bytes: 64 * 1024,
            max_source_bytes: usize::MAX,
            ..PayloadLimits::default()
        };
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
            assert!(
                matches!(c.validate(&PayloadLimits::default()), Err(ConfigError::UnsafeFileName { .. })),
                "{name:?}"
            );
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
        c.test_timeout = 10;
        c.benchmark_timeout = 20;
        c.ranked_timeout = 30;
        assert_eq!(c.total_timeout_secs(), 10);
        c.mode = Mode::Benchmark;
        assert_eq!(c.total_timeout_secs(), 20);
        c.mode = Mode::Profile;
        assert_eq!(c.total_timeout_secs(), 20);
        c.mode = Mode::Leaderboard;
        assert_eq!(c.total_timeout_secs(), 60);
        c.mode = Mode::Private;
        c.ranked_timeout = u64::MAX;
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
}
