//! Server benchmark (being written).
fn main() {}
