//! Results that cannot be forged: the keys that sign a runner's result and the controller's
//! check of that signature.
//!
//! Key hierarchy (all HMAC-SHA256):
//! - the installation's master key (`--result-key-file`, a Secret only the controller mounts);
//! - a queue key = HMAC(master, "benchkite/result-key/v1" ‖ 0 ‖ queue): what the agents of one
//!   queue hold (an AgentPool's agents get it from a Secret the controller writes into the
//!   pool's namespace, mounted read-only, root-only, at [`RESULT_KEY_DIR`]);
//! - an attempt key = HMAC(queue key, run id): what signs one attempt's result.
//!
//! (Skeleton: constants shared by the pod builder and the runner; the implementation
//! follows.)

/// Where an agent pod mounts its queue's result key (a directory: Secret volume).
pub const RESULT_KEY_DIR: &str = "/var/run/benchkite/result-key";
/// The file inside [`RESULT_KEY_DIR`] (the Secret's data key).
pub const RESULT_KEY_FILE_NAME: &str = "key";
/// Env var the runner reads the key file's path from (default
/// `RESULT_KEY_DIR/RESULT_KEY_FILE_NAME`).
pub const RESULT_KEY_FILE_ENV: &str = "BENCHKITE_RESULT_KEY_FILE";

/// The Secret (in the pool's namespace) that holds the result key of a pool's queue.
pub fn result_key_secret_name(pool: &str) -> String {
    let name = format!("{pool}-benchkite-result-key");
    if name.len() <= 253 {
        return name;
    }
    // Names are at most 253 characters: keep a prefix and make it unique by a hash.
    use sha2::Digest as _;
    let digest = hex::encode(sha2::Sha256::digest(pool.as_bytes()));
    format!("{}-{}-benchkite-result-key", &pool[..200], &digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_valid_and_distinct() {
        assert_eq!(result_key_secret_name("h100"), "h100-benchkite-result-key");
        let long_a = format!("{}a", "x".repeat(252));
        let long_b = format!("{}b", "x".repeat(252));
        let (a, b) = (result_key_secret_name(&long_a), result_key_secret_name(&long_b));
        assert!(a.len() <= 253 && b.len() <= 253);
        assert_ne!(a, b);
    }
}
