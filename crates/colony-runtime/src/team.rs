//! Where a team runs: one task carried out by a temporary team of workers formed for it,
//! step by step, each step asked of the member holding its role, with the outputs of the
//! earlier steps as the team's shared context.
//!
//! [`Handle::team`] forms the team inside the dispatcher (`colony_core::team::form`: members
//! by role and availability, under one supervisor when one supervisor's workers cover every
//! role), then runs the steps in order. A step is asked of one member of its role (members
//! of a role take turns from step to step) or, with `each`, of every member of it at once.
//! Each ask is a journaled task pinned to its member (it runs there or nowhere, one attempt),
//! whose payload is the task's own with a `team` field:
//! `{"step", "role", "index", "of", "members": [{"role", "agent"}], "context": {step: output}}`
//! (and `"delegated": {"by", "input"}` for a delegated ask), so an agent reads the task as it
//! would (`{{input.KEY}}` included) and sees what its team did so far. The team's output is
//! its last step's.
//!
//! A member that fails its ask (its task fails, dead-letters, or is cancelled because its
//! worker left the pool) has its role reassigned at once, in the turn its end is heard:
//! `colony_core::team::replace` picks the worker nearest it that can take the role, the
//! member's place in the roster goes to it, and the ask is made again of it. Reassignments
//! are budgeted over the team's life ([`Team::reassignments`]); past the budget, or with no
//! worker left that can take the role, the team fails and says why.
//!
//! With [`Team::delegation`] above 0, a member may hand its ask on: an output that is a JSON
//! object `{"delegate": {"role": R, "input": ...}}` asks a member of role `R` instead, whose
//! output stands for the delegating member's. Delegation is capped
//! (`colony_core::team::Delegation`): never deeper than the team allows, never back to a
//! role already on the chain, never past a number of asks; a refused delegation fails the
//! team with the reason, so a team can never loop.
//!
//! While it runs, messages to the team (`colony_core::mailbox::Address::Team` with its
//! number) reach its members as they are at the time, reassignments included
//! ([`crate::messages`]).
//!
//! The team holds nothing of its members but its tasks: once it ends (or is dropped), its
//! asks still out are cancelled and its members are free.

use crate::{
    Completion, Error, Handle,
    events::{Event, Kinds},
};
use bytes::Bytes;
use colony_core::{
    AgentId, TaskId,
    task::{Requirement, TaskSpec, TaskState},
    team::{self, Delegation, Need, Reassign, Roster},
    tree::SpecMask,
};
use futures::{StreamExt, stream::FuturesUnordered};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::{collections::HashSet, future::Future, pin::Pin, sync::Arc};

/// Most steps a team runs (delegations aside).
pub const MAX_STEPS: usize = 64;

/// Most asks a spread team makes again (each is a cluster task; on one runtime a
/// reassignment needs another worker, which bounds them).
pub const MAX_SPREAD_REASSIGNMENTS: u32 = 1_000;

/// Teams formed by this process, for their numbers.
static TEAMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A role of a team: who may hold it, and how many members hold it.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Role {
    pub name: Arc<str>,
    /// The pools whose workers may hold it.
    pub requirement: Requirement,
    pub count: u32,
}

/// A step of a team's work, asked of its role.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Step {
    pub id: Arc<str>,
    /// Index into [`Team::roles`].
    pub role: usize,
    /// Asked of every member of the role at once (its output is the array of theirs, in
    /// seat order), not of one.
    pub each: bool,
    /// Fields set for this step over the task's input: the payload's `input` object when it
    /// has one, else the payload itself.
    #[serde(default)]
    pub input: Option<Map<String, Value>>,
}

/// What a team is: its roles, its steps, and its limits.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Team {
    pub roles: Vec<Role>,
    pub steps: Vec<Step>,
    /// Members replaced, over the team's life, before a failure fails the team.
    pub reassignments: u32,
    /// Levels a member's ask may be handed on (0: outputs are never read as delegations).
    pub delegation: u32,
    /// A cluster's: its asks are cluster tasks of their roles, run by agents of any node,
    /// and the node that takes the team runs its steps (`colony-cluster`'s `node/spread.rs`).
    /// One runtime refuses it. Absent when false, so that nodes from before read the rest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spread: bool,
}

impl Team {
    /// Refuses what cannot run, naming it.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |why: String| Err(Error::Team(why));
        if self.roles.is_empty() || self.roles.len() > team::MAX_ROLES {
            return invalid(format!(
                "{} roles: allowed 1..={}",
                self.roles.len(),
                team::MAX_ROLES
            ));
        }
        let size = self
            .roles
            .iter()
            .fold(0u32, |sum, r| sum.saturating_add(r.count));
        if self.roles.iter().any(|r| r.count == 0) || size > team::MAX_MEMBERS {
            return invalid(format!(
                "every role needs a member and the team at most {}: got {size}",
                team::MAX_MEMBERS
            ));
        }
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return invalid(format!(
                "{} steps: allowed 1..={MAX_STEPS}",
                self.steps.len()
            ));
        }
        if let Some(s) = self.steps.iter().find(|s| s.role >= self.roles.len()) {
            return invalid(format!(
                "step `{}` names role {}, which is not one",
                s.id, s.role
            ));
        }
        if self.delegation > team::MAX_DEPTH {
            return invalid(format!(
                "delegation {} levels deep: allowed 0..={}",
                self.delegation,
                team::MAX_DEPTH
            ));
        }
        if self.spread && self.reassignments > MAX_SPREAD_REASSIGNMENTS {
            return invalid(format!(
                "a spread team asks again at most {MAX_SPREAD_REASSIGNMENTS} times (each a cluster task), and {} are allowed",
                self.reassignments
            ));
        }
        Ok(())
    }

    /// Asks the team may make: each step once per member it may go to, and as many again
    /// per level of delegation.
    pub fn max_asks(&self) -> u32 {
        let size = self
            .roles
            .iter()
            .fold(0u32, |sum, r| sum.saturating_add(r.count));
        (self.steps.len() as u32)
            .saturating_add(size)
            .saturating_mul(1 + self.delegation)
    }
}

/// Reads a member's `output` as a delegation when `team` allows them
/// (`{"delegate": {"role": R, "input": ...}}`): the index of the role asked and the input.
/// `None` for any other output; `Err` for a delegation that names no role the team has.
pub fn delegation_asked(team: &Team, output: &Bytes) -> Result<Option<(usize, Value)>, String> {
    if team.delegation == 0 || output.first() != Some(&b'{') {
        return Ok(None);
    }
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(output) else {
        return Ok(None);
    };
    let Some(Value::Object(mut asked)) = fields.remove("delegate") else {
        return Ok(None);
    };
    let role = match asked.get("role") {
        Some(Value::String(r)) => r.clone(),
        other => {
            return Err(format!(
                "a member asked to delegate without naming a role (`role`: {other:?})"
            ));
        }
    };
    let Some(to) = team.roles.iter().position(|r| *r.name == *role) else {
        return Err(format!(
            "a member asked to delegate to role `{role}`, which the team does not have"
        ));
    };
    Ok(Some((to, asked.remove("input").unwrap_or(Value::Null))))
}

/// A member of a team, by role.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Member {
    pub role: Arc<str>,
    pub agent: AgentId,
    pub pool: u8,
}

/// One ask of a step: which member, which task, how it ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Ask {
    pub role: Arc<str>,
    pub agent: AgentId,
    pub task: TaskId,
    /// `None` while out, or when cancelled as the team ended.
    pub state: Option<TaskState>,
    pub error: Option<Arc<str>>,
    /// The role whose member handed this ask on, if it was delegated.
    pub delegated_by: Option<Arc<str>>,
}

/// A step as it ran.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepRun {
    pub id: Arc<str>,
    pub role: Arc<str>,
    /// Every ask, in the order made: reassigned and delegated ones too.
    pub asks: Vec<Ask>,
    pub succeeded: bool,
    /// Not asked again: its output is an earlier run's ([`Handle::team_resumed`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
}

/// An ask an earlier run of the same team task made and that succeeded, as the journal
/// holds it: its task and agent, its payload (which says its step, its place in the step
/// and the context it saw) and its output. See [`Handle::team_resumed`].
#[derive(Clone, Debug, PartialEq)]
pub struct EarlierAsk {
    pub task: TaskId,
    pub agent: Option<AgentId>,
    pub payload: Bytes,
    pub output: Bytes,
}

/// An [`EarlierAsk`] read once: what [`Run::earlier_output`] compares.
#[derive(Debug)]
struct Earlier {
    task: TaskId,
    agent: AgentId,
    step: String,
    role: String,
    index: usize,
    of: usize,
    context: Value,
    /// Its payload without its `team` field.
    base: Map<String, Value>,
    output: Bytes,
}

impl Earlier {
    /// `ask` read, or `None` when it is no undelegated ask of a team step.
    fn read(ask: EarlierAsk) -> Option<Self> {
        let Ok(Value::Object(mut base)) = serde_json::from_slice::<Value>(&ask.payload) else {
            return None;
        };
        let Some(Value::Object(mut team)) = base.remove("team") else {
            return None;
        };
        // A delegated ask's answer stands for another member's, whose turns and the team's
        // delegation budget it moved on: its step is asked again rather than pretended.
        if team.contains_key("delegated") {
            return None;
        }
        Some(Self {
            task: ask.task,
            // An answer is kept with who gave it.
            agent: ask.agent?,
            step: team.get("step")?.as_str()?.to_owned(),
            role: team.get("role")?.as_str()?.to_owned(),
            index: usize::try_from(team.get("index")?.as_u64()?).ok()?,
            of: usize::try_from(team.get("of")?.as_u64()?).ok()?,
            context: team.remove("context")?,
            base,
            output: ask.output,
        })
    }
}

/// A role given to another worker after its member failed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reassigned {
    pub step: Arc<str>,
    pub role: Arc<str>,
    pub from: AgentId,
    pub to: AgentId,
    /// How the failed member's ask ended.
    pub why: Arc<str>,
}

/// How a team ended: its members as formed and as they ended, each step's asks, the
/// reassignments, and the output of its last step or why it failed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Teamed {
    /// The team's number in this process, as its events (`Kinds::TEAMS`) carry it.
    pub team: u64,
    /// The supervisor that formed the team.
    pub supervisor: AgentId,
    /// Whether every member was a worker of that supervisor when formed.
    pub together: bool,
    pub formed: Vec<Member>,
    /// The members at the end, after reassignments.
    pub members: Vec<Member>,
    pub steps: Vec<StepRun>,
    pub reassigned: Vec<Reassigned>,
    /// Tasks asked in all.
    pub tasks: u32,
    /// The last step's output, when every step succeeded.
    #[serde(skip)]
    pub output: Option<Bytes>,
    /// Why the team failed.
    pub error: Option<Arc<str>>,
}

impl Teamed {
    pub fn succeeded(&self) -> bool {
        self.error.is_none() && self.output.is_some()
    }
}

impl Handle {
    /// Forms a team for `spec` and runs `team`'s steps (see the module's text). Refused,
    /// with nothing asked, when the team cannot run or cannot be formed (too few workers
    /// for a role). A team that formed and then failed is `Ok`, with its error.
    pub async fn team(&self, spec: TaskSpec, team: Team) -> Result<Teamed, Error> {
        self.team_resumed(spec, team, Vec::new()).await
    }

    /// [`Handle::team`], resuming an earlier run of the same task (a workflow run resumed
    /// after an interruption): a step is not asked again when `earlier` holds its answers,
    /// asked of the same task input and with the same context as this run has reached (the
    /// outputs of the steps before it), the last of each place in the step standing, an
    /// answer that delegates not counting. Steps are kept in order, up to the first one
    /// `earlier` does not answer whole; from it on, every step is asked anew. An answer
    /// made by delegation does not count (its step is asked again). The kept steps are
    /// marked `resumed`, their asks the earlier run's (not counted in [`Teamed::tasks`]).
    pub async fn team_resumed(
        &self,
        spec: TaskSpec,
        team: Team,
        earlier: Vec<EarlierAsk>,
    ) -> Result<Teamed, Error> {
        team.validate()?;
        if team.spread {
            return Err(Error::Team(
                "a spread team takes its members from a cluster's nodes, and this is one runtime: its members are its own workers".into(),
            ));
        }
        let role_specs: Vec<TaskSpec> = team
            .roles
            .iter()
            .map(|r| TaskSpec {
                requirement: r.requirement.clone(),
                max_attempts: 1,
                ..spec.clone()
            })
            .collect();
        let masks = self.admit(&role_specs)?;
        let needs: Vec<Need> = team
            .roles
            .iter()
            .zip(&masks)
            .map(|(r, &mask)| Need {
                mask,
                count: r.count,
            })
            .collect();
        let formation = self
            .observe(move |live| team::form(live.tree, &needs, team::WALK_BOUND))
            .await?
            .map_err(|e| {
                let e = match e {
                    team::Error::Short {
                        role,
                        needed,
                        found,
                    } => format!(
                        "role `{}` needs {needed} members, and {found} workers can take it",
                        team.roles[role].name
                    ),
                    other => other.to_string(),
                };
                Error::Team(e)
            })?;
        let number = TEAMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut run = Run {
            handle: self.clone(),
            number,
            roster: Roster::new(&formation, team.reassignments),
            delegation: Delegation::new(team.delegation, team.max_asks()),
            turns: vec![0; team.roles.len()],
            masks,
            out: HashSet::new(),
            context: Map::new(),
            earlier: earlier.into_iter().filter_map(Earlier::read).collect(),
            resuming: true,
            teamed: Teamed {
                team: number,
                supervisor: formation.supervisor,
                together: formation.together,
                ..Teamed::default()
            },
            spec,
            team,
        };
        run.teamed.formed = run.members();
        run.announce_members();
        self.publish(
            Kinds::TEAMS,
            Event::TeamFormed {
                team: number,
                supervisor: formation.supervisor,
                members: run.teamed.formed.len() as u32,
                together: formation.together,
            },
        );
        let result = run.steps().await;
        run.cancel_out();
        run.teamed.members = run.members();
        match result {
            Ok(output) => run.teamed.output = Some(output),
            Err(Ended::Failed(why)) => run.teamed.error = Some(why),
            Err(Ended::Error(e)) => return Err(e),
        }
        let outcome = if run.teamed.succeeded() {
            "succeeded"
        } else {
            "failed"
        };
        metrics::counter!(crate::metrics::TEAMS, "outcome" => outcome).increment(1);
        self.publish(
            Kinds::TEAMS,
            Event::TeamEnded {
                team: number,
                succeeded: run.teamed.succeeded(),
                tasks: run.teamed.tasks,
                reassigned: run.teamed.reassigned.len() as u32,
                error: run.teamed.error.clone(),
            },
        );
        Ok(std::mem::take(&mut run.teamed))
    }
}

/// Why the steps stopped short.
enum Ended {
    /// The team failed, for this reason.
    Failed(Arc<str>),
    /// The runtime failed (stopped, the journal): not the team's doing.
    Error(Error),
}

impl From<Error> for Ended {
    fn from(e: Error) -> Self {
        Ended::Error(e)
    }
}

/// One piece of a step's work: the member now holding it, and its delegation chain.
struct Slot {
    /// Index of the member in the roster.
    member: usize,
    /// The worker its latest ask went to: the member's, unless the member was replaced since.
    asked: AgentId,
    /// The roles this slot's ask passed through, the step's own first.
    chain: Vec<usize>,
    /// The payload of its latest ask, for an ask again after a reassignment.
    payload: Bytes,
    /// The role that handed it on, for the record.
    delegated_by: Option<Arc<str>>,
    output: Option<Bytes>,
}

type Answer = Pin<Box<dyn Future<Output = (usize, usize, Result<Completion, Error>)> + Send>>;

struct Run {
    handle: Handle,
    /// The team's number, its address for messages.
    number: u64,
    spec: TaskSpec,
    team: Team,
    roster: Roster,
    delegation: Delegation,
    /// Per role, the member whose turn is next for a step asked of one.
    turns: Vec<usize>,
    /// Per role, the pools that may hold it.
    masks: Vec<SpecMask>,
    /// Tasks asked and not yet ended: cancelled if the team ends first.
    out: HashSet<TaskId>,
    context: Map<String, Value>,
    /// What an earlier run of the task answered, for the steps not to ask again.
    earlier: Vec<Earlier>,
    /// No step has been asked yet: the next may still be an earlier run's.
    resuming: bool,
    teamed: Teamed,
}

impl Drop for Run {
    fn drop(&mut self) {
        self.cancel_out();
        // A team dropped midway (its caller stopped waiting) is no address any more.
        self.handle.messages().end_team(self.number);
    }
}

impl Run {
    fn members(&self) -> Vec<Member> {
        self.roster
            .members()
            .iter()
            .map(|m| Member {
                role: self.team.roles[m.role].name.clone(),
                agent: m.agent,
                pool: m.pool,
            })
            .collect()
    }

    /// Messages to the team reach its members as they are now.
    fn announce_members(&self) {
        let members = self.roster.members().iter().map(|m| m.agent).collect();
        self.handle.messages().set_team(self.number, members);
    }

    fn cancel_out(&mut self) {
        for task in self.out.drain() {
            self.handle.cancel_soon(task);
        }
    }

    /// Runs every step in order; the last one's output.
    async fn steps(&mut self) -> Result<Bytes, Ended> {
        let mut last = Bytes::new();
        for s in 0..self.team.steps.len() {
            last = self.step(s).await?;
        }
        Ok(last)
    }

    /// Runs step `s` to its end: its output, or why the team fails.
    async fn step(&mut self, s: usize) -> Result<Bytes, Ended> {
        let step = self.team.steps[s].clone();
        self.delegation
            .step()
            .map_err(|e| Ended::Failed(format!("step `{}`: {e}", step.id).into()))?;
        if self.resuming {
            if let Some((output, asks)) = self.earlier_output(&step) {
                // Turns go on as if it had been asked: later steps go to the same members.
                if !step.each {
                    self.next_of(step.role);
                }
                self.context.insert(step.id.to_string(), as_value(&output));
                self.teamed.steps.push(StepRun {
                    id: step.id.clone(),
                    role: self.team.roles[step.role].name.clone(),
                    asks,
                    succeeded: true,
                    resumed: true,
                });
                return Ok(output);
            }
            self.resuming = false;
            self.earlier = Vec::new();
        }
        self.teamed.steps.push(StepRun {
            id: step.id.clone(),
            role: self.team.roles[step.role].name.clone(),
            asks: Vec::new(),
            succeeded: false,
            resumed: false,
        });
        let members: Vec<usize> = if step.each {
            self.roster.of_role(step.role).map(|(i, _)| i).collect()
        } else {
            vec![self.next_of(step.role)]
        };
        let mut slots: Vec<Slot> = Vec::with_capacity(members.len());
        for (index, &member) in members.iter().enumerate() {
            let payload = self.payload(&step, index, members.len(), step.role, None)?;
            slots.push(Slot {
                member,
                asked: AgentId::default(),
                chain: vec![step.role],
                payload,
                delegated_by: None,
                output: None,
            });
        }
        let mut answers: FuturesUnordered<Answer> = FuturesUnordered::new();
        let all: Vec<usize> = (0..slots.len()).collect();
        self.ask(s, &mut slots, &all, &mut answers).await?;
        while let Some((slot, ask, ended)) = answers.next().await {
            let ended = ended?;
            self.out.remove(&ended.id);
            let record = &mut self.teamed.steps.last_mut().expect("pushed").asks[ask];
            record.state = Some(ended.state);
            record.error = ended.error.clone();
            if ended.state == TaskState::Succeeded {
                let output = ended.output.unwrap_or_default();
                match self.delegated(&output)? {
                    None => slots[slot].output = Some(output),
                    Some((to, input)) => {
                        self.delegate(&step, s, &mut slots, slot, to, input)?;
                        self.ask(s, &mut slots, &[slot], &mut answers).await?;
                    }
                }
                continue;
            }
            let why: Arc<str> = ended
                .error
                .unwrap_or_else(|| format!("its task ended {:?}", ended.state).into());
            self.reassign(&step, &mut slots, slot, why).await?;
            self.ask(s, &mut slots, &[slot], &mut answers).await?;
        }
        let output = if step.each {
            let outputs: Vec<Value> = slots
                .iter()
                .map(|slot| as_value(slot.output.as_ref().expect("every slot answered")))
                .collect();
            Bytes::from(Value::Array(outputs).to_string())
        } else {
            slots[0].output.take().expect("the slot answered")
        };
        self.context.insert(step.id.to_string(), as_value(&output));
        self.teamed.steps.last_mut().expect("pushed").succeeded = true;
        Ok(output)
    }

    /// The member of `role` whose turn it is, turning to the next.
    fn next_of(&mut self, role: usize) -> usize {
        let of_role: Vec<usize> = self.roster.of_role(role).map(|(i, _)| i).collect();
        let i = of_role[self.turns[role] % of_role.len()];
        self.turns[role] += 1;
        i
    }

    /// Step `step`'s output as the earlier run's asks give it (see [`Handle::team_resumed`]),
    /// with the asks that gave it, or `None` when they do not answer it whole.
    fn earlier_output(&self, step: &Step) -> Option<(Bytes, Vec<Ask>)> {
        if self.earlier.is_empty() {
            return None;
        }
        let of = if step.each {
            self.roster.of_role(step.role).count()
        } else {
            1
        };
        let base = self.base_payload(step);
        // The context as a payload carried it: written out and read back, as the journal's
        // copy was.
        let context: Value = serde_json::from_str(&Value::Object(self.context.clone()).to_string())
            .unwrap_or(Value::Null);
        let mut answers: Vec<Option<&Earlier>> = vec![None; of];
        for ask in &self.earlier {
            if ask.step != *step.id || ask.of != of || ask.index >= of {
                continue;
            }
            // Asked with another context (an earlier step answered otherwise), or of another
            // input (what its needs gave changed): not this run's step.
            if ask.context != context || ask.base != base {
                continue;
            }
            // An answer that hands the ask on is not the step's answer.
            if matches!(self.delegated(&ask.output), Ok(Some(_)) | Err(_)) {
                continue;
            }
            answers[ask.index] = Some(ask);
        }
        let answers = answers.into_iter().collect::<Option<Vec<&Earlier>>>()?;
        let output = if step.each {
            Bytes::from(
                Value::Array(answers.iter().map(|a| as_value(&a.output)).collect()).to_string(),
            )
        } else {
            answers[0].output.clone()
        };
        let asks = answers
            .iter()
            .map(|a| Ask {
                role: Arc::from(a.role.as_str()),
                agent: a.agent,
                task: a.task,
                state: Some(TaskState::Succeeded),
                error: None,
                delegated_by: None,
            })
            .collect();
        Some((output, asks))
    }

    /// The payload of an ask of step `step` without its `team` field: the task's, with the
    /// step's input set over it.
    fn base_payload(&self, step: &Step) -> Map<String, Value> {
        step_payload(&self.spec.payload, step)
    }

    /// The payload of an ask of step `step` by a member of `role`, the `index`-th of `of`.
    fn payload(
        &self,
        step: &Step,
        index: usize,
        of: usize,
        role: usize,
        delegated: Option<Value>,
    ) -> Result<Bytes, Ended> {
        let mut payload = self.base_payload(step);
        let members: Vec<Value> = self
            .roster
            .members()
            .iter()
            .map(|m| json!({"role": &*self.team.roles[m.role].name, "agent": m.agent.0}))
            .collect();
        let mut team = json!({
            "step": &*step.id,
            "role": &*self.team.roles[role].name,
            "index": index,
            "of": of,
            "members": members,
            "context": self.context,
        });
        if let Some(d) = delegated {
            team["delegated"] = d;
        }
        payload.insert("team".to_owned(), team);
        Ok(Bytes::from(Value::Object(payload).to_string()))
    }

    /// Reads `output` as a delegation when the team allows them: the role and input asked.
    fn delegated(&self, output: &Bytes) -> Result<Option<(usize, Value)>, Ended> {
        delegation_asked(&self.team, output).map_err(|why| Ended::Failed(why.into()))
    }

    /// Hands slot `slot`'s ask on to a member of `to`, if the cap allows.
    fn delegate(
        &mut self,
        step: &Step,
        s: usize,
        slots: &mut [Slot],
        slot: usize,
        to: usize,
        input: Value,
    ) -> Result<(), Ended> {
        let by = self.team.roles[*slots[slot].chain.last().expect("a chain")]
            .name
            .clone();
        self.delegation
            .delegate(&slots[slot].chain, to)
            .map_err(|e| {
                Ended::Failed(
                    format!(
                        "step `{}`: role `{by}` cannot delegate to `{}`: {e}",
                        self.team.steps[s].id, self.team.roles[to].name
                    )
                    .into(),
                )
            })?;
        let member = self.next_of(to);
        let of = slots.len();
        let payload = self.payload(
            step,
            slot,
            of,
            to,
            Some(json!({"by": &*by, "input": input})),
        )?;
        let slot = &mut slots[slot];
        slot.member = member;
        slot.chain.push(to);
        slot.payload = payload;
        slot.delegated_by = Some(by);
        Ok(())
    }

    /// Slot `slot`'s member failed its ask: gives its role to the worker nearest it that can
    /// take it, in this turn, or fails the team.
    async fn reassign(
        &mut self,
        step: &Step,
        slots: &mut [Slot],
        slot: usize,
        why: Arc<str>,
    ) -> Result<(), Ended> {
        let index = slots[slot].member;
        let holder = self.roster.members()[index];
        let role = self.team.roles[holder.role].name.clone();
        // Another ask of the same member failed first and its role was given away already:
        // this ask goes to the new holder, without spending a reassignment.
        if holder.agent != slots[slot].asked {
            return Ok(());
        }
        let failed = holder;
        match self.roster.failed(failed.agent) {
            Reassign::Replace { index } => {
                let mask = self.masks[failed.role];
                let exclude = self.roster.excluded();
                let anchor = self.teamed.supervisor;
                let found = self
                    .handle
                    .observe(move |live| {
                        team::replace(
                            live.tree,
                            failed.agent,
                            anchor,
                            mask,
                            &exclude,
                            team::WALK_BOUND,
                        )
                        .map(|a| (a, live.tree.spec(a)))
                    })
                    .await?;
                let Some((agent, pool)) = found else {
                    return Err(Ended::Failed(
                        format!(
                            "step `{}`: member {} of role `{role}` failed ({why}), and no other worker can take the role",
                            step.id, failed.agent
                        )
                        .into(),
                    ));
                };
                self.roster.replaced(index, agent, pool);
                self.announce_members();
                metrics::counter!(crate::metrics::TEAM_REASSIGNMENTS).increment(1);
                self.handle.publish(
                    Kinds::TEAMS,
                    Event::TeamReassigned {
                        team: self.teamed.team,
                        role: role.clone(),
                        from: failed.agent,
                        to: agent,
                    },
                );
                self.teamed.reassigned.push(Reassigned {
                    step: step.id.clone(),
                    role,
                    from: failed.agent,
                    to: agent,
                    why,
                });
                Ok(())
            }
            Reassign::Exhausted => Err(Ended::Failed(
                format!(
                    "step `{}`: member {} of role `{role}` failed ({why}), and the team's {} reassignments are spent",
                    step.id, failed.agent, self.team.reassignments
                )
                .into(),
            )),
            // Not a member any more: the ask goes to the role's holder now.
            Reassign::Unknown => Ok(()),
        }
    }

    /// Asks slots `which` of step `s` of their members, one journaled task each pinned to
    /// its member, one attempt.
    async fn ask(
        &mut self,
        s: usize,
        slots: &mut [Slot],
        which: &[usize],
        answers: &mut FuturesUnordered<Answer>,
    ) -> Result<(), Ended> {
        let mut specs = Vec::with_capacity(which.len());
        let mut masks = Vec::with_capacity(which.len());
        let mut agents = Vec::with_capacity(which.len());
        for &i in which {
            let m = self.roster.members()[slots[i].member];
            slots[i].asked = m.agent;
            specs.push(TaskSpec {
                requirement: self.team.roles[m.role].requirement.clone(),
                payload: slots[i].payload.clone(),
                max_attempts: 1,
                ..self.spec.clone()
            });
            masks.push(SpecMask::of(m.pool));
            agents.push(m.agent);
        }
        if let Err(e) = self.handle.admit(&specs) {
            // The payload limit, as the team's context grows; no agent left for a role.
            return Err(Ended::Failed(
                format!("step `{}` could not be asked: {e}", self.team.steps[s].id).into(),
            ));
        }
        self.handle.wait_for_room(specs.len()).await?;
        let (_, pending) = self
            .handle
            .accept_tracked(specs, masks, |_| true, |i| Some(agents[i]), None)
            .await?;
        let record = &mut self.teamed.steps.last_mut().expect("pushed").asks;
        for (&i, pending) in which.iter().zip(pending) {
            let m = self.roster.members()[slots[i].member];
            self.out.insert(pending.id);
            self.teamed.tasks += 1;
            record.push(Ask {
                role: self.team.roles[m.role].name.clone(),
                agent: m.agent,
                task: pending.id,
                state: None,
                error: None,
                delegated_by: slots[i].delegated_by.clone(),
            });
            let ask = record.len() - 1;
            answers.push(Box::pin(async move { (i, ask, pending.await) }));
        }
        Ok(())
    }
}

/// The payload of an ask of `step` without its `team` field: the task's (`payload`), with the
/// step's input set over it. A cluster's spread team asks with it too.
pub fn step_payload(payload: &[u8], step: &Step) -> Map<String, Value> {
    let mut payload = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(fields)) => fields,
        Ok(other) => Map::from_iter([("task".to_owned(), other)]),
        Err(_) => Map::from_iter([(
            "task".to_owned(),
            Value::String(String::from_utf8_lossy(payload).into_owned()),
        )]),
    };
    if let Some(input) = &step.input {
        // Over the payload's `input` object when it has one (a workflow's), else over
        // the payload itself: where `{{input.KEY}}` reads.
        match payload.get_mut("input") {
            Some(Value::Object(fields)) => fields.extend(input.clone()),
            Some(slot @ Value::Null) => *slot = Value::Object(input.clone()),
            _ => payload.extend(input.clone()),
        }
    }
    payload
}

/// An output as the team's context holds it: its JSON, or its text.
pub fn as_value(output: &Bytes) -> Value {
    serde_json::from_slice(output)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(output).into_owned()))
}

#[cfg(test)]
mod tests;
