//! The lock service: FleetLock-compatible reboot slots.

pub mod semaphore;
