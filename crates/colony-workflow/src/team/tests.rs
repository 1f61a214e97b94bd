use super::*;

fn plan(size: Size) -> Plan {
    let role = |name: &str| Role {
        name: name.into(),
        requirement: Requirement::default(),
        count: 0,
    };
    Plan {
        roles: vec![(role("lead"), Some(1)), (role("hand"), None)],
        size,
        steps: vec![Step {
            id: "go".into(),
            role: 1,
            each: true,
            input: None,
        }],
        reassign: None,
        delegation: 0,
        spread: false,
    }
}

fn from(field: &str) -> Size {
    Size::From {
        field: field.into(),
        sizing: Sizing {
            per: 2.5,
            min: 2,
            max: 8,
        },
    }
}

fn counts(team: &Team) -> Vec<u32> {
    team.roles.iter().map(|r| r.count).collect()
}

#[test]
fn a_size_from_complexity_reads_the_input_and_gives_the_rest_to_the_open_role() {
    let p = plan(from("complexity"));
    // A workflow's payload: the field in its `input`.
    let team = p
        .team(br#"{"task":"t","input":{"complexity":10}}"#)
        .unwrap();
    assert_eq!(counts(&team), [1, 3]);
    assert_eq!(team.reassignments, 4, "the team's size by default");
    // A bare payload, a number as text, and the bounds.
    assert_eq!(counts(&p.team(br#"{"complexity":" 1 "}"#).unwrap()), [1, 1]);
    assert_eq!(counts(&p.team(br#"{"complexity":1e9}"#).unwrap()), [1, 7]);
    let fixed = plan(Size::Fixed(5)).team(b"{}").unwrap();
    assert_eq!(counts(&fixed), [1, 4]);
}

#[test]
fn a_complexity_that_is_missing_or_no_number_is_refused_with_the_field_named() {
    let p = plan(from("complexity"));
    for (payload, says) in [
        (&br#"{"input":{}}"#[..], "which is missing"),
        (br#"{"input":{"complexity":"lots"}}"#, "which is `\"lots\"`"),
        (br#"{"input":{"complexity":-3}}"#, "at least 0, not -3"),
        (b"not json", "the input is not JSON"),
    ] {
        let e = p.team(payload).unwrap_err();
        assert!(e.contains(says) && e.contains("complexity"), "{e}");
    }
}
