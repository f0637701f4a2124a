//! Writing foolscap sequences, byte for byte as foolscap's slicers write them.
//!
//! Every byte string (index words, names, `unicode` and `decimal` bodies, plain bytes) goes out
//! through the vocabulary, as foolscap's `sendToken` does: `b"list"` is `04 87` wherever it is.
//! The writer owns the per-direction OPEN counter; a message that fails part-way is dropped by
//! not taking its writer's counter and bytes (see [`Writer::finish`]).

use num_bigint::BigInt;

use crate::banana::encode::{copy_short, put_token, TOKEN_ROOM};
use crate::banana::vocab::{self, const_index, FOOLSCAP_VOCAB};
use crate::banana::{tb, Dialect, Encoder};

/// A value nested deeper than the limit (foolscap's sender asserts at 10000 slicers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    pub limit: usize,
}

impl std::fmt::Display for TooDeep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "value nested deeper than max_depth={} sequences; it cannot be sent", self.limit)
    }
}

impl std::error::Error for TooDeep {}

/// A sequence's type word, with its VOCAB index found once, at compile time, rather than at
/// every OPEN (all but `decimal` are in the vocabulary).
#[derive(Debug, Clone, Copy)]
pub struct Word {
    word: &'static [u8],
    index: Option<u8>,
}

impl Word {
    pub const fn new(word: &'static [u8]) -> Word {
        Word { word, index: const_index(&FOOLSCAP_VOCAB, 0, word) }
    }
}

/// The type words foolscap's slicers write.
pub mod word {
    use super::Word;

    pub const ANSWER: Word = Word::new(b"answer");
    pub const ARGUMENTS: Word = Word::new(b"arguments");
    pub const BOOLEAN: Word = Word::new(b"boolean");
    pub const CALL: Word = Word::new(b"call");
    pub const COPYABLE: Word = Word::new(b"copyable");
    pub const DECIMAL: Word = Word::new(b"decimal");
    pub const DICT: Word = Word::new(b"dict");
    pub const ERROR: Word = Word::new(b"error");
    pub const IMMUTABLE_SET: Word = Word::new(b"immutable-set");
    pub const LIST: Word = Word::new(b"list");
    pub const MY_REFERENCE: Word = Word::new(b"my-reference");
    pub const NONE: Word = Word::new(b"none");
    pub const REFERENCE: Word = Word::new(b"reference");
    pub const SET: Word = Word::new(b"set");
    pub const THEIR_REFERENCE: Word = Word::new(b"their-reference");
    pub const TUPLE: Word = Word::new(b"tuple");
    pub const UNICODE: Word = Word::new(b"unicode");
    pub const YOUR_REFERENCE: Word = Word::new(b"your-reference");
}

/// The VOCAB index of `unicode`.
const UNICODE_INDEX: u8 = match word::UNICODE.index {
    Some(index) => index,
    None => panic!("unicode is a vocabulary word"),
};

pub struct Writer {
    enc: Encoder,
    next_open: u64,
    depth: usize,
    max_depth: usize,
}

impl Writer {
    /// Append to `out`; the next OPEN gets id `next_open`.
    pub fn new(out: Vec<u8>, next_open: u64, max_depth: usize) -> Writer {
        Writer { enc: Encoder::appending(out, Dialect::Foolscap), next_open, depth: 0, max_depth }
    }

    /// The id the next OPEN will get.
    pub fn next_open_id(&self) -> u64 {
        self.next_open
    }

    /// The bytes written and the counter after them (the caller keeps both only if the message
    /// was written whole).
    pub fn finish(self) -> (Vec<u8>, u64) {
        (self.enc.out, self.next_open)
    }

    /// OPEN and the type word; returns the sequence's id (its object number for `reference`).
    #[inline]
    pub fn open(&mut self, word: Word) -> Result<u64, TooDeep> {
        if self.depth >= self.max_depth {
            return Err(TooDeep { limit: self.max_depth });
        }
        self.depth += 1;
        let id = self.next_open;
        self.next_open += 1;
        match word.index {
            Some(index) => {
                let out = &mut self.enc.out;
                out.reserve(TOKEN_ROOM + 2);
                // SAFETY: the OPEN and the two bytes of the VOCAB (an index below 128) are written
                // within the reservation before the length is moved past them.
                unsafe {
                    let start = out.as_mut_ptr().add(out.len());
                    let p = put_token(start, id, tb::OPEN);
                    *p = index;
                    *p.add(1) = tb::VOCAB;
                    out.set_len(out.len() + p.add(2).offset_from(start) as usize);
                }
            }
            None => {
                self.enc.token(id, tb::OPEN);
                self.bytes(word.word);
            }
        }
        Ok(id)
    }

    #[inline]
    pub fn close(&mut self, id: u64) {
        self.depth -= 1;
        self.enc.token(id, tb::CLOSE);
    }

    /// A byte string: VOCAB for a word of the table, else STRING (foolscap has no size limit).
    #[inline]
    pub fn bytes(&mut self, b: &[u8]) {
        self.enc.bytes(b).expect("foolscap strings have no size limit");
    }

    /// The header of a STRING of `len` bytes (at least 128: never a VOCAB word) whose body is
    /// not written here: the caller puts it right after the header's end, [`Self::written`], when
    /// the bytes are sent.
    pub fn string_header(&mut self, len: usize) {
        debug_assert!(len >= 0x80);
        self.enc.string_header(len).expect("foolscap strings have no size limit");
    }

    /// Bytes written so far (those of the buffer the writer appends to included).
    pub fn written(&self) -> usize {
        self.enc.out.len()
    }

    #[inline]
    pub fn int(&mut self, v: i64) {
        self.enc.int(v);
    }

    pub fn big_int(&mut self, v: &BigInt) {
        self.enc.big_int(v).expect("foolscap integers have no size limit");
    }

    #[inline]
    pub fn float(&mut self, f: f64) {
        self.enc.float(f);
    }

    /// `(none)`.
    pub fn none(&mut self) -> Result<(), TooDeep> {
        let id = self.open(word::NONE)?;
        self.close(id);
        Ok(())
    }

    /// `(boolean 0|1)`.
    pub fn boolean(&mut self, b: bool) -> Result<(), TooDeep> {
        let id = self.open(word::BOOLEAN)?;
        self.int(i64::from(b));
        self.close(id);
        Ok(())
    }

    /// `(unicode UTF8)`.
    #[inline(always)]
    pub fn unicode(&mut self, utf8: &[u8]) -> Result<(), TooDeep> {
        if utf8.len() >= 0x80 || self.depth >= self.max_depth || vocab::foolscap_index(utf8).is_some() {
            return self.unicode_general(utf8);
        }
        // Most text: a short string, not a word of the vocabulary, its four tokens written in
        // one reservation.
        let id = self.next_open;
        self.next_open += 1;
        let out = &mut self.enc.out;
        out.reserve(2 * TOKEN_ROOM + 4 + utf8.len());
        // SAFETY: the OPEN, the VOCAB and STRING headers (two bytes each), the string and the
        // CLOSE are written within the reservation before the length is moved past them.
        unsafe {
            let start = out.as_mut_ptr().add(out.len());
            let mut p = put_token(start, id, tb::OPEN);
            *p = UNICODE_INDEX;
            *p.add(1) = tb::VOCAB;
            *p.add(2) = utf8.len() as u8;
            *p.add(3) = tb::STRING;
            p = p.add(4);
            copy_short(utf8, p);
            p = put_token(p.add(utf8.len()), id, tb::CLOSE);
            out.set_len(out.len() + p.offset_from(start) as usize);
        }
        Ok(())
    }

    #[inline(never)]
    fn unicode_general(&mut self, utf8: &[u8]) -> Result<(), TooDeep> {
        let id = self.open(word::UNICODE)?;
        self.bytes(utf8);
        self.close(id);
        Ok(())
    }

    /// `(decimal TEXT)`, TEXT being `str()` of the decimal.
    pub fn decimal(&mut self, text: &[u8]) -> Result<(), TooDeep> {
        let id = self.open(word::DECIMAL)?;
        self.bytes(text);
        self.close(id);
        Ok(())
    }

    /// `(reference N)`: the object opened as N earlier in the same message.
    pub fn reference(&mut self, n: u64) -> Result<(), TooDeep> {
        let id = self.open(word::REFERENCE)?;
        match i64::try_from(n) {
            Ok(n) => self.int(n),
            Err(_) => self.big_int(&BigInt::from(n)),
        }
        self.close(id);
        Ok(())
    }

    /// `(my-reference clid)`, or on the first send over a connection `(my-reference clid IFACE
    /// [FURL])`, IFACE being the remote interface name or empty.
    pub fn my_reference(&mut self, clid: i64, first_send: Option<(&[u8], Option<&[u8]>)>) -> Result<(), TooDeep> {
        let id = self.open(word::MY_REFERENCE)?;
        self.int(clid);
        if let Some((iface, furl)) = first_send {
            self.bytes(iface);
            if let Some(furl) = furl {
                self.bytes(furl);
            }
        }
        self.close(id);
        Ok(())
    }

    /// `(your-reference clid)`: one of the receiver's own objects.
    pub fn your_reference(&mut self, clid: i64) -> Result<(), TooDeep> {
        let id = self.open(word::YOUR_REFERENCE)?;
        self.int(clid);
        self.close(id);
        Ok(())
    }

    /// `(their-reference giftID FURL)`: an object in a third Tub.
    pub fn their_reference(&mut self, giftid: i64, furl: &[u8]) -> Result<(), TooDeep> {
        let id = self.open(word::THEIR_REFERENCE)?;
        self.int(giftid);
        self.bytes(furl);
        self.close(id);
        Ok(())
    }

    /// PING (foolscap writes 0 with no header).
    pub fn ping(&mut self, n: u64) {
        self.enc.numbered(tb::PING, n);
    }

    /// PONG, echoing a PING's number.
    pub fn pong(&mut self, n: u64) {
        self.enc.numbered(tb::PONG, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// `f` writes into a writer whose next OPEN is `first`; returns the bytes.
    fn written(first: u64, f: impl FnOnce(&mut Writer) -> Result<(), TooDeep>) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), first, 500);
        f(&mut w).unwrap();
        w.finish().0
    }

    #[test]
    fn captured_calls() {
        // B -> A: add(1, 2), then add(a=-5, b=2**40), from a capture between stock foolscap Tubs.
        let add = written(2, |w| {
            let c = w.open(word::CALL)?;
            w.int(2);
            w.int(1);
            w.bytes(b"add");
            let a = w.open(word::ARGUMENTS)?;
            w.int(2);
            w.int(1);
            w.int(2);
            w.close(a);
            w.close(c);
            Ok(())
        });
        assert_eq!(add, hex("02880b8702810181038261646403880c8702810181028103890289"));
        let kwargs = written(4, |w| {
            let c = w.open(word::CALL)?;
            w.int(3);
            w.int(1);
            w.bytes(b"add");
            let a = w.open(word::ARGUMENTS)?;
            w.int(0);
            w.bytes(b"a");
            w.int(-5);
            w.bytes(b"b");
            w.int(1 << 40);
            w.close(a);
            w.close(c);
            Ok(())
        });
        assert_eq!(kwargs, hex("04880b8703810181038261646405880c8700810182610583018262068501000000000005890489"));
    }

    #[test]
    fn captured_answers() {
        let none = written(0x2b, |w| {
            let a = w.open(word::ANSWER)?;
            w.int(18);
            w.none()?;
            w.close(a);
            Ok(())
        });
        assert_eq!(none, hex("2b880d8712812c8800872c892b89"));
        // (answer 13 (my-reference 3 "RISized..." FURL)): the interface name before the FURL.
        let furl = b"pb://p3n3laqzc6zqyn7t6mxkckhqjq4whutl@tcp:127.0.0.1:51953/wnb7kr25qfawxkrsv2uunjlwuyv7avzo";
        let reference = written(0x21, |w| {
            let a = w.open(word::ANSWER)?;
            w.int(13);
            w.my_reference(3, Some((b"RISized.pbfast-capture.example", Some(furl))))?;
            w.close(a);
            Ok(())
        });
        let mut expect = hex("21880d870d8122880f8703811e82");
        expect.extend_from_slice(b"RISized.pbfast-capture.example");
        expect.extend(hex("5a82"));
        expect.extend_from_slice(furl);
        expect.extend(hex("22892189"));
        assert_eq!(reference, expect);
        let again = written(0x1a, |w| {
            let a = w.open(word::ANSWER)?;
            w.int(8);
            w.my_reference(2, None)?;
            w.close(a);
            Ok(())
        });
        assert_eq!(again, hex("1a880d8708811b880f8702811b891a89"));
        let shared = written(0x11, |w| {
            let a = w.open(word::ANSWER)?;
            w.int(5);
            let outer = w.open(word::LIST)?;
            let inner = w.open(word::LIST)?;
            w.int(1);
            w.close(inner);
            w.reference(inner)?;
            w.close(outer);
            w.close(a);
            Ok(())
        });
        assert_eq!(shared, hex("11880d870581128804871388048701811389148802871381148912891189"));
    }

    #[test]
    fn vocabulary_words_everywhere_and_pings() {
        // A unicode "list" has its body sent as VOCAB 4, as foolscap's sendToken does.
        assert_eq!(written(0, |w| w.unicode(b"list")), hex("0088088704870089"));
        let mut w = Writer::new(Vec::new(), 7, 500);
        w.ping(0);
        w.pong(0);
        w.pong(300);
        assert_eq!(w.finish(), (hex("8e8f2c028f"), 7));
    }

    #[test]
    fn type_words() {
        assert_eq!(word::LIST.index, Some(4));
        assert_eq!(word::YOUR_REFERENCE.index, Some(16));
        // Not in the vocabulary: a STRING.
        assert_eq!(word::DECIMAL.index, None);
        assert_eq!(written(0, |w| w.decimal(b"1.5")), hex("00880782646563696d616c0382312e350089"));
    }

    #[test]
    fn depth_is_bounded() {
        let mut w = Writer::new(Vec::new(), 0, 3);
        w.open(word::LIST).unwrap();
        w.open(word::LIST).unwrap();
        w.open(word::LIST).unwrap();
        assert_eq!(w.open(word::LIST), Err(TooDeep { limit: 3 }));
        assert_eq!(w.none(), Err(TooDeep { limit: 3 }));
    }
}
