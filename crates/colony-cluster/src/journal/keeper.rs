//! Whether a journal in NATS has a process keeping it. `colony prune` asks the keeper to
//! prune; when none answers it takes the journal over, which stops a keeper still writing.
//! A keeper cut off from NATS for a moment answers nothing, so what may still show it lives
//! is read: the journal's last write, and the keeper's beat. An idle keeper says it lives
//! every [`KEEPER_BEAT`] by putting its process under the journal's name in the bucket
//! [`KEEPERS_BUCKET`]; it takes that back when it closes cleanly, not when it crashes nor
//! once another took the journal from it. [`may_take_over`] decides, sans IO.

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use std::time::{Duration, Instant};

/// The bucket of the keepers' beats, each under its journal's name.
pub(super) const KEEPERS_BUCKET: &str = "COLONY_JOURNAL_KEEPERS";
/// How often an idle keeper says it lives.
const KEEPER_BEAT: Duration = Duration::from_secs(5);
/// How long a beat's put (or the bucket's lookup) may take: the writer waits meanwhile.
const BEAT_WAIT: Duration = Duration::from_secs(1);

/// How long ago a time was by this machine's clock, or (`Err`) how far ahead of it.
pub(super) type Age = Result<Duration, Duration>;

/// What a keeper's beat says of it.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct Beat {
    pub(super) pid: u32,
    pub(super) host: String,
    /// The id its writes' dedupe ids start with, so that it takes back its own beat only.
    pub(super) writer: String,
}

impl Beat {
    fn of_this_process(writer: &str) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| colony_core::text::shorten(h.trim(), 64))
            .unwrap_or_default();
        Self {
            pid: std::process::id(),
            host,
            writer: writer.to_owned(),
        }
    }
}

/// A keeper's beats: where they go, and how the last went.
pub(super) struct Beats {
    js: jetstream::Context,
    /// The bucket, once found or made (looked up again at the next beat while it is not).
    store: Option<kv::Store>,
    /// The journal's copies: the bucket's, when this keeper makes it.
    replicas: usize,
    key: String,
    said: Bytes,
    writer: String,
    /// When a beat was last tried, and the revision of the last one written.
    tried: Option<Instant>,
    revision: Option<u64>,
    /// The last beat failed: said once, and again once beats are written again.
    failing: bool,
    shown: String,
}

impl Beats {
    /// The beats of the keeper of journal `name` (of `replicas` copies), whose writer's id is
    /// `writer`. Nothing is written until [`Beats::beat`].
    pub(super) fn new(js: jetstream::Context, name: &str, replicas: usize, writer: &str) -> Self {
        let said = serde_json::to_vec(&Beat::of_this_process(writer)).unwrap_or_default();
        Self {
            js,
            store: None,
            replicas,
            key: name.to_owned(),
            said: Bytes::from(said),
            writer: writer.to_owned(),
            tried: None,
            revision: None,
            failing: false,
            shown: format!("the journal {name}"),
        }
    }

    /// Says the keeper lives when [`KEEPER_BEAT`] has passed since the last try (written or
    /// not): each try waits [`BEAT_WAIT`] at most, so the writer it runs on is never held
    /// longer.
    pub(super) async fn beat(&mut self) {
        if self.tried.is_some_and(|at| at.elapsed() < KEEPER_BEAT) {
            return;
        }
        self.tried = Some(Instant::now());
        let written = tokio::time::timeout(BEAT_WAIT, self.put()).await;
        match written {
            Ok(Ok(revision)) => {
                self.revision = Some(revision);
                if std::mem::take(&mut self.failing) {
                    tracing::info!(journal = self.shown, "The keeper says it lives again.");
                }
            }
            Ok(Err(why)) => self.failed(why),
            Err(_) => self.failed(format!("no answer within {} s", BEAT_WAIT.as_secs())),
        }
    }

    async fn put(&mut self) -> Result<u64, String> {
        let store = match &self.store {
            Some(store) => store,
            None => self.store.insert(bucket(&self.js, self.replicas).await?),
        };
        store
            .put(&self.key, self.said.clone())
            .await
            .map_err(|e| e.to_string())
    }

    fn failed(&mut self, why: String) {
        if !std::mem::replace(&mut self.failing, true) {
            tracing::warn!(
                journal = self.shown,
                bucket = KEEPERS_BUCKET,
                error = why,
                "The keeper cannot say it lives: while it writes nothing, prune may take the journal over (tried again every few seconds)."
            );
        }
    }

    /// The keeper closing cleanly: its beat goes, if it is still its own.
    pub(super) async fn stop(self) {
        let Some(store) = self.store else {
            return;
        };
        let gone = async {
            // Its own beat by revision; else by what the entry says (a put whose answer
            // was lost left this keeper's revision behind).
            let revision = match store.entry(&self.key).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => {
                    let ours = serde_json::from_slice::<Beat>(&e.value)
                        .is_ok_and(|b| b.writer == self.writer);
                    ours.then_some(e.revision)
                }
                _ => self.revision,
            };
            if let Some(revision) = revision {
                let _ = store
                    .delete_expect_revision(&self.key, Some(revision))
                    .await;
            }
        };
        let _ = tokio::time::timeout(2 * BEAT_WAIT, gone).await;
    }
}

/// The keepers' bucket, found or made (its copies as many as the journal's).
async fn bucket(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, String> {
    let config = kv::Config {
        bucket: KEEPERS_BUCKET.into(),
        description: "colony: the process keeping each journal in NATS, while it lives".into(),
        history: 1,
        // A beat outlives its keeper a while only: the bucket forgets it.
        max_age: super::QUIET * 4,
        max_value_size: 1024,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    if let Ok(store) = js.get_key_value(KEEPERS_BUCKET).await {
        return Ok(store);
    }
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Made meanwhile by another keeper, maybe with other copies: that one is used.
        Err(e) => js
            .get_key_value(KEEPERS_BUCKET)
            .await
            .map_err(|_| format!("the bucket {KEEPERS_BUCKET}: {e}")),
    }
}

/// The beat of journal `name`'s keeper, as prune reads it: `None` when there is none (the
/// bucket is not there: no keeper of this version ever beat; or the entry is gone), else
/// its revision, what it says, and how long ago the server dated it (`Err`: how far ahead
/// of this machine's clock). A bucket or entry that cannot be read is an error: that no
/// keeper lives cannot be told.
pub(super) async fn read(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<(u64, Beat, Age)>, String> {
    match js.get_stream(format!("KV_{KEEPERS_BUCKET}")).await {
        Ok(_) => {}
        Err(e) => {
            return match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(format!("the bucket {KEEPERS_BUCKET}: {e}")),
            };
        }
    }
    let store = js
        .get_key_value(KEEPERS_BUCKET)
        .await
        .map_err(|e| format!("the bucket {KEEPERS_BUCKET}: {e}"))?;
    let entry = store
        .entry(name)
        .await
        .map_err(|e| format!("the bucket {KEEPERS_BUCKET}: {e}"))?;
    Ok(entry
        .filter(|e| e.operation == kv::Operation::Put)
        .and_then(|e| {
            let said = serde_json::from_slice::<Beat>(&e.value).ok()?;
            Some((e.revision, said, since(e.created.unix_timestamp_nanos())))
        }))
}

/// How long ago a time the server dated (ns since the epoch) was by this machine's clock,
/// or (`Err`) how far ahead of it.
pub(super) fn since(at_ns: i128) -> Age {
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX));
    let whole = |ns: i128| Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX));
    let ns = now_ns - at_ns;
    if ns < 0 {
        Err(whole(-ns))
    } else {
        Ok(whole(ns))
    }
}

/// An age as said: "4.2 s ago", or "dated 3.0 s ahead of this machine's clock".
fn dated(age: Age) -> String {
    match age {
        Ok(age) => format!("{:.1} s ago", age.as_secs_f64()),
        Err(ahead) => format!(
            "dated {:.1} s ahead of this machine's clock",
            ahead.as_secs_f64()
        ),
    }
}

/// Whether `prune`, which no keeper answered, may take journal `what` over: yes when told
/// to (`take_over`), when the journal was never written or was last written by a prune (no
/// sign of a keeper), or when it has gone [`super::QUIET`] unwritten (`written`: how long
/// ago) and its keeper, if one beat, has been silent that long too (`beat`: what it said,
/// how long ago; an `Err` when it could not be read). A time dated ahead of this machine's
/// clock counts as just now. Else why not, naming what to do.
pub(super) fn may_take_over(
    what: &str,
    take_over: bool,
    (never, by_prune): (bool, bool),
    written: Age,
    beat: Result<Option<(&Beat, Age)>, String>,
) -> Result<(), String> {
    if take_over || never || by_prune {
        return Ok(());
    }
    let quiet = super::QUIET;
    let recent = |age: Age| age.map_or(true, |age| age < quiet);
    let risk = "pruning from here would take the journal from it and stop its writes";
    let secs = quiet.as_secs();
    if recent(written) {
        let when = match written {
            Ok(_) => format!("it was written {}", dated(written)),
            Err(_) => format!("its last write is {}", dated(written)),
        };
        return Err(format!(
            "{what}: no process answered for it, but {when}: the one keeping it may be running, cut off from NATS or from before online prunes, and {risk}. Stop that process, or wait until the journal has gone {secs} s unwritten, or run prune again with --take-over"
        ));
    }
    match beat {
        Err(why) => Err(format!(
            "{what}: no process answered for it, and whether the one keeping it lives cannot be read ({why}): {risk}. Run prune again, or with --take-over once that process is stopped"
        )),
        Ok(Some((beat, age))) if recent(age) => Err(format!(
            "{what}: no process answered for it, but the one keeping it (pid {} on host `{}`) said it lived {}: it may be running, cut off from NATS, and {risk}. Stop that process, or wait until it has been silent {secs} s, or run prune again with --take-over",
            beat.pid,
            beat.host,
            dated(age)
        )),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prune no keeper answered takes the journal over when told to, when nothing says a
    /// keeper lives (never written, last written by a prune, or quiet and no recent beat);
    /// else it says what stops it, a beat it cannot read included.
    #[test]
    fn a_journal_is_taken_over_only_when_nothing_says_its_keeper_lives() {
        let s = |secs: u64| Duration::from_secs(secs);
        let said = Beat {
            pid: 42,
            host: "h1".into(),
            writer: "w".into(),
        };
        let beat = |age| Ok(Some((&said, age)));
        let may =
            |told, signs, written, beat| may_take_over("pruning j", told, signs, written, beat);
        let no = (false, false);
        assert!(may(false, no, Ok(s(31)), Ok(None)).is_ok());
        assert!(may(false, no, Ok(s(31)), beat(Ok(s(30)))).is_ok());
        let recent = may(false, no, Ok(s(5)), Ok(None)).unwrap_err();
        assert!(
            recent.contains("written 5.0 s ago") && recent.contains("--take-over"),
            "{recent}"
        );
        let ahead = may(false, no, Err(s(3)), Ok(None)).unwrap_err();
        assert!(ahead.contains("dated 3.0 s ahead"), "{ahead}");
        let beating = may(false, no, Ok(s(600)), beat(Ok(s(4)))).unwrap_err();
        assert!(
            beating.contains("pid 42 on host `h1`") && beating.contains("4.0 s ago"),
            "{beating}"
        );
        let skewed = may(false, no, Ok(s(600)), beat(Err(s(2)))).unwrap_err();
        assert!(skewed.contains("dated 2.0 s ahead"), "{skewed}");
        let unread = may(false, no, Ok(s(600)), Err("timed out".into())).unwrap_err();
        assert!(
            unread.contains("cannot be read (timed out)") && unread.contains("--take-over"),
            "{unread}"
        );
        // Told to, never written, or last written by a prune: no sign of a keeper counts.
        assert!(may(true, no, Ok(s(1)), beat(Ok(s(1)))).is_ok());
        assert!(may(false, (true, false), Ok(s(1)), Err("x".into())).is_ok());
        assert!(may(false, (false, true), Ok(s(1)), beat(Ok(s(1)))).is_ok());
    }

    #[test]
    fn a_beat_reads_back() {
        let beat = Beat::of_this_process("abc");
        let bytes = serde_json::to_vec(&beat).unwrap();
        assert_eq!(serde_json::from_slice::<Beat>(&bytes).unwrap(), beat);
        assert_eq!(
            (beat.pid, beat.writer.as_str()),
            (std::process::id(), "abc")
        );
    }
}
