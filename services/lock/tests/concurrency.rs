//! Many clients hammer one group through HTTP and gRPC at once; the recorded
//! history (every version of the group record, from a store watch) never
//! shows more holders than slots.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/mem.rs"]
mod mem;
#[path = "support/stores.rs"]
mod stores;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use harness::Server;
use upshift_common::clock::SystemClock;
use upshift_lock::StoreLayout;
use upshift_proto::lock::v1 as pb;
use upshift_store::{SharedStore, WatchEvent};

const CLIENTS: usize = 40;
const ITERATIONS: usize = 4;

async fn hammer(store: SharedStore, slots: u32) {
    let cfg = format!("request_timeout = \"20s\"\n[groups.hammer]\nslots = {slots}\n");
    let s = Arc::new(Server::start(&cfg, store.clone(), SystemClock::shared()).await);
    let key = upshift_lock::layout::Keys::new(StoreLayout::Upshift, "").group_key("hammer");
    let mut history = store.watch(&key, None).await.unwrap();
    // Client-side count: incremented after a grant answer, decremented before a
    // release request, so it never exceeds the true number of holders.
    let live = Arc::new(AtomicI64::new(0));
    let max = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (s, live, max) = (s.clone(), live.clone(), max.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("client-{c}");
            let http = reqwest::Client::new();
            let mut grpc = s.client().await;
            let body = format!(r#"{{"client_params":{{"id":"{id}","group":"hammer"}}}}"#);
            for _ in 0..ITERATIONS {
                if c % 2 == 0 {
                    loop {
                        let r = http
                            .post(s.url("/v1/pre-reboot"))
                            .header("fleet-lock-protocol", "true")
                            .body(body.clone())
                            .send()
                            .await
                            .unwrap();
                        if r.status() == 200 {
                            break;
                        }
                        assert_eq!(r.status(), 409, "{}", r.text().await.unwrap());
                        tokio::time::sleep(Duration::from_millis(rand_ms())).await;
                    }
                } else {
                    let req = pb::AcquireRequest {
                        id: id.clone(),
                        group: "hammer".into(),
                        ttl: None,
                    };
                    let mut st = grpc.acquire(req).await.unwrap().into_inner();
                    loop {
                        let ev = st.next().await.unwrap().unwrap().event.unwrap();
                        if matches!(ev, pb::acquire_response::Event::Granted(_)) {
                            break;
                        }
                    }
                }
                let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                live.fetch_sub(1, Ordering::SeqCst);
                if c % 2 == 0 {
                    let r = http
                        .post(s.url("/v1/steady-state"))
                        .header("fleet-lock-protocol", "true")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                } else {
                    let req = pb::ReleaseRequest {
                        id: id.clone(),
                        group: "hammer".into(),
                    };
                    assert!(grpc.release(req).await.unwrap().into_inner().released);
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("hammer took too long")
            .unwrap();
    }
    assert!(max.load(Ordering::SeqCst) <= i64::from(slots));

    // Replay every version of the record.
    let mut grants = 0;
    let mut prev: Vec<String> = Vec::new();
    while grants < CLIENTS * ITERATIONS {
        let ev = tokio::time::timeout(Duration::from_secs(5), history.next())
            .await
            .expect("history incomplete")
            .unwrap()
            .unwrap();
        let WatchEvent::Put(kv) = ev else {
            panic!("record deleted")
        };
        let state = StoreLayout::Upshift.decode(&kv.value).unwrap();
        assert!(
            state.holders.len() <= state.total_slots as usize,
            "revision {} has {} holders for {} slots",
            kv.mod_revision,
            state.holders.len(),
            state.total_slots
        );
        let ids: Vec<String> = state.holders.iter().map(|h| h.id.clone()).collect();
        grants += ids.iter().filter(|id| !prev.contains(id)).count();
        prev = ids;
    }
    assert_eq!(grants, CLIENTS * ITERATIONS);
    Arc::try_unwrap(s).ok().unwrap().stop().await;
}

fn rand_ms() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    2 + RandomState::new().hash_one(0u8) % 8
}

async fn hammer_one_slot(open: stores::Opener) {
    hammer(open(), 1).await;
}

async fn hammer_three_slots(open: stores::Opener) {
    hammer(open(), 3).await;
}

stores::on_each_store!(hammer_one_slot_on, hammer_one_slot);
stores::on_each_store!(hammer_three_slots_on, hammer_three_slots);

async fn pre_reboot(s: &Server, id: &str) -> u16 {
    reqwest::Client::new()
        .post(s.url("/v1/pre-reboot"))
        .header("fleet-lock-protocol", "true")
        .body(format!(
            r#"{{"client_params":{{"id":"{id}","group":"pair"}}}}"#
        ))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn steady_state(s: &Server, id: &str) -> u16 {
    reqwest::Client::new()
        .post(s.url("/v1/steady-state"))
        .header("fleet-lock-protocol", "true")
        .body(format!(
            r#"{{"client_params":{{"id":"{id}","group":"pair"}}}}"#
        ))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Each replica remembers its own last write of a record and CASes against
/// it; a change made by the other replica in between must never let a
/// remembered (stale) record decide an answer.
async fn replicas_never_answer_from_a_stale_record(open: stores::Opener) {
    let cfg = "[groups.pair]\nslots = 1\n";
    let a = Server::start(cfg, open(), SystemClock::shared()).await;
    let b = Server::start(cfg, open(), SystemClock::shared()).await;

    // A grants node-1 and remembers the full group; B frees it.
    assert_eq!(pre_reboot(&a, "node-1").await, 200);
    assert_eq!(steady_state(&b, "node-1").await, 200);
    // A's memory says "full, held by node-1": the answer must come from
    // the stored record instead, where the slot is free.
    assert_eq!(pre_reboot(&a, "node-2").await, 200);

    // B's memory says "node-1 released"; A now holds node-2. A recursive
    // steady-state for node-1 is fine, but node-3 must be refused by B.
    assert_eq!(pre_reboot(&b, "node-3").await, 409);
    // A remembers node-2 as holder; B releases it; A's "node-2 again" must
    // write the grant again rather than answer from memory.
    assert_eq!(steady_state(&b, "node-2").await, 200);
    assert_eq!(pre_reboot(&a, "node-2").await, 200);
    assert_eq!(
        pre_reboot(&b, "node-3").await,
        409,
        "node-2 holds the slot again"
    );
}
stores::on_each_store!(stale_memory_on, replicas_never_answer_from_a_stale_record);
