//! tokenledger-store-sqlite (placeholder until built).
