//! Network-namespace fixtures.
