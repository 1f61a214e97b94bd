//! A task's `team:` block: checked into a [`Plan`], every problem at its line and column;
//! and, when the task runs, its size read from the task's input, the team asked of the
//! runtime, and its end turned into the task's: the last step's output, checked against
//! `expect`, or a failure that says why.

use crate::{
    Checks, PoolDef,
    check::{Problem, suggest},
    file,
};
use bytes::Bytes;
use colony_core::{
    name::Name,
    task::{Requirement, TaskSpec},
    team::{self, MAX_DEPTH, MAX_MEMBERS, MAX_ROLES, Sizing},
};
use colony_runtime::{
    Handle,
    team::{MAX_STEPS, Role, Step, Team, Teamed},
};
use serde_saphyr::Spanned;
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

/// Most reassignments a team may allow.
pub const MAX_REASSIGN: u32 = 1_000;

/// How many members a team has.
#[derive(Clone, Debug, PartialEq)]
pub enum Size {
    Fixed(u32),
    /// From the number in this field of the task's input.
    From {
        field: String,
        sizing: Sizing,
    },
}

/// A checked `team:` block.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Each role with its count, `None` for the one that takes the rest.
    pub roles: Vec<(Role, Option<u32>)>,
    pub size: Size,
    pub steps: Vec<Step>,
    /// Reassignments allowed; `None`: the team's size.
    pub reassign: Option<u32>,
    pub delegation: u32,
    /// Its members are agents of any node of a cluster (`team: spread`).
    pub spread: bool,
}

impl Plan {
    /// The team for a task whose payload is `payload`: its size resolved, split over roles.
    pub fn team(&self, payload: &[u8]) -> Result<Team, String> {
        let size = match &self.size {
            Size::Fixed(n) => *n,
            Size::From { field, sizing } => {
                let input: serde_json::Value = serde_json::from_slice(payload)
                    .map_err(|e| format!("the team's size comes from input field `{field}`, and the input is not JSON: {e}"))?;
                // The task's input, where `{{input.KEY}}` reads too.
                let input = match input.get("input") {
                    Some(inner @ serde_json::Value::Object(_)) => inner,
                    _ => &input,
                };
                let score = match input.get(field) {
                    Some(serde_json::Value::Number(n)) => n.as_f64(),
                    Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
                    _ => None,
                };
                let score = score.ok_or_else(|| {
                    format!(
                        "the team's size comes from input field `{field}`, which is {}: it must be a number",
                        match input.get(field) {
                            None => "missing".to_owned(),
                            Some(v) => format!("`{v}`"),
                        }
                    )
                })?;
                sizing
                    .size(score)
                    .map_err(|e| format!("input field `{field}`: {e}"))?
            }
        };
        let fixed: Vec<Option<u32>> = self.roles.iter().map(|(_, c)| *c).collect();
        let counts = team::counts(&fixed, size)?;
        Ok(Team {
            roles: self
                .roles
                .iter()
                .zip(counts)
                .map(|((r, _), count)| Role { count, ..r.clone() })
                .collect(),
            steps: self.steps.clone(),
            reassignments: self.reassign.unwrap_or(size),
            delegation: self.delegation,
            spread: self.spread,
        })
    }

    /// Bytes the team may hold while it runs beyond its payload: the outputs of a step's
    /// members, each as large as a payload may be, before they join its context.
    pub(crate) fn held(&self, max_payload: usize) -> usize {
        let most = match &self.size {
            Size::Fixed(n) => *n,
            Size::From { sizing, .. } => sizing.max,
        };
        (most as usize).saturating_mul(max_payload)
    }
}

/// Checks `block`, the `team:` of task `t`; `None` with every problem recorded.
pub(crate) fn check(
    t: &file::Task,
    block: &Spanned<file::Team>,
    pools: &[PoolDef],
    pool_index: &HashMap<&str, usize>,
    agents_here: bool,
    problems: &mut Vec<Problem>,
) -> Option<Plan> {
    let before = problems.len();
    let id = &t.id.value;
    let b = &block.value;
    if t.decide.is_some() {
        problems.push(Problem::at(
            block,
            format!("task `{id}` both decides by vote and works as a team: keep one of `decide` and `team`"),
            "decide and team",
        ));
    }
    if t.agent.is_some() || t.role.is_some() || !t.capabilities.is_empty() || t.hard {
        let message = format!(
            "task `{id}` works as a team, whose roles say which agents take part: move `agent`, `role`, `capabilities` or `hard` into a role"
        );
        problems.push(match t.agent.as_ref().or(t.role.as_ref()) {
            Some(at) => Problem::at(at, message, "agents of a team"),
            None => Problem::at(block, message, "agents of a team"),
        });
    }
    let roles = roles(id, block, pools, pool_index, problems);
    let size = team_size(t, b, &roles, problems);
    // The smallest team the size allows must fit the pools' agents.
    let least = match &size {
        Some(Size::Fixed(n)) => Some(*n),
        Some(Size::From { sizing, .. }) => Some(sizing.min),
        None => None,
    };
    // Not across a cluster, whose nodes form teams of their own agents.
    if let Some(least) = least
        && agents_here
        && problems.len() == before
    {
        capacity(id, b, &roles, least, pools, problems);
    }
    // Steps of one role ask of the same pools: each missing field reported once.
    let at = problems.len();
    for (step, role) in steps_input(b, &roles) {
        crate::payload::fields(t, &role.requirement, step, pools, problems);
    }
    let mut seen = HashSet::new();
    let found = problems.split_off(at);
    problems.extend(found.into_iter().filter(|p| seen.insert(p.message.clone())));
    let steps = steps(id, block, &roles, problems);
    if let Some(r) = &b.reassign
        && r.value > MAX_REASSIGN
    {
        problems.push(Problem::at(
            r,
            format!(
                "task `{id}`: team reassign {} is out of range: allowed 0..={MAX_REASSIGN}",
                r.value
            ),
            "out of range",
        ));
    }
    if let Some(d) = &b.delegation
        && d.value > MAX_DEPTH
    {
        problems.push(Problem::at(
            d,
            format!(
                "task `{id}`: team delegation {} is out of range: allowed 0..={MAX_DEPTH} levels",
                d.value
            ),
            "out of range",
        ));
    }
    if let Some(spread) = b.spread.as_ref().filter(|s| s.value)
        && agents_here
    {
        problems.push(Problem::at(
            spread,
            format!(
                "task `{id}`: team spread takes the members from a cluster's nodes, and this run has one runtime: run it with colony run --nats, or remove it"
            ),
            "spread without a cluster",
        ));
    }
    if problems.len() > before {
        return None;
    }
    Some(Plan {
        roles,
        size: size?,
        steps,
        reassign: b.reassign.as_ref().map(|r| r.value),
        delegation: b.delegation.as_ref().map_or(0, |d| d.value),
        spread: b.spread.as_ref().is_some_and(|s| s.value),
    })
}

fn roles(
    id: &str,
    block: &Spanned<file::Team>,
    pools: &[PoolDef],
    pool_index: &HashMap<&str, usize>,
    problems: &mut Vec<Problem>,
) -> Vec<(Role, Option<u32>)> {
    let b = &block.value;
    if b.roles.is_empty() || b.roles.len() > MAX_ROLES {
        problems.push(Problem::at(
            block,
            format!(
                "task `{id}`: a team has 1..={MAX_ROLES} roles, and this one has {}",
                b.roles.len()
            ),
            "roles",
        ));
    }
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for r in &b.roles {
        let r = &r.value;
        let name = &r.name.value;
        if let Err(e) = Name::parse(name) {
            problems.push(Problem::at(
                &r.name,
                format!("task `{id}`: team role name: {e}"),
                "bad name",
            ));
        }
        if !names.insert(name.as_str()) {
            problems.push(Problem::at(
                &r.name,
                format!("task `{id}`: team role `{name}` is listed twice"),
                "duplicate role",
            ));
        }
        let mut requirement = Requirement {
            role: Some(Arc::from(name.as_str())),
            capabilities: r
                .capabilities
                .iter()
                .map(|c| Arc::from(c.as_str()))
                .collect(),
            ..Requirement::default()
        };
        if let Some(agent) = &r.agent {
            match pool_index.get(agent.value.as_str()) {
                Some(&i) => requirement.role = Some(pools[i].spec.role.clone()),
                None => problems.push(Problem::at(
                    agent,
                    format!(
                        "task `{id}`: team role `{name}` asks for agent pool `{}`, which this workflow does not define{}",
                        agent.value,
                        suggest(&agent.value, pool_index.keys().copied())
                    ),
                    "unknown pool",
                )),
            }
        }
        if let Some(role) = &r.role {
            requirement.role = Some(Arc::from(role.value.as_str()));
        }
        if !pools.is_empty() && !pools.iter().any(|p| p.spec.satisfies(&requirement)) {
            problems.push(Problem::at(
                r.role.as_ref().or(r.agent.as_ref()).unwrap_or(&r.name),
                format!(
                    "task `{id}`: no agent pool can take team role `{name}`: none has role {:?} and capabilities {:?}",
                    requirement.role.as_deref().unwrap_or("(any)"),
                    r.capabilities
                ),
                "no pool for it",
            ));
        }
        if let Some(c) = &r.count
            && (c.value == 0 || c.value > MAX_MEMBERS)
        {
            problems.push(Problem::at(
                c,
                format!("task `{id}`: team role `{name}` count {} is out of range: allowed 1..={MAX_MEMBERS}", c.value),
                "out of range",
            ));
        }
        out.push((
            Role {
                name: Arc::from(name.as_str()),
                requirement,
                count: 0,
            },
            r.count.as_ref().map(|c| c.value),
        ));
    }
    let open: Vec<&Spanned<file::TeamRole>> =
        b.roles.iter().filter(|r| r.value.count.is_none()).collect();
    if open.len() > 1 {
        problems.push(Problem::at(
            &open[1].value.name,
            format!(
                "task `{id}`: team roles `{}` and `{}` both go without a count: at most one may (it takes the members left)",
                open[0].value.name.value, open[1].value.name.value
            ),
            "no count",
        ));
    }
    out
}

/// The team's size, checked against the roles' counts.
fn team_size(
    t: &file::Task,
    b: &file::Team,
    roles: &[(Role, Option<u32>)],
    problems: &mut Vec<Problem>,
) -> Option<Size> {
    let id = &t.id.value;
    let fixed = roles
        .iter()
        .filter_map(|(_, c)| *c)
        .fold(0u32, u32::saturating_add);
    let open = roles.iter().any(|(_, c)| c.is_none());
    match (&b.size, &b.size_from) {
        (Some(s), Some(_)) => {
            problems.push(Problem::at(
                s,
                format!("task `{id}`: a team has `size` or `size-from`, not both"),
                "two sizes",
            ));
            None
        }
        (Some(s), None) => {
            if s.value == 0 || s.value > MAX_MEMBERS {
                problems.push(Problem::at(
                    s,
                    format!(
                        "task `{id}`: team size {} is out of range: allowed 1..={MAX_MEMBERS}",
                        s.value
                    ),
                    "out of range",
                ));
                return None;
            }
            let counts: Vec<Option<u32>> = roles.iter().map(|(_, c)| *c).collect();
            // Two roles without a count are reported with the roles.
            if counts.iter().filter(|c| c.is_none()).count() > 1 {
                return None;
            }
            if let Err(e) = team::counts(&counts, s.value) {
                problems.push(Problem::at(
                    s,
                    format!("task `{id}`: {e}"),
                    "size and counts",
                ));
                return None;
            }
            Some(Size::Fixed(s.value))
        }
        (None, None) => {
            if open {
                problems.push(Problem::at(
                    &t.id,
                    format!("task `{id}`: a team role goes without a count, so the team needs a `size` or `size-from` to give it the members left"),
                    "no size",
                ));
                return None;
            }
            (fixed <= MAX_MEMBERS).then_some(Size::Fixed(fixed)).or_else(|| {
                problems.push(Problem::at(
                    &t.id,
                    format!("task `{id}`: the team's roles count {fixed} members: allowed 1..={MAX_MEMBERS}"),
                    "too many",
                ));
                None
            })
        }
        (None, Some(from)) => size_from(t, from, fixed, open, problems),
    }
}

fn size_from(
    t: &file::Task,
    from: &Spanned<file::SizeFrom>,
    fixed: u32,
    open: bool,
    problems: &mut Vec<Problem>,
) -> Option<Size> {
    let id = &t.id.value;
    let f = &from.value;
    if !open {
        problems.push(Problem::at(
            from,
            format!("task `{id}`: `size-from` sizes the team through a role without a count, and every role has one"),
            "no role to size",
        ));
        return None;
    }
    let least = fixed.saturating_add(1);
    let sizing = Sizing {
        per: f.per.as_ref().map_or(1.0, |p| p.value),
        min: f.min.as_ref().map_or(least, |m| m.value),
        max: f.max.value,
    };
    let before = problems.len();
    if let Err(e) = sizing.validate() {
        let at: &dyn Fn(String) -> Problem = match (&f.per, &f.min) {
            (Some(p), _) if !(p.value.is_finite() && p.value > 0.0) => {
                &|m| Problem::at(p, m, "out of range")
            }
            _ => &|m| Problem::at(&f.max, m, "out of range"),
        };
        problems.push(at(format!("task `{id}`: team size-from: {e}")));
    } else if sizing.min < least {
        problems.push(Problem::at(
            f.min.as_ref().unwrap_or(&f.max),
            format!(
                "task `{id}`: team size-from min {} leaves no member for the role without a count: the other roles take {fixed}",
                sizing.min
            ),
            "too small",
        ));
    }
    let field = &f.field.value;
    if field.is_empty() {
        problems.push(Problem::at(
            &f.field,
            format!("task `{id}`: team size-from field is empty"),
            "no field",
        ));
    }
    // A static input must hold the field as a number; a template is filled only at run time.
    match t.input.as_ref().map(|i| &i.value) {
        Some(serde_json::Value::Object(fields)) => match fields.get(field.as_str()) {
            Some(serde_json::Value::Number(_)) => {}
            Some(serde_json::Value::String(s)) if s.contains("{{") || s.trim().parse::<f64>().is_ok() => {}
            Some(other) => problems.push(Problem::at(
                &f.field,
                format!("task `{id}`: team size-from field `{field}` is `{other}` in the task's input: it must be a number"),
                "not a number",
            )),
            None => problems.push(Problem::at(
                &f.field,
                format!("task `{id}`: team size-from field `{field}` is not in the task's input"),
                "no such field",
            )),
        },
        _ => problems.push(Problem::at(
            &f.field,
            format!("task `{id}`: team size-from reads field `{field}` of the task's input, and its input is not an object"),
            "no input",
        )),
    }
    (problems.len() == before).then(|| Size::From {
        field: field.clone(),
        sizing,
    })
}

/// Each step's input fields with the role taking it, for the payload's checks.
fn steps_input<'a>(
    b: &'a file::Team,
    roles: &'a [(Role, Option<u32>)],
) -> impl Iterator<
    Item = (
        Option<&'a serde_json::Map<String, serde_json::Value>>,
        &'a Role,
    ),
> {
    b.steps.iter().filter_map(move |s| {
        let role = roles.iter().find(|(r, _)| *r.name == *s.value.role.value)?;
        let input = match s.value.input.as_ref().map(|i| &i.value) {
            Some(serde_json::Value::Object(fields)) => Some(fields),
            _ => None,
        };
        Some((input, &role.0))
    })
}

/// Each role's count is at most the agents of the pools that can take it, and so is every
/// group of roles' counts together (each member is a distinct agent, and roles may share
/// pools): Hall's condition, over every group of the at most 16 roles.
fn capacity(
    id: &str,
    b: &file::Team,
    roles: &[(Role, Option<u32>)],
    size: u32,
    pools: &[PoolDef],
    problems: &mut Vec<Problem>,
) {
    let fixed: Vec<Option<u32>> = roles.iter().map(|(_, c)| *c).collect();
    let Ok(counts) = team::counts(&fixed, size) else {
        return;
    };
    if pools.is_empty() || pools.len() > 64 || roles.len() > MAX_ROLES {
        return;
    }
    let agents: Vec<u64> = pools
        .iter()
        .map(|p| u64::from(p.scaling.map_or(p.count, |s| s.max)))
        .collect();
    // Per role, the pools that can take it, one bit each.
    let able: Vec<u64> = roles
        .iter()
        .map(|(role, _)| {
            pools.iter().enumerate().fold(0u64, |m, (i, p)| {
                if p.spec.satisfies(&role.requirement) {
                    m | 1 << i
                } else {
                    m
                }
            })
        })
        .collect();
    let agents_of = |mask: u64| -> u64 {
        (0..pools.len())
            .filter(|i| mask & 1 << i != 0)
            .map(|i| agents[i])
            .sum()
    };
    let before = problems.len();
    for (i, ((role, _), (&count, r))) in roles.iter().zip(counts.iter().zip(&b.roles)).enumerate() {
        let most = agents_of(able[i]);
        if u64::from(count) > most {
            let message = format!(
                "task `{id}`: team role `{}` needs {count} members, and the pools that can take it have {most} agents: each member is a distinct agent",
                role.name
            );
            problems.push(match &r.value.count {
                Some(c) => Problem::at(c, message, "more members than agents"),
                None => Problem::at(&r.value.name, message, "more members than agents"),
            });
        }
    }
    if problems.len() > before {
        return;
    }
    // Groups of two roles or more, the smallest first: the first short one is reported.
    let mut groups: Vec<u32> = (1u32..1 << roles.len())
        .filter(|g| g.count_ones() > 1)
        .collect();
    groups.sort_by_key(|g| (g.count_ones(), *g));
    for g in groups {
        let members = (0..roles.len())
            .filter(|i| g & 1 << i != 0)
            .fold(0u64, |sum, i| sum + u64::from(counts[i]));
        let union = (0..roles.len())
            .filter(|i| g & 1 << i != 0)
            .fold(0u64, |m, i| m | able[i]);
        let most = agents_of(union);
        if members > most {
            let names: Vec<String> = (0..roles.len())
                .filter(|i| g & 1 << i != 0)
                .map(|i| format!("`{}`", roles[i].0.name))
                .collect();
            let last = (0..roles.len()).rfind(|i| g & 1 << i != 0).unwrap_or(0);
            problems.push(Problem::at(
                &b.roles[last].value.name,
                format!(
                    "task `{id}`: team roles {} need {members} members together, and the pools that can take them have {most} agents: each member is a distinct agent",
                    names.join(", ")
                ),
                "more members than agents",
            ));
            return;
        }
    }
}

fn steps(
    id: &str,
    block: &Spanned<file::Team>,
    roles: &[(Role, Option<u32>)],
    problems: &mut Vec<Problem>,
) -> Vec<Step> {
    let b = &block.value;
    if b.steps.is_empty() || b.steps.len() > MAX_STEPS {
        let message = format!(
            "task `{id}`: a team takes 1..={MAX_STEPS} steps, and this one has {}",
            b.steps.len()
        );
        match b.steps.get(MAX_STEPS) {
            Some(s) => problems.push(Problem::at(s, message, "too many steps")),
            None => problems.push(Problem::at(block, message, "no steps")),
        }
    }
    let mut ids = HashSet::new();
    let mut out = Vec::new();
    for s in &b.steps {
        let s = &s.value;
        if let Err(e) = Name::parse(&s.id.value) {
            problems.push(Problem::at(
                &s.id,
                format!("task `{id}`: team step id: {e}"),
                "bad id",
            ));
        }
        if !ids.insert(s.id.value.as_str()) {
            problems.push(Problem::at(
                &s.id,
                format!("task `{id}`: team step `{}` is listed twice", s.id.value),
                "duplicate step",
            ));
        }
        let role = roles.iter().position(|(r, _)| *r.name == *s.role.value);
        if role.is_none() {
            problems.push(Problem::at(
                &s.role,
                format!(
                    "task `{id}`: team step `{}` is asked of role `{}`, which the team does not have{}",
                    s.id.value,
                    s.role.value,
                    suggest(&s.role.value, roles.iter().map(|(r, _)| &*r.name))
                ),
                "unknown role",
            ));
        }
        let input = match &s.input {
            None => None,
            Some(i) => match &i.value {
                serde_json::Value::Object(fields) => Some(fields.clone()),
                _ => {
                    problems.push(Problem::at(
                        i,
                        format!("task `{id}`: team step `{}` input must be a map of fields set over the task's input", s.id.value),
                        "not a map",
                    ));
                    None
                }
            },
        };
        out.push(Step {
            id: Arc::from(s.id.value.as_str()),
            role: role.unwrap_or(0),
            each: s.each,
            input,
        });
    }
    out
}

/// How a team task ended, for the run to record.
#[derive(Debug)]
pub(crate) struct Ended {
    /// The last step's output, checked against the task's `expect`, or why there is none.
    pub(crate) result: Result<Bytes, String>,
    /// The team, when it formed.
    pub(crate) teamed: Option<Arc<Teamed>>,
    /// The agent of the last step's last ask.
    pub(crate) agent: Option<colony_core::AgentId>,
}

/// Forms the team for `spec` by `plan`, runs it (keeping the steps `earlier`, asks of an
/// interrupted run of it, answered), and checks its output against `checks`.
pub(crate) async fn run(
    handle: Handle,
    spec: TaskSpec,
    plan: Plan,
    mut checks: Checks,
    earlier: Vec<colony_runtime::team::EarlierAsk>,
) -> Ended {
    let refused = |why: String| Ended {
        result: Err(why),
        teamed: None,
        agent: None,
    };
    let team = match plan.team(&spec.payload) {
        Ok(team) => team,
        Err(e) => return refused(format!("the team could not be formed: {e}")),
    };
    let started = std::time::SystemTime::now();
    let resuming = !earlier.is_empty();
    let formed = |teamed: Result<Teamed, colony_runtime::Error>| match teamed {
        Ok(teamed) => Ok(Arc::new(teamed)),
        Err(e @ colony_runtime::Error::Team(_)) => {
            Err(refused(format!("the team could not be formed: {e}")))
        }
        Err(e) => Err(refused(format!("the team stopped without an end: {e}"))),
    };
    let mut teamed = match formed(
        handle
            .team_resumed(spec.clone(), team.clone(), earlier)
            .await,
    ) {
        Ok(t) => t,
        Err(ended) => return ended,
    };
    // A step kept from an earlier run wrote its files before this one started: `files`
    // may not ask them to be newer.
    checks.started = (!teamed.steps.iter().any(|s| s.resumed)).then_some(started);
    let mut result = judged(&teamed, checks.clone()).await;
    // Kept whole from an earlier run, its output is the one that run had: if that failed
    // the task's checks, kept again it would fail them for ever. The team works again.
    if resuming && result.is_err() && teamed.succeeded() && teamed.steps.iter().all(|s| s.resumed) {
        let again = std::time::SystemTime::now();
        teamed = match formed(handle.team(spec, team).await) {
            Ok(t) => t,
            Err(ended) => return ended,
        };
        checks.started = Some(again);
        result = judged(&teamed, checks).await;
    }
    let agent = teamed
        .steps
        .last()
        .and_then(|s| s.asks.last())
        .map(|a| a.agent);
    Ended {
        result,
        teamed: Some(teamed),
        agent,
    }
}

/// The team's output once checked against `checks`, or why there is none.
async fn judged(teamed: &Teamed, checks: Checks) -> Result<Bytes, String> {
    match (&teamed.output, &teamed.error) {
        (Some(output), None) if checks.is_empty() => Ok(output.clone()),
        (Some(output), None) => crate::run::verify_awaited(output.clone(), checks)
            .await
            .map_err(|e| format!("the team's output failed its checks: {e}")),
        (_, error) => Err(format!(
            "the team failed: {}",
            error.as_deref().unwrap_or("it ended without an output")
        )),
    }
}

/// About how many bytes `teamed` takes written out: a line per member, step and ask.
pub(crate) fn size(teamed: &Teamed) -> usize {
    let asks: usize = teamed
        .steps
        .iter()
        .map(|s| {
            100 + s
                .asks
                .iter()
                .map(|a| 150 + a.error.as_deref().map_or(0, str::len))
                .sum::<usize>()
        })
        .sum();
    asks + 80 * (teamed.formed.len() + teamed.members.len())
        + teamed
            .reassigned
            .iter()
            .map(|r| 150 + r.why.len())
            .sum::<usize>()
        + teamed.error.as_deref().map_or(0, str::len)
}

#[cfg(test)]
mod tests;
