use super::*;
use crate::tree::tests::planned;
use proptest::prelude::*;

fn need(spec: u8, count: u32) -> Need {
    Need {
        mask: SpecMask::of(spec),
        count,
    }
}

/// Makes `worker` busy: one task routed to its supervisor and started on it.
fn busy(tree: &mut LiveTree, worker: AgentId) {
    tree.enqueue(tree.parent(worker).unwrap());
    tree.start(worker);
}

/// 24 workers under two supervisors of span 12: the first holds 4 of each of specs 0, 1
/// and 2, the second 12 of spec 0.
fn mixed() -> (LiveTree, Vec<AgentId>) {
    let mut t = planned(24, 12, 4);
    let mut ids = t.add_workers(4, 0, 1);
    ids.extend(t.add_workers(4, 1, 1));
    ids.extend(t.add_workers(4, 2, 1));
    ids.extend(t.add_workers(12, 0, 1));
    (t, ids)
}

fn check(tree: &LiveTree, needs: &[Need], f: &Formation) {
    let mut seen = HashSet::new();
    for (role, n) in needs.iter().enumerate() {
        let of_role: Vec<&Member> = f.members.iter().filter(|m| m.role == role).collect();
        assert_eq!(of_role.len() as u32, n.count, "count of role {role}");
        for m in of_role {
            assert!(SpecMask::of(tree.spec(m.agent)).intersects(n.mask));
            assert_eq!(m.pool, tree.spec(m.agent));
            assert!(seen.insert(m.agent), "{} seated twice", m.agent);
        }
    }
    assert_eq!(
        f.together,
        f.members
            .iter()
            .all(|m| tree.parent(m.agent) == Some(f.supervisor))
    );
}

#[test]
fn a_team_of_three_roles_is_kept_under_the_one_supervisor_that_covers_them() {
    let (t, ids) = mixed();
    let needs = [need(0, 1), need(1, 2), need(2, 1)];
    let f = form(&t, &needs, WALK_BOUND).unwrap();
    check(&t, &needs, &f);
    assert!(f.together);
    assert_eq!(f.supervisor, t.parent(ids[0]).unwrap());
}

#[test]
fn the_supervisor_with_room_is_chosen_over_one_whose_workers_are_busy() {
    let (mut t, ids) = mixed();
    // Every spec-0 worker of the first supervisor is busy: a team of spec 0 goes to the second.
    for &w in &ids[..4] {
        busy(&mut t, w);
    }
    let needs = [need(0, 3)];
    let f = form(&t, &needs, WALK_BOUND).unwrap();
    check(&t, &needs, &f);
    assert!(f.together);
    assert_eq!(f.supervisor, t.parent(ids[12]).unwrap());
    assert!(f.members.iter().all(|m| m.agent.0 >= ids[12].0));
}

#[test]
fn roles_no_supervisor_covers_are_spread_nearest_first_and_a_shortfall_is_named() {
    let mut t = planned(36, 12, 4);
    let a = t.add_workers(12, 0, 1);
    let b = t.add_workers(12, 1, 1);
    t.add_workers(12, 2, 1);
    let needs = [need(0, 2), need(1, 2)];
    let f = form(&t, &needs, WALK_BOUND).unwrap();
    check(&t, &needs, &f);
    assert!(!f.together);
    assert!(f.members.iter().any(|m| a.contains(&m.agent)));
    assert!(f.members.iter().any(|m| b.contains(&m.agent)));
    assert_eq!(
        form(&t, &[need(1, 13)], WALK_BOUND),
        Err(Error::Short {
            role: 0,
            needed: 13,
            found: 12
        })
    );
    assert_eq!(
        form(&t, &[need(5, 1)], WALK_BOUND),
        Err(Error::Short {
            role: 0,
            needed: 1,
            found: 0
        })
    );
    assert_eq!(form(&t, &[], WALK_BOUND), Err(Error::Roles(0)));
    assert_eq!(form(&t, &[need(0, 65)], WALK_BOUND), Err(Error::Size(65)));
}

#[test]
fn pools_far_apart_in_a_large_tree_still_form_a_team() {
    // Each pool fills thousands of supervisors: the first walk sees only the first pool.
    let mut t = planned(30_000, 12, 4);
    for spec in 0..3 {
        t.add_workers(10_000, spec, 1);
    }
    let needs = [need(0, 1), need(1, 3), need(2, 1)];
    let f = form(&t, &needs, WALK_BOUND).unwrap();
    check(&t, &needs, &f);
    assert!(!f.together);
    // Those of a role far away are found together, near each other.
    let coders: HashSet<Option<AgentId>> = f
        .members
        .iter()
        .filter(|m| m.role == 1)
        .map(|m| t.parent(m.agent))
        .collect();
    assert_eq!(coders.len(), 1, "{f:?}");
}

#[test]
fn workers_out_of_service_are_seated_only_when_nothing_else_can_take_the_role() {
    let (mut t, ids) = mixed();
    // Spec 1 lives only under the first supervisor: three of its four are down.
    for &w in &ids[4..7] {
        t.set_down(w, true);
    }
    let f = form(&t, &[need(1, 1)], WALK_BOUND).unwrap();
    assert_eq!(f.members[0].agent, ids[7]);
    let f = form(&t, &[need(1, 2)], WALK_BOUND).unwrap();
    assert!(f.members.iter().any(|m| m.agent == ids[7]));
    // Retired workers are never seated.
    for &w in &ids[4..8] {
        t.set_retired(w, true);
    }
    assert!(matches!(
        form(&t, &[need(1, 1)], WALK_BOUND),
        Err(Error::Short { found: 0, .. })
    ));
}

#[test]
fn a_failed_member_is_replaced_by_its_sibling_with_room_and_never_by_a_member() {
    let (mut t, ids) = mixed();
    let sup = t.parent(ids[0]).unwrap();
    let team: HashSet<AgentId> = [ids[0], ids[1]].into();
    let got = replace(&t, ids[0], sup, SpecMask::of(0), &team, WALK_BOUND).unwrap();
    assert_eq!(
        got, ids[2],
        "the sibling of spec 0 with room, not another member"
    );
    // Siblings busy: the nearest with room elsewhere.
    busy(&mut t, ids[2]);
    busy(&mut t, ids[3]);
    let got = replace(&t, ids[0], sup, SpecMask::of(0), &team, WALK_BOUND).unwrap();
    assert_eq!(t.parent(got), t.parent(ids[12]));
    // Nobody else of spec 2 with room: a busy sibling rather than nothing; none at all: None.
    let all2: HashSet<AgentId> = ids[8..12].iter().copied().collect();
    assert_eq!(
        replace(&t, ids[8], sup, SpecMask::of(2), &all2, WALK_BOUND),
        None
    );
}

#[test]
fn a_failed_member_no_longer_in_the_tree_is_replaced_from_the_team_s_supervisor() {
    let (t, ids) = mixed();
    let sup = t.parent(ids[0]).unwrap();
    let team: HashSet<AgentId> = [ids[0]].into();
    // An id past the tree's end (its worker trimmed away), and one that is a manager's now.
    for gone in [AgentId(10_000), sup] {
        let got = replace(&t, gone, sup, SpecMask::of(0), &team, WALK_BOUND).unwrap();
        assert_eq!(t.tier(got), t.worker_tier());
        assert_eq!(t.parent(got), Some(sup));
        assert!(!team.contains(&got));
    }
}

#[test]
fn a_role_only_some_pools_can_take_is_seated_before_a_role_any_can() {
    // Four workers under one supervisor: three of spec 0, one of spec 1 with the least load.
    let mut t = planned(12, 12, 4);
    let ids = t.add_workers(3, 0, 2);
    let one = t.add_worker(1, 2);
    for &w in &ids {
        busy(&mut t, w);
    }
    // `any` can take specs 0 and 1 and comes first; `only` can take spec 1 alone.
    let needs = [
        Need {
            mask: SpecMask(0b11),
            count: 2,
        },
        need(1, 1),
    ];
    let f = form(&t, &needs, WALK_BOUND).unwrap();
    check(&t, &needs, &f);
    assert_eq!(
        f.members[2],
        Member {
            role: 1,
            agent: one,
            pool: 1
        }
    );
    assert!(f.together);
}

#[test]
fn sizes_follow_the_rule_and_bad_scores_are_refused() {
    let s = Sizing {
        per: 3.0,
        min: 2,
        max: 6,
    };
    assert_eq!(s.size(0.0), Ok(2));
    assert_eq!(s.size(7.0), Ok(3));
    assert_eq!(s.size(9.0), Ok(3));
    assert_eq!(s.size(1e30), Ok(6));
    assert!(s.size(f64::NAN).is_err());
    assert!(s.size(-1.0).is_err());
    assert!(s.validate().is_ok());
    assert!(Sizing { per: 0.0, ..s }.validate().is_err());
    assert!(Sizing { min: 7, ..s }.validate().is_err());
    assert!(Sizing { max: 65, ..s }.validate().is_err());
    // Unvalidated bounds never panic: the max wins.
    assert_eq!(Sizing { min: 9, ..s }.size(1.0), Ok(6));
}

#[test]
fn counts_give_the_rest_to_the_one_role_without_a_count() {
    assert_eq!(counts(&[Some(1), None, Some(1)], 5), Ok(vec![1, 3, 1]));
    assert_eq!(counts(&[Some(2), Some(1)], 3), Ok(vec![2, 1]));
    assert!(counts(&[Some(2), Some(1)], 4).is_err());
    assert!(counts(&[Some(2), None], 2).is_err());
    assert!(counts(&[None, None], 4).is_err());
    assert!(counts(&[Some(u32::MAX), Some(u32::MAX), None], 4).is_err());
}

#[test]
fn a_roster_reassigns_until_its_budget_is_spent() {
    let (t, _) = mixed();
    let f = form(&t, &[need(0, 2)], WALK_BOUND).unwrap();
    let mut r = Roster::new(&f, 1);
    let first = r.members()[0].agent;
    assert_eq!(r.failed(AgentId(9_999)), Reassign::Unknown);
    assert_eq!(r.failed(first), Reassign::Replace { index: 0 });
    r.replaced(0, AgentId(500), 0);
    assert_eq!(r.reassigned(), &[(0, first, AgentId(500))]);
    assert_eq!(r.failed(AgentId(500)), Reassign::Exhausted);
}

#[test]
fn delegation_is_refused_past_its_depth_on_a_cycle_and_past_its_asks() {
    let mut d = Delegation::new(2, 4);
    d.step().unwrap();
    d.delegate(&[0], 1).unwrap();
    d.delegate(&[0, 1], 2).unwrap();
    assert_eq!(d.delegate(&[0, 1, 2], 3), Err(Refused::Depth { max: 2 }));
    assert_eq!(d.delegate(&[0, 1], 0), Err(Refused::Cycle { role: 0 }));
    d.step().unwrap();
    assert_eq!(d.step(), Err(Refused::Asks { max: 4 }));
    assert_eq!(
        Delegation::new(0, 9).delegate(&[0], 1),
        Err(Refused::Depth { max: 0 })
    );
}

proptest! {
    /// Whatever the tree's mix of pools, loads and outages, a formed team seats each role's
    /// count of distinct workers that can take it, never a retired one, says truly whether
    /// it is under one supervisor, and is under one whenever a supervisor's workers in
    /// service cover it.
    #[test]
    fn formations_seat_distinct_able_workers_and_keep_together_when_they_can(
        pools in prop::collection::vec((0..4u8, 1..20u32), 1..6),
        states in prop::collection::vec(0..5u8, 0..120),
        needs in prop::collection::vec((0..4u8, 1..4u32), 1..4),
    ) {
        let total: u32 = pools.iter().map(|p| p.1).sum();
        let mut t = planned(total, 6, 2);
        let mut ids = Vec::new();
        for &(spec, n) in &pools {
            ids.extend(t.add_workers(n, spec, 1));
        }
        let mut retired = HashSet::new();
        for (&w, &s) in ids.iter().zip(&states) {
            match s {
                1 => busy(&mut t, w),
                2 => { t.set_down(w, true); }
                3 => { t.set_down(w, true); t.set_retired(w, true); retired.insert(w); }
                _ => {}
            }
        }
        let needs: Vec<Need> = needs.into_iter().map(|(s, c)| need(s, c)).collect();
        // Any supervisor whose in-service workers could cover the team alone (greedy, as
        // roles of distinct specs do not compete).
        let distinct = {
            let mut s: Vec<u64> = needs.iter().map(|n| n.mask.0).collect();
            s.sort_unstable();
            s.dedup();
            s.len() == needs.len()
        };
        let coverable = t.agents_in_tier(t.worker_tier() - 1).into_iter().any(|sup| {
            needs.iter().all(|n| {
                t.children(sup)
                    .filter(|&w| !t.is_down(w) && t.mask(w).intersects(n.mask))
                    .count() as u32 >= n.count
            })
        });
        match form(&t, &needs, WALK_BOUND) {
            Ok(f) => {
                check(&t, &needs, &f);
                prop_assert!(f.members.iter().all(|m| !retired.contains(&m.agent)));
                if distinct && coverable {
                    prop_assert!(f.together);
                }
            }
            Err(Error::Short { role, needed, found }) => {
                prop_assert!(found < needed);
                prop_assert_eq!(needed, needs[role].count);
                // Truly short: too few workers not retired can take the role's specs,
                // counted with the roles before it.
                let able = ids.iter().filter(|w| {
                    !retired.contains(w) && SpecMask::of(t.spec(**w)).intersects(needs[role].mask)
                }).count() as u32;
                let before: u32 = needs[..role].iter().filter(|n| n.mask == needs[role].mask).map(|n| n.count).sum();
                prop_assert!(able < needed + before);
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    /// However members delegate, no chain is longer than the depth plus the step, no role
    /// appears twice on a chain, and the asks never pass their cap.
    #[test]
    fn delegation_always_ends(
        depth in 0..5u32,
        asks in 1..20u32,
        tries in prop::collection::vec((0..6usize, 0..6usize), 0..60),
    ) {
        let mut d = Delegation::new(depth, asks);
        let mut chains: Vec<Vec<usize>> = Vec::new();
        let mut granted = 0u32;
        for (pick, to) in tries {
            if chains.is_empty() || pick == 0 {
                if d.step().is_ok() {
                    granted += 1;
                    chains.push(vec![to]);
                }
                continue;
            }
            let chain = chains[pick % chains.len()].clone();
            if d.delegate(&chain, to).is_ok() {
                granted += 1;
                prop_assert!(chain.len() as u32 <= depth);
                prop_assert!(!chain.contains(&to));
                let mut next = chain;
                next.push(to);
                chains.push(next);
            }
        }
        prop_assert!(granted <= asks);
    }
}
