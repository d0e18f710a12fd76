//! tokenledger-provider (placeholder until built).
