//! Unleash's bucketing hash: MurmurHash3 (x86, 32-bit) of `group_id:identifier`, reduced to
//! `1..=modulus`.
//!
//! The murmur3 crate hashes a complete `Read`er; Unleash hashes a concatenation whose prefix
//! (`group_id:`) is fixed per rule. Hashing incrementally lets a rule precompute the state
//! after its prefix once, at compile time, and each evaluation hash only the caller's id,
//! without building the joined string. Tests check every result against the murmur3 crate.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// Seed of variant hashes (Unleash's `VARIANT_NORMALIZATION_SEED`); rollouts use 0.
pub(crate) const VARIANT_SEED: u32 = 86_028_157;

/// MurmurHash3 x86_32 that accepts its input in pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Murmur3 {
    state: u32,
    tail: u32,
    tail_len: u32,
    len: u32,
}

impl Murmur3 {
    pub(crate) fn new(seed: u32) -> Self {
        Self {
            state: seed,
            tail: 0,
            tail_len: 0,
            len: 0,
        }
    }

    /// The state after hashing `group_id:`; finish it with [`Murmur3::bucket`].
    pub(crate) fn with_prefix(seed: u32, group_id: &str) -> Self {
        let mut hash = Self::new(seed);
        hash.write(group_id.as_bytes());
        hash.write(b":");
        hash
    }

    fn mix_block(&mut self, block: u32) {
        let k = block.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        self.state = (self.state ^ k)
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }

    #[inline]
    pub(crate) fn write(&mut self, mut bytes: &[u8]) {
        // Input lengths above 4 GiB wrap, as in the reference implementation.
        self.len = self.len.wrapping_add(bytes.len() as u32);
        while self.tail_len > 0 && !bytes.is_empty() {
            self.tail |= u32::from(bytes[0]) << (8 * self.tail_len);
            self.tail_len += 1;
            bytes = &bytes[1..];
            if self.tail_len == 4 {
                let block = self.tail;
                self.mix_block(block);
                self.tail = 0;
                self.tail_len = 0;
            }
        }
        let mut blocks = bytes.chunks_exact(4);
        for block in &mut blocks {
            self.mix_block(u32::from_le_bytes([block[0], block[1], block[2], block[3]]));
        }
        for &byte in blocks.remainder() {
            self.tail |= u32::from(byte) << (8 * self.tail_len);
            self.tail_len += 1;
        }
    }

    #[inline]
    pub(crate) fn finish(self) -> u32 {
        let mut state = self.state;
        if self.tail_len > 0 {
            state ^= self.tail.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        }
        state ^= self.len;
        state ^= state >> 16;
        state = state.wrapping_mul(0x85eb_ca6b);
        state ^= state >> 13;
        state = state.wrapping_mul(0xc2b2_ae35);
        state ^ (state >> 16)
    }

    /// Finishes the hash of `prefix + identifier` and reduces it to `1..=modulus`
    /// (`modulus` must not be zero).
    #[inline]
    pub(crate) fn bucket(mut self, identifier: &str, modulus: u32) -> u32 {
        self.write(identifier.as_bytes());
        self.finish() % modulus + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(input: &[u8], seed: u32) -> u32 {
        murmur3::murmur3_32(&mut std::io::Cursor::new(input), seed).unwrap()
    }

    proptest! {
        #[test]
        fn matches_the_murmur3_crate(prefix in ".{0,12}", id in ".{0,40}", seed in any::<u32>()) {
            let joined = format!("{prefix}:{id}");
            let mut hash = Murmur3::with_prefix(seed, &prefix);
            hash.write(id.as_bytes());
            prop_assert_eq!(hash.finish(), reference(joined.as_bytes(), seed));
        }

        #[test]
        fn pieces_of_any_size_give_the_same_hash(bytes in proptest::collection::vec(any::<u8>(), 0..64), cuts in proptest::collection::vec(0usize..64, 0..5)) {
            let mut hash = Murmur3::new(7);
            let mut start = 0;
            let mut cuts = cuts;
            cuts.sort_unstable();
            for cut in cuts {
                let cut = cut.min(bytes.len()).max(start);
                hash.write(&bytes[start..cut]);
                start = cut;
            }
            hash.write(&bytes[start..]);
            prop_assert_eq!(hash.finish(), reference(&bytes, 7));
        }
    }
}
