//! Pure fleet logic: GPU inventory, per-GPU shares, agent pods and pool plans. No client
//! code here: everything is unit-tested from plain inputs.

pub mod inventory;
pub mod plan;
pub mod pod;
pub mod quantity;
pub mod share;
