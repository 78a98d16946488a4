use proptest::prelude::*;

use super::*;

fn req(id: &str) -> LockRequest {
    LockRequest {
        id: id.to_string(),
        method: Method::Fleetlock,
        ttl_secs: None,
    }
}

#[derive(Debug, Clone)]
enum Action {
    Lock(u8),
    Unlock(u8),
    ForceRelease(u8),
    SetSlots(u32),
    Pause,
    Resume,
    Expire(u64),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0u8..8).prop_map(Action::Lock),
        3 => (0u8..8).prop_map(Action::Unlock),
        1 => (0u8..8).prop_map(Action::ForceRelease),
        1 => (1u32..5).prop_map(Action::SetSlots),
        1 => Just(Action::Pause),
        1 => Just(Action::Resume),
        1 => (0u64..100).prop_map(Action::Expire),
    ]
}

proptest! {
    #[test]
    fn never_grants_beyond_slots(actions in proptest::collection::vec(action(), 1..200)) {
        let mut s = SemaphoreState::new(2);
        for (now, a) in actions.into_iter().enumerate() {
            let now = now as u64;
            let before = s.clone();
            match a {
                Action::Lock(i) => {
                    let id = format!("n{i}");
                    let held = before.holder(&id).is_some();
                    let r = LockRequest { ttl_secs: (i % 2 == 0).then_some(10), ..req(&id) };
                    match s.lock(&r, now, true) {
                        Ok(Outcome::Changed) => {
                            prop_assert!(!held);
                            prop_assert!(before.holders.len() < before.total_slots as usize);
                            prop_assert!(before.paused.is_none());
                            prop_assert_eq!(s.holders.len(), before.holders.len() + 1);
                        }
                        Ok(Outcome::Unchanged) => {
                            prop_assert!(held);
                            prop_assert_eq!(&s, &before);
                        }
                        Err(_) => prop_assert_eq!(&s, &before),
                    }
                }
                Action::Unlock(i) | Action::ForceRelease(i) => {
                    let id = format!("n{i}");
                    let removed = s.unlock(&id);
                    prop_assert_eq!(removed.is_some(), before.holder(&id).is_some());
                    if removed.is_none() {
                        prop_assert_eq!(&s, &before);
                    }
                }
                Action::SetSlots(n) => {
                    s.set_slots(n);
                    prop_assert_eq!(s.holders.len(), before.holders.len());
                }
                Action::Pause => { s.pause("test"); }
                Action::Resume => { s.resume(); }
                Action::Expire(t) => {
                    let gone = s.expire(t);
                    prop_assert!(gone.iter().all(|h| h.lease.unwrap().expires_at <= t));
                }
            }
            // Holders only exceed slots after a shrink, never because of a grant.
            if s.holders.len() > s.total_slots as usize {
                prop_assert!(s.holders.len() <= before.holders.len());
            }
            let mut ids: Vec<_> = s.holders.iter().map(|h| &h.id).collect();
            ids.sort();
            ids.dedup();
            prop_assert_eq!(ids.len(), s.holders.len());
        }
    }

    #[test]
    fn recursion_is_idempotent(n in 1usize..6, slots in 1u32..4) {
        let mut s = SemaphoreState::new(slots);
        prop_assert_eq!(s.lock(&req("a"), 1, true), Ok(Outcome::Changed));
        let once = s.clone();
        for i in 0..n {
            prop_assert_eq!(s.lock(&req("a"), 2 + i as u64, true), Ok(Outcome::Unchanged));
        }
        prop_assert_eq!(&s, &once);
        prop_assert_eq!(s.holders.len(), 1);
    }
}

#[test]
fn unlock_of_non_holder_is_a_no_op() {
    let mut s = SemaphoreState::new(1);
    s.lock(&req("a"), 1, true).unwrap();
    let before = s.clone();
    assert_eq!(s.unlock("b"), None);
    assert_eq!(s.unlock("A"), None, "ids are case-sensitive");
    assert_eq!(s, before);
}

#[test]
fn shrink_blocks_new_grants_until_holders_fit() {
    let mut s = SemaphoreState::new(3);
    for id in ["a", "b", "c"] {
        s.lock(&req(id), 1, true).unwrap();
    }
    assert_eq!(s.set_slots(1), Outcome::Changed);
    assert_eq!(s.holders.len(), 3, "shrinking never evicts");
    assert_eq!(s.lock(&req("d"), 2, true), Err(Denied::Full));
    s.unlock("a");
    assert_eq!(s.lock(&req("d"), 2, true), Err(Denied::Full));
    s.unlock("b");
    s.unlock("c");
    assert_eq!(s.lock(&req("d"), 2, true), Ok(Outcome::Changed));
}

#[test]
fn pause_window_and_recursion_order() {
    let mut s = SemaphoreState::new(2);
    s.lock(&req("a"), 1, true).unwrap();
    s.pause("incident");
    assert_eq!(s.lock(&req("b"), 2, true), Err(Denied::Paused));
    assert_eq!(s.lock(&req("a"), 2, false), Ok(Outcome::Unchanged));
    assert_eq!(s.resume(), Outcome::Changed);
    assert_eq!(s.resume(), Outcome::Unchanged);
    assert_eq!(s.lock(&req("b"), 2, false), Err(Denied::OutsideWindow));
}

#[test]
fn leases_expire_and_renew() {
    let mut s = SemaphoreState::new(2);
    let leased = LockRequest {
        ttl_secs: Some(10),
        ..req("a")
    };
    s.lock(&leased, 100, true).unwrap();
    s.lock(&req("b"), 100, true).unwrap();
    assert_eq!(s.next_expiry(), Some(110));
    assert_eq!(s.keepalive("a", 105), Ok(115));
    assert_eq!(s.keepalive("b", 105), Err(KeepaliveError::NotLeased));
    assert_eq!(s.keepalive("c", 105), Err(KeepaliveError::NotHeld));
    assert!(s.expire(114).is_empty());
    assert_eq!(s.expire(115).len(), 1);
    assert_eq!(s.holders.len(), 1);
}
