//! Subcommands of the `abmesh` binary.

pub mod assign;
pub mod evaluation;
pub mod http;
pub mod limits;
pub mod log;
pub mod report;
pub mod serve;
pub mod stats;
