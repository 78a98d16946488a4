//! The graph service: builds and serves update graphs.
