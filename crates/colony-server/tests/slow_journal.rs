//! A journal whose reads block (a slow or stuck disk) does not stop the server: the reads
//! wait on tokio's blocking pool, and the runtime's workers go on answering.

use colony_agents::{
    AgentSpec,
    sim::{Sim, SimOptions},
};
use colony_core::{
    TaskId,
    task::{TaskSpec, TaskState},
};
use colony_journal::{
    AgentRecord, Counts, Durable, Error, Journal, MemoryJournal, Record, Stats, TaskRow,
};
use colony_runtime::{Pool, Runtime, RuntimeOptions};
use colony_server::testing::{local, serve};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

/// The in-memory journal, with reads of tasks that block their thread until opened.
#[derive(Debug, Default)]
struct Stuck {
    inner: MemoryJournal,
    open: AtomicBool,
    waiting: AtomicUsize,
}

impl Stuck {
    /// Blocks the calling thread, as a read from a stuck disk would: until opened, or for 10
    /// seconds at most (so that a server that reads on its workers fails the test, not hangs).
    fn wait(&self) {
        self.waiting.fetch_add(1, SeqCst);
        let started = std::time::Instant::now();
        while !self.open.load(SeqCst) && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.waiting.fetch_sub(1, SeqCst);
    }
}

impl Journal for Stuck {
    fn next_task_id(&self) -> TaskId {
        self.inner.next_task_id()
    }
    fn accept(&self, first: TaskId, specs: &[TaskSpec]) -> Durable {
        self.inner.accept(first, specs)
    }
    fn record(&self, batch: Vec<Record>) -> Durable {
        self.inner.record(batch)
    }
    fn open_decision(
        &self,
        first: TaskId,
        specs: &[TaskSpec],
        opening: colony_journal::Opening,
    ) -> colony_journal::Durable {
        self.inner.open_decision(first, specs, opening)
    }
    fn ask(
        &self,
        decision: TaskId,
        first: TaskId,
        specs: &[TaskSpec],
        call: colony_journal::Call,
    ) -> colony_journal::Durable {
        self.inner.ask(decision, first, specs, call)
    }
    fn close_decision(&self, id: TaskId, outcome: std::sync::Arc<str>) -> colony_journal::Durable {
        self.inner.close_decision(id, outcome)
    }
    fn decided(
        &self,
        id: TaskId,
        spec: &TaskSpec,
        taken: colony_journal::Taken,
    ) -> colony_journal::Durable {
        self.inner.decided(id, spec, taken)
    }
    fn decision(
        &self,
        id: TaskId,
    ) -> Result<Option<colony_journal::DecisionRow>, colony_journal::Error> {
        self.inner.decision(id)
    }
    fn decisions(
        &self,
        before: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<colony_journal::DecisionRow>, colony_journal::Error> {
        self.inner.decisions(before, limit)
    }
    fn open_decisions(&self) -> Result<Vec<colony_journal::DecisionRow>, colony_journal::Error> {
        self.inner.open_decisions()
    }
    fn closed_ballots(&self, tasks: &[TaskId]) -> Result<Vec<TaskId>, colony_journal::Error> {
        self.inner.closed_ballots(tasks)
    }
    fn task(&self, id: TaskId) -> Result<Option<TaskRow>, Error> {
        self.wait();
        self.inner.task(id)
    }
    fn counts(&self) -> Result<Counts, Error> {
        self.inner.counts()
    }
    fn unfinished(&self) -> Result<Vec<TaskRow>, Error> {
        self.inner.unfinished()
    }
    fn recent(
        &self,
        state: Option<TaskState>,
        before: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<TaskRow>, Error> {
        self.wait();
        self.inner.recent(state, before, limit)
    }
    fn recover(&self) -> Result<Vec<TaskRow>, Error> {
        self.inner.recover()
    }
    fn stats(&self) -> Stats {
        self.inner.stats()
    }
    fn record_agents(&self, tiers: &[String], agents: Vec<AgentRecord>, replace: bool) -> Durable {
        self.inner.record_agents(tiers, agents, replace)
    }
    fn agents(&self) -> Result<Vec<AgentRecord>, Error> {
        self.inner.agents()
    }
    fn record_reputations(&self, rows: Vec<colony_journal::ReputationRow>) -> Durable {
        self.inner.record_reputations(rows)
    }
    fn reputations(&self) -> Result<Vec<colony_journal::ReputationRow>, colony_journal::Error> {
        self.inner.reputations()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stuck_on_the_journal_leave_the_server_answering() {
    colony_server::install_metrics();
    let journal = Arc::new(Stuck::default());
    let agent = Arc::new(Sim::new(SimOptions::default()).unwrap());
    let pool = Pool::new(AgentSpec::new("sim", "worker"), 20, agent);
    let runtime = Runtime::start(RuntimeOptions::default(), vec![pool], journal.clone())
        .await
        .unwrap();
    let (server, url) = serve(&runtime, local()).await;
    let client = reqwest::Client::new();
    // More stuck reads than the runtime has workers: each would hold one if it read there.
    let mut stuck = Vec::new();
    for path in [
        "/v1/tasks/1",
        "/v1/tasks",
        "/ui/tasks",
        "/v1/tasks/2",
        "/v1/tasks/3",
    ] {
        let request = client.get(format!("{url}{path}")).send();
        stuck.push(colony_runtime::spawner::Spawner::spawn(
            "stuck-read",
            request,
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while journal.waiting.load(SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reads never began"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The API answers meanwhile, well before the reads could give up: counters, the
    // hierarchy, a submission.
    let started = std::time::Instant::now();
    for path in ["/v1/stats", "/v1/hierarchy", "/healthz"] {
        let r = client
            .get(format!("{url}{path}"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = client
        .post(format!("{url}/v1/tasks"))
        .header("content-type", "application/json")
        .body("{}")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The disk comes back: the reads are answered.
    journal.open.store(true, SeqCst);
    for request in stuck {
        let r = request.await.unwrap().unwrap().unwrap();
        assert!(r.status() == 200 || r.status() == 404, "{}", r.status());
    }
    server.stop();
    runtime.shutdown().await;
}
