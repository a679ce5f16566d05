//! Hash maps with a seeded, deterministic hasher: replays with the same seed behave
//! the same, and a production seed keeps client-chosen keys from colliding on purpose.

use foldhash::quality::FixedState;

/// The map type used throughout the core. Never iterate one to make a decision.
pub type HashMap<K, V> = std::collections::HashMap<K, V, FixedState>;

/// An empty map whose hasher is keyed by `seed`.
pub fn map<K, V>(seed: u64) -> HashMap<K, V> {
    std::collections::HashMap::with_hasher(FixedState::with_seed(seed))
}
