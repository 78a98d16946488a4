//! The lock service: FleetLock-compatible reboot slots.

pub mod config;
pub mod semaphore;
pub mod window;
