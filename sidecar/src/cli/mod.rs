//! Subcommands of the `abmesh` binary.

pub mod assign;
