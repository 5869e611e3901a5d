//! AgentPool reconcile: keep exactly one agent pod per GPU (or per `gpusPerAgent` GPUs) on
//! every selected, usable GpuNode the pool owns; roll and drain them within the pool's
//! `maxUnavailable`, and keep its PodDisruptionBudget.

mod autoscaling;
mod dra;
pub use dra::TemplateMemo;
mod facts;
pub mod jobs;
mod pdb;
mod pipeline;
mod progress;
pub mod result_key;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::gpunode::publish;
use super::{Context, agent_pool_uid};
use crate::api::agentpool::{PoolNodeStatus, conditions as cond};
use crate::api::condition::{ConditionSet, ConditionStatus, find};
use crate::api::gpunode::ResourceShare;
use crate::api::{AgentPool, AgentPoolStatus, FIELD_MANAGER, GpuNode};
use crate::error::{Error, Result, is_already_exists, is_not_found};
use crate::fleet::plan::{self, AgentPhase, Claimant, DeleteReason, ExistingAgent, NodeFacts, NodeState, PoolFacts};
use crate::fleet::pod::{PodDefaults, agent_pod, pod_spec_hash};
pub use facts::reason as node_reason;
use facts::{certified_slots, created, existing_agent, node_facts, pool_key, slot_for};
use pipeline::{pipeline_verdict, pool_pipeline};
use progress::{progress, reason};

pub async fn reconcile(pool: Arc<AgentPool>, ctx: Arc<Context>) -> Result<Action> {
    let ns = pool.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = pool.name_any();
    let uid = pool.uid().ok_or(Error::MissingField("metadata.uid"))?;
    if pool.meta().deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the agent pods.
        if let Ok(mut f) = ctx.failures.lock() {
            f.forget_pool(&uid);
        }
        autoscaling::forget(&uid);
        result_key::forget(&ns, &name);
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let previous = pool.status.clone().unwrap_or_default();
    let mut conditions = ConditionSet::new(&previous.conditions, pool.metadata.generation, now);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

    // The agent token is handed over by reference; only its existence is checked (metadata
    // only: the controller never reads the value).
    let secret_name = &pool.spec.agent.token_secret_ref.name;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let token_missing = match secrets.get_metadata_opt(secret_name).await {
        Ok(found) => found.is_none(),
        // Without `get` on Secrets (the chart's default: rbac.readSecrets=false) the check is
        // skipped; a missing token then shows in the agent pods (CreateContainerConfigError).
        Err(kube::Error::Api(s)) if s.is_forbidden() => {
            tracing::debug!(pool = %format!("{ns}/{}", pool.name_any()), "no permission to check the agent token Secret; check skipped");
            false
        }
        Err(e) => return Err(Error::kube(format!("checking Secret {ns}/{secret_name}"))(e)),
    };

    // The queue's result key for the agents (they wait for this Secret): written before
    // any pod, once per pool and queue per controller start.
    let key_verdict = result_key::ensure(&ctx.client, &pool).await;
    let key_status = if key_verdict.ready { ConditionStatus::True } else { ConditionStatus::False };
    conditions.set(result_key::CONDITION, key_status, key_verdict.reason, key_verdict.message);

    // GPUs through DRA: the pool's claim template (before any pod references it).
    let dra_setup = match (&pool.spec.dra, &ctx.dra) {
        (None, Some(caches)) => {
            dra::forget_templates(&ctx, caches, &pool).await;
            None
        }
        (None, None) => None,
        (Some(_), None) => Some(Err((
            "DraDisabled",
            "spec.dra asks for GPUs through Dynamic Resource Allocation, which this controller does not serve: \
             start it with --dra-driver (chart: fleet.dra.enabled=true), or remove spec.dra"
                .to_string(),
        ))),
        (Some(_), Some(caches)) => Some(Ok(dra::ensure_template(&ctx, caches, &pool).await?)),
    };
    let dra_template = dra_setup.as_ref().and_then(|s| s.as_ref().ok()).and_then(|s| s.template.clone());
    let dra_requirements = pool.spec.dra.as_ref().map(|d| d.requirements());
    let request = match &dra_requirements {
        Some(req) => facts::GpuRequest::Dra(req),
        None => facts::GpuRequest::DevicePlugin,
    };
    // (reason, message) of a DRA setup the user must fix.
    let dra_problem: Option<(&str, String)> = match &dra_setup {
        Some(Err((reason, message))) => Some((reason, message.clone())),
        Some(Ok(setup)) => setup.problem.clone(),
        None => None,
    };

    // Which nodes this pool selects and which of those it owns.
    let all_pools = ctx.pools.state();
    let claimants: Vec<Claimant<'_>> = all_pools
        .iter()
        .map(|p| Claimant {
            key: pool_key(p),
            created: created(p),
            selector: &p.spec.gpu_node_selector,
            active: !p.spec.paused && p.meta().deletion_timestamp.is_none(),
        })
        .collect();
    let mut selected: Vec<Arc<GpuNode>> =
        ctx.gpunodes.state().into_iter().filter(|g| pool.spec.gpu_node_selector.matches(g.labels())).collect();
    selected.sort_by_key(|g| g.name_any());
    let pods_by_node = ctx.pods_by_node();
    let facts: Vec<NodeFacts> = selected
        .iter()
        .map(|g| {
            let owner = plan::node_owner(g.labels(), &claimants).cloned();
            let mut f =
                node_facts(g, owner, pods_by_node.get(g.node_name()).map(Vec::as_slice).unwrap_or(&[]), &uid, request);
            // A DRA pool whose claims cannot be made (no DRA in this controller, no
            // DeviceClass, the template not applied) starts no agent; those it has stay:
            // their claims are allocated, and a setup problem must not take running
            // benchmarks down.
            if let Some((reason, message)) = &dra_problem {
                f.held = Some((reason.to_string(), message.clone()));
            }
            f
        })
        .collect();

    let agents: Vec<ExistingAgent> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && agent_pool_uid(p) == Some(uid.as_str()))
        .map(|p| existing_agent(p))
        .collect();

    let defaults = PodDefaults {
        agent_image: ctx.config.agent_image.clone(),
        termination_grace_period_seconds: ctx.config.termination_grace_period_seconds,
    };
    let gn_by_name: HashMap<String, &Arc<GpuNode>> = selected.iter().map(|g| (g.name_any(), g)).collect();
    let build = |facts: &NodeFacts, slot: u32| -> Option<Pod> {
        let gn = gn_by_name.get(&facts.gpunode)?;
        let node = ctx.nodes.get(&ObjectRef::new(gn.node_name()))?;
        let share = facts.per_gpu_share?;
        if pool.spec.dra.is_some() && dra_template.is_none() {
            return None;
        }
        Some(agent_pod(&slot_for(&pool, gn, &node, slot, share, dra_template.as_deref()), &defaults))
    };
    let instant = Instant::now();
    let failures_snapshot: HashMap<(String, u32), Duration> = {
        let f = ctx.failures.lock().map_err(|_| Error::MissingField("failure tracker"))?;
        facts
            .iter()
            .flat_map(|n| {
                let slots = u32::try_from(n.gpu_count.max(0)).unwrap_or(0);
                (0..slots)
                    .filter_map(|s| f.remaining(&uid, &n.gpunode, s, instant).map(|d| ((n.gpunode.clone(), s), d)))
            })
            .collect()
    };
    let job_queue: Option<Option<crate::api::agentpool::PoolJobsStatus>> =
        ctx.job_queues.lock().ok().and_then(|q| q.as_ref().map(|q| q.get(&(ns.clone(), name.clone())).cloned()));
    let mut pool_facts = PoolFacts {
        key: &pool_key(&pool),
        paused: pool.spec.paused || token_missing,
        gpus_per_agent: i64::from(pool.spec.gpus_per_agent),
        ephemeral: pool.spec.agent.ephemeral,
        max_unavailable: pool.spec.max_unavailable(),
        scale: None,
    };
    let make_plan = |pool_facts: &PoolFacts<'_>| {
        plan::plan_pool(
            pool_facts,
            &facts,
            &agents,
            |n, s| build(n, s).and_then(|p| pod_spec_hash(&p).map(str::to_string)),
            |n, s| failures_snapshot.contains_key(&(n.to_string(), s)),
        )
    };
    // Autoscaling: the demand decides the target; which agents are busy is asked only when
    // the plan would remove some.
    let autoscale = autoscaling::settings(pool.spec.autoscaling.as_ref()).map(|settings| {
        let live = autoscaling::live(&agents);
        let jobs = job_queue.as_ref().map(|q| q.clone().unwrap_or_default());
        (settings, autoscaling::target(&uid, settings, jobs.as_ref(), live, instant))
    });
    let mut busy: Option<std::result::Result<std::collections::BTreeSet<String>, String>> = None;
    let plan = match &autoscale {
        None => make_plan(&pool_facts),
        Some((_, target)) => {
            let certified = certified_slots(&pool, &selected);
            pool_facts.scale = autoscaling::scale(target, None, certified.clone());
            let first = make_plan(&pool_facts);
            // Without busy agents known, every live agent is kept: is any beyond the target?
            if pool_facts.scale.is_some() && autoscaling::live(&agents) > target.desired {
                let names = agents.iter().filter(|a| !a.deleting).map(|a| a.name.clone()).collect();
                let found = autoscaling::busy_agents(ctx.buildkite.as_ref(), &names).await;
                if let Err(e) = &found {
                    tracing::warn!(pool = %format!("{ns}/{name}"), error = %e, "autoscaling: busy agents unknown; no agent removed");
                }
                pool_facts.scale = autoscaling::scale(target, found.as_ref().ok().cloned(), certified);
                busy = Some(found);
                make_plan(&pool_facts)
            } else {
                first
            }
        }
    };
    let autoscaling_report =
        autoscale.as_ref().map(|(settings, target)| autoscaling::report(settings, target, &plan, busy.as_ref()));
    if let Some((_, (status, reason, message))) = &autoscaling_report {
        conditions.set(cond::SCALED, *status, reason, message.clone());
    }

    // Carry out the plan: deletions first (they free GPUs), then creations.
    let mut failed_pods: Vec<(String, String)> = Vec::new();
    {
        let mut f = ctx.failures.lock().map_err(|_| Error::MissingField("failure tracker"))?;
        for a in &agents {
            if let (Some(slot), true) = (a.slot, a.phase == AgentPhase::Running && a.ready) {
                f.clear(&uid, &a.gpunode, slot);
            }
        }
        for (pod, reason) in &plan.deletes {
            if let DeleteReason::Failed(why) = reason
                && let Some(a) = agents.iter().find(|a| &a.name == pod)
            {
                f.record(&uid, &a.gpunode, a.slot.unwrap_or(0), instant);
                failed_pods.push((
                    pod.clone(),
                    format!("{why}{}", a.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()),
                ));
            }
        }
    }
    let concurrency = ctx.config.write_concurrency.max(1);
    let delete_errors: Vec<String> = futures::stream::iter(plan.deletes.iter().cloned())
        .map(|(pod, reason)| {
            let api = pods_api.clone();
            async move {
                tracing::info!(pod = %pod, ?reason, "deleting agent pod");
                // A graceful delete: the pod's terminationGracePeriodSeconds (from
                // --agent-grace-seconds) applies, and the agent, on SIGTERM, disconnects
                // "after completing any job that it may be running" (Buildkite docs, "Agent
                // lifecycle", Signal handling).
                match api.delete(&pod, &DeleteParams::default()).await {
                    Ok(_) => None,
                    Err(e) if is_not_found(&e) => None,
                    Err(e) => Some(format!("deleting pod {pod}: {e}")),
                }
            }
        })
        .buffer_unordered(concurrency)
        .filter_map(futures::future::ready)
        .collect()
        .await;
    // Creates this process sent that the cache has not shown yet are not sent again.
    let facts_by_node: HashMap<&str, &NodeFacts> = facts.iter().map(|f| (f.gpunode.as_str(), f)).collect();
    {
        let mut expected = ctx.expected.lock().map_err(|_| Error::MissingField("create expectations"))?;
        expected.expire(instant);
        for a in &agents {
            expected.observed(&format!("{ns}/{}", a.name));
        }
        for (pod, _) in &plan.deletes {
            expected.observed(&format!("{ns}/{pod}"));
        }
    }
    // Pods are built as they are sent, not all up front: a pool coming up on 1,000 nodes
    // would otherwise hold 8,000 whole pod objects at once (the controller's peak memory).
    let to_create = plan.creates.clone().into_iter().filter_map(|(gpunode, slot)| {
        let pod = facts_by_node.get(gpunode.as_str()).and_then(|f| build(f, slot))?;
        let pending = ctx.expected.lock().map(|e| e.pending(&format!("{ns}/{}", pod.name_any()), instant));
        (!pending.unwrap_or(false)).then_some(pod)
    });
    let create_errors: Vec<String> = futures::stream::iter(to_create)
        .map(|pod| {
            let api = pods_api.clone();
            let (ctx, ns) = (ctx.clone(), ns.clone());
            async move {
                let pod_name = pod.name_any();
                // A plain create: pods are never updated, only created and deleted, and a
                // server-side apply costs the API server about 2.5 times as much per pod
                // (measured at fleet scale). A pod that already exists (a cache that has not
                // seen it yet) is the next reconcile's to compare.
                let params = PostParams { field_manager: Some(FIELD_MANAGER.to_string()), ..Default::default() };
                let outcome = match api.create(&params, &pod).await {
                    Ok(_) => None,
                    Err(e) if is_already_exists(&e) => None,
                    Err(e) => return Some(format!("creating pod {pod_name}: {e}")),
                };
                if let Ok(mut expected) = ctx.expected.lock() {
                    expected.created(format!("{ns}/{pod_name}"), Instant::now());
                }
                outcome
            }
        })
        .buffer_unordered(concurrency)
        .filter_map(futures::future::ready)
        .collect()
        .await;

    // Status.
    let nodes: Vec<PoolNodeStatus> = plan
        .nodes
        .iter()
        .map(|n| PoolNodeStatus {
            name: n.gpunode.clone(),
            state: n.state.name().to_string(),
            gpus: n.gpus,
            desired: n.desired,
            ready: n.ready,
            agent_resources: n.agent_resources.map(|s| ResourceShare { cpu: s.cpu_cores, memory: s.memory_quantity() }),
            message: n.state.message(),
        })
        .collect();
    let conflicts: Vec<&plan::NodePlan> =
        plan.nodes.iter().filter(|n| matches!(n.state, NodeState::Conflict(_))).collect();
    let unusable: Vec<&plan::NodePlan> = plan
        .nodes
        .iter()
        .filter(|n| {
            !matches!(
                n.state,
                NodeState::Active
                    | NodeState::Conflict(_)
                    | NodeState::Paused
                    | NodeState::Maintenance
                    | NodeState::Cordoned
                    | NodeState::NotReadyTolerated
                    | NodeState::Held(..)
            ) && n.state.name() != facts::reason::GPUNODE_PENDING
        })
        .collect();
    // DRA agents learn their devices from their pod (the allocation the scheduler made).
    let allocation_errors = match (&ctx.dra, &dra_template) {
        (Some(caches), Some(_)) => dra::publish_allocations(&ctx, caches, &uid, &ns).await,
        _ => Vec::new(),
    };
    let write_errors: Vec<String> = delete_errors.into_iter().chain(create_errors).chain(allocation_errors).collect();

    // The pool's PodDisruptionBudget: evictions draw from the rollout budget.
    let pdb_error = pdb::ensure(&ctx.client, &pool, plan.min_available).await.err();

    // The Buildkite side: create the queue when asked, report its live state.
    let mut queue_problem: Option<String> = None;
    let mut queue_created = false;
    if let Some(settings) = pool.spec.buildkite.as_ref().filter(|b| b.create_queue) {
        match &ctx.buildkite {
            Some(bk) => match ctx.queues.ensure(bk, &pool.spec.queue, settings).await {
                Ok(created) => queue_created = created,
                Err(msg) => queue_problem = Some(msg),
            },
            None => {
                queue_problem = Some("spec.buildkite.createQueue needs the Buildkite API: start the controller with --buildkite-org and a token".into())
            }
        }
    }
    // The pipeline KernelJobs on the queue build on.
    let pipeline = pipeline_verdict(&pool_pipeline(&pool, &ctx).await, previous.pipeline.as_ref());

    // (condition it belongs to, type, reason, note): published when that condition changes.
    let mut events: Vec<(&str, EventType, &str, String)> = Vec::new();
    conditions.set(cond::PIPELINE_READY, pipeline.status, pipeline.reason, pipeline.message.clone());
    match pipeline.status {
        ConditionStatus::True => {
            events.push((cond::PIPELINE_READY, EventType::Normal, "PipelineReady", pipeline.message.clone()))
        }
        ConditionStatus::False => {
            events.push((cond::PIPELINE_READY, EventType::Warning, pipeline.reason, pipeline.message.clone()))
        }
        ConditionStatus::Unknown => {}
    }

    if conflicts.is_empty() {
        conditions.set(cond::CONFLICT, ConditionStatus::False, "NoConflict", "");
    } else {
        let msg =
            conflicts.iter().map(|n| format!("{} ({})", n.gpunode, n.state.message())).collect::<Vec<_>>().join(", ");
        conditions.set(
            cond::CONFLICT,
            ConditionStatus::True,
            "NodeClaimedByOtherPool",
            format!("nodes claimed by older pools, not used by this one: {msg}"),
        );
        events.push((cond::CONFLICT, EventType::Warning, "Conflict", format!("nodes claimed by older pools: {msg}")));
    }

    let (degraded_reason, degraded_msg): (Option<&str>, String) = if token_missing {
        (
            Some("TokenSecretMissing"),
            format!(
                "Secret {ns}/{secret_name} (spec.agent.tokenSecretRef) does not exist: create it with the Buildkite agent token under key {:?}",
                pool.spec.agent.token_secret_ref.key
            ),
        )
    } else if let Some((reason, msg)) = &dra_problem {
        (Some(*reason), msg.clone())
    } else if let Some(msg) = &queue_problem {
        (Some("QueueCreationFailed"), msg.clone())
    } else if pipeline.degraded {
        (Some(pipeline.reason), pipeline.message.clone())
    } else if !write_errors.is_empty() {
        (Some("PodWriteFailed"), write_errors.join("; "))
    } else if let Some(e) = &pdb_error {
        (Some("DisruptionBudgetFailed"), e.clone())
    } else if !failed_pods.is_empty() {
        (Some("AgentFailed"), failed_pods.iter().map(|(p, r)| format!("{p}: {r}")).collect::<Vec<_>>().join("; "))
    } else if selected.is_empty() {
        (
            Some("NoNodesSelected"),
            "spec.gpuNodeSelector matches no GpuNode: check `kubectl get gpunodes --show-labels`".to_string(),
        )
    } else if plan.desired == 0 && !pool.spec.paused && !unusable.is_empty() {
        let msg = unusable
            .iter()
            .map(|n| format!("{}: {} ({})", n.gpunode, n.state.name(), n.state.message()))
            .collect::<Vec<_>>()
            .join("; ");
        (Some("NoUsableNodes"), msg)
    } else if plan.desired == 0 && !pool.spec.paused && !conflicts.is_empty() {
        (Some("AllNodesClaimed"), "every selected node is claimed by an older pool".to_string())
    } else {
        (None, String::new())
    };
    match degraded_reason {
        Some(reason) => {
            conditions.set(cond::DEGRADED, ConditionStatus::True, reason, degraded_msg.clone());
            events.push((cond::DEGRADED, EventType::Warning, reason, degraded_msg.clone()));
        }
        None => {
            conditions.set(cond::DEGRADED, ConditionStatus::False, "AsExpected", "");
        }
    }
    let converged = plan.converged() && write_errors.is_empty();
    let progress = progress(&plan, converged);
    conditions.set(cond::PROGRESSING, progress.status, progress.reason, progress.message.clone());
    if progress.reason == reason::ROLLING_UPDATE {
        events.push((cond::PROGRESSING, EventType::Normal, reason::ROLLING_UPDATE, progress.message.clone()));
    }
    let (ready, ready_reason, ready_msg) = if pool.spec.paused {
        (true, "Paused", "the pool is paused: no agents run".to_string())
    } else if let Some(reason) = degraded_reason.filter(|r| *r != "AgentFailed") {
        (false, reason, degraded_msg)
    } else if converged {
        (
            true,
            "AgentsReady",
            format!("{} agents ready on {} nodes", plan.ready, plan.nodes.iter().filter(|n| n.desired > 0).count()),
        )
    } else {
        (false, progress.ready_reason, progress.message.clone())
    };
    // kstatus: Stalled when only the user can fix the pool, Reconciling while agents converge.
    let stalled = degraded_reason.filter(|r| {
        matches!(
            *r,
            "TokenSecretMissing"
                | "QueueCreationFailed"
                | "NoNodesSelected"
                | "NoUsableNodes"
                | "AllNodesClaimed"
                | "DraDisabled"
                | "DeviceClassNotFound"
        ) || (pipeline.degraded && pipeline.stalled && *r == pipeline.reason)
    });
    match stalled {
        Some(reason) => conditions.kstatus(None, Some((reason, ready_msg.as_str()))),
        None if !converged && !pool.spec.paused => {
            let msg = format!("{} of {} agents ready", plan.ready, plan.desired);
            conditions.kstatus(Some(("AgentsConverging", msg.as_str())), None)
        }
        // A pipeline failure that may pass (Buildkite or the network): still working on it.
        None if pipeline.degraded => conditions.kstatus(Some(("PipelinePending", pipeline.message.as_str())), None),
        None => conditions.kstatus(None, None),
    };
    conditions.set(cond::READY, ConditionStatus::from_bool(ready), ready_reason, ready_msg);
    if plan.nodes.iter().any(|n| n.state == NodeState::Maintenance) {
        let drained: Vec<&str> =
            plan.nodes.iter().filter(|n| n.state == NodeState::Maintenance).map(|n| n.gpunode.as_str()).collect();
        if plan.deletes.iter().any(|(_, r)| *r == DeleteReason::NodeIneligible("Maintenance".into())) {
            events.push((
                "",
                EventType::Normal,
                "NodeDrained",
                format!("draining agents from nodes in maintenance: {}", drained.join(", ")),
            ));
        }
    }

    let status = AgentPoolStatus {
        observed_generation: pool.metadata.generation,
        selected_nodes: i64::try_from(selected.len()).unwrap_or(i64::MAX),
        desired_agents: plan.desired,
        ready_agents: plan.ready,
        updated_agents: plan.updated,
        unavailable_agents: plan.unavailable,
        max_unavailable_agents: plan.max_unavailable,
        gpus_claimed: plan.gpus_claimed,
        nodes,
        queue: ctx.queues.status(&pool.spec.queue),
        pipeline: pipeline.pipeline.clone(),
        kernel_jobs: job_queue.map(Option::unwrap_or_default),
        autoscaling: autoscaling_report.as_ref().map(|(s, _)| s.clone()),
        conditions: conditions.into_vec(),
    };
    let api: Api<AgentPool> = Api::namespaced(ctx.client.clone(), &ns);
    if pool.status.as_ref() != Some(&status) {
        let patch = json!({ "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool", "status": status });
        api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(Error::kube(format!("writing status of AgentPool {ns}/{name}")))?;
    }
    // Events on transitions only, so a stuck pool does not flood the namespace.
    let changed = |t: &str| {
        let before = find(&previous.conditions, t).map(|c| (c.status.clone(), c.reason.clone()));
        let after = find(&status.conditions, t).map(|c| (c.status.clone(), c.reason.clone()));
        before != after
    };
    for (condition, type_, reason, note) in events {
        if condition.is_empty() || changed(condition) {
            publish(&ctx, pool.as_ref(), type_, reason, "Reconcile", note).await;
        }
    }

    if queue_created {
        publish(
            &ctx,
            pool.as_ref(),
            EventType::Normal,
            "QueueCreated",
            "Reconcile",
            format!("created Buildkite queue {}", pool.spec.queue),
        )
        .await;
    }
    let backoff = failures_snapshot.values().min().copied();
    // Autoscaling: back when the scale-down delay ends, or soon while busy agents hold the
    // pool above its target.
    let scale_recheck = autoscale.as_ref().and_then(|(_, target)| {
        let held = plan.desired > target.desired.min(plan.slots);
        target.recheck_in.map(|d| d + Duration::from_secs(1)).or(held.then_some(Duration::from_secs(10)))
    });
    let after = if !converged {
        backoff.unwrap_or(Duration::from_secs(5)).min(Duration::from_secs(5)).max(Duration::from_secs(1))
    } else if token_missing || degraded_reason.is_some() {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(300)
    };
    Ok(Action::requeue(scale_recheck.map_or(after, |d| d.min(after))))
}

pub fn error_policy(pool: Arc<AgentPool>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(pool = %pool.name_any(), error = %err, "AgentPool reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}
