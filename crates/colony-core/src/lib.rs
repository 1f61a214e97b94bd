//! The core of colony: ids, specs, and the sans-IO engines that make its decisions.
//!
//! Nothing here touches a clock, a thread or a socket. The runtime feeds these types events and
//! carries out what they decide, so every decision can be tested with virtual time and a seeded
//! random number generator.
//!
//! - [`hierarchy`] plans the tiers of a swarm: how many supervisors, coordinators and masters a
//!   worker count needs, and who reports to whom, computed rather than searched.
//! - [`tree`] keeps the [`LiveTree`](tree::LiveTree): every agent's parent and children and
//!   the aggregate load, capacity and specs of every subtree, as agents join, leave service or
//!   rotation and come back.
//! - [`routing`] picks where a task goes down that tree, by strategy, and which idle worker
//!   under the chosen supervisor runs it.
//! - [`health`] classifies an agent healthy, degraded, critical or failed from its response
//!   times and silences, and raises a predictive alert when it slows down.
//! - [`breaker`] acts on that health: an agent's circuit breaker opens when it turns critical
//!   or its error rate climbs, keeps it out of rotation with a doubling backoff, and lets it
//!   back through a probation of one attempt at a time; degraded agents get only the work
//!   their healthy siblings cannot take. The tree carries it out
//!   ([`set_sidelined`](tree::LiveTree::set_sidelined),
//!   [`set_probation`](tree::LiveTree::set_probation),
//!   [`set_reduced`](tree::LiveTree::set_reduced)).
//! - [`attempt`] decides what becomes of a task after an attempt ends: commit, fail, cancel,
//!   retry after an exponential backoff, dead-letter, or quarantine as poison.
//! - [`rebalance`] picks the sibling queue an idle worker steals from
//!   ([`steal_from`](rebalance::steal_from)) and plans the moves that even out sibling
//!   supervisors' queues.
//! - [`scaling`] decides how many agents a pool should have from its utilisation, queue,
//!   waits and forecast: reactive, predictive, cost and emergency policies with factors,
//!   bounds and cooldowns, activation from zero and idling to `min`, each step with its reason.
//! - [`forecast`] predicts a pool's arrivals over the next intervals (additive Holt-Winters)
//!   and measures its own accuracy, which the predictive policy requires before it acts.
//! - [`decision`] takes decisions by vote among agents: majority (quorum), weighted,
//!   confidence, similarity, bft, fast and leader protocols, each with its stated guarantee,
//!   fenced ballots, a timeout and a tie policy; the outcome keeps every ballot and the
//!   dissenters, and a failure says why.
//! - [`team`] forms a temporary team for a task on the live tree, by role and availability,
//!   under one supervisor when one covers the roles; picks who takes over a failed member's
//!   role; sizes a team from a complexity score; and caps delegation so a team always ends.
//! - [`supervision`] decides, Erlang-style, which children restart after an exit, after what
//!   backoff, and when a supervisor gives up and escalates.
//! - [`task`] and [`agent`] are the specs users write, and an agent's
//!   [`Failover`](agent::Failover) chooses which pools a retry may go to
//!   ([`Failover::choose`](agent::Failover::choose)); [`text`] is how numbers read;
//!   [`name`] is how a name reaches a file path.
//!
//! ```
//! use colony_core::hierarchy::{HierarchyOptions, Plan};
//!
//! let plan = Plan::new(&HierarchyOptions::with_workers(100_000)).unwrap();
//! let counts: Vec<u64> = plan.tiers().iter().map(|t| t.count).collect();
//! assert_eq!(counts, [58, 695, 8_334, 100_000]);
//! assert_eq!(plan.total(), 109_087);
//! ```

pub mod agent;
pub mod attempt;
pub mod breaker;
pub mod dag;
pub mod decision;
pub mod forecast;
pub mod health;
pub mod hierarchy;
pub mod id;
pub mod mailbox;
pub mod name;
pub mod plan;
pub mod rebalance;
pub mod reputation;
pub mod routing;
pub mod scaling;
pub mod supervision;
pub mod task;
pub mod team;
pub mod text;
pub mod tree;

pub use id::{AgentId, TaskId};
