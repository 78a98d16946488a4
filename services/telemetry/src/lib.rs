//! The telemetry service (see `../shared/DESIGN.md` sections 1 and 6).
