//! Shared service plumbing: config, telemetry, server, clock.
