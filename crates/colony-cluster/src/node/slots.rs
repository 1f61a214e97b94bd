//! A node's slots: its own (`--max-in-flight`) and each role's (its agents' capacity), held
//! while a delivery runs, so that a node never holds work its agents cannot start. A task
//! takes one of its role's and one of the node's. A vote takes one for each voter and a team
//! one for each member, of the roles they hold: without that a node with room for one vote
//! would take as many as it has agents, and the others would wait on it for agents while
//! other nodes sat idle.

use crate::wire::Together;
use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Slots of one kind: a semaphore of `size` permits.
#[derive(Clone, Debug)]
pub(super) struct Slot {
    pub(super) semaphore: Arc<Semaphore>,
    pub(super) size: u32,
    /// Tasks of bundles this node took that wait for one of these slots.
    pub(super) queued: Arc<Queued>,
}

impl Slot {
    fn new(size: u32) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(size as usize)),
            size,
            queued: Arc::default(),
        }
    }
}

/// How many tasks of the bundles a node holds wait for a slot of a role: while any do, the
/// role's pull gives the slots it gets to them rather than take more work from the stream
/// (a node would else hold bundle after bundle whose tasks wait, while other nodes idle).
#[derive(Debug, Default)]
pub(super) struct Queued {
    count: AtomicUsize,
    emptied: Notify,
}

/// One task counted in its role's [`Queued`] until dropped (it has its slot, or will not
/// run here): a delivery dropped midway counts none it held.
#[derive(Debug)]
pub(super) struct InQueue(Arc<Queued>);

impl Drop for InQueue {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.emptied.notify_waiters();
        }
    }
}

impl Queued {
    /// Counts one more task waiting, until the returned guard is dropped.
    pub(super) fn enter(self: &Arc<Self>) -> InQueue {
        self.count.fetch_add(1, Ordering::AcqRel);
        InQueue(self.clone())
    }

    pub(super) fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Returns once none waits.
    pub(super) async fn emptied(&self) {
        loop {
            let notified = self.emptied.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if !self.any() {
                return;
            }
            notified.await;
        }
    }
}

/// A slot of the role's and one of the node's, held while a delivery runs.
pub(super) type Permit = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// The node's slots and each of its consumers'.
#[derive(Debug)]
pub(super) struct Slots {
    node: Slot,
    /// By role, as the node's consumers are (`None`: tasks any agent may run). Taken in
    /// this order, then the node's.
    roles: Vec<(Option<String>, Slot)>,
    /// A delivery waits for its slots ([`Slots::widen`]): others that cannot have theirs at
    /// once go back to the stream rather than wait too.
    waiting: AtomicBool,
}

/// The one delivery of a node waiting for its slots; another may once it is dropped.
#[derive(Debug)]
pub(super) struct Waiting<'a>(&'a AtomicBool);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What a delivery holds, let go when dropped: the slots it was taken with, or more for a
/// vote or a team.
#[derive(Debug)]
pub(super) struct Held {
    _permits: Vec<OwnedSemaphorePermit>,
}

impl Held {
    pub(super) fn one((role, node): Permit) -> Self {
        Self {
            _permits: vec![role, node],
        }
    }

    /// A spread vote's place for counting (`spread::MAX_COUNTING` a node).
    pub(super) fn counting(place: OwnedSemaphorePermit) -> Self {
        Self {
            _permits: vec![place],
        }
    }
}

/// How many slots of each role (indices into [`Slots`]' roles, ascending) and of the
/// node's a delivery takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Needs {
    roles: Vec<(usize, u32)>,
    node: u32,
}

impl Slots {
    /// `node` slots of the node's own, and `roles` with each one's number, in the order
    /// they are to be taken.
    pub(super) fn new(node: u32, roles: impl IntoIterator<Item = (Option<String>, u32)>) -> Self {
        Self {
            node: Slot::new(node),
            roles: roles.into_iter().map(|(r, n)| (r, Slot::new(n))).collect(),
            waiting: AtomicBool::new(false),
        }
    }

    /// The right to wait for slots, if no other delivery of the node holds it.
    pub(super) fn wait_turn(&self) -> Option<Waiting<'_>> {
        self.waiting
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then_some(Waiting(&self.waiting))
    }

    pub(super) fn node(&self) -> &Slot {
        &self.node
    }

    pub(super) fn role(&self, role: Option<&str>) -> Option<&Slot> {
        self.roles
            .iter()
            .find(|(r, _)| r.as_deref() == role)
            .map(|(_, s)| s)
    }

    /// The role's slots whose semaphore is `semaphore`.
    pub(super) fn of_role(&self, semaphore: &Arc<Semaphore>) -> Option<&Slot> {
        self.roles
            .iter()
            .map(|(_, s)| s)
            .find(|s| Arc::ptr_eq(&s.semaphore, semaphore))
    }

    /// Every slot: the node's, then each role's.
    pub(super) fn all(&self) -> impl Iterator<Item = &Slot> {
        std::iter::once(&self.node).chain(self.roles.iter().map(|(_, s)| s))
    }

    /// What a delivery of a task of `role` worked by several agents takes: one slot for each
    /// voter of the task's role, or for each member of a team of the member's role; as many
    /// of the node's. Each at most what there is, so it can always be had. `None` when that
    /// is the one of each it was taken with, or the node serves none of their roles.
    pub(super) fn needs(&self, role: Option<&str>, together: &Together) -> Option<Needs> {
        let index = |role: Option<&str>| self.roles.iter().position(|(r, _)| r.as_deref() == role);
        let mut roles: Vec<(usize, u32)> = Vec::new();
        let mut add = |role: Option<&str>, n: u32| {
            // A role this node does not serve: the vote or team cannot be seated here, and
            // says so when it tries.
            let Some(i) = index(role) else { return };
            match roles.iter_mut().find(|(j, _)| *j == i) {
                Some((_, m)) => *m = m.saturating_add(n),
                None => roles.push((i, n)),
            }
        };
        match together {
            Together::Vote(decide) => add(role, decide.voters),
            Together::Team(team) => {
                for r in &team.roles {
                    add(r.requirement.role.as_deref(), r.count);
                }
            }
        }
        roles.sort_unstable();
        for (i, n) in &mut roles {
            *n = (*n).min(self.roles[*i].1.size);
        }
        let node = roles
            .iter()
            .fold(0u32, |sum, (_, n)| sum.saturating_add(*n))
            .min(self.node.size);
        let taken = index(role).map(|i| vec![(i, 1)]);
        let same = node == 1 && Some(&roles) == taken.as_ref();
        (!roles.is_empty() && !same).then_some(Needs { roles, node })
    }

    /// Takes what `needs` says if it is free now, counting the slots of `held` (the one of
    /// its role and the node's a delivery was taken with) among them; else hands `held`
    /// back untouched.
    pub(super) fn try_widen(&self, held: Permit, needs: &Needs) -> Result<Held, Permit> {
        let (mut role, mut node) = held;
        // Taken apart from `held` until all are had: those had are let go on a miss.
        let (mut more_of_role, mut more) = (None, Vec::with_capacity(needs.roles.len() + 1));
        let mut role_counted = false;
        for &(i, n) in &needs.roles {
            let slot = &self.roles[i].1;
            let own = Arc::ptr_eq(role.semaphore(), &slot.semaphore);
            role_counted |= own;
            let want = n - u32::from(own);
            if want == 0 {
                continue;
            }
            match slot.semaphore.clone().try_acquire_many_owned(want) {
                Ok(permit) if own => more_of_role = Some(permit),
                Ok(permit) => more.push(permit),
                Err(_) => return Err((role, node)),
            }
        }
        if needs.node > 1 {
            match self
                .node
                .semaphore
                .clone()
                .try_acquire_many_owned(needs.node - 1)
            {
                Ok(permit) => node.merge(permit),
                Err(_) => return Err((role, node)),
            }
        }
        if let Some(permit) = more_of_role {
            role.merge(permit);
        }
        // A team none of whose members holds the task's own role lets that slot go.
        if role_counted {
            more.push(role);
        }
        more.push(node);
        Ok(Held { _permits: more })
    }

    /// Lets go of `held` and takes what `needs` says, waiting for it: each role's slots in
    /// order, then the node's, as every pull takes one of its role's and then one of the
    /// node's. Taken in that one order, and each semaphore serving its waiters first come
    /// first served, no two deliveries can each hold slots the other waits for. `None` if
    /// the node's slots were closed.
    pub(super) async fn widen(&self, held: Held, needs: &Needs) -> Option<Held> {
        drop(held);
        let mut permits = Vec::with_capacity(needs.roles.len() + 1);
        for &(i, n) in &needs.roles {
            let slot = &self.roles[i].1;
            permits.push(slot.semaphore.clone().acquire_many_owned(n).await.ok()?);
        }
        permits.push(
            self.node
                .semaphore
                .clone()
                .acquire_many_owned(needs.node)
                .await
                .ok()?,
        );
        Some(Held { _permits: permits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Decide;
    use colony_core::{decision::DecisionOptions, task::Requirement};
    use colony_runtime::team::{Role, Step, Team};

    fn slots() -> Slots {
        Slots::new(
            10,
            [
                (Some("coder".into()), 4),
                (Some("voter".into()), 6),
                (None, 8),
            ],
        )
    }

    fn vote(voters: u32) -> Together {
        Together::Vote(Decide {
            role_weights: Default::default(),
            spread: false,
            voters,
            options: DecisionOptions::default(),
            reputation: false,
        })
    }

    fn team(roles: &[(Option<&str>, u32)]) -> Together {
        Together::Team(Box::new(Team {
            roles: roles
                .iter()
                .map(|(role, count)| Role {
                    name: role.unwrap_or("any").into(),
                    requirement: Requirement {
                        role: role.map(Arc::from),
                        ..Requirement::default()
                    },
                    count: *count,
                })
                .collect(),
            steps: vec![Step {
                id: "s".into(),
                role: 0,
                each: false,
                input: None,
            }],
            reassignments: 0,
            delegation: 0,
            spread: false,
        }))
    }

    #[test]
    fn a_vote_takes_a_slot_for_each_voter_of_its_role_and_as_many_of_the_nodes() {
        let s = slots();
        assert_eq!(
            s.needs(Some("voter"), &vote(3)),
            Some(Needs {
                roles: vec![(1, 3)],
                node: 3
            })
        );
        // No more than there are: a vote of 9 among 6 voters' slots waits for all 6.
        assert_eq!(
            s.needs(Some("voter"), &vote(9)),
            Some(Needs {
                roles: vec![(1, 6)],
                node: 6
            })
        );
        assert_eq!(
            s.needs(None, &vote(12)),
            Some(Needs {
                roles: vec![(2, 8)],
                node: 8
            })
        );
        assert_eq!(s.needs(Some("voter"), &vote(1)), None, "one, as a task");
        assert_eq!(
            s.needs(Some("tester"), &vote(3)),
            None,
            "a role not served here"
        );
    }

    #[test]
    fn a_team_takes_a_slot_for_each_member_of_the_members_roles_in_order() {
        let s = slots();
        let t = team(&[(Some("voter"), 2), (Some("coder"), 3), (Some("voter"), 1)]);
        assert_eq!(
            s.needs(Some("lead"), &t),
            Some(Needs {
                roles: vec![(0, 3), (1, 3)],
                node: 6
            })
        );
        // One member: its role's slot in place of the task's, unless they are the same.
        let one = team(&[(Some("coder"), 1)]);
        assert_eq!(
            s.needs(Some("voter"), &one),
            Some(Needs {
                roles: vec![(0, 1)],
                node: 1
            })
        );
        assert_eq!(s.needs(Some("coder"), &one), None);
        assert_eq!(s.needs(None, &team(&[(Some("tester"), 2)])), None);
        // The node's own slots bound the sum.
        let t = team(&[(Some("voter"), 6), (Some("coder"), 4), (None, 8)]);
        assert_eq!(
            s.needs(None, &t),
            Some(Needs {
                roles: vec![(0, 4), (1, 6), (2, 8)],
                node: 10
            })
        );
    }

    /// One slot of `role`'s and one of the node's, as a pull takes them.
    fn taken(s: &Slots, role: &str) -> Permit {
        let role = s.role(Some(role)).unwrap().semaphore.clone();
        let node = s.node().semaphore.clone();
        (
            role.try_acquire_owned().unwrap(),
            node.try_acquire_owned().unwrap(),
        )
    }

    #[test]
    fn slots_free_now_are_taken_at_once_counting_those_held_or_none_are() {
        let s = slots();
        let free = |role: &str| {
            (
                s.role(Some(role)).unwrap().semaphore.available_permits(),
                s.node().semaphore.available_permits(),
            )
        };
        let needs = s.needs(Some("voter"), &vote(3)).unwrap();
        let held = s.try_widen(taken(&s, "voter"), &needs).unwrap();
        assert_eq!(free("voter"), (3, 7), "three of each in all");
        // Three voters' slots left: a vote of four cannot have them, and keeps its one.
        let needs = s.needs(Some("voter"), &vote(4)).unwrap();
        let (role, node) = s.try_widen(taken(&s, "voter"), &needs).unwrap_err();
        assert_eq!((role.num_permits(), node.num_permits()), (1, 1));
        assert_eq!(free("voter"), (2, 6), "nothing else taken");
        drop((role, node, held));
        assert_eq!(free("voter"), (6, 10));
        // A team of voters taken with a coder's slot lets that one go.
        let t = team(&[(Some("voter"), 2)]);
        let needs = s.needs(Some("coder"), &t).unwrap();
        let held = s.try_widen(taken(&s, "coder"), &needs).unwrap();
        assert_eq!((free("coder").0, free("voter")), (4, (4, 8)));
        drop(held);
        assert_eq!(free("voter"), (6, 10));
    }

    #[test]
    fn one_delivery_of_a_node_waits_for_slots_at_a_time() {
        let s = slots();
        let turn = s.wait_turn().expect("the first");
        assert!(s.wait_turn().is_none(), "a second goes back to the stream");
        drop(turn);
        assert!(s.wait_turn().is_some(), "once the first is done");
    }

    #[tokio::test]
    async fn a_role_s_queue_empties_when_its_last_waiting_task_lets_go() {
        let queued = Arc::new(Queued::default());
        assert!(!queued.any());
        let (a, b) = (queued.enter(), queued.enter());
        assert!(queued.any());
        let mut emptied = std::pin::pin!(queued.emptied());
        assert!(futures::poll!(emptied.as_mut()).is_pending());
        drop(a);
        assert!(futures::poll!(emptied.as_mut()).is_pending());
        // The waiter registered before the last one left is woken by it.
        drop(b);
        assert!(futures::poll!(emptied.as_mut()).is_ready());
        assert!(!queued.any());
    }

    #[tokio::test]
    async fn a_widened_delivery_holds_its_slots_until_it_is_dropped() {
        let s = slots();
        let voter = s.role(Some("voter")).unwrap().semaphore.clone();
        let node = s.node().semaphore.clone();
        let one = (
            voter.clone().try_acquire_owned().unwrap(),
            node.clone().try_acquire_owned().unwrap(),
        );
        let needs = s.needs(Some("voter"), &vote(4)).unwrap();
        let held = s.widen(Held::one(one), &needs).await.unwrap();
        assert_eq!(
            (voter.available_permits(), node.available_permits()),
            (2, 6)
        );
        // A second vote of 4 waits for the first's slots, holding none of the node's.
        let mut second = Box::pin(s.widen(
            Held {
                _permits: Vec::new(),
            },
            &needs,
        ));
        assert!(futures::poll!(second.as_mut()).is_pending());
        assert_eq!(node.available_permits(), 6);
        // The first vote's pull waits behind it for a voter's slot.
        assert!(voter.clone().try_acquire_owned().is_err());
        drop(held);
        let second = second.await.unwrap();
        assert_eq!(
            (voter.available_permits(), node.available_permits()),
            (2, 6)
        );
        drop(second);
        assert_eq!(
            (voter.available_permits(), node.available_permits()),
            (6, 10)
        );
    }
}
