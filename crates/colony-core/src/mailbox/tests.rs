use super::*;
use proptest::prelude::*;
use std::collections::HashMap;

/// A message as the tests send it: its sender and the sender's sequence number.
type Msg = (u8, u32);

#[derive(Clone, Debug)]
enum Op {
    Put(u8),
    Attach,
    Take(usize),
    Ack,
    /// The current reader leaves without acknowledging.
    Detach,
    /// An old reader (this many epochs back) acknowledges.
    StaleAck(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4).prop_map(Op::Put),
        1 => Just(Op::Attach),
        3 => (0usize..8).prop_map(Op::Take),
        2 => Just(Op::Ack),
        1 => Just(Op::Detach),
        1 => (1u64..3).prop_map(Op::StaleAck),
    ]
}

proptest! {
    /// Whatever readers do, nothing put is lost, nothing is acknowledged twice, the mailbox
    /// never holds more than its capacity, and the messages acknowledged are, per sender, in
    /// the order sent.
    #[test]
    fn no_loss_no_reorder_bounded(ops in proptest::collection::vec(op(), 0..400), capacity in 1usize..12) {
        let mut mailbox: Mailbox<Msg> = Mailbox::new(capacity);
        let mut next: HashMap<u8, u32> = HashMap::new();
        let mut accepted = 0u64;
        let mut acked: Vec<Msg> = Vec::new();
        let mut epoch = mailbox.attach();
        let mut batch: Vec<Msg> = Vec::new();
        for op in ops {
            match op {
                Op::Put(sender) => {
                    let seq = next.get(&sender).copied().unwrap_or(0);
                    match mailbox.put((sender, seq)) {
                        Ok(()) => {
                            accepted += 1;
                            next.insert(sender, seq + 1);
                        }
                        Err(Refused::Full(m)) => {
                            prop_assert_eq!(m, (sender, seq));
                            prop_assert_eq!(mailbox.len(), capacity);
                        }
                        Err(Refused::Closed(_)) => prop_assert!(false, "closed before close"),
                    }
                }
                Op::Attach => {
                    epoch = mailbox.attach();
                    batch.clear();
                }
                Op::Take(max) => {
                    let got = mailbox.take(epoch, max);
                    if !got.is_empty() {
                        prop_assert!(batch.is_empty(), "a second batch before the first was acknowledged");
                        prop_assert!(got.len() <= max);
                        batch = got;
                    }
                }
                Op::Ack => {
                    let n = mailbox.ack(epoch);
                    prop_assert_eq!(n, batch.len());
                    acked.append(&mut batch);
                }
                Op::Detach => {
                    mailbox.detach(epoch);
                    batch.clear();
                    epoch = mailbox.attach();
                }
                Op::StaleAck(back) => {
                    prop_assert_eq!(mailbox.ack(epoch - back.min(epoch)), 0);
                }
            }
            prop_assert!(mailbox.len() <= capacity);
        }
        let rest = mailbox.close();
        prop_assert_eq!(acked.len() as u64 + rest.len() as u64, accepted);
        // Per sender, acknowledged messages then the rest are exactly 0, 1, 2, ...
        let mut seen: HashMap<u8, u32> = HashMap::new();
        for (sender, seq) in acked.iter().chain(&rest) {
            let want = seen.entry(*sender).or_default();
            prop_assert_eq!(*seq, *want, "sender {}'s messages out of order", sender);
            *want += 1;
        }
    }
}

#[test]
fn a_reader_that_leaves_gives_its_batch_back_in_order() {
    let mut m = Mailbox::new(8);
    for i in 0..5 {
        m.put(i).unwrap();
    }
    let first = m.attach();
    assert_eq!(m.take(first, 3), [0, 1, 2]);
    // Not acknowledged: no second batch.
    assert!(m.take(first, 3).is_empty());
    let second = m.attach();
    assert_eq!(m.redelivered(), 3);
    // The old reader's acknowledgement is ignored, and it takes nothing.
    assert_eq!(m.ack(first), 0);
    assert!(m.take(first, 8).is_empty());
    assert_eq!(m.take(second, 8), [0, 1, 2, 3, 4]);
    assert_eq!(m.ack(second), 5);
    assert!(m.is_empty());
}

#[test]
fn a_full_mailbox_hands_the_message_back() {
    let mut m = Mailbox::new(2);
    m.put("a").unwrap();
    m.put("b").unwrap();
    assert_eq!(m.put("c"), Err(Refused::Full("c")));
    let r = m.attach();
    assert_eq!(m.take(r, 1), ["a"]);
    // Taken but not acknowledged still counts against the capacity.
    assert_eq!(m.put("c"), Err(Refused::Full("c")));
    m.ack(r);
    assert_eq!(m.put("c"), Ok(()));
    // A message coming back may go past it; a closed mailbox takes nothing.
    assert_eq!(m.put_back("d"), Ok(()));
    assert_eq!(m.len(), 3);
    assert_eq!(m.close(), ["b", "c", "d"]);
    assert_eq!(m.put("e"), Err(Refused::Closed("e")));
    assert_eq!(m.put_back("e"), Err(Refused::Closed("e")));
    assert!(m.is_closed());
}

#[test]
fn the_directory_reaches_subscribers_and_members_once_but_not_the_sender() {
    let mut d = Directory::default();
    let a = Endpoint::Agent(AgentId(1));
    let b = Endpoint::Agent(AgentId(2));
    let n = Endpoint::Named("watcher".into());
    d.subscribe("jobs/new", a.clone()).unwrap();
    d.subscribe("jobs/new", b.clone()).unwrap();
    d.subscribe("jobs/new", b.clone()).unwrap();
    d.subscribe("jobs/new", n.clone()).unwrap();
    let topic = Address::Topic("jobs/new".into());
    assert_eq!(d.reach(&topic, &a), [b.clone(), n.clone()]);
    d.set_team(7, vec![AgentId(1), AgentId(2), AgentId(2)]);
    assert_eq!(d.reach(&Address::Team(7), &n), [a.clone(), b.clone()]);
    d.forget(&b);
    assert_eq!(d.reach(&topic, &a), std::slice::from_ref(&n));
    assert_eq!(d.reach(&Address::Team(7), &n), std::slice::from_ref(&a));
    d.unsubscribe("jobs/new", &n);
    d.unsubscribe("jobs/new", &a);
    assert_eq!(d.topics().count(), 0);
    assert!(d.reach(&Address::Team(8), &n).is_empty());
}

#[test]
fn bad_topics_are_refused_by_name() {
    let mut d = Directory::default();
    for bad in [
        "",
        "a b",
        "../x",
        "a//b",
        "/a",
        "a/",
        &"x".repeat(MAX_TOPIC_LEN + 1),
        "é",
    ] {
        let e = d.subscribe(bad, Endpoint::Named("r".into())).unwrap_err();
        assert!(matches!(e, Error::BadTopic(_)), "{bad:?}: {e}");
    }
    assert!(check_topic("runs/42.done_x-y").is_ok());
}

#[test]
fn another_processs_endpoints_are_named_cluster_process_slash_endpoint() {
    assert_eq!(
        far_endpoint("cluster:node-1/asker"),
        Some(("node-1", "asker"))
    );
    assert_eq!(
        far_endpoint("cluster:run-ab12/workflow/t"),
        Some(("run-ab12", "workflow/t"))
    );
    assert_eq!(far_endpoint("cluster:b/agent-3"), Some(("b", "agent-3")));
    for bad in [
        "asker",
        "cluster:nowhere",
        "cluster:/x",
        "cluster:b/",
        "cluster:b c/x",
        "cluster:b/x y",
        "cluster:b/../x",
        "cluster:b/cluster:c/x",
        "cluster:../agent-1",
        "cluster:./x",
    ] {
        assert_eq!(far_endpoint(bad), None, "{bad}");
    }
    assert_eq!(far_agent("agent-3"), Some(3));
    assert_eq!(far_agent("agent-0"), Some(0));
    for bad in [
        "agent-03",
        "agent-+3",
        "agent-",
        "agent-x",
        "agent-99999999999",
    ] {
        assert_eq!(far_agent(bad), None, "{bad}");
    }
    assert!(check_send_name("cluster:b/agent-3").is_ok());
    assert!(check_send_name("plain/name").is_ok());
    assert!(check_send_name("cluster:nowhere").is_err());
}
