//! `upshift-agent`: the on-host update agent (see `../shared/DESIGN.md` section 5).
//!
//! Built so far: configuration fragment discovery and precedence
//! ([`config`]) and node identity ([`identity`]).

pub mod cincinnati;
pub mod config;
pub mod driver;
pub mod identity;
pub mod machine;
pub mod os;
pub mod persist;
pub mod settings;
