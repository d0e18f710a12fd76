//! tokenledger-store (placeholder until built).
