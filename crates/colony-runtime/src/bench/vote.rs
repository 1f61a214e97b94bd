//! `colony bench vote`: the W5 workload of the Erlang peer (`shared/peers/erlang_peer.escript
//! w5`): rounds of a majority vote among in-process agents, each voting by the peers' shared
//! deterministic rule (about 60 % yes). Each decision runs through the runtime as a user's
//! would ([`Handle::decide`](crate::Handle::decide): voters seated and, as they answer inside
//! their handler, asked inline in the same dispatcher turn and the decision journaled in one
//! write; with [`Ballots::Tasks`], one journaled ballot task pinned to each, the ballots
//! counted as their tasks end) and is timed from its start until the caller holds the
//! outcome. Beside it: the decision engine alone tallying 10,000 ballots, and, when given the
//! peer's script, Erlang's W5 in the same run.

use super::{Percentiles, Verdict};
use crate::{
    Error, Pool, Runtime, RuntimeOptions,
    decision::{Decided, Vote},
};
use bytes::Bytes;
use colony_agents::{Agent, AgentSpec, Execution, Task};
use colony_core::{
    AgentId,
    decision::{Ballot, Decision, DecisionOptions, Participant, Progress},
    task::TaskSpec,
};
use colony_journal::MemoryJournal;
use serde::Serialize;
use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

/// Most voters of one run.
pub const MAX_AGENTS: u32 = 100_000;
/// Most rounds of one run.
pub const MAX_ROUNDS: u32 = 1_000_000;
/// Rounds run first and not timed, as the peer does.
const WARMUP: u32 = 10;
/// The target for one decision at the 99th percentile, at up to 100 voters; past that the
/// target is that the decision works (the peers cap a vote at 8).
const TARGET_P99: Duration = Duration::from_micros(50);
/// Most voters the p99 target is judged at.
const TARGET_P99_VOTERS: u32 = 100;
/// The target for the engine tallying 10,000 ballots.
const TARGET_TALLY: Duration = Duration::from_millis(1);
/// Ballots the engine tallies alone.
const TALLY_BALLOTS: u32 = 10_000;

/// The peers' rule: voter `id` says yes in round `round` about 60 % of the time.
pub fn votes_yes(id: u32, round: u64) -> bool {
    (u64::from(id)
        .wrapping_mul(2_654_435_761)
        .wrapping_add(round.wrapping_mul(40_503))
        & 0xFFFF_FFFF)
        % 100
        < 60
}

/// How the voters' ballots reach the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ballots {
    /// The voters say they answer inside their handler: asked inline, in the dispatcher's
    /// turn that seats them, the decision journaled in one write.
    Inline,
    /// The same voters, not saying so: a journaled ballot task pinned to each, as for agents
    /// that answer later.
    Tasks,
}

impl Ballots {
    pub fn as_str(self) -> &'static str {
        match self {
            Ballots::Inline => "inline",
            Ballots::Tasks => "as tasks",
        }
    }
}

/// An in-process agent that votes by [`votes_yes`] on the round in its task's payload, at once,
/// inside its handler; it says so unless its ballots are to be tasks.
struct Voter(Ballots);

impl Agent for Voter {
    fn answers_inline(&self) -> bool {
        self.0 == Ballots::Inline
    }

    fn handle(&self, task: Task) -> Execution {
        Execution::Done(match round_of(&task.payload) {
            Some(round) => Ok(Bytes::from_static(if votes_yes(task.agent.0, round) {
                b"yes"
            } else {
                b"no"
            })),
            None => Err(colony_agents::Error::fatal(
                "the payload is not a round number",
            )),
        })
    }
}

/// The round number a voter's payload is: its decimal digits, as the Erlang peer's voters
/// get the round as an integer; `None` if it is anything else.
fn round_of(payload: &[u8]) -> Option<u64> {
    if payload.is_empty() || payload.len() > 19 {
        return None;
    }
    payload.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Refuses a peer script that is not a file now, not after colony's rounds.
pub(crate) fn check_peer_script(erlang: Option<&Path>) -> Result<(), Error> {
    match erlang {
        Some(script) if !script.is_file() => Err(Error::Options(format!(
            "--erlang {}: not a file (the peer's erlang_peer.escript)",
            script.display()
        ))),
        _ => Ok(()),
    }
}

/// Erlang's W5 in the same run, as its script printed it.
#[derive(Clone, Debug, Serialize)]
pub struct ErlangW5 {
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// What `colony bench vote` measured.
#[derive(Clone, Debug, Serialize)]
pub struct VoteReport {
    pub agents: u32,
    pub ballots: Ballots,
    pub rounds: u32,
    /// Rounds decided, and those that failed (a tie: as many yes as no).
    pub decided: u32,
    pub failed: u32,
    /// One decision, from its start until the caller holds the outcome.
    pub decision: Percentiles,
    /// The engine alone: 10,000 ballots cast and the round closed.
    pub tally_10k_us: f64,
    pub erlang: Option<ErlangW5>,
    /// Whether every round ended as the votes say it must, and the targets: p99 ≤ 50 µs
    /// (among at most 100 voters), at most half Erlang's p99 when it ran, a 10,000-ballot
    /// tally under 1 ms.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Runs `rounds` decisions among `agents` voters (after a few untimed ones), then the
/// engine's tally, then Erlang's W5 if `erlang` names the peer's script.
pub async fn vote(
    agents: u32,
    rounds: u32,
    ballots: Ballots,
    erlang: Option<&Path>,
) -> Result<VoteReport, Error> {
    if !(1..=MAX_AGENTS).contains(&agents) {
        return Err(Error::Options(format!(
            "{agents} agents is out of range: allowed 1..={MAX_AGENTS}"
        )));
    }
    if !(1..=MAX_ROUNDS).contains(&rounds) {
        return Err(Error::Options(format!(
            "{rounds} rounds is out of range: allowed 1..={MAX_ROUNDS}"
        )));
    }
    // A peer script that cannot run is refused now, not after colony's rounds.
    check_peer_script(erlang)?;
    let pool = Pool::new(
        AgentSpec::new("voter", "voter"),
        agents,
        Arc::new(Voter(ballots)),
    );
    let runtime = Runtime::start(
        RuntimeOptions::default(),
        vec![pool],
        Arc::new(MemoryJournal::new()),
    )
    .await?;
    let h = runtime.handle().clone();
    let mut verdict = Verdict::new();
    let mut times = Vec::with_capacity(rounds as usize);
    let (mut decided, mut failed) = (0, 0);
    for round in 0..WARMUP + rounds {
        let spec = TaskSpec::with_payload(round.to_string());
        let start = Instant::now();
        let voting = h
            .decide(spec, Vote::new(agents, DecisionOptions::default()))
            .await?;
        let outcome = voting.outcome().await?;
        let took = start.elapsed();
        if round < WARMUP {
            continue;
        }
        times.push(took);
        match outcome.outcome.winner() {
            Some(_) => decided += 1,
            None => failed += 1,
        }
        if let Err(problem) = check(&outcome, u64::from(round)) {
            verdict.check(false, || format!("round {round}: {problem}"));
        }
        if outcome.inline != (ballots == Ballots::Inline) {
            verdict.check(false, || {
                format!(
                    "round {round}: its ballots were to be {}, but the decision says inline: {}",
                    ballots.as_str(),
                    outcome.inline
                )
            });
        }
    }
    runtime.shutdown().await;
    let decision = Percentiles::of(times);
    let judged = agents <= TARGET_P99_VOTERS;
    verdict.check(!judged || decision.p99_us <= TARGET_P99.as_secs_f64() * 1e6, || {
        format!(
            "a decision among {agents} took {:.1} µs at the 99th percentile: the target is {} µs",
            decision.p99_us,
            TARGET_P99.as_micros()
        )
    });
    let tally = tally_alone()?;
    verdict.check(tally <= TARGET_TALLY, || {
        format!(
            "tallying {TALLY_BALLOTS} ballots took {:.1} µs: the target is under {} µs",
            tally.as_secs_f64() * 1e6,
            TARGET_TALLY.as_micros()
        )
    });
    let erlang = match erlang {
        Some(script) => {
            let peer = erlang_w5(script, agents, rounds).await?;
            verdict.check(decision.p99_us * 2.0 <= peer.p99_us, || {
                format!(
                    "colony's p99 of {:.1} µs is not at least 2x better than Erlang's {:.1} µs",
                    decision.p99_us, peer.p99_us
                )
            });
            Some(peer)
        }
        None => None,
    };
    Ok(VoteReport {
        agents,
        ballots,
        rounds,
        decided,
        failed,
        decision,
        tally_10k_us: tally.as_secs_f64() * 1e6,
        erlang,
        verdict,
    })
}

/// Whether `decided` is what round `round`'s votes must give: counted independently of the
/// engine, a majority decides (as soon as it is certain), a tie fails, and every ballot
/// counted came from a distinct seated voter and said what its rule says.
fn check(decided: &Decided, round: u64) -> Result<(), String> {
    let record = decided.outcome.record();
    let mut seen = std::collections::HashSet::new();
    for ballot in &record.ballots {
        let voter = ballot.ballot.voter;
        if !seen.insert(voter) {
            return Err(format!("{voter} was counted twice"));
        }
        let said = match &ballot.ballot.vote {
            colony_core::decision::Vote::Output(text) => &**text == "yes",
            other => return Err(format!("{voter} sent {other:?}")),
        };
        if said != votes_yes(voter.0, round) {
            return Err(format!("{voter}'s ballot is not what it voted"));
        }
    }
    let n = decided.voters.len();
    let yes = decided
        .voters
        .iter()
        .filter(|v| votes_yes(v.agent.0, round))
        .count();
    let want = if yes * 2 > n {
        Some("yes")
    } else if (n - yes) * 2 > n {
        Some("no")
    } else {
        None
    };
    let got = decided.outcome.winner().map(|w| &*w.value);
    if got != want {
        return Err(format!(
            "{yes} of {n} say yes, so the outcome must be {want:?}, but it is {got:?} ({:?})",
            decided.outcome.reason()
        ));
    }
    Ok(())
}

/// The engine alone: 10,000 voters over three values, none passing until the last ballots,
/// then the round closed. The best of five.
fn tally_alone() -> Result<Duration, Error> {
    let participants: Vec<Participant> = (0..TALLY_BALLOTS)
        .map(|i| Participant::new(AgentId(i)))
        .collect();
    let values: [Arc<str>; 3] = ["alpha".into(), "beta".into(), "gamma".into()];
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let mut decision = Decision::new(DecisionOptions::default(), &participants)
            .map_err(|e| Error::Decision(e.to_string()))?;
        let at = Duration::from_millis(1);
        let start = Instant::now();
        let mut progress = Progress::Pending;
        for i in 0..TALLY_BALLOTS {
            // 40 % alpha, 30 % beta, 30 % gamma: nothing passes 50 %.
            let value = &values[match i % 10 {
                0..=3 => 0,
                4..=6 => 1,
                _ => 2,
            }];
            progress = decision
                .cast(Ballot::output(AgentId(i), value.clone()), at)
                .map_err(|e| Error::Decision(e.to_string()))?;
        }
        if progress == Progress::Pending {
            progress = decision.close(at);
        }
        best = best.min(start.elapsed());
        if !matches!(progress, Progress::Done(ref o) if o.winner().is_none()) {
            return Err(Error::Decision(
                "the 10,000-ballot tally did not end without a majority".into(),
            ));
        }
    }
    Ok(best)
}

/// Most bytes read of the peer's output, each of stdout and stderr: its report is one line.
const MAX_PEER_OUTPUT: u64 = 64 * 1024;

/// Runs `escript SCRIPT w5 AGENTS ROUNDS` and reads its JSON.
pub(crate) async fn erlang_w5(script: &Path, agents: u32, rounds: u32) -> Result<ErlangW5, Error> {
    use tokio::io::AsyncReadExt;
    let cannot = |e: std::io::Error| {
        Error::Options(format!("could not run escript {}: {e}", script.display()))
    };
    let mut child = tokio::process::Command::new("escript")
        .arg(script)
        .args(["w5", &agents.to_string(), &rounds.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(cannot)?;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut out = child.stdout.take().expect("piped").take(MAX_PEER_OUTPUT);
    let mut err = child.stderr.take().expect("piped").take(MAX_PEER_OUTPUT);
    let (read_out, read_err) =
        tokio::join!(out.read_to_end(&mut stdout), err.read_to_end(&mut stderr),);
    drop((out, err));
    read_out.map_err(cannot)?;
    read_err.map_err(cannot)?;
    // Whatever it prints past the bound is not read: it ends with its pipes, or is killed.
    let status = match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
        Ok(status) => status.map_err(cannot)?,
        Err(_) => {
            let _ = child.kill().await;
            return Err(Error::Options(format!(
                "escript {} printed more than {MAX_PEER_OUTPUT} bytes and was stopped",
                script.display()
            )));
        }
    };
    if !status.success() {
        return Err(Error::Options(format!(
            "escript {} w5 failed ({status}): {}",
            script.display(),
            String::from_utf8_lossy(&stderr).trim()
        )));
    }
    let json: serde_json::Value = serde_json::from_slice(&stdout).map_err(|e| {
        Error::Options(format!("escript {} printed no JSON: {e}", script.display()))
    })?;
    let field = |name: &str| {
        json.get(name)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| Error::Options(format!("Erlang's W5 printed no number {name}: {json}")))
    };
    Ok(ErlangW5 {
        p50_us: field("p50_us")?,
        p99_us: field("p99_us")?,
        max_us: field("max_us")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_is_read_from_its_digits_only() {
        assert_eq!(round_of(b"0"), Some(0));
        assert_eq!(round_of(b"1234567"), Some(1_234_567));
        assert_eq!(
            round_of(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"12a",
            b"-1",
            b" 1",
            b"1.0",
            b"99999999999999999999",
        ] {
            assert_eq!(round_of(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_rule_says_yes_about_sixty_percent_of_the_time() {
        let yes = (0..100u32)
            .flat_map(|id| (0..100u64).map(move |r| votes_yes(id, r)))
            .filter(|&y| y)
            .count();
        assert!((5_500..6_500).contains(&yes), "{yes} of 10,000");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_round_ends_as_its_votes_say() {
        for ballots in [Ballots::Inline, Ballots::Tasks] {
            rounds_end_as_their_votes_say(ballots).await;
        }
    }

    async fn rounds_end_as_their_votes_say(ballots: Ballots) {
        let report = vote(25, 40, ballots, None).await.unwrap();
        assert_eq!(report.decided + report.failed, 40);
        // The timing targets may miss on a loaded machine; the outcomes may not.
        assert!(
            report
                .verdict
                .problems
                .iter()
                .all(|p| !p.starts_with("round")),
            "{:?}",
            report.verdict.problems
        );
        assert_eq!(report.decision.samples, 40);
    }
}
