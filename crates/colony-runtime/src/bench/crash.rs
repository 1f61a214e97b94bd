//! `colony bench crash`: kill the process that runs the work, at random moments, and check
//! from the journal and an execution ledger that nothing was lost or committed twice.
//!
//! A parent process starts a child (`colony bench crash-child`) on a SQLite journal, SIGKILLs
//! it after a random delay, starts it again on the same file, and so on; the last child runs
//! to the end. Every attempt the child's agents start is appended to a ledger file with an
//! unbuffered write, so it survives the kill. At the end:
//!
//! - lost: tasks that are not succeeded in the journal (the agents never fail);
//! - double commits: tasks with an execution after the one that committed, or two executions
//!   with the same attempt number (a reused lease);
//! - re-executions: every task runs at most once more than the number of kills that struck
//!   while it had run and was not yet committed (I3, checked per task);
//! - the journal holds exactly the tasks submitted, each key once;
//! - every committed attempt is in the ledger (a ledger that lost a line would hide a double
//!   execution);
//! - no child died on its own: each either was killed, or finished and exited 0. A child whose
//!   ledger cannot be written stops at once and exits with an error.
//!
//! With `decisions`, each run also opens that many decisions among [`VOTERS`] agents between
//! its batches, by majority and by `leader` in turn (every agent answers `yes`, and
//! `approve` to a review: a leader decision is two calls of tasks, the proposal and then
//! the reviews, so kills strike between them too). Each decision ended is appended to the
//! ledger as `d <id>` when its outcome is published, and at the end:
//!
//! - every decision is closed in the journal, decided `yes` (none open, none failed);
//! - it was announced at most once over all the children (taken once, never re-taken after a
//!   restart);
//! - every ballot it counted is a ballot task of its calls the journal holds as succeeded on
//!   its voter: it was taken from journaled ballots;
//! - its ballot tasks all ended, none ran on another agent, and none ran more often than the
//!   kills that struck it allow; they are kept out of the task checks above (a ballot cut
//!   short by an early decision is cancelled, not lost).

use super::Verdict;
use crate::{Error, Pool, Runtime, RuntimeOptions, SpawnMode};
use colony_agents::{
    Agent, AgentSpec, Execution, Task,
    sim::{Latency, Sim, SimOptions},
};
use colony_core::TaskId;
use colony_core::task::{TaskSpec, TaskState};
use colony_journal::{DecisionRow, Journal, SqliteJournal, SqliteOptions, SqliteReader, TaskRow};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::Serialize;
use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};
use tokio::sync::Notify;

/// What the child runs.
#[derive(Clone, Debug)]
pub struct ChildOptions {
    pub db: PathBuf,
    pub ledger: PathBuf,
    pub tasks: u64,
    pub agents: u32,
    pub seed: u64,
    /// Decisions of the whole run, among [`VOTERS`] agents each.
    pub decisions: u64,
}

/// Voters of each decision of the crash run.
pub const VOTERS: u32 = 5;

/// What every voter answers.
const BALLOT: &str = "yes";
/// Each voter's answer to a review.
const REVIEW: &str = "approve";

/// Appends every attempt it starts to the ledger, then behaves like its sim.
struct Ledgered {
    sim: Sim,
    ledger: Mutex<File>,
    /// The first failed ledger write, which stops the child.
    broken: Arc<Broken>,
}

/// A ledger write failed: what failed, and the signal to stop.
#[derive(Default)]
struct Broken {
    error: OnceLock<String>,
    notify: Notify,
}

impl Agent for Ledgered {
    fn handle(&self, task: Task) -> Execution {
        let written = {
            let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
            // One write per line, unbuffered: a SIGKILL loses nothing already written.
            ledger.write_all(format!("{} {}\n", task.id.0, task.attempt).as_bytes())
        };
        if let Err(e) = written {
            // An execution the ledger does not hold would make every check after it unsound:
            // the attempt is not run, and the child stops.
            let _ = self.broken.error.set(e.to_string());
            self.broken.notify.notify_one();
            return Execution::Done(Err(colony_agents::Error::fatal(format!(
                "the ledger could not be written: {e}"
            ))));
        }
        // A leader decision's review: approved.
        let review = serde_json::from_slice::<serde_json::Value>(&task.payload)
            .is_ok_and(|p| p.get("review").is_some());
        if review {
            return Execution::Done(Ok(bytes::Bytes::from_static(REVIEW.as_bytes())));
        }
        self.sim.handle(task)
    }
}

/// Opens the SQLite journal at `db`, for a child.
pub fn open_sqlite(db: &Path) -> Result<Arc<dyn Journal>, Error> {
    Ok(Arc::new(SqliteJournal::open(SqliteOptions::new(db))?))
}

/// What the checks read back of a run's journal.
pub trait Readback {
    fn task(&self, id: TaskId) -> Result<Option<TaskRow>, Error>;
    fn decisions(&self) -> Result<Vec<DecisionRow>, Error>;
    /// Every task, in any order.
    fn tasks(&self) -> Result<Vec<TaskRow>, Error>;
}

impl Readback for SqliteReader {
    fn task(&self, id: TaskId) -> Result<Option<TaskRow>, Error> {
        Ok(SqliteReader::task(self, id)?)
    }

    fn decisions(&self) -> Result<Vec<DecisionRow>, Error> {
        Ok(SqliteReader::decisions(self, None, usize::MAX)?)
    }

    fn tasks(&self) -> Result<Vec<TaskRow>, Error> {
        Ok(SqliteReader::tasks(self, None, usize::MAX)?)
    }
}

impl<J: Journal + ?Sized> Readback for Arc<J> {
    fn task(&self, id: TaskId) -> Result<Option<TaskRow>, Error> {
        Ok(Journal::task(&**self, id)?)
    }

    fn decisions(&self) -> Result<Vec<DecisionRow>, Error> {
        Ok(Journal::decisions(&**self, None, usize::MAX)?)
    }

    fn tasks(&self) -> Result<Vec<TaskRow>, Error> {
        Ok(Journal::recent(&**self, None, None, usize::MAX)?)
    }
}

/// Opens a run's journal to read it back.
pub type Reopen = dyn Fn(&Path) -> Result<Box<dyn Readback>, Error>;

/// Where each run keeps its journal when not in a SQLite file of the scratch folder (a
/// journal in NATS).
pub struct Journals<'a> {
    /// The `--db` of run `run`'s children.
    pub location: &'a dyn Fn(u32) -> PathBuf,
    /// Opens a run's journal to read it back, between kills and at the end.
    pub reopen: &'a Reopen,
}

impl std::fmt::Debug for Journals<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journals").finish_non_exhaustive()
    }
}

fn sqlite_readback(db: &Path) -> Result<Box<dyn Readback>, Error> {
    Ok(Box::new(SqliteReader::open(db)?))
}

/// The child: run what is left of the workload on its journal (opened on `options.db`).
pub async fn child(options: &ChildOptions, journal: Arc<dyn Journal>) -> Result<(), Error> {
    let ledger = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&options.ledger)
        .map_err(|e| Error::Options(format!("cannot open {}: {e}", options.ledger.display())))?;
    let sim = SimOptions {
        seed: options.seed,
        latency: Latency::Uniform {
            min: Duration::ZERO,
            max: Duration::from_millis(2),
        },
        ..SimOptions::default()
    };
    let broken = Arc::new(Broken::default());
    let agent = Ledgered {
        sim: Sim::new(sim).map_err(|e| Error::Options(e.to_string()))?,
        ledger: Mutex::new(ledger),
        broken: broken.clone(),
    };
    let pool = Pool::new(
        AgentSpec::new("sim", "worker"),
        options.agents,
        Arc::new(agent),
    );
    let opened = Journal::decisions(&*journal, None, usize::MAX)?;
    let ballots: u64 = opened
        .iter()
        .flat_map(|d| d.ballot_ranges())
        .map(|(a, b)| b - a)
        .sum();
    let accepted = journal.next_task_id().0 - 1 - ballots;
    let mut decisions = opened.len() as u64;
    let runtime = Runtime::start(
        RuntimeOptions {
            spawn: SpawnMode::Batch,
            ..RuntimeOptions::default()
        },
        vec![pool],
        journal,
    )
    .await?;
    let handle = runtime.handle().clone();
    // Decisions recovered at start may end before this: their announcements are not
    // ledgered, which only weakens the check that none is announced twice.
    announce(&handle, &options.ledger)?;
    let batch = (handle.stats().capacity as u64).clamp(1, 500);
    // A decision between batches, spread over the run.
    let every = (options.tasks / batch.max(1)) / options.decisions.max(1);
    let work = async {
        let mut next = accepted;
        let mut batches = 0u64;
        while next < options.tasks || decisions < options.decisions {
            if decisions < options.decisions && (batches >= every || next >= options.tasks) {
                open_decision(&handle, decisions).await?;
                decisions += 1;
                batches = 0;
            }
            batches += 1;
            if next >= options.tasks {
                continue;
            }
            let n = batch.min(options.tasks - next);
            let specs = (next..next + n)
                .map(|i| TaskSpec {
                    key: Some(format!("t{i}").into()),
                    ..TaskSpec::default()
                })
                .collect();
            handle.submit_batch(specs).await?;
            next += n;
        }
        handle.drain().await?;
        // The decisions' outcomes are journaled after their last ballots end.
        let journal = handle.journal().clone();
        for _ in 0..12_000 {
            if journal.open_decisions()?.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(Error::Decision(
            "decisions were still open two minutes after their ballots ended".into(),
        ))
    };
    let done = tokio::select! {
        done = work => done,
        () = broken.notify.notified() => Ok(()),
    };
    runtime.shutdown().await;
    if let Some(e) = broken.error.get() {
        return Err(Error::Options(format!(
            "the ledger {} could not be written: {e}",
            options.ledger.display()
        )));
    }
    done
}

/// Opens the `n`th decision among [`VOTERS`] agents (by majority, or by `leader` when `n`
/// is odd) and counts it in the background.
async fn open_decision(handle: &crate::Handle, n: u64) -> Result<(), Error> {
    use colony_core::decision::{DecisionOptions, Protocol};
    let protocol = if n % 2 == 1 {
        Protocol::Leader
    } else {
        Protocol::Majority
    };
    let options = DecisionOptions {
        timeout: Duration::from_secs(60),
        ..DecisionOptions::with(protocol)
    };
    let spec = TaskSpec::with_payload(BALLOT);
    let voting = handle
        .decide(spec, crate::decision::Vote::new(VOTERS, options))
        .await?;
    crate::spawner::Spawner::spawn("crash-decision", async move {
        // A failure here shows in the parent's checks: the decision stays open.
        let _ = voting.outcome().await;
    });
    Ok(())
}

/// Appends `d <id>` to the ledger for each decision this child announces.
fn announce(handle: &crate::Handle, ledger: &Path) -> Result<(), Error> {
    let mut file = OpenOptions::new()
        .append(true)
        .open(ledger)
        .map_err(|e| Error::Options(format!("cannot open {}: {e}", ledger.display())))?;
    let mut events = handle.subscribe(crate::events::Kinds::DECISIONS);
    crate::spawner::Spawner::spawn("crash-announce", async move {
        while let Some(event) = events.recv().await {
            if let crate::events::Event::DecisionEnded { first_ballot, .. } = event {
                // Unbuffered, as the attempts' lines.
                let _ = file.write_all(format!("d {}\n", first_ballot.0).as_bytes());
            }
        }
    });
    Ok(())
}

/// What the parent checks.
#[derive(Clone, Debug, Serialize)]
pub struct CrashReport {
    pub runs: u32,
    pub tasks_per_run: u64,
    pub kills: u32,
    pub tasks: u64,
    pub succeeded: u64,
    pub lost: u64,
    pub double_commits: u64,
    pub executions: u64,
    pub re_executions: u64,
    /// Tasks executed but not committed when a kill struck, summed over kills.
    pub in_flight_at_kills: u64,
    /// Executions beyond 1 + the kills that struck a task while it was in flight, summed over
    /// tasks: must be 0.
    pub excess_executions: u64,
    /// Rows whose key repeats another's, or rows beyond the tasks submitted: must be 0.
    pub stray_rows: u64,
    /// Committed attempts the ledger does not hold: a lost ledger write. Must be 0.
    pub unledgered_commits: u64,
    /// Children that exited before they were killed, other than by finishing their work:
    /// must be 0.
    pub children_died: u32,
    /// Decisions opened over all runs.
    pub decisions: u64,
    /// Decisions open (ballots out, no outcome journaled) when a kill struck, summed over
    /// kills: how many were recovered.
    pub decisions_open_at_kills: u64,
    /// Of those, decided `yes` and closed in the journal.
    pub decided: u64,
    /// Decisions announced more than once: must be 0.
    pub announced_twice: u64,
    /// Ballots counted that the journal does not hold as a succeeded ballot task of their
    /// voter, or ballot tasks not ended or run on another agent: must be 0.
    pub stray_ballots: u64,
    pub seconds: f64,
    /// Whether every check held, and what failed.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// The parent: `runs` runs of `tasks` tasks, each killed 1..=`max_kills` times.
#[allow(clippy::too_many_arguments)]
pub fn parent(
    exe: &Path,
    runs: u32,
    tasks: u64,
    decisions: u64,
    agents: u32,
    max_kills: u32,
    seed: u64,
    scratch: &Path,
    journals: Option<&Journals<'_>>,
) -> Result<CrashReport, Error> {
    let reopen = journals.map_or(&sqlite_readback as &Reopen, |j| j.reopen);
    if decisions > 0 && agents < VOTERS {
        return Err(Error::Options(format!(
            "decisions need {VOTERS} agents to vote, and the run has {agents}"
        )));
    }
    let started = Instant::now();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut report = CrashReport {
        runs,
        tasks_per_run: tasks,
        kills: 0,
        tasks: 0,
        succeeded: 0,
        lost: 0,
        double_commits: 0,
        executions: 0,
        re_executions: 0,
        in_flight_at_kills: 0,
        excess_executions: 0,
        stray_rows: 0,
        unledgered_commits: 0,
        children_died: 0,
        decisions: 0,
        decisions_open_at_kills: 0,
        decided: 0,
        announced_twice: 0,
        stray_ballots: 0,
        seconds: 0.0,
        verdict: Verdict::new(),
    };
    for run in 0..runs {
        let db = match journals {
            Some(journals) => (journals.location)(run),
            None => scratch.join(format!("crash-{run}.db")),
        };
        let ledger = scratch.join(format!("crash-{run}.ledger"));
        let kills = rng.random_range(1..=max_kills.max(1));
        let child = ChildOptions {
            db: db.clone(),
            ledger: ledger.clone(),
            tasks,
            agents,
            seed: seed ^ u64::from(run),
            decisions,
        };
        // Per task: kills that struck while it had run and was not committed.
        let mut struck: HashMap<u64, u64> = HashMap::new();
        let mut died = false;
        for k in 0..=kills {
            let mut process = spawn_child(exe, &child)?;
            let last = k == kills;
            if !last {
                std::thread::sleep(Duration::from_millis(rng.random_range(5..150)));
                // A child that already exited is reaped, not killed: `kill` would not fail.
                let exited = process
                    .try_wait()
                    .map_err(|e| Error::Options(format!("child: {e}")))?;
                if exited.is_none() {
                    let _ = process.kill();
                }
            }
            let status = process
                .wait()
                .map_err(|e| Error::Options(format!("child: {e}")))?;
            match Exit::of(status, last) {
                Exit::Killed => {
                    report.kills += 1;
                    let open = in_flight(reopen, &db, &ledger)?;
                    report.in_flight_at_kills += open.len() as u64;
                    for task in open {
                        *struck.entry(task).or_default() += 1;
                    }
                    if let Ok(reader) = reopen(&db) {
                        let opened = reader.decisions()?;
                        report.decisions_open_at_kills +=
                            opened.iter().filter(|d| d.outcome.is_none()).count() as u64;
                    }
                }
                // It finished the work before its kill came: nothing was struck.
                Exit::Finished => {}
                Exit::Died => {
                    died = true;
                    report.children_died += 1;
                    report.verdict.check(false, || {
                        format!(
                            "run {run}: child {} of {} exited on its own with {status}",
                            k + 1,
                            kills + 1
                        )
                    });
                }
            }
        }
        let v = match reopen(&db).and_then(|r| verify(&*r, &ledger, tasks, &struck)) {
            Ok(v) => v,
            // A child that died may have left nothing to check; that is already the verdict.
            Err(e) if died => {
                report
                    .verdict
                    .check(false, || format!("run {run} could not be checked: {e}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        report.tasks += tasks;
        report.succeeded += tasks - v.lost;
        report.lost += v.lost;
        report.double_commits += v.double_commits;
        report.executions += v.executions;
        report.excess_executions += v.excess;
        report.stray_rows += v.stray_rows;
        report.unledgered_commits += v.unledgered;
        report.decisions += decisions;
        report.decided += v.decided;
        report.announced_twice += v.announced_twice;
        report.stray_ballots += v.stray_ballots;
    }
    report.re_executions = report.executions.saturating_sub(report.tasks);
    report.seconds = started.elapsed().as_secs_f64();
    let r = &mut report;
    for (count, what) in [
        (r.lost, "tasks lost"),
        (r.double_commits, "double commits"),
        (r.excess_executions, "excess executions"),
        (r.stray_rows, "stray rows"),
        (
            r.unledgered_commits,
            "committed attempts missing from the ledger",
        ),
    ] {
        r.verdict.check(count == 0, || format!("{count} {what}"));
    }
    let undecided = r.decisions - r.decided;
    for (count, what) in [
        (undecided, "decisions not decided yes"),
        (r.announced_twice, "decisions announced twice"),
        (
            r.stray_ballots,
            "ballots not from the journal or run elsewhere",
        ),
    ] {
        r.verdict.check(count == 0, || format!("{count} {what}"));
    }
    Ok(report)
}

/// How a child ended.
#[derive(Debug, PartialEq, Eq)]
enum Exit {
    /// By the parent's SIGKILL.
    Killed,
    /// It ran the work to the end and exited 0 (the last child must; another may, if its
    /// kill came after the work was done).
    Finished,
    /// Any other way: it failed, or a signal other than ours struck it. `last` children
    /// are never killed, so for them SIGKILL too is dying on their own.
    Died,
}

impl Exit {
    fn of(status: ExitStatus, last: bool) -> Self {
        const SIGKILL: i32 = 9;
        if status.success() {
            Exit::Finished
        } else if !last && status.signal() == Some(SIGKILL) {
            Exit::Killed
        } else {
            Exit::Died
        }
    }
}

fn spawn_child(exe: &Path, c: &ChildOptions) -> Result<std::process::Child, Error> {
    Command::new(exe)
        .args(["bench", "crash-child", "--db"])
        .arg(&c.db)
        .arg("--ledger")
        .arg(&c.ledger)
        .args([
            "--tasks",
            &c.tasks.to_string(),
            "--agents",
            &c.agents.to_string(),
            "--seed",
            &c.seed.to_string(),
            "--decisions",
            &c.decisions.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| Error::Options(format!("cannot start {}: {e}", exe.display())))
}

/// Attempts per task from the ledger.
fn ledger(path: &Path) -> Result<HashMap<u64, Vec<u32>>, Error> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut attempts: HashMap<u64, Vec<u32>> = HashMap::new();
    for line in text.lines() {
        let mut parts = line.split(' ');
        let (Some(task), Some(attempt)) = (parts.next(), parts.next()) else {
            continue;
        };
        // A kill can cut the last line short; a torn line is not an execution we can name.
        let (Ok(task), Ok(attempt)) = (task.parse(), attempt.parse()) else {
            continue;
        };
        attempts.entry(task).or_default().push(attempt);
    }
    Ok(attempts)
}

/// Tasks the ledger shows started whose results the journal does not hold.
fn in_flight(reopen: &Reopen, db: &Path, ledger_path: &Path) -> Result<Vec<u64>, Error> {
    let executed = ledger(ledger_path)?;
    // Nothing ran yet: the child may have been killed before its journal existed or had its
    // schema (the ledger is opened first), and there is nothing to look up.
    if executed.is_empty() {
        return Ok(Vec::new());
    }
    let reader = reopen(db)?;
    let mut open = Vec::new();
    for task in executed.keys() {
        let done = reader
            .task(TaskId(*task))?
            .is_some_and(|r| r.state.is_terminal());
        if !done {
            open.push(*task);
        }
    }
    Ok(open)
}

/// What one run's journal and ledger show.
struct Checked {
    lost: u64,
    double_commits: u64,
    executions: u64,
    excess: u64,
    stray_rows: u64,
    unledgered: u64,
    decided: u64,
    announced_twice: u64,
    stray_ballots: u64,
}

/// Checks one finished run against its ledger and the kills that struck each task.
fn verify(
    reader: &dyn Readback,
    ledger_path: &Path,
    tasks: u64,
    struck: &HashMap<u64, u64>,
) -> Result<Checked, Error> {
    let executed = ledger(ledger_path)?;
    let opened = reader.decisions()?;
    let (rows, ballots): (Vec<_>, Vec<_>) = reader.tasks()?.into_iter().partition(|row| {
        !opened
            .iter()
            .any(|d| d.ballot_ranges().any(|(a, b)| (a..b).contains(&row.id.0)))
    });
    let ballots: HashMap<u64, colony_journal::TaskRow> =
        ballots.into_iter().map(|r| (r.id.0, r)).collect();
    let announced = announcements(ledger_path);
    let mut checked = Decisions::default();
    for decision in &opened {
        checked.check(decision, &ballots, &announced);
    }
    let succeeded = rows
        .iter()
        .filter(|r| r.state == TaskState::Succeeded)
        .count() as u64;
    let mut keys = std::collections::HashSet::new();
    let repeated = rows
        .iter()
        .filter(|r| !keys.insert(r.spec.key.clone()))
        .count() as u64;
    let stray_rows = repeated + (rows.len() as u64).saturating_sub(tasks);
    let (mut double_commits, mut unledgered) = (0, 0);
    for row in rows.iter().filter(|r| r.state == TaskState::Succeeded) {
        let attempts = executed
            .get(&row.id.0)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // The ledger line is written before the attempt runs, so a commit without one is a
        // lost write, and the ledger cannot be trusted to show every execution.
        unledgered += u64::from(!attempts.contains(&row.attempt));
        // The committed attempt is the last one run, and no attempt number ran twice.
        let later = attempts.iter().any(|&a| a > row.attempt);
        let mut sorted = attempts.to_vec();
        sorted.sort_unstable();
        let reused = sorted.windows(2).any(|w| w[0] == w[1]);
        double_commits += u64::from(later || reused);
    }
    // Of the tasks submitted: ballots run once per voter, and their re-runs are checked by
    // the excess below.
    let executions = executed
        .iter()
        .filter(|(task, _)| !ballots.contains_key(task))
        .map(|(_, v)| v.len() as u64)
        .sum();
    let excess = executed
        .iter()
        .map(|(task, runs)| {
            let allowed = 1 + struck.get(task).copied().unwrap_or(0);
            (runs.len() as u64).saturating_sub(allowed)
        })
        .sum();
    Ok(Checked {
        lost: tasks.saturating_sub(succeeded),
        double_commits,
        executions,
        excess,
        stray_rows,
        unledgered,
        decided: checked.decided,
        announced_twice: checked.announced_twice,
        stray_ballots: checked.stray_ballots,
    })
}

/// How often each decision was announced, from the ledger's `d <id>` lines.
fn announcements(path: &Path) -> HashMap<u64, u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut seen: HashMap<u64, u64> = HashMap::new();
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("d ").and_then(|id| id.parse().ok()) {
            *seen.entry(id).or_default() += 1;
        }
    }
    seen
}

/// The decision checks of one run.
#[derive(Default)]
struct Decisions {
    decided: u64,
    announced_twice: u64,
    stray_ballots: u64,
}

impl Decisions {
    fn check(
        &mut self,
        decision: &colony_journal::DecisionRow,
        ballots: &HashMap<u64, colony_journal::TaskRow>,
        announced: &HashMap<u64, u64>,
    ) {
        let id = decision.id.0;
        self.announced_twice += u64::from(announced.get(&id).copied().unwrap_or(0) > 1);
        // Every task of its calls, with the agent it was asked of.
        let asked: Vec<(u64, colony_core::AgentId)> = decision
            .tasks()
            .map(|(task, seat)| (task.0, seat.agent))
            .collect();
        for &(task, agent) in &asked {
            let ended_here = ballots
                .get(&task)
                .is_some_and(|row| row.state.is_terminal() && row.agent.is_none_or(|a| a == agent));
            self.stray_ballots += u64::from(!ended_here);
        }
        let Some(outcome) = decision
            .outcome
            .as_deref()
            .and_then(|o| serde_json::from_str::<serde_json::Value>(o).ok())
        else {
            return;
        };
        let outcome = &outcome["outcome"];
        let yes = outcome["result"] == "decided" && outcome["winner"]["value"] == BALLOT;
        self.decided += u64::from(yes);
        for counted in outcome["record"]["ballots"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let voter = counted["ballot"]["voter"].as_u64();
            let journaled = asked.iter().any(|&(task, agent)| {
                Some(u64::from(agent.0)) == voter
                    && ballots.get(&task).is_some_and(|row| {
                        let said = row.output.as_deref();
                        row.state == TaskState::Succeeded
                            && row.agent == Some(agent)
                            && (said == Some(BALLOT.as_bytes()) || said == Some(REVIEW.as_bytes()))
                    })
            });
            self.stray_ballots += u64::from(!journaled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks of a run on its SQLite journal, no kill having struck.
    fn checked(o: &ChildOptions) -> Checked {
        verify(
            &*sqlite_readback(&o.db).unwrap(),
            &o.ledger,
            o.tasks,
            &HashMap::new(),
        )
        .unwrap()
    }

    fn sqlite(dir: &Path) -> Arc<dyn Journal> {
        open_sqlite(&dir.join("run.db")).unwrap()
    }

    fn options(dir: &Path, ledger: PathBuf) -> ChildOptions {
        ChildOptions {
            db: dir.join("run.db"),
            ledger,
            tasks: 300,
            agents: 8,
            seed: 1,
            decisions: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ledger_that_cannot_be_written_stops_the_child() {
        let dir = tempfile::tempdir().unwrap();
        // Every write to /dev/full fails with "no space left on device".
        let error = child(&options(dir.path(), "/dev/full".into()), sqlite(dir.path()))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("could not be written"), "{error}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_missing_from_the_ledger_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let o = options(dir.path(), dir.path().join("run.ledger"));
        child(&o, open_sqlite(&o.db).unwrap()).await.unwrap();
        let whole = checked(&o);
        assert_eq!(
            (whole.lost, whole.unledgered, whole.double_commits),
            (0, 0, 0)
        );
        // A ledger that lost the lines of the last 100 executions.
        let text = std::fs::read_to_string(&o.ledger).unwrap();
        let kept: Vec<&str> = text.lines().take(200).collect();
        std::fs::write(&o.ledger, kept.join("\n") + "\n").unwrap();
        let cut = checked(&o);
        assert_eq!(cut.unledgered, 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decisions_of_a_run_are_checked_against_the_journal_and_the_announcements() {
        let dir = tempfile::tempdir().unwrap();
        let o = ChildOptions {
            decisions: 3,
            ..options(dir.path(), dir.path().join("run.ledger"))
        };
        child(&o, open_sqlite(&o.db).unwrap()).await.unwrap();
        let whole = checked(&o);
        assert_eq!(
            (
                whole.lost,
                whole.stray_rows,
                whole.unledgered,
                whole.double_commits
            ),
            (0, 0, 0, 0),
            "ballots are kept out of the task checks"
        );
        assert_eq!(
            (whole.decided, whole.announced_twice, whole.stray_ballots),
            (3, 0, 0)
        );
        // A second announcement of a decision is found.
        let first = announcements(&o.ledger)
            .into_keys()
            .min()
            .expect("announced");
        let mut ledger = OpenOptions::new().append(true).open(&o.ledger).unwrap();
        ledger.write_all(format!("d {first}\n").as_bytes()).unwrap();
        let twice = checked(&o);
        assert_eq!(twice.announced_twice, 1);
        // A restarted child of a finished run opens no decision again.
        child(&o, open_sqlite(&o.db).unwrap()).await.unwrap();
        let reader = SqliteReader::open(&o.db).unwrap();
        assert_eq!(reader.decisions(None, 100).unwrap().len(), 3);
    }

    #[test]
    fn a_child_that_dies_on_its_own_fails_the_verdict() {
        let dir = tempfile::tempdir().unwrap();
        // `false` ignores the child's arguments and exits 1 at once: no kill is needed.
        let report = parent(Path::new("/bin/false"), 1, 10, 0, 2, 2, 1, dir.path(), None).unwrap();
        assert!(!report.verdict.ok);
        assert!(report.children_died >= 1);
        let problems = report.verdict.problems.join("\n");
        assert!(problems.contains("exited on its own"), "{problems}");
    }

    #[test]
    fn a_child_killed_while_creating_its_journal_left_nothing_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let (db, ledger) = (dir.path().join("run.db"), dir.path().join("run.ledger"));
        // The file SQLite creates on open, before any schema; the ledger opened, empty.
        std::fs::write(&db, b"").unwrap();
        std::fs::write(&ledger, b"").unwrap();
        assert_eq!(
            in_flight(&sqlite_readback, &db, &ledger).unwrap(),
            Vec::<u64>::new()
        );
        // With executions in the ledger, a journal that cannot be read is an error.
        std::fs::write(&ledger, b"1 1\n").unwrap();
        assert!(in_flight(&sqlite_readback, &db, &ledger).is_err());
    }

    #[test]
    fn exits_are_told_apart() {
        use std::os::unix::process::ExitStatusExt;
        let killed = ExitStatus::from_raw(9);
        let failed = ExitStatus::from_raw(1 << 8);
        let finished = ExitStatus::from_raw(0);
        assert_eq!(Exit::of(killed, false), Exit::Killed);
        assert_eq!(Exit::of(killed, true), Exit::Died);
        assert_eq!(Exit::of(failed, false), Exit::Died);
        assert_eq!(Exit::of(finished, false), Exit::Finished);
        assert_eq!(Exit::of(finished, true), Exit::Finished);
    }
}
