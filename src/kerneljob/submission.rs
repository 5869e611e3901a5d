//! What a KernelJob attempt sends to Buildkite: the evaluation payload, the build
//! environment and the meta-data that finds the build again. Pure.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use thiserror::Error;

use super::machine::{self, meta};
use crate::api::kerneljob::{KernelJobSpec, Lang, Mode, RankingBy};
use crate::contract::{self, Arch, EvalConfig, PayloadError, PayloadLimits};

/// Inputs beyond the spec.
#[derive(Clone, Debug)]
pub struct SubmissionContext<'a> {
    /// `namespace/name` of the KernelJob.
    pub job_key: &'a str,
    pub uid: &'a str,
    /// 1-based attempt number.
    pub attempt: i32,
    /// The queue the build goes to (the pool's, or `spec.queue`).
    pub queue: &'a str,
    /// The pool's GPU architecture (e.g. `sm_90`), for the default `arch`.
    pub pool_architecture: Option<&'a str>,
    /// Default pipeline slug.
    pub default_pipeline: &'a str,
    /// Identifies this benchkite installation in build meta-data.
    pub instance: &'a str,
    pub limits: PayloadLimits,
}

/// A build, ready to create.
#[derive(Clone, Debug, PartialEq)]
pub struct Submission {
    pub pipeline: String,
    pub run_id: String,
    pub commit: String,
    pub branch: String,
    pub message: String,
    pub env: BTreeMap<String, String>,
    pub meta_data: BTreeMap<String, String>,
    /// Bytes of source the payload carries.
    pub source_bytes: usize,
}

#[derive(Debug, Error)]
pub enum SubmissionError {
    /// Over the configured limit: the job fails with `PayloadTooLarge`.
    #[error("the submission's sources are {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    /// The evaluation config is invalid: the job fails with `InvalidSubmission`.
    #[error("{0}")]
    Invalid(String),
}

impl SubmissionError {
    pub fn reason(&self) -> &'static str {
        match self {
            SubmissionError::TooLarge { .. } => "PayloadTooLarge",
            SubmissionError::Invalid(_) => "InvalidSubmission",
        }
    }
}

fn mode(m: Mode) -> contract::Mode {
    match m {
        Mode::Test => contract::Mode::Test,
        Mode::Benchmark => contract::Mode::Benchmark,
        Mode::Profile => contract::Mode::Profile,
        Mode::Leaderboard => contract::Mode::Leaderboard,
        Mode::Private => contract::Mode::Private,
    }
}

fn cases(list: &[BTreeMap<String, Value>]) -> Vec<contract::Case> {
    list.iter().map(|c| c.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).collect()
}

/// The evaluation config of a job, with its sources resolved (inline ∪ sourcesFrom).
pub fn eval_config(
    spec: &KernelJobSpec,
    sources: BTreeMap<String, String>,
    pool_architecture: Option<&str>,
) -> EvalConfig {
    let lang = match spec.lang {
        Lang::Py => contract::Lang::Py,
        Lang::Cu => contract::Lang::Cu,
    };
    let mut cfg = EvalConfig::new(lang, mode(spec.mode));
    cfg.arch = spec.arch.clone().or_else(|| machine::default_arch(pool_architecture)).map(|a| match a.parse::<u64>() {
        Ok(n) => Arch::Number(n),
        Err(_) => Arch::Name(a),
    });
    cfg.tests = cases(&spec.tests);
    cfg.benchmarks = cases(&spec.benchmarks);
    let secs = |v: Option<i64>| v.and_then(|s| u64::try_from(s).ok()).unwrap_or(contract::DEFAULT_TIMEOUT_SECS);
    cfg.test_timeout = secs(spec.test_timeout_seconds);
    cfg.benchmark_timeout = secs(spec.benchmark_timeout_seconds);
    cfg.ranked_timeout = secs(spec.ranked_timeout_seconds);
    cfg.ranking_by = match spec.ranking_by {
        Some(RankingBy::Mean) => contract::RankingBy::Mean,
        Some(RankingBy::Geom) => contract::RankingBy::Geom,
        Some(RankingBy::Last) | None => contract::RankingBy::Last,
    };
    cfg.seed = spec.seed;
    cfg.multi_gpu = spec.multi_gpu;
    cfg.main = spec.main.clone();
    cfg.sources = sources;
    if spec.lang == Lang::Cu {
        cfg.headers = (!spec.headers.is_empty()).then(|| spec.headers.clone());
        cfg.defines = (!spec.defines.is_empty())
            .then(|| spec.defines.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<Map<_, _>>());
        cfg.compile_flags = (!spec.compile_flags.is_empty()).then(|| spec.compile_flags.clone());
        cfg.include_dirs = (!spec.include_dirs.is_empty()).then(|| spec.include_dirs.clone());
        cfg.libraries = (!spec.libraries.is_empty()).then(|| spec.libraries.clone());
    }
    cfg
}

/// Builds the create-build request of one attempt.
pub fn submission(
    spec: &KernelJobSpec,
    sources: BTreeMap<String, String>,
    ctx: &SubmissionContext<'_>,
) -> Result<Submission, SubmissionError> {
    let cfg = eval_config(spec, sources, ctx.pool_architecture);
    let size = cfg.source_bytes();
    if size > ctx.limits.max_source_bytes {
        return Err(SubmissionError::TooLarge { size, limit: ctx.limits.max_source_bytes });
    }
    let payload = contract::encode_payload_with(&cfg, &ctx.limits).map_err(|e| match e {
        PayloadError::Invalid(contract::ConfigError::SourcesTooLarge { size, limit }) => {
            SubmissionError::TooLarge { size, limit }
        }
        other => SubmissionError::Invalid(other.to_string()),
    })?;
    let run_id = machine::run_id(ctx.uid, ctx.attempt);
    let mut env = spec.env.clone();
    env.insert("KERNELBOT_PAYLOAD".into(), payload);
    env.insert("KERNELBOT_RUN_ID".into(), run_id.clone());
    env.insert("KERNELBOT_QUEUE".into(), ctx.queue.to_string());
    if let Some(image) = &spec.image {
        env.insert("KERNELBOT_IMAGE".into(), image.clone());
    }
    env.insert("KERNELBOT_PRIORITY".into(), spec.priority.to_string());
    let meta_data: BTreeMap<String, String> = [
        (meta::JOB.to_string(), ctx.job_key.to_string()),
        (meta::RUN_ID.to_string(), run_id.clone()),
        (meta::ATTEMPT.to_string(), ctx.attempt.to_string()),
        (meta::INSTANCE.to_string(), ctx.instance.to_string()),
    ]
    .into();
    Ok(Submission {
        pipeline: spec.pipeline.clone().unwrap_or_else(|| ctx.default_pipeline.to_string()),
        commit: spec.commit.clone().unwrap_or_else(|| "HEAD".into()),
        branch: spec.branch.clone().unwrap_or_else(|| "main".into()),
        message: format!("{} {:?} (attempt {})", ctx.job_key, spec.mode, ctx.attempt).to_lowercase(),
        run_id,
        env,
        meta_data,
        source_bytes: size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KernelJobSpec {
        serde_json::from_value(serde_json::json!({
            "pool": "h100",
            "mode": "leaderboard",
            "lang": "py",
            "main": "submission.py",
            "tests": [{"size": 128, "seed": 5236}],
            "benchmarks": [{"size": 1024, "seed": 1}],
            "rankingBy": "geom",
            "seed": 42,
            "env": {"TASK": "vectoradd"},
            "priority": 5,
        }))
        .expect("spec")
    }

    fn ctx() -> SubmissionContext<'static> {
        SubmissionContext {
            job_key: "ci/job-1",
            uid: "0b1c",
            attempt: 2,
            queue: "nvidia-h100",
            pool_architecture: Some("sm_90"),
            default_pipeline: "kernels",
            instance: "bk-test",
            limits: PayloadLimits::default(),
        }
    }

    fn sources() -> BTreeMap<String, String> {
        [("submission.py".to_string(), "print('hi')\n".to_string())].into()
    }

    #[test]
    fn payload_roundtrips_with_defaults_applied() {
        let sub = submission(&spec(), sources(), &ctx()).unwrap();
        assert_eq!(sub.pipeline, "kernels");
        assert_eq!((sub.commit.as_str(), sub.branch.as_str()), ("HEAD", "main"));
        assert_eq!(sub.run_id, "0b1c-2");
        assert_eq!(sub.env["KERNELBOT_RUN_ID"], "0b1c-2");
        assert_eq!(sub.env["KERNELBOT_QUEUE"], "nvidia-h100");
        assert_eq!(sub.env["TASK"], "vectoradd");
        assert_eq!(sub.meta_data[meta::RUN_ID], "0b1c-2");
        assert_eq!(sub.meta_data[meta::JOB], "ci/job-1");
        assert_eq!(sub.meta_data[meta::ATTEMPT], "2");
        let cfg = contract::decode_payload(&sub.env["KERNELBOT_PAYLOAD"]).unwrap();
        assert_eq!(cfg.mode, contract::Mode::Leaderboard);
        assert_eq!(cfg.arch, Some(Arch::Name("90a".into())), "defaults to the pool's architecture");
        assert_eq!(cfg.ranking_by, contract::RankingBy::Geom);
        assert_eq!(cfg.seed, Some(42));
        assert_eq!(cfg.tests[0]["size"], serde_json::json!(128));
        assert_eq!(cfg.test_timeout, 180);
        assert_eq!(cfg.sources, sources());
        assert!(cfg.defines.is_none(), "CUDA fields only for cu");
    }

    #[test]
    fn explicit_arch_and_numbers() {
        let mut s = spec();
        s.arch = Some("89".into());
        let cfg = eval_config(&s, sources(), Some("sm_90"));
        assert_eq!(cfg.arch, Some(Arch::Number(89)));
        let cfg = eval_config(&spec(), sources(), Some("gfx942"));
        assert_eq!(cfg.arch, None, "AMD: no CUDA arch");
    }

    #[test]
    fn cuda_fields() {
        let mut s = spec();
        s.lang = Lang::Cu;
        s.main = None;
        s.defines = [("N".to_string(), "4".to_string())].into();
        s.compile_flags = vec!["-O3".into()];
        s.headers = [("k.h".to_string(), "#pragma once\n".to_string())].into();
        let cfg = eval_config(&s, [("k.cu".to_string(), "int main(){}".to_string())].into(), None);
        assert_eq!(cfg.lang, contract::Lang::Cu);
        assert_eq!(cfg.defines.as_ref().unwrap()["N"], serde_json::json!("4"));
        assert_eq!(cfg.compile_flags.as_deref(), Some(&["-O3".to_string()][..]));
        assert!(cfg.headers.is_some());
    }

    #[test]
    fn too_large_and_invalid() {
        let mut c = ctx();
        c.limits.max_source_bytes = 4;
        let err = submission(&spec(), sources(), &c).unwrap_err();
        assert_eq!(err.reason(), "PayloadTooLarge");
        assert!(err.to_string().contains("over the 4-byte limit"));
        let err = submission(&spec(), [("other.py".to_string(), "x=1".to_string())].into(), &ctx()).unwrap_err();
        assert_eq!(err.reason(), "InvalidSubmission");
        let err = submission(&spec(), [("submission.py".to_string(), String::new())].into(), &ctx()).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
