//! Decisions over HTTP. A task submitted with a `decide` block is asked of several distinct
//! agents at once and their outputs are counted as ballots (`colony_runtime::decision`): the
//! request returns once the decision and its ballot tasks are journaled, and the vote is
//! counted in the background, its outcome journaled before it is published
//! (`consensus:reached` / `consensus:failed` on the event stream). `GET /v1/decisions/{id}`
//! shows one, open or ended, from the journal; `GET /v1/decisions` the newest first.

use crate::{App, problem, tasks::MAX_PAGE};
use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use colony_agents::AgentSpec;
use colony_core::{
    TaskId,
    decision::{self, DecisionOptions, Normalise, Protocol, Tie},
};
use colony_journal::{DecisionRow, Journal};
use colony_runtime::decision::Vote;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

/// The `decide` block of a submitted task. Times are in seconds; the other fields are those
/// of [`DecisionOptions`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct NewDecision {
    /// Distinct agents asked, each once.
    voters: u32,
    #[serde(default)]
    protocol: Protocol,
    threshold: Option<f64>,
    participation: Option<f64>,
    /// Seconds.
    timeout: Option<f64>,
    #[serde(default)]
    tie: Tie,
    normalise: Option<Normalise>,
    similarity: Option<f64>,
    faults: Option<u32>,
    fast_quorum: Option<f64>,
    max_rounds: Option<u32>,
    /// Seconds.
    judge_timeout: Option<f64>,
    /// Under `weighted` and `confidence`, the weight of each pool's voters, by pool index
    /// (as `/v1/pools` lists them); pools past the list's end weigh 1.
    #[serde(default)]
    weights: Vec<f64>,
    /// Under `weighted` and `confidence`, the weight of each role's voters (of the pools of
    /// that role); roles not listed weigh 1. Not with `weights`.
    #[serde(default)]
    role_weights: std::collections::BTreeMap<String, f64>,
    /// Under `weighted` and `confidence`, each voter also weighs its reputation.
    #[serde(default)]
    reputation: bool,
    /// A cluster's (`colony serve --nats`): the voters span its nodes, each ballot a cluster
    /// task of its own.
    #[serde(default)]
    spread: bool,
}

impl NewDecision {
    /// The vote it asks for among `pools` (by index), or what is wrong with it.
    pub(crate) fn vote(self, pools: &[(AgentSpec, u64)]) -> Result<Vote, String> {
        if self.spread {
            return Err(
                "decide.spread spreads the voters over a cluster's nodes, and this server runs one runtime (its voters are its own agents): leave it out, or submit to colony serve --nats"
                    .into(),
            );
        }
        let defaults = DecisionOptions::default();
        let seconds = |field: &str, value: Option<f64>, default: Duration| match value {
            None => Ok(default),
            Some(t) if t.is_finite() && t > 0.0 && t <= decision::MAX_TIMEOUT.as_secs_f64() => {
                Ok(Duration::from_secs_f64(t))
            }
            Some(t) => Err(format!(
                "decide.{field} {t} is out of range: allowed above 0 and up to {} seconds",
                decision::MAX_TIMEOUT.as_secs()
            )),
        };
        let timeout = seconds("timeout", self.timeout, defaults.timeout)?;
        let judge_timeout = seconds("judge-timeout", self.judge_timeout, defaults.judge_timeout)?;
        let options = DecisionOptions {
            protocol: self.protocol,
            threshold: self.threshold.unwrap_or(defaults.threshold),
            participation: self.participation.unwrap_or(defaults.participation),
            timeout,
            tie: self.tie,
            normalise: self.normalise.unwrap_or(defaults.normalise),
            similarity: self.similarity.unwrap_or(defaults.similarity),
            faults: self.faults,
            fast_quorum: self.fast_quorum.unwrap_or(defaults.fast_quorum),
            max_rounds: self.max_rounds.unwrap_or(defaults.max_rounds),
            judge_timeout,
        };
        if self.weights.len() > pools.len() {
            return Err(format!(
                "decide.weights lists {} pools, but this server runs {} (pools 0..{})",
                self.weights.len(),
                pools.len(),
                pools.len()
            ));
        }
        if !self.weights.is_empty() && !self.role_weights.is_empty() {
            return Err(
                "decide.weights and decide.role-weights both weigh the voters: give one".into(),
            );
        }
        colony_cluster::check_role_weights(&self.role_weights, options.protocol)
            .map_err(|e| format!("decide.role-weights: {e}"))?;
        // Weights by role weigh each pool of the role.
        let pool_weights = match self.role_weights.is_empty() {
            true => self.weights,
            false => pools
                .iter()
                .map(|(spec, _)| self.role_weights.get(&*spec.role).copied().unwrap_or(1.0))
                .collect(),
        };
        Ok(Vote {
            voters: self.voters,
            options,
            pool_weights,
            reputation: self.reputation,
        })
    }
}

impl NewDecision {
    /// The vote as a cluster carries it (`colony serve --nats`): the node that takes the task
    /// seats the voters among its own agents, each weighing its role's `role-weights`. Pool
    /// weights by index are refused: a cluster's nodes host pools of their own.
    pub(crate) fn for_cluster(mut self) -> Result<colony_cluster::Decide, String> {
        if !self.weights.is_empty() {
            return Err(
                "decide.weights weighs pools by index, and a cluster's nodes host pools of their own: weigh voters by role (decide.role-weights) or by reputation instead".into(),
            );
        }
        // Checked as a local vote's are (roles, range, how many, the protocol); a weight of
        // 1 is no weight.
        let mut role_weights = self.role_weights.clone();
        role_weights.retain(|_, w| *w != 1.0);
        let spread = std::mem::take(&mut self.spread);
        let mut decide =
            colony_cluster::Decide::of(&self.vote(&[])?, &[]).map_err(|e| format!("decide {e}"))?;
        decide.role_weights = role_weights;
        decide.spread = spread;
        decide.check().map_err(|e| format!("decide: {e}"))?;
        Ok(decide)
    }
}

/// How decision `row` ended (counted again from its answers if it was taken inline), once it
/// has; why its record does not read, when it does not (the decision is then `unreadable`).
fn outcome(row: &DecisionRow) -> (Option<Value>, Option<String>) {
    match colony_runtime::decision::outcome_of(row) {
        Ok(outcome) => (outcome, None),
        Err(error) => {
            tracing::warn!(%error, "A decision's record could not be read.");
            (None, Some(error.to_string()))
        }
    }
}

/// A decision's state: `open`, how it ended (`decided`, `failed`), or `unreadable`.
fn state<'a>(outcome: Option<&'a Value>, problem: Option<&String>) -> &'a str {
    match (outcome, problem) {
        (_, Some(_)) => "unreadable",
        (Some(o), None) => o["outcome"]["result"].as_str().unwrap_or("unreadable"),
        (None, None) => "open",
    }
}

/// A decision as the API shows it. While it is open, each voter's ballot task is read for its
/// state; once ended, the voters are as the outcome recorded them.
fn view(row: &DecisionRow, journal: &dyn Journal) -> Result<Value, colony_journal::Error> {
    let options: Value = serde_json::from_str(&row.opening.options).unwrap_or(Value::Null);
    let (outcome, problem) = outcome(row);
    let voters = match &outcome {
        Some(ended) => ended["voters"].clone(),
        None => {
            // Each voter's latest task: the opening's, or a later call's.
            let mut latest: Vec<Option<TaskId>> = vec![None; row.opening.seats.len()];
            for (task, asked) in row.tasks() {
                let seat = row
                    .opening
                    .seats
                    .iter()
                    .position(|s| s.agent == asked.agent);
                if let Some(seat) = seat {
                    latest[seat] = Some(task);
                }
            }
            let mut voters = Vec::with_capacity(row.opening.seats.len());
            for (seat, task) in row.opening.seats.iter().zip(latest) {
                let ballot = match task {
                    Some(task) => journal.task(task)?,
                    None => None,
                };
                voters.push(json!({
                    "agent": seat.agent.0,
                    "pool": seat.pool,
                    "task": task.map(|t| t.0),
                    "state": ballot.as_ref().map(|b| b.state),
                    "problem": ballot.as_ref().and_then(|b| b.error.as_deref()),
                }));
            }
            Value::Array(voters)
        }
    };
    let ended = outcome.as_ref().map(|o| &o["outcome"]);
    Ok(json!({
        "id": row.id.0,
        "state": state(outcome.as_ref(), problem.as_ref()),
        "problem": problem,
        "options": options,
        "weights": row.opening.seats.iter().map(|s| s.weight).collect::<Vec<_>>(),
        "opened-at-ms": row.opening.opened_at_ms,
        "ended-at-ms": row.ended_at_ms,
        "value": ended.map(|o| o["winner"]["value"].clone()),
        "reason": ended.map(|o| o["reason"].clone()),
        "voters": voters,
        "inline": outcome.as_ref().is_some_and(|o| o["inline"] == true),
        "outcome": ended,
    }))
}

/// A decision id from the path, or the 400 that says it is none.
#[allow(clippy::result_large_err)]
fn decision_id(id: &str) -> Result<TaskId, Response> {
    id.parse::<u64>().map(TaskId).map_err(|_| {
        problem(
            StatusCode::BAD_REQUEST,
            "bad-id",
            format!("{id:?} is not a decision id"),
        )
    })
}

/// `GET /v1/decisions/{id}`.
pub(crate) async fn one(
    State(app): State<std::sync::Arc<App>>,
    Path(id): Path<String>,
) -> Response {
    let id = match decision_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let read = app.read(move |journal| {
        journal
            .decision(id)?
            .map(|row| view(&row, journal))
            .transpose()
    });
    match read.await {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "no-such-decision",
            format!("there is no decision {id}"),
        ),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, "journal", e),
    }
}

/// `GET /v1/decisions?before=&limit=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    before: Option<u64>,
    limit: Option<usize>,
}

/// Most decisions one page lists: each may hold a thousand ballots.
const MAX_DECISIONS: usize = 100;

/// `GET /v1/decisions`: the newest first, each without its ballots.
pub(crate) async fn list(
    State(app): State<std::sync::Arc<App>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad-query",
            "the query takes before (a decision id) and limit",
        );
    };
    let limit = query.limit.unwrap_or(20);
    if !(1..=MAX_DECISIONS.min(MAX_PAGE)).contains(&limit) {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad-query",
            format!("limit {limit} is out of range: allowed 1..={MAX_DECISIONS}"),
        );
    }
    let before = query.before.map(TaskId);
    let read = app.read(move |journal| {
        let rows = journal.decisions(before, limit)?;
        let next = (rows.len() == limit).then(|| rows.last().map(|r| r.id.0));
        let summaries: Vec<Value> = rows.iter().map(summary).collect();
        Ok(json!({ "decisions": summaries, "next-before": next.flatten() }))
    });
    match read.await {
        Ok(body) => Json(body).into_response(),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, "journal", e),
    }
}

/// A decision in a list: how it ended, without its ballots.
pub(crate) fn summary(row: &DecisionRow) -> Value {
    let (outcome, problem) = outcome(row);
    let ended = outcome.as_ref().map(|o| &o["outcome"]);
    let protocol = serde_json::from_str::<Value>(&row.opening.options)
        .map(|o| o["protocol"].clone())
        .unwrap_or(Value::Null);
    json!({
        "id": row.id.0,
        "state": state(outcome.as_ref(), problem.as_ref()),
        "problem": problem,
        "protocol": protocol,
        "voters": row.opening.seats.len(),
        "opened-at-ms": row.opening.opened_at_ms,
        "ended-at-ms": row.ended_at_ms,
        "value": ended.map(|o| o["winner"]["value"].clone()),
        "support": ended.map(|o| o["winner"]["support"].clone()),
        "reason": ended.map(|o| o["reason"].clone()),
        "participation": ended.map(|o| o["record"]["participation"].clone()),
    })
}

/// Starts the decision a submitted task asks for, and counts it in the background: the
/// answer says where to follow it. Started in the background too: a client that hangs up
/// while its voters are seated leaves neither a decision nobody counts nor room taken.
pub(crate) async fn start(
    app: &App,
    spec: colony_core::task::TaskSpec,
    vote: Vote,
) -> Result<Value, colony_runtime::Error> {
    let (started, opened) = tokio::sync::oneshot::channel();
    let handle = app.handle.clone();
    colony_runtime::spawner::Spawner::spawn("decision", async move {
        let voting = match handle.decide(spec, vote).await {
            Ok(voting) => voting,
            Err(error) => {
                let _ = started.send(Err(error));
                return;
            }
        };
        let id = voting.id();
        let voters: Vec<Value> = voting
            .voters()
            .iter()
            .map(|v| json!({ "agent": v.agent.0, "pool": v.pool, "task": v.task.map(|t| t.0) }))
            .collect();
        let _ = started.send(Ok((id, voters)));
        // The outcome is journaled and published by the vote itself; a vote cut short by
        // the runtime stopping stays open in the journal and is counted at the next start.
        if let Err(error) = voting.outcome().await {
            tracing::warn!(decision = %id, %error, "A decision did not end here.");
        }
    });
    let (id, voters) = opened.await.map_err(|_| colony_runtime::Error::Stopped)??;
    Ok(json!({
        "decision": id.0,
        "location": format!("/v1/decisions/{}", id.0),
        "voters": voters,
    }))
}
