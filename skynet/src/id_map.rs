//! Hash maps keyed by our own ids: request ids and the addresses of dialed peers.

use std::collections::HashMap;
use std::net::SocketAddr;

/// Hashes keys that are ours, request ids and the addresses of the peers this node dials:
/// sequential u64s need spreading across the table, not SipHash's protection against chosen
/// keys, and every call hashes one of each.
#[derive(Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Mixes rather than replaces, so that keys made of several fields (an address) use
        // them all; a lone u64 from the zero state hashes to `n * K`.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A map keyed by request id.
pub(crate) type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// A map keyed by peer address.
pub(crate) type AddrMap<V> = HashMap<SocketAddr, V, std::hash::BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;

    use super::*;

    #[test]
    fn addresses_hash_by_every_field() {
        let hasher = std::hash::BuildHasherDefault::<IdHasher>::default();
        let hash = |addr: &str| hasher.hash_one(addr.parse::<SocketAddr>().expect("an address"));
        let base = hash("127.0.0.1:5000");
        for other in ["127.0.0.1:5001", "127.0.0.2:5000", "[::1]:5000"] {
            assert_ne!(base, hash(other), "{other}");
        }
        // A lone id still spreads: consecutive ids land far apart.
        let (a, b) = (hasher.hash_one(1u64), hasher.hash_one(2u64));
        assert!((a ^ b).count_ones() > 8, "{a:x} {b:x}");
    }
}
