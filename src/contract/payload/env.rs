//! The payload's transport in a job's environment: `KERNELBOT_PAYLOAD` when it fits one
//! variable, else split into parts with a checksum.

use super::{PAYLOAD_ENV, PayloadError};

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

/// The environment variables that carry `encoded` (the output of [`encode_payload`](super::encode_payload)) to a
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
        let mut end = crate::contract::text::floor_char_boundary(rest, PAYLOAD_ENV_MAX);
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
/// [`decode_payload_with`](super::decode_payload_with).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::payload::tests::py_config;
    use crate::contract::payload::{PayloadLimits, decode_payload_with, encode_payload_with};

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
}
