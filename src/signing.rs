//! Results that cannot be forged: the keys that sign a runner's result and the controller's
//! check of that signature.
//!
//! Key hierarchy (all HMAC-SHA256, every derivation domain-separated):
//! - the installation's master key (`benchkite controller --result-key-file`, a Secret only
//!   the controller mounts);
//! - a queue key = HMAC(master, "benchkite/result-key/v1/queue" ‖ 0 ‖ queue): what the agents
//!   of one queue hold (an AgentPool's agents get it from a Secret the controller writes into
//!   the pool's namespace, mounted read-only at [`RESULT_KEY_DIR`]; `benchkite result-key
//!   --queue Q` prints it for agents an admin runs on a raw queue);
//! - an attempt key = HMAC(queue key, "benchkite/result-key/v1/attempt" ‖ 0 ‖ run id): what
//!   signs one attempt's result; the runner derives it from the queue key and
//!   `KERNELBOT_RUN_ID`.
//!
//! A signature is HMAC(attempt key, lp(domain) ‖ lp(run id) ‖ lp(what) ‖ lp(bytes)) (lp: a
//! 64-bit big-endian length, then the bytes), where `what` names the signed thing (the
//! `benchkite.result` meta-data value or the exact `result.json` bytes). The runner reports
//! both signatures in one meta-data value, [`SIG_META_DATA_KEY`], so the controller can check
//! whichever source it reads.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Where an agent pod mounts its queue's result key (a directory: Secret volume).
pub const RESULT_KEY_DIR: &str = "/var/run/benchkite/result-key";
/// The file inside [`RESULT_KEY_DIR`] (the Secret's data key).
pub const RESULT_KEY_FILE_NAME: &str = "key";
/// Env var the runner reads the key file's path from (default
/// `RESULT_KEY_DIR/RESULT_KEY_FILE_NAME`).
pub const RESULT_KEY_FILE_ENV: &str = "BENCHKITE_RESULT_KEY_FILE";
/// Env var of the controller's master key file (`--result-key-file`); not
/// [`RESULT_KEY_FILE_ENV`], which is the runner's queue key.
pub const MASTER_KEY_FILE_ENV: &str = "BENCHKITE_RESULT_MASTER_KEY_FILE";
/// Build meta-data holding the runner's signatures of its result.
pub const SIG_META_DATA_KEY: &str = "benchkite.result.sig";
/// Env var (the build's, fixed at create) naming the attempt the runner signs for.
pub const RUN_ID_ENV: &str = "KERNELBOT_RUN_ID";

/// Shortest key accepted, bytes (after hex decoding).
pub const MIN_KEY_BYTES: usize = 32;
/// Largest key file read.
const MAX_KEY_FILE_BYTES: u64 = 4096;
/// Largest signature meta-data value parsed.
const MAX_SIG_BYTES: usize = 1024;

const QUEUE_DOMAIN: &[u8] = b"benchkite/result-key/v1/queue\0";
const ATTEMPT_DOMAIN: &[u8] = b"benchkite/result-key/v1/attempt\0";
const SIG_DOMAIN: &[u8] = b"benchkite/result-sig/v1";

/// The Secret (in the pool's namespace) that holds the result key of a pool's queue.
pub fn result_key_secret_name(pool: &str) -> String {
    let name = format!("{pool}-benchkite-result-key");
    if name.len() <= 253 {
        return name;
    }
    // Names are at most 253 characters: keep a prefix (cut on a character boundary) and
    // make it unique by a hash.
    use sha2::Digest as _;
    let digest = hex::encode(sha2::Sha256::digest(pool.as_bytes()));
    let cut = pool.char_indices().map(|(i, _)| i).take_while(|i| *i <= 200).last().unwrap_or(0);
    format!("{}-{}-benchkite-result-key", &pool[..cut], &digest[..16])
}

/// A key (master, queue or attempt). Never printed: `Debug` shows no material.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

/// Why a key file is not usable. Says nothing of the key's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("reading the key file {path} failed: {kind}")]
    Read { path: String, kind: String },
    #[error("the key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes")]
    TooLarge { path: String },
    #[error("the key is {bytes} bytes; at least {MIN_KEY_BYTES} random bytes are needed (e.g. `openssl rand -hex 32`)")]
    TooShort { bytes: usize },
    #[error("the key is not random enough (too few distinct bytes); generate it with e.g. `openssl rand -hex 32`")]
    Weak,
}

impl Key {
    /// Parses a key file's content: hex (as `openssl rand -hex 32` writes, what the
    /// controller writes into pool Secrets) or raw bytes; a trailing newline is dropped.
    pub fn parse(content: &[u8]) -> Result<Key, KeyError> {
        let mut t = content;
        while let [rest @ .., b'\n' | b'\r'] = t {
            t = rest;
        }
        let bytes = if !t.is_empty() && t.len().is_multiple_of(2) && t.iter().all(u8::is_ascii_hexdigit) {
            hex::decode(t).map_err(|_| KeyError::Weak)?
        } else {
            t.to_vec()
        };
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort { bytes: bytes.len() });
        }
        let mut seen = [false; 256];
        bytes.iter().for_each(|b| seen[usize::from(*b)] = true);
        if seen.iter().filter(|s| **s).count() < 8 {
            return Err(KeyError::Weak);
        }
        Ok(Key(bytes))
    }

    /// Reads and parses a key file (at most 4 KiB).
    pub fn read_file(path: &std::path::Path) -> Result<Key, KeyError> {
        use std::io::Read as _;
        let shown = path.display().to_string();
        let read_err = |e: std::io::Error| KeyError::Read { path: shown.clone(), kind: e.kind().to_string() };
        let f = std::fs::File::open(path).map_err(read_err)?;
        let mut buf = Vec::new();
        f.take(MAX_KEY_FILE_BYTES + 1).read_to_end(&mut buf).map_err(read_err)?;
        if buf.len() as u64 > MAX_KEY_FILE_BYTES {
            return Err(KeyError::TooLarge { path: shown });
        }
        Key::parse(&buf)
    }

    fn derive(&self, domain: &[u8], label: &str) -> Key {
        let mut mac = mac(&self.0);
        mac.update(domain);
        mac.update(label.as_bytes());
        Key(mac.finalize().into_bytes().to_vec())
    }

    /// The key of a queue's agents, from the master key.
    pub fn queue_key(&self, queue: &str) -> Key {
        self.derive(QUEUE_DOMAIN, queue)
    }

    /// The key of one attempt, from its queue's key.
    pub fn attempt_key(&self, run_id: &str) -> Key {
        self.derive(ATTEMPT_DOMAIN, run_id)
    }

    /// Hex, as a key file holds it (for pool Secrets and `benchkite result-key`).
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length.
    match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

/// What a signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    /// The `benchkite.result` meta-data value.
    MetaData,
    /// The exact bytes of `result.json`.
    ResultJson,
}

impl Signed {
    pub fn label(self) -> &'static str {
        match self {
            Signed::MetaData => "meta-data",
            Signed::ResultJson => "result.json",
        }
    }
}

fn signing_mac(attempt_key: &Key, run_id: &str, what: Signed, bytes: &[u8]) -> HmacSha256 {
    let mut mac = mac(&attempt_key.0);
    for part in [SIG_DOMAIN, run_id.as_bytes(), what.label().as_bytes(), bytes] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac
}

/// The signature of `bytes` for the attempt `run_id`.
pub fn sign(attempt_key: &Key, run_id: &str, what: Signed, bytes: &[u8]) -> Vec<u8> {
    signing_mac(attempt_key, run_id, what, bytes).finalize().into_bytes().to_vec()
}

/// Whether `tag` is the signature of `bytes` for `run_id` (constant time).
pub fn verify(attempt_key: &Key, run_id: &str, what: Signed, bytes: &[u8], tag: &[u8]) -> bool {
    signing_mac(attempt_key, run_id, what, bytes).verify_slice(tag).is_ok()
}

/// The signatures a runner reports (the [`SIG_META_DATA_KEY`] value, JSON:
/// `{"v":1,"meta-data":"<hex>","result.json":"<hex>"}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Signatures {
    pub v: u32,
    #[serde(rename = "meta-data", default, skip_serializing_if = "Option::is_none")]
    pub meta_data: Option<String>,
    #[serde(rename = "result.json", default, skip_serializing_if = "Option::is_none")]
    pub result_json: Option<String>,
}

impl Signatures {
    /// Signs the summary meta-data value and `result.json` (when written) of an attempt.
    pub fn new(attempt_key: &Key, run_id: &str, meta_data: &str, result_json: Option<&[u8]>) -> Signatures {
        Signatures {
            v: 1,
            meta_data: Some(hex::encode(sign(attempt_key, run_id, Signed::MetaData, meta_data.as_bytes()))),
            result_json: result_json.map(|b| hex::encode(sign(attempt_key, run_id, Signed::ResultJson, b))),
        }
    }

    pub fn to_value(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a meta-data value; `None` when it is not one (too long, not JSON, unknown version).
    pub fn parse(value: &str) -> Option<Signatures> {
        if value.len() > MAX_SIG_BYTES {
            return None;
        }
        serde_json::from_str::<Signatures>(value).ok().filter(|s| s.v == 1)
    }

    fn tag(&self, what: Signed) -> Option<Vec<u8>> {
        let t = match what {
            Signed::MetaData => self.meta_data.as_deref(),
            Signed::ResultJson => self.result_json.as_deref(),
        }?;
        hex::decode(t).ok()
    }
}

/// How far a result can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Signed by the runner of this attempt (the attempt key of its queue and run id).
    Verified,
    /// No signature at all (a runner without a key file, or not benchkite's runner).
    Unsigned,
    /// Signed, but not by this attempt's runner (tampered, another attempt's or queue's
    /// key), or not checkable; why, for the job's condition (no key material).
    NotTrusted(String),
}

/// Checks a result read from `what` against the signatures in `sig` (the
/// [`SIG_META_DATA_KEY`] value), with the attempt key of `queue` and `run_id` as the
/// controller recorded them.
pub fn check(
    master: Option<&Key>,
    queue: Option<&str>,
    run_id: &str,
    what: Signed,
    bytes: &[u8],
    sig: Option<&str>,
) -> Trust {
    let label = what.label();
    let Some(value) = sig.filter(|s| !s.is_empty()) else { return Trust::Unsigned };
    let Some(sigs) = Signatures::parse(value) else {
        return Trust::NotTrusted(format!("its {SIG_META_DATA_KEY} meta-data is not a signature"));
    };
    let Some(tag) = sigs.tag(what) else {
        return Trust::NotTrusted(format!("no signature in {SIG_META_DATA_KEY} covers its {label}"));
    };
    let Some(master) = master else {
        return Trust::NotTrusted(
            "the controller has no result master key (--result-key-file) to check its signature".into(),
        );
    };
    let Some(queue) = queue.filter(|q| !q.is_empty()) else {
        return Trust::NotTrusted("the attempt's queue is not recorded, so its key is unknown".into());
    };
    if verify(&master.queue_key(queue).attempt_key(run_id), run_id, what, bytes, &tag) {
        Trust::Verified
    } else {
        Trust::NotTrusted(format!(
            "the signature of its {label} does not verify (tampered, or signed for another attempt or queue)"
        ))
    }
}

#[cfg(test)]
#[path = "signing_tests.rs"]
mod tests;
