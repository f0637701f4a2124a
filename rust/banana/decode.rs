//! Token-level decoding: one token at a time from a byte slice, with the dialect's rules and the
//! decoder's limits applied as soon as a header is complete (before any body is buffered).

use num_bigint::{BigInt, BigUint, Sign};

use super::{tb, BananaError, Dialect, ErrorKind, Integer, Limits, FOOLSCAP_ERROR_LIMIT};

/// One decoded token. Byte strings borrow from the input.
#[derive(Debug, Clone, PartialEq)]
pub enum Token<'a> {
    /// Twisted LIST: the number of elements that follow.
    List(u64),
    /// INT, NEG, LONGINT or LONGNEG (`type_byte` says which); `value` carries the sign.
    Int {
        type_byte: u8,
        value: Integer,
    },
    String(&'a [u8]),
    Float(f64),
    /// A vocabulary reference and the word it stands for.
    Vocab {
        index: u64,
        word: &'static [u8],
    },
    Open(u64),
    Close(u64),
    Abort(u64),
    /// foolscap ERROR: the peer's UTF-8 message; the peer hangs up after it.
    Error(&'a [u8]),
    Ping(u64),
    Pong(u64),
}

impl Token<'_> {
    /// The type byte this token was read from.
    pub fn type_byte(&self) -> u8 {
        match self {
            Token::List(_) => tb::LIST,
            Token::Int { type_byte, .. } => *type_byte,
            Token::String(_) => tb::STRING,
            Token::Float(_) => tb::FLOAT,
            Token::Vocab { .. } => tb::VOCAB,
            Token::Open(_) => tb::OPEN,
            Token::Close(_) => tb::CLOSE,
            Token::Abort(_) => tb::ABORT,
            Token::Error(_) => tb::ERROR,
            Token::Ping(_) => tb::PING,
            Token::Pong(_) => tb::PONG,
        }
    }
}

/// The result of asking for the next token.
#[derive(Debug, Clone, PartialEq)]
pub enum Step<'a> {
    /// A whole token and the offset just past it.
    Token(Token<'a>, usize),
    /// The token starting at the current position is incomplete. `need` is the total length of
    /// that token when it is already known (string bodies, floats), otherwise 0.
    Incomplete { need: usize },
}

/// What [`TokenReader::skip`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A LIST of this many elements; its elements start at the offset.
    List(u64, usize),
    /// Any other token, ending at the offset.
    Atom(usize),
    /// As [`Step::Incomplete`].
    Incomplete { need: usize },
}

/// Reads tokens from `data`; `base` is the stream offset of `data[0]`, used in error offsets.
pub struct TokenReader<'a> {
    data: &'a [u8],
    base: u64,
    dialect: Dialect,
    limits: Limits,
}

impl<'a> TokenReader<'a> {
    pub fn new(data: &'a [u8], base: u64, dialect: Dialect, limits: Limits) -> TokenReader<'a> {
        TokenReader { data, base, dialect, limits }
    }

    /// Decode the token that starts at `pos`.
    #[inline(always)]
    pub fn step(&self, pos: usize) -> Result<Step<'a>, BananaError> {
        // Fast path: most tokens have a header of at most one byte and are lists, small ints,
        // short strings or vocabulary words.
        let data = self.data;
        let (value, at) = match (data.get(pos), data.get(pos + 1)) {
            (Some(&b0), _) if b0 & 0x80 != 0 => (0u64, pos),
            (Some(&b0), Some(&b1)) if b1 & 0x80 != 0 => (u64::from(b0), pos + 1),
            _ => return self.step_general(pos),
        };
        let body = at + 1;
        let limit = self.limits.max_element_size as u64;
        let token = match data[at] {
            tb::LIST if self.dialect != Dialect::Foolscap && value <= limit => Token::List(value),
            tb::INT => Token::Int { type_byte: tb::INT, value: Integer::Small(value as i64) },
            tb::NEG => Token::Int { type_byte: tb::NEG, value: Integer::Small(-(value as i64)) },
            tb::STRING if value <= limit => {
                let end = body + value as usize;
                return Ok(match data.get(body..end) {
                    Some(s) => Step::Token(Token::String(s), end),
                    None => Step::Incomplete { need: end - pos },
                });
            }
            tb::VOCAB if self.dialect == Dialect::Pb && (1..=31).contains(&value) => {
                Token::Vocab { index: value, word: super::vocab::PB_VOCAB[value as usize] }
            }
            tb::VOCAB if self.dialect == Dialect::Foolscap && value < super::vocab::FOOLSCAP_VOCAB.len() as u64 => {
                Token::Vocab { index: value, word: super::vocab::FOOLSCAP_VOCAB[value as usize] }
            }
            tb::OPEN if self.dialect == Dialect::Foolscap => Token::Open(value),
            tb::CLOSE if self.dialect == Dialect::Foolscap => Token::Close(value),
            _ => return self.step_general(pos),
        };
        Ok(Step::Token(token, body))
    }

    /// Where the token at `pos` ends, for scanning without building: the framer's hot loop.
    /// Same validation as [`TokenReader::step`], with a small result.
    #[inline]
    pub fn skip(&self, pos: usize) -> Result<Skip, BananaError> {
        let data = self.data;
        let (value, at) = match (data.get(pos), data.get(pos + 1)) {
            (Some(&b0), _) if b0 & 0x80 != 0 => (0u64, pos),
            (Some(&b0), Some(&b1)) if b1 & 0x80 != 0 => (u64::from(b0), pos + 1),
            _ => return self.skip_general(pos),
        };
        let limit = self.limits.max_element_size as u64;
        let body = at + 1;
        Ok(match data[at] {
            tb::LIST if self.dialect != Dialect::Foolscap && value <= limit => Skip::List(value, body),
            tb::INT | tb::NEG => Skip::Atom(body),
            tb::STRING if value <= limit => match body + value as usize {
                end if end <= data.len() => Skip::Atom(end),
                end => Skip::Incomplete { need: end - pos },
            },
            tb::FLOAT if body + 8 <= data.len() => Skip::Atom(body + 8),
            tb::VOCAB if self.dialect == Dialect::Pb && (1..=31).contains(&value) => Skip::Atom(body),
            _ => return self.skip_general(pos),
        })
    }

    #[cold]
    #[inline(never)]
    fn skip_general(&self, pos: usize) -> Result<Skip, BananaError> {
        Ok(match self.step_general(pos)? {
            Step::Token(Token::List(n), end) => Skip::List(n, end),
            Step::Token(_, end) => Skip::Atom(end),
            Step::Incomplete { need } => Skip::Incomplete { need },
        })
    }

    /// Every token, every dialect, every error.
    #[cold]
    #[inline(never)]
    fn step_general(&self, pos: usize) -> Result<Step<'a>, BananaError> {
        let data = self.data;
        let max_header = self.limits.max_header_length;
        let mut i = pos;
        loop {
            match data.get(i) {
                None => return Ok(Step::Incomplete { need: 0 }),
                Some(&b) if b & 0x80 != 0 => break,
                Some(_) => {
                    i += 1;
                    if i - pos > max_header {
                        return Err(self.err(pos, ErrorKind::HeaderTooLong { limit: max_header }));
                    }
                }
            }
        }
        let header = &data[pos..i];
        let type_byte = data[i];
        let body = i + 1;
        let token = match type_byte {
            tb::LIST => {
                if self.dialect == Dialect::Foolscap {
                    return Err(self.err(i, ErrorKind::ListInFoolscap));
                }
                let n = self.length(pos, header, |len, limit| ErrorKind::ListTooLong { len, limit })?;
                Token::List(n as u64)
            }
            tb::STRING => {
                let n = self.length(pos, header, |len, limit| ErrorKind::StringTooLong { len, limit })?;
                return Ok(match data.get(body..body + n) {
                    Some(s) => Step::Token(Token::String(s), body + n),
                    None => Step::Incomplete { need: body + n - pos },
                });
            }
            tb::INT | tb::NEG => Token::Int { type_byte, value: signed(header_value(header), type_byte == tb::NEG) },
            tb::LONGINT | tb::LONGNEG if self.dialect != Dialect::Foolscap => {
                Token::Int { type_byte, value: signed(header_value(header), type_byte == tb::LONGNEG) }
            }
            tb::LONGINT | tb::LONGNEG => {
                // foolscap: the header is the byte length of a big-endian magnitude.
                let n = self.length(pos, header, |len, limit| ErrorKind::StringTooLong { len, limit })?;
                let Some(bytes) = data.get(body..body + n) else {
                    return Ok(Step::Incomplete { need: body + n - pos });
                };
                let sign = if type_byte == tb::LONGNEG { Sign::Minus } else { Sign::Plus };
                let value = Integer::from_big(BigInt::from_biguint(sign, BigUint::from_bytes_be(bytes)));
                return Ok(Step::Token(Token::Int { type_byte, value }, body + n));
            }
            tb::FLOAT => {
                return Ok(match data.get(body..body + 8) {
                    Some(s) => {
                        let raw: [u8; 8] = s.try_into().expect("slice of length 8");
                        Step::Token(Token::Float(f64::from_be_bytes(raw)), body + 8)
                    }
                    None => Step::Incomplete { need: body + 8 - pos },
                });
            }
            tb::VOCAB => {
                if self.dialect == Dialect::NoVocab {
                    return Err(self.err(i, ErrorKind::VocabNotAllowed));
                }
                let index = header_value(header);
                let word = match &index {
                    HeaderValue::Small(n) => self.dialect.vocab_word(*n),
                    HeaderValue::Big(_) => None,
                };
                match (word, index) {
                    (Some(word), HeaderValue::Small(index)) => Token::Vocab { index, word },
                    (_, index) => return Err(self.err(pos, ErrorKind::UnknownVocab(index.to_string()))),
                }
            }
            tb::OPEN | tb::CLOSE | tb::ABORT | tb::PING | tb::PONG if self.dialect == Dialect::Foolscap => {
                let HeaderValue::Small(n) = header_value(header) else {
                    return Err(self.err(pos, ErrorKind::HeaderValueTooLarge));
                };
                match type_byte {
                    tb::OPEN => Token::Open(n),
                    tb::CLOSE => Token::Close(n),
                    tb::ABORT => Token::Abort(n),
                    tb::PING => Token::Ping(n),
                    _ => Token::Pong(n),
                }
            }
            tb::ERROR if self.dialect == Dialect::Foolscap => {
                let limit = FOOLSCAP_ERROR_LIMIT;
                let n = match header_value(header) {
                    HeaderValue::Small(n) if n <= limit as u64 => n as usize,
                    v => return Err(self.err(pos, ErrorKind::StringTooLong { len: v.to_string(), limit })),
                };
                return Ok(match data.get(body..body + n) {
                    Some(s) => Step::Token(Token::Error(s), body + n),
                    None => Step::Incomplete { need: body + n - pos },
                });
            }
            other => return Err(self.err(i, ErrorKind::InvalidTypeByte(other))),
        };
        Ok(Step::Token(token, body))
    }

    /// A header that is a length, checked against `max_element_size`.
    fn length(
        &self,
        pos: usize,
        header: &[u8],
        kind: impl FnOnce(String, usize) -> ErrorKind,
    ) -> Result<usize, BananaError> {
        let limit = self.limits.max_element_size;
        match header_value(header) {
            HeaderValue::Small(n) if n <= limit as u64 => Ok(n as usize),
            // Elements may be as long as a message (between pbfast peers that speak `large`):
            // the limit passed is the message's.
            _ if limit == self.limits.max_message_size => {
                Err(self.err(pos, ErrorKind::MessageTooLarge { limit: self.limits.max_message_size }))
            }
            v => Err(self.err(pos, kind(v.to_string(), limit))),
        }
    }

    fn err(&self, pos: usize, kind: ErrorKind) -> BananaError {
        BananaError::at(self.base + pos as u64, kind)
    }
}

/// An unsigned header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Small(u64),
    Big(BigUint),
}

impl std::fmt::Display for HeaderValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderValue::Small(n) => write!(f, "{n}"),
            HeaderValue::Big(n) => write!(f, "{n}"),
        }
    }
}

/// Value of a base-128, least-significant-first header. Empty means 0 and extra high-order zero
/// groups are accepted, as Twisted does.
#[inline]
pub fn header_value(header: &[u8]) -> HeaderValue {
    let significant = header.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let header = &header[..significant];
    if header.len() <= 9 {
        let mut v = 0u64;
        for &b in header.iter().rev() {
            v = (v << 7) | u64::from(b);
        }
        return HeaderValue::Small(v);
    }
    // Pack the 7-bit groups into little-endian bytes.
    let mut bytes = Vec::with_capacity(header.len() * 7 / 8 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in header {
        acc |= u32::from(b) << bits;
        bits += 7;
        while bits >= 8 {
            bytes.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
    if bits > 0 {
        bytes.push(acc as u8);
    }
    let v = BigUint::from_bytes_le(&bytes);
    match u64::try_from(&v) {
        Ok(small) => HeaderValue::Small(small),
        Err(_) => HeaderValue::Big(v),
    }
}

fn signed(v: HeaderValue, negative: bool) -> Integer {
    match v {
        HeaderValue::Small(n) if !negative && n <= i64::MAX as u64 => Integer::Small(n as i64),
        HeaderValue::Small(n) if negative && n <= 1u64 << 63 => Integer::Small((n as i64).wrapping_neg()),
        HeaderValue::Small(n) => Integer::Big(BigInt::from_biguint(sign_of(negative), BigUint::from(n))),
        HeaderValue::Big(b) => Integer::Big(BigInt::from_biguint(sign_of(negative), b)),
    }
}

fn sign_of(negative: bool) -> Sign {
    if negative {
        Sign::Minus
    } else {
        Sign::Plus
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(data: &[u8], dialect: Dialect) -> Result<Step<'_>, BananaError> {
        TokenReader::new(data, 0, dialect, Limits::twisted()).step(0)
    }

    #[test]
    fn headers() {
        assert_eq!(header_value(&[]), HeaderValue::Small(0));
        assert_eq!(header_value(&[0x2c, 0x02]), HeaderValue::Small(300));
        assert_eq!(header_value(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), HeaderValue::Small(1));
        let mut big = vec![0u8; 28];
        big.push(0x10);
        assert_eq!(header_value(&big), HeaderValue::Big(BigUint::from(1u8) << 200));
        // 10 groups that still fit in u64.
        assert_eq!(header_value(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), HeaderValue::Small(1 << 63));
    }

    #[test]
    fn negative_extremes() {
        // NEG with magnitude 2**63 is i64::MIN.
        let mut h = vec![0u8; 9];
        h.push(1);
        h.push(tb::NEG);
        let Step::Token(Token::Int { value, .. }, _) = one(&h, Dialect::Pb).unwrap() else { panic!() };
        assert_eq!(value, Integer::Small(i64::MIN));
    }

    #[test]
    fn incomplete_reports_need() {
        assert_eq!(one(&[0x05, tb::STRING, b'a'], Dialect::Pb).unwrap(), Step::Incomplete { need: 7 });
        assert_eq!(one(&[tb::FLOAT, 0], Dialect::Pb).unwrap(), Step::Incomplete { need: 9 });
        assert_eq!(one(&[0x05, 0x05], Dialect::Pb).unwrap(), Step::Incomplete { need: 0 });
    }

    #[test]
    fn header_limit_is_64() {
        let mut h = vec![0u8; 64];
        h.push(tb::INT);
        assert!(matches!(one(&h, Dialect::Pb).unwrap(), Step::Token(..)));
        let h = vec![0u8; 65];
        let e = one(&h, Dialect::Pb).unwrap_err();
        assert_eq!(e.kind, ErrorKind::HeaderTooLong { limit: 64 });
        assert_eq!(e.offset, Some(0));
    }

    #[test]
    fn dialect_rules() {
        assert_eq!(one(&[8, tb::VOCAB], Dialect::NoVocab).unwrap_err().kind, ErrorKind::VocabNotAllowed);
        assert!(matches!(one(&[0, tb::VOCAB], Dialect::Pb).unwrap_err().kind, ErrorKind::UnknownVocab(_)));
        assert!(matches!(
            one(&[0, tb::VOCAB], Dialect::Foolscap).unwrap(),
            Step::Token(Token::Vocab { index: 0, word: b"none" }, 2)
        ));
        assert_eq!(one(&[0, tb::LIST], Dialect::Foolscap).unwrap_err().kind, ErrorKind::ListInFoolscap);
        assert_eq!(one(&[0, tb::OPEN], Dialect::Pb).unwrap_err().kind, ErrorKind::InvalidTypeByte(tb::OPEN));
        assert_eq!(one(&[0xff], Dialect::Foolscap).unwrap_err().kind, ErrorKind::InvalidTypeByte(0xff));
    }

    #[test]
    fn foolscap_longint_body() {
        let data = [6, tb::LONGINT, 1, 0, 0, 0, 0, 0];
        let Step::Token(Token::Int { value, .. }, end) = one(&data, Dialect::Foolscap).unwrap() else { panic!() };
        assert_eq!((value, end), (Integer::Small(1 << 40), 8));
    }
}
