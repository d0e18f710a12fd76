//! The domain of tokenledger: the six canonical token fields, the `(source, model, hour_start)`
//! bucket at UTC half hours, model normalisation, the unknown-model reassignment, pricing and
//! the wire types shared by the client and the server.
//!
//! Every rule lives here exactly once; collectors, the ledger, the server and the CLI call it.

pub mod bucket;
pub mod model;
pub mod pricing;
pub mod source;
pub mod time;
pub mod tokens;
pub mod wire;

pub use bucket::{reassign_unknown, Bucket, BucketKey};
pub use model::{normalize_model, UNKNOWN_MODEL};
pub use pricing::{ModelPrice, PriceTable};
pub use source::Source;
pub use time::{floor_half_hour, format_hour_start, parse_hour_start, parse_timestamp, HALF_HOUR};
pub use tokens::TokenCounts;
