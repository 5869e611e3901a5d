//! Fail fast: a KernelJob that no agent of its pool can ever serve ends `Failed` with the
//! precise reason at once instead of waiting out its timeout. Pure: the reconcile hands in
//! the pool and the GPU architecture of each node the pool selects.
//!
//! "Ever" is judged conservatively: a state that passes by itself (a node NotReady, in
//! maintenance, cordoned, not yet measured) keeps the job waiting; only what needs a person
//! to change the pool or the fleet fails it: no node selected, every selected node unusable
//! (claimed by another pool, shared, too small, gone), an architecture none of them has, more
//! GPUs than one agent holds, a pool paused (a pause has no end).

use crate::api::AgentPool;
use crate::api::kerneljob::KernelJobSpec;

/// Node states (`AgentPool.status.nodes[].state`) that may serve jobs again without anyone
/// changing the pool: the node is usable, or will be once it is Ready, out of maintenance,
/// uncordoned or measured.
const PASSING_STATES: &[&str] = &[
    "Active",
    "Maintenance",
    "NotReady",
    "NotReadyTolerated",
    "Cordoned",
    "ShareUnknown",
    // Agents kept while the DRA driver republishes its devices, or while the controller runs
    // without DRA: they may still serve.
    "DevicesUnsettled",
    "DraDisabled",
];

/// Why no agent of `pool` can serve the job (reason, message), or `None` when one may.
/// `arch_of(node)`: the GpuNode's architecture (`sm_90`, `gfx942`), `None` when unknown.
/// A pool whose status is older than its spec tells nothing yet: `None`.
pub fn unservable(
    spec: &KernelJobSpec,
    pool: &AgentPool,
    arch_of: impl Fn(&str) -> Option<String>,
) -> Option<(&'static str, String)> {
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    let status = pool.status.as_ref()?;
    if status.observed_generation.is_none() || status.observed_generation != pool.metadata.generation {
        return None;
    }
    let per_agent = pool.spec.gpus_per_agent.max(1);
    let needed = needed_gpus(spec);
    if needed > per_agent {
        return Some((
            "TooManyGpus",
            format!(
                "the job needs {needed} GPUs{} and the agents of AgentPool {name} have {per_agent} (spec.gpusPerAgent): submit it to a pool with gpusPerAgent >= {needed}",
                if spec.gpus.is_none() && spec.multi_gpu { " (multiGpu)" } else { "" }
            ),
        ));
    }
    if pool.spec.paused {
        return Some((
            "PoolPaused",
            format!(
                "AgentPool {name} is paused (spec.paused) and runs no agents: unpause it or submit to another pool"
            ),
        ));
    }
    if status.nodes.is_empty() {
        return Some((
            "NoUsableNode",
            format!(
                "AgentPool {name} selects no GpuNode (spec.gpuNodeSelector matches none): no agent can run the job"
            ),
        ));
    }
    let passing: Vec<_> = status.nodes.iter().filter(|n| PASSING_STATES.contains(&n.state.as_str())).collect();
    if passing.is_empty() {
        let why: Vec<String> = status
            .nodes
            .iter()
            .take(5)
            .map(|n| {
                if n.message.is_empty() {
                    format!("{} {}", n.name, n.state)
                } else {
                    format!("{} {} ({})", n.name, n.state, n.message)
                }
            })
            .collect();
        let more = status.nodes.len().saturating_sub(why.len());
        return Some((
            "NoUsableNode",
            format!(
                "none of the {} GpuNodes AgentPool {name} selects can run agents: {}{}",
                status.nodes.len(),
                why.join("; "),
                if more > 0 { format!("; and {more} more") } else { String::new() }
            ),
        ));
    }
    if let Some(arch) = spec.arch.as_deref() {
        let archs: Vec<Option<String>> = passing.iter().map(|n| arch_of(&n.name)).collect();
        // An unknown architecture may be the one: only known ones can rule a node out.
        if archs.iter().all(|a| a.as_deref().is_some_and(|a| !runs_on(arch, a))) {
            let mut have: Vec<&str> = archs.iter().filter_map(|a| a.as_deref()).collect();
            have.sort_unstable();
            have.dedup();
            return Some((
                "ArchitectureUnavailable",
                format!(
                    "the job is built for compute capability {arch} (spec.arch) and the GpuNodes of AgentPool {name} are {}: none can run it",
                    have.join(", ")
                ),
            ));
        }
    }
    None
}

/// GPUs one evaluation needs: `spec.gpus`, else 2 for a multi-GPU job, else 1.
pub fn needed_gpus(spec: &KernelJobSpec) -> i32 {
    spec.gpus.unwrap_or(if spec.multi_gpu { 2 } else { 1 })
}

/// Whether code built for CUDA compute capability `arch` (`90a`, `89`, `100`, `120f`) can
/// run on a GPU of architecture `node` (`sm_90`, `gfx942`). Plain capabilities carry PTX, so
/// they run on the same or a newer GPU; `a` (architecture-specific) code only on the same
/// capability, `f` (family) code on the same major with the same or a newer minor. A
/// non-NVIDIA GPU runs none of it. Unparsable values are assumed to fit.
pub fn runs_on(arch: &str, node: &str) -> bool {
    let Some(node_cc) = node.strip_prefix("sm_") else {
        // gfx… and other non-CUDA architectures.
        return !node.starts_with("gfx");
    };
    let (digits, suffix) = match arch.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&arch[..i], &arch[i..]),
        None => (arch, ""),
    };
    let node_digits = node_cc.trim_end_matches(|c: char| !c.is_ascii_digit());
    let (Some(want), Some(have)) = (split_cc(digits), split_cc(node_digits)) else {
        return true;
    };
    match suffix {
        "a" => want == have,
        "f" => want.0 == have.0 && have.1 >= want.1,
        _ => have >= want,
    }
}

/// `90` → (9, 0), `100` → (10, 0), `120` → (12, 0): the last digit is the minor.
fn split_cc(digits: &str) -> Option<(u32, u32)> {
    if digits.len() < 2 {
        return None;
    }
    let (major, minor) = digits.split_at(digits.len() - 1);
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
#[path = "feasible_tests.rs"]
mod tests;
