//! `colony tasks --db PATH`: what a journal holds, also while another process runs on it
//! (a journal in NATS, `--db nats://HOST:PORT/NAME`, is read back without being taken over);
//! `colony tasks --server URL`: what a running server holds.

use crate::{
    Failure,
    output::{Table, thousands},
};
use colony_core::{TaskId, task::TaskState};
use colony_journal::{Journal, SqliteReader, TaskRow};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    source: crate::commands::client::Source,
    /// Only tasks in this state.
    #[arg(long, value_parser = ["queued", "running", "succeeded", "failed", "dead-lettered", "cancelled"])]
    state: Option<String>,
    /// Most tasks to list.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print the counts and tasks as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    counts: Vec<(String, u64)>,
    total: u64,
    tasks: Vec<TaskLine>,
}

#[derive(Debug, Serialize)]
struct TaskLine {
    id: u64,
    key: Option<String>,
    state: TaskState,
    attempts: u32,
    agent: Option<u32>,
    error: Option<String>,
}

/// The first `limit` tasks of `journal` in `state` (all when `None`), oldest first, as a
/// SQLite journal lists them.
fn oldest(
    journal: &dyn Journal,
    state: Option<TaskState>,
    limit: usize,
) -> Result<Vec<TaskRow>, Failure> {
    let mut rows = Vec::new();
    for id in 1..journal.next_task_id().0 {
        if rows.len() >= limit {
            break;
        }
        match journal.task(TaskId(id)).map_err(Failure::work)? {
            Some(row) if state.is_none_or(|s| row.state == s) => rows.push(row),
            _ => {}
        }
    }
    Ok(rows)
}

const STATES: [TaskState; 6] = [
    TaskState::Queued,
    TaskState::Running,
    TaskState::Succeeded,
    TaskState::Failed,
    TaskState::DeadLettered,
    TaskState::Cancelled,
];

pub(crate) fn run(args: &Args) -> Result<(), Failure> {
    use crate::commands::client::Origin;
    let db = match args.source.origin()? {
        Origin::Journal(db) => db,
        Origin::Server(server) => {
            return crate::commands::client::tasks(
                &server,
                args.state.as_deref(),
                args.limit,
                args.json,
            );
        }
    };
    let state = args.state.as_deref().map(|name| {
        *STATES
            .iter()
            .find(|s| s.as_str() == name)
            .expect("clap allows only known states")
    });
    let (counts, rows) = match super::in_nats(db) {
        Some(location) => {
            let journal =
                colony_cluster::JournalOptions::parse(location).map_err(Failure::input)?;
            let journal = colony_cluster::journal::read(&journal).map_err(super::nats_failure)?;
            let counts = journal.counts().map_err(Failure::work)?;
            (counts, oldest(&journal, state, args.limit)?)
        }
        None => {
            let reader = SqliteReader::open(db).map_err(Failure::input)?;
            let counts = reader.counts().map_err(Failure::work)?;
            let rows = reader.tasks(state, args.limit).map_err(Failure::work)?;
            (counts, rows)
        }
    };
    let report = Report {
        counts: STATES
            .iter()
            .map(|s| (s.as_str().to_owned(), counts.get(*s)))
            .collect(),
        total: counts.total(),
        tasks: rows
            .into_iter()
            .map(|r| TaskLine {
                id: r.id.0,
                key: r.spec.key.map(|k| k.to_string()),
                state: r.state,
                attempts: r.attempt,
                agent: r.agent.map(|a| a.0),
                error: r.error.map(|e| e.to_string()),
            })
            .collect(),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(Failure::work)?
        );
        return Ok(());
    }
    let mut t = Table::new(&["state", "tasks"]);
    for (name, n) in &report.counts {
        t.row(vec![name.clone(), thousands(*n)]);
    }
    t.row(vec!["total".into(), thousands(report.total)]);
    print!("{}", t.render());
    if !report.tasks.is_empty() {
        println!();
        let mut t = Table::new(&["id", "state", "attempts", "agent", "error"]);
        for task in &report.tasks {
            let mut error = task.error.clone().unwrap_or_default();
            if error.chars().count() > 60 {
                error = error.chars().take(57).collect::<String>() + "...";
            }
            t.row(vec![
                task.id.to_string(),
                task.state.to_string(),
                task.attempts.to_string(),
                task.agent.map_or("-".into(), |a| a.to_string()),
                error,
            ]);
        }
        print!("{}", t.render());
    }
    Ok(())
}
