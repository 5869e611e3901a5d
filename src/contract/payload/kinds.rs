//! The enumerations of a config: language, mode, ranking order and SM architecture.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
