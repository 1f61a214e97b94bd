//! The typed event stream.
//!
//! The dispatcher publishes events in batches, one batch per turn of its loop, and only of the
//! kinds some subscriber asked for: with no subscriber, an event costs nothing. Each subscriber
//! has a bounded buffer; when it lags, the batches it has no room for are dropped for it alone
//! and its [`Subscription::dropped`] counter says how many events it lost. A subscriber can
//! never block the runtime.

use colony_core::{AgentId, TaskId};
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU8, AtomicU64, Ordering},
};
use tokio::sync::mpsc;

/// Batches a subscriber may have waiting before it starts losing events.
pub const SUBSCRIBER_BUFFER: usize = 1024;

/// Something that happened in the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Agents `first..first + count` joined tier `tier`.
    AgentsSpawned {
        first: AgentId,
        count: u32,
        tier: u8,
    },
    /// An idle agent took a task.
    AgentActivated {
        agent: AgentId,
    },
    /// An agent finished a task and found no other to take.
    AgentIdle {
        agent: AgentId,
    },
    /// An agent was taken out of service: it crashed, hung, went silent or was killed, or
    /// its supervisor stopped it. Its running attempts end and retry; `restart_in` says when
    /// its supervisor brings up the next incarnation, `None` when it does not.
    AgentStopped {
        agent: AgentId,
        cause: Arc<str>,
        restart_in: Option<std::time::Duration>,
    },
    /// Incarnation `incarnation` of a stopped agent is in service (`agent:restarted`).
    AgentRestarted {
        agent: AgentId,
        incarnation: u32,
        cause: Arc<str>,
    },
    /// A managing agent (`None`: the runtime, over the top tier) exceeded its restart
    /// intensity and gave up: its subtree stops and its own supervisor decides.
    SupervisorEscalated {
        supervisor: Option<AgentId>,
        cause: Arc<str>,
    },
    /// A busy agent's health changed (`health:changed`).
    HealthChanged {
        agent: AgentId,
        from: colony_core::health::HealthState,
        to: colony_core::health::HealthState,
    },
    /// An agent's circuit breaker opened: routing sends it nothing for a while
    /// (`health:sidelined`).
    AgentSidelined {
        agent: AgentId,
        reason: colony_core::breaker::OpenReason,
    },
    /// An agent's breaker let it back on probation, one attempt at a time.
    AgentOnProbation {
        agent: AgentId,
    },
    /// An agent's breaker closed: it takes its full share again.
    AgentReadmitted {
        agent: AgentId,
    },
    /// An agent's response-time average rose over its baseline by the alert margin
    /// (`health:alert`).
    HealthAlert {
        agent: AgentId,
        average: std::time::Duration,
        baseline: std::time::Duration,
    },
    TaskQueued {
        task: TaskId,
        supervisor: AgentId,
    },
    TaskStarted {
        task: TaskId,
        agent: AgentId,
        attempt: u32,
    },
    TaskSucceeded {
        task: TaskId,
        agent: AgentId,
        attempt: u32,
    },
    /// Attempt `attempt` failed; `retry` says whether the task goes back to the queue.
    TaskFailed {
        task: TaskId,
        agent: AgentId,
        attempt: u32,
        error: Arc<str>,
        retry: bool,
    },
    /// The task ended without success: a fatal error, or every attempt used.
    TaskGaveUp {
        task: TaskId,
        dead_lettered: bool,
    },
    /// The task was cancelled: taken out of its queue, or its attempt stopped.
    TaskCancelled {
        task: TaskId,
    },
    /// An idle worker under `to` took a task queued at its sibling `from` (`work:stolen`).
    WorkStolen {
        task: TaskId,
        from: AgentId,
        to: AgentId,
    },
    /// The autoscaler resized pool `pool` from `from` agents to `to`, for `reason`
    /// (`scale:up`, `scale:down`).
    PoolScaled {
        pool: u8,
        from: u32,
        to: u32,
        reason: colony_core::scaling::Reason,
    },
    /// The autoscaler wanted to resize pool `pool`, for `wanted`, and did not: a cooldown,
    /// a bound or an inaccurate forecast stopped it (`scale:blocked`).
    ScaleBlocked {
        pool: u8,
        wanted: colony_core::scaling::Reason,
        by: colony_core::scaling::Blocked,
    },
    /// A decision among `voters` workers ended (`consensus:reached` with the winning
    /// `value`, or `consensus:failed` with its `reason`), `counted` of their ballots counted.
    /// `first_ballot` is its first ballot task; the others follow it.
    DecisionEnded {
        first_ballot: TaskId,
        protocol: colony_core::decision::Protocol,
        voters: u32,
        counted: u32,
        value: Option<Arc<str>>,
        reason: Option<colony_core::decision::Reason>,
    },
    /// A team of `members` workers was formed by `supervisor` (`team:formed`); `together`
    /// when every member is that supervisor's worker. `team` numbers the teams of this
    /// process, to tie a team's events together.
    TeamFormed {
        team: u64,
        supervisor: AgentId,
        members: u32,
        together: bool,
    },
    /// A member of team `team` failed its role `role`, which went to `to` (`team:reassigned`).
    TeamReassigned {
        team: u64,
        role: Arc<str>,
        from: AgentId,
        to: AgentId,
    },
    /// Team `team` ended (`team:ended`): every step done, or failed with `error`, after
    /// `tasks` asks and `reassigned` reassignments.
    TeamEnded {
        team: u64,
        succeeded: bool,
        tasks: u32,
        reassigned: u32,
        error: Option<Arc<str>>,
    },
    /// The periodic pass moved `moved` tasks between the queues of `parent`'s children
    /// (`load:rebalanced`); `parent` is `None` for the top tier.
    LoadRebalanced {
        parent: Option<AgentId>,
        moved: u32,
    },
}

impl Event {
    pub fn kind(&self) -> Kinds {
        match self {
            Event::AgentsSpawned { .. }
            | Event::AgentStopped { .. }
            | Event::AgentRestarted { .. }
            | Event::SupervisorEscalated { .. } => Kinds::AGENTS,
            Event::HealthChanged { .. }
            | Event::HealthAlert { .. }
            | Event::AgentSidelined { .. }
            | Event::AgentOnProbation { .. }
            | Event::AgentReadmitted { .. } => Kinds::HEALTH,
            Event::AgentActivated { .. } | Event::AgentIdle { .. } => Kinds::ACTIVITY,
            Event::TaskQueued { .. }
            | Event::TaskStarted { .. }
            | Event::TaskSucceeded { .. }
            | Event::TaskFailed { .. }
            | Event::TaskCancelled { .. }
            | Event::TaskGaveUp { .. }
            | Event::WorkStolen { .. }
            | Event::LoadRebalanced { .. } => Kinds::TASKS,
            Event::PoolScaled { .. } | Event::ScaleBlocked { .. } => Kinds::SCALING,
            Event::DecisionEnded { .. } => Kinds::DECISIONS,
            Event::TeamFormed { .. } | Event::TeamReassigned { .. } | Event::TeamEnded { .. } => {
                Kinds::TEAMS
            }
        }
    }
}

/// A set of event kinds a subscriber wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kinds(u8);

impl Kinds {
    /// Agents joining, stopping and restarting; supervisors escalating.
    pub const AGENTS: Kinds = Kinds(1);
    /// Agents switching between idle and busy: two events per task on an idle swarm.
    pub const ACTIVITY: Kinds = Kinds(2);
    /// Every transition of every task.
    pub const TASKS: Kinds = Kinds(4);
    /// Health changes and predictive alerts of busy agents.
    pub const HEALTH: Kinds = Kinds(8);
    /// The autoscaler's decisions: pools resized, and resizes a cooldown or bound stopped.
    pub const SCALING: Kinds = Kinds(16);
    /// Decisions by vote that ended, decided or failed.
    pub const DECISIONS: Kinds = Kinds(32);
    /// Teams formed, roles reassigned, teams ended.
    pub const TEAMS: Kinds = Kinds(64);
    pub const ALL: Kinds = Kinds(127);
    pub const NONE: Kinds = Kinds(0);

    pub fn contains(self, other: Kinds) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn intersects(self, other: Kinds) -> bool {
        self.0 & other.0 != 0
    }

    pub fn union(self, other: Kinds) -> Kinds {
        Kinds(self.0 | other.0)
    }
}

#[derive(Debug)]
struct Subscriber {
    kinds: Kinds,
    tx: mpsc::Sender<Arc<[Event]>>,
    dropped: Arc<AtomicU64>,
}

/// Where the runtime publishes and subscribers sign up. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct EventBus {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    subscribers: Mutex<Vec<Subscriber>>,
    /// Union of the kinds subscribers want, read by the publisher before building an event.
    wanted: AtomicU8,
}

impl EventBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Events of `kinds` from now on.
    pub fn subscribe(&self, kinds: Kinds) -> Subscription {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut subs = self.subscribers();
        subs.push(Subscriber {
            kinds,
            tx,
            dropped: dropped.clone(),
        });
        self.inner.wanted.fetch_or(kinds.0, Ordering::Relaxed);
        Subscription {
            rx,
            kinds,
            batch: Arc::from([]),
            next: 0,
            dropped,
        }
    }

    /// Whether some subscriber wants events of `kind`: check before building one.
    pub fn wants(&self, kind: Kinds) -> bool {
        Kinds(self.inner.wanted.load(Ordering::Relaxed)).contains(kind)
    }

    /// Hands `events` to every subscriber that has room. Never waits.
    pub fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let present = events.iter().fold(Kinds::NONE, |k, e| k.union(e.kind()));
        let batch: Arc<[Event]> = events.into();
        let mut subs = self.subscribers();
        let before = subs.len();
        subs.retain(|sub| {
            // A batch with nothing for this subscriber must not take room in its buffer.
            if !sub.kinds.intersects(present) {
                return !sub.tx.is_closed();
            }
            match sub.tx.try_send(batch.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let lost = batch
                        .iter()
                        .filter(|e| sub.kinds.contains(e.kind()))
                        .count();
                    sub.dropped.fetch_add(lost as u64, Ordering::Relaxed);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if subs.len() != before {
            let wanted = subs.iter().fold(Kinds::NONE, |k, s| k.union(s.kinds));
            self.inner.wanted.store(wanted.0, Ordering::Relaxed);
        }
    }

    fn subscribers(&self) -> std::sync::MutexGuard<'_, Vec<Subscriber>> {
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// A subscriber's end of the stream. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Arc<[Event]>>,
    kinds: Kinds,
    batch: Arc<[Event]>,
    next: usize,
    dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// The next event of the kinds subscribed to; `None` once the runtime is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            while let Some(event) = self.batch.get(self.next) {
                self.next += 1;
                if self.kinds.contains(event.kind()) {
                    return Some(event.clone());
                }
            }
            self.batch = self.rx.recv().await?;
            self.next = 0;
        }
    }

    /// The next event if one is already waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        loop {
            while let Some(event) = self.batch.get(self.next) {
                self.next += 1;
                if self.kinds.contains(event.kind()) {
                    return Some(event.clone());
                }
            }
            self.batch = self.rx.try_recv().ok()?;
            self.next = 0;
        }
    }

    /// Events of the subscribed kinds lost because this subscriber lagged.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(n: u64) -> Event {
        Event::TaskStarted {
            task: TaskId(n),
            agent: AgentId(0),
            attempt: 1,
        }
    }

    #[test]
    fn subscribers_get_only_their_kinds() {
        let bus = EventBus::new();
        assert!(!bus.wants(Kinds::TASKS));
        let mut agents = bus.subscribe(Kinds::AGENTS);
        assert!(bus.wants(Kinds::AGENTS) && !bus.wants(Kinds::TASKS));
        let spawned = Event::AgentsSpawned {
            first: AgentId(0),
            count: 3,
            tier: 2,
        };
        bus.publish(vec![started(1), spawned.clone()]);
        assert_eq!(agents.try_recv(), Some(spawned));
        assert_eq!(agents.try_recv(), None);
    }

    #[test]
    fn a_lagging_subscriber_loses_events_and_counts_them() {
        let bus = EventBus::new();
        let mut slow = bus.subscribe(Kinds::TASKS);
        for n in 0..SUBSCRIBER_BUFFER as u64 + 10 {
            bus.publish(vec![started(2 * n), started(2 * n + 1)]);
        }
        assert_eq!(slow.dropped(), 20);
        let mut received = 0;
        while slow.try_recv().is_some() {
            received += 1;
        }
        assert_eq!(received, 2 * SUBSCRIBER_BUFFER);
    }

    #[test]
    fn other_kinds_do_not_fill_a_subscribers_buffer() {
        let bus = EventBus::new();
        let mut agents = bus.subscribe(Kinds::AGENTS);
        let _tasks = bus.subscribe(Kinds::TASKS);
        for n in 0..SUBSCRIBER_BUFFER as u64 * 2 {
            bus.publish(vec![started(n)]);
        }
        let spawned = Event::AgentsSpawned {
            first: AgentId(0),
            count: 1,
            tier: 1,
        };
        bus.publish(vec![spawned.clone()]);
        assert_eq!(agents.dropped(), 0);
        assert_eq!(agents.try_recv(), Some(spawned));
    }

    #[test]
    fn dropping_a_subscription_stops_the_work_for_it() {
        let bus = EventBus::new();
        drop(bus.subscribe(Kinds::ALL));
        bus.publish(vec![started(1)]);
        assert!(!bus.wants(Kinds::TASKS));
    }
}
