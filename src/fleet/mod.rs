//! Pure fleet logic: GPU inventory, node health, per-GPU shares, pods blocked by agents,
//! agent pods and pool plans. No client code here: everything is unit-tested from plain
//! inputs.

pub mod autoscale;
pub mod blocked;
pub mod cached_pod;
pub mod dra;
pub mod exclusive;
pub mod health;
pub mod inventory;
pub mod pdb;
pub mod plan;
pub mod pod;
pub mod quantity;
pub mod rollout;
pub mod share;
