//! LQSM's fuzz targets, in one place for both ways of running them:
//!
//! - coverage-guided, by AFL++ through `cargo afl` (the `fuzz/` crate at the repository's
//!   root, outside the workspace, calls [`Target::run`]);
//! - structured random, in CI's short run and on demand (`tests/fuzz.rs` of this crate
//!   replays the committed regressions and corpus, then runs inputs made by
//!   [`Target::generate`] from a seeded stream).
//!
//! Each target takes bytes and panics, saying why, when a property does not hold.

pub mod api;
pub mod core;
pub mod generate;
pub mod stub;

use arbitrary::Unstructured;

/// A fuzz target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// HTTP requests through the server's router ([`api::request`]).
    ApiRequest,
    /// JSON bodies decoded as the wire types ([`api::decode`]).
    ApiTypes,
    /// Command sequences applied to the core ([`core::run`]).
    CoreCommands,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 3] = [Target::ApiRequest, Target::ApiTypes, Target::CoreCommands];

    /// The target's name: its directory under `regressions/` and `corpus/`, and the
    /// binary's name in `fuzz/`.
    pub fn name(self) -> &'static str {
        match self {
            Target::ApiRequest => "api_request",
            Target::ApiTypes => "api_types",
            Target::CoreCommands => "core_commands",
        }
    }

    /// Runs one input; panics when a property does not hold.
    pub fn run(self, data: &[u8]) {
        match self {
            Target::ApiRequest => api::request(data),
            Target::ApiTypes => api::decode(data),
            Target::CoreCommands => core::run(data),
        }
    }

    /// A structured random input, made from the bytes of `u` (the command target's
    /// inputs are the bytes themselves: `arbitrary` gives them their structure).
    pub fn generate(self, u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
        match self {
            Target::ApiRequest => generate::request(u),
            Target::ApiTypes => generate::typed_body(u),
            Target::CoreCommands => {
                let len = u.int_in_range(0..=2048usize)?;
                Ok(u.bytes(len.min(u.len()))?.to_vec())
            }
        }
    }
}

/// A seeded stream of bytes (SplitMix64): the same seed gives the same inputs on every
/// machine, so a failure found by a random run is reproduced from its seed.
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The input the random run makes for `target` from `seed`.
pub fn random_input(target: Target, seed: u64) -> Vec<u8> {
    let bytes = seeded_bytes(seed, 8192);
    let mut u = Unstructured::new(&bytes);
    target.generate(&mut u).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_input_every_time() {
        for target in Target::ALL {
            assert_eq!(random_input(target, 42), random_input(target, 42));
        }
        assert_ne!(seeded_bytes(1, 64), seeded_bytes(2, 64));
    }
}
