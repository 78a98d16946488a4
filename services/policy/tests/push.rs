//! WatchUpdateHints push behaviour on paused tokio time.

mod support;

use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use upshift_common::clock::ScaledClock;
use upshift_policy::store::MemoryStore;
use upshift_proto::policy::v1 as pb;
use upshift_proto::policy::v1::watch_update_hints_response::Event;

use support::*;

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn streams_get_their_hint_exactly_when_the_throttle_opens() {
    let clock = ScaledClock::shared(at(500.0), 1.0);
    let svc = start(
        &config(HOUR, 10 * HOUR),
        MemoryStore::shared(),
        clock.clone(),
        CancellationToken::new(),
    );
    svc.publish(key(), 1, rollout_graph());
    let mut streams = Vec::new();
    for w in [0.1, 0.5, 0.9] {
        let mut s = svc
            .hub
            .subscribe(identity("p1.0", Some(w), "n"), String::new());
        let h = hint(next_event(&mut s).await.unwrap().0);
        assert_eq!(no_update(&h), pb::NoUpdateReason::Throttled);
        streams.push((w, s));
    }
    assert_eq!(svc.hub.open_streams(), 3);
    for (w, s) in &mut streams {
        let h = hint(next_event(s).await.unwrap().0);
        let opens = 1000.0 + *w * 6000.0;
        let now = secs(clock.now());
        assert_eq!(target_of(&h), Some("2.0"));
        assert!(
            now >= opens && now < opens + 0.01,
            "w={w}: pushed at {now}, opens at {opens}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn pause_stops_new_eligibility_and_resume_continues() {
    let clock = ScaledClock::shared(at(500.0), 1.0);
    let svc = start(
        &config(HOUR, 10 * HOUR),
        MemoryStore::shared(),
        clock.clone(),
        CancellationToken::new(),
    );
    svc.publish(key(), 1, rollout_graph());
    let mut s = svc
        .hub
        .subscribe(identity("p1.0", Some(0.5), "n"), String::new());
    assert_eq!(
        no_update(&hint(next_event(&mut s).await.unwrap().0)),
        pb::NoUpdateReason::Throttled
    );
    tokio::time::sleep_until(clock.deadline_for(at(3000.0))).await;
    svc.control
        .pause("stable", "2.0", false, "bad canary", "ops")
        .await
        .unwrap();
    let h = hint(next_event(&mut s).await.unwrap().0);
    assert_eq!(no_update(&h), pb::NoUpdateReason::Paused);
    // Nothing opens while paused, even past the original instant (4000).
    let waited = tokio::time::timeout(Duration::from_secs(3000), next_event(&mut s)).await;
    assert!(waited.is_err(), "no push while paused: {waited:?}");
    assert!(secs(clock.now()) >= 6000.0);
    // Resume at 6000 after 3000 s paused: opens at 4000 + 3000 = 7000.
    svc.control
        .resume("stable", "2.0", "fixed", "ops")
        .await
        .unwrap();
    let h = hint(next_event(&mut s).await.unwrap().0);
    assert_eq!(no_update(&h), pb::NoUpdateReason::Throttled);
    let h = hint(next_event(&mut s).await.unwrap().0);
    assert_eq!(target_of(&h), Some("2.0"));
    let now = secs(clock.now());
    assert!((7000.0..7000.01).contains(&now), "opened at {now}");
}

#[tokio::test(start_paused = true)]
async fn a_hold_keeps_eligible_nodes_and_a_withdrawal_reaches_them() {
    let clock = ScaledClock::shared(at(3000.0), 1.0);
    let svc = start(
        &config(Duration::from_secs(60), 10 * HOUR),
        MemoryStore::shared(),
        clock.clone(),
        CancellationToken::new(),
    );
    svc.publish(key(), 1, rollout_graph());
    // The throttle is 1/3 at 3000: 0.2 has the release, 0.5 waits for 4000.
    let mut early = svc
        .hub
        .subscribe(identity("p1.0", Some(0.2), "early"), String::new());
    let mut late = svc
        .hub
        .subscribe(identity("p1.0", Some(0.5), "late"), String::new());
    assert_eq!(
        target_of(&hint(next_event(&mut early).await.unwrap().0)),
        Some("2.0")
    );
    assert_eq!(
        no_update(&hint(next_event(&mut late).await.unwrap().0)),
        pb::NoUpdateReason::Throttled
    );
    svc.control
        .pause("stable", "2.0", false, "hold", "ops")
        .await
        .unwrap();
    assert_eq!(
        no_update(&hint(next_event(&mut late).await.unwrap().0)),
        pb::NoUpdateReason::Paused
    );
    let quiet = tokio::time::timeout(Duration::from_secs(60), next_event(&mut early)).await;
    assert!(
        quiet.is_err(),
        "a hold changes nothing for an eligible node: {quiet:?}"
    );
    svc.control
        .pause("stable", "2.0", true, "crashes", "ops")
        .await
        .unwrap();
    let h = hint(next_event(&mut early).await.unwrap().0);
    assert_eq!(no_update(&h), pb::NoUpdateReason::Paused);
    assert_eq!(
        svc.control
            .current()
            .rollout("stable", "2.0")
            .map(|r| r.withdrawn),
        Some(true)
    );
}

#[tokio::test(start_paused = true)]
async fn a_graph_change_reaches_every_stream_once() {
    let clock = ScaledClock::shared(at(9000.0), 1.0);
    let svc = start(
        &config(Duration::from_secs(60), 10 * HOUR),
        MemoryStore::shared(),
        clock,
        CancellationToken::new(),
    );
    svc.publish(key(), 1, rollout_graph());
    let mut streams = Vec::new();
    for i in 0..200 {
        let mut s = svc
            .hub
            .subscribe(identity("p2.0", None, &format!("node-{i}")), String::new());
        assert_eq!(
            no_update(&hint(next_event(&mut s).await.unwrap().0)),
            pb::NoUpdateReason::UpToDate
        );
        streams.push(s);
    }
    // A revision that changes nobody's answer pushes nothing.
    svc.publish(key(), 2, rollout_graph());
    svc.publish(key(), 3, grown_graph());
    for s in &mut streams {
        let h = hint(next_event(s).await.unwrap().0);
        assert_eq!(target_of(&h), Some("3.0"));
        assert_eq!(h.graph_revision, 3);
    }
    // Then only keepalives for a while.
    for s in &mut streams {
        for _ in 0..3 {
            let msg = s.next().await.unwrap().unwrap();
            assert!(matches!(msg.event, Some(Event::Keepalive(_))), "{msg:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn reconnect_with_the_token_gets_no_duplicate() {
    let clock = ScaledClock::shared(at(9000.0), 1.0);
    let svc = start(
        &config(Duration::from_secs(30), 10 * HOUR),
        MemoryStore::shared(),
        clock,
        CancellationToken::new(),
    );
    svc.publish(key(), 1, rollout_graph());
    let mut s = svc
        .hub
        .subscribe(identity("p1.0", None, "n"), String::new());
    let (e, token) = next_event(&mut s).await.unwrap();
    assert_eq!(target_of(&hint(e)), Some("2.0"));
    drop(s);
    assert_eq!(svc.hub.open_streams(), 0);
    let mut s = svc
        .hub
        .subscribe(identity("p1.0", None, "n"), token.clone());
    let first = s.next().await.unwrap().unwrap();
    assert!(
        matches!(first.event, Some(Event::Keepalive(_))),
        "{first:?}"
    );
    assert_eq!(first.resume_token, token);
    let mut s = svc
        .hub
        .subscribe(identity("p1.0", None, "n"), "stale".into());
    assert!(matches!(
        s.next().await.unwrap().unwrap().event,
        Some(Event::Hint(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn max_age_shutdown_and_overload_send_reconnect() {
    let clock = ScaledClock::shared(at(9000.0), 1.0);
    let shutdown = CancellationToken::new();
    let mut c = config(Duration::from_secs(10), Duration::from_secs(60));
    c.max_streams = Some(2);
    let svc = start(&c, MemoryStore::shared(), clock, shutdown.clone());
    svc.publish(key(), 1, rollout_graph());
    let started = tokio::time::Instant::now();
    let mut aged = svc
        .hub
        .subscribe(identity("p1.0", None, "a"), String::new());
    next_event(&mut aged).await.unwrap();
    let mut other = svc
        .hub
        .subscribe(identity("p1.0", None, "b"), String::new());
    next_event(&mut other).await.unwrap();
    let mut shed = svc
        .hub
        .subscribe(identity("p1.0", None, "c"), String::new());
    let Some((Event::Reconnect(r), _)) = next_event(&mut shed).await else {
        panic!("expected overload")
    };
    assert_eq!(r.reason, "overload");
    assert!(shed.next().await.is_none());
    let Some((Event::Reconnect(r), _)) = next_event(&mut aged).await else {
        panic!("expected max-age")
    };
    assert_eq!(r.reason, "max-age");
    let age = started.elapsed();
    assert!(
        age >= Duration::from_secs(60) && age <= Duration::from_secs(70),
        "{age:?}"
    );
    assert!(r.retry_after.is_some());
    assert!(aged.next().await.is_none());
    drop(aged);
    shutdown.cancel();
    let mut got = None;
    while let Some((e, _)) = next_event(&mut other).await {
        got = Some(e);
    }
    let Some(Event::Reconnect(r)) = got else {
        panic!("expected shutdown")
    };
    assert_eq!(r.reason, "shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_freeze_and_unfreeze_reach_open_streams_once() {
    let clock = ScaledClock::shared(at(9000.0), 1.0);
    let svc = start(
        &config(Duration::from_secs(60), 10 * HOUR),
        MemoryStore::shared(),
        clock,
        CancellationToken::new(),
    );
    svc.publish(key(), 1, rollout_graph());
    let mut streams = Vec::new();
    for i in 0..20 {
        let mut s = svc
            .hub
            .subscribe(identity("p1.0", None, &format!("f{i}")), String::new());
        assert_eq!(
            target_of(&hint(next_event(&mut s).await.unwrap().0)),
            Some("2.0")
        );
        streams.push(s);
    }
    svc.control
        .freeze("stable", "incident", "ops")
        .await
        .unwrap();
    for s in &mut streams {
        let h = hint(next_event(s).await.unwrap().0);
        assert_eq!(no_update(&h), pb::NoUpdateReason::Frozen);
        let pb::update_hint::Decision::NoUpdate(n) = h.decision.unwrap() else {
            unreachable!()
        };
        assert_eq!(n.detail, "incident");
    }
    // Freezing again changes nothing: no second push.
    svc.control.freeze("stable", "again", "ops").await.unwrap();
    for s in &mut streams {
        let msg = s.next().await.unwrap().unwrap();
        assert!(matches!(msg.event, Some(Event::Keepalive(_))), "{msg:?}");
    }
    svc.control.unfreeze("stable", "over", "ops").await.unwrap();
    for s in &mut streams {
        assert_eq!(
            target_of(&hint(next_event(s).await.unwrap().0)),
            Some("2.0")
        );
    }
}
