//! [`EvalConfig`]: the config's fields, its tolerant deserialisation and its validation.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::{Arch, Case, DEFAULT_TIMEOUT, Lang, Mode, PayloadLimits, RankingBy};

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
        crate::contract::lenient::null_default(d).map(NullDefault)
    }
}

/// A boolean as [`crate::contract::lenient::bool`] reads it.
struct LenientBool(bool);

impl<'de> Deserialize<'de> for LenientBool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::contract::lenient::bool(d).map(LenientBool)
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
