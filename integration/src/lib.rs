//! Whole-mesh tests that run the real binaries.
