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

/// Index of a PB vocabulary word. A `match` on the bytes compiles to a length switch plus a few
/// compares, cheaper than hashing on the encoder's hot path.
#[inline]
pub fn pb_index(word: &[u8]) -> Option<u8> {
    if word.len() < 4 || word.len() > 13 {
        return None;
    }
    Some(match word {
        b"None" => 1,
        b"class" => 2,
        b"dereference" => 3,
        b"reference" => 4,
        b"dictionary" => 5,
        b"function" => 6,
        b"instance" => 7,
        b"list" => 8,
        b"module" => 9,
        b"persistent" => 10,
        b"tuple" => 11,
        b"unpersistable" => 12,
        b"copy" => 13,
        b"cache" => 14,
        b"cached" => 15,
        b"remote" => 16,
        b"local" => 17,
        b"lcache" => 18,
        b"version" => 19,
        b"login" => 20,
        b"password" => 21,
        b"challenge" => 22,
        b"logged_in" => 23,
        b"not_logged_in" => 24,
        b"cachemessage" => 25,
        b"message" => 26,
        b"answer" => 27,
        b"error" => 28,
        b"decref" => 29,
        b"decache" => 30,
        b"uncache" => 31,
        _ => return None,
    })
}

#[inline]
pub fn foolscap_index(word: &[u8]) -> Option<u8> {
    if word.len() < 3 || word.len() > 15 {
        return None;
    }
    FOOLSCAP_VOCAB.iter().position(|w| *w == word).map(|i| i as u8)
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
    }
}
