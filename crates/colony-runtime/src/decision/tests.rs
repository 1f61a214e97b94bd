//! Decisions run by a real runtime on tokio's paused clock: voters are distinct workers, each
//! ballot runs on its voter and nowhere else, silence and refusals are kept, a vote closes as
//! soon as nothing more can come, and the ballots still out are cancelled once it is decided.

use super::*;
use crate::{
    Pool, Runtime, RuntimeOptions,
    events::{Event, Kinds},
};
use colony_agents::{Agent, AgentSpec, Error as AgentError, Execution, Task};
use colony_core::{
    decision::{Reason, Tie},
    hierarchy::Tiers,
    reputation::Reputation,
};
use colony_journal::{Journal, MemoryJournal};
use std::{collections::HashSet, sync::Mutex, time::Duration};

/// How one worker answers a ballot.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// This output, after this many milliseconds.
    Says(&'static str, u64),
    /// A fatal error at once.
    Fails,
    /// Never answers.
    Hangs,
}

/// Workers answering by their id; each execution is written down with the agent that ran it.
struct Voters {
    answer: fn(AgentId) -> Answer,
    ran: Arc<Mutex<Vec<(TaskId, AgentId)>>>,
}

impl Agent for Voters {
    fn handle(&self, task: Task) -> Execution {
        self.ran.lock().unwrap().push((task.id, task.agent));
        match (self.answer)(task.agent) {
            Answer::Fails => Execution::Done(Err(AgentError::fatal("this voter always fails"))),
            Answer::Says(text, ms) => Execution::Running(Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Bytes::from(text))
            })),
            Answer::Hangs => Execution::Running(Box::pin(std::future::pending())),
        }
    }
}

type Ran = Arc<Mutex<Vec<(TaskId, AgentId)>>>;

async fn start(workers: u32, answer: fn(AgentId) -> Answer) -> (Runtime, Ran) {
    start_on(workers, answer, Arc::new(MemoryJournal::new())).await
}

async fn start_on(
    workers: u32,
    answer: fn(AgentId) -> Answer,
    journal: Arc<dyn colony_journal::Journal>,
) -> (Runtime, Ran) {
    let ran = Ran::default();
    let agent = Voters {
        answer,
        ran: ran.clone(),
    };
    let options = RuntimeOptions {
        span: 4,
        tiers: Tiers::Named(vec!["supervisor".into(), "worker".into()]),
        ..RuntimeOptions::default()
    };
    let pool = Pool::new(AgentSpec::new("voter", "worker"), workers, Arc::new(agent));
    let runtime = Runtime::start(options, vec![pool], journal).await.unwrap();
    (runtime, ran)
}

fn ballot_task(timeout_ms: u64) -> TaskSpec {
    TaskSpec {
        timeout: Duration::from_millis(timeout_ms),
        max_attempts: 1,
        ..TaskSpec::default()
    }
}

/// A majority vote of `voters` with ballot tasks timing out after `timeout_ms`, run to its end.
async fn majority(h: &Handle, voters: u32, timeout_ms: u64) -> Decided {
    let vote = Vote::new(voters, DecisionOptions::default());
    let voting = h.decide(ballot_task(timeout_ms), vote).await.unwrap();
    voting.outcome().await.unwrap()
}

/// Every ballot task ran on the voter seated for it, and nowhere else: once if it ended with
/// an answer or an error, at most once if it was cancelled or is still out.
fn ran_on_their_voters(decided: &Decided, ran: &Ran) {
    let ran = ran.lock().unwrap();
    for voter in &decided.voters {
        let runs: Vec<AgentId> = ran
            .iter()
            .filter(|(t, _)| Some(*t) == voter.task)
            .map(|&(_, a)| a)
            .collect();
        let ran_once = matches!(voter.state, Some(TaskState::Succeeded | TaskState::Failed));
        let expected = if ran_once { 1..=1 } else { 0..=1 };
        assert!(
            runs.iter().all(|&a| a == voter.agent) && expected.contains(&runs.len()),
            "{voter:?} ran on {runs:?}"
        );
    }
}

/// Nothing is left waiting or counted: the queues, the pools' demand and the tree's loads.
async fn nothing_left(h: &Handle) {
    h.drain().await.unwrap();
    let stats = h.stats();
    assert_eq!((stats.queued, stats.running), (0, 0), "{stats:?}");
    for load in h.pool_loads() {
        assert_eq!((load.waiting, load.busy), (0, 0), "{load:?}");
    }
    let loads = h
        .inspect(|tree| {
            (0..tree.len() as u32)
                .map(|a| tree.load(AgentId(a)).0)
                .sum::<u32>()
        })
        .await
        .unwrap();
    assert_eq!(loads, 0, "the tree's loads");
}

#[tokio::test(start_paused = true)]
async fn distinct_workers_vote_and_the_majority_decides_with_every_ballot_kept() {
    // Workers with an id divisible by 3 dissent.
    let (runtime, ran) = start(12, |a| {
        if a.0 % 3 == 0 {
            Answer::Says("41", 10)
        } else {
            Answer::Says(" 42", 5 + u64::from(a.0))
        }
    })
    .await;
    let h = runtime.handle();
    let mut events = h.subscribe(Kinds::DECISIONS);
    let voting = h
        .decide(ballot_task(1_000), Vote::new(9, DecisionOptions::default()))
        .await
        .unwrap();
    let seated: HashSet<AgentId> = voting.voters().iter().map(|v| v.agent).collect();
    assert_eq!(seated.len(), 9, "nine distinct voters");
    let decided = voting.outcome().await.unwrap();
    let winner = decided.outcome.winner().expect("decided");
    assert_eq!(&*winner.value, "42", "outputs are compared trimmed");
    let dissent: HashSet<AgentId> = seated.iter().copied().filter(|a| a.0 % 3 == 0).collect();
    assert!(dissent.len() < 5, "the seats make 42 a majority");
    let counted: HashSet<AgentId> = decided
        .outcome
        .record()
        .ballots
        .iter()
        .map(|b| b.ballot.voter)
        .collect();
    let said: HashSet<AgentId> = winner.dissenters.iter().copied().collect();
    assert_eq!(
        said,
        &dissent & &counted,
        "the dissenters are the 41s counted"
    );
    ran_on_their_voters(&decided, &ran);
    // consensus:reached on the stream, once.
    let ended: Vec<Event> = std::iter::from_fn(|| events.try_recv()).collect();
    let counted = decided.outcome.record().ballots.len() as u32;
    assert_eq!(
        ended,
        [Event::DecisionEnded {
            first_ballot: decided.voters[0].task.unwrap(),
            protocol: Protocol::Majority,
            voters: 9,
            counted,
            value: Some("42".into()),
            reason: None,
        }]
    );
    // Decided once more than half said 42; the rest were cancelled or had ended.
    h.drain().await.unwrap();
    for voter in &decided.voters {
        let row = h.journal().task(voter.task.unwrap()).unwrap().unwrap();
        assert!(row.state.is_terminal(), "{voter:?}: {row:?}");
    }
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn too_few_workers_is_refused_before_anything_is_accepted() {
    let (runtime, _) = start(3, |_| Answer::Says("x", 1)).await;
    let h = runtime.handle();
    let err = h
        .decide(ballot_task(1_000), Vote::new(5, DecisionOptions::default()))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "decision: 5 voters asked, but 3 workers can run the task"
    );
    // Options the engine refuses are named too: a leader needs a reviewer.
    let leader = DecisionOptions::with(Protocol::Leader);
    let err = h
        .decide(ballot_task(1_000), Vote::new(1, leader))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("leader"), "{err}");
    let bft = DecisionOptions {
        faults: Some(1),
        ..DecisionOptions::with(Protocol::Bft)
    };
    let err = h
        .decide(ballot_task(1_000), Vote::new(3, bft))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("decision: "), "{err}");
    assert_eq!(h.stats().accepted, 0, "nothing accepted");
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_decision_hands_its_room_back_and_one_larger_than_the_room_is_refused_at_once() {
    let (runtime, _) = start(3, |_| Answer::Says("x", 1)).await;
    let h = runtime.handle();
    let capacity = h.stats().capacity;
    // Refused inside the dispatcher (too few workers) more often than the room holds its
    // seats: each refusal gave its room back, or a later decision would wait for it forever.
    let voting = tokio::time::timeout(Duration::from_secs(60), async {
        for _ in 0..=capacity / 5 {
            let refused = h
                .decide(ballot_task(1_000), Vote::new(5, DecisionOptions::default()))
                .await;
            assert!(refused.is_err());
        }
        h.decide(ballot_task(1_000), Vote::new(3, DecisionOptions::default()))
            .await
    })
    .await
    .expect("room was handed back")
    .unwrap();
    assert!(voting.outcome().await.unwrap().outcome.winner().is_some());
    // More voters than the hierarchy has room for would wait forever: refused now.
    let too_many = u32::try_from(capacity + 1).unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        h.decide(
            ballot_task(1_000),
            Vote::new(too_many, DecisionOptions::default()),
        ),
    )
    .await
    .expect("refused without waiting")
    .unwrap_err();
    assert!(matches!(err, Error::BatchTooLarge { .. }), "{err}");
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn silent_voters_close_the_vote_at_once_and_a_failed_vote_says_why() {
    // Three of four fail at once: one ballot of four is no quorum, known as soon as the
    // failures are in, not at the 5 s deadline.
    let (runtime, ran) = start(4, |a| {
        if a.0 % 4 == 0 {
            Answer::Says("yes", 20)
        } else {
            Answer::Fails
        }
    })
    .await;
    let h = runtime.handle();
    let decided = majority(h, 4, 10_000).await;
    assert_eq!(decided.outcome.reason(), Some(Reason::NoQuorum));
    assert!(decided.outcome.record().at < Duration::from_secs(1));
    let silent: Vec<&Voter> = decided
        .voters
        .iter()
        .filter(|v| v.problem.is_some())
        .collect();
    assert_eq!(silent.len(), 3);
    for v in silent {
        assert_eq!(v.state, Some(TaskState::Failed), "{v:?}");
        assert!(
            v.problem.as_deref().unwrap().contains("always fails"),
            "{v:?}"
        );
    }
    ran_on_their_voters(&decided, &ran);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_decided_vote_cancels_the_ballots_still_out() {
    let (runtime, _) = start(5, |a| {
        if a.0 % 5 < 2 {
            Answer::Hangs
        } else {
            Answer::Says("a", 10)
        }
    })
    .await;
    let h = runtime.handle();
    let decided = majority(h, 5, 60_000).await;
    assert_eq!(&*decided.outcome.winner().unwrap().value, "a");
    assert!(decided.outcome.record().at < Duration::from_secs(1));
    // The hanging voters' ballots were cancelled, not left to their 60 s timeout.
    tokio::time::timeout(Duration::from_secs(1), h.drain())
        .await
        .expect("the hanging ballots were cancelled")
        .unwrap();
    let out: Vec<&Voter> = decided
        .voters
        .iter()
        .filter(|v| v.state.is_none())
        .collect();
    assert_eq!(out.len(), 2, "{:?}", decided.voters);
    for v in out {
        let row = h.journal().task(v.task.unwrap()).unwrap().unwrap();
        assert_eq!(row.state, TaskState::Cancelled, "{v:?}");
    }
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_deadline_fails_a_vote_whose_voters_hang() {
    let (runtime, _) = start(3, |_| Answer::Hangs).await;
    let h = runtime.handle();
    let options = DecisionOptions {
        timeout: Duration::from_secs(2),
        ..DecisionOptions::default()
    };
    let voting = h
        .decide(ballot_task(60_000), Vote::new(3, options))
        .await
        .unwrap();
    let decided = voting.outcome().await.unwrap();
    assert_eq!(decided.outcome.reason(), Some(Reason::NoQuorum));
    assert_eq!(decided.outcome.record().at, Duration::from_secs(2));
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn ballots_wait_for_their_busy_voters_and_are_cancelled_if_the_voter_is_retired() {
    // Four workers, all busy for a second: the ballots wait pinned to their voters, the two
    // voters retired meanwhile never vote, and two idle workers spawned then do not take the
    // ballots of the others.
    let (runtime, ran) = start(4, |_| Answer::Says("yes", 1_000)).await;
    let h = runtime.handle().clone();
    let busy = h.submit_batch(vec![ballot_task(10_000); 4]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let voting = h
        .decide(
            ballot_task(10_000),
            Vote::new(4, DecisionOptions::default()),
        )
        .await
        .unwrap();
    let voters: Vec<AgentId> = voting.voters().iter().map(|v| v.agent).collect();
    let resized = h.set_pool_size(0, 2).await.unwrap();
    assert_eq!(resized.retired, 2);
    h.spawn(0, 2, crate::SpawnMode::Batch).await.unwrap();
    let decided = voting.outcome().await.unwrap();
    // Two of four voted yes: half take part, and all of them agree.
    assert_eq!(&*decided.outcome.winner().unwrap().value, "yes");
    let gone: Vec<&Voter> = decided
        .voters
        .iter()
        .filter(|v| v.state == Some(TaskState::Cancelled))
        .collect();
    assert_eq!(gone.len(), 2, "{:?}", decided.voters);
    for v in &gone {
        assert!(
            v.problem.as_deref().unwrap().contains("left its pool"),
            "{v:?}"
        );
        assert!(voters.contains(&v.agent));
    }
    ran_on_their_voters(&decided, &ran);
    let ran = ran.lock().unwrap().clone();
    assert_eq!(
        ran.len(),
        4 + 2,
        "four busy tasks and two ballots ran: {ran:?}"
    );
    assert!(busy.ids().all(|t| ran.iter().any(|r| r.0 == t)));
    nothing_left(&h).await;
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn ballots_count_as_demand_only_in_their_voters_pools_and_go_when_the_vote_is_dropped() {
    // Two pools of the same role, every worker busy for a minute: four ballots wait, two
    // pinned in each pool, so each pool sees two tasks waiting for it, not four.
    let ran = Ran::default();
    let pool = |name: &str| {
        let agent = Voters {
            answer: |_| Answer::Says("yes", 60_000),
            ran: ran.clone(),
        };
        Pool::new(AgentSpec::new(name, "worker"), 2, Arc::new(agent))
    };
    let options = RuntimeOptions {
        span: 4,
        tiers: Tiers::Named(vec!["supervisor".into(), "worker".into()]),
        ..RuntimeOptions::default()
    };
    let runtime = Runtime::start(
        options,
        vec![pool("a"), pool("b")],
        Arc::new(MemoryJournal::new()),
    )
    .await
    .unwrap();
    let h = runtime.handle().clone();
    let busy = h.submit_batch(vec![ballot_task(120_000); 4]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let voting = h
        .decide(
            ballot_task(120_000),
            Vote::new(4, DecisionOptions::default()),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let waiting: Vec<u64> = h.pool_loads().iter().map(|l| l.waiting).collect();
    assert_eq!(waiting, [2, 2]);
    // Dropped before its end, the vote takes its ballots with it.
    drop(voting);
    for task in busy.ids() {
        h.cancel(task).await.unwrap();
    }
    nothing_left(&h).await;
    assert_eq!(ran.lock().unwrap().len(), 4, "no ballot ran");
    runtime.shutdown().await;
}

#[test]
fn an_output_votes_as_text_or_by_its_vote_and_confidence_fields() {
    let a = AgentId(7);
    let b = |s: &str| ballot(a, &Bytes::from(s.to_owned()));
    assert_eq!(b(" Paris ").unwrap(), Ballot::output(a, " Paris "));
    assert_eq!(
        b(r#"{"vote": "Paris", "confidence": 0.9, "why": "..."}"#).unwrap(),
        Ballot::output(a, "Paris").with_confidence(0.9)
    );
    assert_eq!(b(r#"{"vote": 42}"#).unwrap(), Ballot::output(a, "42"));
    assert_eq!(
        b(r#"{"answer": 42}"#).unwrap(),
        Ballot::output(a, r#"{"answer": 42}"#),
        "an object without a vote is voted for whole"
    );
    assert!(
        b(r#"{"vote": "x", "confidence": "high"}"#)
            .unwrap_err()
            .contains("not a number")
    );
    // A command agent's text output, and an http agent's answer, vote for what they say.
    assert_eq!(b(r#""Paris\n""#).unwrap(), Ballot::output(a, "Paris\n"));
    let answer = |content: &str, model: &str| {
        serde_json::json!({"content": content, "model": model, "usage": {"total_tokens": 9}})
            .to_string()
    };
    assert_eq!(
        b(&answer("Paris", "m1")).unwrap(),
        b(&answer("Paris", "m2")).unwrap()
    );
    assert_eq!(
        b(&answer("Paris", "m1")).unwrap(),
        Ballot::output(a, "Paris")
    );
    assert_eq!(
        b(&answer(r#"{"vote": "Lyon", "confidence": 0.6}"#, "m")).unwrap(),
        Ballot::output(a, "Lyon").with_confidence(0.6),
        "a model's answer is read as a ballot itself"
    );
    assert_eq!(
        b(&answer(&answer("x", "inner"), "outer")).unwrap(),
        Ballot::output(a, answer("x", "inner")),
        "once only"
    );
    assert!(
        ballot(a, &Bytes::from_static(b"\xff\xfe"))
            .unwrap_err()
            .contains("UTF-8")
    );
}

/// The SQLite journal in `dir`, opened as a new process would.
fn reopen(dir: &tempfile::TempDir) -> Arc<colony_journal::SqliteJournal> {
    let options = colony_journal::SqliteOptions::new(dir.path().join("colony.db"));
    Arc::new(colony_journal::SqliteJournal::open(options).unwrap())
}

/// Stops `runtime` as a crash would for the journal: attempts abandoned, unfinished tasks
/// left running in it, nothing closed; and lets go of the database.
async fn crash(runtime: Runtime, voting: Voting) {
    runtime.shutdown().await;
    // Only now: a vote dropped while the runtime runs cancels its ballots.
    drop(voting);
}

/// Waits for the journal to hold decision `id`'s outcome.
async fn journaled(journal: &dyn colony_journal::Journal, id: TaskId) -> serde_json::Value {
    for _ in 0..2_000 {
        if let Some(outcome) = journal.decision(id).unwrap().unwrap().outcome {
            return serde_json::from_str(&outcome).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("decision {id} was not taken after the restart");
}

/// The first two ballots asked answer "yes" at once; every later one hangs.
fn two_answer_then_hang(_: AgentId) -> Answer {
    static ASKED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    if ASKED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
        Answer::Says("yes", 0)
    } else {
        Answer::Hangs
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_interrupted_by_a_crash_is_taken_once_from_its_journaled_ballots() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, _) = start_on(5, two_answer_then_hang, reopen(&dir)).await;
    let options = DecisionOptions {
        timeout: Duration::from_secs(60),
        ..DecisionOptions::default()
    };
    let voting = runtime
        .handle()
        .decide(ballot_task(60_000), Vote::new(5, options))
        .await
        .unwrap();
    let id = voting.id();
    let seats: Vec<(AgentId, TaskId)> = voting
        .voters()
        .iter()
        .map(|v| (v.agent, v.task.unwrap()))
        .collect();
    // Two of five said yes: not yet a majority of the five.
    let journal = runtime.handle().journal().clone();
    let answered = || {
        seats
            .iter()
            .filter(|(_, t)| journal.task(*t).unwrap().unwrap().state == TaskState::Succeeded)
            .count()
    };
    for _ in 0..2_000 {
        if answered() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(answered(), 2);
    drop(journal);
    crash(runtime, voting).await;

    // The next process: every voter answers yes now.
    let (runtime, ran) = start_on(5, |_| Answer::Says("yes", 0), reopen(&dir)).await;
    let journal = runtime.handle().journal().clone();
    let outcome = journaled(&*journal, id).await;
    assert_eq!(outcome["outcome"]["result"], "decided", "{outcome}");
    assert_eq!(outcome["outcome"]["winner"]["value"], "yes");
    assert_eq!(outcome["id"], id.0);
    let ballots = outcome["outcome"]["record"]["ballots"].as_array().unwrap();
    assert!(ballots.len() >= 3, "a majority of five counted: {outcome}");
    // Only the three unfinished ballots ran again, each on its own voter.
    let mut reran = ran.lock().unwrap().clone();
    reran.sort();
    let mut expected: Vec<(TaskId, AgentId)> = Vec::new();
    for &(agent, task) in &seats {
        // A ballot still out when the majority came is cancelled without waiting for it:
        // it ends soon after the outcome, not before.
        let mut row = journal.task(task).unwrap().unwrap();
        for _ in 0..2_000 {
            if row.state.is_terminal() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            row = journal.task(task).unwrap().unwrap();
        }
        assert!(row.state.is_terminal(), "{row:?}");
        if row.attempt > 1 {
            expected.push((task, agent));
        }
    }
    assert!(
        reran.len() <= 3 && reran.iter().all(|r| expected.contains(r)),
        "{reran:?}"
    );
    assert!(journal.open_decisions().unwrap().is_empty());
    runtime.handle().drain().await.unwrap();
    runtime.shutdown().await;
    drop(journal);

    // A third process finds nothing to decide: the outcome stands.
    let (runtime, ran) = start_on(5, |_| Answer::Says("no", 0), reopen(&dir)).await;
    runtime.handle().drain().await.unwrap();
    assert!(ran.lock().unwrap().is_empty(), "no ballot ran again");
    let row = runtime.handle().journal().decision(id).unwrap().unwrap();
    let again: serde_json::Value = serde_json::from_str(row.outcome.as_deref().unwrap()).unwrap();
    assert_eq!(again, outcome, "taken once");
    assert_eq!(
        runtime.handle().journal().stats().fenced,
        0,
        "no second close was tried"
    );
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_ballot_whose_voter_is_gone_is_silent_and_the_vote_fails_honestly() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, _) = start_on(6, |_| Answer::Hangs, reopen(&dir)).await;
    let options = DecisionOptions {
        timeout: Duration::from_secs(60),
        participation: 0.75,
        ..DecisionOptions::default()
    };
    let voting = runtime
        .handle()
        .decide(ballot_task(60_000), Vote::new(6, options))
        .await
        .unwrap();
    let id = voting.id();
    crash(runtime, voting).await;

    // The next process has half the workers: three voters are gone.
    let (runtime, ran) = start_on(3, |_| Answer::Says("yes", 0), reopen(&dir)).await;
    let journal = runtime.handle().journal().clone();
    let outcome = journaled(&*journal, id).await;
    assert_eq!(outcome["outcome"]["result"], "failed", "{outcome}");
    assert_eq!(outcome["outcome"]["reason"], "no-quorum");
    let voters = outcome["voters"].as_array().unwrap();
    let cancelled = voters.iter().filter(|v| v["state"] == "cancelled").count();
    let succeeded = voters.iter().filter(|v| v["state"] == "succeeded").count();
    // Ids are planned anew: at least the three workers fewer are gone.
    assert!(cancelled >= 3, "{outcome}");
    assert_eq!(cancelled + succeeded, 6, "{outcome}");
    assert!(
        voters
            .iter()
            .filter(|v| v["state"] == "cancelled")
            .all(|v| v["problem"].as_str().unwrap().contains("left its pool")),
        "{outcome}"
    );
    assert_eq!(
        ran.lock().unwrap().len(),
        succeeded,
        "the voters still there voted"
    );
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn ballots_of_a_decision_closed_before_a_crash_are_cancelled_not_run() {
    // What a crash leaves when it strikes after a decision is closed and before its
    // stragglers' cancellations are written: the decision ended, two ballots unfinished.
    let journal = Arc::new(MemoryJournal::new());
    let first = journal.next_task_id();
    let seats = (0..3)
        .map(|i| colony_journal::Seat {
            agent: AgentId(1 + i),
            pool: 0,
            weight: 1.0,
        })
        .collect();
    let opening = colony_journal::Opening {
        options: serde_json::to_string(&DecisionOptions::default())
            .unwrap()
            .into(),
        seats,
        asked: 3,
        opened_at_ms: unix_ms(),
    };
    journal
        .open_decision(
            first,
            &[ballot_task(1_000), ballot_task(1_000), ballot_task(1_000)],
            opening,
        )
        .await
        .unwrap();
    journal
        .record(vec![colony_journal::Record::Started {
            task: TaskId(first.0 + 1),
            attempt: 1,
            agent: AgentId(2),
        }])
        .await
        .unwrap();
    journal.close_decision(first, "{}".into()).await.unwrap();
    let (runtime, ran) = start_on(4, |_| Answer::Says("late", 0), journal.clone()).await;
    runtime.handle().drain().await.unwrap();
    for i in 0..3 {
        let row = journal.task(TaskId(first.0 + i)).unwrap().unwrap();
        assert_eq!(row.state, TaskState::Cancelled, "{row:?}");
    }
    assert!(
        ran.lock().unwrap().is_empty(),
        "no ballot ran: {:?}",
        ran.lock().unwrap()
    );
    assert_eq!(
        journal.decision(first).unwrap().unwrap().outcome.as_deref(),
        Some("{}"),
        "the outcome stands"
    );
    runtime.shutdown().await;
}

/// The workers of the reputation test, in id order, and the phase it is in.
static WORKERS: std::sync::OnceLock<Vec<AgentId>> = std::sync::OnceLock::new();
static JUDGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Seven workers: while training, the first four are right and the last three wrong; then
/// the first two say `A`, the next two fail, and the last three say `B`.
fn by_rank(agent: AgentId) -> Answer {
    let rank = WORKERS
        .get()
        .and_then(|w| w.iter().position(|&a| a == agent))
        .unwrap_or(0);
    match (JUDGED.load(std::sync::atomic::Ordering::SeqCst), rank) {
        // The wrong answers come first, so that every ballot is counted before it is decided.
        (false, 0..=3) => Answer::Says("right", 2),
        (false, _) => Answer::Says("wrong", 1),
        (true, 0..=1) => Answer::Says("A", 1),
        (true, 2..=3) => Answer::Fails,
        (true, _) => Answer::Says("B", 1),
    }
}

#[tokio::test(start_paused = true)]
async fn agreement_with_decided_outcomes_moves_reputations_and_weighs_votes_that_ask() {
    let (runtime, _) = start(7, by_rank).await;
    let h = runtime.handle();
    let workers = workers_of(h).await;
    assert_eq!(workers.len(), 7);
    WORKERS.set(workers.clone()).unwrap();
    // Five votes the first four win, 4 to 3.
    for _ in 0..5 {
        let decided = majority(h, 7, 1_000).await;
        assert_eq!(&*decided.outcome.winner().expect("decided").value, "right");
    }
    let reputations = h
        .observe(move |live| {
            workers
                .iter()
                .map(|&a| live.reputation(a))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
    for (rank, r) in reputations.iter().enumerate() {
        // Each vote: a check of the answer (passed) and the agreement, or dissent.
        assert!(r.observations() >= 5, "{rank}: {r:?}");
        if rank < 4 {
            assert!(r.score() > 0.9, "{rank}: {r:?}");
        } else {
            assert!((0.4..0.6).contains(&r.score()), "{rank}: {r:?}");
        }
    }

    // Three voters of middling reputation against two trusted ones: weighed by reputation,
    // the two win...
    JUDGED.store(true, std::sync::atomic::Ordering::SeqCst);
    let weighted = DecisionOptions::with(Protocol::Weighted);
    let vote = Vote {
        reputation: true,
        ..Vote::new(7, weighted)
    };
    let trusted = h
        .decide(ballot_task(1_000), vote)
        .await
        .unwrap()
        .outcome()
        .await
        .unwrap();
    assert_eq!(&*trusted.outcome.winner().expect("decided").value, "A");
    // ...by count, the three.
    let plain = h
        .decide(ballot_task(1_000), Vote::new(7, weighted))
        .await
        .unwrap()
        .outcome()
        .await
        .unwrap();
    assert_eq!(&*plain.outcome.winner().expect("decided").value, "B");
    // Weights by reputation are refused where they would not count.
    let refused = h
        .decide(
            ballot_task(1_000),
            Vote {
                reputation: true,
                ..Vote::new(3, DecisionOptions::default())
            },
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("weights by reputation"),
        "{refused}"
    );
    runtime.shutdown().await;
}

/// The workers of the tree, in id order.
async fn workers_of(h: &Handle) -> Vec<AgentId> {
    h.inspect(|tree| {
        (0..tree.len() as u32)
            .map(AgentId)
            .filter(|&a| tree.tier(a) == tree.worker_tier())
            .collect()
    })
    .await
    .unwrap()
}

/// Decision `vote` on `spec`, run to its end.
async fn run_vote(h: &Handle, spec: TaskSpec, vote: Vote) -> Decided {
    h.decide(spec, vote).await.unwrap().outcome().await.unwrap()
}

/// Workers answering by their id, their payload and how many tasks they ran before.
type Script = fn(AgentId, &serde_json::Value, u32) -> Answer;

struct Scripted {
    script: Script,
    asked: Arc<Mutex<HashMap<AgentId, u32>>>,
    seen: Arc<Mutex<Vec<(AgentId, serde_json::Value)>>>,
}

type Seen = Arc<Mutex<Vec<(AgentId, serde_json::Value)>>>;

impl Agent for Scripted {
    fn handle(&self, task: Task) -> Execution {
        let payload: serde_json::Value =
            serde_json::from_slice(&task.payload).unwrap_or(serde_json::Value::Null);
        let before = {
            let mut asked = self.asked.lock().unwrap();
            let n = asked.entry(task.agent).or_default();
            *n += 1;
            *n - 1
        };
        self.seen
            .lock()
            .unwrap()
            .push((task.agent, payload.clone()));
        match (self.script)(task.agent, &payload, before) {
            Answer::Fails => Execution::Done(Err(AgentError::fatal("this one always fails"))),
            Answer::Says(text, ms) => Execution::Running(Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Bytes::from(text))
            })),
            Answer::Hangs => Execution::Running(Box::pin(std::future::pending())),
        }
    }
}

async fn start_scripted(
    workers: u32,
    script: Script,
    journal: Arc<dyn colony_journal::Journal>,
) -> (Runtime, Seen) {
    let seen = Seen::default();
    let agent = Scripted {
        script,
        asked: Arc::default(),
        seen: seen.clone(),
    };
    let options = RuntimeOptions {
        span: 8,
        tiers: Tiers::Named(vec!["supervisor".into(), "worker".into()]),
        ..RuntimeOptions::default()
    };
    let pool = Pool::new(AgentSpec::new("voter", "worker"), workers, Arc::new(agent));
    let runtime = Runtime::start(options, vec![pool], journal).await.unwrap();
    (runtime, seen)
}

fn question() -> TaskSpec {
    TaskSpec {
        payload: Bytes::from_static(br#"{"q":"which?"}"#),
        ..ballot_task(1_000)
    }
}

#[tokio::test(start_paused = true)]
async fn fast_asks_every_voter_again_when_its_first_round_falls_short() {
    // Round 0 splits 2 to 2 (short of 3 of 4); asked again, three say `a`.
    fn script(agent: AgentId, _: &serde_json::Value, before: u32) -> Answer {
        match (before, agent.0 % 2) {
            (0, 0) => Answer::Says("a", 1),
            (0, _) => Answer::Says("b", 1),
            (_, 0) => Answer::Says("a", 1),
            _ if agent.0 % 4 == 1 => Answer::Says("a", 2),
            _ => Answer::Says("b", 3),
        }
    }
    let journal = Arc::new(MemoryJournal::new());
    let (runtime, seen) = start_scripted(4, script, journal.clone()).await;
    let h = runtime.handle();
    let vote = Vote::new(4, DecisionOptions::with(Protocol::Fast));
    let decided = run_vote(h, question(), vote).await;
    let winner = decided.outcome.winner().expect("decided in round 1");
    assert_eq!(&*winner.value, "a");
    assert_eq!(decided.outcome.record().round, 1);
    let row = journal.decision(decided.id).unwrap().unwrap();
    assert_eq!(row.calls.len(), 1, "one call: round 1");
    let (first, call) = &row.calls[0];
    assert_eq!((call.round, call.role), (1, colony_journal::Role::Ballot));
    assert_eq!(call.asked.len(), 4);
    for (i, voter) in decided.voters.iter().enumerate() {
        assert_eq!(
            voter.task,
            Some(TaskId(first.0 + i as u64)),
            "the latest task"
        );
        assert_eq!(voter.agent, call.asked[i].agent);
    }
    assert_eq!(seen.lock().unwrap().len(), 8, "each voter asked twice");
    // Three of four agreeing decide at once, in round 0.
    fn agreeing(agent: AgentId, _: &serde_json::Value, _: u32) -> Answer {
        Answer::Says(if agent.0.is_multiple_of(4) { "b" } else { "a" }, 1)
    }
    runtime.shutdown().await;
    let (runtime, seen) = start_scripted(4, agreeing, Arc::new(MemoryJournal::new())).await;
    let vote = Vote::new(4, DecisionOptions::with(Protocol::Fast));
    let decided = run_vote(runtime.handle(), question(), vote).await;
    assert_eq!(decided.outcome.record().round, 0);
    assert_eq!(seen.lock().unwrap().len(), 4);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_proposes_and_the_others_review_until_one_is_accepted() {
    // Each proposes `plan-<its id>`; reviewers approve only odd ids' plans.
    fn script(agent: AgentId, payload: &serde_json::Value, _: u32) -> Answer {
        let Some(proposal) = payload["review"]["proposal"].as_str() else {
            return Answer::Says(Box::leak(format!("plan-{}", agent.0).into_boxed_str()), 1);
        };
        let id: u32 = proposal.trim_start_matches("plan-").parse().unwrap();
        Answer::Says(if id % 2 == 1 { "approve" } else { "Reject." }, 1)
    }
    let journal = Arc::new(MemoryJournal::new());
    let (runtime, seen) = start_scripted(5, script, journal.clone()).await;
    let h = runtime.handle();
    let vote = Vote::new(5, DecisionOptions::with(Protocol::Leader));
    let decided = run_vote(h, question(), vote).await;
    let winner = decided.outcome.winner().expect("a proposal accepted");
    let round = decided.outcome.record().round as usize;
    let proposer = decided.voters[round].agent;
    assert_eq!(&*winner.value, format!("plan-{}", proposer.0));
    assert_eq!(proposer.0 % 2, 1, "an approved plan");
    for earlier in &decided.voters[..round] {
        assert_eq!(earlier.agent.0 % 2, 0, "only rejected plans came before");
    }
    assert_eq!(winner.voters.len(), 4, "every reviewer approved");
    // Reviewers saw the proposal and the task.
    let seen = seen.lock().unwrap().clone();
    let reviews: Vec<_> = seen
        .iter()
        .filter(|(_, p)| p.get("review").is_some())
        .collect();
    assert_eq!(reviews.len(), 4 * (round + 1));
    assert!(
        reviews
            .iter()
            .all(|(_, p)| p["q"] == "which?" && p["review"]["proposal"].is_string())
    );
    // Journaled: the opening asked the first proposer alone, then reviews and proposals.
    let row = journal.decision(decided.id).unwrap().unwrap();
    assert_eq!(row.opening.asked, 1);
    let roles: Vec<_> = row.calls.iter().map(|(_, c)| (c.round, c.role)).collect();
    let mut want = vec![(0, colony_journal::Role::Review)];
    for r in 1..=round as u32 {
        want.push((r, colony_journal::Role::Proposal));
        want.push((r, colony_journal::Role::Review));
    }
    assert_eq!(roles, want);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_tie_under_judge_is_settled_by_a_worker_that_did_not_vote() {
    fn script(agent: AgentId, payload: &serde_json::Value, _: u32) -> Answer {
        if let Some(candidates) = payload["judge"]["candidates"].as_array() {
            assert_eq!(candidates.len(), 2);
            return Answer::Says("1", 1);
        }
        Answer::Says(if agent.0.is_multiple_of(2) { "x" } else { "y" }, 1)
    }
    let journal = Arc::new(MemoryJournal::new());
    let (runtime, _) = start_scripted(3, script, journal.clone()).await;
    let h = runtime.handle();
    let options = DecisionOptions {
        tie: Tie::Judge,
        ..DecisionOptions::default()
    };
    let decided = h
        .decide(question(), Vote::new(2, options))
        .await
        .unwrap()
        .outcome()
        .await
        .unwrap();
    let winner = decided.outcome.winner().expect("the judge decided");
    assert_eq!(winner.tie_break, Some(decision::TieBreak::Judge));
    let judge = decided.judge.as_ref().expect("a judge was asked");
    assert!(decided.voters.iter().all(|v| v.agent != judge.agent));
    assert_eq!(judge.state, Some(TaskState::Succeeded));
    let candidates = &decided.outcome.record().candidates;
    assert_eq!(winner.value, candidates[1].value, "the judge chose index 1");
    let row = journal.decision(decided.id).unwrap().unwrap();
    assert_eq!(row.calls[0].1.role, colony_journal::Role::Judge);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_fast_decision_recovered_in_its_second_round_counts_both_rounds_from_the_journal() {
    // Before the crash: round 0 split 2 to 2, round 1 asked, two of its ballots in (`a`).
    let journal = Arc::new(MemoryJournal::new());
    let seats: Vec<colony_journal::Seat> = (0..4)
        .map(|i| colony_journal::Seat {
            agent: AgentId(1 + i),
            pool: 0,
            weight: 1.0,
        })
        .collect();
    let options = DecisionOptions {
        timeout: Duration::from_secs(60),
        ..DecisionOptions::with(Protocol::Fast)
    };
    let first = journal.next_task_id();
    let opening = colony_journal::Opening {
        options: serde_json::to_string(&options).unwrap().into(),
        seats: seats.clone(),
        asked: 4,
        opened_at_ms: unix_ms(),
    };
    journal
        .open_decision(first, &vec![question(); 4], opening)
        .await
        .unwrap();
    let done = |task: TaskId, agent: AgentId, says: &'static str| {
        vec![
            colony_journal::Record::Started {
                task,
                attempt: 1,
                agent,
            },
            colony_journal::Record::Committed {
                task,
                attempt: 1,
                output: Bytes::from_static(says.as_bytes()),
            },
        ]
    };
    for i in 0..4u64 {
        let says = if i < 2 { "a" } else { "b" };
        let records = done(TaskId(first.0 + i), seats[i as usize].agent, says);
        journal.record(records).await.unwrap();
    }
    let second = journal.next_task_id();
    let call = colony_journal::Call {
        round: 1,
        role: colony_journal::Role::Ballot,
        asked: seats.clone(),
        at_ms: unix_ms(),
    };
    journal
        .ask(first, second, &vec![question(); 4], call)
        .await
        .unwrap();
    for i in 0..2u64 {
        let records = done(TaskId(second.0 + i), seats[i as usize].agent, "a");
        journal.record(records).await.unwrap();
    }
    // After it: the two unfinished ballots run on their voters and say `a` too.
    fn script(_: AgentId, _: &serde_json::Value, _: u32) -> Answer {
        Answer::Says("a", 1)
    }
    let (runtime, seen) = start_scripted(4, script, journal.clone()).await;
    let h = runtime.handle();
    let outcome = loop {
        if let Some(o) = journal.decision(first).unwrap().unwrap().outcome {
            break o;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let outcome: serde_json::Value = serde_json::from_str(&outcome).unwrap();
    assert_eq!(outcome["outcome"]["winner"]["value"], "a", "{outcome}");
    assert_eq!(outcome["outcome"]["record"]["round"], 1);
    let ballots = outcome["outcome"]["record"]["ballots"].as_array().unwrap();
    assert!(
        ballots.len() >= 7,
        "round 0's four and round 1's: {outcome}"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|(agent, _)| seats[2..].iter().any(|s| s.agent == *agent)),
        "only the two unfinished ballots ran, on their voters: {seen:?}"
    );
    assert!(seen.len() <= 2);
    h.drain().await.unwrap();
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_hard_task_goes_to_the_best_reputed_worker_with_room() {
    let (runtime, ran) = start(6, |_| Answer::Says("ok", 1)).await;
    let h = runtime.handle();
    let workers = workers_of(h).await;
    // The fourth worker agreed with ten outcomes, the others dissented from as many.
    let star = workers[3];
    let votes = workers
        .iter()
        .flat_map(|&w| std::iter::repeat_n((w, w == star), 10))
        .collect();
    h.agreed(votes);
    let hard = TaskSpec {
        requirement: colony_core::task::Requirement {
            hard: true,
            ..Default::default()
        },
        ..ballot_task(1_000)
    };
    for _ in 0..3 {
        let pending = h.submit_notify(hard.clone()).await.unwrap();
        let id = pending.id;
        let ended = pending.await.unwrap();
        assert_eq!(ended.state, TaskState::Succeeded);
        let on = ran.lock().unwrap().last().copied().unwrap();
        assert_eq!(on, (id, star), "a hard task ran on the best-reputed worker");
    }
    // Plain tasks spread by load, as before.
    let mut plain = HashSet::new();
    for _ in 0..12 {
        h.submit_wait(ballot_task(1_000)).await.unwrap();
        plain.insert(ran.lock().unwrap().last().unwrap().1);
    }
    assert!(plain.len() > 1, "{plain:?}");
    runtime.shutdown().await;
}

async fn reputations_of(h: &Handle, workers: Vec<AgentId>) -> Vec<Reputation> {
    h.observe(move |live| workers.iter().map(|&w| live.reputation(w)).collect())
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn reputations_outlive_the_process_in_its_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, _) = start_on(3, |_| Answer::Says("ok", 1), reopen(&dir)).await;
    let h = runtime.handle();
    let workers = workers_of(h).await;
    let votes = (0..8).map(|i| (workers[0], i % 4 != 0)).collect();
    h.agreed(votes);
    h.agreed(vec![(workers[1], false)]);
    let before = reputations_of(h, workers.clone()).await;
    assert!(
        before[0].score() > 0.6 && before[1].score() < 0.5,
        "{before:?}"
    );
    runtime.shutdown().await;
    // A row naming an agent as a worker of another pool is not taken up.
    let journal = reopen(&dir);
    assert_eq!(journal.reputations().unwrap().len(), 2);
    let elsewhere = colony_journal::ReputationRow {
        agent: workers[2],
        pool: 1,
        score: 0.9,
        observations: 50,
    };
    journal.record_reputations(vec![elsewhere]).await.unwrap();
    drop(journal);
    // A new process over the same journal starts them where they stood.
    let (runtime, _) = start_on(3, |_| Answer::Says("ok", 1), reopen(&dir)).await;
    let after = reputations_of(runtime.handle(), workers.clone()).await;
    assert_eq!(after[..2], before[..2]);
    assert_eq!(
        after[2],
        Reputation::new(),
        "pool 1's row is not pool 0's worker's"
    );
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_round_that_finds_no_room_before_its_deadline_is_not_asked() {
    // Round 0 splits 2 to 2; by then, submitters waiting for room take the room its ballots
    // give back, and hold it: round 1 cannot be asked before the deadline.
    fn script(agent: AgentId, payload: &serde_json::Value, _: u32) -> Answer {
        if payload["hang"] == true {
            return Answer::Hangs;
        }
        Answer::Says(if agent.0.is_multiple_of(2) { "a" } else { "b" }, 10)
    }
    let journal = Arc::new(MemoryJournal::new());
    let (runtime, _) = start_scripted(4, script, journal.clone()).await;
    let h = runtime.handle().clone();
    let options = DecisionOptions {
        timeout: Duration::from_secs(2),
        ..DecisionOptions::with(Protocol::Fast)
    };
    let voting = h.decide(question(), Vote::new(4, options)).await.unwrap();
    let capacity = h.stats().capacity as usize;
    let hang = TaskSpec {
        payload: Bytes::from_static(br#"{"hang":true}"#),
        ..ballot_task(60_000)
    };
    // All the room but the ballots' is taken now; four more wait for theirs.
    let filler = h.clone();
    let fill = crate::spawner::Spawner::spawn("filler", async move {
        for _ in 0..capacity {
            filler.submit(hang.clone()).await.unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    let decided = voting.outcome().await.unwrap();
    assert_eq!(
        decided.outcome.reason(),
        Some(Reason::NoQuorum),
        "{decided:?}"
    );
    assert_eq!(decided.outcome.record().round, 1);
    assert!(
        decided
            .voters
            .iter()
            .all(|v| v.problem.as_deref() == Some("no room to ask it before the round's deadline")),
        "{:?}",
        decided.voters
    );
    let row = journal.decision(decided.id).unwrap().unwrap();
    assert!(row.calls.is_empty(), "round 1 was never asked");
    fill.await.unwrap().expect("the filler did not panic");
    runtime.shutdown().await;
}

/// How an agent that answers inline answers, by its id and how many times it was asked.
type InlineScript = fn(AgentId, u32) -> Execution;

/// Agents that say they answer inside their handler ([`Agent::answers_inline`]), each asked
/// written down with the task id it saw.
struct Inline {
    script: InlineScript,
    asked: Arc<Mutex<Vec<(TaskId, AgentId)>>>,
}

impl Agent for Inline {
    fn answers_inline(&self) -> bool {
        true
    }

    fn handle(&self, task: Task) -> Execution {
        let before = {
            let mut asked = self.asked.lock().unwrap();
            asked.push((task.id, task.agent));
            asked.iter().filter(|(_, a)| *a == task.agent).count() as u32 - 1
        };
        (self.script)(task.agent, before)
    }
}

async fn start_inline(
    workers: u32,
    script: InlineScript,
    journal: Arc<dyn colony_journal::Journal>,
) -> (Runtime, Ran) {
    let asked = Ran::default();
    let agent = Inline {
        script,
        asked: asked.clone(),
    };
    let options = RuntimeOptions {
        span: 4,
        tiers: Tiers::Named(vec!["supervisor".into(), "worker".into()]),
        ..RuntimeOptions::default()
    };
    let pool = Pool::new(AgentSpec::new("voter", "worker"), workers, Arc::new(agent));
    (
        Runtime::start(options, vec![pool], journal).await.unwrap(),
        asked,
    )
}

/// The outcome `journal` holds for `decided`, read as the API reads it: for a decision taken
/// inline, counted again from its journaled answers. It must be the outcome the caller got.
fn read_back(journal: &dyn colony_journal::Journal, decided: &Decided) -> serde_json::Value {
    let row = journal.decision(decided.id).unwrap().expect("journaled");
    let kept = row.outcome.as_deref().unwrap();
    assert!(
        kept.len() < serde_json::to_string(decided).unwrap().len(),
        "the journal keeps the answers, smaller than the outcome: {kept}"
    );
    let read = outcome_of(&row).unwrap().expect("ended");
    assert_eq!(read, serde_json::to_value(decided).unwrap());
    read
}

fn says(text: &'static str) -> Execution {
    Execution::Done(Ok(Bytes::from_static(text.as_bytes())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_that_answer_inline_decide_in_one_journal_write_without_ballot_tasks() {
    // Every third worker says no; the rest yes: yes is certain after four of seven.
    fn script(agent: AgentId, _: u32) -> Execution {
        says(if agent.0.is_multiple_of(3) {
            "no"
        } else {
            "yes"
        })
    }
    let dir = tempfile::tempdir().unwrap();
    let journal = reopen(&dir);
    let (runtime, asked) = start_inline(7, script, journal.clone()).await;
    let h = runtime.handle().clone();
    let first = journal.next_task_id();
    let voting = h
        .decide(question(), Vote::new(7, DecisionOptions::default()))
        .await
        .unwrap();
    let seated = voting.voters().to_vec();
    let decided = voting.outcome().await.unwrap();
    assert!(decided.inline);
    assert_eq!(
        seated, decided.voters,
        "the vote shows the voters as they answered"
    );
    assert_eq!(
        decided.id, first,
        "the decision's own task takes the next id"
    );
    let winner = decided.outcome.winner().expect("decided");
    assert_eq!(&*winner.value, "yes");
    // Asked in seat order until the outcome was certain, each once, and no more.
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.len() as u32, decided.asked);
    assert!(
        decided.asked < 7,
        "the last voters are not asked once yes is certain"
    );
    for (i, voter) in decided.voters.iter().enumerate() {
        assert_eq!(voter.task, None, "no ballot task");
        if i < asked.len() {
            assert_eq!(
                asked[i],
                (first, voter.agent),
                "asked for the decision, in order"
            );
            assert_eq!(voter.state, Some(TaskState::Succeeded));
        } else {
            assert_eq!(voter.state, None, "{voter:?} was not asked");
        }
    }
    let yes = asked.iter().filter(|(_, a)| !a.0.is_multiple_of(3)).count();
    assert_eq!(winner.voters.len(), yes);
    // One task in the journal, the question, ended with the value; the decision closed with
    // every ballot; the ids go on from it.
    let row = journal.task(first).unwrap().expect("its task");
    assert_eq!(row.state, TaskState::Succeeded);
    assert_eq!(row.output.as_deref(), Some(&b"yes"[..]));
    assert_eq!(journal.counts().unwrap().total(), 1, "no ballot tasks");
    let outcome = read_back(&*journal, &decided);
    assert_eq!(outcome["inline"], true);
    assert_eq!(outcome["id"], first.0);
    assert_eq!(
        outcome["outcome"]["record"]["ballots"]
            .as_array()
            .unwrap()
            .len(),
        asked.len()
    );
    let next = h.submit_wait(TaskSpec::default()).await.unwrap();
    assert_eq!(next.id, TaskId(first.0 + 1));
    runtime.shutdown().await;
    drop((h, journal));
    // Read back as a new process would: closed, nothing to recover.
    let journal = reopen(&dir);
    read_back(&*journal, &decided);
    let row = journal.decision(first).unwrap().expect("kept");
    assert_eq!(row.opening.asked, 0);
    assert_eq!(row.opening.seats.len(), 7);
    assert!(row.outcome.is_some());
    assert_eq!(journal.open_decisions().unwrap(), []);
    assert_eq!(journal.unfinished().unwrap(), []);
}

#[tokio::test(start_paused = true)]
async fn an_inline_answer_that_fails_panics_or_is_not_inline_is_silent_and_says_why() {
    fn script(agent: AgentId, _: u32) -> Execution {
        match agent.0 % 4 {
            0 => Execution::Done(Err(AgentError::fatal("no opinion"))),
            1 => panic!("a voter fell over"),
            2 => Execution::Running(Box::pin(async { Ok(Bytes::from_static(b"a")) })),
            _ => says("a"),
        }
    }
    let journal = Arc::new(MemoryJournal::new());
    let (runtime, _) = start_inline(4, script, journal.clone()).await;
    let h = runtime.handle();
    let decided = run_vote(h, question(), Vote::new(4, DecisionOptions::default())).await;
    assert!(decided.inline);
    assert_eq!(decided.outcome.reason(), Some(Reason::NoQuorum));
    assert_eq!(decided.asked, 4);
    let problem = |n: u32| {
        let voter = decided.voters.iter().find(|v| v.agent.0 % 4 == n).unwrap();
        assert_eq!(voter.state, Some(TaskState::Failed), "{voter:?}");
        voter.problem.as_deref().unwrap().to_owned()
    };
    assert!(problem(0).contains("no opinion"), "{}", problem(0));
    assert!(problem(1).contains("a voter fell over"), "{}", problem(1));
    assert!(
        problem(2).contains("did not answer inside"),
        "{}",
        problem(2)
    );
    read_back(&*journal, &decided);
    let row = journal.task(decided.id).unwrap().unwrap();
    assert_eq!(
        row.state,
        TaskState::Failed,
        "a failed decision is no success"
    );
    assert_eq!(row.error.as_deref(), Some("no-quorum"));
    // Nothing was left behind: no ballot task, no load, no demand.
    nothing_left(h).await;
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn fast_asks_inline_voters_again_and_a_judge_still_gets_a_task() {
    // Round 0 splits 2 to 2; asked again, three of four say a.
    fn script(agent: AgentId, before: u32) -> Execution {
        match (before, agent.0 % 2) {
            (0, 0) | (_, 0) => says("a"),
            (0, _) => says("b"),
            _ if agent.0 % 4 == 1 => says("a"),
            _ => says("b"),
        }
    }
    let journal = Arc::new(MemoryJournal::new());
    let (runtime, asked) = start_inline(4, script, journal.clone()).await;
    let h = runtime.handle();
    let decided = run_vote(
        h,
        question(),
        Vote::new(4, DecisionOptions::with(Protocol::Fast)),
    )
    .await;
    assert!(decided.inline);
    read_back(&*journal, &decided);
    assert_eq!(decided.outcome.record().round, 1);
    assert_eq!(&*decided.outcome.winner().unwrap().value, "a");
    assert_eq!(asked.lock().unwrap().len() as u32, decided.asked);
    assert!(decided.asked > 4, "every voter asked in round 0, and again");
    runtime.shutdown().await;

    // A tie under `judge` may need a judge asked after the ballots: ballot tasks, as ever.
    fn split(agent: AgentId, _: u32) -> Execution {
        says(if agent.0.is_multiple_of(2) { "a" } else { "b" })
    }
    let (runtime, _) = start_inline(5, split, Arc::new(MemoryJournal::new())).await;
    let options = DecisionOptions {
        tie: Tie::Judge,
        ..DecisionOptions::default()
    };
    let decided = run_vote(runtime.handle(), question(), Vote::new(4, options)).await;
    assert!(!decided.inline);
    assert!(decided.voters.iter().all(|v| v.task.is_some()));
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_past_the_deadline_are_not_asked_inline() {
    // Each answer takes 3 ms and the votes split: nothing decides before the 10 ms deadline,
    // after which nobody more is asked and the round closes.
    fn slow(agent: AgentId, _: u32) -> Execution {
        std::thread::sleep(Duration::from_millis(3));
        says(if agent.0.is_multiple_of(2) { "a" } else { "b" })
    }
    let journal = Arc::new(MemoryJournal::new());
    let (runtime, asked) = start_inline(9, slow, journal.clone()).await;
    let options = DecisionOptions {
        timeout: Duration::from_millis(10),
        ..DecisionOptions::default()
    };
    let decided = run_vote(runtime.handle(), question(), Vote::new(9, options)).await;
    assert!(decided.inline);
    assert!(decided.outcome.winner().is_none(), "{:?}", decided.outcome);
    let n = asked.lock().unwrap().len();
    assert_eq!(n as u32, decided.asked);
    assert!(n < 9, "{n} asked: those after the deadline are not");
    assert_eq!(
        decided.voters.iter().filter(|v| v.state.is_none()).count(),
        9 - n
    );
    // The answer that crossed the deadline is kept, not counted, and says so.
    let late: Vec<_> = decided
        .voters
        .iter()
        .filter_map(|v| v.problem.as_deref())
        .collect();
    assert_eq!(late, ["its answer came after its round's deadline"]);
    read_back(&*journal, &decided);
    runtime.shutdown().await;
}

/// The runtime the racing agent submits to while it answers.
static RACING: std::sync::OnceLock<Handle> = std::sync::OnceLock::new();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_accepted_while_voters_answer_inline_has_them_asked_again_under_the_decision_id() {
    // The first answer submits a task and waits until it is accepted: the id the voters were
    // told is then that task's, so they are asked again, told the decision's.
    fn racing(_: AgentId, before: u32) -> Execution {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let h = RACING.get().unwrap().clone();
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = done.clone();
            crate::spawner::Spawner::spawn("racing-submit", async move {
                h.submit(TaskSpec::default()).await.unwrap();
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::yield_now();
            }
        });
        let _ = before;
        says("yes")
    }
    let journal = Arc::new(MemoryJournal::new());
    let (runtime, asked) = start_inline(3, racing, journal.clone()).await;
    RACING.set(runtime.handle().clone()).unwrap();
    let first = journal.next_task_id();
    let decided = run_vote(
        runtime.handle(),
        question(),
        Vote::new(3, DecisionOptions::default()),
    )
    .await;
    assert!(decided.inline);
    assert_eq!(
        decided.id,
        TaskId(first.0 + 1),
        "the submitted task took the id peeked"
    );
    // Told the id peeked (which the submitted task, run on one of them too, took), then the
    // decision's, as many times as the decision counts answers.
    let told: Vec<TaskId> = asked.lock().unwrap().iter().map(|&(id, _)| id).collect();
    let under = |id: TaskId| told.iter().filter(|&&t| t == id).count();
    assert_eq!(under(decided.id), decided.asked as usize, "{told:?}");
    assert!(under(first) >= 1, "first told the id peeked: {told:?}");
    assert_eq!(told[0], first, "{told:?}");
    read_back(&*journal, &decided);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_record_that_does_not_count_again_to_what_was_decided_is_unreadable() {
    fn script(agent: AgentId, _: u32) -> Execution {
        says(if agent.0.is_multiple_of(3) {
            "no"
        } else {
            "yes"
        })
    }
    let journal = Arc::new(MemoryJournal::new());
    let (runtime, _) = start_inline(5, script, journal.clone()).await;
    let decided = run_vote(
        runtime.handle(),
        question(),
        Vote::new(5, DecisionOptions::default()),
    )
    .await;
    runtime.shutdown().await;
    let row = journal.decision(decided.id).unwrap().unwrap();
    let kept: serde_json::Value = serde_json::from_str(row.outcome.as_deref().unwrap()).unwrap();
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut record = kept.clone();
        edit(&mut record);
        let row = colony_journal::DecisionRow {
            outcome: Some(record.to_string().into()),
            ..row.clone()
        };
        outcome_of(&row).map(|_| ()).unwrap_err().to_string()
    };
    // Each distinct answer is listed once, and each voter's is its index.
    assert_eq!(kept["format"], 2);
    assert_eq!(kept["texts"], serde_json::json!(["yes", "no"]), "{kept}");
    assert_eq!(
        kept["said"].as_array().unwrap().len(),
        decided.asked as usize
    );
    // Every answer turned to "no": counted again, it no longer gives "yes".
    let turned = with(&|r| {
        for said in r["said"].as_array_mut().unwrap() {
            *said = 1.into();
        }
    });
    assert!(turned.contains("counted again it gives"), "{turned}");
    let newer = with(&|r| r["format"] = 3.into());
    assert!(newer.contains("format 3"), "{newer}");
    let short = with(&|r| r["said"].as_array_mut().unwrap().truncate(1));
    assert!(short.contains("does not read"), "{short}");
    let beyond = with(&|r| r["said"][0] = 2.into());
    assert!(
        beyond.contains("an answer is text 2, but it lists 2"),
        "{beyond}"
    );
    // Format 1 listed every voter's answer whole: it is still read, and counts the same.
    let whole = {
        let mut record = kept.clone();
        let texts = record["texts"].as_array().unwrap().clone();
        let said: Vec<serde_json::Value> = record["said"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| texts[i.as_u64().unwrap() as usize].clone())
            .collect();
        record["said"] = said.into();
        record["format"] = 1.into();
        // Its times in nanoseconds.
        for times in ["at", "closed"] {
            for t in record[times].as_array_mut().unwrap() {
                *t = (t.as_u64().unwrap() * 1_000).into();
            }
        }
        record.as_object_mut().unwrap().remove("texts");
        record
    };
    let row = colony_journal::DecisionRow {
        outcome: Some(whole.to_string().into()),
        ..row.clone()
    };
    assert_eq!(
        outcome_of(&row).unwrap().unwrap(),
        serde_json::to_value(&decided).unwrap()
    );
    let mixed = with(&|r| r["format"] = 1.into());
    assert!(mixed.contains("not listed as format 1"), "{mixed}");
}

#[test]
fn voters_saying_the_same_text_share_one_copy_and_text_that_is_not_utf8_is_refused() {
    let mut texts = Texts::default();
    let yes = texts.of(Ok(Bytes::from_static(b"yes"))).unwrap();
    let again = texts.of(Ok(Bytes::from(b"yes".to_vec()))).unwrap();
    assert!(Arc::ptr_eq(&yes, &again), "the same text is kept once");
    assert_eq!(&*texts.of(Ok(Bytes::from_static(b"no"))).unwrap(), "no");
    let refused = texts.of(Ok(Bytes::from_static(b"\xff\xfe"))).unwrap_err();
    assert!(refused.contains("not UTF-8"), "{refused}");
    let failed = texts.of(Err("it crashed".into())).unwrap_err();
    assert_eq!(failed, "it crashed");
    // Past the texts looked for, each answer is still read as it is, only listed anew.
    for i in 0..20 {
        let said = format!("answer {i}");
        assert_eq!(&*texts.of(Ok(Bytes::from(said.clone()))).unwrap(), said);
    }
    assert_eq!(texts.kept.len(), Texts::KEPT);
    let late = texts.of(Ok(Bytes::from_static(b"answer 19"))).unwrap();
    assert_eq!(&*late, "answer 19");
    assert!(Arc::ptr_eq(
        &texts.of(Ok(Bytes::from_static(b"yes"))).unwrap(),
        &yes
    ));
    // Every voter's answer is an index into the texts listed.
    assert_eq!(texts.order.len(), 27);
    assert_eq!(
        texts.said.len(),
        25,
        "yes, no, two errors, 20 answers, one repeat"
    );
    assert_eq!(&texts.order[..6], [0, 0, 1, 2, 3, 4]);
    assert_eq!(texts.order[26], 0);
    let listed: Vec<String> = texts
        .order
        .iter()
        .map(|&i| match &texts.said[i as usize] {
            Said::Text(t) => t.to_string(),
            Said::Nothing { error } => format!("error: {error}"),
        })
        .collect();
    assert!(listed[3].contains("not UTF-8"), "{}", listed[3]);
    assert_eq!(listed[4], "error: it crashed");
    assert_eq!(listed[25], "answer 19");
}

#[test]
fn answers_are_written_as_serde_writes_them() {
    let answers = |texts: Vec<Said>, said: Listed, closed: Vec<u64>, value: Option<&str>| Answers {
        format: Answers::FORMAT,
        texts,
        said,
        at: vec![0, 9, 10, 1_234_567, u64::MAX],
        closed,
        value: value.map(Arc::from),
        reason: value.is_none().then(|| Arc::from("no-quorum")),
    };
    let cases = [
        answers(
            vec![
                Said::Text("yes".into()),
                Said::Text("a \"quoted\"\nline \u{1F600}\\".into()),
                Said::Nothing {
                    error: "its agent panicked: \u{7}".into(),
                },
            ],
            Listed::Indices(vec![0, 1, 2, 0, 1]),
            vec![],
            Some("yes"),
        ),
        answers(vec![], Listed::Indices(vec![]), vec![5, 6], None),
        answers(
            vec![],
            Listed::Whole(vec![
                Said::Text("no".into()),
                Said::Nothing { error: "x".into() },
            ]),
            vec![u64::MAX],
            None,
        ),
    ];
    for case in cases {
        let ours = case.to_json().unwrap();
        assert_eq!(ours, serde_json::to_string(&case).unwrap());
        let read: Answers = serde_json::from_str(&ours).unwrap();
        assert_eq!(read.at, case.at);
    }
}

#[test]
fn options_are_written_as_serde_writes_them_and_kept_while_the_same() {
    let majority = DecisionOptions::default();
    let bft = DecisionOptions {
        protocol: Protocol::Bft,
        ..DecisionOptions::default()
    };
    let first = options_text(&majority).unwrap();
    assert_eq!(&*first, serde_json::to_string(&majority).unwrap());
    assert!(
        Arc::ptr_eq(&first, &options_text(&majority).unwrap()),
        "kept"
    );
    let other = options_text(&bft).unwrap();
    assert_eq!(&*other, serde_json::to_string(&bft).unwrap());
    let again = options_text(&majority).unwrap();
    assert_eq!(again, first, "written anew after other options, the same");
}

/// A caller that stops waiting while its decision's ballot tasks are being journaled (a
/// journal with a writer thread) leaves none of them running: they are cancelled, as a
/// dropped vote's are.
#[tokio::test(start_paused = true)]
async fn a_vote_dropped_while_its_ballots_are_journaled_cancels_them() {
    let (memory, journal) = lagging();
    let (runtime, ran) = start_on(3, |_| Answer::Hangs, journal).await;
    let h = runtime.handle();
    let first = memory.next_task_id();
    let vote = Vote::new(3, DecisionOptions::default());
    let waited = tokio::time::timeout(
        Duration::from_millis(20),
        h.decide(ballot_task(600_000), vote),
    )
    .await;
    assert!(waited.is_err(), "its ballots were still being journaled");
    let ballots: Vec<TaskId> = (0..3).map(|i| TaskId(first.0 + i)).collect();
    until_cancelled(&memory, &ballots, &format!("{:?}", ran.lock().unwrap())).await;
    nothing_left(h).await;
    runtime.shutdown().await;
}

/// The same for a later round's ballots: a vote dropped while they are being journaled has
/// them cancelled, though it had not heard of them yet.
#[tokio::test(start_paused = true)]
async fn a_vote_dropped_while_its_next_round_is_journaled_cancels_that_round() {
    dropped_while_round_one_is_asked(false).await;
}

/// And when the journal's answer had come, but the vote was dropped before reading it.
#[tokio::test(start_paused = true)]
async fn a_vote_dropped_with_its_next_rounds_acceptance_unread_cancels_that_round() {
    dropped_while_round_one_is_asked(true).await;
}

/// A `fast` vote whose round 1 never answers, dropped while round 1's ballots are being
/// journaled, or (`answered`) once the journal took them, its answer not read.
async fn dropped_while_round_one_is_asked(answered: bool) {
    // Round 0 splits 2 to 2, short of fast's 3 of 4; round 1's ballots would never answer.
    fn script(agent: AgentId, _: &serde_json::Value, before: u32) -> Answer {
        match before {
            0 => Answer::Says(if agent.0.is_multiple_of(2) { "a" } else { "b" }, 1),
            _ => Answer::Hangs,
        }
    }
    let (memory, journal) = lagging();
    let (runtime, seen) = start_scripted(4, script, journal).await;
    let h = runtime.handle();
    let spec = TaskSpec {
        payload: Bytes::from_static(br#"{"q":"which?"}"#),
        ..ballot_task(600_000)
    };
    let vote = Vote::new(4, DecisionOptions::with(Protocol::Fast));
    let voting = h.decide(spec, vote).await.unwrap();
    let round_one: Vec<TaskId> = (4..8).map(|i| TaskId(voting.id().0 + i)).collect();
    let mut outcome = Box::pin(voting.outcome());
    // Waited for until round 1's ballots are written, not yet durable.
    for polls in 0.. {
        if memory.task(round_one[0]).unwrap().is_some() {
            break;
        }
        assert!(polls < 1_000, "round 1 was never asked");
        assert!(futures::poll!(&mut outcome).is_pending());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if answered {
        // Not polled while the journal makes them durable and the dispatcher starts them.
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let running = round_one.iter().all(|&id| {
                memory.task(id).unwrap().map(|row| row.state) == Some(TaskState::Running)
            });
            if running {
                break;
            }
        }
    }
    drop(outcome);
    until_cancelled(&memory, &round_one, &format!("{:?}", seen.lock().unwrap())).await;
    nothing_left(h).await;
    runtime.shutdown().await;
}

/// With a journal that holds the ballots at once (in memory), a vote dropped after its
/// voters were seated and before it read their seats has its ballots cancelled too.
#[tokio::test(start_paused = true)]
async fn a_vote_dropped_before_it_read_its_seats_cancels_its_ballots() {
    let memory = Arc::new(MemoryJournal::new());
    let (runtime, ran) = start_on(3, |_| Answer::Hangs, memory.clone()).await;
    let h = runtime.handle();
    let first = memory.next_task_id();
    let vote = Vote::new(3, DecisionOptions::default());
    let mut deciding = Box::pin(h.decide(ballot_task(600_000), vote));
    assert!(
        futures::poll!(&mut deciding).is_pending(),
        "waits for its seats"
    );
    let ballots: Vec<TaskId> = (0..3).map(|i| TaskId(first.0 + i)).collect();
    for polls in 0.. {
        if memory.task(ballots[2]).unwrap().is_some() {
            break;
        }
        assert!(polls < 1_000, "the ballots were never asked");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(deciding);
    until_cancelled(&memory, &ballots, &format!("{:?}", ran.lock().unwrap())).await;
    nothing_left(h).await;
    runtime.shutdown().await;
}

/// A journal whose writes are durable 50 ms after they are made (in `memory` at once).
fn lagging() -> (Arc<MemoryJournal>, Arc<dyn colony_journal::Journal>) {
    let memory = Arc::new(MemoryJournal::new());
    let journal = Arc::new(crate::dispatcher::tests::Lagging {
        inner: memory.clone(),
        delay: Duration::from_millis(50),
    });
    (memory, journal)
}

/// Waits (a second at most) until every task of `tasks` ended cancelled.
async fn until_cancelled(memory: &MemoryJournal, tasks: &[TaskId], ran: &str) {
    let mut states = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        states = tasks
            .iter()
            .map(|&id| memory.task(id).unwrap().map(|row| row.state))
            .collect();
        if states.iter().all(|s| *s == Some(TaskState::Cancelled)) {
            return;
        }
    }
    panic!("{tasks:?} ended {states:?}, not all cancelled; ran: {ran}");
}
