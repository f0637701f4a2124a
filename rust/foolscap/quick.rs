//! The quick pass: most messages are answers and calls whose values are lists, tuples, dicts,
//! sets, text, bytes, ints, floats, None and booleans. This follows them in the framer's tokens
//! as it reads them (see [`Receive`](super::framer::Receive)), so each token is read once, and
//! keeps its place between chunks. At anything else — another sequence type, a `reference`, an
//! `error`, an ABORT, a layout the walker refuses — it gives up on the message, which is then
//! read by [`read_message`](super::decode::read_message) from its framed bytes, and so is one
//! whose values the builder refuses.
//!
//! What it notes of a message, a tape of its values in wire order, holds no value of the
//! builder's: where each string is in the message, the numbers, the containers' kinds and
//! lengths. The values are made only once the message is complete, from the tape and the
//! message's bytes. So a message that waits between chunks costs no more than its bytes (which
//! the framer holds anyway) and its tape, whatever the builder's values would take, and no
//! half-filled container of it is there for a garbage collector to walk meanwhile; and lists,
//! whose lengths are known by then, are made at their size.
//!
//! Every message it builds is the one the walker would: the same builder, the same values, the
//! same checks. Limits are the framer's, checked before a token gets here; the one the walker
//! adds for type words (`max_index_length`) is checked here too.

use num_bigint::BigInt;

use super::decode::{Build, Built, Message};
use super::Limits;
use crate::banana::decode::Token;
use crate::banana::vocab::{self, const_index, FOOLSCAP_VOCAB};
use crate::banana::{tb, Integer};

/// The VOCAB index of a word of foolscap's table.
const fn index_of(word: &[u8]) -> u8 {
    match const_index(&FOOLSCAP_VOCAB, 0, word) {
        Some(index) => index,
        None => panic!("not a vocabulary word"),
    }
}

const LIST: u8 = index_of(b"list");
const DICT: u8 = index_of(b"dict");
const SET: u8 = index_of(b"set");
const TUPLE: u8 = index_of(b"tuple");
const IMMUTABLE_SET: u8 = index_of(b"immutable-set");
const UNICODE: u8 = index_of(b"unicode");
const NONE: u8 = index_of(b"none");
const BOOLEAN: u8 = index_of(b"boolean");

/// The most values a message's tape holds (16 bytes each): a message of more is left to the
/// walker.
const MAX_TAPE: usize = 1 << 20;

/// A tape that held more values than this is let go of once its message is done with.
const KEPT_TAPE: usize = 1 << 14;

/// A [`Build`] that can make a list of a known length (by default, item by item).
pub trait Fill: Build {
    /// A list of `len` items, put in by [`Fill::fill`].
    ///
    /// # Safety
    ///
    /// The list is not used, or handed on, before its `len` items are put in, in order; it may
    /// be dropped at any time.
    unsafe fn list_of(&mut self, len: usize) -> Built<Self::Value, Self::Error> {
        let _ = len;
        self.new_list()
    }

    /// Put in item `index` of a list made by [`Fill::list_of`].
    ///
    /// # Safety
    ///
    /// `list` was made by `list_of`, with more than `index` items, of which those before
    /// `index` are in and the others not.
    unsafe fn fill(&mut self, list: &Self::Value, index: usize, item: Self::Value) -> Built<(), Self::Error> {
        let _ = index;
        self.list_push(list, item)
    }
}

/// A container's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    List,
    Dict,
    Set,
    Tuple,
    /// `immutable-set`.
    FrozenSet,
}

/// A value of the message, in wire order: a leaf, or the start of a container whose items
/// (for a dict, its keys and values, one after the other) are the next `len` values. Strings
/// are where they are in the message (from its first byte) and how long.
#[derive(Debug, Clone, Copy)]
enum Piece {
    Int(i64),
    /// An integer beyond 64 bits: which of the message's.
    Big(u32),
    Float(f64),
    Bytes(u32, u32),
    /// A VOCAB word as bytes.
    Word(u8),
    /// The UTF-8 of `(unicode STRING)`.
    Text(u32, u32),
    /// `(unicode VOCAB)`.
    TextWord(u8),
    None,
    Bool(bool),
    Open(Kind, u32),
}

/// What the next token of the message being read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// No message, or one given up on (or complete): nothing until the next message starts.
    Idle,
    /// The message's type word.
    Type,
    AnswerReqid,
    /// The answer's CLOSE.
    AnswerEnd,
    CallReqid,
    CallClid,
    CallMethod,
    /// The OPEN of the call's `arguments`.
    ArgsOpen,
    ArgsType,
    /// How many positional arguments.
    ArgsCount,
    /// A keyword argument's name, or the CLOSE of `arguments`.
    Keyword,
    /// The call's CLOSE.
    CallEnd,
    /// A value: the next item of the innermost open container, or if none is open, the answer,
    /// an argument or a keyword argument's value.
    Value,
    /// The type word of a sequence opened where a value goes.
    SeqType,
    UnicodeText,
    /// The CLOSE of a `(unicode ...)`, its text in `text`.
    UnicodeEnd,
    NoneEnd,
    BooleanInt,
    BooleanEnd(bool),
}

/// The quick pass over one direction of a connection: where the message being read stands,
/// kept between chunks.
pub struct Quick {
    max_index_length: usize,
    at: At,
    /// The stream offset of the message's first byte.
    start: u64,
    /// Its values so far.
    tape: Vec<Piece>,
    /// Its integers beyond 64 bits.
    bigs: Vec<BigInt>,
    /// The containers open, innermost last: their kind, where their piece is, and how many
    /// items they hold so far.
    open: Vec<(Kind, usize, u32)>,
    /// The text of a `(unicode ...)` whose CLOSE is still to come.
    text: Piece,
    answer: bool,
    reqid: i64,
    clid: i64,
    method: Vec<u8>,
    positional: u64,
    /// The answer's value, or the arguments, complete so far.
    values: u64,
    /// The keyword arguments' names so far, as received.
    keywords: Vec<Vec<u8>>,
    /// The message is complete: its values can be made.
    complete: bool,
}

impl Quick {
    pub fn new(limits: &Limits) -> Quick {
        Quick {
            max_index_length: limits.max_index_length,
            at: At::Idle,
            start: 0,
            tape: Vec::new(),
            bigs: Vec::new(),
            open: Vec::new(),
            text: Piece::None,
            answer: false,
            reqid: 0,
            clid: 0,
            method: Vec::new(),
            positional: 0,
            values: 0,
            keywords: Vec::new(),
            complete: false,
        }
    }

    /// A message starts at stream offset `at` (its top-level OPEN was read).
    pub fn start(&mut self, at: u64) {
        self.clear();
        self.start = at;
        self.at = At::Type;
    }

    /// The next token of the message; `body`, a STRING's stream offset.
    #[inline]
    pub fn token(&mut self, token: &Token<'_>, body: u64) {
        if !matches!(self.at, At::Idle) && self.step(token, body).is_none() {
            self.clear();
        }
    }

    // The common tokens, each by its own method: as the next value of the message, nearly
    // always, or else as any token.

    /// An INT or NEG (`type_byte`) of at most 56 bits.
    #[inline]
    pub fn int(&mut self, type_byte: u8, value: i64) {
        if let At::Value = self.at {
            self.placed_or_clear(Piece::Int(value));
        } else {
            self.token(&Token::Int { type_byte, value: Integer::Small(value) }, 0);
        }
    }

    /// A VOCAB word of the table.
    #[inline]
    pub fn vocab(&mut self, index: u8) {
        if let At::Value = self.at {
            self.placed_or_clear(Piece::Word(index));
        } else {
            let word = FOOLSCAP_VOCAB[usize::from(index)];
            self.token(&Token::Vocab { index: u64::from(index), word }, 0);
        }
    }

    /// A STRING at stream offset `at`.
    #[inline]
    pub fn string(&mut self, body: &[u8], at: u64) {
        match self.string_piece(at, body.len(), Piece::Bytes) {
            Some(piece) if matches!(self.at, At::Value) => self.placed_or_clear(piece),
            _ => self.token(&Token::String(body), at),
        }
    }

    #[inline]
    pub fn float(&mut self, value: f64) {
        if let At::Value = self.at {
            self.placed_or_clear(Piece::Float(value));
        } else {
            self.token(&Token::Float(value), 0);
        }
    }

    #[inline]
    pub fn open(&mut self, number: u64) {
        if let At::Value = self.at {
            self.at = At::SeqType;
        } else {
            self.token(&Token::Open(number), 0);
        }
    }

    #[inline]
    pub fn close(&mut self, number: u64) {
        if let At::Value = self.at {
            if self.close_container().is_none() {
                self.clear();
            }
        } else {
            self.token(&Token::Close(number), 0);
        }
    }

    #[inline(always)]
    fn placed_or_clear(&mut self, piece: Piece) {
        if self.place(piece).is_none() {
            self.clear();
        }
    }

    /// A `(unicode STRING)` of the message, read as one, its string at stream offset `at`.
    #[inline]
    pub fn text(&mut self, utf8: &[u8], at: u64) {
        if !matches!(self.at, At::Idle) && self.whole_text(utf8, at).is_none() {
            self.clear();
        }
    }

    /// The message just completed (its top-level CLOSE was the last token), whose bytes are
    /// `message`, from stream offset `offset`, made by `build`: None if it was given up on, or
    /// if the builder refuses one of its values (the walker then says why).
    pub fn take<B: Fill>(&mut self, build: &mut B, message: &[u8], offset: u64) -> Option<Message<B>> {
        if !std::mem::take(&mut self.complete) || offset != self.start {
            self.clear();
            return None;
        }
        let made = self.make(build, message);
        self.clear();
        made
    }

    /// Done with the message (given up on, or complete): nothing is read until the next one
    /// starts.
    fn clear(&mut self) {
        self.at = At::Idle;
        self.complete = false;
        self.tape.clear();
        if self.tape.capacity() > KEPT_TAPE {
            self.tape = Vec::new();
        }
        self.bigs.clear();
        self.open.clear();
        self.keywords.clear();
    }

    fn whole_text(&mut self, utf8: &[u8], at: u64) -> Option<()> {
        if !matches!(self.at, At::Value) {
            return None;
        }
        let text = self.string_piece(at, utf8.len(), Piece::Text)?;
        self.place(text)
    }

    /// A string of the message: where it is, from the message's first byte.
    #[inline(always)]
    fn string_piece(&self, at: u64, len: usize, piece: fn(u32, u32) -> Piece) -> Option<Piece> {
        let at = u32::try_from(at.checked_sub(self.start)?).ok()?;
        Some(piece(at, u32::try_from(len).ok()?))
    }

    /// Take `token`; None to give up on the message.
    fn step(&mut self, token: &Token<'_>, body: u64) -> Option<()> {
        let at = self.at;
        if let At::Value = at {
            return self.value(token, body);
        }
        self.at = match (at, token) {
            (At::SeqType, _) => return self.sequence(token),
            (At::UnicodeText, Token::String(utf8)) => {
                self.text = self.string_piece(body, utf8.len(), Piece::Text)?;
                At::UnicodeEnd
            }
            (At::UnicodeText, Token::Vocab { index, .. }) => {
                self.text = Piece::TextWord(*index as u8);
                At::UnicodeEnd
            }
            (At::UnicodeEnd, Token::Close(_)) => return self.place(self.text),
            (At::NoneEnd, Token::Close(_)) => return self.place(Piece::None),
            (At::BooleanInt, Token::Int { type_byte: tb::INT, value }) => At::BooleanEnd(*value != Integer::Small(0)),
            (At::BooleanEnd(value), Token::Close(_)) => return self.place(Piece::Bool(value)),
            _ => return self.layout(at, token),
        };
        Some(())
    }

    /// A token of the message's own layout (not of a value).
    fn layout(&mut self, at: At, token: &Token<'_>) -> Option<()> {
        self.at = match (at, token) {
            (At::Type, _) => match word(token, self.max_index_length)? {
                b"answer" => {
                    self.answer = true;
                    At::AnswerReqid
                }
                b"call" => {
                    self.answer = false;
                    At::CallReqid
                }
                _ => return None,
            },
            (At::AnswerReqid | At::CallReqid, Token::Int { type_byte: tb::INT, value: Integer::Small(reqid) }) => {
                self.reqid = *reqid;
                self.values = 0;
                if at == At::AnswerReqid {
                    At::Value
                } else {
                    At::CallClid
                }
            }
            (At::AnswerEnd | At::CallEnd, Token::Close(_)) => {
                self.complete = true;
                At::Idle
            }
            (At::CallClid, Token::Int { value: Integer::Small(clid), .. }) => {
                self.clid = *clid;
                At::CallMethod
            }
            (At::CallMethod, Token::String(name) | Token::Vocab { word: name, .. }) => {
                self.method.clear();
                self.method.extend_from_slice(name);
                At::ArgsOpen
            }
            (At::ArgsOpen, Token::Open(_)) => At::ArgsType,
            (At::ArgsType, _) if word(token, self.max_index_length)? == b"arguments" => At::ArgsCount,
            (At::ArgsCount, Token::Int { type_byte: tb::INT, value: Integer::Small(count) }) => {
                self.positional = *count as u64;
                if *count == 0 {
                    At::Keyword
                } else {
                    At::Value
                }
            }
            (At::Keyword, Token::Close(_)) => At::CallEnd,
            (At::Keyword, Token::String(name) | Token::Vocab { word: name, .. }) => {
                if self.keywords.iter().any(|n| n == name) {
                    return None;
                }
                self.keywords.push(name.to_vec());
                At::Value
            }
            _ => return None,
        };
        Some(())
    }

    /// A token where a value goes.
    #[inline(always)]
    fn value(&mut self, token: &Token<'_>, body: u64) -> Option<()> {
        let piece = match token {
            Token::Open(_) => {
                self.at = At::SeqType;
                return Some(());
            }
            Token::Close(_) => return self.close_container(),
            Token::Int { value: Integer::Small(v), .. } => Piece::Int(*v),
            Token::Int { value: Integer::Big(v), .. } => {
                self.bigs.push(v.clone());
                Piece::Big(u32::try_from(self.bigs.len() - 1).ok()?)
            }
            Token::String(raw) => self.string_piece(body, raw.len(), Piece::Bytes)?,
            Token::Float(f) => Piece::Float(*f),
            Token::Vocab { index, .. } => Piece::Word(*index as u8),
            _ => return None,
        };
        self.place(piece)
    }

    /// The type word of a sequence opened where a value goes.
    fn sequence(&mut self, token: &Token<'_>) -> Option<()> {
        // Nearly always VOCAB: its index tells the word.
        let index = match *token {
            Token::Vocab { index, .. } => index as u8,
            _ => word(token, self.max_index_length).and_then(vocab::foolscap_index)?,
        };
        let kind = match index {
            LIST => Kind::List,
            DICT => Kind::Dict,
            SET => Kind::Set,
            TUPLE => Kind::Tuple,
            IMMUTABLE_SET => Kind::FrozenSet,
            leaf => {
                self.at = match leaf {
                    UNICODE => At::UnicodeText,
                    NONE => At::NoneEnd,
                    BOOLEAN => At::BooleanInt,
                    _ => return None,
                };
                return Some(());
            }
        };
        if self.tape.len() == MAX_TAPE {
            return None;
        }
        self.open.push((kind, self.tape.len(), 0));
        self.tape.push(Piece::Open(kind, 0));
        self.at = At::Value;
        Some(())
    }

    /// A CLOSE where a value goes: the innermost container is complete (on the tape).
    fn close_container(&mut self) -> Option<()> {
        let (kind, at, len) = self.open.pop()?;
        if kind == Kind::Dict && len % 2 == 1 {
            return None;
        }
        self.tape[at] = Piece::Open(kind, len);
        self.placed()
    }

    /// A leaf goes on the tape.
    #[inline(always)]
    fn place(&mut self, piece: Piece) -> Option<()> {
        if self.tape.len() == MAX_TAPE {
            return None;
        }
        self.tape.push(piece);
        self.placed()
    }

    /// A complete value is on the tape: an item of the innermost open container, or the
    /// answer's value, an argument or a keyword argument's value.
    #[inline(always)]
    fn placed(&mut self) -> Option<()> {
        self.at = match self.open.last_mut() {
            Some((_, _, len)) => {
                *len = len.checked_add(1)?;
                At::Value
            }
            None => {
                self.values += 1;
                if self.answer {
                    At::AnswerEnd
                } else if self.values < self.positional {
                    At::Value
                } else {
                    At::Keyword
                }
            }
        };
        Some(())
    }

    /// The complete message's values, made from the tape and its bytes.
    fn make<B: Fill>(&mut self, b: &mut B, message: &[u8]) -> Option<Message<B>> {
        if self.answer {
            let value = replay(b, &self.tape, &self.bigs, message)?.pop()?;
            return Some(Message::Answer { reqid: self.reqid, value });
        }
        let method = b.name(&self.method).ok()?;
        let mut names = Vec::with_capacity(self.keywords.len());
        for name in &self.keywords {
            names.push(b.name(name).ok()?);
        }
        let mut args = replay(b, &self.tape, &self.bigs, message)?;
        let kwargs = names.into_iter().zip(args.drain(self.positional as usize..)).collect();
        Some(Message::Call { reqid: self.reqid, clid: self.clid, method, args, kwargs })
    }
}

/// A container being made from the tape. One shape for every kind rather than an enum, so that
/// a new one is written field by field where it goes (see `push_filling`).
struct Filling<V> {
    kind: Kind,
    /// The list, dict or set (a tuple is made once complete, from `items`).
    container: Option<V>,
    /// A dict's key whose value is next.
    key: Option<V>,
    /// A tuple's items so far.
    items: Vec<V>,
    /// How many items are in, and how many are to come.
    done: usize,
    left: usize,
}

/// Make the values of `tape` (whose strings are in `message`): the message's top-level values,
/// in order. None if the builder refuses one (a duplicate or unhashable key, text that is not
/// UTF-8, ...).
fn replay<B: Fill>(b: &mut B, tape: &[Piece], bigs: &[BigInt], message: &[u8]) -> Option<Vec<B::Value>> {
    let mut values = Vec::new();
    let mut stack: Vec<Filling<B::Value>> = Vec::new();
    let string = |at: u32, len: u32| message.get(at as usize..at as usize + len as usize);
    // Text as a dict's key goes through the builder's `key`.
    let key = |stack: &[Filling<B::Value>]| stack.last().is_some_and(|f| f.kind == Kind::Dict && f.key.is_none());
    for &piece in tape {
        let mut value = match piece {
            Piece::Int(v) => b.int(Integer::Small(v)).ok()?,
            Piece::Big(i) => b.int(Integer::Big(bigs.get(i as usize)?.clone())).ok()?,
            Piece::Float(f) => b.float(f).ok()?,
            Piece::Bytes(at, len) => b.bytes(string(at, len)?).ok()?,
            Piece::Word(index) => b.bytes(vocab::foolscap_word(u64::from(index))?).ok()?,
            Piece::Text(at, len) if key(&stack) => b.key(string(at, len)?).ok()?,
            Piece::Text(at, len) => b.text(string(at, len)?).ok()?,
            Piece::TextWord(index) if key(&stack) => b.key(vocab::foolscap_word(u64::from(index))?).ok()?,
            Piece::TextWord(index) => b.text(vocab::foolscap_word(u64::from(index))?).ok()?,
            Piece::None => b.none().ok()?,
            Piece::Bool(v) => b.boolean(v).ok()?,
            Piece::Open(kind, len) => {
                let len = len as usize;
                let (container, items) = match kind {
                    // SAFETY: filled below, item by item, before it is used; dropped if not.
                    Kind::List => (Some(unsafe { b.list_of(len) }.ok()?), Vec::new()),
                    Kind::Dict => (Some(b.new_dict().ok()?), Vec::new()),
                    Kind::Set => (Some(b.new_set().ok()?), Vec::new()),
                    Kind::Tuple | Kind::FrozenSet => (None, Vec::with_capacity(len)),
                };
                if len > 0 {
                    push_filling(&mut stack, kind, container, items, len);
                    continue;
                }
                finish(b, kind, container, None, items)?
            }
        };
        // Into the innermost container, which is complete once it holds all its items.
        loop {
            let Some(top) = stack.last_mut() else {
                values.push(value);
                break;
            };
            match top.kind {
                // SAFETY: the list was made for its items, put in in order.
                Kind::List => unsafe { b.fill(top.container.as_ref()?, top.done, value) }.ok()?,
                Kind::Dict => match top.key.take() {
                    None => top.key = Some(value),
                    Some(k) => b.dict_insert(top.container.as_ref()?, k, value).ok()?,
                },
                Kind::Set => b.set_add(top.container.as_ref()?, value).ok()?,
                Kind::Tuple | Kind::FrozenSet => top.items.push(value),
            }
            top.done += 1;
            top.left -= 1;
            if top.left > 0 {
                break;
            }
            let Filling { kind, container, key, items, .. } = stack.pop()?;
            value = finish(b, kind, container, key, items)?;
        }
    }
    Some(values)
}

/// Push a container being made, its fields written where they go: a frame built first and then
/// moved is read back with wider loads than the stores that made it, which stalls.
#[inline(always)]
fn push_filling<V>(stack: &mut Vec<Filling<V>>, kind: Kind, container: Option<V>, items: Vec<V>, left: usize) {
    stack.reserve(1);
    let slot = stack.spare_capacity_mut()[0].as_mut_ptr();
    // SAFETY: `slot` is the first spare element (reserved above); every field is written before
    // the length covers it.
    unsafe {
        std::ptr::addr_of_mut!((*slot).kind).write(kind);
        std::ptr::addr_of_mut!((*slot).container).write(container);
        std::ptr::addr_of_mut!((*slot).key).write(None);
        std::ptr::addr_of_mut!((*slot).items).write(items);
        std::ptr::addr_of_mut!((*slot).done).write(0);
        std::ptr::addr_of_mut!((*slot).left).write(left);
        stack.set_len(stack.len() + 1);
    }
}

/// The value of a container made from the tape, all its items in (a dict with a key left over
/// has none).
fn finish<B: Fill>(
    b: &mut B,
    kind: Kind,
    container: Option<B::Value>,
    key: Option<B::Value>,
    items: Vec<B::Value>,
) -> Option<B::Value> {
    match kind {
        Kind::Dict if key.is_some() => None,
        Kind::List | Kind::Dict | Kind::Set => container,
        Kind::FrozenSet => b.frozenset(items).ok(),
        Kind::Tuple => b.tuple(items).ok(),
    }
}

/// A type word: VOCAB, or a STRING no longer than the walker takes.
#[inline(always)]
fn word<'t>(token: &Token<'t>, max_index_length: usize) -> Option<&'t [u8]> {
    match *token {
        Token::Vocab { word, .. } => Some(word),
        Token::String(s) if s.len() <= max_index_length => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::banana::BananaError;
    use crate::foolscap::decode::read_message;
    use crate::foolscap::decode::tests::{describe, hex, TestBuild, VIOLATIONS};
    use crate::foolscap::encode::{word, Writer};
    use crate::foolscap::framer::{Frame, MessageFramer, Receive};

    impl Fill for TestBuild {}

    /// A stream's receiver: each message as the walker reads it, and as the quick pass built it
    /// (None: it gave up).
    struct Both {
        quick: Quick,
        limits: Limits,
        got: Vec<(String, Option<String>)>,
    }

    impl Receive<BananaError> for Both {
        fn frame(&mut self, frame: Frame<'_>) -> Result<(), BananaError> {
            if let Frame::Message { bytes, offset, first_object } = frame {
                let quick = self.quick.take(&mut TestBuild, bytes, offset).map(describe);
                let walked = read_message(bytes, offset, first_object, &self.limits, &mut TestBuild);
                self.got.push((walked.map_or_else(|e| format!("hard error {e}"), describe), quick));
            }
            Ok(())
        }

        fn start(&mut self, at: u64) {
            self.quick.start(at);
        }

        fn token(&mut self, token: &Token<'_>, body: u64) {
            self.quick.token(token, body);
        }

        fn text(&mut self, utf8: &[u8], at: u64) {
            self.quick.text(utf8, at);
        }

        fn int(&mut self, type_byte: u8, value: i64) {
            self.quick.int(type_byte, value);
        }

        fn vocab(&mut self, index: u8) {
            self.quick.vocab(index);
        }

        fn string(&mut self, body: &[u8], at: u64) {
            self.quick.string(body, at);
        }

        fn float(&mut self, value: f64) {
            self.quick.float(value);
        }

        fn open(&mut self, number: u64) {
            self.quick.open(number);
        }

        fn close(&mut self, number: u64) {
            self.quick.close(number);
        }
    }

    /// The messages of `data` fed in chunks of `size`, each as the walker and the quick pass
    /// make it.
    fn both(data: &[u8], size: usize, limits: Limits) -> Vec<(String, Option<String>)> {
        let mut framer = MessageFramer::new(limits.banana);
        let mut receiver = Both { quick: Quick::new(&limits), limits, got: Vec::new() };
        for chunk in data.chunks(size) {
            framer.receive(chunk, &mut receiver).unwrap();
        }
        receiver.got
    }

    const SIZES: [usize; 8] = [1, 2, 3, 5, 8, 13, 64, 1 << 20];

    /// A small deterministic generator (xorshift).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Write a random value; with `odd`, sometimes one the quick pass leaves to the walker
    /// (which it says in `odd_written`). `lists` are the lists opened so far in the message.
    fn value(w: &mut Writer, rng: &mut Rng, depth: usize, odd: bool, lists: &mut Vec<u64>, odd_written: &mut bool) {
        let leaf = depth > 3 || rng.below(3) > 0;
        let choice = if leaf { rng.below(13) } else { 13 + rng.below(if odd { 11 } else { 5 }) };
        match choice {
            0 => w.int(rng.below(300) as i64),
            1 => w.int(-(rng.below(1 << 40) as i64)),
            2 => w.big_int(&(num_bigint::BigInt::from(rng.below(9) + 1) << 70)),
            3 => w.float(rng.below(1000) as f64 / 7.0),
            4 => w.bytes(b"raw bytes"),
            5 => w.bytes(b"list"),
            6 => w.unicode(format!("text {}", rng.below(1000)).as_bytes()).unwrap(),
            7 => w.unicode("é".repeat(100).as_bytes()).unwrap(),
            8 => w.unicode(b"dict").unwrap(),
            9 => w.none().unwrap(),
            10 => w.boolean(rng.below(2) == 1).unwrap(),
            11 => w.unicode(b"").unwrap(),
            12 => w.int(1 << 50),
            13 | 14 => {
                let id = w.open(word::LIST).unwrap();
                lists.push(id);
                for _ in 0..rng.below(6) {
                    value(w, rng, depth + 1, odd, lists, odd_written);
                }
                w.close(id);
            }
            15 => {
                let id = w.open(if rng.below(2) == 0 { word::TUPLE } else { word::IMMUTABLE_SET }).unwrap();
                for i in 0..rng.below(4) {
                    w.int(i as i64);
                }
                if rng.below(2) == 0 {
                    let inner = w.open(word::TUPLE).unwrap();
                    w.unicode(b"inner").unwrap();
                    w.close(inner);
                }
                w.close(id);
            }
            16 => {
                let id = w.open(word::DICT).unwrap();
                for i in 0..rng.below(5) {
                    match i % 3 {
                        0 => w.unicode(format!("key{i}").as_bytes()).unwrap(),
                        1 => w.int(i as i64),
                        _ => {
                            let key = w.open(word::TUPLE).unwrap();
                            w.int(i as i64);
                            w.bytes(b"k");
                            w.close(key);
                        }
                    }
                    value(w, rng, depth + 1, odd, lists, odd_written);
                }
                w.close(id);
            }
            17 => {
                let id = w.open(word::SET).unwrap();
                for i in 0..rng.below(4) {
                    w.unicode(format!("m{i}").as_bytes()).unwrap();
                }
                w.close(id);
            }
            // The rest only with `odd`.
            18 => {
                *odd_written = true;
                match lists.last() {
                    Some(&id) => w.reference(id).unwrap(),
                    None => w.reference(0).unwrap(),
                }
            }
            19 => {
                *odd_written = true;
                w.decimal(b"1.25").unwrap();
            }
            20 => {
                *odd_written = true;
                let id = w.open(word::COPYABLE).unwrap();
                w.bytes(b"some.Copy");
                w.bytes(b"a");
                value(w, rng, depth + 1, odd, lists, odd_written);
                w.close(id);
            }
            21 => {
                *odd_written = true;
                w.my_reference(rng.below(9) as i64, Some((b"", None))).unwrap();
            }
            22 => {
                // Not odd: a PING between the tokens of a list is skipped by both.
                let id = w.open(word::LIST).unwrap();
                w.int(1);
                w.ping(3);
                w.unicode(b"after the ping").unwrap();
                w.close(id);
            }
            _ => {
                *odd_written = true;
                w.your_reference(7).unwrap();
            }
        }
    }

    /// A random answer or call, written from OPEN number `next_open`: its bytes, the next OPEN
    /// number, and whether it holds anything odd.
    fn message(rng: &mut Rng, next_open: u64, odd: bool) -> (Vec<u8>, u64, bool) {
        let mut w = Writer::new(Vec::new(), next_open, 500);
        let (mut lists, mut odd_written) = (Vec::new(), false);
        if rng.below(2) == 0 {
            let answer = w.open(word::ANSWER).unwrap();
            w.int(rng.below(1000) as i64);
            value(&mut w, rng, 0, odd, &mut lists, &mut odd_written);
            w.close(answer);
        } else {
            let call = w.open(word::CALL).unwrap();
            w.int(rng.below(1000) as i64);
            w.int(rng.below(20) as i64 - 10);
            w.bytes(if rng.below(2) == 0 { b"echo" } else { b"list" });
            let arguments = w.open(word::ARGUMENTS).unwrap();
            let positional = rng.below(4);
            w.int(positional as i64);
            for _ in 0..positional {
                value(&mut w, rng, 0, odd, &mut lists, &mut odd_written);
            }
            for name in ["alpha", "beta"].iter().take(rng.below(3) as usize) {
                w.bytes(name.as_bytes());
                value(&mut w, rng, 0, odd, &mut lists, &mut odd_written);
            }
            w.close(arguments);
            w.close(call);
        }
        let (bytes, next) = w.finish();
        (bytes, next, odd_written)
    }

    #[test]
    fn plain_messages_are_built_as_the_walker_builds_them_in_any_chunking() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut stream, mut next) = (Vec::new(), 0);
        for _ in 0..200 {
            let (bytes, after, _) = message(&mut rng, next, false);
            stream.extend(bytes);
            next = after;
        }
        for size in SIZES {
            let got = both(&stream, size, Limits::foolscap());
            assert_eq!(got.len(), 200);
            for (walked, quick) in &got {
                assert!(!walked.starts_with("violation"), "{walked}");
                assert_eq!(Some(walked), quick.as_ref(), "chunks of {size}");
            }
        }
    }

    #[test]
    fn anything_else_is_left_to_the_walker() {
        let mut rng = Rng(12345);
        let (mut stream, mut next, mut odd) = (Vec::new(), 0, Vec::new());
        for _ in 0..300 {
            let (bytes, after, odd_written) = message(&mut rng, next, true);
            stream.extend(bytes);
            next = after;
            odd.push(odd_written);
        }
        assert!(odd.iter().filter(|&&o| o).count() > 50);
        for size in SIZES {
            let got = both(&stream, size, Limits::foolscap());
            assert_eq!(got.len(), odd.len());
            for ((walked, quick), &odd) in got.iter().zip(&odd) {
                match quick {
                    // What the quick pass builds is what the walker makes of it...
                    Some(quick) => assert_eq!(quick, walked, "chunks of {size}"),
                    // ... and it gives up only at what it leaves to the walker.
                    None => assert!(odd, "chunks of {size}: given up on {walked}"),
                }
            }
        }
        // A message it gives up on may be followed by one it builds.
        for (data, why) in VIOLATIONS {
            let two = hex(&format!("{data} 02880d87028103810289"));
            for size in SIZES {
                let got = both(&two, size, Limits::foolscap());
                assert!(got[0].0.contains(why) && got[0].1.is_none(), "{data} in chunks of {size}: {got:?}");
                assert_eq!(got[1], ("answer 2 3".to_string(), Some("answer 2 3".to_string())));
            }
        }
    }

    #[test]
    fn a_message_of_more_values_than_the_tape_takes_is_left_to_the_walker() {
        for count in [MAX_TAPE - 1, MAX_TAPE] {
            let mut w = Writer::new(Vec::new(), 0, 500);
            let answer = w.open(word::ANSWER).unwrap();
            w.int(1);
            let list = w.open(word::LIST).unwrap();
            for _ in 0..count {
                w.int(7);
            }
            w.close(list);
            w.close(answer);
            let (data, _) = w.finish();
            let got = both(&data, 1 << 16, Limits::foolscap());
            let (walked, quick) = &got[0];
            // The list and its items are the tape's values.
            assert_eq!(quick.is_some(), count < MAX_TAPE, "{count} items");
            assert!(walked.starts_with("answer 1 (list 7 7 "));
            if let Some(quick) = quick {
                assert_eq!(quick, walked);
            }
        }
    }

    #[test]
    fn odd_layouts_and_limits() {
        let limits = Limits::foolscap();
        // (message, whether the quick pass builds it)
        let cases = [
            // An error, an ABORT: the walker's.
            (
                "00880e870181 01881287 1e82 747769737465642e707974686f6e2e6661696c7572652e4661696c757265 0189 0089",
                false,
            ),
            ("00880d870181 01880487 018a0189 008a0089", false),
            // Text whose CLOSE number has a needless zero group (not read as one token).
            ("0088 0d87 0181 02018808870282 6869 02010089 0089", true),
            // A PING before the type word, text as VOCAB, a tuple as a key.
            ("0088 8e 0d87 0181 0188 0087 0189 0089", true),
            ("00880d870181 01880887 0487 0189 0089", true),
            ("00880d870181 01880387 02880587 0181 0289 0382 6b6579 0189 0089", true),
            // The type words as STRINGs.
            ("0088 0682 616e73776572 0181 0188 0482 6c697374 0181 0189 0089", true),
            ("0088 0482 63616c6c 0181 0181 0382 616263 0188 0982 617267756d656e7473 0081 0189 0089", true),
            // A negative request ID, a NEG boolean: refused by the walker.
            ("00880d87 0183 0188 0087 0189 0089", false),
            ("00880d870181 01880187 0183 0189 0089", false),
        ];
        for (case, built) in cases {
            let data = hex(case);
            for size in SIZES {
                let got = both(&data, size, limits);
                assert_eq!(got.len(), 1);
                let (walked, quick) = &got[0];
                assert_eq!(quick.is_some(), built, "{case} in chunks of {size}: {walked}");
                if let Some(quick) = quick {
                    assert_eq!(quick, walked, "{case} in chunks of {size}");
                }
            }
        }
        // `(list)` as a STRING type word longer than max_index_length: the walker refuses it.
        let data = hex("00880d870181 0188 048274797065 0189 0089");
        let short = Limits { max_index_length: 3, ..limits };
        let got = both(&data, 1 << 20, short);
        assert!(got[0].0.starts_with("violation") && got[0].1.is_none(), "{got:?}");
    }
}
