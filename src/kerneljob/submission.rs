//! What a KernelJob attempt sends to Buildkite: the evaluation payload, the build
//! environment and the meta-data that finds the build again. Pure.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use thiserror::Error;

use super::machine::{self, meta};
use crate::api::kerneljob::{CaseSpec, KernelJobSpec, Lang, Mode, RankingBy};
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
    /// The pipeline the build goes to: the managed pipeline of the queue, or the one the
    /// job (or its pool) names.
    pub pipeline: &'a str,
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
    /// The per-attempt branch must build whatever the pipeline's branch filter says.
    pub ignore_branch_filters: bool,
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

/// The contract's cases from the spec's: a line keeps kernelbot's key order; a map (the API
/// server sorts its keys) keeps that order. Anything else is refused, naming the case.
fn cases(field: &str, list: &[CaseSpec]) -> Result<Vec<contract::Case>, SubmissionError> {
    list.iter()
        .enumerate()
        .map(|(i, c)| match c {
            CaseSpec::Line(line) => contract::Case::parse_line(line)
                .map_err(|e| SubmissionError::Invalid(format!("spec.{field}[{i}]: {e}"))),
            CaseSpec::Params(map) => Ok(contract::Case::from(map.clone())),
            CaseSpec::Other(v) => Err(SubmissionError::Invalid(format!(
                "spec.{field}[{i}] is {v}: a case is a map of parameters ({{size: 7, seed: 1}}) or a line \"size: 7; seed: 1\""
            ))),
        })
        .collect()
}

/// The evaluation config of a job, with its sources resolved (inline ∪ sourcesFrom).
pub fn eval_config(
    spec: &KernelJobSpec,
    sources: BTreeMap<String, String>,
    pool_architecture: Option<&str>,
) -> Result<EvalConfig, SubmissionError> {
    let lang = match spec.lang {
        Lang::Py => contract::Lang::Py,
        Lang::Cu => contract::Lang::Cu,
    };
    let mut cfg = EvalConfig::new(lang, mode(spec.mode));
    cfg.arch = spec.arch.clone().or_else(|| machine::default_arch(pool_architecture)).map(|a| match a.parse::<u64>() {
        Ok(n) => Arch::Number(n),
        Err(_) => Arch::Name(a),
    });
    cfg.tests = cases("tests", &spec.tests)?;
    cfg.benchmarks = cases("benchmarks", &spec.benchmarks)?;
    let secs = |v: Option<f64>| v.filter(|s| s.is_finite() && *s > 0.0).unwrap_or(contract::DEFAULT_TIMEOUT);
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
    Ok(cfg)
}

/// Builds the create-build request of one attempt.
pub fn submission(
    spec: &KernelJobSpec,
    sources: BTreeMap<String, String>,
    ctx: &SubmissionContext<'_>,
) -> Result<Submission, SubmissionError> {
    let cfg = eval_config(spec, sources, ctx.pool_architecture)?;
    let size = cfg.source_bytes();
    if size > ctx.limits.max_source_bytes {
        return Err(SubmissionError::TooLarge { size, limit: ctx.limits.max_source_bytes });
    }
    // kernelbot runs empty source files; so does benchkite.
    let limits = PayloadLimits { allow_empty_files: true, ..ctx.limits };
    let payload = contract::encode_payload_with(&cfg, &limits).map_err(|e| match e {
        PayloadError::Invalid(contract::ConfigError::SourcesTooLarge { size, limit }) => {
            SubmissionError::TooLarge { size, limit }
        }
        other => SubmissionError::Invalid(other.to_string()),
    })?;
    let run_id = machine::run_id(ctx.uid, ctx.attempt);
    let mut env = spec.env.clone();
    if !spec.env.is_empty() {
        // The runner's sandbox hands exactly these on to the harness.
        let names: Vec<&str> = spec.env.keys().map(String::as_str).collect();
        env.insert(crate::runner::JOB_ENV_NAMES_ENV.into(), names.join(","));
    }
    // One env string when it fits (kernelbot's KERNELBOT_PAYLOAD); split into parts under
    // Linux's 128 KiB per-string limit otherwise (the agent execs the job with its env).
    env.extend(contract::payload_env(&payload));
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
        pipeline: ctx.pipeline.to_string(),
        commit: spec.commit.clone().unwrap_or_else(|| "HEAD".into()),
        ignore_branch_filters: spec.branch.is_none(),
        branch: spec.branch.clone().unwrap_or_else(|| super::board::attempt_branch(ctx.instance, &run_id)),
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
            pipeline: "kernels",
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
        assert_eq!((sub.commit.as_str(), sub.branch.as_str()), ("HEAD", "benchkite/bk-test/0b1c-2"));
        assert!(sub.ignore_branch_filters, "the per-attempt branch must build whatever the branch filter says");
        assert_eq!(sub.run_id, "0b1c-2");
        assert_eq!(sub.env["KERNELBOT_RUN_ID"], "0b1c-2");
        assert_eq!(sub.env["KERNELBOT_QUEUE"], "nvidia-h100");
        assert_eq!(sub.env["TASK"], "vectoradd");
        assert_eq!(sub.env[crate::runner::JOB_ENV_NAMES_ENV], "TASK", "the runner passes the job's own env on");
        assert_eq!(sub.meta_data[meta::RUN_ID], "0b1c-2");
        assert_eq!(sub.meta_data[meta::JOB], "ci/job-1");
        assert_eq!(sub.meta_data[meta::ATTEMPT], "2");
        let cfg = contract::decode_payload(&sub.env["KERNELBOT_PAYLOAD"]).unwrap();
        assert_eq!(cfg.mode, contract::Mode::Leaderboard);
        assert_eq!(cfg.arch, Some(Arch::Name("90a".into())), "defaults to the pool's architecture");
        assert_eq!(cfg.ranking_by, contract::RankingBy::Geom);
        assert_eq!(cfg.seed, Some(42));
        assert_eq!(cfg.tests[0].get("size"), Some(&serde_json::json!(128)));
        assert_eq!(cfg.test_timeout, 180.0);
        assert_eq!(cfg.sources, sources());
        assert!(cfg.defines.is_none(), "CUDA fields only for cu");
    }

    #[test]
    fn explicit_arch_and_numbers() {
        let mut s = spec();
        s.arch = Some("89".into());
        let cfg = eval_config(&s, sources(), Some("sm_90")).unwrap();
        assert_eq!(cfg.arch, Some(Arch::Number(89)));
        let cfg = eval_config(&spec(), sources(), Some("gfx942")).unwrap();
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
        let cfg = eval_config(&s, [("k.cu".to_string(), "int main(){}".to_string())].into(), None).unwrap();
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
        // kernelbot runs empty files: so does benchkite.
        assert!(submission(&spec(), [("submission.py".to_string(), String::new())].into(), &ctx()).is_ok());
    }

    #[test]
    fn case_lines_keep_kernelbot_key_order_and_bad_cases_are_named() {
        let mut s = spec();
        s.tests = vec![
            CaseSpec::Line("size: 7; seed: 1".into()),
            CaseSpec::Params([("b".to_string(), 1.into()), ("a".to_string(), 2.into())].into()),
        ];
        s.test_timeout_seconds = Some(1.5);
        let cfg = eval_config(&s, sources(), None).unwrap();
        assert_eq!(cfg.tests[0].keys().map(String::as_str).collect::<Vec<_>>(), ["size", "seed"]);
        assert_eq!(cfg.tests[1].keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b"], "maps come sorted");
        assert_eq!(cfg.test_timeout, 1.5, "fractional timeouts reach the runner");
        s.tests.push(CaseSpec::Other(serde_json::json!(1024)));
        let err = eval_config(&s, sources(), None).unwrap_err();
        assert!(err.to_string().contains("spec.tests[2]"), "{err}");
        s.tests = vec![CaseSpec::Line("size 7".into())];
        let err = submission(&s, sources(), &ctx()).unwrap_err();
        assert_eq!(err.reason(), "InvalidSubmission");
        assert!(err.to_string().contains("spec.tests[0]"), "{err}");
    }

    #[test]
    fn a_job_that_names_its_branch_keeps_it() {
        let mut s = spec();
        s.branch = Some("release".into());
        let sub = submission(&s, sources(), &ctx()).unwrap();
        assert_eq!(sub.branch, "release");
        assert!(!sub.ignore_branch_filters, "the user's branch honours the pipeline's filters");
    }

    #[test]
    fn a_large_payload_is_split_under_the_exec_limit() {
        // 1,000,000 bytes of poorly compressible text.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let text: String = (0..1_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b' ' + u8::try_from(x % 95).unwrap())
            })
            .collect();
        let mut c = ctx();
        c.limits.max_source_bytes = 1_000_000;
        let mut big = sources();
        big.insert("submission.py".into(), text);
        let sub = submission(&spec(), big, &c).unwrap();
        assert!(!sub.env.contains_key("KERNELBOT_PAYLOAD"), "too large for one env string");
        for (k, v) in &sub.env {
            assert!(k.len() + v.len() + 2 < 128 * 1024, "{k} is {} bytes", v.len());
        }
        let total: usize = sub.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        assert!(total < 2 * 1024 * 1024, "total env {total} bytes");
        let encoded = contract::payload_from_env(|k| sub.env.get(k).cloned()).unwrap();
        assert_eq!(
            contract::decode_payload_with(&encoded, &c.limits).unwrap().sources["submission.py"].len(),
            1_000_000
        );
    }
}
