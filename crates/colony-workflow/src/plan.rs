//! A workflow's plan (`colony validate --plan`): its waves, its critical path, and the time
//! and cost a run is expected to take, from each pool's `estimate:` (a `sim` pool's own
//! latency without one), scheduled on the pools' slots by `colony_core::plan` in virtual
//! time. Every task is assumed to succeed at its first attempt; `wait:`s, rate limits and
//! the autoscaler are not counted. A task of a pool with no estimate counts as taking no
//! time and costing nothing, and the plan names the pool.

use crate::{Workflow, team::Size};
use colony_agents::sim::{Latency, StandIn};
use colony_core::{
    plan::{Job, critical_path, schedule},
    task::Requirement,
};
use serde::Serialize;
use std::time::Duration;

/// What one task of a pool is expected to take.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Estimate {
    pub duration: Option<Duration>,
    pub cost_usd: Option<f64>,
}

/// The time a `sim` agent typically takes: the fixed value, the middle of a uniform range,
/// or a lognormal's median.
pub fn typical(latency: &Latency) -> Duration {
    match latency {
        Latency::Fixed { value } => *value,
        Latency::Uniform { min, max } => *min + max.saturating_sub(*min) / 2,
        Latency::LogNormal { p50, .. } => *p50,
    }
}

/// One task in the plan.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Planned {
    pub id: String,
    pub wave: usize,
    /// The pool its estimate comes from: the first that can run it (a team's: its first
    /// step's).
    pub pool: Option<String>,
    /// Agents asked: 1, a decision's voters, a team's asks over its steps.
    pub asks: u32,
    pub start_seconds: f64,
    pub end_seconds: f64,
    pub cost_usd: f64,
}

/// A workflow's plan.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Plan {
    pub name: String,
    pub tasks: Vec<Planned>,
    /// The tasks of each wave, by id.
    pub waves: Vec<Vec<String>>,
    /// The longest chain of needs, by id, and its length: no run can be shorter.
    pub critical_path: Vec<String>,
    pub critical_seconds: f64,
    /// The run, scheduled on the pools' slots.
    pub expected_seconds: f64,
    pub expected_cost_usd: f64,
    /// Pools without a time estimate, and without a cost: their tasks count as zero.
    pub untimed: Vec<String>,
    pub uncosted: Vec<String>,
}

/// How a dry run (`colony run --sim`) changed the workflow.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Simulated {
    /// Pools whose programs, processes or endpoints a `sim` agent stands in for.
    pub replaced: Vec<String>,
    /// Tasks whose `expect` checks are not run: a stand-in's output is its input.
    pub unchecked: Vec<String>,
    /// Webhooks not posted to.
    pub webhooks: usize,
}

impl Workflow {
    /// This workflow as a dry run: every pool that is not `sim` replaced by a `sim` agent of
    /// the same shape (count, concurrency, role, capabilities, rate, scaling) answering
    /// after its estimated duration divided by `speed` (at once without an estimate); no
    /// `expect` checks (a stand-in's output is its input), no webhooks, and the memory in
    /// the output folder, embedded lexically (no endpoint is called). Results go to
    /// `<output>.sim`. Nothing it runs reaches outside the process. `sim` pools are kept as
    /// they are.
    pub fn simulated(mut self, speed: f64) -> (Workflow, Simulated) {
        let mut changed = Simulated::default();
        for (i, pool) in self.pools.iter_mut().enumerate() {
            if matches!(pool.backend, crate::Backend::Sim(_)) {
                continue;
            }
            let estimated = pool.estimate.duration.unwrap_or_default();
            // At most the longest duration a file may give, whatever the speed.
            let latency = Duration::try_from_secs_f64(estimated.as_secs_f64() / speed)
                .unwrap_or(crate::runtime::MAX_DURATION)
                .min(crate::runtime::MAX_DURATION);
            let stands_in_for = match &pool.backend {
                crate::Backend::Command(c) => c.cli.as_ref().map(|cli| StandIn::Cli(cli.preset)),
                crate::Backend::Http(h) => Some(StandIn::Http {
                    model: h.model.clone(),
                }),
                _ => None,
            };
            pool.backend = crate::Backend::Sim(colony_agents::sim::SimOptions {
                seed: i as u64,
                latency: Latency::Fixed { value: latency },
                stands_in_for,
                ..Default::default()
            });
            pool.spec.kind = "sim".into();
            changed.replaced.push(pool.name.clone());
        }
        for task in &mut self.tasks {
            let checks = std::mem::take(&mut task.expect);
            if checks.json
                || checks.regex.is_some()
                || checks.contains.is_some()
                || !checks.files.is_empty()
                || checks.schema.is_some()
                || checks.git_diff.is_some()
            {
                changed.unchecked.push(task.id.clone());
            }
        }
        changed.webhooks = std::mem::take(&mut self.webhooks).len();
        self.memory.place = None;
        self.memory.nats = None;
        self.memory.shards = 1;
        self.memory.embedder = None;
        // `<output>.sim`, beside the real output: no workflow's name has a `.`, so it is no
        // other workflow's output either.
        let normal: std::path::PathBuf = self.output.components().collect();
        self.output = match normal.file_name() {
            Some(name) => normal.with_file_name(format!("{}.sim", name.to_string_lossy())),
            None => normal.join("colony-out").join(format!("{}.sim", self.name)),
        };
        (self, changed)
    }
}

/// The first pool of `workflow` that can run what `requirement` asks for.
fn pool_for(workflow: &Workflow, requirement: &Requirement) -> Option<usize> {
    workflow
        .pools
        .iter()
        .position(|p| p.spec.satisfies(requirement))
}

/// `workflow`'s plan.
pub fn plan(workflow: &Workflow) -> Plan {
    let mut untimed: Vec<String> = Vec::new();
    let mut uncosted: Vec<String> = Vec::new();
    // A pool's time and cost for one ask, noting the pools that have none.
    let mut per_ask = |pool: Option<usize>| -> (Duration, f64) {
        let Some(p) = pool.and_then(|p| workflow.pools.get(p)) else {
            return (Duration::ZERO, 0.0);
        };
        let (time, cost) = (p.estimate.duration, p.estimate.cost_usd);
        if time.is_none() && !untimed.contains(&p.name) {
            untimed.push(p.name.clone());
        }
        if cost.is_none() && !uncosted.contains(&p.name) {
            uncosted.push(p.name.clone());
        }
        (time.unwrap_or_default(), cost.unwrap_or_default())
    };
    let mut jobs = Vec::with_capacity(workflow.tasks.len());
    let mut costs = Vec::with_capacity(workflow.tasks.len());
    let mut shown = Vec::with_capacity(workflow.tasks.len());
    for task in &workflow.tasks {
        let pool = pool_for(workflow, &task.requirement);
        let (duration, cost, asks, width, pool) = if let Some(vote) = &task.decide {
            // The voters answer at once, each holding a slot.
            let (time, cost) = per_ask(pool);
            (
                time,
                cost * f64::from(vote.voters),
                vote.voters,
                vote.voters,
                pool,
            )
        } else if let Some(team) = &task.team {
            // Steps one after another; an `each` step asks every member of its role.
            let size = match &team.size {
                Size::Fixed(n) => Some(*n),
                Size::From { .. } => None,
            };
            let counted: u32 = team.roles.iter().filter_map(|(_, c)| *c).sum();
            let (mut time, mut cost, mut asks) = (Duration::ZERO, 0.0, 0u32);
            let mut first = None;
            for step in &team.steps {
                let Some((role, count)) = team.roles.get(step.role) else {
                    continue;
                };
                let members = match count {
                    Some(c) => *c,
                    None => size.map_or(1, |n| n.saturating_sub(counted).max(1)),
                };
                let step_pool = pool_for(workflow, &role.requirement);
                first = first.or(step_pool);
                let (t, c) = per_ask(step_pool);
                let n = if step.each { members } else { 1 };
                time += t;
                cost += c * f64::from(n);
                asks += n;
            }
            (time, cost, asks, 1, first.or(pool))
        } else {
            let (time, cost) = per_ask(pool);
            (time, cost, 1, 1, pool)
        };
        jobs.push(Job {
            duration,
            pool: pool.unwrap_or(0),
            width,
        });
        costs.push(cost);
        shown.push((pool.map(|p| workflow.pools[p].name.clone()), asks));
    }
    let capacity: Vec<u32> = workflow
        .pools
        .iter()
        .map(|p| p.count.saturating_mul(p.spec.concurrency.max(1)))
        .collect();
    let schedule = schedule(&workflow.graph, &jobs, &capacity);
    let (critical, path) = critical_path(&workflow.graph, &jobs);
    let waves = workflow.graph.waves();
    let mut by_wave: Vec<Vec<String>> = vec![Vec::new(); waves.iter().max().map_or(0, |w| w + 1)];
    for (task, &wave) in workflow.tasks.iter().zip(&waves) {
        by_wave[wave].push(task.id.clone());
    }
    let tasks = workflow
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| Planned {
            id: t.id.clone(),
            wave: waves[i],
            pool: shown[i].0.clone(),
            asks: shown[i].1,
            start_seconds: schedule.start[i].as_secs_f64(),
            end_seconds: schedule.end[i].as_secs_f64(),
            cost_usd: costs[i],
        })
        .collect();
    Plan {
        name: workflow.name.clone(),
        tasks,
        waves: by_wave,
        critical_path: path.iter().map(|&i| workflow.tasks[i].id.clone()).collect(),
        critical_seconds: critical.as_secs_f64(),
        expected_seconds: schedule.makespan.as_secs_f64(),
        expected_cost_usd: costs.iter().sum(),
        untimed,
        uncosted,
    }
}
