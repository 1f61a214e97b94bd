//! `colony runs`: workflow runs on a server (`colony serve --runs DIR`) from the command line:
//! submit a workflow file and wait for it, list the runs, show one's tasks, cancel one.

use super::client::{Client, ServerArgs, block_on};
use crate::{
    Failure,
    output::{Table, thousands},
};
use serde_json::Value;
use std::{path::PathBuf, time::Duration};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Run a workflow file on the server (admin token); --wait for it to end.
    Submit(SubmitArgs),
    /// The runs the server remembers, newest first.
    List(ListArgs),
    /// A run's tasks: wave, state, attempts, seconds, cost.
    Show(ShowArgs),
    /// Stop a run: nothing more starts, running attempts stop, unfinished tasks end cancelled.
    Cancel(ShowArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The workflow file: YAML, or TOML when its name ends in `.toml`.
    file: PathBuf,
    /// Wait for the run to end, print its tasks, and exit 1 unless every task succeeded.
    #[arg(long)]
    wait: bool,
    /// Print the server's answers as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// At most this many runs.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The run.
    id: u64,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(command: &Command) -> Result<(), Failure> {
    match command {
        Command::Submit(args) => submit(args),
        Command::List(args) => list(args),
        Command::Show(args) => show(args),
        Command::Cancel(args) => cancel(args),
    }
}

/// How often `--wait` asks how the run stands.
const POLL: Duration = Duration::from_millis(250);

fn submit(args: &SubmitArgs) -> Result<(), Failure> {
    let text = colony_workflow::read_bounded(&args.file, colony_workflow::MAX_FILE_BYTES)
        .map_err(|e| Failure::input(anyhow::anyhow!("{}: {e}", args.file.display())))?;
    let toml = args.file.extension().is_some_and(|e| e == "toml");
    let kind = if toml {
        "application/toml"
    } else {
        "application/yaml"
    };
    let client = Client::new(&args.server)?;
    block_on(async {
        let posted = client.post_text("/v1/runs", kind, text).await?;
        let id = posted["id"]
            .as_u64()
            .ok_or_else(|| Failure::work(anyhow::anyhow!("the server gave no run id: {posted}")))?;
        if !args.wait {
            if args.json {
                println!("{posted}");
            } else {
                println!("run {id} started: colony runs show {id}");
            }
            return Ok(());
        }
        let graph = loop {
            let graph = client.get(&format!("/v1/runs/{id}/graph")).await?;
            if graph["state"] != "running" {
                break graph;
            }
            tokio::time::sleep(POLL).await;
        };
        print_graph(&graph, args.json);
        match graph["state"].as_str() {
            Some("succeeded") => Ok(()),
            state => Err(Failure::work(anyhow::anyhow!(
                "run {id} ended {}",
                state.unwrap_or("without a state")
            ))),
        }
    })
}

fn list(args: &ListArgs) -> Result<(), Failure> {
    let client = Client::new(&args.server)?;
    block_on(async {
        let runs = client
            .get(&format!("/v1/runs?limit={}", args.limit))
            .await?;
        if args.json {
            println!("{runs}");
            return Ok(());
        }
        let mut t = Table::new(&["run", "name", "state", "ended", "failed", "cost"]);
        for r in runs["runs"].as_array().into_iter().flatten() {
            let n = |k: &str| r[k].as_u64().unwrap_or_default();
            let ended = n("succeeded") + n("failed") + n("skipped") + n("cancelled");
            t.row(vec![
                n("id").to_string(),
                r["name"].as_str().unwrap_or_default().to_owned(),
                r["state"].as_str().unwrap_or_default().to_owned(),
                format!("{}/{}", thousands(ended), thousands(n("tasks"))),
                thousands(n("failed")),
                dollars(r["cost-usd"].as_f64()),
            ]);
        }
        print!("{}", t.render());
        Ok(())
    })
}

fn show(args: &ShowArgs) -> Result<(), Failure> {
    let client = Client::new(&args.server)?;
    block_on(async {
        let graph = client.get(&format!("/v1/runs/{}/graph", args.id)).await?;
        print_graph(&graph, args.json);
        Ok(())
    })
}

fn cancel(args: &ShowArgs) -> Result<(), Failure> {
    let client = Client::new(&args.server)?;
    block_on(async {
        let answer = client
            .post(
                &format!("/v1/runs/{}/cancel", args.id),
                &serde_json::json!({}),
                None,
            )
            .await?;
        if args.json {
            println!("{answer}");
        } else {
            println!(
                "run {}: stopping; its unfinished tasks end cancelled",
                args.id
            );
        }
        Ok(())
    })
}

/// A run's graph: its tasks in the file's order, then a line of totals.
fn print_graph(graph: &Value, json: bool) {
    if json {
        println!("{graph}");
        return;
    }
    let mut t = Table::new(&["task", "wave", "state", "attempts", "seconds", "cost"]);
    for task in graph["graph"].as_array().into_iter().flatten() {
        t.row(vec![
            task["id"].as_str().unwrap_or_default().to_owned(),
            task["wave"].as_u64().unwrap_or_default().to_string(),
            task["state"].as_str().unwrap_or_default().to_owned(),
            task["attempts"].as_u64().unwrap_or_default().to_string(),
            task["seconds"]
                .as_f64()
                .map_or_else(String::new, |s| format!("{s:.2}")),
            dollars(task["cost-usd"].as_f64()),
        ]);
    }
    print!("{}", t.render());
    println!(
        "run {}: {} ({} tasks); cost {}",
        graph["id"],
        graph["state"].as_str().unwrap_or_default(),
        thousands(graph["tasks"].as_u64().unwrap_or_default()),
        dollars(graph["cost-usd"].as_f64().or(Some(0.0))),
    );
}

fn dollars(x: Option<f64>) -> String {
    x.map_or_else(String::new, |c| format!("${c:.4}"))
}
