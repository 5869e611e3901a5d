//! JSON shapes of the REST API objects (as documented for Buildkite REST API v2).

use serde_json::{Value, json};
use uuid::Uuid;

use crate::model::*;
use crate::sim::Urls;
use crate::state::Inner;

pub struct Ctx<'a> {
    pub inner: &'a Inner,
    pub urls: &'a Urls,
}

impl Ctx<'_> {
    fn org_url(&self) -> String {
        format!("{}/organizations/{}", self.urls.v2(), self.inner.org.slug)
    }

    pub fn pipeline_url(&self, slug: &str) -> String {
        format!("{}/pipelines/{slug}", self.org_url())
    }

    pub fn build_url(&self, b: &Build) -> String {
        format!("{}/builds/{}", self.pipeline_url(&b.pipeline), b.number)
    }

    pub fn build_web_url(&self, b: &Build) -> String {
        format!("{}/{}/{}/builds/{}", self.inner.web_base, self.inner.org.slug, b.pipeline, b.number)
    }

    pub fn job_url(&self, b: &Build, job: Uuid) -> String {
        format!("{}/jobs/{job}", self.build_url(b))
    }

    pub fn cluster_url(&self, id: Uuid) -> String {
        format!("{}/clusters/{id}", self.org_url())
    }

    pub fn user(&self, id: Uuid) -> Value {
        match self.inner.users.iter().find(|(_, u)| u.id == id) {
            Some((_, u)) => user_json(u),
            None => Value::Null,
        }
    }

    /// A pipeline object (REST "Pipeline data model"). `with_counts` computes the
    /// scheduled/running counters (a scan of all builds); pipelines embedded in builds report
    /// zeros to keep builds cheap.
    pub fn pipeline(&self, p: &Pipeline, with_counts: bool) -> Value {
        let url = self.pipeline_url(&p.slug);
        let (mut sb, mut rb, mut sj, mut rj) = (0u64, 0u64, 0u64, 0u64);
        let builds = self.inner.builds.values().filter(|b| with_counts && b.pipeline == p.slug);
        for b in builds {
            match b.state {
                BuildState::Scheduled => sb += 1,
                BuildState::Running | BuildState::Failing | BuildState::Canceling => rb += 1,
                _ => continue,
            }
            for j in b.jobs.iter().filter_map(|j| self.inner.jobs.get(j)) {
                match j.state {
                    JobState::Scheduled => sj += 1,
                    s if s.is_active() => rj += 1,
                    _ => {}
                }
            }
        }
        let provider = if p.repository.contains("github.com") { "github" } else { "git" };
        json!({
            "id": p.id,
            "graphql_id": graphql_id("Pipeline", p.id),
            "url": url,
            "web_url": format!("{}/{}/{}", self.inner.web_base, self.inner.org.slug, p.slug),
            "name": p.name,
            "description": p.description,
            "slug": p.slug,
            "repository": p.repository,
            "cluster_id": p.cluster_id,
            "cluster_url": self.cluster_url(p.cluster_id),
            "pipeline_template_uuid": null,
            "branch_configuration": p.branch_configuration,
            "default_branch": p.default_branch,
            "provider": {"id": provider, "webhook_url": "", "settings": {"trigger_mode": "code"}},
            "skip_queued_branch_builds": p.skip_queued_branch_builds,
            "skip_queued_branch_builds_filter": p.skip_queued_branch_builds_filter,
            "cancel_running_branch_builds": p.cancel_running_branch_builds,
            "cancel_running_branch_builds_filter": p.cancel_running_branch_builds_filter,
            "allow_rebuilds": true,
            "builds_url": format!("{url}/builds"),
            "badge_url": format!("{url}/badge.svg"),
            "created_by": p.created_by.map_or(Value::Null, |u| self.user(u)),
            "created_at": fmt_ts(p.created_at),
            "archived_at": opt_ts(p.archived_at),
            "env": p.settings.env,
            "scheduled_builds_count": sb,
            "running_builds_count": rb,
            "scheduled_jobs_count": sj,
            "running_jobs_count": rj,
            "waiting_jobs_count": 0,
            "visibility": "private",
            "tags": null,
            "configuration": p.configuration,
            "steps": p.settings.steps.iter().map(|s| json!({
                "type": "script",
                "name": s.label,
                "key": s.key,
                "command": s.command,
                "artifact_paths": if s.artifact_paths.is_empty() { Value::Null } else { json!(s.artifact_paths) },
                "branch_configuration": null,
                "env": s.env,
                "timeout_in_minutes": s.timeout.map(|t| t.as_secs().div_ceil(60)),
                "agent_query_rules": s.agents,
                "concurrency": null,
                "parallelism": null,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn agent_short(&self, a: &Agent) -> Value {
        json!({
            "id": a.id,
            "graphql_id": graphql_id("Agent", a.id),
            "url": format!("{}/agents/{}", self.org_url(), a.id),
            "web_url": format!("{}/organizations/{}/agents/{}", self.inner.web_base, self.inner.org.slug, a.id),
            "name": a.name,
            "connection_state": a.connection_state,
            "hostname": a.hostname,
            "ip_address": "127.0.0.1",
            "user_agent": "buildkite-agent/3.0.0 (linux; amd64) buildkite-sim",
            "creator": null,
            "created_at": fmt_ts(a.created_at),
        })
    }

    pub fn agent(&self, a: &Agent) -> Value {
        let mut v = self.agent_short(a);
        let job = a
            .job
            .and_then(|j| self.inner.jobs.get(&j))
            .and_then(|j| self.inner.builds.get(&j.build).map(|b| self.job(j, b, false)));
        if let Value::Object(m) = &mut v {
            m.insert("version".into(), json!("3.0.0"));
            m.insert("job".into(), job.unwrap_or(Value::Null));
            m.insert("last_job_finished_at".into(), opt_ts(a.last_job_finished_at));
            m.insert("priority".into(), json!(0));
            m.insert("meta_data".into(), json!(a.meta_data()));
            m.insert("cluster_id".into(), json!(a.cluster_id));
            let queue_id = self.inner.queue(a.cluster_id, &a.queue_key).map(|q| q.id);
            m.insert("cluster_queue_id".into(), json!(queue_id));
        }
        v
    }

    /// A job object; `with_agent` embeds the agent that runs it.
    pub fn job(&self, j: &Job, b: &Build, with_agent: bool) -> Value {
        let build_url = self.build_url(b);
        let job_url = self.job_url(b, j.id);
        let agent = if with_agent {
            j.agent.and_then(|a| self.inner.agents.get(&a)).map_or(Value::Null, |a| self.agent_short(a))
        } else {
            Value::Null
        };
        let queue = self.inner.queue(j.cluster_id, &j.queue_key);
        json!({
            "id": j.id,
            "graphql_id": graphql_id("Job", j.id),
            "type": "script",
            "name": j.name,
            "step_key": j.step_key,
            "step": {"id": j.step_id},
            "priority": {"number": 0},
            "agent_query_rules": j.agent_query_rules,
            "state": j.state,
            "build_url": build_url,
            "web_url": format!("{}#{}", self.build_web_url(b), j.id),
            "log_url": format!("{job_url}/log"),
            "raw_log_url": format!("{job_url}/log.txt"),
            "artifacts_url": format!("{job_url}/artifacts"),
            "command": j.command,
            "soft_failed": false,
            "exit_status": j.exit_status,
            "signal": j.signal,
            "signal_reason": j.signal_reason,
            "artifact_paths": j.artifact_paths,
            "agent": agent,
            "created_at": fmt_ts(j.created_at),
            "scheduled_at": fmt_ts(j.scheduled_at),
            "runnable_at": opt_ts(j.runnable_at),
            "started_at": opt_ts(j.started_at),
            "finished_at": opt_ts(j.finished_at),
            "expired_at": opt_ts(j.expired_at),
            "retried": j.retried,
            "retried_in_job_id": j.retried_in_job_id,
            "retries_count": if j.attempt == 0 { Value::Null } else { json!(j.attempt) },
            "retry_source": j.retry_source.map_or(Value::Null, |s| json!({"job_id": s, "retry_type": "automatic"})),
            "retry_type": if j.retry_source.is_some() { json!("automatic") } else { Value::Null },
            "parallel_group_index": null,
            "parallel_group_total": null,
            "matrix": null,
            "cluster_id": j.cluster_id,
            "cluster_url": self.cluster_url(j.cluster_id),
            "cluster_queue_id": queue.map(|q| q.id),
            "cluster_queue_url": queue.map(|q| format!("{}/queues/{}", self.cluster_url(j.cluster_id), q.id)),
        })
    }

    /// A build object with the latest try of each job only. Webhook payloads use
    /// `include_jobs = false` (documented: webhook build objects carry no jobs).
    pub fn build(&self, b: &Build, include_jobs: bool, include_pipeline: bool) -> Value {
        self.build_with(b, include_jobs, include_pipeline, false)
    }

    /// A build object; `include_retried` also lists jobs that were retried (REST
    /// `include_retried_jobs=true`: "Without this parameter, you'll see only the most recently
    /// run job for each step").
    pub fn build_with(&self, b: &Build, include_jobs: bool, include_pipeline: bool, include_retried: bool) -> Value {
        let mut v = json!({
            "id": b.id,
            "graphql_id": graphql_id("Build", b.id),
            "url": self.build_url(b),
            "web_url": self.build_web_url(b),
            "number": b.number,
            "state": b.state,
            "cancel_reason": b.cancel_reason,
            "blocked": b.blocked,
            "message": b.message,
            "commit": b.commit,
            "branch": b.branch,
            "tag": null,
            "env": b.env,
            "source": "api",
            "author": b.author,
            "creator": self.user(b.creator),
            "created_at": fmt_ts(b.created_at),
            "scheduled_at": fmt_ts(b.scheduled_at),
            "started_at": opt_ts(b.started_at),
            "failing_at": opt_ts(b.failing_at),
            "finished_at": opt_ts(b.finished_at),
            "meta_data": b.meta_data,
            "pull_request": null,
            "rebuilt_from": null,
        });
        if let Value::Object(m) = &mut v {
            if include_jobs {
                let jobs: Vec<Value> = b
                    .jobs
                    .iter()
                    .filter_map(|id| self.inner.jobs.get(id))
                    .filter(|j| include_retried || !j.retried)
                    .map(|j| self.job(j, b, true))
                    .collect();
                m.insert("jobs".into(), Value::Array(jobs));
            }
            if include_pipeline && let Some(p) = self.inner.pipelines.get(&b.pipeline) {
                m.insert("pipeline".into(), self.pipeline(p, false));
            }
        }
        v
    }

    /// `job_state_counts` of the Get-a-build answer: "by default, retried job executions are
    /// excluded from the count".
    pub fn job_state_counts(&self, b: &Build, include_retried: bool) -> Value {
        let mut states: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        let mut total = 0u64;
        for j in b.jobs.iter().filter_map(|id| self.inner.jobs.get(id)).filter(|j| include_retried || !j.retried) {
            *states.entry(j.state.as_str()).or_default() += 1;
            total += 1;
        }
        json!({"total": total, "states": states})
    }

    /// A build as go-buildkite captured it from Buildkite's services console
    /// (`builds_test.go`, `TestBuildsUnmarshalWebhook`): `2018-03-25 03:58:14 UTC` timestamps,
    /// a short `creator`, and no `meta_data`, `env`, `jobs` or `pipeline`.
    pub fn console_build(&self, b: &Build) -> Value {
        let creator = self.inner.users.iter().find(|(_, u)| u.id == b.creator).map_or(
            Value::Null,
            |(_, u)| json!({"id": u.id, "name": u.name, "email": u.email, "created_at": fmt_ts_utc(u.created_at)}),
        );
        let mut v = json!({
            "id": b.id,
            "url": self.build_url(b),
            "web_url": self.build_web_url(b),
            "number": b.number,
            "state": b.state,
            "blocked": b.blocked,
            "message": b.message,
            "commit": b.commit,
            "branch": b.branch,
            "tag": null,
            "source": "api",
            "author": b.author,
            "creator": creator,
            "created_at": fmt_ts_utc(b.created_at),
            "scheduled_at": fmt_ts_utc(b.scheduled_at),
        });
        // The captured body was a `build.scheduled` event; later events carry these too (a
        // guess, in the same timestamp format).
        if let Value::Object(m) = &mut v {
            for (k, t) in [("started_at", b.started_at), ("finished_at", b.finished_at)] {
                if let Some(t) = t {
                    m.insert(k.into(), json!(fmt_ts_utc(t)));
                }
            }
        }
        v
    }

    /// A job in the services-console shape (timestamps as `… UTC`).
    pub fn console_job(&self, j: &Job, b: &Build) -> Value {
        let mut v = self.job(j, b, false);
        if let Value::Object(m) = &mut v {
            for (k, t) in [
                ("created_at", Some(j.created_at)),
                ("scheduled_at", Some(j.scheduled_at)),
                ("runnable_at", j.runnable_at),
                ("started_at", j.started_at),
                ("finished_at", j.finished_at),
                ("expired_at", j.expired_at),
            ] {
                m.insert(k.into(), t.map_or(Value::Null, |t| json!(fmt_ts_utc(t))));
            }
        }
        v
    }

    pub fn artifact(&self, a: &Artifact) -> Value {
        let base = match self.inner.builds.get(&a.build) {
            Some(b) => format!("{}/artifacts/{}", self.job_url(b, a.job), a.id),
            None => format!("{}/jobs/{}/artifacts/{}", self.org_url(), a.job, a.id),
        };
        json!({
            "id": a.id,
            "job_id": a.job,
            "url": base,
            "download_url": format!("{base}/download"),
            "state": a.state,
            "path": a.path,
            "dirname": a.dirname(),
            "filename": a.filename(),
            "mime_type": a.mime_type,
            "file_size": a.content.len(),
            "glob_path": null,
            "original_path": null,
            "sha1sum": a.sha1sum,
        })
    }

    pub fn cluster(&self, c: &Cluster) -> Value {
        let url = self.cluster_url(c.id);
        let default = self.inner.queue(c.id, &c.default_queue_key);
        json!({
            "id": c.id,
            "graphql_id": graphql_id("Cluster", c.id),
            "default_queue_id": default.map(|q| q.id),
            "name": c.name,
            "description": c.description,
            "emoji": null,
            "color": null,
            "url": url,
            "web_url": format!("{}/organizations/{}/clusters/{}", self.inner.web_base, self.inner.org.slug, c.id),
            "default_queue_url": default.map(|q| format!("{url}/queues/{}", q.id)),
            "queues_url": format!("{url}/queues"),
            "created_at": fmt_ts(c.created_at),
            "created_by": self.inner.users.first().map(|(_, u)| user_json(u)),
        })
    }

    pub fn queue(&self, q: &Queue) -> Value {
        let curl = self.cluster_url(q.cluster_id);
        let creator = self.inner.users.first().map(|(_, u)| user_json(u));
        json!({
            "id": q.id,
            "graphql_id": graphql_id("ClusterQueue", q.id),
            "key": q.key,
            "description": q.description,
            "url": format!("{curl}/queues/{}", q.id),
            "web_url": format!("{}/organizations/{}/clusters/{}/queues/{}", self.inner.web_base, self.inner.org.slug, q.cluster_id, q.id),
            "cluster_url": curl,
            "retry_agent_affinity": "prefer-warmest",
            "dispatch_paused": q.dispatch_paused,
            "dispatch_paused_by": if q.dispatch_paused { creator.clone() } else { None },
            "dispatch_paused_at": opt_ts(q.dispatch_paused_at),
            "dispatch_paused_note": q.dispatch_paused_note,
            "created_at": fmt_ts(q.created_at),
            "created_by": creator,
        })
    }

    pub fn agent_token(&self, t: &AgentToken, with_value: bool) -> Value {
        let mut v = json!({
            "id": t.id,
            "graphql_id": graphql_id("ClusterToken", t.id),
            "description": t.description,
            "allowed_ip_addresses": "0.0.0.0/0",
            "url": format!("{}/tokens/{}", self.cluster_url(t.cluster_id), t.id),
            "cluster_url": self.cluster_url(t.cluster_id),
            "created_at": fmt_ts(t.created_at),
            "created_by": self.inner.users.first().map(|(_, u)| user_json(u)),
        });
        if with_value && let Value::Object(m) = &mut v {
            m.insert("token".into(), json!(t.token));
        }
        v
    }

    pub fn organization(&self) -> Value {
        let o = &self.inner.org;
        let url = self.org_url();
        json!({
            "id": o.id,
            "graphql_id": graphql_id("Organization", o.id),
            "url": url,
            "web_url": format!("{}/{}", self.inner.web_base, o.slug),
            "name": o.name,
            "slug": o.slug,
            "pipelines_url": format!("{url}/pipelines"),
            "agents_url": format!("{url}/agents"),
            "emojis_url": format!("{url}/emojis"),
            "created_at": fmt_ts(o.created_at),
        })
    }
}

pub fn user_json(u: &User) -> Value {
    json!({
        "id": u.id,
        "graphql_id": graphql_id("User", u.id),
        "name": u.name,
        "email": u.email,
        "avatar_url": "https://www.gravatar.com/avatar/00000000000000000000000000000000",
        "created_at": fmt_ts(u.created_at),
    })
}
