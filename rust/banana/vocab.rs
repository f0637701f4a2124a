//! The fixed vocabularies: Twisted's `pb` dialect table and foolscap's table 1.
//!
//! A byte string equal to a word goes out as `index VOCAB` and decodes back to the word, so the
//! vocabulary is invisible above the token layer.

/// Twisted's `pb` vocabulary; index 0 is unused.
pub const PB_VOCAB: [&[u8]; 32] = [
    b"",
    b"None",
    b"class",
    b"dereference",
    b"reference",
    b"dictionary",
    b"function",
    b"instance",
    b"list",
    b"module",
    b"persistent",
    b"tuple",
    b"unpersistable",
    b"copy",
    b"cache",
    b"cached",
    b"remote",
    b"local",
    b"lcache",
    b"version",
    b"login",
    b"password",
    b"challenge",
    b"logged_in",
    b"not_logged_in",
    b"cachemessage",
    b"message",
    b"answer",
    b"error",
    b"decref",
    b"decache",
    b"uncache",
];

/// foolscap's initial vocabulary table 1 (negotiated as `1 bb33`); index = position.
pub const FOOLSCAP_VOCAB: [&[u8]; 25] = [
    b"none",
    b"boolean",
    b"reference",
    b"dict",
    b"list",
    b"tuple",
    b"set",
    b"immutable-set",
    b"unicode",
    b"set-vocab",
    b"add-vocab",
    b"call",
    b"arguments",
    b"answer",
    b"error",
    b"my-reference",
    b"your-reference",
    b"their-reference",
    b"copyable",
    b"instance",
    b"module",
    b"class",
    b"method",
    b"function",
    b"attrdict",
];

pub fn pb_word(index: u64) -> Option<&'static [u8]> {
    match index {
        1..=31 => Some(PB_VOCAB[index as usize]),
        _ => None,
    }
}

pub fn foolscap_word(index: u64) -> Option<&'static [u8]> {
    FOOLSCAP_VOCAB.get(usize::try_from(index).ok()?).copied()
}

/// Candidate index by (length, first byte, last byte): no two words of either table share that
/// triple, so a lookup is one table read and one compare instead of a chain of compares.
/// `firsts[len]` has bit `first & 31` set for every word of that length: 64 bytes that stay in
/// cache and turn most strings away before the table is touched.
struct Lookup {
    firsts: [u32; 16],
    table: [[[u8; 32]; 32]; 16],
}

impl Lookup {
    const NONE: u8 = u8::MAX;

    const fn build(table: &[&[u8]], first: usize) -> Lookup {
        let mut firsts = [0u32; 16];
        let mut t = [[[Self::NONE; 32]; 32]; 16];
        let mut i = first;
        while i < table.len() {
            let w = table[i];
            firsts[w.len()] |= 1 << (w[0] & 31);
            t[w.len()][(w[0] & 31) as usize][(w[w.len() - 1] & 31) as usize] = i as u8;
            i += 1;
        }
        Lookup { firsts, table: t }
    }

    #[inline(always)]
    fn find(&self, table: &[&[u8]], word: &[u8]) -> Option<u8> {
        let (first, last) = (word.first()?, word.last()?);
        if self.firsts.get(word.len())? & (1 << (first & 31)) == 0 {
            return None;
        }
        let i = self.table[word.len()][usize::from(first & 31)][usize::from(last & 31)];
        // The word at `i` has the length of `word`: compared byte by byte, not by a call to memcmp.
        (i != Self::NONE && table[usize::from(i)].iter().zip(word).all(|(a, b)| a == b)).then_some(i)
    }
}

static PB_LOOKUP: Lookup = Lookup::build(&PB_VOCAB, 1);
static FOOLSCAP_LOOKUP: Lookup = Lookup::build(&FOOLSCAP_VOCAB, 0);

/// Index of `word` in `table` from `first` on, worked out at compile time (for the words an
/// encoder writes as constants).
pub const fn const_index(table: &[&[u8]], first: usize, word: &[u8]) -> Option<u8> {
    let mut i = first;
    while i < table.len() {
        if same(table[i], word) {
            return Some(i as u8);
        }
        i += 1;
    }
    None
}

const fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Index of a PB vocabulary word.
#[inline(always)]
pub fn pb_index(word: &[u8]) -> Option<u8> {
    PB_LOOKUP.find(&PB_VOCAB, word)
}

/// Index of a foolscap vocabulary word.
#[inline(always)]
pub fn foolscap_index(word: &[u8]) -> Option<u8> {
    FOOLSCAP_LOOKUP.find(&FOOLSCAP_VOCAB, word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pb_index_matches_table() {
        for (i, w) in PB_VOCAB.iter().enumerate().skip(1) {
            assert_eq!(pb_index(w), Some(i as u8));
            assert_eq!(pb_word(i as u64), Some(*w));
        }
        assert_eq!(pb_index(b""), None);
        assert_eq!(pb_index(b"Non"), None);
        assert_eq!(pb_index(b"messages"), None);
        assert_eq!(pb_word(0), None);
        assert_eq!(pb_word(32), None);
    }

    #[test]
    fn foolscap_index_matches_table() {
        for (i, w) in FOOLSCAP_VOCAB.iter().enumerate() {
            assert_eq!(foolscap_index(w), Some(i as u8));
            assert_eq!(foolscap_word(i as u64), Some(*w));
        }
        assert_eq!(foolscap_word(25), None);
        assert_eq!(foolscap_index(b"None"), None);
        assert_eq!(foolscap_index(b""), None);
        assert_eq!(pb_index(&[0xff; 40]), None);
    }
}
