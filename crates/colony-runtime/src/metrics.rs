//! Every metric the runtime emits, declared once.
//!
//! Names carry the `colony_` prefix and a unit suffix. No metric has an agent or task id as a
//! label: a million agents would be a million series.

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};

pub const AGENTS_SPAWNED: &str = "colony_agents_spawned_total";
pub const AGENTS: &str = "colony_agents";
pub const AGENT_RESTARTS: &str = "colony_agent_restarts_total";
pub const ESCALATIONS: &str = "colony_supervisor_escalations_total";
pub const AGENTS_UNHEALTHY: &str = "colony_agents_unhealthy";
pub const HEALTH_ALERTS: &str = "colony_health_alerts_total";
pub const HEALTH_FAILURES: &str = "colony_health_failures_total";
pub const SIDELINED: &str = "colony_agents_sidelined_total";
pub const SPAWN_DURATION: &str = "colony_spawn_duration_seconds";
pub const TASKS_ACCEPTED: &str = "colony_tasks_accepted_total";
pub const TASKS_FINISHED: &str = "colony_tasks_finished_total";
pub const TASK_ATTEMPTS: &str = "colony_task_attempts_total";
pub const TASK_RETRIES: &str = "colony_task_retries_total";
pub const WORK_STEALS: &str = "colony_work_steals_total";
pub const REBALANCED: &str = "colony_tasks_rebalanced_total";
pub const TASK_LATENCY: &str = "colony_task_latency_seconds";
pub const TASKS_QUEUED: &str = "colony_tasks_queued";
pub const TASKS_RUNNING: &str = "colony_tasks_running";
pub const AGENTS_DOWN: &str = "colony_agents_down";
pub const DISPATCH_LATENCY: &str = "colony_dispatch_latency_seconds";
pub const ATTEMPT_DURATION: &str = "colony_attempt_duration_seconds";
pub const JOURNAL_COMMIT: &str = "colony_journal_commit_seconds";
pub const POOL_AGENTS: &str = "colony_pool_agents";
pub const POOL_DESIRED: &str = "colony_pool_desired_agents";
pub const POOL_WAITING: &str = "colony_pool_waiting_tasks";
pub const POOL_FORECAST: &str = "colony_pool_forecast_arrivals_per_second";
pub const POOL_FORECAST_ERROR: &str = "colony_pool_forecast_error_ratio";
pub const SCALING_DECISIONS: &str = "colony_scaling_decisions_total";
pub const DECISIONS: &str = "colony_decisions_total";
pub const DECISION_DURATION: &str = "colony_decision_duration_seconds";
pub const DECISION_PARTICIPATION: &str = "colony_decision_participation_ratio";
pub const DECISION_DISSENT: &str = "colony_decision_dissent_ratio";
pub const TEAMS: &str = "colony_teams_total";
pub const TEAM_REASSIGNMENTS: &str = "colony_team_reassignments_total";
pub const MESSAGES_SENT: &str = "colony_messages_sent_total";
pub const MESSAGES_DELIVERED: &str = "colony_messages_delivered_total";
pub const MESSAGES_RETURNED: &str = "colony_messages_returned_total";
pub const MESSAGES_UNRETURNABLE: &str = "colony_messages_unreturnable_total";
pub const MAILBOX_WAITS: &str = "colony_mailbox_full_waits_total";
pub const MESSAGE_LATENCY: &str = "colony_message_latency_seconds";

/// Bucket bounds of every histogram, in seconds: 10 µs to 10 minutes.
pub const BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0,
    60.0, 300.0, 600.0,
];

/// Bucket bounds of the histograms of ratios (names ending `_ratio`), 0 to 1.
pub const RATIO_BUCKETS: &[f64] = &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// Registers units and help texts with the installed recorder.
pub fn describe() {
    describe_counter!(
        AGENTS_SPAWNED,
        Unit::Count,
        "Agents added to the hierarchy."
    );
    describe_gauge!(AGENTS, Unit::Count, "Agents in the hierarchy, by tier.");
    describe_counter!(
        AGENT_RESTARTS,
        Unit::Count,
        "Agents replaced after a crash or a hang, by cause."
    );
    describe_counter!(
        ESCALATIONS,
        Unit::Count,
        "Managing agents that exceeded their restart intensity and gave up."
    );
    describe_gauge!(
        AGENTS_UNHEALTHY,
        Unit::Count,
        "Busy agents degraded, critical or failed, by state."
    );
    describe_counter!(
        HEALTH_ALERTS,
        Unit::Count,
        "Predictive alerts: response times risen over an agent's baseline."
    );
    describe_counter!(
        HEALTH_FAILURES,
        Unit::Count,
        "Busy agents declared failed by a health sweep after a silence."
    );
    describe_counter!(
        SIDELINED,
        Unit::Count,
        "Workers taken out of rotation by their circuit breaker: critical, or failing too often."
    );
    describe_histogram!(
        SPAWN_DURATION,
        Unit::Seconds,
        "Time to add one batch or wave of agents."
    );
    describe_counter!(
        TASKS_ACCEPTED,
        Unit::Count,
        "Tasks accepted into the journal."
    );
    describe_counter!(
        TASKS_FINISHED,
        Unit::Count,
        "Tasks that reached a terminal state, by state."
    );
    describe_counter!(TASK_ATTEMPTS, Unit::Count, "Attempts started.");
    describe_counter!(
        TASK_RETRIES,
        Unit::Count,
        "Failed attempts followed by another attempt."
    );
    describe_counter!(
        WORK_STEALS,
        Unit::Count,
        "Tasks an idle worker took from a sibling supervisor's queue."
    );
    describe_counter!(
        REBALANCED,
        Unit::Count,
        "Tasks moved between sibling supervisors' queues by periodic rebalancing."
    );
    describe_histogram!(
        TASK_LATENCY,
        Unit::Seconds,
        "Time from acceptance to a terminal state."
    );
    describe_gauge!(
        TASKS_QUEUED,
        Unit::Count,
        "Tasks accepted and waiting for an agent."
    );
    describe_gauge!(TASKS_RUNNING, Unit::Count, "Attempts running on agents.");
    describe_gauge!(
        AGENTS_DOWN,
        Unit::Count,
        "Agents out of service, stopped and not yet restarted, by tier."
    );
    describe_histogram!(
        DISPATCH_LATENCY,
        Unit::Seconds,
        "Time from acceptance to a task's first attempt starting; one task in 16 is sampled."
    );
    describe_histogram!(
        ATTEMPT_DURATION,
        Unit::Seconds,
        "How long attempts that left the agent's handle ran, whatever their outcome."
    );
    describe_gauge!(
        POOL_AGENTS,
        Unit::Count,
        "Agents of a scaled pool, as the autoscaler last saw them, by pool."
    );
    describe_gauge!(
        POOL_DESIRED,
        Unit::Count,
        "The size the autoscaler last wanted for a pool, by pool."
    );
    describe_gauge!(
        POOL_WAITING,
        Unit::Count,
        "Tasks waiting that a scaled pool may run, by pool."
    );
    describe_gauge!(
        POOL_FORECAST,
        Unit::Count,
        "Arrivals per second forecast over the autoscaler's horizon, by pool."
    );
    describe_gauge!(
        POOL_FORECAST_ERROR,
        Unit::Count,
        "Mean absolute percentage error of the arrivals forecast over its window, as a ratio, by pool."
    );
    describe_counter!(
        SCALING_DECISIONS,
        Unit::Count,
        "Autoscaler decisions that resized a pool or were blocked, by pool, outcome and reason."
    );
    describe_counter!(
        DECISIONS,
        Unit::Count,
        "Decisions by vote that ended, by protocol and outcome (decided, or the failure's reason)."
    );
    describe_histogram!(
        DECISION_DURATION,
        Unit::Seconds,
        "Time from a decision's start until it was decided or failed, by protocol."
    );
    describe_histogram!(
        DECISION_PARTICIPATION,
        Unit::Count,
        "Share of a decision's voters whose ballots were counted, as a ratio, by protocol."
    );
    describe_histogram!(
        DECISION_DISSENT,
        Unit::Count,
        "Share of a decided vote's counted voters that voted for something else, as a ratio, by protocol."
    );
    describe_counter!(
        TEAMS,
        Unit::Count,
        "Teams formed that ended, by outcome (succeeded or failed)."
    );
    describe_counter!(
        TEAM_REASSIGNMENTS,
        Unit::Count,
        "Roles of a team given to another worker after their member failed."
    );
    describe_counter!(
        MESSAGES_SENT,
        Unit::Count,
        "Messages sent, one per send whatever its fan-out, by address kind (agent, named, topic, team)."
    );
    describe_counter!(
        MESSAGES_DELIVERED,
        Unit::Count,
        "Copies of messages put in mailboxes."
    );
    describe_counter!(
        MESSAGES_RETURNED,
        Unit::Count,
        "Messages handed back to their sender as undeliverable (their reader left for good)."
    );
    describe_counter!(
        MESSAGES_UNRETURNABLE,
        Unit::Count,
        "Undeliverable messages whose sender had no open mailbox to take them back."
    );
    describe_counter!(
        MAILBOX_WAITS,
        Unit::Count,
        "Times a sender waited for room in a full mailbox."
    );
    describe_histogram!(
        MESSAGE_LATENCY,
        Unit::Seconds,
        "Time from a message's send to its reader taking it."
    );
    describe_histogram!(
        JOURNAL_COMMIT,
        Unit::Seconds,
        "Time for the journal to make a turn's transitions durable, as the dispatcher waits for it."
    );
}

/// Handles registered once, so the hot path never looks a metric up by name.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) spawned: Counter,
    pub(crate) spawn_duration: Histogram,
    pub(crate) restarts_crash: Counter,
    pub(crate) restarts_timeout: Counter,
    pub(crate) escalations: Counter,
    pub(crate) alerts: Counter,
    pub(crate) health_failures: Counter,
    pub(crate) sidelined: Counter,
    pub(crate) succeeded: Counter,
    pub(crate) failed: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) cancelled: Counter,
    pub(crate) attempts: Counter,
    pub(crate) retries: Counter,
    pub(crate) steals: Counter,
    pub(crate) rebalanced: Counter,
    pub(crate) latency: Histogram,
    pub(crate) dispatch: Histogram,
    pub(crate) attempt_duration: Histogram,
    pub(crate) commit: Histogram,
    pub(crate) queued: Gauge,
    pub(crate) running: Gauge,
}

impl Metrics {
    pub(crate) fn register() -> Self {
        Self {
            spawned: counter!(AGENTS_SPAWNED),
            spawn_duration: histogram!(SPAWN_DURATION),
            restarts_crash: counter!(AGENT_RESTARTS, "cause" => "crash"),
            restarts_timeout: counter!(AGENT_RESTARTS, "cause" => "hang"),
            escalations: counter!(ESCALATIONS),
            alerts: counter!(HEALTH_ALERTS),
            health_failures: counter!(HEALTH_FAILURES),
            sidelined: counter!(SIDELINED),
            succeeded: counter!(TASKS_FINISHED, "state" => "succeeded"),
            failed: counter!(TASKS_FINISHED, "state" => "failed"),
            dead_lettered: counter!(TASKS_FINISHED, "state" => "dead-lettered"),
            cancelled: counter!(TASKS_FINISHED, "state" => "cancelled"),
            attempts: counter!(TASK_ATTEMPTS),
            retries: counter!(TASK_RETRIES),
            steals: counter!(WORK_STEALS),
            rebalanced: counter!(REBALANCED),
            latency: histogram!(TASK_LATENCY),
            dispatch: histogram!(DISPATCH_LATENCY),
            attempt_duration: histogram!(ATTEMPT_DURATION),
            commit: histogram!(JOURNAL_COMMIT),
            queued: gauge!(TASKS_QUEUED),
            running: gauge!(TASKS_RUNNING),
        }
    }

    /// Workers per health state but healthy: degraded, critical, failed.
    pub(crate) fn unhealthy() -> [Gauge; 3] {
        ["degraded", "critical", "failed"].map(|state| gauge!(AGENTS_UNHEALTHY, "state" => state))
    }

    pub(crate) fn tier_size(tier: &str, size: u32) {
        gauge!(AGENTS, "tier" => tier.to_owned()).set(f64::from(size));
    }

    pub(crate) fn tier_down(tier: &str, down: u64) {
        gauge!(AGENTS_DOWN, "tier" => tier.to_owned()).set(down as f64);
    }

    pub(crate) fn accepted(n: usize) {
        counter!(TASKS_ACCEPTED).increment(n as u64);
    }

    /// A decision by `protocol` ended: `outcome` is `decided` or the failure's reason.
    pub(crate) fn decision(
        protocol: &'static str,
        outcome: &'static str,
        took: std::time::Duration,
        participation: f64,
        dissent: Option<f64>,
    ) {
        counter!(DECISIONS, "protocol" => protocol, "outcome" => outcome).increment(1);
        histogram!(DECISION_DURATION, "protocol" => protocol).record(took.as_secs_f64());
        histogram!(DECISION_PARTICIPATION, "protocol" => protocol).record(participation);
        if let Some(dissent) = dissent {
            histogram!(DECISION_DISSENT, "protocol" => protocol).record(dissent);
        }
    }
}

/// The autoscaler's gauges of one pool.
pub(crate) struct Scaling {
    pool: String,
    agents: Gauge,
    desired: Gauge,
    waiting: Gauge,
    forecast: Gauge,
    forecast_error: Gauge,
}

impl Scaling {
    /// The gauges of each pool in `pools`, labelled by pool index.
    pub(crate) fn register(pools: &[usize]) -> Vec<Self> {
        pools
            .iter()
            .map(|p| {
                let pool = p.to_string();
                Self {
                    agents: gauge!(POOL_AGENTS, "pool" => pool.clone()),
                    desired: gauge!(POOL_DESIRED, "pool" => pool.clone()),
                    waiting: gauge!(POOL_WAITING, "pool" => pool.clone()),
                    forecast: gauge!(POOL_FORECAST, "pool" => pool.clone()),
                    forecast_error: gauge!(POOL_FORECAST_ERROR, "pool" => pool.clone()),
                    pool,
                }
            })
            .collect()
    }

    /// Records what one tick saw of the pool and what it decided.
    pub(crate) fn observe(
        &self,
        signals: &colony_core::scaling::Signals,
        decision: &colony_core::scaling::Decision,
    ) {
        use colony_core::scaling::Decision;
        self.agents.set(f64::from(signals.size));
        self.waiting.set(f64::from(signals.queued));
        if let Some(forecast) = signals.forecast_per_sec {
            self.forecast.set(forecast);
        }
        if let Some(error) = signals.forecast_error {
            self.forecast_error.set(error);
        }
        let (outcome, reason) = match decision {
            Decision::Scale { from, to, reason } => {
                self.desired.set(f64::from(*to));
                (if to > from { "up" } else { "down" }, reason.as_str())
            }
            Decision::Blocked { wanted, .. } => ("blocked", wanted.as_str()),
            Decision::Hold => {
                self.desired.set(f64::from(signals.size));
                return;
            }
        };
        let pool = self.pool.clone();
        counter!(SCALING_DECISIONS, "pool" => pool, "outcome" => outcome, "reason" => reason)
            .increment(1);
    }
}
