use super::*;
use proptest::prelude::*;

fn spec(start_value: f64, duration: Option<u64>) -> RolloutSpec {
    RolloutSpec {
        start_epoch: 1_000,
        start_value,
        duration_minutes: duration,
    }
}

#[test]
fn throttle_table() {
    // Hand-computed: duration 10 min -> end = 1000 + 600 = 1600.
    let s = spec(0.0, Some(10));
    assert_eq!(s.throttle_at(999.0), 0.0);
    assert_eq!(s.throttle_at(1_000.0), 0.0);
    assert_eq!(s.throttle_at(1_300.0), 0.5);
    assert_eq!(s.throttle_at(1_600.0), 1.0);
    assert_eq!(s.throttle_at(5_000.0), 1.0);
    let s = spec(0.5, Some(10));
    assert_eq!(s.throttle_at(1_300.0), 0.75);
    // Without a duration the throttle stays at start_value.
    let s = spec(0.3, None);
    assert_eq!(s.throttle_at(999.0), 0.0);
    assert_eq!(s.throttle_at(1e12), 0.3);
    // Duration 0 counts as one minute.
    let s = spec(0.0, Some(0));
    assert_eq!(s.throttle_at(1_030.0), 0.5);
}

#[test]
fn eligible_table() {
    let s = spec(0.0, Some(10));
    assert_eq!(s.eligible_at(0.5), Some(1_300.0));
    assert_eq!(s.eligible_at(1.0), Some(1_600.0));
    assert_eq!(spec(0.4, Some(10)).eligible_at(0.3), Some(1_000.0));
    assert_eq!(spec(0.3, None).eligible_at(0.5), None);
    assert_eq!(spec(0.3, None).eligible_at(0.2), Some(1_000.0));
}

#[test]
fn spec_from_metadata() {
    let md: BTreeMap<String, String> = [
        (ROLLOUT, "true"),
        (START_EPOCH, "1591279200"),
        (START_VALUE, "0"),
        (DURATION, "2880"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(
        RolloutSpec::from_metadata(&md).unwrap(),
        Some(RolloutSpec {
            start_epoch: 1_591_279_200,
            start_value: 0.0,
            duration_minutes: Some(2880)
        })
    );
    let mut bad = md.clone();
    bad.insert(START_VALUE.to_owned(), "x".to_owned());
    assert!(RolloutSpec::from_metadata(&bad).is_err());
    assert_eq!(RolloutSpec::from_metadata(&BTreeMap::new()).unwrap(), None);
}

#[test]
fn wariness_vectors() {
    // Computed once with:
    // python3 -c 'import hashlib;h=hashlib.sha256(U.encode()).digest();
    //   print(max(1e-6,min(1.0,int.from_bytes(h[:8],"big")/2**64)))'
    assert_eq!(wariness_from_node_uuid(""), 0.8894159948913374);
    assert_eq!(
        wariness_from_node_uuid("e0f3745b108f471cbd4883c6fbed8cdd"),
        0.12080679896975817
    );
    assert_eq!(wariness_from_node_uuid("node-1"), 0.20933699023747113);
}

#[test]
fn wariness_parsing() {
    assert_eq!(parse_wariness("0.25"), Ok(0.25));
    assert_eq!(parse_wariness("7"), Ok(1.0));
    assert_eq!(parse_wariness("-3"), Ok(0.0));
    assert!(matches!(
        parse_wariness("NaN"),
        Err(WarinessError::NotFinite(_))
    ));
    assert!(matches!(
        parse_wariness("inf"),
        Err(WarinessError::NotFinite(_))
    ));
    assert!(matches!(
        parse_wariness("abc"),
        Err(WarinessError::NotANumber(_))
    ));
    assert!(matches!(
        parse_wariness(""),
        Err(WarinessError::NotANumber(_))
    ));
}

proptest! {
    #[test]
    fn throttle_is_monotone(
        start in -1_000_000i64..2_000_000_000,
        sv in 0.0f64..=1.0,
        d in proptest::option::of(0u64..100_000),
        a in -1e6f64..1e7,
        b in -1e6f64..1e7,
    ) {
        let s = RolloutSpec { start_epoch: start, start_value: sv, duration_minutes: d };
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let (lo, hi) = (start as f64 + lo, start as f64 + hi);
        prop_assert!(s.throttle_at(lo) <= s.throttle_at(hi));
        prop_assert!((0.0..=1.0).contains(&s.throttle_at(lo)));
    }

    #[test]
    fn eligible_is_exact_inverse(
        start in -1_000_000i64..2_000_000_000,
        sv in 0.0f64..=1.0,
        d in proptest::option::of(0u64..100_000),
        w in 0.000_001f64..=1.0,
    ) {
        let s = RolloutSpec { start_epoch: start, start_value: sv, duration_minutes: d };
        match s.eligible_at(w) {
            Some(t) => {
                prop_assert!(s.throttle_at(t) >= w);
                prop_assert!(s.throttle_at(t.next_down()) < w);
            }
            None => prop_assert!(d.is_none() && w > sv),
        }
    }
}
