//! Incremental splitting of a foolscap banana stream into top-level messages.
//!
//! On a foolscap PB connection the top level holds only OPEN sequences (`call`, `answer`,
//! `error`), PING, PONG and ERROR. The framer checks every token, the OPEN/CLOSE nesting and the
//! limits, and hands each complete top-level sequence to the caller as one slice; it builds
//! nothing, but a [`Receive`] may take each message's tokens as they are read and build from
//! them (see `quick`). Each byte is scanned once whatever the chunking (a token cut by a chunk
//! boundary is re-read from its header, and a long body is not rescanned while it arrives), and
//! when no partial message is held, messages are delivered straight from the caller's chunk.
//!
//! Fed through [`MessageFramer::feed_limited`], the framer also reads each call's header
//! (request ID, object ID, method name) and asks for the longest STRING its arguments may hold.
//! A longer one is not buffered: the call's bytes are dropped, the string's body and the rest
//! of the call are skipped as they arrive (only the nesting is followed), and the call is
//! handed back as [`Frame::Refused`]. The skipped bytes count toward no limit but the nesting
//! and the header length.

use crate::banana::decode::{header_value, HeaderValue, Step, Token, TokenReader};
use crate::banana::framer::{Held, ScanError};
use crate::banana::tokenizer::check_nesting;
use crate::banana::{tb, vocab, BananaError, Dialect, ErrorKind, Integer, Limits};

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
    /// A call refused as it arrived (see [`MessageFramer::feed_limited`]): a STRING of `length`
    /// bytes, its header at stream offset `at`, was longer than the call's `limit`. Nothing of
    /// the call was kept. `aborted`: the sender gave up sending it (an ABORT inside), which
    /// foolscap answers with nothing.
    Refused {
        reqid: i64,
        length: u64,
        limit: u64,
        at: u64,
        aborted: bool,
    },
}

/// A call's header, read before its arguments: what [`MessageFramer::feed_limited`] asks a
/// string limit for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallHeader<'a> {
    pub reqid: i64,
    pub clid: i64,
    /// The method name as sent (not checked to be UTF-8).
    pub method: &'a [u8],
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
    /// The partial message as a call with a string limit.
    call: CallState,
    /// The longest STRING the quick path takes: `max_element_size`, or a call's smaller limit.
    quick_string: u64,
}

/// Where a message stands as a call whose strings are limited.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum CallState {
    /// No limit: the framer's ordinary work.
    #[default]
    Unlimited,
    /// Reading a call's header: the next of its top-level tokens expected.
    Header(Expect),
    /// In a call's arguments: no STRING may be longer than `limit`.
    Limited { reqid: i64, limit: u64 },
    /// Skipping the rest of a refused call.
    Refusing(Refusal),
}

/// The next token of a call's header.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Type,
    Reqid,
    Clid(i64),
    Method(i64, i64),
}

/// A call being skipped: why it is refused, and how much of the token being skipped is to come.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Refusal {
    reqid: i64,
    length: u64,
    limit: u64,
    at: u64,
    aborted: bool,
    /// Body bytes still to skip.
    body: u64,
}

impl ScanState {
    fn new(limits: Limits) -> ScanState {
        ScanState { quick_string: limits.max_element_size as u64, ..ScanState::default() }
    }

    /// A message is complete (or refused): the next one starts without a limit.
    #[inline(always)]
    fn unlimited(&mut self, limits: Limits) {
        self.call = CallState::Unlimited;
        self.quick_string = limits.max_element_size as u64;
    }
}

/// What the framer hands on as it reads a stream (see [`MessageFramer::receive`]): the frames,
/// and if it wants them, the tokens of each message as they are read.
pub trait Receive<E> {
    /// A frame, in stream order.
    fn frame(&mut self, frame: Frame<'_>) -> Result<(), E>;

    /// Whether calls are held to string limits (asked once per call that starts).
    fn limits_calls(&self) -> bool {
        false
    }

    /// The longest STRING the arguments of the call whose header is `call` may hold (None: no
    /// limit beyond `max_element_size`); asked only if [`Receive::limits_calls`].
    fn call_limit(&mut self, call: CallHeader<'_>) -> Result<Option<u64>, E> {
        let _ = call;
        Ok(None)
    }

    /// A message's top-level OPEN, read and checked, at stream offset `at`: its tokens follow.
    #[inline(always)]
    fn start(&mut self, at: u64) {
        let _ = at;
    }

    /// A token inside the message being read, read and checked (nesting and limits), in stream
    /// order and once each, whatever the chunking; the last is its top-level CLOSE, just before
    /// the message's frame. PING and PONG are not among them. The tokens of a call refused as it
    /// arrives stop where it is refused. `body`: the stream offset of a STRING's body.
    #[inline(always)]
    fn token(&mut self, token: &Token<'_>, body: u64) {
        let _ = (token, body);
    }

    /// `(unicode STRING)` inside a message, its four tokens read as one: the UTF-8 (unchecked),
    /// at stream offset `at`.
    #[inline(always)]
    fn text(&mut self, utf8: &[u8], at: u64) {
        let _ = (utf8, at);
    }

    // The common tokens, each kind by its own method (by default, [`Receive::token`]).

    /// An INT or NEG (`type_byte` says which) of at most 56 bits.
    #[inline(always)]
    fn int(&mut self, type_byte: u8, value: i64) {
        self.token(&Token::Int { type_byte, value: Integer::Small(value) }, 0);
    }

    /// A VOCAB word of the table.
    #[inline(always)]
    fn vocab(&mut self, index: u8) {
        let word = vocab::FOOLSCAP_VOCAB[usize::from(index)];
        self.token(&Token::Vocab { index: u64::from(index), word }, 0);
    }

    /// A STRING, at stream offset `at`.
    #[inline(always)]
    fn string(&mut self, body: &[u8], at: u64) {
        self.token(&Token::String(body), at);
    }

    #[inline(always)]
    fn float(&mut self, value: f64) {
        self.token(&Token::Float(value), 0);
    }

    #[inline(always)]
    fn open(&mut self, number: u64) {
        self.token(&Token::Open(number), 0);
    }

    #[inline(always)]
    fn close(&mut self, number: u64) {
        self.token(&Token::Close(number), 0);
    }
}

/// [`Receive`] by closures: the frames, and with `call_limit`, the calls' string limits.
struct Closures<F, L> {
    on_frame: F,
    call_limit: Option<L>,
}

impl<E, F, L> Receive<E> for Closures<F, L>
where
    F: FnMut(Frame<'_>) -> Result<(), E>,
    L: FnMut(CallHeader<'_>) -> Result<Option<u64>, E>,
{
    fn frame(&mut self, frame: Frame<'_>) -> Result<(), E> {
        (self.on_frame)(frame)
    }

    fn limits_calls(&self) -> bool {
        self.call_limit.is_some()
    }

    fn call_limit(&mut self, call: CallHeader<'_>) -> Result<Option<u64>, E> {
        self.call_limit.as_mut().map_or(Ok(None), |ask| ask(call))
    }
}

/// A string limit per call header (see [`MessageFramer::feed_limited`]).
type NoLimits<E> = fn(CallHeader<'_>) -> Result<Option<u64>, E>;

impl MessageFramer {
    pub fn new(limits: Limits) -> MessageFramer {
        MessageFramer { limits, held: Held::default(), scan: ScanState::new(limits) }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Change the limits between messages (a negotiation raised them).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        if self.scan.call == CallState::Unlimited {
            self.scan.quick_string = limits.max_element_size as u64;
        }
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

    /// The bytes held of the partial message, for bytes made elsewhere to be appended to
    /// straight (as [`Self::append_with`] does, without its undoing of a failed append); None
    /// once the framer has stopped or failed.
    pub fn held_mut(&mut self) -> Option<&mut Vec<u8>> {
        (!self.scan.stopped && !self.held.failed()).then(|| self.held.buffer_mut())
    }

    /// Feed a chunk; `on_frame` is called for each frame completed by it, in stream order. After
    /// an error the framer stays failed and returns that error again.
    pub fn feed<E: From<BananaError>>(
        &mut self,
        data: &[u8],
        on_frame: impl FnMut(Frame<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.receive(data, &mut Closures { on_frame, call_limit: None::<NoLimits<E>> })
    }

    /// [`MessageFramer::feed`], with each call that starts in `data` held to a string limit:
    /// once its header is read, `call_limit` gives the longest STRING its arguments may hold
    /// (None: no limit beyond `max_element_size`). A longer one, even past `max_element_size`,
    /// refuses the call as it arrives ([`Frame::Refused`], in the place of the call's message)
    /// and the stream goes on; a string within the call's limit but past `max_element_size`
    /// still breaks the stream.
    pub fn feed_limited<E: From<BananaError>>(
        &mut self,
        data: &[u8],
        on_frame: impl FnMut(Frame<'_>) -> Result<(), E>,
        call_limit: impl FnMut(CallHeader<'_>) -> Result<Option<u64>, E>,
    ) -> Result<(), E> {
        self.receive(data, &mut Closures { on_frame, call_limit: Some(call_limit) })
    }

    /// Add what `fill` appends (decrypted bytes) to the stream, to be read by the next feed as
    /// if they came first in its chunk, without being copied again; if `fill` fails, nothing
    /// is added. After the peer's ERROR, or once the stream has failed, nothing is kept.
    pub fn append_with<E>(&mut self, fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        if self.held_mut().is_none() {
            return fill(&mut Vec::new());
        }
        self.held.append_with(fill)
    }

    /// [`MessageFramer::feed`] (or, if `receiver` limits calls, [`MessageFramer::feed_limited`])
    /// into a [`Receive`], which may also take each message's tokens as they are read.
    pub fn receive<E: From<BananaError>>(&mut self, data: &[u8], receiver: &mut impl Receive<E>) -> Result<(), E> {
        if self.scan.stopped {
            return Ok(());
        }
        let (limits, state) = (self.limits, &mut self.scan);
        let result = self.held.feed(data, |bytes, base| scan(limits, state, bytes, base, receiver));
        if self.scan.stopped {
            // The scan finished with every byte up to the peer's ERROR, and nothing more is read.
            self.held.release();
        }
        result
    }
}

/// Scan `data` (which starts at a message boundary, stream offset `base`) from `state.pos`.
/// Returns how many bytes were fully handled (complete messages, top-level tokens and what is
/// skipped of a refused call); `state` then describes the remainder relative to its start.
/// If `receiver` limits calls, each call that starts here is held to the string limit it gives.
fn scan<E>(
    limits: Limits,
    state: &mut ScanState,
    data: &[u8],
    base: u64,
    receiver: &mut impl Receive<E>,
) -> Result<usize, ScanError<E>> {
    if data.len() < state.need {
        return Ok(0);
    }
    let reader = TokenReader::new(data, base, Dialect::Foolscap, limits);
    let fail = |at: usize, kind: ErrorKind| ScanError::Banana(BananaError::at(base + at as u64, kind));
    let mut start = 0usize;
    let mut pos = state.pos;
    while pos < data.len() {
        if let Some(end) = quick(limits, state, data, base, pos, receiver) {
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
                state.unlimited(limits);
                receiver.frame(message).map_err(ScanError::Callback)?;
                start = pos;
            }
            continue;
        }
        if let CallState::Refusing(_) = state.call {
            match skip_refused(&reader, limits, state, data, base, &mut pos, receiver)? {
                Skipped::Ended(r) => {
                    let refused = Frame::Refused {
                        reqid: r.reqid,
                        length: r.length,
                        limit: r.limit,
                        at: r.at,
                        aborted: r.aborted,
                    };
                    state.unlimited(limits);
                    receiver.frame(refused).map_err(ScanError::Callback)?;
                    start = pos;
                    continue;
                }
                // Nothing of a refused call is kept but a token header cut by the chunk's end.
                Skipped::Waiting => {
                    state.pos = 0;
                    state.need = 0;
                    return Ok(pos);
                }
                Skipped::Stopped => return Ok(data.len()),
            }
        }
        if let CallState::Limited { reqid, limit } = state.call {
            if let Some((length, body)) = long_string(data, pos, limit, limits.max_header_length) {
                // Refused from its header: the call's bytes so far are let go of, and its body
                // is skipped as it arrives.
                let at = base + pos as u64;
                state.call = CallState::Refusing(Refusal { reqid, length, limit, at, aborted: false, body: length });
                pos = body;
                start = body;
                continue;
            }
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
        if let CallState::Header(expect) = state.call {
            state.call = read_header(expect, &token, state.open.len(), receiver).map_err(ScanError::Callback)?;
            if let CallState::Limited { limit, .. } = state.call {
                state.quick_string = limit.min(limits.max_element_size as u64);
            }
        }
        let offset = base + pos as u64;
        let top_level = state.open.is_empty();
        let frame = match token {
            Token::Ping(n) => Some(Frame::Ping(n)),
            Token::Pong(n) => Some(Frame::Pong(n)),
            Token::Error(message) => {
                receiver.frame(Frame::PeerError(message)).map_err(ScanError::Callback)?;
                state.stopped = true;
                return Ok(data.len());
            }
            Token::Open(_) | Token::Close(_) | Token::Abort(_) => {
                check_nesting(&mut state.open, &token, offset, limits).map_err(ScanError::Banana)?;
                if let Token::Open(_) = token {
                    if top_level {
                        state.first_object = state.objects;
                        if receiver.limits_calls() {
                            state.call = CallState::Header(Expect::Type);
                        }
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
            _ if top_level => return Err(fail(pos, ErrorKind::NotAtTopLevel(token.type_byte()))),
            _ => None,
        };
        if !state.open.is_empty() && end - start > limits.max_message_size {
            return Err(fail(start, ErrorKind::MessageTooLarge { limit: limits.max_message_size }));
        }
        match token {
            Token::Ping(_) | Token::Pong(_) => {}
            Token::Open(_) if top_level => receiver.start(offset),
            Token::String(body) => receiver.token(&token, base + (end - body.len()) as u64),
            _ => receiver.token(&token, offset),
        }
        pos = end;
        if state.open.is_empty() {
            // A message or a top-level PING/PONG is done with.
            state.unlimited(limits);
        }
        if let Some(frame) = frame {
            receiver.frame(frame).map_err(ScanError::Callback)?;
        }
        if state.open.is_empty() {
            start = pos;
        }
    }
    state.pos = pos - start;
    state.need = 0;
    Ok(start)
}

/// The call state after `token`, read `depth` sequences deep while a call's header is expected:
/// the header goes on, or, at its method name, the call's limit is asked for; anything out of
/// the call layout leaves the message unlimited (the decoder says what is wrong with it).
#[inline(never)]
fn read_header<E>(
    expect: Expect,
    token: &Token<'_>,
    depth: usize,
    receiver: &mut impl Receive<E>,
) -> Result<CallState, E> {
    if depth != 1 {
        return Ok(CallState::Unlimited);
    }
    Ok(match (expect, token) {
        (_, Token::Ping(_) | Token::Pong(_)) => CallState::Header(expect),
        (Expect::Type, Token::Vocab { word: b"call", .. } | Token::String(b"call")) => CallState::Header(Expect::Reqid),
        (Expect::Reqid, Token::Int { type_byte: tb::INT, value: Integer::Small(reqid) }) => {
            CallState::Header(Expect::Clid(*reqid))
        }
        (Expect::Clid(reqid), Token::Int { value: Integer::Small(clid), .. }) => {
            CallState::Header(Expect::Method(reqid, *clid))
        }
        (Expect::Method(reqid, clid), Token::String(method) | Token::Vocab { word: method, .. }) => {
            match receiver.call_limit(CallHeader { reqid, clid, method })? {
                Some(limit) => CallState::Limited { reqid, limit },
                None => CallState::Unlimited,
            }
        }
        _ => CallState::Unlimited,
    })
}

/// The length and body offset of the STRING whose complete header is at `pos`, if it is
/// longer than `limit` (and its length fits in 64 bits: a longer one is the reader's error).
#[inline(never)]
fn long_string(data: &[u8], pos: usize, limit: u64, max_header: usize) -> Option<(u64, usize)> {
    let header = data[pos..].iter().take(max_header + 1).position(|&b| b & 0x80 != 0)?;
    if data[pos + header] != tb::STRING {
        return None;
    }
    match header_value(&data[pos..pos + header]) {
        HeaderValue::Small(length) if length > limit => Some((length, pos + header + 1)),
        _ => None,
    }
}

/// How far [`skip_refused`] got.
enum Skipped {
    /// The refused call's last CLOSE was read.
    Ended(Refusal),
    /// The data ran out (inside a body, or in a token cut short at the position).
    Waiting,
    /// The peer sent ERROR.
    Stopped,
}

/// Skip what is left of a refused call from `pos`: the bodies of strings and long integers
/// as they arrive, whatever their length, and the other tokens read only for the nesting
/// (whose limits still hold). PINGs and PONGs are handed back as they come.
#[inline(never)]
fn skip_refused<E>(
    reader: &TokenReader<'_>,
    limits: Limits,
    state: &mut ScanState,
    data: &[u8],
    base: u64,
    pos: &mut usize,
    receiver: &mut impl Receive<E>,
) -> Result<Skipped, ScanError<E>> {
    let ScanState { call, open, objects, stopped, .. } = state;
    let CallState::Refusing(refusal) = call else { unreachable!("skip_refused outside a refused call") };
    loop {
        let skipped = refusal.body.min((data.len() - *pos) as u64);
        *pos += skipped as usize;
        refusal.body -= skipped;
        if *pos == data.len() {
            return Ok(Skipped::Waiting);
        }
        let header = data[*pos..].iter().take(limits.max_header_length + 1).position(|&b| b & 0x80 != 0);
        if let Some(header) = header {
            if matches!(data[*pos + header], tb::STRING | tb::LONGINT | tb::LONGNEG) {
                if let HeaderValue::Small(length) = header_value(&data[*pos..*pos + header]) {
                    refusal.body = length;
                    *pos += header + 1;
                    continue;
                }
            }
        }
        let (token, end) = match reader.step(*pos).map_err(ScanError::Banana)? {
            Step::Token(token, end) => (token, end),
            Step::Incomplete { .. } => return Ok(Skipped::Waiting),
        };
        let offset = base + *pos as u64;
        match token {
            Token::Ping(n) => receiver.frame(Frame::Ping(n)).map_err(ScanError::Callback)?,
            Token::Pong(n) => receiver.frame(Frame::Pong(n)).map_err(ScanError::Callback)?,
            Token::Error(message) => {
                receiver.frame(Frame::PeerError(message)).map_err(ScanError::Callback)?;
                *stopped = true;
                return Ok(Skipped::Stopped);
            }
            Token::Open(_) | Token::Close(_) | Token::Abort(_) => {
                check_nesting(open, &token, offset, limits).map_err(ScanError::Banana)?;
                match token {
                    Token::Open(_) => *objects += 1,
                    Token::Abort(_) => refusal.aborted = true,
                    _ if open.is_empty() => {
                        *pos = end;
                        return Ok(Skipped::Ended(*refusal));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        *pos = end;
    }
}

/// Where the common token at `pos` inside a message ends (its OPEN or CLOSE counted in
/// `state`), or None for the general path: a token of any other kind, one with a long or
/// incomplete header or body, anything past a limit or out of place, anything at the top
/// level (where messages start), and anything of a call's header or of a refused call.
#[inline(always)]
fn quick<E>(
    limits: Limits,
    state: &mut ScanState,
    data: &[u8],
    base: u64,
    pos: usize,
    receiver: &mut impl Receive<E>,
) -> Option<usize> {
    // A call's header and a refused call's rest are read by the general path.
    if state.open.is_empty() || !matches!(state.call, CallState::Unlimited | CallState::Limited { .. }) {
        return None;
    }
    let (type_byte, value, body) = quick_header(data, pos)?;
    if body - pos - 1 > limits.max_header_length {
        return None;
    }
    // A quick header holds at most 56 bits: INT and NEG fit in an i64. Each kind of token goes
    // to the receiver's own method (one dispatch on the type byte for both).
    match type_byte {
        tb::INT => receiver.int(type_byte, value as i64),
        tb::NEG => receiver.int(type_byte, -(value as i64)),
        tb::VOCAB if value < vocab::FOOLSCAP_VOCAB.len() as u64 => receiver.vocab(value as u8),
        tb::STRING if value <= state.quick_string => {
            let end = body + value as usize;
            receiver.string(data.get(body..end)?, base + body as u64);
            return Some(end);
        }
        tb::FLOAT => {
            let raw: [u8; 8] = data.get(body..body + 8)?.try_into().expect("8 bytes");
            receiver.float(f64::from_be_bytes(raw));
            return Some(body + 8);
        }
        tb::OPEN if state.open.len() < limits.max_depth => {
            state.objects += 1;
            // `(unicode STRING)`, most of a typical message, is read in one go.
            if let Some((utf8, at, end)) = quick_unicode(limits, state.quick_string, data, pos, body) {
                receiver.text(utf8, base + at as u64);
                return Some(end);
            }
            state.open.push(value);
            receiver.open(value);
        }
        tb::CLOSE if state.open.last() == Some(&value) => {
            state.open.pop();
            receiver.close(value);
        }
        _ => return None,
    }
    Some(body)
}

/// The string of `(unicode STRING)` whose OPEN is at `open` and its type word at `at`, where
/// the string starts and where the sequence ends, if its tokens are the common ones (and within
/// the limits, its string at most `max_string` bytes); else None.
#[inline(always)]
fn quick_unicode(
    limits: Limits,
    max_string: u64,
    data: &[u8],
    open: usize,
    at: usize,
) -> Option<(&[u8], usize, usize)> {
    if data.get(at..at + 2)? != [UNICODE, tb::VOCAB] {
        return None;
    }
    let (tb::STRING, len, body) = quick_header(data, at + 2)? else { return None };
    if body - at - 3 > limits.max_header_length || len > max_string {
        return None;
    }
    let end = body + len as usize;
    // The CLOSE of the same number, written as foolscap writes it: the OPEN's header again (a
    // number written otherwise takes the general path, which compares numbers).
    let header = at - 1 - open;
    let close_end = end + header + 1;
    if data.get(close_end - 1) != Some(&tb::CLOSE) || !same_bytes(data, open, end, header) {
        return None;
    }
    Some((&data[body..end], body, close_end))
}

/// Whether the `n` bytes at `a` and at `b` of `data` (both in it) are the same: a header's few
/// bytes, compared as a word where the data allows, not by a call to memcmp.
#[inline(always)]
fn same_bytes(data: &[u8], a: usize, b: usize, n: usize) -> bool {
    match (data.get(a..a + 8), data.get(b..b + 8)) {
        (Some(x), Some(y)) if n <= 8 => {
            let x = u64::from_le_bytes(x.try_into().expect("8 bytes"));
            let y = u64::from_le_bytes(y.try_into().expect("8 bytes"));
            let mask = if n == 8 { u64::MAX } else { (1 << (8 * n)) - 1 };
            (x ^ y) & mask == 0
        }
        _ => (0..n).all(|i| data[a + i] == data[b + i]),
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
        Refused { reqid: i64, length: u64, limit: u64, at: u64, aborted: bool },
    }

    impl Got {
        fn of(frame: Frame<'_>) -> Got {
            match frame {
                Frame::Message { bytes, offset, first_object } => Got::Message(bytes.to_vec(), offset, first_object),
                Frame::Ping(n) => Got::Ping(n),
                Frame::Pong(n) => Got::Pong(n),
                Frame::PeerError(m) => Got::PeerError(m.to_vec()),
                Frame::Refused { reqid, length, limit, at, aborted } => {
                    Got::Refused { reqid, length, limit, at, aborted }
                }
            }
        }
    }

    fn frames(chunks: &[&[u8]], limits: Limits) -> Result<Vec<Got>, BananaError> {
        let mut f = MessageFramer::new(limits);
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, |frame: Frame<'_>| -> Result<(), BananaError> {
                out.push(Got::of(frame));
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
        // A CLOSE whose number is written with a needless zero group is still this one's.
        let longer = hex("0088 0d87 0181 02018808870282 6869 02010089 0089");
        assert_eq!(frames(&[&longer], limits()).unwrap(), vec![Got::Message(longer.clone(), 0, 0)]);
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

    /// What feeding `chunks` with the string `limit` for every call gives: the frames, the
    /// call headers asked about, and the most bytes held after any chunk ending before `until`.
    struct Limited {
        got: Vec<Got>,
        asked: Vec<(i64, i64, Vec<u8>)>,
        most_held: usize,
    }

    fn limited(chunks: &[&[u8]], limits: Limits, limit: Option<u64>, until: u64) -> Result<Limited, BananaError> {
        let mut f = MessageFramer::new(limits);
        let (mut got, mut asked, mut most_held) = (Vec::new(), Vec::new(), 0);
        for c in chunks {
            f.feed_limited(
                c,
                |frame: Frame<'_>| -> Result<(), BananaError> {
                    got.push(Got::of(frame));
                    Ok(())
                },
                |call: CallHeader<'_>| -> Result<Option<u64>, BananaError> {
                    asked.push((call.reqid, call.clid, call.method.to_vec()));
                    Ok(limit)
                },
            )?;
            if f.offset() <= until {
                most_held = most_held.max(f.buffered());
            }
        }
        Ok(Limited { got, asked, most_held })
    }

    /// `(call reqid clid "put" (arguments ...))`, the arguments written by `args`, from OPEN
    /// number `next_open`: its bytes and the next OPEN number.
    fn call(next_open: u64, reqid: i64, clid: i64, args: impl FnOnce(&mut Writer)) -> (Vec<u8>, u64) {
        let mut w = Writer::new(Vec::new(), next_open, 500);
        let c = w.open(word::CALL).unwrap();
        w.int(reqid);
        w.int(clid);
        w.bytes(b"put");
        let a = w.open(word::ARGUMENTS).unwrap();
        args(&mut w);
        w.close(a);
        w.close(c);
        w.finish()
    }

    /// Where the first run of `byte` in `data` starts, less its STRING header of `header` bytes.
    fn string_at(data: &[u8], byte: u8, header: usize) -> u64 {
        (data.iter().position(|&b| b == byte).unwrap() - header - 1) as u64
    }

    use crate::foolscap::encode::{word, Writer};

    #[test]
    fn a_string_past_the_call_limit_refuses_the_call_as_it_arrives() {
        let big = vec![b'x'; 100_000];
        let (refused, next) = call(0, 1, 3, |w| {
            w.int(2);
            w.bytes(b"key");
            w.bytes(&big);
        });
        let (fine, _) = call(next, 2, 3, |w| {
            w.int(1);
            w.bytes(&[b'y'; 64]); // exactly the limit
        });
        let data = [&refused[..], &fine].concat();
        let at = string_at(&data, b'x', 3);
        let expect = vec![
            Got::Refused { reqid: 1, length: 100_000, limit: 64, at, aborted: false },
            Got::Message(fine.clone(), refused.len() as u64, next),
        ];
        let put = b"put".to_vec();
        for size in [1, 7, 4096, data.len()] {
            let chunks: Vec<&[u8]> = data.chunks(size).collect();
            let l = limited(&chunks, limits(), Some(64), refused.len() as u64).unwrap();
            assert_eq!(l.got, expect, "chunks of {size}");
            assert_eq!(l.asked, [(1, 3, put.clone()), (2, 3, put.clone())]);
            // Only what comes before the long string, and its header, were ever held.
            assert!(l.most_held <= at as usize + 4, "chunks of {size}: {} bytes held", l.most_held);
        }
        // Unlimited (or fed without limits), the same stream is two messages.
        let l = limited(&[&data], limits(), None, 0).unwrap();
        assert_eq!(
            l.got,
            [Got::Message(refused.clone(), 0, 0), Got::Message(fine.clone(), refused.len() as u64, next)]
        );
        assert_eq!(frames(&[&data], limits()).unwrap(), l.got);
    }

    #[test]
    fn nested_strings_and_text_are_limited_and_the_rest_is_skipped() {
        let big = vec![b'x'; 5000];
        let (refused, next) = call(0, 7, -2, |w| {
            w.int(1);
            let l = w.open(word::LIST).unwrap();
            let t = w.open(word::TUPLE).unwrap();
            let d = w.open(word::DICT).unwrap();
            w.unicode(b"k").unwrap();
            w.bytes(&big);
            w.unicode(b"j").unwrap();
            let inner = w.open(word::LIST).unwrap();
            w.ping(9);
            w.bytes(&[b'z'; 3000]); // past the limit too, skipped all the same
            w.float(1.5);
            w.big_int(&(num_bigint::BigInt::from(1) << 200));
            w.close(inner);
            w.close(d);
            w.close(t);
            w.close(l);
        });
        let (text, after) = call(next, 8, 4, |w| {
            w.int(0);
            w.bytes(b"name");
            w.unicode("é".repeat(1000).as_bytes()).unwrap();
        });
        let (fine, _) = call(after, 9, 4, |w| {
            w.int(1);
            w.unicode(b"short").unwrap();
        });
        let data = [&refused[..], &text, &fine].concat();
        let text_at = refused.len() as u64 + string_at(&text, 0xc3, 2);
        let expect = vec![
            Got::Ping(9),
            Got::Refused { reqid: 7, length: 5000, limit: 100, at: string_at(&data, b'x', 2), aborted: false },
            Got::Refused { reqid: 8, length: 2000, limit: 100, at: text_at, aborted: false },
            // Every OPEN of the refused calls was counted.
            Got::Message(fine.clone(), (refused.len() + text.len()) as u64, after),
        ];
        for size in [1, 2, 5, 100, data.len()] {
            let chunks: Vec<&[u8]> = data.chunks(size).collect();
            let l = limited(&chunks, limits(), Some(100), refused.len() as u64).unwrap();
            assert_eq!(l.got, expect, "chunks of {size}");
            assert_eq!(l.asked.iter().map(|a| (a.0, a.1)).collect::<Vec<_>>(), [(7, -2), (8, 4), (9, 4)]);
            assert!(l.most_held < 100, "chunks of {size}: {} bytes held", l.most_held);
        }
    }

    #[test]
    fn the_call_limit_decides_past_max_element_size_and_skipped_bytes_count_toward_no_message() {
        let small = Limits { max_element_size: 1000, max_message_size: 300, ..limits() };
        let (refused, next) = call(0, 1, 3, |w| {
            w.int(1);
            w.bytes(&[b'x'; 5000]);
        });
        let (fine, _) = call(next, 2, 3, |w| w.int(0));
        let data = [&refused[..], &fine].concat();
        for size in [1, 64, data.len()] {
            let chunks: Vec<&[u8]> = data.chunks(size).collect();
            let l = limited(&chunks, small, Some(64), 0).unwrap();
            assert!(matches!(l.got[..], [Got::Refused { length: 5000, limit: 64, .. }, Got::Message(..)]), "{size}");
        }
        // Within the call's limit but past the connection's, or with no call limit: as before.
        for limit in [Some(10_000), None] {
            let e = limited(&[&data], small, limit, 0).err().unwrap();
            assert!(matches!(e.kind, ErrorKind::StringTooLong { .. }), "{limit:?}: {e}");
        }
        // What is held of a call still counts toward max_message_size.
        let (long, _) = call(0, 1, 3, |w| {
            w.int(40);
            for _ in 0..40 {
                w.bytes(&[b'x'; 10]);
            }
        });
        let e = limited(&[&long], small, Some(64), 0).err().unwrap();
        assert_eq!(e.kind, ErrorKind::MessageTooLarge { limit: 300 });
    }

    #[test]
    fn only_calls_are_limited() {
        // (answer 2 "...") and a call whose header is out of layout are not asked about.
        let mut w = Writer::new(Vec::new(), 0, 500);
        let answer = w.open(word::ANSWER).unwrap();
        w.int(2);
        w.bytes(&[b'x'; 500]);
        w.close(answer);
        let c = w.open(word::CALL).unwrap();
        w.bytes(b"not a request ID");
        w.bytes(&[b'x'; 500]);
        w.close(c);
        let (data, _) = w.finish();
        let l = limited(&[&data], limits(), Some(10), 0).unwrap();
        assert!(l.asked.is_empty());
        assert!(matches!(l.got[..], [Got::Message(..), Got::Message(..)]));
    }

    #[test]
    fn a_refused_call_that_the_sender_aborts() {
        let mut w = Writer::new(Vec::new(), 0, 500);
        let c = w.open(word::CALL).unwrap();
        w.int(5);
        w.int(-2);
        w.bytes(b"put");
        let a = w.open(word::ARGUMENTS).unwrap();
        w.int(1);
        w.bytes(&[b'x'; 300]);
        let (mut data, _) = w.finish();
        data.extend([a as u8, tb::ABORT, a as u8, tb::CLOSE, c as u8, tb::CLOSE]);
        let l = limited(&[&data], limits(), Some(10), 0).unwrap();
        assert!(matches!(l.got[..], [Got::Refused { reqid: 5, aborted: true, .. }]), "{:?}", l.got);
        assert_eq!(l.asked, [(5, -2, b"put".to_vec())]);
    }

    #[test]
    fn the_rest_of_a_refused_call_is_still_checked() {
        let (refused, _) = call(0, 1, 3, |w| {
            w.int(1);
            w.bytes(&[b'x'; 300]);
        });
        let cut = refused.len() - 2; // before the call's CLOSE
        let bad_close = [&refused[..cut], &[0x7f, tb::CLOSE]].concat();
        let e = limited(&[&bad_close], limits(), Some(10), 0).err().unwrap();
        assert!(matches!(e.kind, ErrorKind::CloseMismatch { got: 0x7f, .. }), "{e}");
        let deep = [&refused[..cut], &[0x70, tb::OPEN, 0x71, tb::OPEN]].concat();
        let e = limited(&[&deep], Limits { max_depth: 2, ..limits() }, Some(10), 0).err().unwrap();
        assert_eq!(e.kind, ErrorKind::TooDeep { limit: 2 });
        let e = limited(&[&refused[..cut], &[0x01, 0x8b]], limits(), Some(10), 0).err().unwrap();
        assert_eq!(e.kind, ErrorKind::InvalidTypeByte(0x8b));
        let e = limited(&[&refused[..cut], &[0u8; 65]], limits(), Some(10), 0).err().unwrap();
        assert_eq!(e.kind, ErrorKind::HeaderTooLong { limit: 64 });
        // The peer's ERROR inside it ends the stream as anywhere else.
        let error = [&refused[..cut], &[2, tb::ERROR], b"no"].concat();
        let l = limited(&[&error], limits(), Some(10), 0).unwrap();
        assert_eq!(l.got, [Got::PeerError(b"no".to_vec())]);
    }
}
