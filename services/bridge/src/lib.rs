//! The host metrics bridge (see `../shared/DESIGN.md` section 6).
