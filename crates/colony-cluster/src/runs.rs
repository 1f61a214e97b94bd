//! The book of a workflow run scheduled across the cluster (`colony run --nats --run-id`):
//! what its scheduler sent, kept in the cluster so that a standby that takes the run over, or
//! the same command run again, goes on from there instead of sending the tasks again.
//!
//! One bucket, `colony_runs`, keys per run (`<run>.meta`, `<run>.t.<index>`), every write a
//! compare-and-set on the revision the writer read: a scheduler that finds a key moved under
//! it has lost the run to another and stops ([`Error::Lost`]).
//!
//! - `meta`: the workflow's name and digest (a run id is one workflow file), whether the run
//!   is done, and how it ended (cancelled for good, [`RunBook::cancel`], with why);
//! - `t.<index>`: the workflow task's latest cluster task (its id), its round (how many
//!   cluster tasks it had before, for outputs that failed their checks) and the attempts
//!   those spent.
//!
//! A task is submitted with the dedupe id `run:<run>:<index>:<round>` before its entry is
//! written: a scheduler that dies between the two leaves a successor that sends it again,
//! and the stream, within its duplicate window (2 minutes), answers with the same task.
//! Past that window such a task would run again: hence a scheduler's lease of at most
//! [`MAX_LEASE`], so that a standby sends within the window.

use crate::{Cluster, Error};
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub(crate) const RUNS_BUCKET: &str = "colony_runs";
/// Most tasks a run's book holds: a workflow's own limit is lower.
const MAX_ENTRIES: usize = 100_000;
/// Most runs [`Cluster::runs`] looks at.
pub const MAX_LISTED: usize = 1_000;
/// Longest run id: its office, `run-<id>`, is a name of at most 64.
pub const MAX_RUN_ID: usize = 60;
/// Longest lease of a run's scheduler: a standby takes over within it and a second, and
/// sends again within the stream's 2-minute duplicate window even after the client's minute
/// of patience.
pub const MAX_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// Refuses a run id that cannot name a run: letters, digits, `_`, `-`, at most
/// [`MAX_RUN_ID`].
pub fn check_run_id(run: &str) -> Result<(), Error> {
    if run.len() > MAX_RUN_ID {
        return Err(Error::Settings(format!(
            "run id `{}`: at most {MAX_RUN_ID} characters",
            run.chars().take(80).collect::<String>()
        )));
    }
    crate::settings::check_name("run id", run).map_err(|_| {
        Error::Settings(format!(
            "run id `{}`: use letters, digits, `_` and `-` only, at most {MAX_RUN_ID}",
            colony_core::text::shorten(run, 80)
        ))
    })
}

/// A run as its book says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunMeta {
    /// The workflow's name.
    pub workflow: String,
    /// The workflow file's SHA-256, hex: a run id names one file.
    pub digest: String,
    /// Done: every task ended (or the run was cancelled); nothing more is scheduled.
    pub done: bool,
    /// With `done`: tasks by status (`succeeded`, `failed`, ...).
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
    /// With `done`: the exit status `colony run` gave.
    #[serde(default)]
    pub code: Option<i32>,
    /// Who wrote it, and in which term of the run's lease.
    pub scheduler: String,
    pub term: u64,
    /// When it was written, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub at_ms: u64,
    /// Cancelled for good ([`RunBook::cancel`], with `done`): by whom and why. A scheduler
    /// that sees it stops, cancelling its tasks in the cluster; a standby or a rerun sends
    /// nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<String>,
}

/// How [`RunBook::cancel`] went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum RunCancel {
    /// Written cancelled (`again`: found cancelled already, by `why`), then each task its
    /// book holds was cancelled in the cluster: `cancelled` of them, `ended` had ended
    /// already (or expired), `failed` could not be (each why).
    Cancelled {
        again: bool,
        why: String,
        cancelled: usize,
        ended: usize,
        failed: Vec<String>,
    },
    /// The run had finished: nothing changed.
    AlreadyDone { meta: RunMeta },
    /// No scheduler has started a run of this id (a run is kept once one does).
    Unknown,
}

/// Most times [`RunBook::cancel`] reads the meta again after a write of another's.
const CANCEL_TRIES: usize = 8;
/// Most of a run's tasks [`RunBook::cancel`] cancels at once.
const CANCELS_AT_ONCE: usize = 32;
/// How long [`RunBook::cancelled`] waits before watching again after a failure.
const WATCH_AGAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// What a run's scheduler sent for one workflow task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// The cluster task.
    pub id: u64,
    /// Cluster tasks before this one for the same workflow task.
    pub round: u32,
    /// Attempts those spent.
    pub spent: u32,
}

/// A value and the revision it was read at (the one a write over it expects).
pub type Revised<T> = (T, u64);

/// The book of one run.
#[derive(Clone, Debug)]
pub struct RunBook {
    bucket: kv::Store,
    run: String,
}

impl Cluster {
    /// The book of run `run` (letters, digits, `_`, `-`; up to 64), its bucket made on first
    /// use.
    pub async fn run_book(&self, run: &str) -> Result<RunBook, Error> {
        check_run_id(run)?;
        Ok(RunBook {
            bucket: self.runs_bucket().await?,
            run: run.to_owned(),
        })
    }

    /// The runs the book holds, each with its meta, the most recently written first, at
    /// most `limit`, of at most [`MAX_LISTED`] runs looked at (which, past that many, are
    /// any of them: the server lists subjects in no order). One read per run.
    pub async fn runs(&self, limit: usize) -> Result<Vec<(String, RunMeta)>, Error> {
        let bucket = self.runs_bucket().await?;
        let listing = |e: &dyn std::fmt::Display| Error::nats("listing the runs", e);
        let prefix = bucket.prefix.clone();
        let mut subjects = bucket
            .stream
            .info_with_subjects(format!("{prefix}*.meta"))
            .await
            .map_err(|e| listing(&e))?;
        let mut ids = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(|e| listing(&e))?;
            if let Some(run) = subject
                .strip_prefix(&prefix)
                .and_then(|k| k.strip_suffix(".meta"))
            {
                ids.push(run.to_owned());
            }
            if ids.len() >= MAX_LISTED {
                break;
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for run in ids {
            let book = RunBook {
                bucket: bucket.clone(),
                run,
            };
            if let Some((meta, _)) = book.meta().await? {
                out.push((book.run, meta));
            }
        }
        out.sort_by(|a, b| b.1.at_ms.cmp(&a.1.at_ms).then_with(|| a.0.cmp(&b.0)));
        out.truncate(limit);
        Ok(out)
    }

    async fn runs_bucket(&self) -> Result<kv::Store, Error> {
        let config = kv::Config {
            bucket: RUNS_BUCKET.into(),
            description: "colony: what each workflow run's scheduler sent".into(),
            history: 1,
            max_value_size: 16 * 1024,
            storage: jetstream::stream::StorageType::File,
            num_replicas: self.settings.replicas,
            max_age: self.settings.keep_records,
            ..Default::default()
        };
        crate::client::bucket(&self.js, config).await
    }
}

impl RunMeta {
    /// As JSON for people and programs, with the run's id.
    pub fn json(&self, id: &str) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["id"] = id.into();
        v
    }
}

impl RunBook {
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The office of the run's scheduler in the leaders bucket.
    pub fn office(&self) -> String {
        format!("run-{}", self.run)
    }

    /// The dedupe id of a workflow task's cluster task in `round`.
    pub fn dedupe_id(&self, task: usize, round: u32) -> String {
        format!("run:{}:{task}:{round}", self.run)
    }

    fn meta_key(&self) -> String {
        format!("{}.meta", self.run)
    }

    fn task_key(&self, task: usize) -> String {
        format!("{}.t.{task}", self.run)
    }

    pub async fn meta(&self) -> Result<Option<Revised<RunMeta>>, Error> {
        self.read(&self.meta_key()).await
    }

    /// Writes the meta over `revision` (`None`: it must not exist yet), stamped with the time.
    pub async fn put_meta(&self, meta: &RunMeta, revision: Option<u64>) -> Result<u64, Error> {
        let meta = RunMeta {
            at_ms: crate::now_ms(),
            ..meta.clone()
        };
        self.write(&self.meta_key(), &meta, revision).await
    }

    /// Cancels the run for good: its meta is written done and cancelled with `reason` (a
    /// compare-and-set on what was read, tried again if a scheduler wrote in between), so
    /// that its scheduler stops and a standby or a rerun sends nothing; then every task its
    /// book holds is cancelled in the cluster ([`Cluster::cancel`]). A run found cancelled
    /// already has its tasks cancelled again (a cancel cut short is finished so).
    pub async fn cancel(&self, cluster: &Cluster, reason: &str) -> Result<RunCancel, Error> {
        let reason = colony_core::text::shorten(reason, 500);
        let mut decided = None;
        for _ in 0..CANCEL_TRIES {
            let Some((meta, revision)) = self.meta().await? else {
                return Ok(RunCancel::Unknown);
            };
            match (meta.done, meta.cancelled.clone()) {
                (true, Some(why)) => {
                    decided = Some((true, why));
                    break;
                }
                (true, None) => return Ok(RunCancel::AlreadyDone { meta }),
                (false, _) => {}
            }
            let cancelled = RunMeta {
                done: true,
                code: Some(1),
                cancelled: Some(reason.clone()),
                ..meta
            };
            match self.put_meta(&cancelled, Some(revision)).await {
                Ok(_) => {
                    decided = Some((false, reason.clone()));
                    break;
                }
                Err(Error::Lost { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        let Some((again, why)) = decided else {
            return Err(Error::Settings(format!(
                "run {}: its book changed under each of {CANCEL_TRIES} tries to cancel it; try again",
                self.run
            )));
        };
        let sent = self.sent().await?;
        let cancels = futures::stream::iter(sent)
            .map(|(task, (sent, _))| {
                let why = &why;
                async move { (task, sent.id, cluster.cancel(sent.id, why).await) }
            })
            .buffer_unordered(CANCELS_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        let (mut cancelled, mut ended, mut failed) = (0, 0, Vec::new());
        for (task, id, outcome) in cancels {
            match outcome {
                Ok(crate::Cancel::Cancelled { .. }) => cancelled += 1,
                // Ended, or its record expired long ago: nothing runs it.
                Ok(crate::Cancel::AlreadyEnded { .. }) | Err(Error::Unknown { .. }) => ended += 1,
                Err(e) => failed.push(format!("task {task} (cluster task {id}): {e}")),
            }
        }
        Ok(RunCancel::Cancelled {
            again,
            why,
            cancelled,
            ended,
            failed,
        })
    }

    /// Resolves once the run is seen cancelled for good, with why: a watch of its meta
    /// (its latest value first), watched again after a failure.
    pub async fn cancelled(&self) -> String {
        let mut warned = false;
        loop {
            match self.bucket.watch_with_history(self.meta_key()).await {
                Ok(mut watch) => {
                    while let Some(Ok(entry)) = watch.next().await {
                        if let Ok(meta) = serde_json::from_slice::<RunMeta>(&entry.value)
                            && let Some(why) = meta.cancelled
                        {
                            return why;
                        }
                    }
                }
                Err(e) if !warned => {
                    tracing::warn!(
                        "run {}: its book cannot be watched for a cancel ({e}); trying again each second",
                        self.run
                    );
                    warned = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(WATCH_AGAIN).await;
        }
    }

    /// Every task's entry, by the task's index in the workflow: the keys are this run's
    /// subjects in the bucket's stream, listed by the server (not every run's keys).
    pub async fn sent(&self) -> Result<BTreeMap<usize, Revised<Sent>>, Error> {
        let listing =
            |e: &dyn std::fmt::Display| Error::nats(format!("listing run {}", self.run), e);
        let prefix = format!("{}{}.t.", self.bucket.prefix, self.run);
        let mut subjects = self
            .bucket
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|e| listing(&e))?;
        let mut keys = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(|e| listing(&e))?;
            let Some(index) = subject.strip_prefix(&prefix) else {
                continue;
            };
            let index: usize = index.parse().map_err(|_| {
                Error::Settings(format!(
                    "run {}: a key that is no task's: {subject}",
                    self.run
                ))
            })?;
            if keys.len() >= MAX_ENTRIES {
                return Err(Error::Settings(format!(
                    "run {}: more than {MAX_ENTRIES} tasks in its book",
                    self.run
                )));
            }
            keys.push(index);
        }
        let mut out = BTreeMap::new();
        for index in keys {
            if let Some(entry) = self.read(&self.task_key(index)).await? {
                out.insert(index, entry);
            }
        }
        Ok(out)
    }

    /// Writes task `task`'s entry over `revision` (`None`: it must not exist yet).
    pub async fn put_sent(
        &self,
        task: usize,
        sent: &Sent,
        revision: Option<u64>,
    ) -> Result<u64, Error> {
        self.write(&self.task_key(task), sent, revision).await
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Revised<T>>, Error> {
        let what = format!("reading {key} of the runs' book");
        let Some((value, revision)) = crate::client::from_leader(&self.bucket, key, &what).await?
        else {
            return Ok(None);
        };
        let value = serde_json::from_slice(&value)
            .map_err(|e| Error::Settings(format!("{key} of the runs' book is unreadable: {e}")))?;
        Ok(Some((value, revision)))
    }

    /// Task `task`'s entry, read from the stream leader.
    pub async fn entry(&self, task: usize) -> Result<Option<Revised<Sent>>, Error> {
        self.read(&self.task_key(task)).await
    }

    async fn write<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        revision: Option<u64>,
    ) -> Result<u64, Error> {
        let value = serde_json::to_vec(value).unwrap_or_default();
        let written = match revision {
            Some(revision) => self
                .bucket
                .update(key, value.into(), revision)
                .await
                .map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                }),
            None => self.bucket.create(key, value.into()).await.map_err(|e| {
                (
                    e.kind() == kv::CreateErrorKind::AlreadyExists,
                    e.to_string(),
                )
            }),
        };
        match written {
            Ok(revision) => Ok(revision),
            Err((true, _)) => Err(Error::Lost {
                run: self.run.clone(),
                key: key.to_owned(),
            }),
            Err((false, e)) => Err(Error::nats(format!("writing {key} of the runs' book"), e)),
        }
    }
}
