//! Release metadata, graph rules and the Cincinnati JSON codec.
