//! Incremental splitting of a foolscap banana stream into top-level messages.
//!
//! On a foolscap PB connection the top level holds only OPEN sequences (`call`, `answer`,
//! `error`), PING, PONG and ERROR. The framer checks every token, the OPEN/CLOSE nesting and the
//! limits, and hands each complete top-level sequence to the caller as one slice; it builds
//! nothing. Each byte is scanned once whatever the chunking (a token cut by a chunk boundary is
//! re-read from its header, and a long body is not rescanned while it arrives), and when no
//! partial message is held, messages are delivered straight from the caller's chunk.

use crate::banana::decode::{Step, Token, TokenReader};
use crate::banana::framer::{Held, ScanError};
use crate::banana::tokenizer::check_nesting;
use crate::banana::{tb, vocab, BananaError, Dialect, ErrorKind, Limits};

use super::{quick_header, UNICODE};

/// What the framer hands back.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<'a> {
    /// A complete top-level sequence: its bytes (OPEN to CLOSE), the stream offset of its first
    /// byte, and how many OPEN tokens the stream held before it (the object number of its OPEN,
    /// which `reference` sequences count from).
    Message {
        bytes: &'a [u8],
        offset: u64,
        first_object: u64,
    },
    /// PING and PONG may come between messages or, from an odd peer, inside one; they are handed
    /// back where they are read, and a message that holds one still holds its bytes.
    Ping(u64),
    Pong(u64),
    /// The peer's ERROR message; it hangs up after it, and nothing more is read.
    PeerError(&'a [u8]),
}

/// Incremental state for one direction of one connection.
pub struct MessageFramer {
    limits: Limits,
    /// The partial message (or token) being received.
    held: Held,
    scan: ScanState,
}

#[derive(Default)]
struct ScanState {
    /// Open sequences of the partial message, innermost last.
    open: Vec<u64>,
    /// Offset of the next token to read, relative to the partial message.
    pos: usize,
    /// Do not rescan until the partial message is at least this long (0: unknown).
    need: usize,
    /// OPEN tokens read on this stream so far.
    objects: u64,
    /// `objects` when the partial message's OPEN was read.
    first_object: u64,
    /// The peer sent ERROR.
    stopped: bool,
}

impl MessageFramer {
    pub fn new(limits: Limits) -> MessageFramer {
        MessageFramer { limits, held: Held::default(), scan: ScanState::default() }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes held for an incomplete message.
    pub fn buffered(&self) -> usize {
        self.held.len()
    }

    /// Stream offset of the next byte to be fed.
    pub fn offset(&self) -> u64 {
        self.held.offset()
    }

    /// OPEN tokens read so far (the object number the next OPEN will get).
    pub fn objects(&self) -> u64 {
        self.scan.objects
    }

    /// Continue a stream whose first `objects` OPEN tokens were read elsewhere (`reference`
    /// numbers count from the start of the stream). Only between messages.
    pub fn set_objects(&mut self, objects: u64) -> Result<(), BananaError> {
        if !self.scan.open.is_empty() {
            return Err(BananaError::at(self.offset(), ErrorKind::Stopped));
        }
        self.scan.objects = objects;
        Ok(())
    }

    /// Whether the peer sent ERROR (after which input is ignored).
    pub fn stopped(&self) -> bool {
        self.scan.stopped
    }

    /// Feed a chunk; `on_frame` is called for each frame completed by it, in stream order. After
    /// an error the framer stays failed and returns that error again.
    pub fn feed<E: From<BananaError>>(
        &mut self,
        data: &[u8],
        mut on_frame: impl FnMut(Frame<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.scan.stopped {
            return Ok(());
        }
        let (limits, state) = (self.limits, &mut self.scan);
        let result = self.held.feed(data, |bytes, base| scan(limits, state, bytes, base, &mut on_frame));
        if self.scan.stopped {
            // The scan finished with every byte up to the peer's ERROR, and nothing more is read.
            self.held.release();
        }
        result
    }
}

/// Scan `data` (which starts at a message boundary, stream offset `base`) from `state.pos`.
/// Returns how many bytes were fully handled (complete messages and top-level tokens); `state`
/// then describes the remainder relative to its start.
fn scan<E>(
    limits: Limits,
    state: &mut ScanState,
    data: &[u8],
    base: u64,
    on_frame: &mut impl FnMut(Frame<'_>) -> Result<(), E>,
) -> Result<usize, ScanError<E>> {
    if data.len() < state.need {
        return Ok(0);
    }
    let reader = TokenReader::new(data, base, Dialect::Foolscap, limits);
    let fail = |at: usize, kind: ErrorKind| ScanError::Banana(BananaError::at(base + at as u64, kind));
    let mut start = 0usize;
    let mut pos = state.pos;
    while pos < data.len() {
        if let Some(end) = quick(limits, state, data, pos) {
            if !state.open.is_empty() && end - start > limits.max_message_size {
                return Err(fail(start, ErrorKind::MessageTooLarge { limit: limits.max_message_size }));
            }
            pos = end;
            if state.open.is_empty() {
                let message = Frame::Message {
                    bytes: &data[start..end],
                    offset: base + start as u64,
                    first_object: state.first_object,
                };
                on_frame(message).map_err(ScanError::Callback)?;
                start = pos;
            }
            continue;
        }
        let (token, end) = match reader.step(pos).map_err(ScanError::Banana)? {
            Step::Token(token, end) => (token, end),
            Step::Incomplete { need } => {
                if state.open.is_empty() {
                    // Refuse a top-level string or number from its header, before its body.
                    if let Some(&type_byte) = data[pos..].iter().find(|&&b| b & 0x80 != 0) {
                        if type_byte != tb::ERROR {
                            return Err(fail(pos, ErrorKind::NotAtTopLevel(type_byte)));
                        }
                    }
                } else if need > 0 && pos - start + need > limits.max_message_size {
                    return Err(fail(start, ErrorKind::MessageTooLarge { limit: limits.max_message_size }));
                }
                state.pos = pos - start;
                state.need = if need > 0 { pos - start + need } else { 0 };
                return Ok(start);
            }
        };
        let offset = base + pos as u64;
        let frame = match token {
            Token::Ping(n) => Some(Frame::Ping(n)),
            Token::Pong(n) => Some(Frame::Pong(n)),
            Token::Error(message) => {
                on_frame(Frame::PeerError(message)).map_err(ScanError::Callback)?;
                state.stopped = true;
                return Ok(data.len());
            }
            Token::Open(_) | Token::Close(_) | Token::Abort(_) => {
                let top_level = state.open.is_empty();
                check_nesting(&mut state.open, &token, offset, limits).map_err(ScanError::Banana)?;
                if let Token::Open(_) = token {
                    if top_level {
                        state.first_object = state.objects;
                    }
                    state.objects += 1;
                    None
                } else if state.open.is_empty() {
                    Some(Frame::Message {
                        bytes: &data[start..end],
                        offset: base + start as u64,
                        first_object: state.first_object,
                    })
                } else {
                    None
                }
            }
            _ if state.open.is_empty() => return Err(fail(pos, ErrorKind::NotAtTopLevel(token.type_byte()))),
            _ => None,
        };
        if !state.open.is_empty() && end - start > limits.max_message_size {
            return Err(fail(start, ErrorKind::MessageTooLarge { limit: limits.max_message_size }));
        }
        pos = end;
        if let Some(frame) = frame {
            on_frame(frame).map_err(ScanError::Callback)?;
        }
        if state.open.is_empty() {
            // A message or a top-level PING/PONG is done with.
            start = pos;
        }
    }
    state.pos = pos - start;
    state.need = 0;
    Ok(start)
}

/// Where the common token at `pos` inside a message ends (its OPEN or CLOSE counted in
/// `state`), or None for the general path: a token of any other kind, one with a long or
/// incomplete header or body, anything past a limit or out of place, and anything at the top
/// level (where messages start).
#[inline(always)]
fn quick(limits: Limits, state: &mut ScanState, data: &[u8], pos: usize) -> Option<usize> {
    if state.open.is_empty() {
        return None;
    }
    let (type_byte, value, body) = quick_header(data, pos)?;
    if body - pos - 1 > limits.max_header_length {
        return None;
    }
    match type_byte {
        tb::INT | tb::NEG => Some(body),
        tb::VOCAB if value < vocab::FOOLSCAP_VOCAB.len() as u64 => Some(body),
        tb::STRING if value <= limits.max_element_size as u64 => {
            Some(body + value as usize).filter(|&end| end <= data.len())
        }
        tb::FLOAT => Some(body + 8).filter(|&end| end <= data.len()),
        tb::OPEN if state.open.len() < limits.max_depth => {
            state.objects += 1;
            // `(unicode STRING)`, most of a typical message, is skipped in one go.
            if let Some(end) = quick_unicode(limits, data, body, value) {
                return Some(end);
            }
            state.open.push(value);
            Some(body)
        }
        tb::CLOSE if state.open.last() == Some(&value) => {
            state.open.pop();
            Some(body)
        }
        _ => None,
    }
}

/// Where `(unicode STRING)`, opened as `id` with its type word at `at`, ends, if its tokens are
/// the common ones (and within the limits); else None.
#[inline(always)]
fn quick_unicode(limits: Limits, data: &[u8], at: usize, id: u64) -> Option<usize> {
    if data.get(at..at + 2)? != [UNICODE, tb::VOCAB] {
        return None;
    }
    let (tb::STRING, len, body) = quick_header(data, at + 2)? else { return None };
    if body - at - 3 > limits.max_header_length || len > limits.max_element_size as u64 {
        return None;
    }
    let end = body + len as usize;
    match quick_header(data, end)? {
        (tb::CLOSE, close, close_end) if close == id && close_end - end - 1 <= limits.max_header_length => {
            Some(close_end)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Got {
        Message(Vec<u8>, u64, u64),
        Ping(u64),
        Pong(u64),
        PeerError(Vec<u8>),
    }

    fn frames(chunks: &[&[u8]], limits: Limits) -> Result<Vec<Got>, BananaError> {
        let mut f = MessageFramer::new(limits);
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, |frame: Frame<'_>| -> Result<(), BananaError> {
                out.push(match frame {
                    Frame::Message { bytes, offset, first_object } => {
                        Got::Message(bytes.to_vec(), offset, first_object)
                    }
                    Frame::Ping(n) => Got::Ping(n),
                    Frame::Pong(n) => Got::Pong(n),
                    Frame::PeerError(m) => Got::PeerError(m.to_vec()),
                });
                Ok(())
            })?;
        }
        Ok(out)
    }

    fn limits() -> Limits {
        super::super::Limits::foolscap().banana
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn messages_pings_and_offsets_in_any_chunking() {
        // (answer 2 3), PING, (answer 3 (none)), PONG 5: as foolscap writes them.
        let answer = hex("02880d87028103810289");
        let second = hex("03880d8703810488008704890389");
        let data = [&answer[..], &[tb::PING], &second, &[5, tb::PONG]].concat();
        let expect =
            vec![Got::Message(answer.clone(), 0, 0), Got::Ping(0), Got::Message(second.clone(), 11, 1), Got::Pong(5)];
        assert_eq!(frames(&[&data], limits()).unwrap(), expect);
        let ones: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(frames(&ones, limits()).unwrap(), expect);
        let threes: Vec<&[u8]> = data.chunks(3).collect();
        assert_eq!(frames(&threes, limits()).unwrap(), expect);
    }

    #[test]
    fn text_in_any_chunking() {
        // (answer 1 (unicode "hi")), the unicode opened as object 130 (a two-byte header).
        let data = hex("0088 0d87 0181 02018808870282 6869 020189 0089");
        let expect = vec![Got::Message(data.clone(), 0, 0)];
        for size in [1, 2, 3, data.len()] {
            let chunks: Vec<&[u8]> = data.chunks(size).collect();
            assert_eq!(frames(&chunks, limits()).unwrap(), expect, "chunks of {size}");
        }
        // A CLOSE of another sequence, a string past the limit, nesting past the limit.
        let wrong = hex("0088 0d87 0181 02018808870282 6869 030189 0089");
        let e = frames(&[&wrong], limits()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CloseMismatch { expected: Some(130), got: 131 });
        let e = frames(&[&data], Limits { max_element_size: 1, ..limits() }).unwrap_err();
        assert!(matches!(e.kind, ErrorKind::StringTooLong { .. }));
        let e = frames(&[&data], Limits { max_depth: 1, ..limits() }).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooDeep { limit: 1 });
    }

    #[test]
    fn a_ping_inside_a_message_comes_first_and_stays_in_it() {
        let data = hex("00880d8701818e028100898f");
        let got = frames(&[&data], limits()).unwrap();
        assert_eq!(got, vec![Got::Ping(0), Got::Message(hex("00880d8701818e02810089"), 0, 0), Got::Pong(0)]);
    }

    #[test]
    fn top_level_must_be_a_sequence() {
        let e = frames(&[&[0x00, tb::OPEN, 0x00, tb::CLOSE, 0x05, tb::INT]], limits()).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::NotAtTopLevel(tb::INT), Some(4)));
        // A top-level STRING is refused from its header, before its body arrives.
        let e = frames(&[&[0x7f, 0x7f, tb::STRING]], limits()).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::NotAtTopLevel(tb::STRING), Some(0)));
        let e = frames(&[&[0x01, tb::CLOSE]], limits()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CloseMismatch { expected: None, got: 1 });
        // Errors are sticky.
        let mut f = MessageFramer::new(limits());
        let mut none = |_: Frame<'_>| -> Result<(), BananaError> { Ok(()) };
        assert!(f.feed(&[0x00, tb::CLOSE], &mut none).is_err());
        assert!(f.feed(&[tb::PING], &mut none).is_err());
    }

    #[test]
    fn lost_sync_and_limits() {
        let e = frames(&[&hex("00880d87018101890089")], limits()).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::CloseMismatch { expected: Some(0), got: 1 }, Some(6)));
        let small = Limits { max_depth: 2, ..limits() };
        let e = frames(&[&hex("00880d870188048702880487")], small).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::TooDeep { limit: 2 }, Some(8)));
        let small = Limits { max_message_size: 8, ..limits() };
        let e = frames(&[&hex("00880d8701810a82")], small).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::MessageTooLarge { limit: 8 }, Some(0)));
        let small = Limits { max_element_size: 4, ..limits() };
        let e = frames(&[&hex("00880d8701810582")], small).unwrap_err();
        assert!(matches!(e.kind, ErrorKind::StringTooLong { .. }));
        let e = frames(&[&[0u8; 65]], limits()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::HeaderTooLong { limit: 64 });
    }

    #[test]
    fn peer_error_stops_the_stream() {
        let data = [&[tb::PING][..], &[4, tb::ERROR], b"boom", &[0x05, tb::INT]].concat();
        for chunks in [vec![&data[..]], data.chunks(1).collect()] {
            let mut f = MessageFramer::new(limits());
            let mut got = Vec::new();
            for c in &chunks {
                f.feed(c, |frame: Frame<'_>| -> Result<(), BananaError> {
                    got.push(format!("{frame:?}"));
                    Ok(())
                })
                .unwrap();
            }
            assert_eq!(got, ["Ping(0)", "PeerError([98, 111, 111, 109])"]);
            assert!(f.stopped());
            assert_eq!(f.buffered(), 0);
        }
    }

    #[test]
    fn an_incomplete_message_waits() {
        let data = hex("02880d87028103810289");
        let mut f = MessageFramer::new(limits());
        let mut n = 0;
        f.feed(&data[..9], |_: Frame<'_>| -> Result<(), BananaError> {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((n, f.buffered(), f.offset(), f.objects()), (0, 9, 9, 1));
        f.feed(&data[9..], |_: Frame<'_>| -> Result<(), BananaError> {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((n, f.buffered(), f.offset()), (1, 0, 10));
    }
}
