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
use upshift_common::grpc::{duration, timestamp};
use upshift_proto::policy::v1 as pb;

use crate::decide::{Decided, Decider, Memo, Token, unknown_scope, wariness};
use crate::metrics::PolicyMetrics;
use crate::overrides::Overrides;
use crate::state::{PolicyState, ScopeKey, ScopeView};

/// One message a subscriber's channel carries: a decision shared by every
/// node of its class, plus the node's own fields.
#[derive(Debug, Clone)]
struct Pushed {
    decision: Arc<pb::update_hint::Decision>,
    token: Token,
    wariness: f64,
    revision: u64,
    decided_at: SystemTime,
    /// The schedule instant that caused it, for push lag.
    scheduled: Option<SystemTime>,
}

impl Pushed {
    fn hint(&self) -> pb::UpdateHint {
        pb::UpdateHint {
            graph_revision: self.revision,
            decision: Some((*self.decision).clone()),
            wariness: self.wariness,
            decided_at: Some(timestamp(self.decided_at)),
        }
    }
}

/// A scope's memo, valid while its view and the overrides stay the same.
#[derive(Debug)]
struct MemoEntry {
    view: Arc<ScopeView>,
    overrides: Arc<Overrides>,
    memo: Memo,
}

/// Memos by scope, shared by subscribes and re-evaluations so a fleet of
/// nodes in one class shares one decision.
#[derive(Debug, Default)]
struct Memos(HashMap<ScopeKey, MemoEntry>);

/// Most scopes whose memos are kept (scopes that left the graph go first
/// when a reset drops everything).
const MAX_MEMOS: usize = 64;

impl Memos {
    fn get(&mut self, view: &Arc<ScopeView>, overrides: &Arc<Overrides>) -> &mut Memo {
        let fresh =
            |e: &MemoEntry| Arc::ptr_eq(&e.view, view) && Arc::ptr_eq(&e.overrides, overrides);
        if self.0.get(&view.key).is_none_or(|e| !fresh(e)) {
            if self.0.len() >= MAX_MEMOS {
                self.0.clear();
            }
            self.0.insert(
                view.key.clone(),
                MemoEntry {
                    view: view.clone(),
                    overrides: overrides.clone(),
                    memo: Memo::default(),
                },
            );
        }
        &mut self.0.get_mut(&view.key).expect("inserted above").memo
    }
}

/// Decides for a batch of subscribers at one instant.
struct Batch<'a> {
    now: SystemTime,
    overrides: &'a Arc<Overrides>,
    memos: &'a mut Memos,
    deciders: Vec<(&'a ScopeView, Decider<'a>)>,
}

impl<'a> Batch<'a> {
    fn new(overrides: &'a Arc<Overrides>, memos: &'a mut Memos, now: SystemTime) -> Self {
        Self {
            now,
            overrides,
            memos,
            deciders: Vec::new(),
        }
    }

    /// The message for `id` of wariness `w` in `view`.
    fn push(
        &mut self,
        view: Option<&'a Arc<ScopeView>>,
        id: &pb::NodeIdentity,
        w: f64,
        scheduled: Option<SystemTime>,
    ) -> (Pushed, Option<SystemTime>) {
        let d = match view {
            None => unknown_scope(w),
            Some(view) => {
                let pos = match self
                    .deciders
                    .iter()
                    .position(|(v, _)| std::ptr::eq(*v, &**view))
                {
                    Some(p) => p,
                    None => {
                        let d = Decider::new(view, self.overrides, self.now);
                        self.deciders.push((view, d));
                        self.deciders.len() - 1
                    }
                };
                let memo = self.memos.get(view, self.overrides);
                self.deciders[pos].1.decide(memo, id, w)
            }
        };
        let Decided {
            decision,
            token,
            next,
        } = d;
        let pushed = Pushed {
            decision,
            token,
            wariness: w,
            revision: view.map_or(0, |v| v.revision),
            decided_at: self.now,
            scheduled,
        };
        (pushed, next)
    }
}

#[derive(Debug)]
struct Sub {
    identity: Arc<pb::NodeIdentity>,
    key: ScopeKey,
    wariness: f64,
    /// Connection the stream came over (0 = unknown).
    conn: u64,
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
    /// Taken after `reg` when both are held.
    memos: Mutex<Memos>,
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
            memos: Mutex::new(Memos::default()),
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
        self.subscribe_on(identity, resume, 0)
    }

    /// [`Hub::subscribe`] for a stream of connection `conn`: changes wake
    /// the streams of one connection together.
    pub fn subscribe_on(
        &self,
        identity: pb::NodeIdentity,
        resume: String,
        conn: u64,
    ) -> HintStream {
        let sh = &self.shared;
        let mut reg = sh.reg.lock().unwrap();
        let resume = Token::from_hex(&resume);
        if sh.settings.max_streams.is_some_and(|m| reg.subs.len() >= m) {
            drop(reg);
            return Box::pin(futures::stream::iter([Ok(reconnect("overload", resume))]));
        }
        let key = scope_of(&identity);
        let w = wariness(identity.rollout_wariness, &identity.node_uuid);
        let state = sh.state.borrow().clone();
        let overrides = sh.overrides.borrow().clone();
        let identity = Arc::new(identity);
        let (pushed, next) = {
            let mut memos = sh.memos.lock().unwrap();
            Batch::new(&overrides, &mut memos, sh.clock.now()).push(
                state.scopes.get(&key),
                &identity,
                w,
                None,
            )
        };
        let (tx, rx) = watch::channel(pushed);
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
                identity,
                key,
                wariness: w,
                conn,
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

fn reconnect(reason: &str, token: Option<Token>) -> pb::WatchUpdateHintsResponse {
    let jitter = Duration::from_millis(rand::random_range(1_000..6_000));
    pb::WatchUpdateHintsResponse {
        event: Some(pb::watch_update_hints_response::Event::Reconnect(
            pb::Reconnect {
                retry_after: Some(duration(jitter)),
                reason: reason.to_owned(),
            },
        )),
        resume_token: token.map(Token::to_hex).unwrap_or_default(),
    }
}

#[derive(Debug)]
struct StreamState {
    id: u64,
    rx: watch::Receiver<Pushed>,
    tick: watch::Receiver<u64>,
    shared: Arc<Shared>,
    last_token: Option<Token>,
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
                    let msg = reconnect("shutdown", self.last_token);
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
                        let msg = reconnect("max-age", self.last_token);
                        return Some((Ok(msg), self));
                    }
                    let msg = pb::WatchUpdateHintsResponse {
                        event: Some(pb::watch_update_hints_response::Event::Keepalive(pb::Keepalive {})),
                        resume_token: self.last_token.map(Token::to_hex).unwrap_or_default(),
                    };
                    return Some((Ok(msg), self));
                }
            }
        }
    }

    fn hint_if_new(&mut self, cur: Pushed) -> Option<pb::WatchUpdateHintsResponse> {
        if self.last_token == Some(cur.token) {
            return None;
        }
        self.last_token = Some(cur.token);
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
            event: Some(pb::watch_update_hints_response::Event::Hint(cur.hint())),
            resume_token: cur.token.to_hex(),
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
                Wake::All => by_connection(&reg, reg.subs.keys().copied()),
                Wake::Scopes(keys) => by_connection(
                    &reg,
                    keys.iter()
                        .filter_map(|k| reg.by_scope.get(k))
                        .flatten()
                        .copied(),
                ),
            }
        };
        reevaluate(&sh, &ids);
    }
}

/// Subscriber ids ordered by connection, so the streams of a connection are
/// woken together and their frames leave in one write.
fn by_connection(reg: &Registry, ids: impl Iterator<Item = u64>) -> Vec<(u64, Option<SystemTime>)> {
    let mut v: Vec<(u64, u64)> = ids
        .filter_map(|id| reg.subs.get(&id).map(|s| (s.conn, id)))
        .collect();
    v.sort_unstable();
    v.into_iter().map(|(_, id)| (id, None)).collect()
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

/// Subscribers re-decided per registry lock: the lock is taken once to copy
/// a batch out and once to apply its results, never while deciding.
const BATCH: usize = 2048;

/// Re-decides for each subscriber in `ids` and pushes only changed hints.
fn reevaluate(sh: &Shared, ids: &[(u64, Option<SystemTime>)]) {
    for batch in ids.chunks(BATCH) {
        // The latest state, so a stream subscribed meanwhile never goes back.
        let state = sh.state.borrow().clone();
        let overrides = sh.overrides.borrow().clone();
        let now = sh.clock.now();
        let subs = snapshot(sh, &state, batch);
        let decided: Vec<_> = {
            let mut memos = sh.memos.lock().unwrap();
            let mut b = Batch::new(&overrides, &mut memos, now);
            subs.iter()
                .map(|s| {
                    let (pushed, next) =
                        b.push(s.view.as_ref(), &s.identity, s.wariness, s.scheduled);
                    // Never schedule in the past: a float edge would spin.
                    (
                        s.id,
                        pushed,
                        next.map(|t| t.max(now + Duration::from_millis(1))),
                    )
                })
                .collect()
        };
        if apply(sh, decided) {
            sh.wake.notify_one();
        }
    }
}

/// What deciding for one subscriber needs, copied out of the registry.
struct Snapshot {
    id: u64,
    scheduled: Option<SystemTime>,
    identity: Arc<pb::NodeIdentity>,
    wariness: f64,
    view: Option<Arc<ScopeView>>,
}

fn snapshot(
    sh: &Shared,
    state: &PolicyState,
    batch: &[(u64, Option<SystemTime>)],
) -> Vec<Snapshot> {
    let reg = sh.reg.lock().unwrap();
    batch
        .iter()
        .filter_map(|&(id, scheduled)| {
            let sub = reg.subs.get(&id)?;
            Some(Snapshot {
                id,
                scheduled,
                identity: sub.identity.clone(),
                wariness: sub.wariness,
                view: state.scopes.get(&sub.key).cloned(),
            })
        })
        .collect()
}

/// Stores each decision: reschedules, and sends when the token changed.
/// Returns whether the scheduler must look at a new earliest instant.
fn apply(sh: &Shared, decided: Vec<(u64, Pushed, Option<SystemTime>)>) -> bool {
    let mut reg = sh.reg.lock().unwrap();
    let mut wake = false;
    for (id, pushed, next) in decided {
        let Some(sub) = reg.subs.get_mut(&id) else {
            continue;
        };
        let old = std::mem::replace(&mut sub.next, next);
        if sub.tx.borrow().token != pushed.token {
            sub.tx.send_replace(pushed);
        }
        if old == next {
            continue;
        }
        if let Some(t) = old {
            reg.schedule.remove(&(t, id));
        }
        if let Some(t) = next {
            wake |= reg.schedule.first().is_none_or(|&(f, _)| t < f);
            reg.schedule.insert((t, id));
        }
    }
    wake
}
