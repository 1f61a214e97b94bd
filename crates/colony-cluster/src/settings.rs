//! How the cluster's stream and buckets are made, with the settings Jepsen's analysis of NATS
//! 2.12.1 asks for: file storage, an odd replica count of 3 or 5 (1 only for a single
//! development server), and dedupe ids on every publish. `sync_interval: always` is the
//! servers' own setting (see docs/cluster.md); the harness in [`crate::testing`] sets it.

use crate::Error;
use async_nats::jetstream::{consumer, kv, stream};
use colony_core::task::Priority;
use std::time::Duration;

/// The stream of submitted tasks.
pub(crate) const STREAM: &str = "COLONY_TASKS";
/// Its subjects: `colony.tasks.<role>.p<priority>`, and `.<n>` more for a bundle of `n`.
pub(crate) const SUBJECTS: &str = "colony.tasks.>";
/// The role token of tasks any agent may run.
pub(crate) const ANY_ROLE: &str = "_";
/// The bucket of task states, leases and results.
pub(crate) const TASKS_BUCKET: &str = "colony_tasks";
/// The bucket of node heartbeats.
pub(crate) const NODES_BUCKET: &str = "colony_nodes";
/// Most bytes of one task's record (its state and result): NATS's default `max_payload` is
/// 1 MiB, and the record's own fields need room beside the output.
pub const MAX_RECORD: usize = 1024 * 1024 - 4096;
/// Most bytes of a task's payload: a message's headers need room beside it.
pub const MAX_PAYLOAD: usize = MAX_RECORD - 16 * 1024;
/// Most bytes of a task's key, which its headers and its record carry.
pub const MAX_KEY: usize = 1024;
/// Most bytes of an error kept in a record.
pub(crate) const MAX_ERROR: usize = 4096;

/// The cluster's settings, the same for every node and client of one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Copies JetStream keeps of the stream and buckets: 3 or 5; 1 for one development
    /// server only.
    pub replicas: usize,
    /// How long a delivered task may go without an ack or an in-progress ack before JetStream
    /// delivers it again (to any node): a dead node's tasks run elsewhere after this.
    pub ack_wait: Duration,
    /// A node's heartbeat lasts this long in the nodes bucket; it renews it every third.
    pub heartbeat_ttl: Duration,
    /// Window in which a second publish with the same id is dropped by the stream.
    pub duplicate_window: Duration,
    /// How long a task's record is kept after its last write, when the bucket is made: the
    /// bucket would otherwise grow with every task ever run.
    pub keep_records: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            replicas: 3,
            ack_wait: Duration::from_secs(30),
            heartbeat_ttl: Duration::from_secs(10),
            duplicate_window: Duration::from_secs(120),
            keep_records: Duration::from_secs(8 * 86_400),
        }
    }
}

impl Settings {
    /// Refuses settings that would lose acknowledged work or that JetStream refuses.
    pub fn validate(&self) -> Result<(), Error> {
        if !matches!(self.replicas, 1 | 3 | 5) {
            return Err(Error::Settings(format!(
                "--replicas {}: use 3 or 5 (a Raft group of 2 or 4 tolerates no more faults than one of 1 or 3; \
                 JetStream allows at most 5), or 1 for a single development server",
                self.replicas
            )));
        }
        if self.ack_wait < Duration::from_secs(1) || self.ack_wait > Duration::from_secs(3600) {
            return Err(Error::Settings(format!(
                "--ack-wait {:?}: allowed from 1s to 1h",
                self.ack_wait
            )));
        }
        if self.heartbeat_ttl < Duration::from_secs(1)
            || self.heartbeat_ttl > Duration::from_secs(600)
        {
            return Err(Error::Settings(format!(
                "heartbeat TTL {:?}: allowed from 1s to 10m",
                self.heartbeat_ttl
            )));
        }
        // A record must outlive the longest a task may run (colony's task timeout is at most
        // 7 days) with a margin, or a long attempt's record would expire under it.
        if self.keep_records < Duration::from_secs(8 * 86_400)
            || self.keep_records > Duration::from_secs(3650 * 86_400)
        {
            return Err(Error::Settings(format!(
                "records kept {:?}: allowed from 8 days (the longest a task may run, and a day) to 10 years",
                self.keep_records
            )));
        }
        Ok(())
    }

    pub(crate) fn stream(&self) -> stream::Config {
        stream::Config {
            name: STREAM.into(),
            description: Some("colony: submitted tasks, one message each".into()),
            subjects: vec![SUBJECTS.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            max_message_size: MAX_RECORD as i32,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        }
    }

    pub(crate) fn tasks_bucket(&self) -> kv::Config {
        kv::Config {
            bucket: TASKS_BUCKET.into(),
            description: "colony: state, lease and result of every task that started".into(),
            history: 1,
            max_age: self.keep_records,
            max_value_size: MAX_RECORD as i32,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    pub(crate) fn nodes_bucket(&self) -> kv::Config {
        kv::Config {
            bucket: NODES_BUCKET.into(),
            description: "colony: node heartbeats".into(),
            history: 1,
            max_age: self.heartbeat_ttl,
            max_value_size: 64 * 1024,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// A role as a subject token and consumer name: letters, digits, `_` and `-`, at most 64.
pub fn check_role(role: &str) -> Result<(), Error> {
    let ok = !role.is_empty()
        && role.len() <= 64
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok && role != ANY_ROLE {
        Ok(())
    } else {
        Err(Error::BadRole {
            role: role.chars().take(80).collect(),
        })
    }
}

/// A name that becomes a KV key or part of one (an office, a candidate): letters, digits, `_`
/// and `-`, at most 64.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Settings(format!(
            "{what} `{}`: use letters, digits, `_` and `-` only, at most 64",
            colony_core::text::shorten(name, 80)
        )))
    }
}

/// A pod's or namespace's name as Kubernetes allows it (a DNS subdomain: lowercase letters,
/// digits, `-` and `.`, at most 253), before it goes into an API path.
pub(crate) fn check_pod_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(Error::Settings(format!(
            "--pod-deletion-cost: `{}` is not a Kubernetes name (lowercase letters, digits, `-` and `.`)",
            colony_core::text::shorten(name, 80)
        )))
    }
}

/// The subject a task of `role` (any agent when `None`) and `priority` is published on.
pub(crate) fn subject(role: Option<&str>, priority: u8) -> String {
    format!("colony.tasks.{}.p{priority}", role.unwrap_or(ANY_ROLE))
}

/// The subject a bundle of `count` tasks goes on, of a plain task's `subject`: a token
/// more, saying how many tasks it holds, so that the stream's count of each subject's
/// messages counts tasks ([`crate::backlog`]). A plain task's last token is `p<N>`, never
/// digits alone.
pub(crate) fn bundle_subject(subject: &str, count: usize) -> String {
    format!("{subject}.{count}")
}

/// The subjects a consumer of a role's priority takes, of its plain tasks' `subject`: that
/// one and its bundles' ([`bundle_subject`]).
pub(crate) fn filters(subject: &str) -> Vec<String> {
    vec![subject.to_owned(), format!("{subject}.*")]
}

/// What a task message's subject says: the role's token (`_` for any agent), the
/// priority, and how many tasks the message holds (1 but for a bundle's subject). `None`
/// for a subject of no task message.
pub(crate) fn parse_subject(subject: &str) -> Option<(&str, u8, u64)> {
    let rest = subject.strip_prefix("colony.tasks.")?;
    let (role, rest) = rest.split_once('.')?;
    let (priority, tasks) = match rest.split_once('.') {
        None => (rest, 1),
        Some((priority, count)) => {
            // At most a bundle's most: a hand-made subject claiming more is no bundle.
            let digits = !count.is_empty() && count.len() <= 6;
            let most = crate::bundle::MAX_TASKS as u64;
            let tasks: u64 = count
                .parse()
                .ok()
                .filter(|n| digits && (1..=most).contains(n))?;
            (priority, tasks)
        }
    };
    let priority = match priority.as_bytes() {
        [b'p', d @ b'0'..=b'9'] => d - b'0',
        _ => return None,
    };
    (role == ANY_ROLE || check_role(role).is_ok()).then_some((role, priority, tasks))
}

/// The priority of a task published on `subject` (see [`subject`], [`bundle_subject`]).
pub(crate) fn priority_of_subject(subject: &str) -> Option<u8> {
    parse_subject(subject).map(|(_, priority, _)| priority)
}

/// The durable consumers of a role's tasks (any agent's when `None`), one for each priority,
/// the highest first, each shared by every node that hosts the role: their names and the
/// subject each takes. A work-queue stream refuses consumers whose subjects overlap, so a
/// role's priorities can only be taken apart by consumers of their own.
/// Named `p<N>-role-<role>` (`p<N>-any-role`): a role may end in `-p3`, so the priority goes
/// first, where no name of [`unsorted_consumer`] has it.
pub(crate) fn consumers(role: Option<&str>) -> Vec<(String, String)> {
    (Priority::LOWEST.get()..=Priority::HIGHEST.get())
        .rev()
        .map(|p| (consumer(role, p), subject(role, p)))
        .collect()
}

/// The name of the consumer of `role`'s tasks at `priority` (see [`consumers`]).
pub(crate) fn consumer(role: Option<&str>, priority: u8) -> String {
    format!("p{priority}-{}", unsorted_consumer(role))
}

/// `config` of a consumer of plain tasks' `subject`, widened to take that priority's
/// bundles too ([`filters`]), when it does not yet (a node from before bundles had subjects
/// of their own made it): what it filtered on, and what it lacks. `None` when it takes
/// them already.
pub(crate) fn widened(config: &consumer::Config, subject: &str) -> Option<consumer::Config> {
    let mut have = config.filter_subjects.clone();
    if !config.filter_subject.is_empty() {
        have.push(config.filter_subject.clone());
    }
    let missing: Vec<String> = filters(subject)
        .into_iter()
        .filter(|f| !have.contains(f))
        .collect();
    if missing.is_empty() {
        return None;
    }
    have.extend(missing);
    Some(consumer::Config {
        filter_subject: String::new(),
        filter_subjects: have,
        ..config.clone()
    })
}

/// The one consumer of every priority of a role that nodes made before priorities were
/// taken apart; a node deletes it before making the consumers of each priority.
pub(crate) fn unsorted_consumer(role: Option<&str>) -> String {
    match role {
        Some(role) => format!("role-{role}"),
        None => "any-role".into(),
    }
}

/// The role (`*` for tasks any agent may run) and priority a consumer of [`consumers`]
/// serves, from its name; `None` for any other consumer.
pub(crate) fn role_of_consumer(name: &str) -> Option<(&str, u8)> {
    let (p, base) = name.strip_prefix('p')?.split_once('-')?;
    let p = match p.as_bytes() {
        [d @ b'0'..=b'9'] => d - b'0',
        _ => return None,
    };
    if base == "any-role" {
        return Some(("*", p));
    }
    let role = base.strip_prefix("role-")?;
    check_role(role).ok()?;
    Some((role, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_of_two_or_four_are_refused() {
        for (replicas, ok) in [
            (0, false),
            (1, true),
            (2, false),
            (3, true),
            (4, false),
            (5, true),
            (7, false),
        ] {
            let settings = Settings {
                replicas,
                ..Settings::default()
            };
            assert_eq!(settings.validate().is_ok(), ok, "{replicas}");
        }
    }

    #[test]
    fn roles_that_would_break_a_subject_are_refused() {
        for role in ["worker", "code-review", "a_1"] {
            assert!(check_role(role).is_ok(), "{role}");
        }
        for role in ["", "_", "a.b", "a b", "a*", "a>", "é", &"x".repeat(65)] {
            assert!(check_role(role).is_err(), "{role}");
        }
        assert_eq!(subject(Some("worker"), 5), "colony.tasks.worker.p5");
        assert_eq!(subject(None, 9), "colony.tasks._.p9");
    }

    #[test]
    fn a_subject_says_its_role_priority_and_how_many_tasks_its_message_holds() {
        let plain = subject(Some("worker"), 5);
        assert_eq!(parse_subject(&plain), Some(("worker", 5, 1)));
        let bundle = bundle_subject(&plain, 16);
        assert_eq!(bundle, "colony.tasks.worker.p5.16");
        assert_eq!(parse_subject(&bundle), Some(("worker", 5, 16)));
        assert_eq!(
            parse_subject(&bundle_subject(&subject(None, 0), 512)),
            Some(("_", 0, 512))
        );
        assert_eq!(priority_of_subject(&bundle), Some(5));
        // A consumer made before takes its bundles once widened; one that takes them (or
        // more) is left as it is.
        let old = consumer::Config {
            durable_name: Some(consumer(Some("worker"), 5)),
            filter_subject: plain.clone(),
            ..Default::default()
        };
        let wide = widened(&old, &plain).unwrap();
        assert_eq!(wide.filter_subject, "");
        assert_eq!(wide.durable_name, old.durable_name);
        assert_eq!(wide.filter_subjects, filters(&plain));
        assert!(widened(&wide, &plain).is_none());
        let more = consumer::Config {
            filter_subjects: vec![plain.clone(), format!("{plain}.*"), format!("{plain}.x.*")],
            ..Default::default()
        };
        assert!(widened(&more, &plain).is_none());
        // A consumer's filters take both, and nothing of another priority or role.
        assert_eq!(filters(&plain), [plain.clone(), format!("{plain}.*")]);
        for other in [
            "colony.tasks.worker",
            "colony.tasks.worker.p10",
            "colony.tasks.worker.p5.0",
            "colony.tasks.worker.p5.x",
            "colony.tasks.worker.p5.",
            "colony.tasks.worker.p5.1234567",
            "colony.tasks.worker.p5.513",
            "colony.tasks.worker.p5.16.2",
            "colony.tasks.a*.p5",
            "colony.memory.x",
        ] {
            assert_eq!(parse_subject(other), None, "{other}");
        }
    }

    #[test]
    fn each_priority_of_a_role_has_its_own_consumer_named_so_it_reads_back() {
        let worker = consumers(Some("worker"));
        assert_eq!(worker.len(), 10);
        let first = ("p9-role-worker", "colony.tasks.worker.p9");
        assert_eq!((worker[0].0.as_str(), worker[0].1.as_str()), first);
        let last = ("p0-role-worker", "colony.tasks.worker.p0");
        assert_eq!((worker[9].0.as_str(), worker[9].1.as_str()), last);
        assert_eq!(consumers(None)[4].1, "colony.tasks._.p5");
        for (i, (_, subject)) in worker.iter().enumerate() {
            assert_eq!(priority_of_subject(subject), Some(9 - i as u8), "{subject}");
        }
        assert_eq!(priority_of_subject("colony.tasks.worker"), None);
        for (name, _) in worker.iter().chain(&consumers(None)) {
            assert!(role_of_consumer(name).is_some(), "{name}");
        }
        // A role that ends as a priority would: none of its names is another role's, old
        // or new.
        let (x, x_p3) = (consumers(Some("x")), consumers(Some("x-p3")));
        let old = unsorted_consumer(Some("x-p3"));
        assert!(
            x.iter()
                .all(|(n, _)| *n != old && x_p3.iter().all(|(m, _)| m != n))
        );
        assert_eq!(role_of_consumer(&x_p3[0].0), Some(("x-p3", 9)));
        assert_eq!(role_of_consumer("p7-role-code-p2"), Some(("code-p2", 7)));
        assert_eq!(role_of_consumer("p0-any-role"), Some(("*", 0)));
        for other in [
            "role-worker",
            "any-role",
            "role-worker-p5",
            "p10-role-worker",
            "p1-role-",
            "p1-x",
            "p1-role-a.b",
            "p-role-a",
        ] {
            assert_eq!(role_of_consumer(other), None, "{other}");
        }
    }
}
