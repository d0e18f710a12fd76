//! tokenledger-sync (placeholder until built).
