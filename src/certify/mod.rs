//! GPU certification (issue 18): judging a slot by whether it ranks a reference suite of
//! kernels the way a trusted reference does, and watching it for drift afterwards.

pub mod drift;
pub mod ledger;
pub mod parity;
pub mod report;
pub mod suite;
