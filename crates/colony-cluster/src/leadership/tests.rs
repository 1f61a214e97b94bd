use super::*;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use std::{cmp::Reverse, collections::BinaryHeap};

const TTL: Duration = Duration::from_secs(3);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn claim(holder: &str, term: u64) -> Option<Claim> {
    Some(Claim {
        holder: holder.into(),
        term,
    })
}

#[test]
fn a_created_key_leads_until_two_thirds_of_the_ttl_after_it_was_sent() {
    let mut e = Election::new("a", TTL, ms(0));
    assert_eq!(e.next(ms(0)), Op::Create);
    e.answered(Op::Create, Answer::Written { revision: 7 }, ms(0), ms(300));
    assert_eq!(e.leading(ms(300)), Some(7));
    // Renewal every third of the TTL, at the revision it wrote, in its term.
    assert_eq!(e.next(ms(999)), Op::Wait);
    assert_eq!(
        e.next(ms(1000)),
        Op::Renew {
            revision: 7,
            term: 7
        }
    );
    // No answer to the renewals: it stops leading 2 s after the create was sent, while the
    // key (stored at 0.3 s or later) lives until 3.3 s at least.
    e.answered(
        Op::Renew {
            revision: 7,
            term: 7,
        },
        Answer::Unavailable,
        ms(1000),
        ms(2000) - ms(1),
    );
    assert_eq!(e.leading(ms(1999)), Some(7));
    assert_eq!(e.leading(ms(2000)), None);
    // It goes on renewing; an acknowledged renewal makes it lead again, same term.
    assert_eq!(e.next(ms(2248)), Op::Wait, "a quarter second between tries");
    let op = e.next(ms(2249));
    assert_eq!(
        op,
        Op::Renew {
            revision: 7,
            term: 7
        }
    );
    e.answered(op, Answer::Written { revision: 9 }, ms(2249), ms(2300));
    assert_eq!(e.leading(ms(2300)), Some(7));
    assert_eq!(e.valid_until(ms(2300)), Some(ms(2249) + ms(2000)));
}

#[test]
fn a_key_held_by_another_is_tried_again_and_taken_when_it_expires() {
    let mut e = Election::new("b", TTL, ms(0));
    let held = Seen {
        revision: 3,
        claim: claim("a", 0),
    };
    e.answered(Op::Create, Answer::Conflict(Some(held)), ms(0), ms(10));
    assert_eq!(e.leading(ms(10)), None);
    assert_eq!(e.next(ms(500)), Op::Wait);
    assert_eq!(e.next(ms(1010)), Op::Create, "tries every second");
    // The watch shows the delete marker: it creates at once.
    e.observed(
        Seen {
            revision: 5,
            claim: None,
        },
        ms(1500),
    );
    assert_eq!(e.next(ms(1500)), Op::Create);
}

#[test]
fn a_leader_that_sees_another_holder_steps_down_at_once() {
    let mut e = Election::new("a", TTL, ms(0));
    e.answered(Op::Create, Answer::Written { revision: 4 }, ms(0), ms(1));
    // A stale echo of its own write changes nothing.
    e.observed(
        Seen {
            revision: 4,
            claim: claim("a", 0),
        },
        ms(2),
    );
    assert_eq!(e.leading(ms(2)), Some(4));
    e.observed(
        Seen {
            revision: 8,
            claim: claim("b", 0),
        },
        ms(5),
    );
    assert_eq!(e.leading(ms(5)), None);
    assert_eq!(e.next(ms(5)), Op::Wait);
}

#[test]
fn a_renewal_whose_answer_was_lost_is_recognised_as_its_own() {
    let mut e = Election::new("a", TTL, ms(0));
    e.answered(Op::Create, Answer::Written { revision: 4 }, ms(0), ms(1));
    let renew = Op::Renew {
        revision: 4,
        term: 4,
    };
    // The first renewal landed (revision 6) but its answer was lost; the second conflicts.
    e.answered(renew, Answer::Unavailable, ms(1000), ms(2000));
    let again = e.next(ms(2250));
    assert_eq!(again, renew);
    let found = Seen {
        revision: 6,
        claim: claim("a", 4),
    };
    e.answered(again, Answer::Conflict(Some(found)), ms(2250), ms(2260));
    // Still leading on the validity it had (the create's); renews at the revision found now.
    assert_eq!(e.leading(ms(1999)), Some(4));
    assert_eq!(
        e.next(ms(2260)),
        Op::Renew {
            revision: 6,
            term: 4
        }
    );
}

#[test]
fn a_create_whose_answer_was_lost_is_adopted_and_leads_after_one_renewal() {
    let mut e = Election::new("a", TTL, ms(0));
    e.answered(Op::Create, Answer::Unavailable, ms(0), ms(1000));
    let found = Seen {
        revision: 3,
        claim: claim("a", 0),
    };
    e.answered(
        Op::Create,
        Answer::Conflict(Some(found)),
        ms(2000),
        ms(2010),
    );
    assert_eq!(
        e.leading(ms(2010)),
        None,
        "not before a renewal is acknowledged"
    );
    let op = e.next(ms(2010));
    assert_eq!(
        op,
        Op::Renew {
            revision: 3,
            term: 3
        }
    );
    e.answered(op, Answer::Written { revision: 5 }, ms(2010), ms(2020));
    assert_eq!(e.leading(ms(2020)), Some(3));
}

#[test]
fn a_renewal_that_finds_the_key_moved_or_gone_stops_leading_at_once() {
    let renew = Op::Renew {
        revision: 7,
        term: 7,
    };
    let leader = || {
        let mut e = Election::new("a", TTL, ms(0));
        e.answered(Op::Create, Answer::Written { revision: 7 }, ms(0), ms(10));
        e
    };
    // Another holds it: follow, try again after a pause.
    let mut e = leader();
    let other = Seen {
        revision: 9,
        claim: claim("b", 9),
    };
    e.answered(renew, Answer::Conflict(Some(other)), ms(1000), ms(1010));
    assert_eq!(e.leading(ms(1010)), None);
    assert_eq!(e.next(ms(1010)), Op::Wait);
    assert_eq!(e.next(ms(1010) + e.retry()), Op::Create);
    // Gone (expired and its marker too): follow and create at once.
    let mut e = leader();
    e.answered(renew, Answer::Conflict(None), ms(1000), ms(1010));
    assert_eq!(e.leading(ms(1010)), None);
    assert_eq!(e.next(ms(1010)), Op::Create);
    // A read that lags shows our own claim at the revision we renew: not ours to keep, and
    // no renewal at once either (no hot loop).
    let mut e = leader();
    let stale = Seen {
        revision: 7,
        claim: claim("a", 0),
    };
    e.answered(renew, Answer::Conflict(Some(stale)), ms(1000), ms(1010));
    assert_eq!(e.leading(ms(1010)), None);
    assert_eq!(e.next(ms(1010)), Op::Wait);
}

#[test]
fn a_create_that_conflicts_waits_before_trying_again_whatever_the_read_says() {
    let mut e = Election::new("a", TTL, ms(0));
    let vacant = Seen {
        revision: 4,
        claim: None,
    };
    e.answered(Op::Create, Answer::Conflict(Some(vacant)), ms(0), ms(10));
    assert_eq!(e.next(ms(10)), Op::Wait);
    assert_eq!(e.next(ms(10) + e.retry() / 4), Op::Create);
    e.answered(Op::Create, Answer::Conflict(None), ms(300), ms(310));
    assert_eq!(e.next(ms(310)), Op::Wait);
    // A vacancy seen on the watch is tried at once.
    e.observed(
        Seen {
            revision: 5,
            claim: None,
        },
        ms(320),
    );
    assert_eq!(e.next(ms(320)), Op::Create);
}

#[test]
fn a_value_that_is_not_a_claim_holds_the_key_for_nobody_we_know() {
    let held = claim_in(kv::Operation::Put, b"not json").unwrap();
    assert_eq!(held.holder, "");
    assert_eq!(
        claim_in(kv::Operation::Put, br#"{"holder":"a-1","term":3}"#),
        claim("a-1", 3)
    );
    assert_eq!(claim_in(kv::Operation::Delete, b""), None);
    assert_eq!(claim_in(kv::Operation::Purge, b""), None);
    // Seen held, a follower waits rather than trying at once.
    let mut e = Election::new("a", TTL, ms(0));
    e.observed(
        Seen {
            revision: 3,
            claim: Some(held),
        },
        ms(0),
    );
    assert_eq!(e.next(ms(0)), Op::Wait);
}

#[test]
fn resigning_gives_the_revision_to_delete_and_stops_every_write() {
    let mut e = Election::new("a", TTL, ms(0));
    e.answered(Op::Create, Answer::Written { revision: 4 }, ms(0), ms(1));
    assert_eq!(e.resign(), Some(4));
    assert_eq!(e.leading(ms(2)), None);
    assert_eq!(e.next(ms(10_000)), Op::Wait);
    let mut f = Election::new("b", TTL, ms(0));
    assert_eq!(f.resign(), None);
}

/// A simulated leaders bucket and network: writes land after a delay or never, answers come
/// back after a delay or are lost (the write may have landed), watches miss events, and
/// candidates crash. At every step, every candidate that believes it leads holds the key as
/// the server has it (so two never lead at once), terms never go back, and once the faults
/// stop a live candidate leads within the TTL and a second.
#[test]
fn in_a_simulated_cluster_with_faults_no_two_candidates_ever_lead_at_once() {
    for seed in 0..300 {
        simulate(seed);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A write reaches the server.
    Arrive { who: usize, op: Op2, sent: u64 },
    /// Its answer reaches the candidate.
    Reply {
        who: usize,
        op: Op2,
        sent: u64,
        answer: Answer2,
    },
    /// The candidate gives up waiting.
    Timeout { who: usize, op: Op2, sent: u64 },
    /// The watch shows a change.
    Watch {
        who: usize,
        revision: u64,
        claim: Option<(usize, u64)>,
    },
}

/// `Op` and `Answer` with an order, for the event queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op2 {
    Create,
    Renew(u64, u64),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Answer2 {
    Written(u64),
    Conflict(u64, Option<(usize, u64)>),
}

/// A claim in the simulation: the holder's index and the term.
type SimClaim = Option<(usize, u64)>;

struct Server {
    seq: u64,
    /// Revision, claim, expiry (ms) of a live claim.
    key: Option<(u64, SimClaim, u64)>,
}

impl Server {
    fn expire(&mut self, now: u64) -> Option<(u64, SimClaim)> {
        if let Some((_, Some(_), expires)) = self.key
            && expires <= now
        {
            self.seq += 1;
            self.key = Some((self.seq, None, u64::MAX));
            return Some((self.seq, None));
        }
        None
    }
}

fn simulate(seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = rng.random_range(2..=4);
    let ttl_ms = TTL.as_millis() as u64;
    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let mut elections: Vec<Election> = names
        .iter()
        .map(|name| Election::new(name.clone(), TTL, ms(0)))
        .collect();
    let mut alive = vec![true; n];
    let mut busy: Vec<Option<u64>> = vec![None; n];
    let mut server = Server { seq: 0, key: None };
    let mut queue: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut order = 0u64;
    let mut push = |queue: &mut BinaryHeap<_>, at: u64, event: Event| {
        order += 1;
        queue.push(Reverse((at, order, event)));
    };
    let chaos_until = 40_000;
    let end = 60_000;
    let retry = elections[0].retry().as_millis() as u64;
    let crashes: Vec<u64> = (0..rng.random_range(0..=2))
        .map(|_| rng.random_range(1_000..chaos_until))
        .collect();
    let mut last_term = 0;
    let mut led_after_chaos = false;
    let to_seen = |revision: u64, claim: Option<(usize, u64)>, names: &[String]| Seen {
        revision,
        claim: claim.map(|(who, term)| Claim {
            holder: names[who].clone(),
            term,
        }),
    };
    for now in (0..end).step_by(10) {
        let chaos = now < chaos_until;
        // Crash: the candidate that leads, if any, else any.
        for &at in &crashes {
            if (at..at + 10).contains(&now) {
                let victim = (0..n)
                    .find(|&i| alive[i] && elections[i].leading(ms(now)).is_some())
                    .unwrap_or(0);
                alive[victim] = false;
            }
        }
        // Deliver what is due.
        let mut deliveries = Vec::new();
        if let Some(seen) = server.expire(now) {
            deliveries.push(seen);
        }
        while let Some(Reverse((at, _, _))) = queue.peek()
            && *at <= now
        {
            let Some(Reverse((_, _, event))) = queue.pop() else {
                break;
            };
            match event {
                Event::Arrive { who, op, sent } => {
                    if let Some(seen) = server.expire(now) {
                        deliveries.push(seen);
                    }
                    let current = server.key.map_or(0, |(r, _, _)| r);
                    let free = server.key.is_none_or(|(_, c, _)| c.is_none());
                    let (ok, term) = match op {
                        Op2::Create => (free, 0),
                        Op2::Renew(revision, term) => (revision == current && !free, term),
                    };
                    let answer = if ok {
                        server.seq += 1;
                        server.key = Some((server.seq, Some((who, term)), now + ttl_ms));
                        deliveries.push((server.seq, Some((who, term))));
                        Answer2::Written(server.seq)
                    } else {
                        let (r, c, _) = server.key.unwrap_or((0, None, 0));
                        Answer2::Conflict(r, c)
                    };
                    let lost = chaos && rng.random_bool(0.15);
                    let back = now + rng.random_range(0..if chaos { 2 * retry } else { 50 });
                    if !lost && back < sent + retry {
                        push(
                            &mut queue,
                            back,
                            Event::Reply {
                                who,
                                op,
                                sent,
                                answer,
                            },
                        );
                    }
                }
                Event::Reply {
                    who,
                    op,
                    sent,
                    answer,
                } => {
                    if alive[who] && busy[who] == Some(sent) {
                        busy[who] = None;
                        let op = match op {
                            Op2::Create => Op::Create,
                            Op2::Renew(revision, term) => Op::Renew { revision, term },
                        };
                        let answer = match answer {
                            Answer2::Written(revision) => Answer::Written { revision },
                            Answer2::Conflict(0, _) => Answer::Conflict(None),
                            Answer2::Conflict(r, c) => {
                                Answer::Conflict(Some(to_seen(r, c, &names)))
                            }
                        };
                        elections[who].answered(op, answer, ms(sent), ms(now));
                    }
                }
                Event::Timeout { who, op, sent } => {
                    if alive[who] && busy[who] == Some(sent) {
                        busy[who] = None;
                        let op = match op {
                            Op2::Create => Op::Create,
                            Op2::Renew(revision, term) => Op::Renew { revision, term },
                        };
                        elections[who].answered(op, Answer::Unavailable, ms(sent), ms(now));
                    }
                }
                Event::Watch {
                    who,
                    revision,
                    claim,
                } => {
                    if alive[who] {
                        elections[who].observed(to_seen(revision, claim, &names), ms(now));
                    }
                }
            }
        }
        for (revision, claim) in deliveries {
            for who in 0..n {
                if chaos && rng.random_bool(0.1) {
                    continue;
                }
                let at = now + rng.random_range(1..if chaos { 400 } else { 30 });
                push(
                    &mut queue,
                    at,
                    Event::Watch {
                        who,
                        revision,
                        claim,
                    },
                );
            }
        }
        // Safety: whoever believes it leads holds the key as the server has it now.
        server.expire(now);
        for who in 0..n {
            if !alive[who] {
                continue;
            }
            if let Some(term) = elections[who].leading(ms(now)) {
                let holder = server.key.and_then(|(_, c, _)| c);
                assert!(
                    matches!(holder, Some((h, _)) if h == who),
                    "seed {seed}: {who} leads (term {term}) at {now} ms but the key holds {holder:?}"
                );
                assert!(term >= last_term, "seed {seed}: term went back at {now} ms");
                last_term = term;
                if now >= chaos_until {
                    led_after_chaos = true;
                }
            }
        }
        // Liveness: once the faults stop, a live candidate leads within the TTL and a second.
        if now == chaos_until + ttl_ms + 1_000 && alive.iter().any(|a| *a) {
            assert!(
                (0..n).any(|i| alive[i] && elections[i].leading(ms(now)).is_some()),
                "seed {seed}: nobody leads {now} ms in"
            );
        }
        // Each idle candidate writes what its election says.
        for who in 0..n {
            if !alive[who] || busy[who].is_some() {
                continue;
            }
            let op = match elections[who].next(ms(now)) {
                Op::Wait => continue,
                Op::Create => Op2::Create,
                Op::Renew { revision, term } => Op2::Renew(revision, term),
            };
            busy[who] = Some(now);
            push(
                &mut queue,
                now + retry,
                Event::Timeout { who, op, sent: now },
            );
            if !(chaos && rng.random_bool(0.1)) {
                let at = now + rng.random_range(0..if chaos { 2 * retry } else { 50 });
                push(&mut queue, at, Event::Arrive { who, op, sent: now });
            }
        }
    }
    assert!(
        led_after_chaos || !alive.iter().any(|a| *a),
        "seed {seed}: nobody led after the faults"
    );
}
