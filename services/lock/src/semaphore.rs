//! The per-group semaphore record and its pure operations (no I/O, no clock).
//!
//! Every operation takes `now` (epoch seconds) and returns whether the record
//! changed, so the caller writes to the store only when something did.

use serde::{Deserialize, Serialize};

/// How a holder acquired its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// FleetLock HTTP `pre-reboot`.
    Fleetlock,
    /// gRPC `Acquire`.
    Grpc,
}

/// A holder's lease: the slot is freed at `expires_at` unless renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Lease length in seconds.
    pub ttl_secs: u64,
    /// Expiry, epoch seconds.
    pub expires_at: u64,
}

/// One slot holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRecord {
    /// Client id (case-sensitive).
    pub id: String,
    /// When the slot was granted, epoch seconds.
    pub acquired_at: u64,
    /// How it was acquired.
    pub method: Method,
    /// Lease, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// A group's stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemaphoreState {
    /// Slot count (at least 1).
    pub total_slots: u32,
    /// Holders, oldest first.
    #[serde(default)]
    pub holders: Vec<HolderRecord>,
    /// Pause reason when new grants are stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
}

/// Whether an operation modified the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The record changed and must be written.
    Changed,
    /// Nothing changed; write nothing.
    Unchanged,
}

/// Why a lock was refused. Also the `reason` of a gRPC `Queued` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Every slot is taken (or the group was shrunk below its holders).
    #[error("all semaphore slots are taken")]
    Full,
    /// The group is paused.
    #[error("group is paused")]
    Paused,
    /// No maintenance window is open.
    #[error("outside every maintenance window")]
    OutsideWindow,
}

impl Denied {
    /// The gRPC `Queued.reason` string.
    pub fn reason(self) -> &'static str {
        match self {
            Denied::Full => "slots-full",
            Denied::Paused => "paused",
            Denied::OutsideWindow => "outside-window",
        }
    }
}

/// A lock request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRequest {
    /// Client id.
    pub id: String,
    /// How it asks.
    pub method: Method,
    /// Lease length in seconds, if leased.
    pub ttl_secs: Option<u64>,
}

/// Errors of [`SemaphoreState::keepalive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeepaliveError {
    /// The id holds no slot.
    #[error("id holds no slot")]
    NotHeld,
    /// The holder has no lease to renew.
    #[error("holder has no lease")]
    NotLeased,
}

impl SemaphoreState {
    /// An empty group with `slots` slots.
    pub fn new(slots: u32) -> Self {
        Self {
            total_slots: slots.max(1),
            holders: Vec::new(),
            paused: None,
        }
    }

    /// The holder with `id`, if any.
    pub fn holder(&self, id: &str) -> Option<&HolderRecord> {
        self.holders.iter().find(|h| h.id == id)
    }

    /// Takes a slot for `req.id`. Recursive: a holder is granted again
    /// without a second slot, even when paused, full or outside a window.
    pub fn lock(
        &mut self,
        req: &LockRequest,
        now: u64,
        window_open: bool,
    ) -> Result<Outcome, Denied> {
        if self.holder(&req.id).is_some() {
            return Ok(Outcome::Unchanged);
        }
        if self.paused.is_some() {
            return Err(Denied::Paused);
        }
        if !window_open {
            return Err(Denied::OutsideWindow);
        }
        // `>=` so a shrunk group grants nothing until its holders fit.
        if self.holders.len() >= self.total_slots as usize {
            return Err(Denied::Full);
        }
        self.holders.push(HolderRecord {
            id: req.id.clone(),
            acquired_at: now,
            method: req.method,
            lease: req.ttl_secs.map(|ttl_secs| Lease {
                ttl_secs,
                expires_at: now.saturating_add(ttl_secs),
            }),
        });
        Ok(Outcome::Changed)
    }

    /// Frees `id`'s slot; returns the removed holder (none: nothing to write).
    pub fn unlock(&mut self, id: &str) -> Option<HolderRecord> {
        let pos = self.holders.iter().position(|h| h.id == id)?;
        Some(self.holders.remove(pos))
    }

    /// Admin release; same as [`Self::unlock`], kept separate for the audit trail.
    pub fn force_release(&mut self, id: &str) -> Option<HolderRecord> {
        self.unlock(id)
    }

    /// Changes the slot count (at least 1). Shrinking never evicts holders.
    pub fn set_slots(&mut self, slots: u32) -> Outcome {
        let slots = slots.max(1);
        if self.total_slots == slots {
            return Outcome::Unchanged;
        }
        self.total_slots = slots;
        Outcome::Changed
    }

    /// Stops new grants.
    pub fn pause(&mut self, reason: &str) -> Outcome {
        if self.paused.as_deref() == Some(reason) {
            return Outcome::Unchanged;
        }
        self.paused = Some(reason.to_string());
        Outcome::Changed
    }

    /// Allows new grants again.
    pub fn resume(&mut self) -> Outcome {
        match self.paused.take() {
            Some(_) => Outcome::Changed,
            None => Outcome::Unchanged,
        }
    }

    /// Renews `id`'s lease from `now`; returns the new expiry.
    pub fn keepalive(&mut self, id: &str, now: u64) -> Result<u64, KeepaliveError> {
        let holder = self
            .holders
            .iter_mut()
            .find(|h| h.id == id)
            .ok_or(KeepaliveError::NotHeld)?;
        let lease = holder.lease.as_mut().ok_or(KeepaliveError::NotLeased)?;
        lease.expires_at = now.saturating_add(lease.ttl_secs);
        Ok(lease.expires_at)
    }

    /// Removes holders whose lease expired at or before `now`.
    pub fn expire(&mut self, now: u64) -> Vec<HolderRecord> {
        let (expired, kept) = std::mem::take(&mut self.holders)
            .into_iter()
            .partition(|h| h.lease.is_some_and(|l| l.expires_at <= now));
        self.holders = kept;
        expired
    }

    /// The earliest lease expiry among holders.
    pub fn next_expiry(&self) -> Option<u64> {
        self.holders
            .iter()
            .filter_map(|h| h.lease.map(|l| l.expires_at))
            .min()
    }
}

#[cfg(test)]
mod tests;
