//! `colony bench messages`: the message bus ([`crate::messages`]) under four loads, each
//! timed from a message's send to its reader taking it.
//!
//! - **direct**: one sender, one reader, a stream of messages through a mailbox of the
//!   default size (the sender waits whenever it is full).
//! - **topic**: Erlang's W5 over the bus: a coordinator publishes each round on a topic that
//!   100 agents subscribe to; each answers with its vote by the peers' rule, sent straight
//!   back; the round is decided once a majority is certain (as W5 counts it) and over when
//!   every answer is in. With the peer's script, Erlang's W5 runs in the same process' run.
//! - **team**: rounds of a broadcast to a team of 12 (the default span of control), each
//!   member answering the lead before the next round.
//! - **kills**: a million messages from 8 senders to 64 agents whose readers are killed
//!   (their tasks aborted, mid-batch or not) every millisecond and replaced, while 4 of the
//!   agents are retired halfway. Every message must be read by its agent, come back to its
//!   sender as undeliverable, or be refused when sent, and each sender's messages must reach
//!   each agent in order: 0 lost, 0 reordered, or the verdict fails. Redeliveries (a batch a
//!   killed reader had not acknowledged) are counted, not hidden.

use super::{
    Percentiles, Verdict,
    vote::{ErlangW5, check_peer_script},
};
use crate::{
    Error,
    messages::{self, Bus, MessageOptions},
    spawner::Spawner,
};
use bytes::Bytes;
use colony_core::{
    AgentId,
    mailbox::{Address, Endpoint},
};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::Serialize;
use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

/// Most messages of the direct stream and of the kills run.
pub const MAX_MESSAGES: u64 = 100_000_000;
/// Most rounds of the topic and team loads.
pub const MAX_ROUNDS: u32 = 1_000_000;
/// Latency samples kept per load, at most: every k-th message is timed beyond it.
const SAMPLES: u64 = 1_000_000;
/// Subscribers of the topic (W5's agents).
const SUBSCRIBERS: u32 = 100;
/// Members of the team.
const MEMBERS: u32 = 12;
const SENDERS: usize = 8;
const READERS: usize = 64;
const RETIRED: usize = 4;
const WARMUP: u32 = 10;

/// One load's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    /// Messages read (copies, for a broadcast).
    pub messages: u64,
    pub per_second: f64,
    /// From send to the reader taking it.
    pub latency: Percentiles,
}

/// W5 over the bus.
#[derive(Clone, Debug, Serialize)]
pub struct TopicRounds {
    pub subscribers: u32,
    pub rounds: u32,
    /// From the publish until a majority is certain, as W5 measures.
    pub decided: Percentiles,
    /// From the publish until every answer is in.
    pub round: Percentiles,
    /// Messages read per second over the rounds: the fan-out and the answers.
    pub per_second: f64,
}

/// The run with readers killed and agents retired.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Kills {
    pub messages: u64,
    pub readers_killed: u64,
    pub agents_retired: u64,
    /// Read by their agent (first reads).
    pub read: u64,
    /// Read again after a killed reader had not acknowledged them.
    pub redelivered: u64,
    /// Handed back to their sender as undeliverable (their agent was retired).
    pub returned: u64,
    /// Refused when sent (their agent was retired already).
    pub refused: u64,
    /// Neither read, returned nor refused.
    pub lost: u64,
    /// Read with an earlier message of the same sender not read before it.
    pub reordered: u64,
    /// Undeliverable with no mailbox to go back to (none here: every sender has one).
    pub unreturnable: u64,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MessagesReport {
    pub direct: Flow,
    pub topic: TopicRounds,
    pub team: Flow,
    pub kills: Kills,
    pub erlang: Option<ErlangW5>,
    /// Holds when the kills run lost and reordered nothing and every round was counted as
    /// its votes say.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Runs the four loads: `messages` through the direct stream and the kills run, `rounds`
/// of the topic and team loads, then Erlang's W5 if `erlang` names the peer's script.
pub async fn messages(
    count: u64,
    rounds: u32,
    seed: u64,
    erlang: Option<&Path>,
) -> Result<MessagesReport, Error> {
    if !(1_000..=MAX_MESSAGES).contains(&count) {
        return Err(Error::Options(format!(
            "{count} messages is out of range: allowed 1000..={MAX_MESSAGES}"
        )));
    }
    if !(1..=MAX_ROUNDS).contains(&rounds) {
        return Err(Error::Options(format!(
            "{rounds} rounds is out of range: allowed 1..={MAX_ROUNDS}"
        )));
    }
    check_peer_script(erlang)?;
    let mut verdict = Verdict::new();
    let direct = direct(count).await?;
    let topic = topic(rounds, &mut verdict).await?;
    let team = team(rounds).await?;
    let kills = kills(count, seed).await?;
    verdict.check(kills.lost == 0 && kills.unreturnable == 0, || {
        format!(
            "{} of {} messages were lost ({} undeliverable could not go back)",
            kills.lost, kills.messages, kills.unreturnable
        )
    });
    verdict.check(kills.reordered == 0, || {
        format!(
            "{} messages were read before an earlier one of their sender",
            kills.reordered
        )
    });
    let erlang = match erlang {
        Some(script) => Some(super::vote::erlang_w5(script, SUBSCRIBERS, rounds).await?),
        None => None,
    };
    Ok(MessagesReport {
        direct,
        topic,
        team,
        kills,
        erlang,
        verdict,
    })
}

fn named(name: &str) -> Endpoint {
    Endpoint::Named(Arc::from(name))
}

fn failed(e: messages::Error) -> Error {
    Error::Options(format!("bench messages: {e}"))
}

/// Waits for a spawned task, whose panic is the benchmark's failure.
async fn joined<T>(task: tokio::task::JoinHandle<Option<T>>, what: &str) -> Result<T, Error> {
    match task.await {
        Ok(Some(t)) => Ok(t),
        _ => Err(Error::Options(format!("bench messages: the {what} failed"))),
    }
}

async fn direct(count: u64) -> Result<Flow, Error> {
    let bus = Bus::new(MessageOptions::default());
    let reader = named("reader");
    let mut inbox = bus.open(reader.clone()).map_err(failed)?;
    let every = count.div_ceil(SAMPLES);
    let read = Spawner::spawn("bench reader", async move {
        let mut samples = Vec::with_capacity((count / every) as usize + 1);
        let mut next = 0u64;
        while next < count {
            let Ok(batch) = inbox.recv().await else {
                break;
            };
            let now = Instant::now();
            for m in &batch {
                let seq = u64::from_le_bytes(m.body[..8].try_into().unwrap_or_default());
                assert_eq!(seq, next, "the direct stream came out of order");
                if seq % every == 0 {
                    samples.push(now.saturating_duration_since(m.sent));
                }
                next += 1;
            }
        }
        inbox.ack();
        samples
    });
    let start = Instant::now();
    for seq in 0..count {
        bus.send(
            named("sender"),
            Address::To(reader.clone()),
            Bytes::copy_from_slice(&seq.to_le_bytes()),
        )
        .await
        .map_err(failed)?;
    }
    let samples = joined(read, "direct reader").await?;
    let took = start.elapsed();
    Ok(Flow {
        messages: count,
        per_second: count as f64 / took.as_secs_f64(),
        latency: Percentiles::of(samples),
    })
}

async fn topic(rounds: u32, verdict: &mut Verdict) -> Result<TopicRounds, Error> {
    let bus = Bus::new(MessageOptions::default());
    let coordinator = named("coordinator");
    let mut answers = bus.open(coordinator.clone()).map_err(failed)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut voters = Vec::new();
    for id in 0..SUBSCRIBERS {
        let me = Endpoint::Agent(AgentId(id));
        bus.subscribe("rounds", me.clone()).map_err(failed)?;
        let mut inbox = bus.open(me.clone()).map_err(failed)?;
        let (bus, to, stop) = (bus.clone(), coordinator.clone(), stop.clone());
        voters.push(Spawner::spawn("bench voter", async move {
            while let Ok(batch) = inbox.recv().await {
                if stop.load(Relaxed) {
                    break;
                }
                for m in batch {
                    let round = u64::from_le_bytes(m.body[..8].try_into().unwrap_or_default());
                    let yes = super::vote::votes_yes(id, round);
                    let mut body = [0u8; 9];
                    body[..8].copy_from_slice(&round.to_le_bytes());
                    body[8] = u8::from(yes);
                    if bus
                        .send(
                            me.clone(),
                            Address::To(to.clone()),
                            Bytes::copy_from_slice(&body),
                        )
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }));
    }
    let majority = SUBSCRIBERS / 2 + 1;
    let (mut decided, mut whole) = (Vec::new(), Vec::new());
    let start = Instant::now();
    let mut timed_from = start;
    for round in 0..WARMUP + rounds {
        if round == WARMUP {
            timed_from = Instant::now();
        }
        let t0 = Instant::now();
        bus.send(
            coordinator.clone(),
            Address::Topic("rounds".into()),
            Bytes::copy_from_slice(&u64::from(round).to_le_bytes()),
        )
        .await
        .map_err(failed)?;
        let (mut yes, mut no, mut decided_at) = (0, 0, None);
        while yes + no < SUBSCRIBERS {
            let batch = answers
                .recv()
                .await
                .map_err(|e| Error::Options(e.to_string()))?;
            for m in batch {
                let r = u64::from_le_bytes(m.body[..8].try_into().unwrap_or_default());
                verdict.check(r == u64::from(round), || {
                    format!("an answer to round {r} came in round {round}")
                });
                if m.body[8] == 1 {
                    yes += 1;
                } else {
                    no += 1;
                }
            }
            if decided_at.is_none() && (yes >= majority || no > SUBSCRIBERS - majority) {
                decided_at = Some(t0.elapsed());
            }
        }
        let want = (0..SUBSCRIBERS)
            .filter(|&id| super::vote::votes_yes(id, u64::from(round)))
            .count() as u32;
        verdict.check(yes == want, || {
            format!("round {round} counted {yes} yes where the rule gives {want}")
        });
        if round >= WARMUP {
            decided.push(decided_at.unwrap_or_else(|| t0.elapsed()));
            whole.push(t0.elapsed());
        }
    }
    let took = timed_from.elapsed();
    stop.store(true, Relaxed);
    answers.ack();
    for id in 0..SUBSCRIBERS {
        bus.close(&Endpoint::Agent(AgentId(id)), "the benchmark ended");
    }
    for v in voters {
        let _ = v.await;
    }
    Ok(TopicRounds {
        subscribers: SUBSCRIBERS,
        rounds,
        decided: Percentiles::of(decided),
        round: Percentiles::of(whole),
        per_second: f64::from(rounds) * f64::from(2 * SUBSCRIBERS) / took.as_secs_f64(),
    })
}

/// Rounds of a broadcast to the team, each member answering the lead: every copy is timed
/// from the broadcast to the member taking it, with the round before answered (a burst of
/// broadcasts would time the queue, not the bus).
async fn team(rounds: u32) -> Result<Flow, Error> {
    let bus = Bus::new(MessageOptions::default());
    bus.set_team(1, (0..MEMBERS).map(AgentId).collect());
    let lead = named("lead");
    let mut answers = bus.open(lead.clone()).map_err(failed)?;
    let samples = Arc::new(Mutex::new(Vec::with_capacity((rounds * MEMBERS) as usize)));
    let mut members = Vec::new();
    for id in 0..MEMBERS {
        let me = Endpoint::Agent(AgentId(id));
        let mut inbox = bus.open(me.clone()).map_err(failed)?;
        let (bus, lead, samples) = (bus.clone(), lead.clone(), samples.clone());
        members.push(Spawner::spawn("bench member", async move {
            let mut got = 0;
            let mut mine = Vec::with_capacity(rounds as usize);
            while got < rounds {
                let Ok(batch) = inbox.recv().await else {
                    break;
                };
                let now = Instant::now();
                for m in &batch {
                    mine.push(now.saturating_duration_since(m.sent));
                    if bus
                        .send(me.clone(), Address::To(lead.clone()), m.body.clone())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                got += batch.len() as u32;
            }
            inbox.ack();
            samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(mine);
        }));
    }
    let start = Instant::now();
    for round in 0..rounds {
        bus.send(
            lead.clone(),
            Address::Team(1),
            Bytes::copy_from_slice(&round.to_le_bytes()),
        )
        .await
        .map_err(failed)?;
        let mut heard = 0;
        while heard < MEMBERS {
            heard += answers
                .recv()
                .await
                .map_err(|e| Error::Options(e.to_string()))?
                .len() as u32;
        }
    }
    let took = start.elapsed();
    answers.ack();
    for m in members {
        joined(m, "team member").await?;
    }
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Flow {
        messages: samples.len() as u64,
        per_second: samples.len() as f64 / took.as_secs_f64(),
        latency: Percentiles::of(samples),
    })
}

/// Per agent, the next sequence number it expects from each sender, and what went wrong.
#[derive(Default)]
struct Progress {
    next: [u32; SENDERS],
    /// Per sender, numbers skipped over (a later one read first) and not read since.
    gaps: [std::collections::BTreeSet<u32>; SENDERS],
    read: u64,
    redelivered: u64,
    reordered: u64,
}

/// What a message says: its sender, and its number among that sender's messages to this
/// agent.
fn kill_body(sender: usize, seq: u32) -> Bytes {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&(sender as u32).to_le_bytes());
    b[4..].copy_from_slice(&seq.to_le_bytes());
    Bytes::copy_from_slice(&b)
}

fn kill_parse(body: &[u8]) -> Option<(usize, u32)> {
    let sender = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let seq = u32::from_le_bytes(body.get(4..8)?.try_into().ok()?);
    (sender < SENDERS).then_some((sender, seq))
}

/// One incarnation of agent `agent`'s reader: reads until killed or its mailbox closes,
/// checking each sender's order against what the agent read before (its progress outlives
/// it, as an agent's state would).
fn reader(
    bus: &Bus,
    agent: usize,
    progress: Arc<Mutex<Progress>>,
) -> Result<tokio::task::JoinHandle<Option<()>>, Error> {
    let mut inbox = bus
        .open(Endpoint::Agent(AgentId(agent as u32)))
        .map_err(failed)?;
    Ok(Spawner::spawn("bench agent", async move {
        while let Ok(batch) = inbox.recv().await {
            check(&progress, &batch);
            // Yields between batches, so that a kill can land before the acknowledgement.
            tokio::task::yield_now().await;
        }
    }))
}

/// Checks a batch an agent read against what it read before.
fn check(progress: &Mutex<Progress>, batch: &[messages::Message]) {
    let mut guard = progress.lock().unwrap_or_else(|p| p.into_inner());
    let p = &mut *guard;
    for m in batch {
        let Some((sender, seq)) = kill_parse(&m.body) else {
            continue;
        };
        let next = p.next[sender];
        if seq < next {
            if p.gaps[sender].remove(&seq) {
                // Late, its lateness counted when it was skipped: a first read.
                p.read += 1;
            } else {
                p.redelivered += 1;
            }
        } else {
            if seq > next {
                p.reordered += 1;
                p.gaps[sender].extend(next..seq);
            }
            p.next[sender] = seq + 1;
            p.read += 1;
        }
    }
}

async fn kills(count: u64, seed: u64) -> Result<Kills, Error> {
    let bus = Bus::new(MessageOptions::default());
    bus.set_agents(READERS as u64);
    let progress: Vec<Arc<Mutex<Progress>>> = (0..READERS).map(|_| Arc::default()).collect();
    let mut readers = Vec::with_capacity(READERS);
    for (agent, p) in progress.iter().enumerate() {
        readers.push(Some(reader(&bus, agent, p.clone())?));
    }
    let per_sender = count / SENDERS as u64;
    let total = per_sender * SENDERS as u64;
    let sent = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    let mut returns = Vec::new();
    for s in 0..SENDERS {
        let me = named(&format!("sender-{s}"));
        returns.push(bus.open(me.clone()).map_err(failed)?);
        let (bus, sent) = (bus.clone(), sent.clone());
        senders.push(Spawner::spawn("bench sender", async move {
            let mut seqs = [0u32; READERS];
            // Per agent, the first message refused: every later one is too (a retired
            // agent never comes back in this run).
            let mut refused: [Option<u32>; READERS] = [None; READERS];
            for i in 0..per_sender {
                let agent = (i as usize).wrapping_mul(7).wrapping_add(s) % READERS;
                let to = Address::To(Endpoint::Agent(AgentId(agent as u32)));
                let seq = seqs[agent];
                seqs[agent] += 1;
                match bus.send(me.clone(), to, kill_body(s, seq)).await {
                    Ok(_) => {}
                    Err(messages::Error::NoMailbox(_)) => {
                        refused[agent].get_or_insert(seq);
                    }
                    Err(e) => panic!("bench messages: a send failed: {e}"),
                }
                sent.fetch_add(1, Relaxed);
            }
            (seqs, refused)
        }));
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut report = Kills {
        messages: total,
        ..Kills::default()
    };
    let start = Instant::now();
    let mut retired = false;
    // (sender, agent, number) of each message handed back.
    let mut returned: std::collections::HashSet<(usize, usize, u32)> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while sent.load(Relaxed) < total {
        tick.tick().await;
        let agent = rng.random_range(0..READERS);
        if let Some(old) = readers[agent].take() {
            old.abort();
            let _ = old.await;
            report.readers_killed += 1;
            readers[agent] = reader(&bus, agent, progress[agent].clone()).ok();
        }
        if !retired && sent.load(Relaxed) >= total / 2 {
            retired = true;
            for agent in 0..RETIRED {
                bus.close(
                    &Endpoint::Agent(AgentId(agent as u32)),
                    "the agent was retired",
                );
                report.agents_retired += 1;
            }
        }
        // Senders read what comes back, so that their mailboxes keep room for it.
        take_returns(&mut returns, &mut returned)?;
    }
    let mut sent_to = Vec::with_capacity(SENDERS);
    for s in senders {
        sent_to.push(joined(s, "sender").await?);
    }
    report.refused = sent_to
        .iter()
        .flat_map(|(seqs, refused)| {
            seqs.iter()
                .zip(refused)
                .map(|(n, r)| r.map_or(0, |r| u64::from(n - r)))
        })
        .sum();
    // Every live agent's mailbox drains; then its reader stops.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        take_returns(&mut returns, &mut returned)?;
        if unaccounted(&sent_to, &progress, &returned) == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    report.seconds = start.elapsed().as_secs_f64();
    for r in readers.into_iter().flatten() {
        r.abort();
        let _ = r.await;
    }
    for p in &progress {
        let p = p.lock().unwrap_or_else(|p| p.into_inner());
        report.read += p.read;
        report.redelivered += p.redelivered;
        report.reordered += p.reordered;
    }
    report.returned = returned.len() as u64;
    report.lost = unaccounted(&sent_to, &progress, &returned);
    report.unreturnable = bus.stats().unreturnable;
    Ok(report)
}

/// What each sender sent each agent, and from which number on its sends were refused.
type SentTo = ([u32; READERS], [Option<u32>; READERS]);

/// Messages not accounted for. Per sender and agent, a message is accounted for when its
/// agent read it (0 up to what it expects next, but for numbers it skipped and never read),
/// it came back, or it was refused; each is counted once, so that a message read and then handed back (read, not acknowledged, when
/// its agent was retired) does not hide another that went missing.
fn unaccounted(
    sent_to: &[SentTo],
    progress: &[Arc<Mutex<Progress>>],
    returned: &std::collections::HashSet<(usize, usize, u32)>,
) -> u64 {
    let mut missing = 0;
    for (s, (seqs, refused)) in sent_to.iter().enumerate() {
        for (agent, p) in progress.iter().enumerate() {
            let p = p.lock().unwrap_or_else(|p| p.into_inner());
            let read_up_to = p.next[s];
            let refused_from = refused[agent].unwrap_or(seqs[agent]);
            let not_back = |seq: &u32| *seq < refused_from && !returned.contains(&(s, agent, *seq));
            // Skipped over and never read, and past the last read: accounted only if they
            // came back or were refused.
            let skipped = p.gaps[s].iter().filter(|seq| not_back(seq)).count();
            let after = (read_up_to.min(refused_from)..refused_from)
                .filter(not_back)
                .count();
            missing += (skipped + after) as u64;
        }
    }
    missing
}

/// Reads what came back to the senders: (sender, agent, number) of each.
fn take_returns(
    returns: &mut [messages::Inbox],
    returned: &mut std::collections::HashSet<(usize, usize, u32)>,
) -> Result<(), Error> {
    for (s, inbox) in returns.iter_mut().enumerate() {
        let batch = inbox
            .try_recv()
            .map_err(|e| Error::Options(e.to_string()))?;
        for m in batch {
            let by = m.returned.as_ref().map(|r| &r.by);
            if let (Some(Endpoint::Agent(a)), Some((sender, seq))) = (by, kill_parse(&m.body))
                && sender == s
            {
                returned.insert((s, a.0 as usize, seq));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(sender: usize, seq: u32) -> messages::Message {
        messages::Message {
            from: named("s"),
            to: Address::To(named("r")),
            body: kill_body(sender, seq),
            sent: Instant::now(),
            returned: None,
        }
    }

    /// The accounting sees a message that never came, even one skipped over by a later
    /// one, and not a message that came late or came back.
    #[test]
    fn the_accounting_finds_what_is_missing() {
        let progress: Vec<Arc<Mutex<Progress>>> = (0..READERS).map(|_| Arc::default()).collect();
        let mut sent = [0u32; READERS];
        sent[0] = 6;
        let sent_to = vec![(sent, [None; READERS]); SENDERS];
        // Sender 0's messages to agent 0: 0, then 2 (1 skipped), 2 again, 5 (3 and 4
        // skipped), then 3 late.
        let batch: Vec<_> = [0, 2, 2, 5, 3].iter().map(|&q| message(0, q)).collect();
        check(&progress[0], &batch);
        let mut returned = std::collections::HashSet::new();
        {
            let p = progress[0].lock().unwrap();
            assert_eq!((p.read, p.redelivered, p.reordered), (4, 1, 2));
        }
        // Missing: 1 and 4 of sender 0; every other sender sent 6 to agent 0 and none came.
        let others = 6 * (SENDERS as u64 - 1);
        assert_eq!(unaccounted(&sent_to, &progress, &returned), 2 + others);
        returned.insert((0, 0, 4));
        assert_eq!(unaccounted(&sent_to, &progress, &returned), 1 + others);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_run_loses_and_reorders_nothing() {
        let report = messages(20_000, 20, 3, None).await.unwrap();
        assert!(report.verdict.ok, "{:?}", report.verdict.problems);
        let k = &report.kills;
        assert!(k.readers_killed > 0 && k.agents_retired == RETIRED as u64);
        assert_eq!(k.lost, 0);
        assert!(k.read + k.returned + k.refused >= k.messages);
        assert_eq!(report.direct.messages, 20_000);
        assert_eq!(report.team.messages, 20 * u64::from(MEMBERS));
    }
}
