//! What a kubelet derives from a pod spec before it starts a container: the container's
//! environment (`env`, `envFrom`, `valueFrom`) and its volumes, materialised on disk.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Pod, Secret, Volume};
use kube::{Api, Client, ResourceExt};

/// Reads the ConfigMaps and Secrets a pod refers to (`None`: not found).
pub(crate) struct Objects {
    configmaps: Api<ConfigMap>,
    secrets: Api<Secret>,
}

impl Objects {
    pub(crate) fn new(client: &Client, namespace: &str) -> Self {
        Self {
            configmaps: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client.clone(), namespace),
        }
    }

    /// The ConfigMap's keys (`data` and `binaryData`) as bytes.
    async fn configmap(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
        let Some(cm) = self.configmaps.get_opt(name).await.with_context(|| format!("reading ConfigMap {name}"))? else {
            return Ok(None);
        };
        let mut out: BTreeMap<String, Vec<u8>> =
            cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
        out.extend(cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
        Ok(Some(out))
    }

    /// The Secret's keys as bytes.
    async fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
        let Some(s) = self.secrets.get_opt(name).await.with_context(|| format!("reading Secret {name}"))? else {
            return Ok(None);
        };
        Ok(Some(s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()))
    }
}

fn utf8(bytes: Vec<u8>, what: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{what} is not UTF-8 text"))
}

/// The value of a `fieldRef` as the kubelet's downward API gives it.
fn field_ref(pod: &Pod, path: &str) -> Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let label_or_annotation = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
            .map(|key| map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = label_or_annotation("metadata.labels['", meta.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = label_or_annotation("metadata.annotations['", meta.annotations.as_ref()) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.podIP" => pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.hostIP" => pod.status.as_ref().and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        other => bail!("fieldRef {other:?} is not supported by the e2e kubelet"),
    })
}

/// The container's environment as the kubelet resolves it: `envFrom` sources in order, then
/// `env` (later entries win). A missing optional source or key leaves the variable unset; a
/// missing required one is an error (the kubelet would refuse to start the container).
pub(crate) async fn resolve_env(pod: &Pod, c: &Container, objects: &Objects) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional, data) = if let Some(r) = &from.config_map_ref {
            ("ConfigMap", r.name.clone(), r.optional.unwrap_or(false), objects.configmap(&r.name).await?)
        } else if let Some(r) = &from.secret_ref {
            ("Secret", r.name.clone(), r.optional.unwrap_or(false), objects.secret(&r.name).await?)
        } else {
            bail!("container {}: an envFrom entry names no source", c.name);
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    env.insert(format!("{prefix}{k}"), utf8(v, &format!("{kind} {name} key {k}"))?);
                }
            }
            None if optional => {}
            None => bail!("container {}: envFrom {kind} {name} not found", c.name),
        }
    }
    for var in c.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            env.insert(var.name.clone(), var.value.clone().unwrap_or_default());
            continue;
        };
        let value = if let Some(f) = &from.field_ref {
            Some(field_ref(pod, &f.field_path).with_context(|| format!("container {} env {}", c.name, var.name))?)
        } else if let Some(r) = &from.config_map_key_ref {
            let data = objects.configmap(&r.name).await?;
            keyed(data, &r.key, r.optional.unwrap_or(false), &format!("ConfigMap {}", r.name))?
        } else if let Some(r) = &from.secret_key_ref {
            let data = objects.secret(&r.name).await?;
            keyed(data, &r.key, r.optional.unwrap_or(false), &format!("Secret {}", r.name))?
        } else {
            bail!("container {} env {}: this valueFrom source is not supported by the e2e kubelet", c.name, var.name);
        };
        match value {
            Some(v) => env.insert(var.name.clone(), v),
            None => env.remove(&var.name),
        };
    }
    Ok(env)
}

fn keyed(data: Option<BTreeMap<String, Vec<u8>>>, key: &str, optional: bool, what: &str) -> Result<Option<String>> {
    match data.map(|mut d| d.remove(key)) {
        Some(Some(v)) => Ok(Some(utf8(v, &format!("{what} key {key}"))?)),
        Some(None) if optional => Ok(None),
        None if optional => Ok(None),
        Some(None) => bail!("{what} has no key {key}"),
        None => bail!("{what} not found"),
    }
}

/// Writes `items` (or every key) of a ConfigMap/Secret volume into `dir`.
fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    what: &str,
) -> Result<()> {
    let mode = |m: Option<i32>| m.or(default_mode).unwrap_or(0o644) as u32 & 0o7777;
    let files: Vec<(String, &Vec<u8>, u32)> = match items {
        Some(items) => {
            let mut out = Vec::new();
            for it in items {
                let v = data.get(&it.key).with_context(|| format!("{what} has no key {}", it.key))?;
                out.push((it.path.clone(), v, mode(it.mode)));
            }
            out
        }
        None => data.iter().map(|(k, v)| (k.clone(), v, mode(None))).collect(),
    };
    for (rel, content, mode) in files {
        if Path::new(&rel).components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            bail!("{what}: item path {rel:?} must be relative without '..'");
        }
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    Ok(())
}

/// Materialises `volume` under `<pod_dir>/<volume name>/` (idempotent: an emptyDir is made
/// once and shared by the pod's containers). `Ok(None)`: a kind the e2e kubelet ignores.
pub(crate) async fn materialise(pod_dir: &Path, volume: &Volume, objects: &Objects) -> Result<Option<PathBuf>> {
    let dir = pod_dir.join(&volume.name);
    let what = format!("volume {}", volume.name);
    if volume.empty_dir.is_some() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        return Ok(Some(dir));
    }
    let (data, items, mode, optional, source) = if let Some(cm) = &volume.config_map {
        let data = objects.configmap(&cm.name).await?;
        (data, cm.items.as_ref(), cm.default_mode, cm.optional.unwrap_or(false), format!("ConfigMap {}", cm.name))
    } else if let Some(s) = &volume.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let data = objects.secret(&name).await?;
        (data, s.items.as_ref(), s.default_mode, s.optional.unwrap_or(false), format!("Secret {name}"))
    } else {
        tracing::info!(volume = %volume.name, "e2e kubelet: volume kind not emulated, ignored");
        return Ok(None);
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    match data {
        Some(data) => write_keys(&dir, &data, items, mode, &format!("{what} ({source})"))?,
        None if optional => {}
        None => bail!("{what}: {source} not found"),
    }
    Ok(Some(dir))
}

/// The container's mounts: `(mountPath without trailing '/', host directory with subPath)`,
/// longest mount path first so nested mounts win.
pub(crate) async fn mounts(
    pod: &Pod,
    c: &Container,
    pod_dir: &Path,
    objects: &Objects,
) -> Result<Vec<(String, PathBuf)>> {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes
            .and_then(|vs| vs.iter().find(|v| v.name == m.name))
            .with_context(|| format!("container {}: mount of unknown volume {}", c.name, m.name))?;
        let Some(mut dir) = materialise(pod_dir, v, objects).await? else { continue };
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if Path::new(sub).components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                bail!("container {}: subPath {sub:?} must be relative without '..'", c.name);
            }
            dir = dir.join(sub);
        }
        let path = m.mount_path.trim_end_matches('/');
        out.push((if path.is_empty() { "/".to_string() } else { path.to_string() }, dir));
    }
    out.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
    Ok(out)
}

/// The one liberty the e2e kubelet takes: a value that starts with a mount path (exactly, or
/// followed by `/`) gets that prefix replaced by the mount's host directory.
pub(crate) fn rewrite(value: &str, mounts: &[(String, PathBuf)]) -> String {
    for (path, dir) in mounts {
        let rest = if path == "/" {
            value.strip_prefix('/').map(|r| if r.is_empty() { String::new() } else { format!("/{r}") })
        } else {
            value.strip_prefix(path.as_str()).filter(|r| r.is_empty() || r.starts_with('/')).map(str::to_string)
        };
        if let Some(rest) = rest {
            return format!("{}{rest}", dir.display());
        }
    }
    value.to_string()
}

/// Rewrites every value of `env` with [`rewrite`].
pub(crate) fn rewrite_env(env: &mut BTreeMap<String, String>, mounts: &[(String, PathBuf)]) {
    for v in env.values_mut() {
        *v = rewrite(v, mounts);
    }
}

/// The pod's name (for paths and logs).
pub(crate) fn pod_name(pod: &Pod) -> String {
    pod.name_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_whole_mount_prefixes() {
        let mounts = vec![
            ("/etc/cfg/deep".to_string(), PathBuf::from("/s/deep")),
            ("/etc/cfg".to_string(), PathBuf::from("/s/cfg")),
        ];
        assert_eq!(rewrite("/etc/cfg", &mounts), "/s/cfg");
        assert_eq!(rewrite("/etc/cfg/a.toml", &mounts), "/s/cfg/a.toml");
        assert_eq!(rewrite("/etc/cfg/deep/x", &mounts), "/s/deep/x");
        assert_eq!(rewrite("/etc/cfgx/a", &mounts), "/etc/cfgx/a");
        assert_eq!(rewrite("queue=q", &mounts), "queue=q");
    }

    #[test]
    fn field_refs_of_the_downward_api() -> Result<()> {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "uid": "u-1", "labels": {"a": "b"}},
            "spec": {"nodeName": "node-1", "containers": []},
        }))?;
        assert_eq!(field_ref(&pod, "spec.nodeName")?, "node-1");
        assert_eq!(field_ref(&pod, "metadata.name")?, "p");
        assert_eq!(field_ref(&pod, "metadata.namespace")?, "n");
        assert_eq!(field_ref(&pod, "metadata.uid")?, "u-1");
        assert_eq!(field_ref(&pod, "metadata.labels['a']")?, "b");
        assert!(field_ref(&pod, "status.phase").is_err());
        Ok(())
    }

    #[test]
    fn volume_items_and_modes() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("kubelet-keys-{}", uuid::Uuid::new_v4()));
        let data: BTreeMap<String, Vec<u8>> =
            [("a".to_string(), b"A".to_vec()), ("b".to_string(), b"B".to_vec())].into();
        let items = vec![KeyToPath { key: "b".into(), path: "sub/bee".into(), mode: Some(0o600) }];
        write_keys(&dir, &data, Some(&items), Some(0o640), "t")?;
        assert!(!dir.join("a").exists());
        assert_eq!(std::fs::read(dir.join("sub/bee"))?, b"B");
        assert_eq!(std::fs::metadata(dir.join("sub/bee"))?.permissions().mode() & 0o777, 0o600);
        write_keys(&dir, &data, None, Some(0o640), "t")?;
        assert_eq!(std::fs::metadata(dir.join("a"))?.permissions().mode() & 0o777, 0o640);
        let bad = vec![KeyToPath { key: "a".into(), path: "../x".into(), mode: None }];
        assert!(write_keys(&dir, &data, Some(&bad), None, "t").is_err());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
