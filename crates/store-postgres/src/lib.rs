//! tokenledger-store-postgres (placeholder until built).
