//! Teams run by a real runtime on tokio's paused clock: formed under one supervisor when one
//! covers the roles, each step seeing the outputs before it, a failed member's role given to
//! another worker at once, reassignments and delegation capped, and nothing left behind.

use super::*;
use crate::{
    Pool, Runtime, RuntimeOptions,
    events::{Event, Kinds},
};
use colony_agents::{Agent, AgentSpec, Error as AgentError, Execution, Task};
use colony_core::hierarchy::Tiers;
use colony_journal::MemoryJournal;
use std::{
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering::SeqCst},
    },
    time::Duration,
};
use tokio::time::Instant;

/// How a worker answers one ask.
enum Answer {
    /// This output, after this many milliseconds.
    Says(String, u64),
    Fails,
    Hangs,
}

/// What a rule hears of an ask: the agent, its role, the step, and the `team` field.
struct Heard<'a> {
    agent: AgentId,
    role: &'a str,
    step: &'a str,
    team: &'a Value,
}

type Rule = fn(&Heard<'_>) -> Answer;

/// Each ask's task, agent, when it started and its `team` field.
type Ran = Arc<Mutex<Vec<(TaskId, AgentId, Instant, Value)>>>;

struct Mates {
    role: &'static str,
    rule: Rule,
    ran: Ran,
}

impl Agent for Mates {
    fn handle(&self, task: Task) -> Execution {
        let payload: Value = serde_json::from_slice(&task.payload).unwrap();
        let team = payload["team"].clone();
        self.ran
            .lock()
            .unwrap()
            .push((task.id, task.agent, Instant::now(), team.clone()));
        let heard = Heard {
            agent: task.agent,
            role: self.role,
            step: team["step"].as_str().unwrap_or(""),
            team: &team,
        };
        match (self.rule)(&heard) {
            Answer::Fails => Execution::Done(Err(AgentError::fatal("this member fails"))),
            Answer::Says(text, ms) => Execution::Running(Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Bytes::from(text))
            })),
            Answer::Hangs => Execution::Running(Box::pin(std::future::pending())),
        }
    }
}

/// What an honest member says: who it is, its step and index, and what it saw.
fn says(h: &Heard<'_>) -> Answer {
    // By name: the context's order is its map's (insertion order with serde_json's
    // `preserve_order`, which another crate of the workspace may turn on).
    let mut saw: Vec<&String> = h.team["context"].as_object().unwrap().keys().collect();
    saw.sort();
    let text = json!({
        "agent": h.agent.0,
        "role": h.role,
        "step": h.step,
        "index": h.team["index"],
        "saw": saw,
    });
    Answer::Says(text.to_string(), 5)
}

/// Planners, coders and reviewers (2, 6 and 4: twelve, one supervisor's span), all by `rule`.
async fn start(rule: Rule) -> (Runtime, Ran) {
    start_with(rule, [2, 6, 4], 12).await
}

async fn start_with(rule: Rule, counts: [u32; 3], span: u32) -> (Runtime, Ran) {
    let ran = Ran::default();
    let options = RuntimeOptions {
        span,
        tiers: Tiers::Named(vec!["supervisor".into(), "worker".into()]),
        ..RuntimeOptions::default()
    };
    let pools = ["planner", "coder", "reviewer"]
        .into_iter()
        .zip(counts)
        .map(|(role, n)| {
            let agent = Mates {
                role,
                rule,
                ran: ran.clone(),
            };
            Pool::new(AgentSpec::new(role, role), n, Arc::new(agent))
        })
        .collect();
    let runtime = Runtime::start(options, pools, Arc::new(MemoryJournal::new()))
        .await
        .unwrap();
    (runtime, ran)
}

fn role(name: &str, count: u32) -> Role {
    Role {
        name: name.into(),
        requirement: Requirement {
            role: Some(name.into()),
            ..Requirement::default()
        },
        count,
    }
}

fn step(id: &str, role: usize, each: bool) -> Step {
    Step {
        id: id.into(),
        role,
        each,
        input: None,
    }
}

/// A planner, `coders` coders and a reviewer; plan, code (each coder), review.
fn feature(coders: u32) -> Team {
    Team {
        roles: vec![
            role("planner", 1),
            role("coder", coders),
            role("reviewer", 1),
        ],
        steps: vec![
            step("plan", 0, false),
            step("code", 1, true),
            step("review", 2, false),
        ],
        reassignments: 2,
        delegation: 0,
        spread: false,
    }
}

fn task() -> TaskSpec {
    TaskSpec {
        payload: Bytes::from(r#"{"goal":"a feature"}"#),
        timeout: Duration::from_secs(60),
        ..TaskSpec::default()
    }
}

/// Every ask ran once, on the member it was asked of.
fn ran_on_their_members(teamed: &Teamed, ran: &Ran) {
    let ran = ran.lock().unwrap();
    for ask in teamed.steps.iter().flat_map(|s| &s.asks) {
        let runs: Vec<AgentId> = ran
            .iter()
            .filter(|r| r.0 == ask.task)
            .map(|r| r.1)
            .collect();
        assert_eq!(runs, [ask.agent], "{ask:?}");
    }
}

async fn nothing_left(h: &Handle) {
    h.drain().await.unwrap();
    let stats = h.stats();
    assert_eq!((stats.queued, stats.running), (0, 0), "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_team_forms_under_one_supervisor_and_each_step_sees_the_outputs_before_it() {
    let (runtime, ran) = start(says).await;
    let h = runtime.handle().clone();
    let teamed = h.team(task(), feature(3)).await.unwrap();
    assert!(teamed.succeeded(), "{teamed:?}");
    assert!(teamed.together);
    let supervisor = teamed.supervisor;
    let parents = h
        .inspect({
            let agents: Vec<AgentId> = teamed.members.iter().map(|m| m.agent).collect();
            move |tree| agents.iter().map(|&a| tree.parent(a)).collect::<Vec<_>>()
        })
        .await
        .unwrap();
    assert!(
        parents.iter().all(|&p| p == Some(supervisor)),
        "{parents:?}"
    );
    let roles: Vec<&str> = teamed.members.iter().map(|m| &*m.role).collect();
    assert_eq!(roles, ["planner", "coder", "coder", "coder", "reviewer"]);
    // Three coders each coded once, each seeing the plan; the reviewer saw both steps.
    let code = &teamed.steps[1];
    assert_eq!(code.asks.len(), 3);
    let coders: HashSet<AgentId> = code.asks.iter().map(|a| a.agent).collect();
    assert_eq!(coders.len(), 3);
    let review: Value = serde_json::from_slice(teamed.output.as_ref().unwrap()).unwrap();
    assert_eq!(review["step"], "review");
    assert_eq!(review["saw"], json!(["code", "plan"]));
    let ran_ = ran.lock().unwrap().clone();
    for (_, _, _, team) in &ran_ {
        if team["step"] == "code" {
            assert_eq!(team["context"]["plan"]["step"], "plan");
            assert_eq!(team["of"], 3);
            assert_eq!(team["members"].as_array().unwrap().len(), 5);
        }
        if team["step"] == "review" {
            let outputs = team["context"]["code"].as_array().unwrap();
            let indexes: Vec<&Value> = outputs.iter().map(|o| &o["index"]).collect();
            assert_eq!(indexes, [&json!(0), &json!(1), &json!(2)]);
        }
    }
    assert_eq!(teamed.tasks, 5);
    assert!(teamed.reassigned.is_empty());
    ran_on_their_members(&teamed, &ran);
    nothing_left(&h).await;
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn roles_no_supervisor_covers_are_spread_and_the_team_says_so() {
    // Span 4: planners, coders and reviewers under different supervisors.
    let (runtime, _) = start_with(says, [4, 4, 4], 4).await;
    let teamed = runtime.handle().team(task(), feature(2)).await.unwrap();
    assert!(teamed.succeeded(), "{teamed:?}");
    assert!(!teamed.together);
    runtime.shutdown().await;
}

static FAILED: AtomicU32 = AtomicU32::new(u32::MAX);

#[tokio::test(start_paused = true)]
async fn a_member_that_fails_has_its_role_reassigned_at_once_and_the_step_asked_again() {
    // The first coder asked fails; every other member answers.
    fn rule(h: &Heard<'_>) -> Answer {
        if h.role == "coder"
            && FAILED
                .compare_exchange(u32::MAX, h.agent.0, SeqCst, SeqCst)
                .is_ok()
        {
            return Answer::Fails;
        }
        says(h)
    }
    let (runtime, ran) = start(rule).await;
    let h = runtime.handle().clone();
    let mut events = h.subscribe(Kinds::TEAMS);
    let teamed = h.team(task(), feature(3)).await.unwrap();
    assert!(teamed.succeeded(), "{teamed:?}");
    let failed = AgentId(FAILED.load(SeqCst));
    // Formed, one role reassigned, ended: on the stream, in that order.
    let seen: Vec<Event> = std::iter::from_fn(|| events.try_recv()).collect();
    assert_eq!(
        seen,
        [
            Event::TeamFormed {
                team: teamed.team,
                supervisor: teamed.supervisor,
                members: 5,
                together: true,
            },
            Event::TeamReassigned {
                team: teamed.team,
                role: "coder".into(),
                from: failed,
                to: teamed.reassigned[0].to,
            },
            Event::TeamEnded {
                team: teamed.team,
                succeeded: true,
                tasks: 6,
                reassigned: 1,
                error: None,
            },
        ]
    );
    assert_eq!(teamed.reassigned.len(), 1, "{:?}", teamed.reassigned);
    let r = &teamed.reassigned[0];
    assert_eq!(
        (r.step.as_ref(), r.role.as_ref(), r.from),
        ("code", "coder", failed)
    );
    assert!(r.why.contains("this member fails"), "{r:?}");
    // The replacement is a coder outside the team, now a member in the failed one's place.
    assert!(teamed.formed.iter().all(|m| m.agent != r.to));
    assert!(
        teamed
            .members
            .iter()
            .any(|m| m.agent == r.to && &*m.role == "coder")
    );
    assert!(teamed.members.iter().all(|m| m.agent != failed));
    // Asked again in the turn the failure was heard: no time passed on the paused clock.
    let ran_ = ran.lock().unwrap().clone();
    let at = |agent: AgentId| {
        ran_.iter()
            .find(|r| r.1 == agent && r.3["step"] == "code")
            .unwrap()
            .2
    };
    assert_eq!(at(r.to), at(failed));
    // The code step's output still has three parts, in seat order.
    let code = &teamed.steps[1];
    assert_eq!(code.asks.len(), 4);
    assert_eq!(
        code.asks
            .iter()
            .filter(|a| a.state == Some(TaskState::Succeeded))
            .count(),
        3
    );
    ran_on_their_members(&teamed, &ran);
    nothing_left(&h).await;
    runtime.shutdown().await;
}

static HUNG: AtomicU32 = AtomicU32::new(u32::MAX);

#[tokio::test(start_paused = true)]
async fn a_member_killed_mid_step_is_replaced_and_the_team_ends_well() {
    fn rule(h: &Heard<'_>) -> Answer {
        if h.step == "plan"
            && HUNG
                .compare_exchange(u32::MAX, h.agent.0, SeqCst, SeqCst)
                .is_ok()
        {
            return Answer::Hangs;
        }
        says(h)
    }
    let (runtime, _) = start(rule).await;
    let h = runtime.handle().clone();
    let team = crate::spawner::Spawner::spawn("team", {
        let h = h.clone();
        async move { h.team(task(), feature(2)).await }
    });
    while HUNG.load(SeqCst) == u32::MAX {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let hung = AgentId(HUNG.load(SeqCst));
    h.kill(hung).unwrap();
    let teamed = team.await.unwrap().unwrap().unwrap();
    assert!(teamed.succeeded(), "{teamed:?}");
    assert_eq!(teamed.reassigned.len(), 1);
    assert_eq!(teamed.reassigned[0].from, hung);
    assert_eq!(&*teamed.reassigned[0].role, "planner");
    nothing_left(&h).await;
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn past_its_reassignments_a_team_fails_says_why_and_leaves_nothing_out() {
    // Every coder fails; the other coder in the same step hangs until cancelled.
    fn rule(h: &Heard<'_>) -> Answer {
        match (h.role, h.team["index"].as_u64()) {
            ("coder", Some(0)) => Answer::Fails,
            ("coder", _) => Answer::Hangs,
            _ => says(h),
        }
    }
    let (runtime, _) = start(rule).await;
    let h = runtime.handle().clone();
    let teamed = h.team(task(), feature(2)).await.unwrap();
    assert!(!teamed.succeeded());
    assert!(teamed.output.is_none());
    let error = teamed.error.as_deref().unwrap();
    assert!(error.contains("2 reassignments are spent"), "{error}");
    assert_eq!(teamed.reassigned.len(), 2);
    // The hanging coder's ask was cancelled as the team ended.
    nothing_left(&h).await;
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_team_that_cannot_be_formed_is_refused_with_nothing_asked() {
    let (runtime, ran) = start(says).await;
    let h = runtime.handle().clone();
    let refused = h.team(task(), feature(7)).await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        "team: role `coder` needs 7 members, and 6 workers can take it"
    );
    let mut no_steps = feature(1);
    no_steps.steps.clear();
    assert!(matches!(
        h.team(task(), no_steps).await,
        Err(Error::Team(_))
    ));
    // A cluster's spread team, on one runtime.
    let spread = Team {
        spread: true,
        ..feature(1)
    };
    let refused = h.team(task(), spread).await.unwrap_err();
    assert!(
        refused.to_string().contains("this is one runtime"),
        "{refused}"
    );
    assert_eq!(h.stats().accepted, 0);
    assert!(ran.lock().unwrap().is_empty());
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_member_may_delegate_down_its_chain_but_never_back_up_it() {
    // The planner hands its plan to a coder, which answers.
    fn hands_on(h: &Heard<'_>) -> Answer {
        match (h.role, h.step) {
            ("planner", "plan") => Answer::Says(
                json!({"delegate": {"role": "coder", "input": "draft the plan"}}).to_string(),
                1,
            ),
            _ => says(h),
        }
    }
    let (runtime, ran) = start(hands_on).await;
    let h = runtime.handle().clone();
    let mut team = feature(1);
    team.delegation = 1;
    let teamed = h.team(task(), team.clone()).await.unwrap();
    assert!(teamed.succeeded(), "{teamed:?}");
    let plan = &teamed.steps[0];
    assert_eq!(plan.asks.len(), 2);
    assert_eq!(plan.asks[1].delegated_by.as_deref(), Some("planner"));
    assert_eq!(&*plan.asks[1].role, "coder");
    let delegated = ran
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.0 == plan.asks[1].task)
        .unwrap()
        .3
        .clone();
    assert_eq!(
        delegated["delegated"],
        json!({"by": "planner", "input": "draft the plan"})
    );
    runtime.shutdown().await;

    // A coder that hands the plan back to the planner would loop: refused.
    fn loops(h: &Heard<'_>) -> Answer {
        match (h.role, h.step) {
            ("planner", "plan") => {
                Answer::Says(json!({"delegate": {"role": "coder"}}).to_string(), 1)
            }
            ("coder", "plan") => {
                Answer::Says(json!({"delegate": {"role": "planner"}}).to_string(), 1)
            }
            _ => says(h),
        }
    }
    let (runtime, _) = start(loops).await;
    team.delegation = 3;
    let teamed = runtime.handle().team(task(), team.clone()).await.unwrap();
    let error = teamed.error.as_deref().unwrap();
    assert!(error.contains("would loop"), "{error}");
    runtime.shutdown().await;

    // Deeper than allowed: refused too.
    fn deep(h: &Heard<'_>) -> Answer {
        match (h.role, h.step) {
            ("planner", "plan") => {
                Answer::Says(json!({"delegate": {"role": "coder"}}).to_string(), 1)
            }
            ("coder", "plan") => {
                Answer::Says(json!({"delegate": {"role": "reviewer"}}).to_string(), 1)
            }
            _ => says(h),
        }
    }
    let (runtime, _) = start(deep).await;
    team.delegation = 1;
    let teamed = runtime.handle().team(task(), team).await.unwrap();
    let error = teamed.error.as_deref().unwrap();
    assert!(error.contains("deeper than 1"), "{error}");
    runtime.shutdown().await;
}

static BAD_REVIEWER: AtomicU32 = AtomicU32::new(u32::MAX);

#[tokio::test(start_paused = true)]
async fn two_asks_lost_with_one_member_spend_one_reassignment() {
    // Both coders hand their part to the team's one reviewer, which fails every ask: its
    // role is given away once, and the second lost ask goes to the new reviewer for free.
    fn rule(h: &Heard<'_>) -> Answer {
        match (h.role, h.step) {
            ("coder", "code") => Answer::Says(
                json!({"delegate": {"role": "reviewer", "input": h.team["index"]}}).to_string(),
                1,
            ),
            ("reviewer", "code") => {
                let _ = BAD_REVIEWER.compare_exchange(u32::MAX, h.agent.0, SeqCst, SeqCst);
                if BAD_REVIEWER.load(SeqCst) == h.agent.0 {
                    Answer::Fails
                } else {
                    says(h)
                }
            }
            _ => says(h),
        }
    }
    let (runtime, _) = start(rule).await;
    let h = runtime.handle().clone();
    let mut team = feature(2);
    team.delegation = 1;
    team.reassignments = 1;
    let teamed = h.team(task(), team).await.unwrap();
    assert!(teamed.succeeded(), "{teamed:?}");
    assert_eq!(teamed.reassigned.len(), 1, "{:?}", teamed.reassigned);
    assert_eq!(
        teamed.reassigned[0].from,
        AgentId(BAD_REVIEWER.load(SeqCst))
    );
    let code = &teamed.steps[1];
    // Two coders, two delegated asks lost, two asked again of the new reviewer.
    assert_eq!(code.asks.len(), 6, "{:?}", code.asks);
    nothing_left(&h).await;
    runtime.shutdown().await;
}
