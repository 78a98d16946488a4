//! Push hub for `WatchUpdateHints`: a registry of subscribers per scope, one
//! scheduler task with one timer over a shared schedule of every
//! subscriber's next change, and one shared tick for keepalives and stream
//! age. A stream is a small `unfold` over two watch receivers; it spawns
//! nothing and holds no graph.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::Stream;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use upshift_common::clock::SharedClock;
use upshift_common::grpc::duration;
use upshift_proto::policy::v1 as pb;

use crate::decide::{decide, resume_token, wariness};
use crate::metrics::PolicyMetrics;
use crate::overrides::Overrides;
use crate::state::{PolicyState, ScopeKey};

/// One message a subscriber's channel carries.
#[derive(Debug, Clone)]
struct Pushed {
    hint: Arc<pb::UpdateHint>,
    token: Arc<str>,
    /// The schedule instant that caused it, for push lag.
    scheduled: Option<SystemTime>,
}

#[derive(Debug)]
struct Sub {
    identity: Arc<pb::NodeIdentity>,
    key: ScopeKey,
    wariness: f64,
    tx: watch::Sender<Pushed>,
    next: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct Registry {
    subs: HashMap<u64, Sub>,
    by_scope: HashMap<ScopeKey, HashSet<u64>>,
    schedule: BTreeSet<(SystemTime, u64)>,
    next_id: u64,
}

/// Stream timing settings.
#[derive(Debug, Clone, Copy)]
pub struct HubSettings {
    /// Interval of the shared tick: keepalives are sent on it.
    pub keepalive_interval: Duration,
    /// Streams end with `Reconnect{max-age}` after about this long.
    pub max_stream_age: Duration,
    /// Open streams beyond this are shed with `Reconnect{overload}`.
    pub max_streams: Option<usize>,
}

#[derive(Debug)]
struct Shared {
    reg: Mutex<Registry>,
    wake: Notify,
    tick: watch::Receiver<u64>,
    shutdown: CancellationToken,
    state: watch::Receiver<Arc<PolicyState>>,
    overrides: watch::Receiver<Arc<Overrides>>,
    clock: SharedClock,
    settings: HubSettings,
    metrics: PolicyMetrics,
}

/// The push hub handle.
#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// The per-stream response stream.
pub type HintStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<pb::WatchUpdateHintsResponse, Status>> + Send>>;

/// The scope a node's identity names.
pub fn scope_of(id: &pb::NodeIdentity) -> ScopeKey {
    let scheme = match pb_scheme(id.scheme) {
        upshift_proto::graph::v1::PayloadScheme::Oci => {
            upshift_cincinnati::graph::PayloadScheme::Oci
        }
        _ => upshift_cincinnati::graph::PayloadScheme::Checksum,
    };
    ScopeKey {
        stream: id.stream.clone(),
        basearch: id.basearch.clone(),
        scheme,
    }
}

fn pb_scheme(v: i32) -> upshift_proto::graph::v1::PayloadScheme {
    upshift_proto::graph::v1::PayloadScheme::try_from(v).unwrap_or_default()
}

impl Hub {
    /// Starts the scheduler and tick tasks; they end with `shutdown`.
    pub fn start(
        state: watch::Receiver<Arc<PolicyState>>,
        overrides: watch::Receiver<Arc<Overrides>>,
        clock: SharedClock,
        settings: HubSettings,
        metrics: PolicyMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        let (tick_tx, tick) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            reg: Mutex::new(Registry::default()),
            wake: Notify::new(),
            tick,
            shutdown: shutdown.clone(),
            state,
            overrides,
            clock,
            settings,
            metrics,
        });
        tokio::spawn(tick_task(tick_tx, settings.keepalive_interval, shutdown));
        // The scheduler compares against the state of now, not of its
        // first poll: publishes in between must count as changes.
        let seen = shared.state.borrow().clone();
        tokio::spawn(scheduler(shared.clone(), seen));
        Self { shared }
    }

    /// Number of open streams.
    pub fn open_streams(&self) -> usize {
        self.shared.reg.lock().map(|r| r.subs.len()).unwrap_or(0)
    }

    /// Warinesses of the open streams of `stream`.
    pub fn warinesses(&self, stream: &str) -> Vec<f64> {
        let reg = self.shared.reg.lock().unwrap();
        reg.subs
            .values()
            .filter(|s| s.key.stream == stream)
            .map(|s| s.wariness)
            .collect()
    }

    /// Opens a stream for `identity`; `resume_token` suppresses an initial
    /// hint the client already has.
    pub fn subscribe(&self, identity: pb::NodeIdentity, resume: String) -> HintStream {
        let sh = &self.shared;
        let mut reg = sh.reg.lock().unwrap();
        if sh.settings.max_streams.is_some_and(|m| reg.subs.len() >= m) {
            drop(reg);
            return Box::pin(futures::stream::iter([Ok(reconnect("overload", resume))]));
        }
        let key = scope_of(&identity);
        let w = wariness(identity.rollout_wariness, &identity.node_uuid);
        let now = sh.clock.now();
        let state = sh.state.borrow().clone();
        let overrides = sh.overrides.borrow().clone();
        let (hint, next) = decide(
            &identity,
            state.scopes.get(&key).map(|v| &**v),
            &overrides,
            now,
        );
        let token: Arc<str> = resume_token(&hint).into();
        let (tx, rx) = watch::channel(Pushed {
            hint: Arc::new(hint),
            token,
            scheduled: None,
        });
        let id = reg.next_id;
        reg.next_id += 1;
        reg.by_scope.entry(key.clone()).or_default().insert(id);
        if let Some(t) = next {
            if reg.schedule.first().is_none_or(|&(first, _)| t < first) {
                sh.wake.notify_one();
            }
            reg.schedule.insert((t, id));
        }
        reg.subs.insert(
            id,
            Sub {
                identity: Arc::new(identity),
                key,
                wariness: w,
                tx,
                next,
            },
        );
        drop(reg);
        sh.metrics.open_streams.add(1, &[]);
        let ticks = sh.settings.max_stream_age.as_secs_f64()
            / sh.settings.keepalive_interval.as_secs_f64().max(0.001);
        let ticks = (ticks.ceil() as u64).max(1);
        // Spread reconnections: up to 10% more age, by stream id.
        let max_age_ticks = ticks + id % (ticks / 10 + 1);
        let st = StreamState {
            id,
            rx,
            tick: sh.tick.clone(),
            shared: self.shared.clone(),
            last_token: resume,
            ticks: 0,
            max_age_ticks,
            first: true,
            done: false,
        };
        Box::pin(futures::stream::unfold(st, StreamState::next))
    }

    fn remove(shared: &Shared, id: u64) {
        let mut reg = shared.reg.lock().unwrap();
        if let Some(sub) = reg.subs.remove(&id) {
            if let Some(t) = sub.next {
                reg.schedule.remove(&(t, id));
            }
            if let Some(set) = reg.by_scope.get_mut(&sub.key) {
                set.remove(&id);
                if set.is_empty() {
                    reg.by_scope.remove(&sub.key);
                }
            }
            shared.metrics.open_streams.add(-1, &[]);
        }
    }
}

fn reconnect(reason: &str, token: String) -> pb::WatchUpdateHintsResponse {
    let jitter = Duration::from_millis(rand::random_range(1_000..6_000));
    pb::WatchUpdateHintsResponse {
        event: Some(pb::watch_update_hints_response::Event::Reconnect(
            pb::Reconnect {
                retry_after: Some(duration(jitter)),
                reason: reason.to_owned(),
            },
        )),
        resume_token: token,
    }
}

#[derive(Debug)]
struct StreamState {
    id: u64,
    rx: watch::Receiver<Pushed>,
    tick: watch::Receiver<u64>,
    shared: Arc<Shared>,
    last_token: String,
    ticks: u64,
    max_age_ticks: u64,
    first: bool,
    done: bool,
}

impl Drop for StreamState {
    fn drop(&mut self) {
        Hub::remove(&self.shared, self.id);
    }
}

type Item = Result<pb::WatchUpdateHintsResponse, Status>;

impl StreamState {
    async fn next(mut self) -> Option<(Item, Self)> {
        if self.done {
            return None;
        }
        if std::mem::take(&mut self.first) {
            let cur = self.rx.borrow_and_update().clone();
            if let Some(msg) = self.hint_if_new(cur) {
                return Some((Ok(msg), self));
            }
        }
        loop {
            tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => {
                    self.done = true;
                    let msg = reconnect("shutdown", self.last_token.clone());
                    return Some((Ok(msg), self));
                }
                r = self.rx.changed() => {
                    r.ok()?;
                    let cur = self.rx.borrow_and_update().clone();
                    if let Some(msg) = self.hint_if_new(cur) {
                        return Some((Ok(msg), self));
                    }
                }
                r = self.tick.changed() => {
                    r.ok()?;
                    self.ticks += 1;
                    if self.ticks >= self.max_age_ticks {
                        self.done = true;
                        let msg = reconnect("max-age", self.last_token.clone());
                        return Some((Ok(msg), self));
                    }
                    let msg = pb::WatchUpdateHintsResponse {
                        event: Some(pb::watch_update_hints_response::Event::Keepalive(pb::Keepalive {})),
                        resume_token: self.last_token.clone(),
                    };
                    return Some((Ok(msg), self));
                }
            }
        }
    }

    fn hint_if_new(&mut self, cur: Pushed) -> Option<pb::WatchUpdateHintsResponse> {
        if *cur.token == *self.last_token {
            return None;
        }
        self.last_token = cur.token.to_string();
        let m = &self.shared.metrics;
        m.pushes.add(1, &[]);
        if let Some(t) = cur.scheduled {
            let lag = self
                .shared
                .clock
                .now()
                .duration_since(t)
                .unwrap_or_default();
            m.push_lag.record(lag.as_secs_f64(), &[]);
        }
        Some(pb::WatchUpdateHintsResponse {
            event: Some(pb::watch_update_hints_response::Event::Hint(
                (*cur.hint).clone(),
            )),
            resume_token: self.last_token.clone(),
        })
    }
}

async fn tick_task(tx: watch::Sender<u64>, every: Duration, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => tx.send_modify(|n| *n += 1),
        }
    }
}

/// What to re-evaluate after a wake-up.
enum Wake {
    Due,
    Scopes(Vec<ScopeKey>),
    All,
    Nothing,
}

async fn scheduler(sh: Arc<Shared>, mut seen: Arc<PolicyState>) {
    let mut state = sh.state.clone();
    let mut overrides = sh.overrides.clone();
    loop {
        let first = sh.reg.lock().unwrap().schedule.first().map(|&(t, _)| t);
        let deadline = first.map(|t| sh.clock.deadline_for(t));
        let wake = tokio::select! {
            _ = sh.shutdown.cancelled() => return,
            _ = sh.wake.notified() => Wake::Nothing,
            r = state.changed() => {
                if r.is_err() { return; }
                let new = state.borrow_and_update().clone();
                let changed = changed_scopes(&seen, &new);
                seen = new;
                Wake::Scopes(changed)
            }
            r = overrides.changed() => {
                if r.is_err() { return; }
                overrides.borrow_and_update();
                Wake::All
            }
            _ = sleep_until(deadline) => Wake::Due,
        };
        let ids: Vec<(u64, Option<SystemTime>)> = {
            let mut reg = sh.reg.lock().unwrap();
            match wake {
                Wake::Nothing => continue,
                Wake::Due => {
                    let now = sh.clock.now();
                    let mut due = Vec::new();
                    while let Some(&(t, id)) = reg.schedule.first() {
                        if t > now {
                            break;
                        }
                        reg.schedule.pop_first();
                        if let Some(s) = reg.subs.get_mut(&id) {
                            s.next = None;
                        }
                        due.push((id, Some(t)));
                    }
                    due
                }
                Wake::All => reg.subs.keys().map(|&id| (id, None)).collect(),
                Wake::Scopes(keys) => keys
                    .iter()
                    .filter_map(|k| reg.by_scope.get(k))
                    .flatten()
                    .map(|&id| (id, None))
                    .collect(),
            }
        };
        reevaluate(&sh, &ids);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn changed_scopes(old: &PolicyState, new: &PolicyState) -> Vec<ScopeKey> {
    let mut keys: Vec<ScopeKey> = new
        .scopes
        .iter()
        .filter(|(k, v)| old.scopes.get(*k).is_none_or(|o| !Arc::ptr_eq(o, v)))
        .map(|(k, _)| k.clone())
        .collect();
    keys.extend(
        old.scopes
            .keys()
            .filter(|k| !new.scopes.contains_key(*k))
            .cloned(),
    );
    keys
}

/// Re-decides for each subscriber in `ids` (in chunks, so the registry lock
/// is released between them) and pushes only changed hints.
fn reevaluate(sh: &Shared, ids: &[(u64, Option<SystemTime>)]) {
    for chunk in ids.chunks(1024) {
        // The latest state, so a stream subscribed meanwhile never goes back.
        let state = sh.state.borrow().clone();
        let overrides = sh.overrides.borrow().clone();
        let now = sh.clock.now();
        let mut reg = sh.reg.lock().unwrap();
        let mut wake = false;
        for &(id, scheduled) in chunk {
            let Some(sub) = reg.subs.get_mut(&id) else {
                continue;
            };
            let view = state.scopes.get(&sub.key).map(|v| &**v);
            let (hint, next) = decide(&sub.identity, view, &overrides, now);
            // Never schedule in the past: a float edge would spin.
            let next = next.map(|t| t.max(now + Duration::from_millis(1)));
            let old = std::mem::replace(&mut sub.next, next);
            let token = resume_token(&hint);
            if *sub.tx.borrow().token != *token {
                sub.tx.send_replace(Pushed {
                    hint: Arc::new(hint),
                    token: token.into(),
                    scheduled,
                });
            }
            if let Some(t) = old {
                reg.schedule.remove(&(t, id));
            }
            if let Some(t) = next {
                wake |= reg.schedule.first().is_none_or(|&(f, _)| t < f);
                reg.schedule.insert((t, id));
            }
        }
        drop(reg);
        if wake {
            sh.wake.notify_one();
        }
    }
}
