//! The lock service: FleetLock-compatible reboot slots.
