//! `upshift-agent`: the on-host update agent (see `../shared/DESIGN.md` section 5).
//!
//! Configuration ([`config`], [`settings`]), identity ([`identity`]), the
//! pure state machine ([`machine`]) and its driver ([`driver`]) with hints
//! ([`hints`]), the reboot lock ([`lock`]), OS backends ([`os`]), persisted
//! state ([`persist`]), status, metrics and control sockets ([`status`],
//! [`local`]), sd_notify ([`notify`]), telemetry reports ([`telemetry`]), tracing and OTLP export
//! ([`trace`]) and an in-process entry point for simulated fleets
//! ([`embed`]).

pub mod app;
pub mod cincinnati;
pub mod config;
pub mod driver;
pub mod embed;
pub mod hints;
pub mod identity;
pub mod local;
pub mod lock;
pub mod machine;
pub mod net;
pub mod notify;
pub mod os;
pub mod persist;
pub mod settings;
pub mod status;
pub mod telemetry;
pub mod trace;
