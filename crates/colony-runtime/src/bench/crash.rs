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
//! - the journal holds exactly the tasks submitted, each key once.

use crate::{Error, Pool, Runtime, RuntimeOptions, SpawnMode};
use colony_agents::{
    Agent, AgentSpec, Execution, Task,
    sim::{Latency, Sim, SimOptions},
};
use colony_core::task::{TaskSpec, TaskState};
use colony_journal::{Journal, SqliteJournal, SqliteOptions, SqliteReader};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::Serialize;
use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// What the child runs.
#[derive(Clone, Debug)]
pub struct ChildOptions {
    pub db: PathBuf,
    pub ledger: PathBuf,
    pub tasks: u64,
    pub agents: u32,
    pub seed: u64,
}

/// Appends every attempt it starts to the ledger, then behaves like its sim.
struct Ledgered {
    sim: Sim,
    ledger: Mutex<File>,
}

impl Agent for Ledgered {
    fn handle(&self, task: Task) -> Execution {
        {
            let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
            // One write per line, unbuffered: a SIGKILL loses nothing already written.
            let _ = ledger.write_all(format!("{} {}\n", task.id.0, task.attempt).as_bytes());
        }
        self.sim.handle(task)
    }
}

/// The child: run what is left of the workload on the journal at `db`.
pub async fn child(options: &ChildOptions) -> Result<(), Error> {
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
    let agent = Ledgered {
        sim: Sim::new(sim).map_err(|e| Error::Options(e.to_string()))?,
        ledger: Mutex::new(ledger),
    };
    let pool = Pool::new(
        AgentSpec::new("sim", "worker"),
        options.agents,
        Arc::new(agent),
    );
    let journal = Arc::new(SqliteJournal::open(SqliteOptions::new(&options.db))?);
    let accepted = journal.next_task_id().0 - 1;
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
    let batch = (handle.stats().capacity as u64).clamp(1, 500);
    let mut next = accepted;
    while next < options.tasks {
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
    runtime.shutdown().await;
    Ok(())
}

/// What the parent checks.
#[derive(Clone, Debug, Default, Serialize)]
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
    pub seconds: f64,
    /// Whether every check held.
    pub ok: bool,
}

/// The parent: `runs` runs of `tasks` tasks, each killed 1..=`max_kills` times.
pub fn parent(
    exe: &Path,
    runs: u32,
    tasks: u64,
    agents: u32,
    max_kills: u32,
    seed: u64,
    scratch: &Path,
) -> Result<CrashReport, Error> {
    let started = Instant::now();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut report = CrashReport {
        runs,
        tasks_per_run: tasks,
        ..CrashReport::default()
    };
    for run in 0..runs {
        let db = scratch.join(format!("crash-{run}.db"));
        let ledger = scratch.join(format!("crash-{run}.ledger"));
        let kills = rng.random_range(1..=max_kills.max(1));
        let child = ChildOptions {
            db: db.clone(),
            ledger: ledger.clone(),
            tasks,
            agents,
            seed: seed ^ u64::from(run),
        };
        // Per task: kills that struck while it had run and was not committed.
        let mut struck: HashMap<u64, u64> = HashMap::new();
        for k in 0..=kills {
            let mut process = spawn_child(exe, &child)?;
            if k < kills {
                std::thread::sleep(Duration::from_millis(rng.random_range(5..150)));
                let _ = process.kill();
                let _ = process.wait();
                report.kills += 1;
                let open = in_flight(&db, &ledger)?;
                report.in_flight_at_kills += open.len() as u64;
                for task in open {
                    *struck.entry(task).or_default() += 1;
                }
            } else {
                let status = process
                    .wait()
                    .map_err(|e| Error::Options(format!("child: {e}")))?;
                if !status.success() {
                    return Err(Error::Options(format!(
                        "run {run}: the last child failed with {status}"
                    )));
                }
            }
        }
        let v = verify(&db, &ledger, tasks, &struck)?;
        report.tasks += tasks;
        report.succeeded += tasks - v.lost;
        report.lost += v.lost;
        report.double_commits += v.double_commits;
        report.executions += v.executions;
        report.excess_executions += v.excess;
        report.stray_rows += v.stray_rows;
    }
    report.re_executions = report.executions.saturating_sub(report.tasks);
    report.seconds = started.elapsed().as_secs_f64();
    report.ok = report.lost == 0
        && report.double_commits == 0
        && report.excess_executions == 0
        && report.stray_rows == 0;
    Ok(report)
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
fn in_flight(db: &Path, ledger_path: &Path) -> Result<Vec<u64>, Error> {
    let reader = match SqliteReader::open(db) {
        Ok(reader) => reader,
        // Killed before the journal existed or had its schema: nothing could have run.
        Err(_) if !ledger_path.exists() => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let executed = ledger(ledger_path)?;
    let mut open = Vec::new();
    for task in executed.keys() {
        let done = reader
            .task(colony_core::TaskId(*task))?
            .is_some_and(|r| r.state.is_terminal());
        if !done {
            open.push(*task);
        }
    }
    Ok(open)
}

struct Verdict {
    lost: u64,
    double_commits: u64,
    executions: u64,
    excess: u64,
    stray_rows: u64,
}

/// Checks one finished run against its ledger and the kills that struck each task.
fn verify(
    db: &Path,
    ledger_path: &Path,
    tasks: u64,
    struck: &HashMap<u64, u64>,
) -> Result<Verdict, Error> {
    let reader = SqliteReader::open(db)?;
    let executed = ledger(ledger_path)?;
    let rows = reader.tasks(None, usize::MAX)?;
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
    let mut double_commits = 0;
    for row in rows.iter().filter(|r| r.state == TaskState::Succeeded) {
        let attempts = executed
            .get(&row.id.0)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // The committed attempt is the last one run, and no attempt number ran twice.
        let later = attempts.iter().any(|&a| a > row.attempt);
        let mut sorted = attempts.to_vec();
        sorted.sort_unstable();
        let reused = sorted.windows(2).any(|w| w[0] == w[1]);
        double_commits += u64::from(later || reused);
    }
    let executions = executed.values().map(|v| v.len() as u64).sum();
    let excess = executed
        .iter()
        .map(|(task, runs)| {
            let allowed = 1 + struck.get(task).copied().unwrap_or(0);
            (runs.len() as u64).saturating_sub(allowed)
        })
        .sum();
    Ok(Verdict {
        lost: tasks.saturating_sub(succeeded),
        double_commits,
        executions,
        excess,
        stray_rows,
    })
}
