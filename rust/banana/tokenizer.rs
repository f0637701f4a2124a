//! Incremental token stream for either dialect: each complete token with its stream offset.
//!
//! This is the token level only. For foolscap it also keeps the OPEN/CLOSE bookkeeping every
//! receiver needs (each CLOSE or ABORT must name the innermost open sequence, nesting is bounded);
//! turning sequences into calls and values is the Tub layer's job.

use super::decode::{Step, Token, TokenReader};
use super::{BananaError, Dialect, ErrorKind, Limits};

pub struct Tokenizer {
    dialect: Dialect,
    limits: Limits,
    buf: Vec<u8>,
    consumed: u64,
    open: Vec<u64>,
    failed: Option<BananaError>,
}

impl Tokenizer {
    pub fn new(dialect: Dialect, limits: Limits) -> Tokenizer {
        Tokenizer { dialect, limits, buf: Vec::new(), consumed: 0, open: Vec::new(), failed: None }
    }

    /// Bytes held for an incomplete token.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// foolscap sequences currently open, innermost last.
    pub fn open_sequences(&self) -> &[u64] {
        &self.open
    }

    /// Feed a chunk; `on_token(token, stream_offset)` is called for each complete token.
    pub fn feed<E: From<BananaError>>(
        &mut self,
        data: &[u8],
        mut on_token: impl FnMut(Token<'_>, u64) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(e) = &self.failed {
            return Err(e.clone().into());
        }
        self.buf.extend_from_slice(data);
        let reader = TokenReader::new(&self.buf, self.consumed, self.dialect, self.limits);
        let mut pos = 0;
        let mut result = Ok(());
        while pos < self.buf.len() {
            let offset = self.consumed + pos as u64;
            let (token, end) = match reader.step(pos) {
                Ok(Step::Token(token, end)) => (token, end),
                Ok(Step::Incomplete { .. }) => break,
                Err(e) => {
                    self.failed = Some(e.clone());
                    result = Err(e.into());
                    break;
                }
            };
            if let Err(e) = check_nesting(&mut self.open, &token, offset, self.limits) {
                self.failed = Some(e.clone());
                result = Err(e.into());
                break;
            }
            pos = end;
            if let Err(e) = on_token(token, offset) {
                self.failed = Some(BananaError::at(self.consumed + pos as u64, ErrorKind::Stopped));
                result = Err(e);
                break;
            }
        }
        self.buf.drain(..pos);
        self.consumed += pos as u64;
        result
    }
}

/// Apply one token to the stack of open foolscap sequences: OPEN pushes (within `max_depth`),
/// CLOSE pops and ABORT stays, both naming the innermost sequence.
pub(crate) fn check_nesting(
    open: &mut Vec<u64>,
    token: &Token<'_>,
    offset: u64,
    limits: Limits,
) -> Result<(), BananaError> {
    match *token {
        Token::Open(id) => {
            if open.len() >= limits.max_depth {
                return Err(BananaError::at(offset, ErrorKind::TooDeep { limit: limits.max_depth }));
            }
            open.push(id);
        }
        Token::Close(id) | Token::Abort(id) => {
            let expected = open.last().copied();
            if expected != Some(id) {
                return Err(BananaError::at(offset, ErrorKind::CloseMismatch { expected, got: id }));
            }
            if matches!(token, Token::Close(_)) {
                open.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::banana::{tb, Integer};

    fn tokens(chunks: &[&[u8]]) -> Result<Vec<(String, u64)>, BananaError> {
        let mut t = Tokenizer::new(Dialect::Foolscap, Limits::twisted());
        let mut out = Vec::new();
        for c in chunks {
            t.feed(c, |tok: Token<'_>, off| -> Result<(), BananaError> {
                out.push((format!("{tok:?}"), off));
                Ok(())
            })?;
        }
        Ok(out)
    }

    #[test]
    fn sequence_in_any_chunking() {
        // (answer 2 3) as foolscap sends it.
        let data = [0x02, tb::OPEN, 0x0d, tb::VOCAB, 0x02, tb::INT, 0x03, tb::INT, 0x02, tb::CLOSE];
        let whole = tokens(&[&data]).unwrap();
        assert_eq!(whole.len(), 5);
        assert_eq!(whole[1], (format!("{:?}", Token::Vocab { index: 13, word: b"answer" }), 2));
        let ones: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(tokens(&ones).unwrap(), whole);
        let v = Token::Int { type_byte: tb::INT, value: Integer::Small(3) };
        assert_eq!(whole[3], (format!("{v:?}"), 6));
    }

    #[test]
    fn close_must_match() {
        let e = tokens(&[&[0x00, tb::OPEN, 0x01, tb::CLOSE]]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CloseMismatch { expected: Some(0), got: 1 });
        let e = tokens(&[&[0x00, tb::CLOSE]]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CloseMismatch { expected: None, got: 0 });
        // ABORT then CLOSE of the same sequence is fine.
        assert!(tokens(&[&[0x00, tb::OPEN, 0x00, tb::ABORT, 0x00, tb::CLOSE]]).is_ok());
    }
}
