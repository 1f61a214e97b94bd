//! The conformance suite every [`Journal`] implementation passes.
//!
//! ```
//! colony_journal::testing::Suite::test_all(colony_journal::MemoryJournal::new);
//! ```

use crate::{Error, Journal, Record};
use bytes::Bytes;
use colony_core::{AgentId, TaskId, task::TaskSpec, task::TaskState};
use futures::executor::block_on;

/// Runs every conformance case against fresh journals from `make`.
#[derive(Debug)]
pub struct Suite;

impl Suite {
    pub fn test_all<J: Journal>(make: impl Fn() -> J) {
        accepted_tasks_are_queued_with_dense_ids(&make());
        ids_must_continue(&make());
        a_result_commits_once(&make());
        late_results_are_fenced(&make());
        retries_move_the_lease(&make());
        terminal_states_are_final(&make());
        unfinished_lists_what_recovery_needs(&make());
        recent_lists_newest_first_by_state_and_page(&make());
        unknown_tasks_are_counted(&make());
        recovery_requeues_running_tasks(&make());
        the_hierarchy_is_recorded(&make());
        a_decision_opens_with_its_ballots_and_closes_once(&make());
        a_decision_needs_one_ballot_per_seat(&make());
        a_decision_asks_again_in_later_calls(&make());
        a_decision_taken_inline_is_one_task_ended_at_once(&make());
        reputations_are_kept_the_latest_per_agent(&make());
        a_task_that_ended_says_when(&make());
    }
}

fn accept<J: Journal>(j: &J, n: usize) -> TaskId {
    let first = j.next_task_id();
    let specs: Vec<TaskSpec> = (0..n)
        .map(|i| TaskSpec::with_payload(format!("{{\"n\":{i}}}")))
        .collect();
    block_on(j.accept(first, &specs)).expect("accept");
    first
}

fn record<J: Journal>(j: &J, batch: Vec<Record>) {
    block_on(j.record(batch)).expect("record");
}

fn nth(first: TaskId, i: u64) -> TaskId {
    TaskId(first.0 + i)
}

fn started(task: TaskId, attempt: u32) -> Record {
    Record::Started {
        task,
        attempt,
        agent: AgentId(attempt),
    }
}

fn committed(task: TaskId, attempt: u32, output: &str) -> Record {
    Record::Committed {
        task,
        attempt,
        output: output.to_owned().into(),
    }
}

fn failed(task: TaskId, attempt: u32, next: TaskState) -> Record {
    Record::Failed {
        task,
        attempt,
        error: "boom".into(),
        next,
    }
}

fn accepted_tasks_are_queued_with_dense_ids<J: Journal>(j: &J) {
    let first = accept(j, 3);
    assert_eq!(j.next_task_id(), nth(first, 3));
    let counts = j.counts().unwrap();
    assert_eq!((counts.queued, counts.total()), (3, 3));
    let row = j.task(nth(first, 2)).unwrap().expect("accepted task");
    assert_eq!(row.state, TaskState::Queued);
    assert_eq!(&row.spec.payload[..], b"{\"n\":2}");
    assert_eq!(j.task(nth(first, 3)).unwrap(), None);
}

fn ids_must_continue<J: Journal>(j: &J) {
    let first = accept(j, 1);
    let gap = nth(first, 5);
    let err = block_on(j.accept(gap, &[TaskSpec::default()])).unwrap_err();
    assert!(matches!(err, Error::IdOutOfOrder { .. }), "{err}");
    assert_eq!(j.counts().unwrap().total(), 1, "nothing half-written");
}

fn a_result_commits_once<J: Journal>(j: &J) {
    let t = accept(j, 1);
    record(
        j,
        vec![
            started(t, 1),
            committed(t, 1, "first"),
            committed(t, 1, "again"),
        ],
    );
    let row = j.task(t).unwrap().unwrap();
    assert_eq!(row.state, TaskState::Succeeded);
    assert_eq!(row.output.as_deref(), Some(&b"first"[..]));
    assert_eq!(row.agent, Some(AgentId(1)));
    assert_eq!(j.stats().fenced, 1);
}

fn late_results_are_fenced<J: Journal>(j: &J) {
    let t = accept(j, 1);
    record(j, vec![started(t, 1), started(t, 2)]);
    record(
        j,
        vec![committed(t, 1, "late"), failed(t, 1, TaskState::Failed)],
    );
    assert_eq!(j.task(t).unwrap().unwrap().state, TaskState::Running);
    assert_eq!(j.stats().fenced, 2);
    record(j, vec![committed(t, 2, "current")]);
    assert_eq!(j.stats().fenced, 2);
    let row = j.task(t).unwrap().unwrap();
    assert_eq!((row.state, row.attempt), (TaskState::Succeeded, 2));
    assert_eq!(row.output.as_deref(), Some(&b"current"[..]));
    // A stale start cannot take the lease back.
    record(j, vec![started(t, 1)]);
    assert_eq!(j.task(t).unwrap().unwrap().attempt, 2);
}

fn retries_move_the_lease<J: Journal>(j: &J) {
    let t = accept(j, 1);
    record(j, vec![started(t, 1), failed(t, 1, TaskState::Queued)]);
    let row = j.task(t).unwrap().unwrap();
    assert_eq!(
        (row.state, row.error.as_deref()),
        (TaskState::Queued, Some("boom"))
    );
    record(
        j,
        vec![started(t, 2), failed(t, 2, TaskState::DeadLettered)],
    );
    let counts = j.counts().unwrap();
    assert_eq!(
        (counts.dead_lettered, counts.queued, counts.running),
        (1, 0, 0)
    );
}

fn terminal_states_are_final<J: Journal>(j: &J) {
    let first = accept(j, 2);
    let (a, b) = (first, nth(first, 1));
    record(
        j,
        vec![
            Record::Cancelled { task: a },
            started(a, 1),
            committed(a, 1, "x"),
        ],
    );
    assert_eq!(j.task(a).unwrap().unwrap().state, TaskState::Cancelled);
    record(
        j,
        vec![
            started(b, 1),
            failed(b, 1, TaskState::Failed),
            Record::Cancelled { task: b },
        ],
    );
    assert_eq!(j.task(b).unwrap().unwrap().state, TaskState::Failed);
    let counts = j.counts().unwrap();
    assert_eq!(
        (counts.cancelled, counts.failed, counts.terminal()),
        (1, 1, 2)
    );
}

fn unfinished_lists_what_recovery_needs<J: Journal>(j: &J) {
    let first = accept(j, 4);
    record(
        j,
        vec![
            started(first, 1),
            committed(first, 1, "done"),
            started(nth(first, 1), 1),
        ],
    );
    let open: Vec<(TaskId, TaskState)> = j
        .unfinished()
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.state))
        .collect();
    assert_eq!(
        open,
        [
            (nth(first, 1), TaskState::Running),
            (nth(first, 2), TaskState::Queued),
            (nth(first, 3), TaskState::Queued)
        ]
    );
}

fn recent_lists_newest_first_by_state_and_page<J: Journal>(j: &J) {
    assert!(j.recent(None, None, 10).unwrap().is_empty());
    let first = accept(j, 5);
    record(
        j,
        vec![
            started(first, 1),
            committed(first, 1, "done"),
            started(nth(first, 3), 1),
            committed(nth(first, 3), 1, "done"),
        ],
    );
    let ids = |rows: Vec<crate::TaskRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let all = ids(j.recent(None, None, 3).unwrap());
    assert_eq!(all, [nth(first, 4), nth(first, 3), nth(first, 2)]);
    let next = ids(j.recent(None, Some(nth(first, 2)), 3).unwrap());
    assert_eq!(next, [nth(first, 1), first]);
    let done = ids(j.recent(Some(TaskState::Succeeded), None, 10).unwrap());
    assert_eq!(done, [nth(first, 3), first]);
    let queued = ids(j
        .recent(Some(TaskState::Queued), Some(nth(first, 2)), 10)
        .unwrap());
    assert_eq!(queued, [nth(first, 1)]);
    assert!(j.recent(None, Some(first), 10).unwrap().is_empty());
}

fn unknown_tasks_are_counted<J: Journal>(j: &J) {
    record(j, vec![started(TaskId(999_999), 1)]);
    assert_eq!(j.stats().unknown, 1);
    // A failure cannot pass for a success.
    let t = accept(j, 1);
    record(j, vec![started(t, 1), failed(t, 1, TaskState::Succeeded)]);
    assert_eq!(j.stats().invalid, 1);
    assert_eq!(j.task(t).unwrap().unwrap().state, TaskState::Running);
    assert_eq!(j.counts().unwrap().total(), 1);
}

fn recovery_requeues_running_tasks<J: Journal>(j: &J) {
    let first = accept(j, 3);
    let (done, running, queued) = (first, nth(first, 1), nth(first, 2));
    record(
        j,
        vec![
            started(done, 1),
            committed(done, 1, "ok"),
            started(running, 1),
        ],
    );
    // Leases move up by max attempts (3): past any attempt the dead process started unrecorded.
    let recovered: Vec<(TaskId, TaskState, u32)> = j
        .recover()
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.state, r.attempt))
        .collect();
    assert_eq!(
        recovered,
        [
            (running, TaskState::Queued, 4),
            (queued, TaskState::Queued, 3)
        ]
    );
    let counts = j.counts().unwrap();
    assert_eq!((counts.queued, counts.running, counts.succeeded), (2, 0, 1));
    assert_eq!(
        j.task(done).unwrap().unwrap().attempt,
        1,
        "finished tasks keep theirs"
    );
    // An attempt the dead process may have started cannot take the lease or commit.
    record(j, vec![started(running, 2), committed(running, 2, "stale")]);
    assert_eq!(j.task(running).unwrap().unwrap().state, TaskState::Queued);
    record(j, vec![started(running, 5), committed(running, 5, "ok")]);
    let row = j.task(running).unwrap().unwrap();
    assert_eq!((row.state, row.attempt), (TaskState::Succeeded, 5));
    // A second recovery moves the leases again, durably: two restarts never share numbers.
    let again: Vec<u32> = j
        .recover()
        .unwrap()
        .into_iter()
        .map(|r| r.attempt)
        .collect();
    assert_eq!(again, [6]);
}

fn the_hierarchy_is_recorded<J: Journal>(j: &J) {
    use crate::AgentRecord;
    let tiers = ["supervisor".to_owned(), "worker".to_owned()];
    let agent = |id: u32, tier: u8, parent: Option<u32>, pool: Option<u8>| AgentRecord {
        id: AgentId(id),
        tier,
        parent: parent.map(AgentId),
        pool,
    };
    let first = vec![agent(0, 0, None, None), agent(1, 1, Some(0), Some(0))];
    block_on(j.record_agents(&tiers, first.clone(), true)).unwrap();
    block_on(j.record_agents(&tiers, vec![agent(2, 1, Some(0), Some(1))], false)).unwrap();
    let all = j.agents().unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2], agent(2, 1, Some(0), Some(1)));
    // A new process replaces the hierarchy.
    block_on(j.record_agents(&tiers, first.clone(), true)).unwrap();
    assert_eq!(j.agents().unwrap(), first);
}

fn opening(voters: u32) -> crate::Opening {
    crate::Opening {
        options: r#"{"protocol":"majority"}"#.into(),
        seats: (0..voters)
            .map(|i| crate::Seat {
                agent: AgentId(10 + i),
                pool: (i % 2) as u8,
                weight: 1.5,
            })
            .collect(),
        asked: voters,
        opened_at_ms: 1_700_000_000_000,
    }
}

fn a_task_that_ended_says_when<J: Journal>(j: &J) {
    let before = crate::now_ms();
    let first = accept(j, 3);
    record(
        j,
        vec![
            started(first, 1),
            committed(first, 1, "1"),
            started(nth(first, 1), 1),
            failed(nth(first, 1), 1, TaskState::Queued),
            Record::Cancelled {
                task: nth(first, 2),
            },
        ],
    );
    let after = crate::now_ms();
    let ended = |i| j.task(nth(first, i)).unwrap().unwrap().ended_at_ms;
    for i in [0, 2] {
        let at = ended(i).expect("a time");
        // Stored in milliseconds or finer: within the write, a millisecond either side.
        assert!(
            before.saturating_sub(1) <= at && at <= after + 1,
            "{before} <= {at} <= {after}"
        );
    }
    assert_eq!(ended(1), None, "queued for a retry: not ended");
    let row = j.recent(Some(TaskState::Succeeded), None, 1).unwrap();
    assert_eq!(row[0].ended_at_ms, ended(0), "every read says it");
}

/// A prune of every finished task's payload and output (`prune_all`, returning how many tasks
/// lost theirs) keeps the ballots of a decision still open whole, its opening's and its later
/// call's, and prunes them once it has closed; a closed decision's and plain tasks' go at
/// once. For the journals that can be pruned.
pub fn pruning_keeps_the_ballots_of_open_decisions<J: Journal>(
    j: &J,
    prune_all: impl Fn(&J) -> u64,
) {
    let finish = |first: TaskId, n: u64| {
        let batch = (0..n)
            .flat_map(|i| {
                [
                    started(nth(first, i), 1),
                    committed(nth(first, i), 1, "\"yes\""),
                ]
            })
            .collect();
        record(j, batch);
    };
    let plain = accept(j, 2);
    finish(plain, 2);
    let closed = j.next_task_id();
    block_on(j.open_decision(
        closed,
        &vec![TaskSpec::with_payload("which?"); 3],
        opening(3),
    ))
    .expect("open");
    finish(closed, 3);
    block_on(j.close_decision(closed, r#"{"result":"decided"}"#.into())).expect("close");
    let open = j.next_task_id();
    let mut leader = opening(3);
    leader.asked = 1;
    block_on(j.open_decision(open, &[TaskSpec::with_payload("propose")], leader.clone()))
        .expect("open");
    finish(open, 1);
    let between = accept(j, 1);
    finish(between, 1);
    let reviews = j.next_task_id();
    let call = crate::Call {
        round: 0,
        role: crate::Role::Review,
        asked: leader.seats[1..].to_vec(),
        at_ms: 1_700_000_000_500,
    };
    block_on(j.ask(
        open,
        reviews,
        &vec![TaskSpec::with_payload("review"); 2],
        call,
    ))
    .expect("ask");
    finish(reviews, 2);

    assert_eq!(
        prune_all(j),
        6,
        "two plain tasks, the closed decision's three, one more"
    );
    let whole = |id: TaskId| {
        let row = j.task(id).unwrap().expect("the task");
        assert_eq!(row.state, TaskState::Succeeded, "{row:?}");
        !row.spec.payload.is_empty() && row.output.is_some()
    };
    for id in [plain, nth(plain, 1), closed, nth(closed, 2), between] {
        assert!(!whole(id), "{id} is pruned");
    }
    for id in [open, reviews, nth(reviews, 1)] {
        assert!(
            whole(id),
            "{id}, a ballot of a decision still open, is kept whole"
        );
    }
    assert_eq!(prune_all(j), 0, "nothing else to prune");
    block_on(j.close_decision(open, r#"{"result":"decided"}"#.into())).expect("close");
    assert_eq!(prune_all(j), 3, "once closed, its ballots go too");
    assert!(!whole(open) && !whole(nth(reviews, 1)));
}

/// The ids of decisions read.
fn ids(read: Result<Vec<crate::DecisionRow>, Error>) -> Vec<TaskId> {
    read.unwrap().iter().map(|d| d.id).collect()
}

fn a_decision_opens_with_its_ballots_and_closes_once<J: Journal>(j: &J) {
    let before = accept(j, 2);
    let first = j.next_task_id();
    let ballots = vec![TaskSpec::with_payload("which?"); 3];
    block_on(j.open_decision(first, &ballots, opening(3))).expect("open");
    assert_eq!(j.next_task_id(), nth(first, 3), "the ballots are tasks");
    assert_eq!(
        j.task(nth(first, 2)).unwrap().unwrap().state,
        TaskState::Queued
    );
    assert_eq!(
        j.decision(before).unwrap(),
        None,
        "a task is not a decision"
    );
    let row = j.decision(first).unwrap().expect("the decision");
    assert_eq!(row.id, first);
    assert_eq!(row.opening, opening(3));
    assert_eq!((row.outcome, row.ended_at_ms), (None, None));
    assert_eq!(ids(j.open_decisions()), [first]);

    let second = j.next_task_id();
    block_on(j.open_decision(second, &ballots[..1], opening(1))).expect("open a second");
    assert_eq!(ids(j.decisions(None, 10)), [second, first], "newest first");
    assert_eq!(ids(j.decisions(Some(second), 10)), [first], "the next page");
    assert_eq!(j.decisions(None, 1).unwrap().len(), 1);

    let stats = j.stats();
    block_on(j.close_decision(first, r#"{"result":"decided"}"#.into())).expect("close");
    block_on(j.close_decision(first, r#"{"result":"failed"}"#.into())).expect("close again");
    block_on(j.close_decision(TaskId(9_999), "{}".into())).expect("close an unknown one");
    let row = j.decision(first).unwrap().unwrap();
    assert_eq!(
        row.outcome.as_deref(),
        Some(r#"{"result":"decided"}"#),
        "the first stands"
    );
    assert!(row.ended_at_ms.is_some());
    assert_eq!(
        j.stats().fenced,
        stats.fenced + 1,
        "a second outcome is fenced"
    );
    assert_eq!(j.stats().unknown, stats.unknown + 1);
    assert_eq!(ids(j.open_decisions()), [second]);
    // Ballots of the ended decision are told from tasks and from the open one's ballots.
    let asked = [before, first, nth(first, 2), second, nth(second, 1)];
    assert_eq!(j.closed_ballots(&asked).unwrap(), [first, nth(first, 2)]);
    assert_eq!(j.closed_ballots(&[]).unwrap(), []);
}

fn a_decision_needs_one_ballot_per_seat<J: Journal>(j: &J) {
    let first = j.next_task_id();
    let refused = block_on(j.open_decision(first, &[TaskSpec::default()], opening(2)));
    assert!(
        matches!(refused, Err(Error::Ballots { seats: 2, specs: 1 })),
        "{refused:?}"
    );
    assert_eq!(j.next_task_id(), first, "nothing was accepted");
    assert_eq!(j.decision(first).unwrap(), None);
}

fn a_decision_asks_again_in_later_calls<J: Journal>(j: &J) {
    // A leader-like decision: three seats, the first asked alone at the opening.
    let first = j.next_task_id();
    let mut leader = opening(3);
    leader.asked = 1;
    block_on(j.open_decision(first, &[TaskSpec::with_payload("propose")], leader.clone()))
        .expect("open");
    accept(j, 2);
    let reviews = j.next_task_id();
    let call = crate::Call {
        round: 0,
        role: crate::Role::Review,
        asked: leader.seats[1..].to_vec(),
        at_ms: 1_700_000_000_500,
    };
    let specs = vec![TaskSpec::with_payload("review"); 2];
    block_on(j.ask(first, reviews, &specs, call.clone())).expect("ask");
    assert_eq!(
        j.next_task_id(),
        nth(reviews, 2),
        "the call's tasks are tasks"
    );
    let refused = block_on(j.ask(first, nth(reviews, 2), &specs[..1], call.clone()));
    assert!(
        matches!(refused, Err(Error::Ballots { seats: 2, specs: 1 })),
        "{refused:?}"
    );
    assert_eq!(j.next_task_id(), nth(reviews, 2), "nothing was accepted");
    let row = j.decision(first).unwrap().expect("the decision");
    assert_eq!(row.opening, leader);
    assert_eq!(row.calls, [(reviews, call.clone())]);
    assert_eq!(j.open_decisions().unwrap()[0].calls.len(), 1);
    assert_eq!(j.decisions(None, 1).unwrap()[0].calls.len(), 1);
    let asked = [first, nth(first, 1), reviews, nth(reviews, 1)];
    assert_eq!(j.closed_ballots(&asked).unwrap(), [], "not closed yet");
    block_on(j.close_decision(first, "{}".into())).expect("close");
    assert_eq!(
        j.closed_ballots(&asked).unwrap(),
        [first, reviews, nth(reviews, 1)],
        "the opening's task and the call's; not the tasks between"
    );
}

fn a_decision_taken_inline_is_one_task_ended_at_once<J: Journal>(j: &J) {
    let before = accept(j, 1);
    let id = j.next_task_id();
    let mut inline = opening(3);
    inline.asked = 0;
    let spec = TaskSpec::with_payload("which?");
    let counts = j.counts().unwrap();
    let taken = |result: Result<Bytes, std::sync::Arc<str>>, outcome: &str| crate::Taken {
        opening: inline.clone(),
        result,
        outcome: outcome.into(),
    };
    block_on(j.decided(
        id,
        &spec,
        taken(Ok(Bytes::from("yes")), "{\"won\":\"yes\"}"),
    ))
    .expect("decided");
    assert_eq!(j.next_task_id(), nth(id, 1), "one id: the question's");
    let row = j.task(id).unwrap().expect("its task");
    assert_eq!(row.state, TaskState::Succeeded);
    assert_eq!(row.output.as_deref(), Some(&b"yes"[..]));
    assert_eq!((row.attempt, row.agent), (0, None), "no attempt ran it");
    let decision = j.decision(id).unwrap().expect("the decision");
    assert_eq!(decision.opening, inline);
    assert_eq!(decision.outcome.as_deref(), Some("{\"won\":\"yes\"}"));
    assert!(decision.ended_at_ms.is_some());
    assert_eq!(
        ids(j.open_decisions()),
        Vec::<TaskId>::new(),
        "closed at once"
    );
    assert_eq!(
        j.closed_ballots(&[before, id]).unwrap(),
        [],
        "it has no ballot tasks"
    );
    assert!(!j.unfinished().unwrap().iter().any(|r| r.id == id));

    let failed = j.next_task_id();
    block_on(j.decided(failed, &spec, taken(Err("tie".into()), "{}"))).expect("decided");
    let row = j.task(failed).unwrap().unwrap();
    assert_eq!(
        (row.state, row.error.as_deref()),
        (TaskState::Failed, Some("tie"))
    );
    let now = j.counts().unwrap();
    assert_eq!(now.succeeded, counts.succeeded + 1);
    assert_eq!(now.failed, counts.failed + 1);
    assert_eq!(now.queued, counts.queued);
    assert_eq!(ids(j.decisions(None, 2)), [failed, id]);

    // An opening that asked for ballot tasks is not one taken inline; ids out of order are
    // refused as for any task. Nothing is written either way.
    let next = j.next_task_id();
    let refused = block_on(j.decided(
        next,
        &spec,
        crate::Taken {
            opening: opening(3),
            ..taken(Ok(Bytes::new()), "{}")
        },
    ));
    assert!(
        matches!(refused, Err(Error::Ballots { seats: 3, specs: 0 })),
        "{refused:?}"
    );
    let refused = block_on(j.decided(nth(next, 5), &spec, taken(Ok(Bytes::new()), "{}")));
    assert!(
        matches!(refused, Err(Error::IdOutOfOrder { .. })),
        "{refused:?}"
    );
    assert_eq!(j.next_task_id(), next, "nothing was accepted");
    assert_eq!(j.decision(next).unwrap(), None);
}

fn reputations_are_kept_the_latest_per_agent<J: Journal>(j: &J) {
    assert_eq!(j.reputations().unwrap(), []);
    let row = |agent: u32, score: f64, observations: u32| crate::ReputationRow {
        agent: AgentId(agent),
        pool: 1,
        score,
        observations,
    };
    block_on(j.record_reputations(vec![row(7, 0.25, 3), row(2, 0.5, 0)])).unwrap();
    block_on(j.record_reputations(vec![row(7, 0.875, 40)])).unwrap();
    assert_eq!(
        j.reputations().unwrap(),
        [row(2, 0.5, 0), row(7, 0.875, 40)],
        "by agent, the latest"
    );
}

/// The crash case: what a journal acknowledged survives a crash and a reopen, and what it
/// did not acknowledge is either all there or absent, never half.
///
/// `sync` makes pending writes durable (a no-op for journals whose writes are durable once
/// their `Durable` resolves); `crash` kills the journal and opens its storage again.
pub fn crash_case<J: Journal>(journal: J, sync: impl Fn(&J), crash: impl FnOnce(J) -> J) {
    let first = journal.next_task_id();
    let specs: Vec<TaskSpec> = (0..5)
        .map(|i| TaskSpec::with_payload(format!("{i}")))
        .collect();
    let accepted = journal.accept(first, &specs);
    sync(&journal);
    block_on(accepted).expect("accept");
    let done = journal.record(vec![
        started(first, 1),
        committed(first, 1, "kept"),
        started(nth(first, 1), 1),
    ]);
    sync(&journal);
    block_on(done).expect("record");
    let opened = journal.open_decision(nth(first, 5), &[TaskSpec::default()], opening(1));
    sync(&journal);
    block_on(opened).expect("open a decision");
    // Written but never acknowledged.
    let _lost_open = journal.open_decision(
        nth(first, 6),
        &[TaskSpec::default(), TaskSpec::default()],
        opening(2),
    );
    let _lost_call = journal.ask(
        nth(first, 5),
        nth(first, 8),
        &[TaskSpec::default()],
        crate::Call {
            round: 1,
            role: crate::Role::Ballot,
            asked: opening(1).seats,
            at_ms: 1_700_000_000_000,
        },
    );
    let _lost_record = journal.record(vec![committed(nth(first, 1), 1, "maybe")]);
    let _lost_close = journal.close_decision(nth(first, 5), "{}".into());

    let j = crash(journal);
    let row = j.task(first).unwrap().expect("acknowledged task");
    assert_eq!(
        (row.state, row.output.as_deref()),
        (TaskState::Succeeded, Some(&b"kept"[..]))
    );
    assert!(
        j.task(nth(first, 4)).unwrap().is_some(),
        "every acknowledged task survives"
    );
    let second = j.task(nth(first, 1)).unwrap().unwrap();
    assert!(
        matches!(second.state, TaskState::Running | TaskState::Succeeded),
        "{:?}",
        second.state
    );
    let counts = j.counts().unwrap();
    let survived = j.next_task_id().0 - first.0;
    assert!(
        [6, 8, 9].contains(&survived),
        "a batch survives whole or not at all, in order: {survived}"
    );
    let calls = j.decision(nth(first, 5)).unwrap().map(|d| d.calls.len());
    assert_eq!(
        calls,
        Some(usize::from(survived == 9)),
        "a call survives with its tasks or not at all"
    );
    assert!(
        j.decision(nth(first, 5)).unwrap().is_some(),
        "an acknowledged decision survives"
    );
    assert_eq!(
        j.decision(nth(first, 6)).unwrap().is_some(),
        survived >= 8,
        "a decision survives with its ballots or not at all"
    );
    assert_eq!(counts.total(), survived, "counts agree with the rows");
    // The journal goes on from where it stands.
    let next = j.accept(j.next_task_id(), &[TaskSpec::default()]);
    sync(&j);
    block_on(next).expect("accept after the crash");
}

/// An in-memory journal that holds writes until [`Crashable::sync`] and loses the unsynced
/// ones in [`Crashable::crash`]: the crash half of the conformance suite for journals that
/// cannot really crash, and a way to test recovery against a journal that lost its tail.
#[derive(Debug, Default)]
pub struct Crashable {
    durable: crate::MemoryJournal,
    pending: std::sync::Mutex<Vec<Pending>>,
}

#[derive(Debug)]
enum Pending {
    Accept(
        TaskId,
        Vec<TaskSpec>,
        futures::channel::oneshot::Sender<Result<(), Error>>,
    ),
    Record(
        Vec<Record>,
        futures::channel::oneshot::Sender<Result<(), Error>>,
    ),
    Open(
        TaskId,
        Vec<TaskSpec>,
        crate::Opening,
        futures::channel::oneshot::Sender<Result<(), Error>>,
    ),
    Close(
        TaskId,
        std::sync::Arc<str>,
        futures::channel::oneshot::Sender<Result<(), Error>>,
    ),
    Ask(
        TaskId,
        TaskId,
        Vec<TaskSpec>,
        crate::Call,
        futures::channel::oneshot::Sender<Result<(), Error>>,
    ),
    Reputations(
        Vec<crate::ReputationRow>,
        futures::channel::oneshot::Sender<Result<(), Error>>,
    ),
    Decided(
        TaskId,
        TaskSpec,
        crate::Taken,
        futures::channel::oneshot::Sender<Result<(), Error>>,
    ),
}

impl Crashable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every pending write durable, in order, and resolves its `Durable`.
    pub fn sync(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for write in pending {
            match write {
                Pending::Accept(first, specs, done) => {
                    let _ = done.send(block_on(self.durable.accept(first, &specs)));
                }
                Pending::Record(records, done) => {
                    let _ = done.send(block_on(self.durable.record(records)));
                }
                Pending::Open(first, specs, opening, done) => {
                    let _ = done.send(block_on(self.durable.open_decision(first, &specs, opening)));
                }
                Pending::Close(id, outcome, done) => {
                    let _ = done.send(block_on(self.durable.close_decision(id, outcome)));
                }
                Pending::Ask(decision, first, specs, call, done) => {
                    let _ = done.send(block_on(self.durable.ask(decision, first, &specs, call)));
                }
                Pending::Reputations(rows, done) => {
                    let _ = done.send(block_on(self.durable.record_reputations(rows)));
                }
                Pending::Decided(id, spec, taken, done) => {
                    let _ = done.send(block_on(self.durable.decided(id, &spec, taken)));
                }
            }
        }
    }

    /// Loses every write since the last sync and returns what was durable.
    pub fn crash(self) -> Self {
        Self {
            durable: self.durable,
            pending: std::sync::Mutex::default(),
        }
    }

    fn hold(
        &self,
        write: impl FnOnce(futures::channel::oneshot::Sender<Result<(), Error>>) -> Pending,
    ) -> crate::Durable {
        let (done, durable) = crate::Durable::pending();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(write(done));
        durable
    }
}

impl Journal for Crashable {
    fn next_task_id(&self) -> TaskId {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let queued: usize = pending
            .iter()
            .map(|w| match w {
                Pending::Accept(_, specs, _)
                | Pending::Open(_, specs, _, _)
                | Pending::Ask(_, _, specs, _, _) => specs.len(),
                Pending::Decided(..) => 1,
                _ => 0,
            })
            .sum();
        TaskId(self.durable.next_task_id().0 + queued as u64)
    }
    fn accept(&self, first: TaskId, specs: &[TaskSpec]) -> crate::Durable {
        let specs = specs.to_vec();
        self.hold(|done| Pending::Accept(first, specs, done))
    }
    fn record(&self, batch: Vec<Record>) -> crate::Durable {
        self.hold(|done| Pending::Record(batch, done))
    }
    fn open_decision(
        &self,
        first: TaskId,
        specs: &[TaskSpec],
        opening: crate::Opening,
    ) -> crate::Durable {
        let specs = specs.to_vec();
        self.hold(|done| Pending::Open(first, specs, opening, done))
    }
    fn ask(
        &self,
        decision: TaskId,
        first: TaskId,
        specs: &[TaskSpec],
        call: crate::Call,
    ) -> crate::Durable {
        let specs = specs.to_vec();
        self.hold(|done| Pending::Ask(decision, first, specs, call, done))
    }
    fn close_decision(&self, id: TaskId, outcome: std::sync::Arc<str>) -> crate::Durable {
        self.hold(|done| Pending::Close(id, outcome, done))
    }
    fn decided(&self, id: TaskId, spec: &TaskSpec, taken: crate::Taken) -> crate::Durable {
        let spec = spec.clone();
        self.hold(|done| Pending::Decided(id, spec, taken, done))
    }
    fn decision(&self, id: TaskId) -> Result<Option<crate::DecisionRow>, Error> {
        self.durable.decision(id)
    }
    fn decisions(
        &self,
        before: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<crate::DecisionRow>, Error> {
        self.durable.decisions(before, limit)
    }
    fn open_decisions(&self) -> Result<Vec<crate::DecisionRow>, Error> {
        self.durable.open_decisions()
    }
    fn closed_ballots(&self, tasks: &[TaskId]) -> Result<Vec<TaskId>, Error> {
        self.durable.closed_ballots(tasks)
    }
    fn task(&self, id: TaskId) -> Result<Option<crate::TaskRow>, Error> {
        self.durable.task(id)
    }
    fn counts(&self) -> Result<crate::Counts, Error> {
        self.durable.counts()
    }
    fn unfinished(&self) -> Result<Vec<crate::TaskRow>, Error> {
        self.durable.unfinished()
    }
    fn recent(
        &self,
        state: Option<TaskState>,
        before: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<crate::TaskRow>, Error> {
        self.durable.recent(state, before, limit)
    }
    fn recover(&self) -> Result<Vec<crate::TaskRow>, Error> {
        self.durable.recover()
    }
    fn stats(&self) -> crate::Stats {
        self.durable.stats()
    }
    fn record_agents(
        &self,
        tiers: &[String],
        agents: Vec<crate::AgentRecord>,
        replace: bool,
    ) -> crate::Durable {
        self.durable.record_agents(tiers, agents, replace)
    }
    fn agents(&self) -> Result<Vec<crate::AgentRecord>, Error> {
        self.durable.agents()
    }
    fn record_reputations(&self, rows: Vec<crate::ReputationRow>) -> crate::Durable {
        self.hold(|done| Pending::Reputations(rows, done))
    }
    fn reputations(&self) -> Result<Vec<crate::ReputationRow>, Error> {
        self.durable.reputations()
    }
}

/// Asserts that every read of `a` and `b` gives the same (but the counts of fenced records:
/// each process counts its own): a journal read back, restored or compacted against the one
/// it came from.
pub fn assert_same_reads(a: &dyn Journal, b: &dyn Journal) {
    assert_eq!(a.next_task_id(), b.next_task_id());
    assert_eq!(a.counts().unwrap(), b.counts().unwrap());
    assert_eq!(
        a.recent(None, None, usize::MAX).unwrap(),
        b.recent(None, None, usize::MAX).unwrap()
    );
    assert_eq!(
        a.decisions(None, usize::MAX).unwrap(),
        b.decisions(None, usize::MAX).unwrap()
    );
    assert_eq!(a.agents().unwrap(), b.agents().unwrap());
    assert_eq!(a.reputations().unwrap(), b.reputations().unwrap());
}
