//! From a parsed [`File`] to a runnable [`Workflow`], or every problem found, each with where
//! it is in the file.

use crate::{
    Backend, Checks, PoolDef, RuntimeSettings, TaskDef, Workflow,
    file::{self, File, Kind},
    template::{self, Part},
};
use colony_agents::{AgentSpec, command::CommandOptions, sim::SimOptions};
use colony_core::{
    dag::{self, Graph, Node},
    mailbox::check_topic,
    name::Name,
    scaling::{self, Policy, ScalingOptions},
    task::{Priority, Requirement},
};
use serde_saphyr::{Location, Spanned};
use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

/// Most documents a task recalls.
const MAX_RECALL: u32 = 100;
/// How long a task waits for a message on its `wait:` topic, unless it says.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// The longest it may wait.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// One thing wrong with the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    /// Where, when known.
    pub at: Option<Position>,
    /// What the snippet's marker says.
    pub label: String,
}

impl Problem {
    pub(crate) fn at<T>(
        value: &Spanned<T>,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Self {
        Self {
            message: message.into(),
            at: known(value.referenced),
            label: label.into(),
        }
    }
}

/// A place in a file: 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl Position {
    pub fn line(&self) -> u64 {
        self.line
    }

    pub fn column(&self) -> u64 {
        self.column
    }
}

pub(crate) fn known(at: Location) -> Option<Position> {
    (at != Location::UNKNOWN && at.line() > 0).then(|| Position {
        line: at.line(),
        column: at.column(),
    })
}

/// Parses a duration written in the file, recording a problem when it is bad.
pub(crate) type ParseDuration = dyn Fn(&Spanned<String>, &mut Vec<Problem>) -> Option<Duration>;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
pub(crate) const DEFAULT_RETRIES: u32 = 2;

/// What a file is checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// `colony run`: it needs tasks.
    Run,
    /// `colony serve --pools`: only its agents are used, and it may have no tasks.
    Pools,
    /// `colony run --sim`: sim agents stand in for every pool, so programs need not be
    /// installed (nor CLIs be recent enough).
    Rehearse,
    /// `colony run --nats`: the cluster's nodes host the pools and run the programs, so the
    /// programs need not be on this machine, and the file's pool sizes do not bound a
    /// vote's voters or a team's members (a node's own agents do).
    Cluster,
}

impl Purpose {
    /// Whether the pools' programs must be on this machine.
    fn programs_here(self) -> bool {
        matches!(self, Purpose::Run | Purpose::Pools)
    }

    /// Whether the file's pools are the agents its votes and teams are formed from.
    pub(crate) fn agents_here(self) -> bool {
        self != Purpose::Cluster
    }
}

/// Checks `file` and resolves its references; `base` is the folder relative paths start from.
pub(crate) fn check(
    file: File,
    base: &std::path::Path,
    purpose: Purpose,
) -> Result<Workflow, Vec<Problem>> {
    let mut problems = Vec::new();
    let duration =
        |d: &Spanned<String>, problems: &mut Vec<Problem>| match crate::runtime::parse_duration(
            &d.value, false,
        ) {
            Ok(v) => Some(v),
            Err((message, label)) => {
                problems.push(Problem::at(d, message, label));
                None
            }
        };
    let default_timeout = file
        .defaults
        .timeout
        .as_ref()
        .and_then(|d| duration(d, &mut problems))
        .unwrap_or(DEFAULT_TIMEOUT);
    let default_retries = file.defaults.retries.unwrap_or(DEFAULT_RETRIES);

    // It names the default output folder and the journal keys of the run.
    if let Err(e) = Name::parse(&file.name.value) {
        problems.push(Problem::at(
            &file.name,
            format!("workflow name: {e} (it names the output folder)"),
            "bad name",
        ));
    }

    // Pools.
    let mut pools: Vec<PoolDef> = Vec::new();
    let mut pool_index: HashMap<&str, usize> = HashMap::new();
    for p in &file.agents {
        if p.name.value.trim().is_empty() {
            problems.push(Problem::at(&p.name, "a pool needs a name", "empty"));
        }
        if let Some(&first) = pool_index.get(p.name.value.as_str()) {
            problems.push(Problem::at(
                &p.name,
                format!(
                    "agent pool `{}` is defined twice (first as pool number {})",
                    p.name.value,
                    first + 1
                ),
                "duplicate name",
            ));
            continue;
        }
        let scaling = p
            .scaling
            .as_ref()
            .map(|s| scaling_options(p, s, &mut problems, &duration));
        check_count(&p.count, scaling.as_ref(), &mut problems);
        if let Some(rate) = &p.rate_per_minute
            && rate.value == 0
        {
            problems.push(Problem::at(
                rate,
                "rate-per-minute 0 would start nothing: allowed 1 and up",
                "zero",
            ));
        }
        if !(1..=10_000).contains(&p.concurrency.value) {
            problems.push(Problem::at(
                &p.concurrency,
                format!(
                    "concurrency {} is out of range: allowed 1..=10000",
                    p.concurrency.value
                ),
                "out of range",
            ));
        }
        if let Some(preset) = &p.preset
            && p.kind.value != Kind::Command
        {
            problems.push(Problem::at(
                preset,
                "`preset:` names the CLI of a `command` pool: set `kind: command`",
                "not a command pool",
            ));
        }
        let backend = match p.kind.value {
            Kind::Sim => {
                if p.command.is_some() || p.process.is_some() {
                    problems.push(Problem::at(
                        &p.kind,
                        "a `sim` pool takes `sim:` settings, not `command:` or `process:`",
                        "kind sim",
                    ));
                }
                sim_options(p, &mut problems, &duration).map(Backend::Sim)
            }
            Kind::Process => match (&p.process, p.sim.is_some() || p.command.is_some()) {
                (Some(settings), false) => {
                    let program = find_program(
                        &settings.program,
                        base,
                        purpose.programs_here(),
                        &mut problems,
                    );
                    let idle_timeout = settings
                        .idle_timeout
                        .as_ref()
                        .and_then(|d| duration(d, &mut problems));
                    let stop_grace = settings
                        .stop_grace
                        .as_ref()
                        .and_then(|d| duration(d, &mut problems));
                    let warm = settings.warm.as_ref().map_or(0, |w| w.value);
                    if let Some(w) = &settings.warm
                        && w.value > 1_000
                    {
                        problems.push(Problem::at(
                            w,
                            format!("warm {} is out of range: allowed 0..=1000", w.value),
                            "out of range",
                        ));
                    }
                    program.map(|program| {
                        let mut o = colony_agents::process::ProcessOptions::new(program);
                        o.args = settings.args.clone();
                        // Like a command's: relative paths in its arguments start at the file.
                        o.workdir = Some(std::path::absolute(base).unwrap_or(base.to_owned()));
                        o.env_allow.extend(settings.env.iter().cloned());
                        o.warm = warm;
                        o.idle_timeout = idle_timeout;
                        if let Some(grace) = stop_grace {
                            o.stop_grace = grace;
                        }
                        if let Some(replace) = settings.replace_on_alert {
                            o.replace_on_alert = replace;
                        }
                        Backend::Process(Box::new(o))
                    })
                }
                _ => {
                    problems.push(Problem::at(
                        &p.kind,
                        "a `process` pool takes a `process:` section (with `program:`), and no `sim:` or `command:`",
                        "kind process",
                    ));
                    None
                }
            },
            Kind::Http => match &p.http {
                Some(h) if p.sim.is_none() && p.command.is_none() && p.process.is_none() => {
                    Some(Backend::Http(Box::new(http_options(p, h, &mut problems))))
                }
                _ => {
                    problems.push(Problem::at(
                        &p.kind,
                        "an `http` pool takes an `http:` section (with `model:`), and no `sim:`, `command:` or `process:`",
                        "kind http",
                    ));
                    None
                }
            },
            Kind::Command if p.sim.is_some() || p.process.is_some() => {
                problems.push(Problem::at(
                    &p.kind,
                    "a `command` pool takes `command:` settings, not `sim:` or `process:`",
                    "kind command",
                ));
                None
            }
            Kind::Command => match (&p.command, &p.preset) {
                (None, None) => {
                    problems.push(Problem::at(
                        &p.kind,
                        "a `command` pool needs a `command:` section with at least `program:`, \
                         or a `preset:` (claude, codex, gemini, aider, opencode)",
                        "no command: section",
                    ));
                    None
                }
                (c, preset) => {
                    command_options(p, c.as_ref(), preset.as_ref(), base, purpose, &mut problems)
                        .map(|mut o| {
                            // Tasks of `serve --pools` come from anyone with a token: a payload may
                            // not choose the name that their logs and worktrees go by.
                            o.names_from_payload = purpose != Purpose::Pools;
                            Backend::Command(Box::new(o))
                        })
                }
            },
        };
        let role = p.role.clone().unwrap_or_else(|| p.name.value.clone());
        let mut spec = AgentSpec::new(
            match p.kind.value {
                Kind::Sim => "sim",
                Kind::Command => "command",
                Kind::Process => "process",
                Kind::Http => "http",
            },
            &role,
        );
        spec.capabilities = p
            .capabilities
            .iter()
            .map(|c| Arc::from(c.as_str()))
            .collect();
        spec.concurrency = p.concurrency.value;
        spec.failover = p.failover.unwrap_or_default();
        pool_index.insert(&p.name.value, pools.len());
        let estimate = estimate(p, backend.as_ref(), &duration, &mut problems);
        if let Some(backend) = backend {
            pools.push(PoolDef {
                name: p.name.value.clone(),
                spec,
                count: p.count.value,
                rate_per_minute: p.rate_per_minute.as_ref().map(|r| r.value),
                scaling: scaling.flatten(),
                backend,
                estimate,
            });
        } else {
            // Keep indices aligned: a placeholder that never runs, since the file is refused.
            pools.push(PoolDef {
                name: p.name.value.clone(),
                spec,
                count: p.count.value,
                rate_per_minute: p.rate_per_minute.as_ref().map(|r| r.value),
                scaling: None,
                backend: Backend::Sim(SimOptions::default()),
                estimate,
            });
        }
    }

    // Task ids.
    let mut task_index: HashMap<&str, usize> = HashMap::new();
    for (i, t) in file.tasks.iter().enumerate() {
        let id = &t.id.value;
        // It names the task's result file, log files and worktree.
        if let Err(e) = Name::parse(id) {
            problems.push(Problem::at(
                &t.id,
                format!("task id: {e} (it names the task's result file)"),
                "bad id",
            ));
        } else if id == "summary" {
            problems.push(Problem::at(
                &t.id,
                "task id `summary` is taken: the run's `summary.json` sits beside the tasks' \
                 result files",
                "reserved id",
            ));
        }
        if let Some(&first) = task_index.get(id.as_str()) {
            problems.push(Problem::at(
                &t.id,
                format!(
                    "task id `{id}` is used twice (first by task number {})",
                    first + 1
                ),
                "duplicate id",
            ));
        } else {
            task_index.insert(id, i);
        }
    }

    // Tasks.
    let mut tasks = Vec::new();
    let mut nodes = Vec::new();
    for t in &file.tasks {
        let mut needs = Vec::new();
        for n in &t.needs {
            match task_index.get(n.value.as_str()) {
                Some(&i) => needs.push(i),
                None => problems.push(Problem::at(
                    n,
                    format!(
                        "task `{}` needs `{}`, which is not a task of this workflow{}",
                        t.id.value,
                        n.value,
                        suggest(&n.value, task_index.keys().copied())
                    ),
                    "unknown task",
                )),
            }
        }
        needs.sort_unstable();
        needs.dedup();
        let requirement = requirement(t, &pools, &pool_index, &mut problems);
        let timeout = t
            .timeout
            .as_ref()
            .and_then(|d| duration(d, &mut problems))
            .unwrap_or(default_timeout);
        if timeout > colony_core::task::MAX_TIMEOUT {
            let at = t.timeout.as_ref().or(file.defaults.timeout.as_ref());
            let message = format!(
                "task `{}` has a timeout of {}: allowed up to 7 days",
                t.id.value,
                humantime::format_duration(timeout)
            );
            problems.push(match at {
                Some(at) => Problem::at(at, message, "too long"),
                None => Problem::at(&t.id, message, "too long"),
            });
        }
        let priority = t
            .priority
            .or(file.defaults.priority)
            .unwrap_or(Priority::DEFAULT.get());
        if priority > 9 {
            problems.push(Problem::at(
                &t.id,
                format!(
                    "task `{}` has priority {priority}: allowed 0..=9",
                    t.id.value
                ),
                "priority",
            ));
        }
        let retries = t.retries.unwrap_or(default_retries);
        if retries > 100 {
            problems.push(Problem::at(
                &t.id,
                format!(
                    "task `{}` has {retries} retries: allowed 0..=100",
                    t.id.value
                ),
                "retries",
            ));
        }
        // Templates may name outputs only of tasks this one needs.
        let needed: Vec<&str> = t.needs.iter().map(|n| n.value.as_str()).collect();
        let mut check_template = |text: &str, at: &dyn Fn(String, String) -> Problem| {
            match template::parse(text) {
                Err(e) => problems.push(at(e, "bad template".into())),
                Ok(parts) => {
                    for part in parts {
                        if let Part::Output { task, .. } = &part
                            && !needed.contains(&task.as_str())
                        {
                            problems.push(at(
                                format!(
                                    "`{{{{outputs.{task}}}}}` names a task that `{}` does not need: add `{task}` to its `needs`",
                                    t.id.value
                                ),
                                "unknown output".into(),
                            ));
                        }
                        // Nothing would fill it: it would reach the agent as written.
                        if let Part::Command(key) = &part {
                            problems.push(at(
                                format!(
                                    "`{{{{{key}}}}}` is filled only in a command pool's `args` and `workdir`: in a task's prompt or input use `{{{{outputs.TASK}}}}`, `{{{{outputs.TASK.FIELD}}}}` or `{{{{task}}}}`"
                                ),
                                "not filled here".into(),
                            ));
                        }
                    }
                }
            }
        };
        if let Some(prompt) = &t.prompt {
            check_template(&prompt.value, &|m, l| Problem::at(prompt, m, l));
        }
        if let Some(recall) = &t.recall {
            let query = &recall.value.query;
            check_template(&query.value, &|m, l| Problem::at(query, m, l));
        }
        if let Some(input) = &t.input {
            template::strings(&input.value, &mut |s| {
                check_template(s, &|m, l| Problem::at(input, m, l));
            });
        }
        crate::payload::check(t, &requirement, &pools, &mut problems);
        let expect = t
            .expect
            .as_ref()
            .map(|e| checks(e, base, &mut problems))
            .unwrap_or_default();
        let decide = t.decide.as_ref().and_then(|d| {
            let voting = crate::decide::Voting {
                task: t,
                requirement: &requirement,
                pools: &pools,
                pool_index: &pool_index,
                timeout,
                agents_here: purpose.agents_here(),
            };
            voting.vote(d, &mut problems, &duration)
        });
        let team = t.team.as_ref().and_then(|b| {
            let agents_here = purpose.agents_here();
            crate::team::check(t, b, &pools, &pool_index, agents_here, &mut problems)
        });
        let recall = t.recall.as_ref().and_then(|r| {
            let k = r.value.k.as_ref().map_or(5, |k| k.value);
            if !(1..=MAX_RECALL).contains(&k) {
                problems.push(Problem::at(
                    r.value.k.as_ref().expect("only a given k is out of range"),
                    format!(
                        "task `{}`: recall k {k} is out of range: allowed 1..={MAX_RECALL}",
                        t.id.value
                    ),
                    "out of range",
                ));
                return None;
            }
            if r.value.query.value.trim().is_empty() {
                problems.push(Problem::at(
                    &r.value.query,
                    format!("task `{}`: recall query is empty", t.id.value),
                    "empty",
                ));
                return None;
            }
            Some((r.value.query.value.clone(), k as usize))
        });
        let publish = t
            .publish
            .as_ref()
            .and_then(|p| match check_topic(&p.value) {
                Ok(()) => Some(std::sync::Arc::from(p.value.as_str())),
                Err(e) => {
                    problems.push(Problem::at(
                        p,
                        format!("task `{}`: publish: {e}", t.id.value),
                        "bad topic",
                    ));
                    None
                }
            });
        let wait = t.wait.as_ref().and_then(|w| {
            let topic = &w.value.topic;
            if let Err(e) = check_topic(&topic.value) {
                problems.push(Problem::at(
                    topic,
                    format!("task `{}`: wait: {e}", t.id.value),
                    "bad topic",
                ));
                return None;
            }
            let limit = match &w.value.timeout {
                None => DEFAULT_WAIT,
                Some(d) => {
                    let d = duration(d, &mut problems)?;
                    if d.is_zero() || d > MAX_WAIT {
                        problems.push(Problem::at(
                            w.value.timeout.as_ref().expect("given"),
                            format!(
                                "task `{}`: wait timeout {} is out of range: allowed 1ms..={}",
                                t.id.value,
                                humantime::format_duration(d),
                                humantime::format_duration(MAX_WAIT)
                            ),
                            "out of range",
                        ));
                        return None;
                    }
                    d
                }
            };
            Some((std::sync::Arc::from(topic.value.as_str()), limit))
        });
        if (t.publish.is_some() || t.wait.is_some()) && (t.decide.is_some() || t.team.is_some()) {
            problems.push(Problem::at(
                &t.id,
                format!(
                    "task `{}`: `publish` and `wait` are for tasks asked of one agent, not yet for a decision or a team",
                    t.id.value
                ),
                "messages",
            ));
        }
        if (t.remember || t.recall.is_some()) && (t.decide.is_some() || t.team.is_some()) {
            problems.push(Problem::at(
                &t.id,
                format!(
                    "task `{}`: `remember` and `recall` are for tasks asked of one agent, not yet for a decision or a team",
                    t.id.value
                ),
                "memory",
            ));
        }
        nodes.push(Node {
            needs: needs.clone(),
            continue_on_failure: t.continue_on_failure,
        });
        tasks.push(TaskDef {
            id: t.id.value.clone(),
            runs_on: match (&t.agent, &t.role) {
                _ if t.team.is_some() => "team".to_owned(),
                (Some(pool), _) => pool.value.clone(),
                (None, Some(role)) => role.value.clone(),
                (None, None) if !t.capabilities.is_empty() => t.capabilities.join("+"),
                (None, None) => "any".to_owned(),
            },
            requirement,
            needs,
            input: t.input.as_ref().map(|i| i.value.clone()),
            prompt: t.prompt.as_ref().map(|p| p.value.clone()),
            priority: Priority::new(priority.min(9)).unwrap_or_default(),
            timeout,
            max_attempts: retries.min(100) + 1,
            continue_on_failure: t.continue_on_failure,
            expect,
            decide,
            spread: t
                .decide
                .as_ref()
                .and_then(|d| d.value.spread.as_ref())
                .is_some_and(|s| s.value),
            team,
            remember: t.remember,
            recall,
            publish,
            wait,
        });
    }
    if file.tasks.is_empty() && purpose != Purpose::Pools {
        problems.push(Problem::at(
            &file.name,
            "the workflow has no tasks (a file of pools alone is for `colony serve --pools`, which checks it)",
            "no tasks",
        ));
    }
    if file.tasks.len() > crate::MAX_TASKS {
        problems.push(Problem::at(
            &file.name,
            format!(
                "the workflow has {} tasks: at most {} are allowed",
                file.tasks.len(),
                crate::MAX_TASKS
            ),
            "too many tasks",
        ));
    }
    if file.agents.is_empty() {
        problems.push(Problem::at(
            &file.name,
            "the workflow has no agents",
            "no agents",
        ));
    }
    let graph = match Graph::new(nodes) {
        Ok(g) => Some(g),
        Err(dag::Error::Cycle(cycle)) => {
            let names: Vec<&str> = cycle
                .iter()
                .map(|&i| file.tasks[i].id.value.as_str())
                .collect();
            let first = &file.tasks[cycle[0]].id;
            problems.push(Problem::at(
                first,
                format!(
                    "the tasks' needs form a cycle: {} -> {}",
                    names.join(" -> "),
                    names[0]
                ),
                "in a cycle",
            ));
            None
        }
        Err(dag::Error::SelfNeed(i)) => {
            let t = &file.tasks[i];
            let at = t
                .needs
                .iter()
                .find(|n| n.value == t.id.value)
                .unwrap_or(&t.id);
            problems.push(Problem::at(
                at,
                format!("task `{}` needs itself", t.id.value),
                "itself",
            ));
            None
        }
        // Unknown needs were reported above and left out of the graph.
        Err(_) => None,
    };
    // YAML gives lines and columns: the section needs no text to place its problems.
    let runtime = RuntimeSettings::default()
        .layer(&file.runtime, "")
        .unwrap_or_else(|more| {
            problems.extend(more);
            RuntimeSettings::default()
        });
    let memory = check_memory(file.memory.as_ref(), base, &mut problems);
    let webhooks = check_webhooks(&file.webhooks, &mut problems);
    let written = crate::runtime::written(&file.runtime)
        .into_iter()
        .filter_map(|(key, at)| Some((key, at.position("")?)))
        .collect();
    match graph {
        Some(graph) if problems.is_empty() => Ok(Workflow {
            name: file.name.value.clone(),
            output: file
                .output
                .map(|o| base.join(o))
                .unwrap_or_else(|| base.join("colony-out").join(&file.name.value)),
            pools,
            tasks,
            graph,
            runtime,
            written,
            memory,
            webhooks,
        }),
        _ => Err(problems),
    }
}

/// A pool's `estimate:`, checked; without one, a `sim` pool's latency and no cost.
fn estimate(
    p: &crate::file::Pool,
    backend: Option<&Backend>,
    duration: &ParseDuration,
    problems: &mut Vec<Problem>,
) -> crate::plan::Estimate {
    let mut estimate = crate::plan::Estimate::default();
    match backend {
        Some(Backend::Sim(sim)) => {
            estimate.duration = Some(crate::plan::typical(&sim.latency));
            estimate.cost_usd = Some(0.0);
        }
        Some(Backend::Command(c)) => {
            if let Some(cli) = &c.cli {
                let (duration, cost) = cli.preset.typical();
                estimate.duration = Some(duration);
                estimate.cost_usd = Some(cost);
            }
        }
        _ => {}
    }
    let Some(e) = &p.estimate else {
        return estimate;
    };
    if let Some(d) = &e.duration
        && let Some(d) = duration(d, problems)
    {
        estimate.duration = Some(d);
    }
    if let Some(c) = &e.cost_usd {
        if c.value.is_finite() && (0.0..=1e6).contains(&c.value) {
            estimate.cost_usd = Some(c.value);
        } else {
            problems.push(Problem::at(
                c,
                format!(
                    "pool `{}`: estimate cost-usd {} is out of range: allowed 0 to 1000000",
                    p.name.value, c.value
                ),
                "out of range",
            ));
        }
    }
    estimate
}

/// The `webhooks:` list, checked: http(s) URLs, a variable's name for the secret, known
/// kinds, limits in range.
fn check_webhooks(
    file: &[crate::file::WebhookFile],
    problems: &mut Vec<Problem>,
) -> Vec<crate::webhooks::Webhook> {
    use crate::webhooks::{self as w, Kind, Webhook};
    if let Some(extra) = file.get(w::MAX_WEBHOOKS) {
        problems.push(Problem::at(
            &extra.url,
            format!(
                "webhooks: {} of them: allowed up to {}",
                file.len(),
                w::MAX_WEBHOOKS
            ),
            "too many",
        ));
    }
    let duration = |d: &Spanned<String>, max: Duration, problems: &mut Vec<Problem>| {
        match crate::runtime::parse_duration(&d.value, false) {
            Ok(v) if v <= max => Some(v),
            Ok(v) => {
                problems.push(Problem::at(
                    d,
                    format!(
                        "webhook: {} is too long: allowed up to {}",
                        humantime::format_duration(v),
                        humantime::format_duration(max)
                    ),
                    "too long",
                ));
                None
            }
            Err((message, label)) => {
                problems.push(Problem::at(d, format!("webhook: {message}"), label));
                None
            }
        }
    };
    let mut out = Vec::new();
    for f in file.iter().take(w::MAX_WEBHOOKS) {
        let url = &f.url;
        // The rest is checked too: every problem of the block at once.
        let url_ok = match Webhook::check_url(&url.value) {
            Ok(()) => true,
            Err(why) => {
                problems.push(Problem::at(
                    url,
                    format!("webhook: {why}"),
                    "not an http(s) URL",
                ));
                false
            }
        };
        let mut webhook = Webhook::new(url.value.clone());
        if let Some(var) = &f.secret_env {
            match Webhook::check_variable(&var.value) {
                Ok(()) => webhook.secret_env = Some(var.value.clone()),
                Err(why) => {
                    problems.push(Problem::at(var, format!("webhook: {why}"), "not a name"));
                }
            }
        }
        if let Some(events) = &f.events {
            let mut kinds = Vec::new();
            for e in events {
                match Kind::parse(&e.value) {
                    Some(k) => kinds.push(k),
                    None => problems.push(Problem::at(
                        e,
                        format!(
                            "webhook: no event is called `{}`: there are {}",
                            colony_core::text::shorten(&e.value, 40),
                            Kind::ALL.map(Kind::as_str).join(", ")
                        ),
                        "unknown event",
                    )),
                }
            }
            if events.is_empty() {
                problems.push(Problem::at(
                    url,
                    "webhook: `events` is empty: name the events to post, or leave it out for the default",
                    "no events",
                ));
            }
            webhook = webhook.with_events(kinds);
        }
        if let Some(t) = &f.timeout
            && let Some(t) = duration(t, w::MAX_TIMEOUT, problems)
        {
            webhook.timeout = t;
        }
        if let Some(d) = &f.drain
            && let Some(d) = duration(d, w::MAX_DRAIN, problems)
        {
            webhook.drain = d;
        }
        let mut count = |n: &Spanned<u32>, max: u32, key: &str| {
            if (1..=max).contains(&n.value) {
                Some(n.value)
            } else {
                problems.push(Problem::at(
                    n,
                    format!(
                        "webhook: {key} {} is out of range: allowed 1..={max}",
                        n.value
                    ),
                    "out of range",
                ));
                None
            }
        };
        if let Some(n) = f
            .attempts
            .as_ref()
            .and_then(|n| count(n, w::MAX_ATTEMPTS, "attempts"))
        {
            webhook.attempts = n;
        }
        if let Some(n) = f
            .queue
            .as_ref()
            .and_then(|n| count(n, w::MAX_QUEUE, "queue"))
        {
            webhook.queue = n;
        }
        if url_ok {
            out.push(webhook);
        }
    }
    out
}

/// The `memory:` section, checked: one place, a number of stores, an endpoint.
fn check_memory(
    file: Option<&crate::file::MemoryFile>,
    base: &std::path::Path,
    problems: &mut Vec<Problem>,
) -> crate::MemorySettings {
    let mut settings = crate::MemorySettings {
        shards: 1,
        ..Default::default()
    };
    let Some(file) = file else {
        return settings;
    };
    match (&file.db, &file.chroma) {
        (Some(db), Some(_)) => problems.push(Problem::at(
            db,
            "memory: `db` and `chroma` both say where the memory is: give one",
            "one of two",
        )),
        (Some(db), None) if db.value.trim().is_empty() => {
            problems.push(Problem::at(db, "memory: an empty `db` path", "empty"));
        }
        (Some(db), None) if colony_cluster::journal::in_nats(&db.value) => {
            match colony_cluster::memory::MemoryOptions::parse(&db.value, "memory: db") {
                Ok(options) => settings.nats = Some(options),
                Err(e) => problems.push(Problem::at(db, e.to_string(), "bad location")),
            }
            if let Some(n) = file.shards.as_ref().filter(|n| n.value != 1) {
                problems.push(Problem::at(
                    n,
                    format!(
                        "memory: a memory in NATS is one stream, replicated by its servers: it is not spread over {} stores",
                        n.value
                    ),
                    "one stream",
                ));
            }
        }
        (Some(db), None) => {
            settings.place = Some(colony_memory::Place::File(base.join(&db.value)));
        }
        (None, Some(url)) => match colony_memory::ChromaOptions::from_url(&url.value) {
            Ok(options) => settings.place = Some(colony_memory::Place::Chroma(options)),
            Err(e) => problems.push(Problem::at(url, format!("memory: chroma {e}"), "bad URL")),
        },
        (None, None) => {}
    }
    if let Some(n) = &file.shards {
        if (1..=colony_memory::MAX_SHARDS as u32).contains(&n.value) {
            settings.shards = n.value as usize;
        } else {
            problems.push(Problem::at(
                n,
                format!(
                    "memory: shards {} is out of range: allowed 1..={}",
                    n.value,
                    colony_memory::MAX_SHARDS
                ),
                "out of range",
            ));
        }
    }
    if let Some(e) = &file.embedder {
        let base_url = match &e.base_url {
            Some(u) => {
                if !(u.value.starts_with("http://") || u.value.starts_with("https://")) {
                    problems.push(Problem::at(
                        u,
                        "memory: the embedder's base-url must be an http(s) URL",
                        "not http(s)",
                    ));
                }
                u.value.clone()
            }
            None => std::env::var("OPENAI_BASE_URL")
                .unwrap_or_else(|_| "https://api.openai.com/v1".to_owned()),
        };
        if e.model.value.trim().is_empty() {
            problems.push(Problem::at(
                &e.model,
                "memory: the embedder needs a model",
                "empty",
            ));
        }
        let dimension = e.dimension.value as usize;
        if !(1..=colony_memory::MAX_DIMENSION).contains(&dimension) {
            problems.push(Problem::at(
                &e.dimension,
                format!(
                    "memory: the embedder's dimension {dimension} is out of range: allowed 1..={}",
                    colony_memory::MAX_DIMENSION
                ),
                "out of range",
            ));
        }
        settings.embedder = Some(crate::EmbedderSettings {
            base_url,
            model: e.model.value.clone(),
            api_key_env: e.api_key_env.as_ref().map(|v| v.value.clone()),
            dimension,
        });
    }
    settings
}

/// Most agents a pool may have, by `count` or by scaling.
const MAX_COUNT: u32 = 1_000_000;

/// A pool's count must lie in 1..=[`MAX_COUNT`]; with scaling, within its `min` and `max`,
/// and 0 only when `min` is 0. `scaling` is `Some(None)` when it is written but refused
/// (and reported): then only [`MAX_COUNT`], which holds whatever it meant, is checked.
fn check_count(
    count: &Spanned<u32>,
    scaling: Option<&Option<ScalingOptions>>,
    problems: &mut Vec<Problem>,
) {
    let n = count.value;
    let zero = if n == 0 {
        " (count 0 needs `scaling: { min: 0 }`)"
    } else {
        ""
    };
    let message = match scaling {
        None if !(1..=MAX_COUNT).contains(&n) => {
            format!("count {n} is out of range: allowed 1..={MAX_COUNT}{zero}")
        }
        Some(Some(o)) if !(o.min..=o.max).contains(&n) => format!(
            "count {n} is out of range: allowed {}..={}, the pool's scaling min..=max{}",
            o.min,
            o.max,
            if o.min > 0 { zero } else { "" }
        ),
        Some(None) if n > MAX_COUNT => {
            format!("count {n} is out of range: allowed up to {MAX_COUNT}")
        }
        _ => return,
    };
    problems.push(Problem::at(count, message, "out of range"));
}

/// The pool's [`ScalingOptions`]: the defaults with what `scaling` says, validated; `None`,
/// with the problems recorded, when they are refused. A problem points at the key that is
/// wrong when it is written, else at the `scaling` section.
fn scaling_options(
    pool: &file::Pool,
    scaling: &Spanned<file::Scaling>,
    problems: &mut Vec<Problem>,
    duration: &ParseDuration,
) -> Option<ScalingOptions> {
    let s = &scaling.value;
    let name = &pool.name.value;
    let before = problems.len();
    let mut o = ScalingOptions::default();
    let value = |v: &Option<Spanned<f64>>, default: f64| v.as_ref().map_or(default, |v| v.value);
    let wait = |v: &Option<Spanned<String>>, default: Duration, problems: &mut Vec<Problem>| {
        v.as_ref()
            .map_or(Some(default), |v| duration(v, problems))
            .unwrap_or(default)
    };
    let policy = |p: &Option<file::ScalingPolicy>, preset: Policy, problems: &mut Vec<Problem>| {
        let Some(p) = p else { return preset };
        Policy {
            factor: value(&p.factor, preset.factor),
            max_scale: value(&p.max_scale, preset.max_scale),
            min_scale: value(&p.min_scale, preset.min_scale),
            cooldown: wait(&p.cooldown, preset.cooldown, problems),
        }
    };
    if let Some(min) = &s.min {
        o.min = min.value;
    }
    if let Some(max) = &s.max {
        o.max = max.value;
        if max.value > MAX_COUNT {
            problems.push(Problem::at(
                max,
                format!(
                    "pool `{name}`: scaling max {} is out of range: allowed 1..={MAX_COUNT}, as count",
                    max.value
                ),
                "out of range",
            ));
        }
    }
    o.high_utilisation = value(&s.high_utilisation, o.high_utilisation);
    o.low_utilisation = value(&s.low_utilisation, o.low_utilisation);
    o.max_forecast_error = value(&s.max_forecast_error, o.max_forecast_error);
    o.overload_wait = wait(&s.overload_wait, o.overload_wait, problems);
    o.idle_after = wait(&s.idle_after, o.idle_after, problems);
    o.reactive = policy(&s.reactive, Policy::REACTIVE, problems);
    o.cost = policy(&s.cost, Policy::COST, problems);
    o.emergency = policy(&s.emergency, Policy::EMERGENCY, problems);
    let predictive = policy(&s.predictive_policy, Policy::PREDICTIVE, problems);
    o.predictive = match &s.predictive {
        Some(off) if !off.value => {
            if s.predictive_policy.is_some() {
                problems.push(Problem::at(
                    off,
                    format!(
                        "pool `{name}`: `predictive: false` turns the predictive policy off, \
                         and `predictive-policy` sets its steps: remove one"
                    ),
                    "off and set",
                ));
            }
            None
        }
        _ => Some(predictive),
    };
    if problems.len() > before {
        return None;
    }
    let Err(e) = o.validate() else {
        return Some(o);
    };
    // Where the wrong value is written, if it is.
    let policy_at = |p: &Option<file::ScalingPolicy>, key: &str| {
        let p = p.as_ref()?;
        match key {
            "factor" => p.factor.as_ref().map(|v| v.referenced),
            "max-scale" => p.max_scale.as_ref().map(|v| v.referenced),
            "min-scale" => p.min_scale.as_ref().map(|v| v.referenced),
            _ => None,
        }
    };
    let (at, message) = match &e {
        scaling::Error::Max { .. } => (s.max.as_ref().map(|v| v.referenced), e.to_string()),
        scaling::Error::Min { .. } => (
            s.min.as_ref().or(s.max.as_ref()).map(|v| v.referenced),
            e.to_string(),
        ),
        scaling::Error::Wait { field, .. } => {
            let v = if *field == "idle-after" {
                &s.idle_after
            } else {
                &s.overload_wait
            };
            (v.as_ref().map(|v| v.referenced), e.to_string())
        }
        scaling::Error::Range {
            field,
            got,
            allowed,
        } => {
            let (at, field) = match field.split_once('.') {
                Some(("reactive", key)) => (policy_at(&s.reactive, key), field.to_string()),
                Some(("cost", key)) => (policy_at(&s.cost, key), field.to_string()),
                Some(("emergency", key)) => (policy_at(&s.emergency, key), field.to_string()),
                // The file calls its steps `predictive-policy`.
                Some(("predictive", key)) => (
                    policy_at(&s.predictive_policy, key),
                    format!("predictive-policy.{key}"),
                ),
                _ => (
                    match *field {
                        "high-utilisation" => s.high_utilisation.as_ref(),
                        "low-utilisation" => s.low_utilisation.as_ref(),
                        "max-forecast-error" => s.max_forecast_error.as_ref(),
                        _ => None,
                    }
                    .map(|v| v.referenced),
                    field.to_string(),
                ),
            };
            (
                at,
                format!("scaling {field} {got} is out of range: allowed {allowed}"),
            )
        }
    };
    problems.push(Problem {
        message: format!("pool `{name}`: {message}"),
        at: known(at.unwrap_or(scaling.referenced)),
        label: "out of range".into(),
    });
    None
}

fn sim_options(
    pool: &file::Pool,
    problems: &mut Vec<Problem>,
    duration: &ParseDuration,
) -> Option<SimOptions> {
    let Some(s) = pool.sim.as_ref() else {
        return Some(SimOptions::default());
    };
    let latency = match &s.latency {
        Some(l) => duration(l, problems)?,
        None => Duration::ZERO,
    };
    let options = SimOptions {
        seed: s.seed,
        latency: colony_agents::sim::Latency::Fixed { value: latency },
        error_rate: s.error_rate,
        crash_rate: s.crash_rate,
        hang_rate: s.hang_rate,
        stands_in_for: None,
    };
    match colony_agents::sim::Sim::new(options.clone()) {
        Ok(_) => Some(options),
        Err(e) => {
            problems.push(Problem::at(
                &pool.kind,
                format!("pool `{}`: sim settings: {e}", pool.name.value),
                "sim",
            ));
            None
        }
    }
}

fn command_options(
    p: &file::Pool,
    c: Option<&file::Command>,
    preset: Option<&Spanned<colony_agents::presets::Preset>>,
    base: &std::path::Path,
    purpose: Purpose,
    problems: &mut Vec<Problem>,
) -> Option<CommandOptions> {
    let none = file::Command::default();
    let c = c.unwrap_or(&none);
    let required = purpose.programs_here();
    // Not found, the program is reported and the other settings are still checked.
    let program = match (&c.program, preset) {
        (Some(program), _) => find_program(program, base, required, problems),
        (None, Some(preset)) => {
            let name = Spanned::new(
                preset.value.program().to_owned(),
                preset.referenced,
                preset.defined,
            );
            find_program(&name, base, required, problems)
        }
        (None, None) => {
            problems.push(Problem::at(
                &p.kind,
                "the `command:` section needs `program:` (or the pool a `preset:`)",
                "no program",
            ));
            None
        }
    };
    let cli = match preset {
        Some(preset) => Some(cli_settings(p, c, preset, problems)),
        None => {
            cli_only(c, problems);
            None
        }
    };
    // Arguments are filled per attempt from the attempt itself; outputs of other tasks reach
    // a command through its task's input.
    for arg in &c.args {
        if arg.value.contains('\0') {
            problems.push(Problem::at(
                arg,
                "the argument holds a NUL byte, which no program's argument can hold",
                "NUL byte",
            ));
        }
        match template::parse(&arg.value) {
            Err(e) => problems.push(Problem::at(arg, e, "bad template")),
            Ok(parts) if parts.iter().any(|p| matches!(p, Part::Output { .. })) => {
                problems.push(Problem::at(
                    arg,
                    "command arguments take {{task}}, {{attempt}}, {{agent}} and {{input.KEY}}: \
                     pass an output through the task's `input`, as `{{input.KEY}}`",
                    "not here",
                ));
            }
            Ok(_) => {}
        }
    }
    let mut options = CommandOptions::new(program.clone().unwrap_or_default());
    options.args = c.args.iter().map(|a| a.value.clone()).collect();
    options.env_allow.extend(c.env.iter().cloned());
    // Relative to the workflow file, like every path in it; made absolute, since the program
    // runs in it and a relative path would then mean something else.
    // Without one, the workflow file's folder (unless the task gets a worktree, where it then
    // runs): relative paths in arguments then mean what they mean everywhere else in the
    // file, wherever colony was started.
    let dir = match &c.workdir {
        Some(w) => Some(base.join(w)),
        None if !c.worktree => Some(base.to_owned()),
        None => None,
    };
    options.workdir = dir.map(|dir| {
        std::path::absolute(&dir)
            .unwrap_or(dir)
            .to_string_lossy()
            .into_owned()
    });
    if let Some(codes) = &c.ok_codes {
        options.ok_codes = codes.clone();
    }
    options.secrets = c.secrets.clone();
    // A limit of 0 would stop every process before it did anything.
    let limit = |field: &str, v: &Option<Spanned<u64>>, max: u64, problems: &mut Vec<Problem>| {
        let v = v.as_ref()?;
        if (1..=max).contains(&v.value) {
            return Some(v.value);
        }
        let allowed = if max == u64::MAX {
            "1 and up".to_owned()
        } else {
            format!("1..={max}")
        };
        problems.push(Problem::at(
            v,
            format!(
                "limits.{field} {} is out of range: allowed {allowed}",
                v.value
            ),
            "out of range",
        ));
        None
    };
    options.limits = colony_agents::command::Limits {
        cpu_seconds: limit("cpu-seconds", &c.limits.cpu_seconds, u64::MAX, problems),
        memory_bytes: limit("memory-mb", &c.limits.memory_mb, u64::MAX >> 20, problems)
            .map(|mb| mb << 20),
        open_files: limit("open-files", &c.limits.open_files, u64::MAX, problems),
        processes: limit("processes", &c.limits.processes, u64::MAX, problems),
    };
    options.allow_option_values = c.allow_option_values;
    if let Some(cli) = cli {
        options = options.with_preset(cli);
        // Asked as the pool will call it: with its environment.
        if required
            && program.is_some()
            && let Some(preset) = preset
        {
            check_version(preset, &options, problems);
        }
    }
    if c.worktree {
        // The root is the run's output folder, known when it runs.
        options.worktree = Some(colony_agents::command::Worktree {
            repository: if base.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                base.to_owned()
            },
            root: PathBuf::new(),
        });
    }
    program.map(|_| options)
}

/// The settings of an `http` pool; what the run would refuse or what would break silently is
/// a problem at the field: a zero, a base URL that is not http(s), a key both named and
/// declared unneeded.
fn http_options(
    p: &file::Pool,
    h: &file::HttpSettings,
    problems: &mut Vec<Problem>,
) -> colony_agents::http::HttpOptions {
    use colony_agents::http::{self, Auth};
    let pool = &p.name.value;
    if let Some(url) = &h.base_url
        && let Err(e) = http::check_base_url(&url.value)
    {
        problems.push(Problem::at(
            url,
            format!("pool `{pool}`: base-url {e}"),
            "not an http(s) URL",
        ));
    }
    // Absent from the file, the endpoint comes from the environment, checked when the pool
    // is built (`Http::new`), like the key.
    let base = h.base_url.as_ref().map_or_else(
        || {
            std::env::var("OPENAI_BASE_URL")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "https://api.openai.com/v1".into())
        },
        |u| u.value.clone(),
    );
    let mut o = http::HttpOptions::new(base, h.model.value.clone());
    if let Some(env) = &h.api_key_env
        && !is_variable_name(&env.value)
    {
        problems.push(Problem::at(
            env,
            format!(
                "pool `{pool}`: api-key-env `{}` is not a variable name: use letters, digits and `_`",
                env.value.escape_debug()
            ),
            "not a variable",
        ));
    }
    o.auth = match (h.auth.as_ref().map(|a| a.value), &h.api_key_env) {
        (Some(file::HttpAuth::None), Some(env)) => {
            problems.push(Problem::at(
                env,
                format!(
                    "pool `{pool}` names a key in api-key-env `{}` and says `auth: none`: remove one",
                    env.value
                ),
                "key and no key",
            ));
            Auth::None
        }
        (Some(file::HttpAuth::None), None) => Auth::None,
        (_, env) => Auth::Bearer {
            key_env: env
                .as_ref()
                .map_or_else(|| http::DEFAULT_KEY_ENV.into(), |e| e.value.clone()),
        },
    };
    let at_least_one = |field: &str, v: &Option<Spanned<u32>>, problems: &mut Vec<Problem>| {
        if let Some(v) = v
            && v.value == 0
        {
            problems.push(Problem::at(
                v,
                format!("pool `{pool}`: {field} 0 is out of range: allowed 1 and up"),
                "zero",
            ));
        }
    };
    at_least_one("max-tokens", &h.max_tokens, problems);
    at_least_one("requests-per-minute", &h.requests_per_minute, problems);
    o.max_tokens = h.max_tokens.as_ref().map(|v| v.value);
    o.requests_per_minute = h.requests_per_minute.as_ref().map(|v| v.value);
    // A NaN or a negative number would make the cost, the budget or the request meaningless.
    let amount = |field: &str, v: Option<&Spanned<f64>>, problems: &mut Vec<Problem>| {
        let v = v?;
        if v.value.is_finite() && v.value >= 0.0 {
            return Some(v.value);
        }
        problems.push(Problem::at(
            v,
            format!(
                "pool `{pool}`: {field} {} is out of range: allowed numbers of 0 or more",
                v.value
            ),
            "out of range",
        ));
        None
    };
    o.temperature = amount("temperature", h.temperature.as_ref(), problems);
    o.budget_usd = amount("budget-usd", h.budget_usd.as_ref(), problems);
    if let Some(p) = &h.price {
        o.price = http::Price {
            input_per_million: amount("price.input", Some(&p.input), problems).unwrap_or(0.0),
            output_per_million: amount("price.output", Some(&p.output), problems).unwrap_or(0.0),
        };
    }
    if h.model.value.trim().is_empty() {
        problems.push(Problem::at(
            &h.model,
            format!("pool `{pool}` names no model"),
            "no model",
        ));
    }
    o
}

/// Whether `name` can name an environment variable.
fn is_variable_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The program a pool runs, found: a path relative to the workflow file, or a name on PATH.
/// The settings of a preset pool: `max-turns` only where the CLI takes it, `price` only where
/// it reports no cost of its own, numbers in range.
fn cli_settings(
    p: &file::Pool,
    c: &file::Command,
    preset: &Spanned<colony_agents::presets::Preset>,
    problems: &mut Vec<Problem>,
) -> colony_agents::presets::CliSettings {
    let pool = &p.name.value;
    let name = preset.value.name();
    let mut cli = colony_agents::presets::CliSettings::new(preset.value);
    if let Some(model) = &c.model {
        if model.value.is_empty() || model.value.starts_with('-') || model.value.contains('\0') {
            problems.push(Problem::at(
                model,
                format!(
                    "pool `{pool}`: model {:?} is not a model's name",
                    model.value
                ),
                "bad model",
            ));
        }
        cli.model = Some(model.value.clone());
    }
    if let Some(turns) = &c.max_turns {
        if !preset.value.takes_max_turns() {
            problems.push(Problem::at(
                turns,
                format!("pool `{pool}`: the {name} CLI takes no limit on its turns"),
                "not for this CLI",
            ));
        } else if !(1..=10_000).contains(&turns.value) {
            problems.push(Problem::at(
                turns,
                format!(
                    "pool `{pool}`: max-turns {} is out of range: allowed 1 to 10000",
                    turns.value
                ),
                "out of range",
            ));
        }
        cli.max_turns = Some(turns.value);
    }
    if let Some(price) = &c.price {
        if preset.value.reports_cost() {
            problems.push(Problem::at(
                &price.input,
                format!(
                    "pool `{pool}`: the {name} CLI reports its own cost; `price` is for codex \
                     and gemini, which report tokens only"
                ),
                "reports its cost",
            ));
        }
        for (what, v) in [("input", &price.input), ("output", &price.output)] {
            if !(v.value.is_finite() && (0.0..=1e6).contains(&v.value)) {
                problems.push(Problem::at(
                    v,
                    format!(
                        "pool `{pool}`: price.{what} {} is out of range: allowed 0 to 1000000 \
                         dollars per million tokens",
                        v.value
                    ),
                    "out of range",
                ));
            }
        }
        cli.price = colony_agents::http::Price {
            input_per_million: price.input.value,
            output_per_million: price.output.value,
        };
    }
    if let Some(budget) = &c.budget_usd {
        if !preset.value.reports_cost() && c.price.is_none() {
            problems.push(Problem::at(
                budget,
                format!(
                    "pool `{pool}`: the {name} CLI reports tokens, not dollars: a budget needs \
                     the pool's `price` (dollars per million tokens) to count against"
                ),
                "needs a price",
            ));
        }
        if !(budget.value.is_finite() && budget.value > 0.0 && budget.value <= 1e9) {
            problems.push(Problem::at(
                budget,
                format!(
                    "pool `{pool}`: budget-usd {} is out of range: allowed above 0, up to 1e9",
                    budget.value
                ),
                "out of range",
            ));
        }
        cli.budget_usd = Some(budget.value);
    }
    if let Some(retries) = &c.rate_limit_retries {
        if retries.value > 20 {
            problems.push(Problem::at(
                retries,
                format!(
                    "pool `{pool}`: rate-limit-retries {} is out of range: allowed 0 to 20",
                    retries.value
                ),
                "out of range",
            ));
        }
        cli.max_retries = retries.value;
    }
    cli
}

/// A command pool without a preset may not set what only a preset reads.
fn cli_only(c: &file::Command, problems: &mut Vec<Problem>) {
    let set = [
        ("model", c.model.as_ref().map(|v| v.referenced)),
        ("max-turns", c.max_turns.as_ref().map(|v| v.referenced)),
        ("price", c.price.as_ref().map(|v| v.input.referenced)),
        ("budget-usd", c.budget_usd.as_ref().map(|v| v.referenced)),
        (
            "rate-limit-retries",
            c.rate_limit_retries.as_ref().map(|v| v.referenced),
        ),
    ];
    for (key, at) in set {
        if let Some(at) = at {
            problems.push(Problem {
                at: known(at),
                label: "needs a preset".into(),
                message: format!(
                    "`{key}` is read by a preset's CLI: give the pool a `preset:` (claude, \
                     codex, gemini, aider, opencode)"
                ),
            });
        }
    }
}

/// Runs `<program> --version` and refuses a CLI older than its preset reads, or one that does
/// not answer with a version.
fn check_version(
    preset: &Spanned<colony_agents::presets::Preset>,
    options: &CommandOptions,
    problems: &mut Vec<Problem>,
) {
    use colony_agents::presets::parse_version;
    let program = &options.program;
    let name = preset.value.name();
    let (major, minor, patch) = preset.value.min_version();
    let answer = match colony_agents::command::version_of(options) {
        Ok(answer) => answer,
        Err(e) => {
            problems.push(Problem::at(
                preset,
                format!("`{program} --version` {e}: colony cannot tell which {name} CLI this is"),
                "no version",
            ));
            return;
        }
    };
    match parse_version(&answer) {
        None => problems.push(Problem::at(
            preset,
            format!(
                "`{program} --version` printed no version ({:?})",
                answer.chars().take(80).collect::<String>()
            ),
            "no version",
        )),
        Some(v) if v < (major, minor, patch) => problems.push(Problem::at(
            preset,
            format!(
                "`{program}` is version {}.{}.{}: the {name} preset reads the output of \
                 {major}.{minor}.{patch} and later; upgrade it",
                v.0, v.1, v.2
            ),
            "too old",
        )),
        Some(_) => {}
    }
}

fn find_program(
    program: &Spanned<String>,
    base: &std::path::Path,
    required: bool,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let name = &program.value;
    let found = if name.contains('/') {
        let path = base.join(name);
        // Absolute: the program may run in another working directory.
        path.is_file().then(|| {
            std::path::absolute(&path)
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned()
        })
    } else {
        colony_agents::command::on_path(name)
    };
    if found.is_none() {
        if !required {
            // A stand-in runs instead; the name is kept for what is shown.
            return Some(name.clone());
        }
        problems.push(Problem::at(
            program,
            format!("program `{name}` is not found (looked on PATH, or relative to the workflow file for a path)"),
            "not found",
        ));
    }
    found
}

fn requirement(
    t: &file::Task,
    pools: &[PoolDef],
    pool_index: &HashMap<&str, usize>,
    problems: &mut Vec<Problem>,
) -> Requirement {
    let mut requirement = Requirement {
        hard: t.hard,
        ..Requirement::default()
    };
    if let Some(agent) = &t.agent {
        match pool_index.get(agent.value.as_str()) {
            Some(&i) => requirement.role = Some(pools[i].spec.role.clone()),
            None => problems.push(Problem::at(
                agent,
                format!(
                    "task `{}` asks for agent pool `{}`, which this workflow does not define{}",
                    t.id.value,
                    agent.value,
                    suggest(&agent.value, pool_index.keys().copied())
                ),
                "unknown pool",
            )),
        }
    }
    if let Some(role) = &t.role {
        requirement.role = Some(Arc::from(role.value.as_str()));
    }
    requirement.capabilities = t
        .capabilities
        .iter()
        .map(|c| Arc::from(c.as_str()))
        .collect();
    if !pools.is_empty() && !pools.iter().any(|p| p.spec.satisfies(&requirement)) {
        problems.push(Problem::at(
            t.role.as_ref().unwrap_or(&t.id),
            format!(
                "no agent pool can run task `{}`: none has role {:?} and capabilities {:?}",
                t.id.value,
                requirement.role.as_deref().unwrap_or("(any)"),
                t.capabilities
            ),
            "no pool for it",
        ));
    }
    requirement
}

fn checks(e: &file::Expect, base: &std::path::Path, problems: &mut Vec<Problem>) -> Checks {
    let regex = e
        .regex
        .as_ref()
        .and_then(|r| match regex::Regex::new(&r.value) {
            Ok(re) => Some(re),
            Err(err) => {
                problems.push(Problem::at(
                    r,
                    format!("bad regular expression: {err}"),
                    "bad regex",
                ));
                None
            }
        });
    let schema = e
        .schema
        .as_ref()
        .and_then(|s| match jsonschema::validator_for(&s.value) {
            Ok(v) => Some(Arc::new(v)),
            Err(err) => {
                problems.push(Problem::at(
                    s,
                    format!("bad JSON Schema: {err}"),
                    "bad schema",
                ));
                None
            }
        });
    Checks {
        json: e.json,
        regex,
        contains: e.contains.clone(),
        files: e.files.iter().map(|f| base.join(f)).collect(),
        schema,
        worktree: None,
        before: None,
        started: None,
        output: None,
        git_diff: e.git_diff.then(|| {
            if base.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                base.to_owned()
            }
        }),
    }
}

/// ", did you mean `x`?" for the closest of `known` to `got`, if close.
pub(crate) fn suggest<'a>(got: &str, known: impl Iterator<Item = &'a str>) -> String {
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, &cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    };
    known
        .map(|k| (distance(got, k), k))
        .filter(|(d, k)| *d <= (k.chars().count() / 3).max(1))
        .min()
        .map(|(_, k)| format!(": did you mean `{k}`?"))
        .unwrap_or_default()
}
