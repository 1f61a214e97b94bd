//! A spread vote's voters' reputations. On one runtime a decided vote tells each voter's
//! reputation whether it agreed with the outcome (`colony_runtime::decision`); a vote
//! spread over the nodes is counted on one node and its voters live on others. So the node
//! that counted it, once the vote's end is written, tells each voter's node which of its
//! agents agreed and which dissented, on that node's subject (`colony.agreed.<node>`); each
//! node hears its own and feeds its runtime's reputations. A word sent at most once: a
//! node out of reach then misses it, as a reputation is a soft score, not a record.

use colony_core::AgentId;
use colony_runtime::Handle;
use futures::StreamExt;
use std::collections::BTreeMap;
use tokio::sync::watch;

/// Most bytes of one word a node reads: a vote's voters on that node, at most
/// [`super::spread::MAX_SPREAD_VOTERS`] of them, each an id, a role and a flag.
const MAX_WORD: usize = 256 * 1024;

/// The subject node `name` hears its agents' votes on (a `.` in a name written `%2E`, as
/// for its agent queries).
fn subject(node: &str) -> String {
    format!("colony.agreed.{}", node.replace('.', "%2E"))
}

/// What a node is told of one vote: which of its agents agreed with the outcome.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Word {
    /// The vote's task.
    pub(super) vote: u64,
    pub(super) voters: Vec<Voted>,
}

/// One voter counted in the deciding round.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Voted {
    /// The agent, on the node told.
    pub(super) agent: u64,
    /// The role of its pool there, when its ballot's record said it: an agent of another
    /// role now (its id given to a new worker of another pool since) is passed over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) role: Option<String>,
    /// Counted for the winner, else a dissenter.
    pub(super) agreed: bool,
    /// When its ballot's record was written (ms since the epoch, the voter's node's clock):
    /// a node process started after it did not run that ballot, an earlier one of its name
    /// did, whose agents are gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) at_ms: Option<u64>,
}

/// Tells each node in `by_node` which of its agents agreed with vote `vote`'s outcome.
/// Not waited for beyond the client's buffer: a node out of reach misses it.
pub(super) async fn tell(
    client: &async_nats::Client,
    vote: u64,
    by_node: BTreeMap<String, Vec<Voted>>,
) {
    for (node, voters) in by_node {
        // A node's name from a record that no node of this cluster could have.
        if super::check_name(&node).is_err() {
            continue;
        }
        let word = Word { vote, voters };
        let Ok(bytes) = serde_json::to_vec(&word) else {
            continue;
        };
        if bytes.len() > MAX_WORD {
            tracing::debug!("vote {vote}: the word to node {node} is over {MAX_WORD} bytes");
            continue;
        }
        if let Err(e) = client.publish(subject(&node), bytes.into()).await {
            tracing::debug!("vote {vote}: telling node {node} its voters' agreement: {e}");
        }
    }
}

/// Hears what node `name`'s agents' votes came to and feeds `handle`'s reputations, while
/// the node lives (until `phase`'s sender is gone, or the task is stopped as it leaves).
/// Ballots ended before `started_ms` were an earlier process's of that name: passed over.
/// Subscribed before it returns.
pub(super) async fn hear<P: Send + Sync + 'static>(
    client: async_nats::Client,
    (name, started_ms): (&str, u64),
    handle: Handle,
    mut phase: watch::Receiver<P>,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, crate::Error> {
    let mut words = client
        .subscribe(subject(name))
        .await
        .map_err(|e| crate::Error::nats(format!("hearing node {name}'s votes"), e))?;
    let name = name.to_owned();
    Ok(async move {
        loop {
            let message = tokio::select! {
                m = words.next() => match m {
                    Some(m) => m,
                    None => {
                        tracing::warn!("node {name}: its votes' subscription ended");
                        return;
                    }
                },
                changed = phase.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => return,
                },
            };
            match read(&message.payload) {
                Ok(word) => feed(&handle, word, started_ms).await,
                Err(why) => tracing::warn!("node {name}: a word of its votes: {why}"),
            }
        }
    })
}

/// A word as sent, or why it is not one.
fn read(payload: &[u8]) -> Result<Word, String> {
    if payload.len() > MAX_WORD {
        return Err(format!(
            "{} bytes, over the {MAX_WORD} a node reads",
            payload.len()
        ));
    }
    let word: Word =
        serde_json::from_slice(payload).map_err(|e| format!("it does not read: {e}"))?;
    if word.voters.len() > super::spread::MAX_SPREAD_VOTERS as usize {
        return Err(format!(
            "vote {}: {} voters, over a spread vote's {}",
            word.vote,
            word.voters.len(),
            super::spread::MAX_SPREAD_VOTERS
        ));
    }
    Ok(word)
}

/// Feeds the reputations of `word`'s voters that are still workers here (not retired), of
/// the role their ballot's record named, whose ballots this process ran (ended after
/// `started_ms`): each once, whatever the word repeats.
async fn feed(handle: &Handle, word: Word, started_ms: u64) {
    let pools = handle.pools();
    let vote = word.vote;
    let mut seen = std::collections::HashSet::new();
    let voters: Vec<Voted> = word
        .voters
        .into_iter()
        .filter(|v| v.at_ms.is_none_or(|at| at >= started_ms) && seen.insert(v.agent))
        .collect();
    let kept = handle
        .observe(move |live| {
            let tree = &live.tree;
            voters
                .into_iter()
                .filter_map(|v| {
                    let agent = AgentId(u32::try_from(v.agent).ok()?);
                    let worker = tree.contains(agent)
                        && tree.tier(agent) == tree.worker_tier()
                        && !live.is_retired(agent);
                    let role = || {
                        pools
                            .get(usize::from(tree.spec(agent)))
                            .map(|(spec, _)| spec.role.to_string())
                    };
                    let same = v.role.is_none() || v.role == role();
                    (worker && same).then_some((agent, v.agreed))
                })
                .collect::<Vec<_>>()
        })
        .await;
    match kept {
        Ok(kept) if !kept.is_empty() => handle.agreed(kept),
        Ok(_) => {}
        Err(e) => tracing::debug!("vote {vote}: its voters' reputations here: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_reads_back_and_what_is_not_one_is_named() {
        let word = Word {
            vote: 7,
            voters: vec![
                Voted {
                    agent: 3,
                    role: Some("judge".into()),
                    agreed: true,
                    at_ms: Some(9),
                },
                Voted {
                    agent: 4,
                    role: None,
                    agreed: false,
                    at_ms: None,
                },
            ],
        };
        let bytes = serde_json::to_vec(&word).unwrap();
        assert_eq!(read(&bytes).unwrap(), word);
        assert!(!String::from_utf8_lossy(&bytes).contains("null"));

        let huge = vec![b' '; MAX_WORD + 1];
        assert!(read(&huge).unwrap_err().contains("over the"));
        assert!(read(b"{").unwrap_err().contains("does not read"));
        let many = Word {
            vote: 1,
            voters: (0..=u64::from(super::super::spread::MAX_SPREAD_VOTERS))
                .map(|agent| Voted {
                    agent,
                    role: None,
                    agreed: true,
                    at_ms: None,
                })
                .collect(),
        };
        let why = read(&serde_json::to_vec(&many).unwrap()).unwrap_err();
        assert!(why.contains("1001 voters"), "{why}");
        assert_eq!(subject("a.b"), "colony.agreed.a%2Eb");
    }
}
