//! Protobuf contracts of the Upshift mesh, generated with tonic-prost-build.
//!
//! Each package is versioned (`upshift.<service>.v1`); [`FILE_DESCRIPTOR_SET`]
//! is the encoded descriptor set of every package, for gRPC reflection.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

/// Encoded `FileDescriptorSet` of all Upshift packages.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/upshift_descriptor.bin"));

pub mod codec;

/// `upshift.graph.v1`: update graphs per scope.
pub mod graph {
    pub mod v1 {
        tonic::include_proto!("upshift.graph.v1");
    }
}

/// `upshift.policy.v1`: per-node update hints and rollout control.
pub mod policy {
    pub mod v1 {
        tonic::include_proto!("upshift.policy.v1");
    }
}

/// `upshift.lock.v1`: reboot slots per group.
pub mod lock {
    pub mod v1 {
        tonic::include_proto!("upshift.lock.v1");
    }
}

/// `upshift.telemetry.v1`: agent reports and the fleet view.
pub mod telemetry {
    pub mod v1 {
        tonic::include_proto!("upshift.telemetry.v1");
    }
}

pub use prost_types;
