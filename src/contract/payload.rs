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

/// A timeout as sent: any finite number of seconds (kernelbot hands the value straight to
/// `subprocess.run(timeout=...)`, so `1.5` is valid); `null` → the default.
fn de_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| serde::de::Error::custom(format!("timeout must be a finite number of seconds, got {n}"))),
        Value::Null => Ok(DEFAULT_TIMEOUT),
        other => Err(serde::de::Error::custom(format!("timeout must be a number of seconds, got {other}"))),
    }
}

/// Whole seconds as a JSON integer (what Python's `json.dumps` writes for kernelbot's int
/// timeouts), fractions as a float.
fn ser_timeout<S: Serializer>(secs: &f64, s: S) -> Result<S::Ok, S::Error> {
    if secs.fract() == 0.0 && secs.abs() < 9_007_199_254_740_992.0 {
        s.serialize_i64(*secs as i64)
    } else {
        s.serialize_f64(*secs)
    }
}

pub use super::case::{Case, CaseLineError};

/// The evaluation config, field for field as the seeds' platform sends it. Fields this
/// version does not know are kept in `extra` and written back, never dropped.
///
/// Deserialising is tolerant where Python is loose (null → default) and strict where the
/// runner depends on the value (`lang`, `mode`, file contents). Test and benchmark cases
/// keep the key order of the document (see [`Case`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalConfig {
    /// `"py"` or `"cu"`.
    pub lang: Lang,
    /// SM architecture; `None` (absent or null) → nvcc's native architecture.
    pub arch: Option<Arch>,
    /// What to run.
    pub mode: Mode,
    /// Test cases (list of maps, key order kept).
    pub tests: Vec<Case>,
    /// Benchmark cases (list of maps, key order kept).
    pub benchmarks: Vec<Case>,
    /// Seconds for the test run (fractions allowed, as in kernelbot).
    #[serde(serialize_with = "ser_timeout")]
    pub test_timeout: f64,
    /// Seconds for the benchmark run (and each profile run).
    #[serde(serialize_with = "ser_timeout")]
    pub benchmark_timeout: f64,
    /// Seconds for the ranked (leaderboard) run.
    #[serde(serialize_with = "ser_timeout")]
    pub ranked_timeout: f64,
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

/// `T` with `null` read as `T::default()`.
struct NullDefault<T>(T);

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for NullDefault<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::lenient::null_default(d).map(NullDefault)
    }
}

/// A boolean as [`super::lenient::bool`] reads it.
struct LenientBool(bool);

impl<'de> Deserialize<'de> for LenientBool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::lenient::bool(d).map(LenientBool)
    }
}

/// A timeout as [`de_timeout`] reads it.
struct Timeout(f64);

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_timeout(d).map(Timeout)
    }
}

/// Reads the config object field by field, straight from the document: going through a
/// `serde_json::Value` first would sort the keys of every case. Each field is read by its
/// own type, so under `serde_path_to_error` an error carries the offending field's path.
struct ConfigVisitor;

impl<'de> serde::de::Visitor<'de> for ConfigVisitor {
    type Value = EvalConfig;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an evaluation config (a JSON object)")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<EvalConfig, A::Error> {
        let mut lang = None;
        let mut mode = None;
        let mut c = EvalConfig::new(Lang::Py, Mode::Test);
        // A repeated key: the last one wins, as in Python's json.loads.
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "lang" => lang = Some(map.next_value::<Lang>()?),
                "mode" => mode = Some(map.next_value::<Mode>()?),
                "arch" => c.arch = map.next_value()?,
                "tests" => c.tests = map.next_value::<NullDefault<_>>()?.0,
                "benchmarks" => c.benchmarks = map.next_value::<NullDefault<_>>()?.0,
                "test_timeout" => c.test_timeout = map.next_value::<Timeout>()?.0,
                "benchmark_timeout" => c.benchmark_timeout = map.next_value::<Timeout>()?.0,
                "ranked_timeout" => c.ranked_timeout = map.next_value::<Timeout>()?.0,
                "ranking_by" => c.ranking_by = map.next_value::<NullDefault<_>>()?.0,
                "seed" => c.seed = map.next_value()?,
                "multi_gpu" => c.multi_gpu = map.next_value::<LenientBool>()?.0,
                "main" => c.main = map.next_value()?,
                "sources" => c.sources = map.next_value::<NullDefault<_>>()?.0,
                "headers" => c.headers = map.next_value()?,
                "defines" => c.defines = map.next_value()?,
                "compile_flags" => c.compile_flags = map.next_value()?,
                "include_dirs" => c.include_dirs = map.next_value()?,
                "libraries" => c.libraries = map.next_value()?,
                _ => {
                    let v: Value = map.next_value()?;
                    c.extra.insert(key, v);
                }
            }
        }
        c.lang = lang.ok_or_else(|| serde::de::Error::missing_field("lang"))?;
        c.mode = mode.ok_or_else(|| serde::de::Error::missing_field("mode"))?;
        Ok(c)
    }
}

impl<'de> Deserialize<'de> for EvalConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ConfigVisitor)
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
            test_timeout: DEFAULT_TIMEOUT,
            benchmark_timeout: DEFAULT_TIMEOUT,
            ranked_timeout: DEFAULT_TIMEOUT,
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

    /// Wall time the whole evaluation may need: the sum of the timeouts its mode runs
    /// (negative ones count as zero), so callers can derive an overall deadline.
    pub fn total_timeout(&self) -> f64 {
        let t = |secs: f64| if secs.is_finite() { secs.max(0.0) } else { f64::MAX };
        match self.mode {
            Mode::Test => t(self.test_timeout),
            Mode::Benchmark | Mode::Profile => t(self.benchmark_timeout),
            Mode::Leaderboard | Mode::Private => {
                t(self.test_timeout) + t(self.benchmark_timeout) + t(self.ranked_timeout)
            }
        }
    }

    /// [`EvalConfig::total_timeout`] in whole seconds, rounded up (saturating).
    pub fn total_timeout_secs(&self) -> u64 {
        let total = self.total_timeout().ceil();
        if total >= u64::MAX as f64 { u64::MAX } else { total as u64 }
    }

    /// Checks what the runner relies on and the platform refuses upstream, so a bad config
    /// fails before a build is created rather than inside it: [`EvalConfig::validate_runnable`]
    /// plus the API's own rules (no empty files unless `limits.allow_empty_files`, timeouts
    /// above zero).
    pub fn validate(&self, limits: &PayloadLimits) -> Result<(), ConfigError> {
        self.check(limits, true)
    }

    /// What `benchkite run` refuses: only what kernelbot's own runner (`run_config`) fails on
    /// too, and what would be unsafe to run. kernelbot accepts empty files and any timeout
    /// (`subprocess.run` times out at once on zero or less), so those pass here; a Python
    /// config without its `main` among the sources fails kernelbot's `assert main in
    /// sources`; a file name outside the working directory fails its `_create_files` assert.
    pub fn validate_runnable(&self, limits: &PayloadLimits) -> Result<(), ConfigError> {
        self.check(limits, false)
    }

    fn check(&self, limits: &PayloadLimits, strict: bool) -> Result<(), ConfigError> {
        // A `cu` config without sources is nvcc's error to report, as in kernelbot.
        if self.sources.is_empty() && (strict || self.lang == Lang::Py) {
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
            if strict && content.is_empty() && !limits.allow_empty_files {
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
            if !value.is_finite() {
                return Err(ConfigError::InvalidTimeout { field, reason: "not a finite number" });
            }
            if strict && value <= 0.0 {
                return Err(ConfigError::InvalidTimeout { field, reason: "must be more than 0 seconds" });
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
    /// A timeout that is not finite, or (for the API) not above zero: every run would be
    /// killed at once.
    #[error("{field} {reason}")]
    InvalidTimeout {
        /// Which timeout.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
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

/// Largest value of one payload env variable. Linux refuses an `execve` whose single
/// `NAME=VALUE` string (NUL included) is over `MAX_ARG_STRLEN` = 32 pages = 131,072 bytes
/// (`include/uapi/linux/binfmts.h`); the Buildkite agent hands the job env to `execve`, so a
/// longer `KERNELBOT_PAYLOAD` makes the job fail before it starts. 100,000 bytes leaves
/// 31,072 bytes of margin for the name, `=`, the NUL and any wrapping.
pub const PAYLOAD_ENV_MAX: usize = 100_000;

/// Number of parts of a split payload (`BENCHKITE_PAYLOAD_0` … `_{n-1}`).
pub const PAYLOAD_PARTS_ENV: &str = "BENCHKITE_PAYLOAD_PARTS";

/// Lower-case hex SHA-256 of the whole encoded payload (the parts concatenated).
pub const PAYLOAD_SHA256_ENV: &str = "BENCHKITE_PAYLOAD_SHA256";

/// Prefix of every split-payload variable; part `i` is `BENCHKITE_PAYLOAD_{i}`.
pub const PAYLOAD_PART_PREFIX: &str = "BENCHKITE_PAYLOAD_";

/// Most parts a split payload may have: far above anything within the decoder's limits
/// (16 MiB of JSON is ~22 MB of base64, 224 parts) and far below what would make the runner
/// loop for long on a corrupt count. The OS refuses much less anyway (`ARG_MAX`, usually
/// 2 MiB for the whole env).
pub const MAX_PAYLOAD_PARTS: usize = 1024;

/// The name of part `i` of a split payload.
pub fn payload_part_env(i: usize) -> String {
    format!("{PAYLOAD_PART_PREFIX}{i}")
}

/// Whether `name` is one of the variables that carry a payload (either transport), so a
/// runner can keep every one of them from the evaluated program.
pub fn is_payload_env(name: &str) -> bool {
    name == PAYLOAD_ENV || name.starts_with(PAYLOAD_PART_PREFIX)
}

/// The environment variables that carry `encoded` (the output of [`encode_payload`]) to a
/// job: `KERNELBOT_PAYLOAD` alone when it fits [`PAYLOAD_ENV_MAX`] (kernelbot's own
/// contract), else `BENCHKITE_PAYLOAD_PARTS=<n>`, `BENCHKITE_PAYLOAD_SHA256=<hex>` and
/// `BENCHKITE_PAYLOAD_0` … `BENCHKITE_PAYLOAD_{n-1}`, each at most [`PAYLOAD_ENV_MAX`]
/// bytes, and no `KERNELBOT_PAYLOAD`. [`payload_from_env`] reverses it.
pub fn payload_env(encoded: &str) -> Vec<(String, String)> {
    if encoded.len() <= PAYLOAD_ENV_MAX {
        return vec![(PAYLOAD_ENV.to_owned(), encoded.to_owned())];
    }
    let mut parts = Vec::new();
    let mut rest = encoded;
    while !rest.is_empty() {
        // Base64 is ASCII; the boundary check only matters for a caller passing other text.
        let mut end = super::text::floor_char_boundary(rest, PAYLOAD_ENV_MAX);
        if end == 0 {
            end = rest.char_indices().nth(1).map_or(rest.len(), |(i, _)| i);
        }
        let (head, tail) = rest.split_at(end);
        parts.push(head);
        rest = tail;
    }
    let mut env = Vec::with_capacity(parts.len() + 2);
    env.push((PAYLOAD_PARTS_ENV.to_owned(), parts.len().to_string()));
    env.push((PAYLOAD_SHA256_ENV.to_owned(), sha256_hex(encoded)));
    env.extend(parts.into_iter().enumerate().map(|(i, p)| (payload_part_env(i), p.to_owned())));
    env
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Reassembles the encoded payload from a job's environment (`get` looks a variable up):
/// `KERNELBOT_PAYLOAD`, or the split form [`payload_env`] writes, checked part by part
/// (count, presence, size) and against its SHA-256. The result still has to go through
/// [`decode_payload_with`].
pub fn payload_from_env(get: impl Fn(&str) -> Option<String>) -> Result<String, PayloadError> {
    let Some(count) = get(PAYLOAD_PARTS_ENV) else {
        return get(PAYLOAD_ENV).ok_or(PayloadError::NotSet);
    };
    if get(PAYLOAD_ENV).is_some() {
        return Err(SplitPayloadError::Ambiguous.into());
    }
    let n: usize = match count.trim().parse() {
        Ok(n) if n > 0 => n,
        _ => return Err(SplitPayloadError::BadCount { value: count }.into()),
    };
    if n > MAX_PAYLOAD_PARTS {
        return Err(SplitPayloadError::TooManyParts { parts: n, max: MAX_PAYLOAD_PARTS }.into());
    }
    let expected = get(PAYLOAD_SHA256_ENV).ok_or(SplitPayloadError::MissingChecksum)?;
    let expected = expected.trim().to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SplitPayloadError::BadChecksum { value: expected }.into());
    }
    let mut encoded = String::with_capacity(n.saturating_mul(PAYLOAD_ENV_MAX).min(32 << 20));
    for i in 0..n {
        let name = payload_part_env(i);
        let part = get(&name).ok_or_else(|| SplitPayloadError::MissingPart { name: name.clone(), parts: n })?;
        if part.len() > PAYLOAD_ENV_MAX {
            return Err(SplitPayloadError::OversizePart { name, len: part.len(), max: PAYLOAD_ENV_MAX }.into());
        }
        encoded.push_str(&part);
    }
    let actual = sha256_hex(&encoded);
    if actual != expected {
        return Err(SplitPayloadError::ChecksumMismatch { expected, actual, parts: n }.into());
    }
    Ok(encoded)
}

/// Why a split payload could not be put back together (see [`payload_from_env`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitPayloadError {
    /// Both transports at once: which one is meant is unknowable.
    #[error("both {PAYLOAD_ENV} and {PAYLOAD_PARTS_ENV} are set; a split payload never carries {PAYLOAD_ENV}")]
    Ambiguous,
    /// The part count is not a positive whole number.
    #[error("{PAYLOAD_PARTS_ENV}={value:?} is not a positive whole number")]
    BadCount {
        /// The value found.
        value: String,
    },
    /// More parts than any payload within the limits needs.
    #[error("{PAYLOAD_PARTS_ENV}={parts} is over the {max}-part limit")]
    TooManyParts {
        /// The count found.
        parts: usize,
        /// [`MAX_PAYLOAD_PARTS`].
        max: usize,
    },
    /// No checksum beside the parts.
    #[error("{PAYLOAD_PARTS_ENV} is set but {PAYLOAD_SHA256_ENV} is not")]
    MissingChecksum,
    /// The checksum is not 64 hex digits.
    #[error("{PAYLOAD_SHA256_ENV}={value:?} is not a hex SHA-256 (64 hex digits)")]
    BadChecksum {
        /// The value found.
        value: String,
    },
    /// A part named by the count is absent.
    #[error("{name} is missing ({PAYLOAD_PARTS_ENV}={parts})")]
    MissingPart {
        /// The absent variable.
        name: String,
        /// The count found.
        parts: usize,
    },
    /// A part longer than the sender may write (it would not have survived `execve`).
    #[error("{name} is {len} bytes, over the {max}-byte part limit")]
    OversizePart {
        /// The offending variable.
        name: String,
        /// Its length.
        len: usize,
        /// [`PAYLOAD_ENV_MAX`].
        max: usize,
    },
    /// The parts do not add up to what was sent (one lost, reordered or cut).
    #[error("the {parts} parts do not match {PAYLOAD_SHA256_ENV}: expected {expected}, got {actual}")]
    ChecksumMismatch {
        /// The checksum sent.
        expected: String,
        /// The checksum of the parts found.
        actual: String,
        /// The count found.
        parts: usize,
    },
}

fn config_from_json(json: &[u8]) -> Result<EvalConfig, PayloadError> {
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
mod tests {
    use super::*;
    use serde_json::json;

    fn py_config() -> EvalConfig {
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
        let v =
            String::from_utf8(decode_payload_json(&encode_payload(&c).unwrap(), &PayloadLimits::default()).unwrap())
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

    /// `len` bytes of random printable ASCII: text that zlib barely shrinks.
    fn noise(len: usize, seed: u64) -> String {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..len).map(|_| char::from(rng.random_range(b' '..=b'~'))).collect()
    }

    fn env_of(pairs: &[(String, String)]) -> impl Fn(&str) -> Option<String> + '_ {
        |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn a_payload_that_fits_travels_as_kernelbot_payload() {
        for len in [0, 1, PAYLOAD_ENV_MAX] {
            let encoded = "A".repeat(len);
            let env = payload_env(&encoded);
            assert_eq!(env, [(PAYLOAD_ENV.to_owned(), encoded.clone())]);
            assert_eq!(payload_from_env(env_of(&env)).unwrap(), encoded);
        }
        let env = payload_env(&"A".repeat(PAYLOAD_ENV_MAX + 1));
        assert_eq!(
            env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            [PAYLOAD_PARTS_ENV, PAYLOAD_SHA256_ENV, "BENCHKITE_PAYLOAD_0", "BENCHKITE_PAYLOAD_1"]
        );
        assert_eq!((env[0].1.as_str(), env[2].1.len(), env[3].1.len()), ("2", PAYLOAD_ENV_MAX, 1));
        assert!(PAYLOAD_ENV_MAX + "BENCHKITE_PAYLOAD_1023=".len() + 1 < 131_072);
        assert!(matches!(payload_from_env(|_| None), Err(PayloadError::NotSet)));
        assert!(
            is_payload_env(PAYLOAD_ENV) && is_payload_env("BENCHKITE_PAYLOAD_7") && is_payload_env(PAYLOAD_SHA256_ENV)
        );
        assert!(!is_payload_env("KERNELBOT_RUN_ID") && !is_payload_env("BENCHKITE_RESULT_FILE"));
    }

    #[test]
    fn a_million_byte_submission_is_split_under_the_exec_limits_and_comes_back() {
        let mut c = py_config();
        c.sources.insert("submission.py".into(), noise(1_000_000, 42));
        let limits = PayloadLimits { max_source_bytes: 1_100_000, ..PayloadLimits::default() };
        let encoded = encode_payload_with(&c, &limits).unwrap();
        assert!(encoded.len() > 700_000, "poorly compressible: {} bytes encoded", encoded.len());
        let env = payload_env(&encoded);
        assert!(env.iter().all(|(k, _)| k != PAYLOAD_ENV));
        // Linux: each `NAME=VALUE` with its NUL under MAX_ARG_STRLEN (131,072); the whole env
        // well under the usual 2 MiB ARG_MAX.
        for (k, v) in &env {
            assert!(v.len() <= PAYLOAD_ENV_MAX, "{k}: {}", v.len());
            assert!(k.len() + 1 + v.len() + 1 < 131_072, "{k}");
        }
        let total: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        assert!(total < 3 * 1024 * 1024 / 2, "{total} bytes of env");
        let back = payload_from_env(env_of(&env)).unwrap();
        assert_eq!(back, encoded);
        assert_eq!(decode_payload_with(&back, &limits).unwrap(), c);
    }

    #[test]
    fn a_damaged_split_payload_says_what_is_wrong() {
        let encoded = noise(PAYLOAD_ENV_MAX * 2 + 10, 7);
        let env = payload_env(&encoded);
        assert_eq!(env[0].1, "3");
        type Env = Vec<(String, String)>;
        let with = |edit: &dyn Fn(&mut Env)| {
            let mut e = env.clone();
            edit(&mut e);
            payload_from_env(env_of(&e)).unwrap_err().to_string()
        };
        let set = |e: &mut Env, k: &str, v: String| {
            e.retain(|(n, _)| n != k);
            e.push((k.to_owned(), v));
        };
        let cases: Vec<(String, &str)> = vec![
            (
                with(&|e| e.retain(|(k, _)| k != "BENCHKITE_PAYLOAD_1")),
                "BENCHKITE_PAYLOAD_1 is missing (BENCHKITE_PAYLOAD_PARTS=3)",
            ),
            (
                with(&|e| set(e, PAYLOAD_PARTS_ENV, "x".into())),
                "BENCHKITE_PAYLOAD_PARTS=\"x\" is not a positive whole number",
            ),
            (with(&|e| set(e, PAYLOAD_PARTS_ENV, "0".into())), "is not a positive whole number"),
            (with(&|e| set(e, PAYLOAD_PARTS_ENV, "4".into())), "BENCHKITE_PAYLOAD_3 is missing"),
            (with(&|e| set(e, PAYLOAD_PARTS_ENV, "2".into())), "the 2 parts do not match BENCHKITE_PAYLOAD_SHA256"),
            (with(&|e| set(e, PAYLOAD_PARTS_ENV, "5000".into())), "over the 1024-part limit"),
            (
                with(&|e| e.retain(|(k, _)| k != PAYLOAD_SHA256_ENV)),
                "BENCHKITE_PAYLOAD_PARTS is set but BENCHKITE_PAYLOAD_SHA256 is not",
            ),
            (with(&|e| set(e, PAYLOAD_SHA256_ENV, "abc".into())), "is not a hex SHA-256"),
            (
                with(&|e| set(e, "BENCHKITE_PAYLOAD_2", "A".repeat(PAYLOAD_ENV_MAX + 1))),
                "BENCHKITE_PAYLOAD_2 is 100001 bytes, over the 100000-byte part limit",
            ),
            (
                with(&|e| {
                    let (a, b) = (e[2].1.clone(), e[3].1.clone());
                    e[2].1 = b;
                    e[3].1 = a;
                }),
                "do not match",
            ),
            (
                with(&|e| e.push((PAYLOAD_ENV.into(), "x".into()))),
                "both KERNELBOT_PAYLOAD and BENCHKITE_PAYLOAD_PARTS are set",
            ),
        ];
        for (got, want) in cases {
            assert!(got.starts_with("split payload: ") && got.contains(want), "{got:?} should contain {want:?}");
        }
        // Upper-case hex is the same checksum.
        let mut e = env.clone();
        e[1].1 = e[1].1.to_ascii_uppercase();
        assert_eq!(payload_from_env(env_of(&e)).unwrap(), encoded);
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
}
