//! tokenledger-server (placeholder until built).
