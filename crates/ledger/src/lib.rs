//! tokenledger-ledger (placeholder until built).
