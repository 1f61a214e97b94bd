//! Messages between a real runtime's agents: an agent's mailbox outlives its restarts, and
//! what a retired agent held goes back to its senders.

use bytes::Bytes;
use colony_agents::{
    AgentSpec,
    sim::{Sim, SimOptions},
};
use colony_core::{
    AgentId,
    mailbox::{Address, Endpoint},
};
use colony_journal::MemoryJournal;
use colony_runtime::{Pool, Runtime, RuntimeOptions, messages::Error};
use std::{sync::Arc, time::Duration};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_outlives_restarts_and_a_retired_agents_messages_come_back() {
    let pool = Pool::new(
        AgentSpec::new("sim", "worker"),
        4,
        Arc::new(Sim::new(SimOptions::default()).unwrap()),
    );
    let runtime = Runtime::start(
        RuntimeOptions::default(),
        vec![pool],
        Arc::new(MemoryJournal::new()),
    )
    .await
    .unwrap();
    let h = runtime.handle();
    let mut workers: Vec<AgentId> = h
        .observe(|live| live.tree.agents_in_tier(live.tree.worker_tier()))
        .await
        .unwrap();
    workers.sort_unstable();
    let bus = h.messages();
    let me = Endpoint::Named(Arc::from("me"));
    let mut mine = bus.open(me.clone()).unwrap();
    // An id the runtime never had is refused from the start.
    let e = bus
        .send(
            me.clone(),
            Address::To(Endpoint::Agent(AgentId(4_000_000_000))),
            Bytes::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NoMailbox(_)));

    // A worker killed and restarted reads what was sent to it before.
    let first = Endpoint::Agent(workers[0]);
    bus.send(
        me.clone(),
        Address::To(first.clone()),
        Bytes::from_static(b"before"),
    )
    .await
    .unwrap();
    h.kill(workers[0]).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut inbox = bus.open(first).unwrap();
    let got = inbox.try_recv().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].body[..], b"before");

    // The newest idle worker goes first when the pool shrinks: its unread messages come
    // back to their sender, and it can be sent nothing more.
    let last = Endpoint::Agent(*workers.last().unwrap());
    for body in ["a", "b"] {
        bus.send(me.clone(), Address::To(last.clone()), Bytes::from(body))
            .await
            .unwrap();
    }
    assert_eq!(h.retire(0, 1).await.unwrap(), 1);
    let back = mine.try_recv().unwrap();
    let bodies: Vec<&[u8]> = back.iter().map(|m| &m.body[..]).collect();
    assert_eq!(bodies, [b"a", b"b"]);
    assert!(back.iter().all(|m| m.returned.as_ref().unwrap().by == last));
    let e = bus
        .send(me.clone(), Address::To(last.clone()), Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(e, Error::NoMailbox(last));
    // An id past the tree's end is no agent.
    let e = bus
        .send(
            me,
            Address::To(Endpoint::Agent(AgentId(1_000_000))),
            Bytes::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NoMailbox(_)));
    assert_eq!(bus.stats().returned, 2);
    runtime.shutdown().await;
}
