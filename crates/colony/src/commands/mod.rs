//! One module per subcommand.

pub(crate) mod agents;
pub(crate) mod backup;
pub(crate) mod bench;
pub(crate) mod client;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod memory;
pub(crate) mod prune;
pub(crate) mod runs;
pub(crate) mod serve;
pub(crate) mod tasks;
pub(crate) mod top;
pub(crate) mod tree;
pub(crate) mod workflow;
