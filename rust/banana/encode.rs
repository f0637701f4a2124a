//! Token encoding into a caller-owned buffer, with Twisted's (or foolscap's) sender rules.

use num_bigint::{BigInt, BigUint, Sign};

use super::{tb, BananaError, Dialect, ErrorKind, MAX_INT_BITS, PB_SMALL_INT_MAX, SIZE_LIMIT};

/// Appends tokens to `out`. Never allocates except by growing `out`.
pub struct Encoder {
    pub out: Vec<u8>,
    pub dialect: Dialect,
    /// The longest list (elements) or string (bytes) sent, and the name of the setting it comes
    /// from (None: Twisted's `SIZE_LIMIT`, the default of the Twisted dialects; foolscap sends
    /// strings of any length).
    pub max_element: (usize, Option<&'static str>),
}

impl Encoder {
    pub fn new(dialect: Dialect) -> Encoder {
        Encoder::appending(Vec::new(), dialect)
    }

    pub fn with_capacity(dialect: Dialect, capacity: usize) -> Encoder {
        Encoder::appending(Vec::with_capacity(capacity), dialect)
    }

    /// An encoder that appends to `out`, with the dialect's element limit.
    pub fn appending(out: Vec<u8>, dialect: Dialect) -> Encoder {
        let limit = if dialect == Dialect::Foolscap { usize::MAX } else { SIZE_LIMIT };
        Encoder { out, dialect, max_element: (limit, None) }
    }

    fn too_long(&self, what: &'static str, len: usize) -> BananaError {
        let (limit, setting) = self.max_element;
        BananaError::local(ErrorKind::TooLongToSend { what, len, limit, setting })
    }

    /// Base-128 header, least significant group first; zero is a single `00`.
    #[inline]
    pub fn header(&mut self, mut v: u64) {
        loop {
            self.out.push((v & 0x7f) as u8);
            v >>= 7;
            if v == 0 {
                return;
            }
        }
    }

    /// A header and its type byte, in one reservation (a u64 takes at most 10 groups).
    #[inline(always)]
    pub(crate) fn token(&mut self, v: u64, type_byte: u8) {
        self.out.reserve(TOKEN_ROOM);
        // SAFETY: at most TOKEN_ROOM bytes are written after the current end, within the
        // reservation, before the length is moved past them.
        unsafe {
            let start = self.out.as_mut_ptr().add(self.out.len());
            let end = put_token(start, v, type_byte);
            self.out.set_len(self.out.len() + end.offset_from(start) as usize);
        }
    }

    fn header_big(&mut self, v: &BigUint) {
        let bits = v.bits();
        if bits <= 64 {
            return self.header(u64::try_from(v).expect("fits in 64 bits"));
        }
        let bytes = v.to_bytes_le();
        let groups = bits.div_ceil(7);
        for g in 0..groups {
            let bit = g * 7;
            let (byte, shift) = ((bit / 8) as usize, bit % 8);
            let lo = u32::from(bytes[byte]);
            let hi = u32::from(bytes.get(byte + 1).copied().unwrap_or(0));
            self.out.push((((hi << 8 | lo) >> shift) & 0x7f) as u8);
        }
    }

    /// A Twisted LIST header for `len` elements.
    #[inline(always)]
    pub fn list(&mut self, len: usize) -> Result<(), BananaError> {
        if len > self.max_element.0 {
            return Err(self.too_long("list/tuple", len));
        }
        self.token(len as u64, tb::LIST);
        Ok(())
    }

    /// A byte string; in a dialect with a vocabulary, a word of it goes out as VOCAB.
    #[inline(always)]
    pub fn bytes(&mut self, b: &[u8]) -> Result<(), BananaError> {
        if let Some(index) = self.dialect.vocab_index(b) {
            self.vocab(index);
            return Ok(());
        }
        self.string(b)
    }

    /// The vocabulary word `index` as VOCAB.
    #[inline(always)]
    pub fn vocab(&mut self, index: u8) {
        self.token(u64::from(index), tb::VOCAB);
    }

    /// A byte string as STRING, never VOCAB.
    #[inline(always)]
    pub fn string(&mut self, b: &[u8]) -> Result<(), BananaError> {
        if b.len() < 0x80 {
            self.short_string_after(&[], b);
            return Ok(());
        }
        self.string_header(b.len())?;
        self.out.extend_from_slice(b);
        Ok(())
    }

    /// The header of a STRING of `len` bytes whose body the caller writes after it (or puts
    /// there when the bytes are sent: see the foolscap writer's `string_header`).
    #[inline]
    pub fn string_header(&mut self, len: usize) -> Result<(), BananaError> {
        if len > self.max_element.0 {
            return Err(self.too_long("byte string", len));
        }
        self.token(len as u64, tb::STRING);
        Ok(())
    }

    /// The raw bytes `prefix`, then `b` (under 128 bytes) as STRING, never VOCAB: one reservation
    /// for all of it (most strings are short), the bytes copied without a call to memcpy.
    #[inline(always)]
    pub fn short_string_after(&mut self, prefix: &[u8], b: &[u8]) {
        debug_assert!(b.len() < 0x80);
        let len = prefix.len() + 2 + b.len();
        self.out.reserve(len);
        // SAFETY: the reservation above leaves room for the `len` bytes written after the current
        // end before the length is moved past them.
        unsafe {
            let end = self.out.len();
            let dst = self.out.as_mut_ptr().add(end);
            std::ptr::copy_nonoverlapping(prefix.as_ptr(), dst, prefix.len());
            let dst = dst.add(prefix.len());
            *dst = b.len() as u8;
            *dst.add(1) = tb::STRING;
            copy_short(b, dst.add(2));
            self.out.set_len(end + len);
        }
    }

    #[inline]
    pub fn float(&mut self, f: f64) {
        let mut token = [tb::FLOAT; 9];
        token[1..].copy_from_slice(&f.to_be_bytes());
        self.out.extend_from_slice(&token);
    }

    /// An integer that fits in an `i64`.
    #[inline(always)]
    pub fn int(&mut self, v: i64) {
        let magnitude = v.unsigned_abs();
        let small = magnitude <= PB_SMALL_INT_MAX as u64 || (v < 0 && magnitude == 1 << 31);
        match (v >= 0, small, self.dialect) {
            (true, true, _) => {
                self.token(magnitude, tb::INT);
            }
            (false, true, _) => {
                self.token(magnitude, tb::NEG);
            }
            (nonneg, false, Dialect::Foolscap) => self.foolscap_long(nonneg, &magnitude.to_be_bytes()),
            (nonneg, false, _) => {
                self.token(magnitude, if nonneg { tb::LONGINT } else { tb::LONGNEG });
            }
        }
    }

    /// An integer of any size. Twisted dialects refuse magnitudes of 2**448 and beyond.
    pub fn big_int(&mut self, v: &BigInt) -> Result<(), BananaError> {
        if let Ok(small) = i64::try_from(v) {
            self.int(small);
            return Ok(());
        }
        let (sign, magnitude) = (v.sign(), v.magnitude());
        if self.dialect == Dialect::Foolscap {
            self.foolscap_long(sign != Sign::Minus, &magnitude.to_bytes_be());
            return Ok(());
        }
        if magnitude.bits() > MAX_INT_BITS {
            return Err(BananaError::local(ErrorKind::IntTooLarge));
        }
        self.header_big(magnitude);
        self.out.push(if sign == Sign::Minus { tb::LONGNEG } else { tb::LONGINT });
        Ok(())
    }

    /// foolscap LONGINT/LONGNEG: header = byte count, body = minimal big-endian magnitude.
    fn foolscap_long(&mut self, nonneg: bool, be: &[u8]) {
        let first = be.iter().position(|&b| b != 0).unwrap_or(be.len());
        let body = &be[first..];
        self.header(body.len() as u64);
        self.out.push(if nonneg { tb::LONGINT } else { tb::LONGNEG });
        self.out.extend_from_slice(body);
    }

    /// A foolscap token that carries only a header number (OPEN, CLOSE, ABORT, PING, PONG).
    /// foolscap writes PING and PONG 0 with an empty header, and a `00` header everywhere else.
    pub fn numbered(&mut self, type_byte: u8, n: u64) {
        if !(n == 0 && (type_byte == tb::PING || type_byte == tb::PONG)) {
            self.header(n);
        }
        self.out.push(type_byte);
    }

    /// A foolscap ERROR token; the message is cut to 1000 bytes as foolscap does.
    pub fn error(&mut self, message: &[u8]) {
        let message = &message[..message.len().min(super::FOOLSCAP_ERROR_LIMIT)];
        self.header(message.len() as u64);
        self.out.push(tb::ERROR);
        self.out.extend_from_slice(message);
    }
}

/// The most bytes one token's header and type byte take (a u64 is at most 10 groups of 7 bits).
pub(crate) const TOKEN_ROOM: usize = 11;

/// Write the header of `v` and `type_byte` at `p`; returns where they end.
///
/// # Safety
///
/// `p` is valid for writes of [`TOKEN_ROOM`] bytes.
#[inline(always)]
pub(crate) unsafe fn put_token(mut p: *mut u8, mut v: u64, type_byte: u8) -> *mut u8 {
    // SAFETY: at most TOKEN_ROOM bytes are written from `p` (the caller's contract).
    unsafe {
        while v >= 0x80 {
            *p = (v & 0x7f) as u8;
            p = p.add(1);
            v >>= 7;
        }
        *p = v as u8;
        *p.add(1) = type_byte;
        p.add(2)
    }
}

/// Copy `src` to `dst` by overlapping word moves, which beat a call to memcpy for the few bytes
/// of a typical string.
///
/// # Safety
///
/// `dst` is valid for writes of `src.len()` bytes and does not overlap `src`.
#[inline(always)]
pub(crate) unsafe fn copy_short(src: &[u8], dst: *mut u8) {
    use std::ptr::{read_unaligned, write_unaligned};
    let (n, s) = (src.len(), src.as_ptr());
    // SAFETY: every read is within `src` and every write within the `n` bytes at `dst` (the
    // caller's contract): the two moves of each size cover [0, n) from both ends.
    unsafe {
        match n {
            0 => {}
            1..=3 => {
                *dst = *s;
                *dst.add(n / 2) = *s.add(n / 2);
                *dst.add(n - 1) = *s.add(n - 1);
            }
            4..=7 => {
                let (a, b) = (read_unaligned(s.cast::<u32>()), read_unaligned(s.add(n - 4).cast::<u32>()));
                write_unaligned(dst.cast::<u32>(), a);
                write_unaligned(dst.add(n - 4).cast::<u32>(), b);
            }
            8..=16 => {
                let (a, b) = (read_unaligned(s.cast::<u64>()), read_unaligned(s.add(n - 8).cast::<u64>()));
                write_unaligned(dst.cast::<u64>(), a);
                write_unaligned(dst.add(n - 8).cast::<u64>(), b);
            }
            _ => std::ptr::copy_nonoverlapping(s, dst, n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_dictionary_bytes_match_the_encoder() {
        for dialect in [Dialect::Pb, Dialect::NoVocab] {
            let mut enc = Encoder::new(dialect);
            enc.list(1).unwrap();
            enc.bytes(b"dictionary").unwrap();
            assert_eq!(enc.out, dialect.empty_dictionary());
        }
    }

    fn enc(f: impl FnOnce(&mut Encoder)) -> Vec<u8> {
        let mut e = Encoder::new(Dialect::Pb);
        f(&mut e);
        e.out
    }

    #[test]
    fn ints_follow_twisted_boundaries() {
        assert_eq!(enc(|e| e.int(0)), [0x00, tb::INT]);
        assert_eq!(enc(|e| e.int(300)), [0x2c, 0x02, tb::INT]);
        assert_eq!(enc(|e| e.int((1 << 31) - 1)), [0x7f, 0x7f, 0x7f, 0x7f, 0x07, tb::INT]);
        assert_eq!(enc(|e| e.int(1 << 31)), [0, 0, 0, 0, 0x08, tb::LONGINT]);
        assert_eq!(enc(|e| e.int(-(1 << 31))), [0, 0, 0, 0, 0x08, tb::NEG]);
        assert_eq!(enc(|e| e.int(-(1 << 31) - 1)), [1, 0, 0, 0, 0x08, tb::LONGNEG]);
        assert_eq!(enc(|e| e.int(i64::MIN)), [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, tb::LONGNEG]);
    }

    #[test]
    fn big_ints() {
        let v = BigInt::from(1u8) << 200;
        let mut expect = vec![0u8; 28];
        expect.extend([0x10, tb::LONGINT]);
        assert_eq!(enc(|e| e.big_int(&v).unwrap()), expect);
        let max = (BigInt::from(1u8) << 448) - 1;
        let out = enc(|e| e.big_int(&max).unwrap());
        assert_eq!(out.len(), 65);
        let mut e = Encoder::new(Dialect::Pb);
        assert_eq!(e.big_int(&(max + 1)).unwrap_err().kind, ErrorKind::IntTooLarge);
    }

    #[test]
    fn foolscap_ints() {
        let mut e = Encoder::new(Dialect::Foolscap);
        e.int(1 << 40);
        e.int(-5);
        assert_eq!(e.out, [6, tb::LONGINT, 1, 0, 0, 0, 0, 0, 5, tb::NEG]);
    }

    #[test]
    fn strings_of_every_short_length() {
        let text: Vec<u8> = (0..200u8).collect();
        for n in 0..=200 {
            let mut e = Encoder::new(Dialect::NoVocab);
            e.string(&text[..n]).unwrap();
            let mut header = Encoder::new(Dialect::NoVocab);
            header.header(n as u64);
            assert_eq!(e.out, [&header.out[..], &[tb::STRING], &text[..n]].concat(), "length {n}");
        }
    }

    #[test]
    fn vocab_and_limits() {
        assert_eq!(enc(|e| e.bytes(b"message").unwrap()), [0x1a, tb::VOCAB]);
        let mut e = Encoder::new(Dialect::NoVocab);
        e.bytes(b"list").unwrap();
        assert_eq!(e.out, [4, tb::STRING, b'l', b'i', b's', b't']);
        let mut e = Encoder::new(Dialect::Pb);
        assert!(e.bytes(&vec![0; SIZE_LIMIT + 1]).is_err());
        assert!(e.list(SIZE_LIMIT + 1).is_err());
        assert!(e.list(SIZE_LIMIT).is_ok());
        let message = e.bytes(&vec![0; SIZE_LIMIT + 1]).unwrap_err().to_string();
        assert_eq!(message, format!("byte string is too long to send ({} > {SIZE_LIMIT})", SIZE_LIMIT + 1));
        // A limit raised between pbfast peers names its setting.
        e.max_element = (SIZE_LIMIT * 2, Some("max_message_size"));
        assert!(e.bytes(&vec![0; SIZE_LIMIT + 1]).is_ok());
        let refused = e.bytes(&vec![0; SIZE_LIMIT * 2 + 1]).unwrap_err();
        assert_eq!(refused.limit_name(), Some("max_message_size"));
        assert_eq!(
            refused.to_string(),
            format!(
                "byte string of {} bytes is too long to send: the limit is max_message_size={}",
                SIZE_LIMIT * 2 + 1,
                SIZE_LIMIT * 2
            )
        );
        let mut f = Encoder::new(Dialect::Foolscap);
        assert!(f.bytes(&vec![0; SIZE_LIMIT + 1]).is_ok());
    }
}
