use super::*;
use std::time::Duration;

fn named(name: &str) -> Endpoint {
    Endpoint::Named(Arc::from(name))
}

fn small(capacity: usize, batch: usize) -> Bus {
    Bus::new(MessageOptions {
        capacity,
        batch,
        ..MessageOptions::default()
    })
}

/// The sender's number and its sequence number, as a body.
fn body(sender: u32, seq: u32) -> Bytes {
    Bytes::from(format!("{sender}:{seq}"))
}

fn parse(b: &Bytes) -> (u32, u32) {
    let s = std::str::from_utf8(b).unwrap();
    let (a, b) = s.split_once(':').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_senders_through_a_small_mailbox_lose_nothing_and_keep_their_order() {
    let bus = small(16, 5);
    let reader = named("reader");
    let mut inbox = bus.open(reader.clone()).unwrap();
    const SENDERS: u32 = 4;
    const EACH: u32 = 5_000;
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let bus = bus.clone();
        let to = Address::To(reader.clone());
        senders.push(crate::spawner::Spawner::spawn("sender", async move {
            for i in 0..EACH {
                let sent = bus
                    .send(named(&format!("s{s}")), to.clone(), body(s, i))
                    .await
                    .unwrap();
                assert_eq!(sent.delivered, 1);
            }
        }));
    }
    let mut next = [0u32; SENDERS as usize];
    let mut got = 0;
    while got < SENDERS * EACH {
        let batch = inbox.recv().await.unwrap();
        assert!(!batch.is_empty() && batch.len() <= 5);
        for m in &batch {
            let (s, i) = parse(&m.body);
            assert_eq!(i, next[s as usize], "sender {s} out of order");
            next[s as usize] += 1;
            got += 1;
        }
    }
    for s in senders {
        s.await.unwrap();
    }
    inbox.ack();
    let stats = bus.stats();
    assert_eq!(stats.sent, u64::from(SENDERS * EACH));
    assert_eq!(stats.acknowledged, u64::from(SENDERS * EACH));
    assert_eq!(stats.held, 0);
    // The mailbox held 16: the senders had to wait.
    assert!(stats.waits > 0);
}

#[tokio::test]
async fn a_reader_killed_mid_batch_loses_nothing() {
    let bus = small(64, 4);
    let agent = Endpoint::Agent(AgentId(3));
    for i in 0..10 {
        bus.send(named("s"), Address::To(agent.clone()), body(0, i))
            .await
            .unwrap();
    }
    let mut first = bus.open(agent.clone()).unwrap();
    let batch = first.recv().await.unwrap();
    assert_eq!(batch.len(), 4);
    let second = first.recv().await.unwrap();
    assert_eq!(parse(&second[0].body), (0, 4));
    // Killed holding its second batch: a task aborted drops its inbox.
    let task = crate::spawner::Spawner::spawn("reader", async move {
        let _held = first;
        std::future::pending::<()>().await;
    });
    tokio::task::yield_now().await;
    task.abort();
    let _ = task.await;
    let mut replacement = bus.open(agent.clone()).unwrap();
    let mut seqs = Vec::new();
    while let Ok(batch) = replacement.try_recv() {
        if batch.is_empty() {
            break;
        }
        seqs.extend(batch.iter().map(|m| parse(&m.body).1));
    }
    // The first batch was acknowledged by asking for the second; the second comes again.
    assert_eq!(seqs, (4..10).collect::<Vec<_>>());
    assert_eq!(bus.stats().redelivered, 4);
}

#[tokio::test]
async fn a_newer_reader_fences_out_the_older() {
    let bus = small(8, 8);
    let me = named("me");
    let mut old = bus.open(me.clone()).unwrap();
    bus.send(named("s"), Address::To(me.clone()), body(0, 0))
        .await
        .unwrap();
    let taken = old.recv().await.unwrap();
    assert_eq!(taken.len(), 1);
    let mut new = bus.open(me.clone()).unwrap();
    // The old reader's acknowledgement counts for nothing, and it reads no more.
    old.ack();
    assert_eq!(old.try_recv().unwrap_err(), Closed::Fenced);
    assert_eq!(new.try_recv().unwrap().len(), 1);
}

#[tokio::test]
async fn topics_and_teams_reach_their_members_but_not_the_sender() {
    let bus = Bus::new(MessageOptions::default());
    let mut inboxes: Vec<Inbox> = (0..5)
        .map(|i| bus.open(Endpoint::Agent(AgentId(i))).unwrap())
        .collect();
    for i in 0..5 {
        bus.subscribe("news", Endpoint::Agent(AgentId(i))).unwrap();
    }
    let sent = bus
        .send(
            Endpoint::Agent(AgentId(0)),
            Address::Topic("news".into()),
            Bytes::from_static(b"hi"),
        )
        .await
        .unwrap();
    assert_eq!(sent.delivered, 4);
    assert!(inboxes[0].try_recv().unwrap().is_empty());
    for inbox in &mut inboxes[1..] {
        let got = inbox.try_recv().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].to, Address::Topic("news".into()));
    }
    bus.set_team(9, vec![AgentId(1), AgentId(2)]);
    let sent = bus
        .send(named("lead"), Address::Team(9), Bytes::from_static(b"go"))
        .await
        .unwrap();
    assert_eq!(sent.delivered, 2);
    bus.end_team(9);
    let sent = bus
        .send(named("lead"), Address::Team(9), Bytes::from_static(b"go"))
        .await
        .unwrap();
    assert_eq!(sent.delivered, 0);
    // Nobody on a topic: delivered to nobody, not an error.
    let sent = bus
        .send(named("x"), Address::Topic("quiet".into()), Bytes::new())
        .await
        .unwrap();
    assert_eq!(sent.delivered, 0);
}

#[tokio::test]
async fn messages_to_an_agent_retired_go_back_to_their_sender() {
    let bus = Bus::new(MessageOptions::default());
    bus.set_agents(10);
    let sender = named("sender");
    let mut back = bus.open(sender.clone()).unwrap();
    let gone = Endpoint::Agent(AgentId(4));
    for i in 0..3 {
        bus.send(sender.clone(), Address::To(gone.clone()), body(0, i))
            .await
            .unwrap();
    }
    // A sender with no mailbox: its message cannot come back, and is counted.
    bus.send(named("nobody"), Address::To(gone.clone()), body(1, 0))
        .await
        .unwrap();
    bus.subscribe("t", gone.clone()).unwrap();
    assert_eq!(bus.close(&gone, "the agent was retired"), 4);
    let returned = back.try_recv().unwrap();
    assert_eq!(returned.len(), 3);
    for (i, m) in returned.iter().enumerate() {
        assert_eq!(parse(&m.body), (0, i as u32));
        let r = m.returned.as_ref().unwrap();
        assert_eq!(r.by, gone);
        assert_eq!(&*r.why, "the agent was retired");
    }
    let stats = bus.stats();
    assert_eq!((stats.returned, stats.unreturnable), (3, 1));
    assert_eq!(stats.topics, 0);
    // Refused now, at once, and so is an id the runtime does not have.
    let e = bus
        .send(sender.clone(), Address::To(gone.clone()), Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(e, Error::NoMailbox(gone.clone()));
    assert!(bus.open(gone.clone()).is_err());
    let e = bus
        .send(
            sender.clone(),
            Address::To(Endpoint::Agent(AgentId(10))),
            Bytes::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NoMailbox(_)));
    // Its id given to a new agent: a new, empty mailbox.
    bus.forget_agents_from(4);
    bus.set_agents(5);
    assert!(bus.open(gone).unwrap().try_recv().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_full_mailbox_makes_its_sender_wait_until_room_is_made() {
    let bus = small(2, 2);
    let me = named("me");
    let mut inbox = bus.open(me.clone()).unwrap();
    for i in 0..2 {
        bus.send(named("s"), Address::To(me.clone()), body(0, i))
            .await
            .unwrap();
    }
    let third = {
        let bus = bus.clone();
        let me = me.clone();
        crate::spawner::Spawner::spawn("third", async move {
            bus.send(named("s"), Address::To(me), body(0, 2))
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!third.is_finished(), "sent into a full mailbox");
    assert_eq!(inbox.recv().await.unwrap().len(), 2);
    // Taken is not gone: still no room until acknowledged.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!third.is_finished());
    inbox.ack();
    assert_eq!(third.await.unwrap().unwrap().delivered, 1);
    assert_eq!(parse(&inbox.recv().await.unwrap()[0].body), (0, 2));
}

#[tokio::test]
async fn bad_messages_are_refused_with_nothing_sent() {
    let bus = Bus::new(MessageOptions {
        max_body: 10,
        ..MessageOptions::default()
    });
    let me = named("me");
    let e = bus
        .send(
            named("s"),
            Address::To(me.clone()),
            Bytes::from(vec![0; 11]),
        )
        .await
        .unwrap_err();
    assert_eq!(e, Error::TooLarge { got: 11, max: 10 });
    let e = bus
        .send(named("s"), Address::To(me.clone()), Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(e, Error::NotOpen(me.clone()));
    assert!(matches!(
        bus.subscribe("../etc", me),
        Err(Error::Directory(_))
    ));
    assert_eq!(bus.stats().sent, 0);
    assert!(
        MessageOptions {
            batch: 0,
            ..MessageOptions::default()
        }
        .validate()
        .is_err()
    );
}

#[tokio::test]
async fn agents_leaving_the_tree_close_their_mailboxes_and_topics() {
    let bus = Bus::new(MessageOptions::default());
    bus.set_agents(10);
    let me = named("me");
    let mut back = bus.open(me.clone()).unwrap();
    for id in [3, 7, 8] {
        let agent = Endpoint::Agent(AgentId(id));
        bus.subscribe("t", agent.clone()).unwrap();
        bus.send(me.clone(), Address::To(agent), body(0, id))
            .await
            .unwrap();
    }
    // Agent 9 subscribed but was never sent anything: no mailbox, still in the topic.
    bus.subscribe("t", Endpoint::Agent(AgentId(9))).unwrap();
    bus.forget_agents_from(7);
    bus.set_agents(7);
    let returned: Vec<(u32, u32)> = back
        .try_recv()
        .unwrap()
        .iter()
        .map(|m| parse(&m.body))
        .collect();
    assert_eq!(returned, [(0, 7), (0, 8)]);
    assert_eq!(bus.topics(), [(Arc::from("t"), 1)]);
    // Their ids given to new agents: empty mailboxes.
    bus.set_agents(10);
    assert!(
        bus.open(Endpoint::Agent(AgentId(7)))
            .unwrap()
            .try_recv()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_message_to_a_name_with_no_mailbox_under_a_forwarded_prefix_goes_to_the_forwarder() {
    let bus = small(8, 8);
    let bridge = named("bridge");
    let mut forwarded = bus.open(bridge.clone()).unwrap();
    bus.forward(|name| name.starts_with("cluster:"), bridge.clone());
    let far = named("cluster:b/reader");
    let sent = bus
        .send(named("me"), Address::To(far.clone()), Bytes::from("hi"))
        .await
        .unwrap();
    assert_eq!(sent.delivered, 1);
    let got = forwarded.try_recv().unwrap();
    assert_eq!(got.len(), 1);
    // Addressed as it was sent: the forwarder reads where it was going.
    assert_eq!(got[0].to, Address::To(far.clone()));
    forwarded.ack();
    // A name under the prefix with a mailbox of its own here keeps its messages.
    let mut own = bus.open(far.clone()).unwrap();
    bus.send(named("me"), Address::To(far.clone()), Bytes::from("mine"))
        .await
        .unwrap();
    assert_eq!(own.try_recv().unwrap().len(), 1);
    assert!(forwarded.try_recv().unwrap().is_empty());
    // Another prefix, and a stopped forward, are refused as before.
    let other = named("elsewhere:x");
    let e = bus
        .send(named("me"), Address::To(other.clone()), Bytes::from("x"))
        .await
        .unwrap_err();
    assert_eq!(e, Error::NotOpen(other));
    bus.stop_forwarding(&bridge);
    let e = bus
        .send(
            named("me"),
            Address::To(named("cluster:c/x")),
            Bytes::from("x"),
        )
        .await
        .unwrap_err();
    assert_eq!(e, Error::NotOpen(named("cluster:c/x")));
}

#[tokio::test]
async fn a_message_from_outside_goes_only_to_a_mailbox_that_is_there_with_room() {
    let bus = small(1, 1);
    let me = named("me");
    let mut inbox = bus.open(me.clone()).unwrap();
    let from = named("cluster:b/x");
    assert!(
        bus.deliver_existing(from.clone(), me.clone(), Bytes::from("1"))
            .unwrap()
    );
    // Full: not put, and nothing waits.
    assert!(
        !bus.deliver_existing(from.clone(), me.clone(), Bytes::from("2"))
            .unwrap()
    );
    // No mailbox, a named one or an agent's: none is made.
    assert!(
        !bus.deliver_existing(from.clone(), named("nobody"), Bytes::from("3"))
            .unwrap()
    );
    let agent = Endpoint::Agent(AgentId(7));
    assert!(
        !bus.deliver_existing(from.clone(), agent.clone(), Bytes::from("4"))
            .unwrap()
    );
    let got = inbox.try_recv().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].body[..], b"1");
    assert_eq!(got[0].from, from);
    let mut agent_inbox = bus.open(agent).unwrap();
    assert!(agent_inbox.try_recv().unwrap().is_empty());
}

#[tokio::test]
async fn closing_a_forwarder_ends_its_forwards() {
    let bus = small(8, 8);
    let bridge = named("bridge");
    let _inbox = bus.open(bridge.clone()).unwrap();
    bus.forward(|name| name.starts_with("cluster:"), bridge.clone());
    bus.close(&bridge, "gone");
    let far = named("cluster:b/x");
    let e = bus
        .send(named("me"), Address::To(far.clone()), Bytes::from("x"))
        .await
        .unwrap_err();
    assert_eq!(e, Error::NotOpen(far));
}

#[tokio::test]
async fn a_message_from_another_process_on_a_topic_is_not_handed_back_to_the_forwarder() {
    let bus = small(8, 8);
    let bridge = named("bridge");
    let mut bridge_inbox = bus.open(bridge.clone()).unwrap();
    bus.forward(|name| name.starts_with("cluster:"), bridge.clone());
    bus.subscribe("plans", bridge.clone()).unwrap();
    let reader = named("reader");
    bus.subscribe("plans", reader.clone()).unwrap();
    let mut reader_inbox = bus.open(reader).unwrap();
    let sent = bus
        .send(
            named("cluster:b/x"),
            Address::Topic("plans".into()),
            Bytes::from("in"),
        )
        .await
        .unwrap();
    assert_eq!(sent.delivered, 1);
    assert_eq!(reader_inbox.try_recv().unwrap().len(), 1);
    assert!(bridge_inbox.try_recv().unwrap().is_empty());
    // A local sender's message on the topic still reaches the bridge.
    bus.send(
        named("local"),
        Address::Topic("plans".into()),
        Bytes::from("out"),
    )
    .await
    .unwrap();
    assert_eq!(bridge_inbox.try_recv().unwrap().len(), 1);
}
