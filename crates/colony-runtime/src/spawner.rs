//! The one place where colony starts background work: [`Spawner`], defined in
//! `colony-agents` (the lowest crate that runs on tokio) and re-exported here.

pub use colony_agents::spawner::{Spawner, panic_message};
