//! The result key of a pool's queue, handed to its agents: a Secret
//! ([`signing::result_key_secret_name`]) in the pool's namespace, owned by the pool, holding
//! the queue key (hex) under [`signing::RESULT_KEY_FILE_NAME`]. The controller only creates
//! and updates (PUT) it: it never gets, lists or watches Secrets. Written once per pool (and
//! queue) per controller start.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};

use crate::api::{AgentPool, FIELD_MANAGER};
use crate::error::is_already_exists;
use crate::signing::{self, Key};

/// The condition type that says whether the pool's agents have their result key.
pub const CONDITION: &str = crate::api::agentpool::conditions::RESULT_KEY_READY;

/// The installation's master key (`--result-key-file`), set once at start.
static MASTER: OnceLock<Option<Key>> = OnceLock::new();

/// Sets the master key the pools' queue keys derive from (call once, before the
/// controllers start; later calls are ignored).
pub fn set_master_key(key: Option<Key>) {
    let _ = MASTER.set(key);
}

fn master() -> Option<&'static Key> {
    MASTER.get().and_then(Option::as_ref)
}

/// Pools whose Secret this process wrote: (namespace, name) → (pool uid, queue).
type Written = Mutex<HashMap<(String, String), (String, String)>>;
static WRITTEN: OnceLock<Written> = OnceLock::new();

fn written() -> &'static Written {
    WRITTEN.get_or_init(Default::default)
}

/// What the pool's condition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The Secret holding `queue_key` for `pool` (owned by it).
pub fn secret_for(pool: &AgentPool, queue_key: &Key) -> Option<Secret> {
    let owner = pool.controller_owner_ref(&())?;
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(signing::result_key_secret_name(&pool.name_any())),
            namespace: pool.namespace(),
            owner_references: Some(vec![owner]),
            labels: Some(
                [
                    ("app.kubernetes.io/managed-by".to_string(), "benchkite".to_string()),
                    ("benchkite.dev/agentpool".to_string(), crate::fleet::pod::label_value(&pool.name_any())),
                ]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        string_data: Some([(signing::RESULT_KEY_FILE_NAME.to_string(), format!("{}\n", queue_key.to_hex()))].into()),
        ..Default::default()
    })
}

/// Whether this process already wrote the Secret of `pool` for its current queue.
fn is_written(ns: &str, name: &str, uid: &str, queue: &str) -> bool {
    written().lock().is_ok_and(|w| w.get(&(ns.into(), name.into())) == Some(&(uid.into(), queue.into())))
}

/// Forgets a pool (deleted): its next incarnation gets its Secret written again.
pub fn forget(ns: &str, name: &str) {
    if let Ok(mut w) = written().lock() {
        w.remove(&(ns.to_string(), name.to_string()));
    }
}

/// Writes the pool's result key Secret (create, else update), once per pool and queue per
/// controller start. Errors name the Secret, never its content.
pub async fn ensure(client: &kube::Client, pool: &AgentPool) -> Verdict {
    let (ns, name) = (pool.namespace().unwrap_or_default(), pool.name_any());
    let secret_name = signing::result_key_secret_name(&name);
    let Some(master) = master() else { return no_master(&ns, &secret_name) };
    let (uid, queue) = (pool.uid().unwrap_or_default(), pool.spec.queue.clone());
    let ok = Verdict {
        ready: true,
        reason: "ResultKeyWritten",
        message: format!("Secret {ns}/{secret_name} holds the result key of queue {queue}"),
    };
    if is_written(&ns, &name, &uid, &queue) {
        return ok;
    }
    let Some(secret) = secret_for(pool, &master.queue_key(&queue)) else {
        return Verdict { ready: false, reason: "ResultKeyWriteFailed", message: "the pool has no uid yet".into() };
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let pp = PostParams { field_manager: Some(FIELD_MANAGER.to_string()), ..Default::default() };
    let result = match api.create(&pp, &secret).await {
        Ok(_) => Ok(()),
        // Unconditional update (no resourceVersion): the controller cannot read Secrets.
        Err(e) if is_already_exists(&e) => api.replace(&secret_name, &pp, &secret).await.map(|_| ()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            if let Ok(mut w) = written().lock() {
                w.insert((ns, name), (uid, queue));
            }
            ok
        }
        Err(e) => Verdict {
            ready: false,
            reason: "ResultKeyWriteFailed",
            message: format!("writing Secret {ns}/{secret_name} failed: {}", describe(&e)),
        },
    }
}

/// The condition of a pool when the controller has no master key: no Secret is written.
fn no_master(ns: &str, secret_name: &str) -> Verdict {
    Verdict {
        ready: false,
        reason: "NoResultMasterKey",
        message: format!(
            "the controller has no result master key (--result-key-file): Secret {ns}/{secret_name} is not written, and agent pods wait for it"
        ),
    }
}

/// A kube error without any request body (which would hold the key).
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> AgentPool {
        let mut p: AgentPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
            "metadata": {"name": "h100", "namespace": "gpu", "uid": "u-1"},
            "spec": {"queue": "h100", "gpuNodeSelector": {}, "agent": {"tokenSecretRef": {"name": "t"}}}
        }))
        .expect("pool");
        p.metadata.generation = Some(1);
        p
    }

    #[test]
    fn the_secret_holds_the_queue_key_and_is_owned_by_the_pool() {
        let master = Key::parse(&(1u8..=32).collect::<Vec<_>>()).expect("key");
        let p = pool();
        let s = secret_for(&p, &master.queue_key("h100")).expect("secret");
        assert_eq!(s.metadata.name.as_deref(), Some("h100-benchkite-result-key"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("gpu"));
        let owner = &s.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("AgentPool", "u-1", Some(true)));
        let data = s.string_data.expect("data");
        let held = Key::parse(data[signing::RESULT_KEY_FILE_NAME].as_bytes()).expect("a key file");
        assert_eq!(held, master.queue_key("h100"));
        assert_ne!(held, master.queue_key("other"));
    }

    #[test]
    fn without_a_master_key_the_pool_says_its_agents_wait() {
        let v = no_master("gpu", "h100-benchkite-result-key");
        assert!(!v.ready);
        assert_eq!(v.reason, "NoResultMasterKey");
        assert!(v.message.contains("gpu/h100-benchkite-result-key") && v.message.contains("--result-key-file"));
    }

    #[test]
    fn writes_are_remembered_per_pool_and_queue() {
        assert!(!is_written("ns-m", "p", "u", "q"));
        written().lock().expect("lock").insert(("ns-m".into(), "p".into()), ("u".into(), "q".into()));
        assert!(is_written("ns-m", "p", "u", "q"));
        assert!(!is_written("ns-m", "p", "u", "q2"), "a new queue is written again");
        assert!(!is_written("ns-m", "p", "u2", "q"), "a new pool of the same name too");
        forget("ns-m", "p");
        assert!(!is_written("ns-m", "p", "u", "q"));
    }
}
