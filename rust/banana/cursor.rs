//! A lean reader for expressions the framer has already validated, used by the builders.
//!
//! The builders read expressions with it: small items that are cheap to move, big integers left
//! as their header bytes until asked for. It applies the per-token limits (header length, element
//! size) and refuses a list that declares more elements than bytes remain, so it is also safe on
//! input no framer has checked (one-shot `loads`); it reports `None` instead of an error, and the
//! caller asks the framer's validator for the precise error only then.

use num_bigint::{BigInt, Sign};

use super::decode::{header_value, HeaderValue};
use super::{tb, vocab, Dialect, Integer, Limits};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Item<'a> {
    List(usize),
    Int(i64),
    /// An integer beyond `i64`: its base-128 header and sign.
    BigInt {
        negative: bool,
        header: &'a [u8],
    },
    /// STRING or VOCAB (VOCAB already replaced by its word).
    Bytes(&'a [u8]),
    Float(f64),
}

impl Item<'_> {
    /// The value of an `Int` or `BigInt` item.
    pub fn integer(&self) -> Option<Integer> {
        match *self {
            Item::Int(v) => Some(Integer::Small(v)),
            Item::BigInt { negative, header } => {
                let magnitude = match header_value(header) {
                    HeaderValue::Small(n) => n.into(),
                    HeaderValue::Big(b) => b,
                };
                let sign = if negative { Sign::Minus } else { Sign::Plus };
                Some(Integer::from_big(BigInt::from_biguint(sign, magnitude)))
            }
            _ => None,
        }
    }
}

/// A common leaf, read by [`Cursor::plain`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plain<'a> {
    /// The UTF-8 of a `["unicode", ...]`.
    Text(&'a [u8]),
    Int(i64),
    Float(f64),
}

/// A common token of jelly, read by [`Cursor::token`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Token<'a> {
    /// The UTF-8 of a `["unicode", ...]` in the common shape (see [`Cursor::unicode`]).
    Text(&'a [u8]),
    Int(i64),
    Float(f64),
    /// The head of a list of `n` (at least 1) elements whose first is a PB VOCAB word, by its
    /// index: a container's list and its type tag.
    Tagged {
        n: usize,
        index: u8,
    },
}

/// The bytes [`Cursor::token`] reads at once: no common token's head is longer.
const WINDOW: usize = 16;

#[derive(Clone)]
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    dialect: Dialect,
    limits: Limits,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8], dialect: Dialect, limits: Limits) -> Cursor<'a> {
        debug_assert!(dialect != Dialect::Foolscap);
        Cursor { data, pos: 0, dialect, limits }
    }

    /// True once every byte has been read.
    pub fn at_end(&self) -> bool {
        self.pos == self.data.len()
    }

    /// Offset of the next item within the expression.
    #[inline]
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The limits it reads under.
    #[inline(always)]
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The bytes from the cursor on.
    #[inline(always)]
    pub fn rest(&self) -> &'a [u8] {
        &self.data[self.pos..]
    }

    /// Continue reading at `pos` (the end of an item another reader consumed).
    pub fn skip_to(&mut self, pos: usize) {
        debug_assert!(pos >= self.pos && pos <= self.data.len());
        self.pos = pos;
    }

    /// If a `["unicode", STRING]` with a one-byte string header starts here, consume it and
    /// return the string's bytes — the shape of nearly every jellied `str`.
    #[inline(always)]
    pub fn unicode(&mut self) -> Option<&'a [u8]> {
        // Compared as two little-endian words, bytes 0..8 and 5..13, rather than by memcmp; byte
        // 11 (the string length) is masked out and must be a one-byte header (below 0x80).
        const HEAD: u64 = u64::from_le_bytes(*b"\x02\x80\x07\x82unic");
        const TAIL: u64 = u64::from_le_bytes(*b"nicode\x00\x82");
        const LEN_MASK: u64 = !(0xff << 48);
        let rest = self.data.get(self.pos..)?;
        if rest.len() < 13 {
            return None;
        }
        let head = u64::from_le_bytes(rest[..8].try_into().ok()?);
        let tail = u64::from_le_bytes(rest[5..13].try_into().ok()?);
        if head != HEAD || tail & LEN_MASK != TAIL || rest[11] >= 0x80 {
            return None;
        }
        let n = usize::from(rest[11]);
        let s = rest.get(13..13 + n)?;
        self.pos += 13 + n;
        Some(s)
    }

    /// If a str (as [`Cursor::unicode`] finds it), an int of one or two header bytes or a float
    /// starts here, consume it and return it: the common leaves of jelly, read with the fewest
    /// tests. Anything else is left for [`Cursor::next_item`].
    #[inline(always)]
    pub fn plain(&mut self) -> Option<Plain<'a>> {
        let rest = self.data.get(self.pos..)?;
        let (b0, b1) = (*rest.first()?, *rest.get(1)?);
        if b0 == tb::FLOAT {
            let raw: [u8; 8] = rest.get(1..9)?.try_into().ok()?;
            self.pos += 9;
            return Some(Plain::Float(f64::from_be_bytes(raw)));
        }
        if b1 == tb::LIST {
            return self.unicode().map(Plain::Text);
        }
        if b0 >= 0x80 {
            return None;
        }
        // A one-byte header is never checked against max_header_length (as in `next_item`); a
        // two-byte one is.
        let (v, type_byte, len) = if b1 >= 0x80 {
            (i64::from(b0), b1, 2)
        } else if self.limits.max_header_length >= 2 {
            (i64::from(b0) | i64::from(b1) << 7, *rest.get(2)?, 3)
        } else {
            return None;
        };
        let v = match type_byte {
            tb::INT => v,
            tb::NEG => -v,
            _ => return None,
        };
        self.pos += len;
        Some(Plain::Int(v))
    }

    /// The common token at the cursor — a str in the common shape, an int of one or two header
    /// bytes, a float, or the head of a list tagged with a PB VOCAB word — read with one dispatch
    /// on its first bytes, and where it ends; the cursor stays where it is (see
    /// [`Cursor::skip_to`]). None for anything else, and within a few bytes of the end: the
    /// item-by-item readers then say what is there. What it reads is what those would.
    #[inline(always)]
    pub fn token(&self) -> Option<(Token<'a>, usize)> {
        let pos = self.pos;
        let w: &[u8; WINDOW] = self.data.get(pos..pos + WINDOW)?.try_into().ok()?;
        let (b0, b1) = (w[0], w[1]);
        if b1 == tb::LIST && b0 < 0x80 {
            if b0 == 2 {
                // As `unicode`, from the window.
                const HEAD: u64 = u64::from_le_bytes(*b"\x02\x80\x07\x82unic");
                const TAIL: u64 = u64::from_le_bytes(*b"nicode\x00\x82");
                const LEN_MASK: u64 = !(0xff << 48);
                let head = u64::from_le_bytes(*w.first_chunk::<8>().expect("8 of 16 bytes"));
                let tail = u64::from_le_bytes(*w[5..].first_chunk::<8>().expect("8 of 11 bytes"));
                if head == HEAD && tail & LEN_MASK == TAIL && w[11] < 0x80 {
                    let end = pos + 13 + usize::from(w[11]);
                    return Some((Token::Text(self.data.get(pos + 13..end)?), end));
                }
            }
            // As `next_item` reads a list's header, then `vocab` its tag.
            let n = usize::from(b0);
            let fits = n > 0 && n <= self.limits.max_element_size && n <= self.data.len() - (pos + 2);
            if fits && w[3] == tb::VOCAB && self.dialect == Dialect::Pb && vocab::pb_word(u64::from(w[2])).is_some() {
                return Some((Token::Tagged { n, index: w[2] }, pos + 4));
            }
            return None;
        }
        if b0 == tb::FLOAT {
            let raw = *w[1..].first_chunk::<8>().expect("8 of 15 bytes");
            return Some((Token::Float(f64::from_be_bytes(raw)), pos + 9));
        }
        if b0 >= 0x80 {
            return None;
        }
        // As `plain` reads an int.
        let (v, type_byte, len) = if b1 >= 0x80 {
            (i64::from(b0), b1, 2)
        } else if self.limits.max_header_length >= 2 {
            (i64::from(b0) | i64::from(b1) << 7, w[2], 3)
        } else {
            return None;
        };
        match type_byte {
            tb::INT => Some((Token::Int(v), pos + len)),
            tb::NEG => Some((Token::Int(-v), pos + len)),
            _ => None,
        }
    }

    /// If the one-byte header of a list of two items (a jelly dictionary's `[key, value]`) starts
    /// here, consume it: what [`Cursor::next_item`] would read as `Item::List(2)`, in one test.
    #[inline(always)]
    pub fn pair(&mut self) -> bool {
        let at = self.pos;
        let found = self.data.get(at..at + 2) == Some(&[2, tb::LIST][..])
            && self.limits.max_element_size >= 2
            && self.data.len() - (at + 2) >= 2;
        if found {
            self.pos += 2;
        }
        found
    }

    /// If a PB vocabulary word with a one-byte header starts here, consume it and return its
    /// index and word: the shape of most jelly type tags (`list`, `dictionary`, `tuple`, ...).
    #[inline(always)]
    pub fn vocab(&mut self) -> Option<(u8, &'static [u8])> {
        if self.dialect != Dialect::Pb {
            return None;
        }
        let (&index, &type_byte) = (self.data.get(self.pos)?, self.data.get(self.pos + 1)?);
        if type_byte != tb::VOCAB {
            return None;
        }
        let word = vocab::pb_word(u64::from(index))?;
        self.pos += 2;
        Some((index, word))
    }

    #[inline(always)]
    pub fn next_item(&mut self) -> Option<Item<'a>> {
        let data = self.data;
        let start = self.pos;
        // Headers of zero or one byte are the common case; longer ones take the loop.
        let (header, at) = match (data.get(start), data.get(start + 1)) {
            (Some(&b0), _) if b0 & 0x80 != 0 => (&data[start..start], start),
            (Some(_), Some(&b1)) if b1 & 0x80 != 0 => (&data[start..=start], start + 1),
            _ => {
                let at = start + data.get(start..)?.iter().position(|&b| b & 0x80 != 0)?;
                if at - start > self.limits.max_header_length {
                    return None;
                }
                (&data[start..at], at)
            }
        };
        let type_byte = data[at];
        let mut end = at + 1;
        let small = match header.len() {
            0 => Some(0),
            1 => Some(u64::from(header[0])),
            2 => Some(u64::from(header[0]) | u64::from(header[1]) << 7),
            _ => match header_value(header) {
                HeaderValue::Small(v) => Some(v),
                HeaderValue::Big(_) => None,
            },
        };
        let max = self.limits.max_element_size as u64;
        let item = match (type_byte, small) {
            // Every element takes at least one byte: a longer claim is malformed, and refusing it
            // here means a builder never allocates for elements that cannot exist.
            (tb::LIST, Some(n)) if n <= max && n <= (data.len() - end) as u64 => Item::List(n as usize),
            (tb::INT | tb::LONGINT, Some(v)) if v <= i64::MAX as u64 => Item::Int(v as i64),
            (tb::NEG | tb::LONGNEG, Some(v)) if v <= 1 << 63 => Item::Int((v as i64).wrapping_neg()),
            (tb::INT | tb::LONGINT, _) => Item::BigInt { negative: false, header },
            (tb::NEG | tb::LONGNEG, _) => Item::BigInt { negative: true, header },
            (tb::STRING, Some(n)) if n <= max => {
                let n = n as usize;
                let s = data.get(end..end.checked_add(n)?)?;
                end += n;
                Item::Bytes(s)
            }
            (tb::FLOAT, _) => {
                let raw: [u8; 8] = data.get(end..end + 8)?.try_into().ok()?;
                end += 8;
                Item::Float(f64::from_be_bytes(raw))
            }
            (tb::VOCAB, Some(i)) if self.dialect == Dialect::Pb => Item::Bytes(vocab::pb_word(i)?),
            _ => return None,
        };
        self.pos = end;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicode_fast_path() {
        let data = b"\x02\x80\x07\x82unicode\x03\x82abc\x00\x81";
        let mut c = Cursor::new(data, Dialect::Pb, Limits::twisted());
        assert_eq!(c.unicode(), Some(&b"abc"[..]));
        assert_eq!(c.unicode(), None);
        assert_eq!(c.next_item(), Some(Item::Int(0)));
        // Not the fast shape: a two-byte length header, or another tag.
        let long = [&b"\x02\x80\x07\x82unicode\x00\x01\x82"[..], &[b'x'; 128]].concat();
        assert_eq!(Cursor::new(&long, Dialect::Pb, Limits::twisted()).unicode(), None);
        assert_eq!(Cursor::new(b"\x02\x80\x07\x82unicodf\x00\x82", Dialect::Pb, Limits::twisted()).unicode(), None);
    }

    #[test]
    fn plain_fast_path() {
        let mut data = b"\x02\x80\x07\x82unicode\x01\x82a\x05\x81\x05\x83\x68\x07\x81\x7f\x7f\x83\x84".to_vec();
        data.extend(1.5f64.to_be_bytes());
        let mut c = Cursor::new(&data, Dialect::Pb, Limits::twisted());
        let read: Vec<_> = std::iter::from_fn(|| c.plain()).collect();
        assert_eq!(
            read,
            [Plain::Text(b"a"), Plain::Int(5), Plain::Int(-5), Plain::Int(1000), Plain::Int(-16383), Plain::Float(1.5)]
        );
        assert!(c.at_end());
        // Left for next_item: other types, longer headers, a two-byte header over the limit, a
        // float cut short.
        for other in [&[1, tb::LIST][..], &[1, 2, 3, tb::INT], &[0x81], &[3, tb::STRING, 1, 2, 3], &[1, 1, tb::LONGINT]]
        {
            let mut c = Cursor::new(other, Dialect::Pb, Limits::twisted());
            assert_eq!((c.plain(), c.pos()), (None, 0), "{other:?}");
        }
        let tight = Limits { max_header_length: 1, ..Limits::twisted() };
        assert_eq!(Cursor::new(&[0x68, 0x07, tb::INT], Dialect::Pb, tight).plain(), None);
        assert_eq!(Cursor::new(&[tb::FLOAT, 0, 0], Dialect::Pb, tight).plain(), None);
    }

    #[test]
    fn pair_fast_path() {
        let data = [2, tb::LIST, 0, tb::INT, 0, tb::INT, 2, tb::LIST, 0];
        let mut c = Cursor::new(&data, Dialect::Pb, Limits::twisted());
        assert!(c.pair());
        assert_eq!(c.pos(), 2);
        // Not a pair header; a pair with fewer bytes left than items is left to next_item (which
        // refuses it), as is one over a max_element_size below 2.
        assert!(!c.pair());
        c.skip_to(6);
        assert!(!c.pair());
        assert_eq!((c.pos(), c.next_item()), (6, None));
        let tiny = Limits { max_element_size: 1, ..Limits::twisted() };
        assert!(!Cursor::new(&data, Dialect::Pb, tiny).pair());
        assert_eq!(Cursor::new(&data, Dialect::Pb, tiny).next_item(), None);
    }

    #[test]
    fn tokens_read_as_the_careful_readers_read_them() {
        // Each token followed by enough bytes for the window; what `token` reads is what `plain`
        // (or `next_item` and `vocab`, for a tagged list) reads, and it ends where they end.
        let pad = [0u8; 16];
        let mut float = vec![tb::FLOAT];
        float.extend(2.5f64.to_be_bytes());
        let cases: [(&[u8], Option<Token<'_>>); 9] = [
            (b"\x02\x80\x07\x82unicode\x03\x82abc", Some(Token::Text(b"abc"))),
            (&[5, tb::INT], Some(Token::Int(5))),
            (&[5, tb::NEG], Some(Token::Int(-5))),
            (&[0x68, 0x07, tb::INT], Some(Token::Int(1000))),
            (&float, Some(Token::Float(2.5))),
            (&[4, tb::LIST, 8, tb::VOCAB, 0, tb::INT, 0, tb::INT, 0, tb::INT], Some(Token::Tagged { n: 4, index: 8 })),
            // Not tokens it reads: a STRING, a tag that is no vocabulary word, a list of nothing.
            (&[3, tb::STRING, b'a', b'b', b'c'], None),
            (&[2, tb::LIST, 0, tb::VOCAB, 0, tb::INT], None),
            (&[0, tb::LIST], None),
        ];
        for (bytes, want) in cases {
            let data = [bytes, &pad[..]].concat();
            let c = Cursor::new(&data, Dialect::Pb, Limits::twisted());
            let got = c.token();
            assert_eq!(got.map(|(t, _)| t), want, "{bytes:?}");
            let Some((token, end)) = got else { continue };
            let mut careful = c.clone();
            match token {
                Token::Tagged { n, index } => {
                    assert_eq!(careful.next_item(), Some(Item::List(n)));
                    assert_eq!(careful.vocab().map(|(i, _)| i), Some(index));
                }
                Token::Text(s) => assert_eq!(careful.plain(), Some(Plain::Text(s))),
                Token::Int(v) => assert_eq!(careful.plain(), Some(Plain::Int(v))),
                Token::Float(f) => assert_eq!(careful.plain(), Some(Plain::Float(f))),
            }
            assert_eq!(careful.pos(), end, "{bytes:?}");
        }
        // The limits and the dialect are kept: a two-byte header over max_header_length, a list
        // longer than max_element_size or than the bytes left, vocabulary without the pb dialect.
        let tight = Limits { max_header_length: 1, max_element_size: 3, ..Limits::twisted() };
        for bytes in [&[0x68, 0x07, tb::INT][..], &[4, tb::LIST, 8, tb::VOCAB]] {
            let data = [bytes, &pad[..]].concat();
            assert_eq!(Cursor::new(&data, Dialect::Pb, tight).token(), None, "{bytes:?}");
        }
        let short = [4, tb::LIST, 8, tb::VOCAB, 0, tb::INT, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(Cursor::new(&short, Dialect::Pb, Limits::twisted()).token().is_some());
        let mut longer = short;
        longer[0] = 15;
        assert_eq!(Cursor::new(&longer, Dialect::Pb, Limits::twisted()).token(), None);
        let data = [&[4, tb::LIST, 8, tb::VOCAB][..], &pad[..]].concat();
        assert_eq!(Cursor::new(&data, Dialect::NoVocab, Limits::twisted()).token(), None);
        // Within the window's length of the end, the careful readers read.
        assert_eq!(Cursor::new(&[5, tb::INT], Dialect::Pb, Limits::twisted()).token(), None);
    }

    #[test]
    fn vocab_fast_path() {
        let data = [8, tb::VOCAB, 0, tb::VOCAB, 1, 8, tb::VOCAB];
        let mut c = Cursor::new(&data, Dialect::Pb, Limits::twisted());
        assert_eq!(c.vocab(), Some((8, &b"list"[..])));
        // Index 0 is no word; a longer header is not the fast shape.
        assert_eq!(c.vocab(), None);
        assert_eq!(c.pos(), 2);
        c.skip_to(4);
        assert_eq!(c.vocab(), None);
        assert_eq!(Cursor::new(&data, Dialect::NoVocab, Limits::twisted()).vocab(), None);
    }

    #[test]
    fn reads_items() {
        let data = [2, tb::LIST, 8, tb::VOCAB, 0x7f, 0x7f, 0x7f, 0x7f, 0x07, tb::NEG, tb::INT];
        let mut c = Cursor::new(&data, Dialect::Pb, Limits::twisted());
        assert_eq!(c.next_item(), Some(Item::List(2)));
        assert_eq!(c.next_item(), Some(Item::Bytes(b"list")));
        assert_eq!(c.next_item(), Some(Item::Int(-((1 << 31) - 1))));
        assert_eq!(c.next_item(), Some(Item::Int(0)));
        assert_eq!(c.next_item(), None);
        // Two-byte headers, least significant group first.
        let two = [0x68, 0x07, tb::INT, 0x7f, 0x7f, tb::NEG];
        let mut c = Cursor::new(&two, Dialect::Pb, Limits::twisted());
        assert_eq!(c.next_item(), Some(Item::Int(1000)));
        assert_eq!(c.next_item(), Some(Item::Int(-16383)));
        let mut h = vec![0u8; 10];
        h.push(1);
        h.push(tb::LONGNEG);
        let item = Cursor::new(&h, Dialect::Pb, Limits::twisted()).next_item().unwrap();
        assert_eq!(item.integer(), Some(Integer::Big(-(BigInt::from(1u8) << 70usize))));
        fn one(data: &[u8], dialect: Dialect) -> Option<Item<'_>> {
            Cursor::new(data, dialect, Limits::twisted()).next_item()
        }
        assert_eq!(one(&[5, tb::STRING, 1], Dialect::Pb), None);
        assert_eq!(one(&[8, tb::VOCAB], Dialect::NoVocab), None);
        // A list claiming more elements than there are bytes left.
        assert_eq!(one(&[3, tb::LIST, 0, tb::INT], Dialect::Pb), None);
        assert_eq!(one(&[0, 0, 0, 0, 0, 0, 1, tb::LIST], Dialect::Pb), None);
    }
}
