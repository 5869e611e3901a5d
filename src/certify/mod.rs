//! GPU certification (issue 18): judging a slot by whether it ranks a reference suite of
//! kernels the way a trusted reference does.

pub mod parity;
