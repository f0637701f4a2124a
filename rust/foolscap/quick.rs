//! The quick pass: most messages are answers and calls whose values are lists, tuples, dicts,
//! sets, text, bytes, ints, floats, None and booleans. This reads them from the framer's tokens
//! as it reads them (see [`Receive`](super::framer::Receive)), so each token is read once, and
//! keeps its place between chunks. At anything else — another sequence type, a `reference`, an
//! `error`, an ABORT, a layout the walker refuses, a builder's refusal — it gives up on the
//! message and drops what it made (nothing has seen it); the framed message is then read by
//! [`read_message`](super::decode::read_message), which says what is wrong if anything is.
//!
//! The leaves (text, numbers, ...) are made as their tokens are read; the containers only once
//! the message is complete, from a tape of its values in wire order: a message that waits
//! between chunks holds no half-filled containers, which a garbage collector would walk again
//! and again (and containers whose length is known are made at their size).
//!
//! Every message it does build is the one the walker would: the same values from the same
//! builder, the same checks. Limits are the framer's, checked before a token gets here; the one
//! the walker adds for type words (`max_index_length`) is checked here too.

use super::decode::{Build, Built, Message};
use super::Limits;
use crate::banana::decode::Token;
use crate::banana::vocab::{self, const_index, FOOLSCAP_VOCAB};
use crate::banana::{tb, Integer};

/// The VOCAB index of a word of foolscap's table.
const fn index_of(word: &[u8]) -> u64 {
    match const_index(&FOOLSCAP_VOCAB, 0, word) {
        Some(index) => index as u64,
        None => panic!("not a vocabulary word"),
    }
}

const LIST: u64 = index_of(b"list");
const DICT: u64 = index_of(b"dict");
const SET: u64 = index_of(b"set");
const TUPLE: u64 = index_of(b"tuple");
const IMMUTABLE_SET: u64 = index_of(b"immutable-set");
const UNICODE: u64 = index_of(b"unicode");
const NONE: u64 = index_of(b"none");
const BOOLEAN: u64 = index_of(b"boolean");

/// A [`Build`] whose values can be kept while the rest of their message arrives (between chunks
/// a builder's values may not be kept as they are: Python objects are bound to the call that
/// made them), and which can make a list of a known length.
pub trait Keep: Build {
    type Kept;
    fn keep(&mut self, value: Self::Value) -> Self::Kept;
    fn unkeep(&mut self, kept: Self::Kept) -> Self::Value;

    /// A list of `len` items, put in by [`Keep::fill`].
    ///
    /// # Safety
    ///
    /// The list is not used, or handed on, before its `len` items are put in, in order; it may
    /// be dropped at any time.
    unsafe fn list_of(&mut self, len: usize) -> Built<Self::Value, Self::Error> {
        let _ = len;
        self.new_list()
    }

    /// Put in item `index` of a list made by [`Keep::list_of`].
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

/// A value of the message, in wire order: a complete leaf, or the start of a container whose
/// items (for a dict, its keys and values, one after the other) are the next `len` values.
enum Piece<K> {
    Value(K),
    Open(Kind, u32),
}

/// What the next token of the message being read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// No message, or one given up on: nothing until the next message starts.
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
    /// The CLOSE of a `(unicode ...)`, whose text is made.
    UnicodeEnd,
    NoneEnd,
    BooleanInt,
    BooleanEnd(bool),
}

/// The message being read, kept between chunks.
pub struct Pending<K> {
    at: At,
    /// Its values so far.
    tape: Vec<Piece<K>>,
    /// The containers open, innermost last: their kind, where their piece is, and how many
    /// items they hold so far.
    open: Vec<(Kind, usize, u32)>,
    /// The text of a `(unicode ...)` whose CLOSE is still to come.
    text: Option<K>,
    answer: bool,
    reqid: i64,
    clid: i64,
    method: Vec<u8>,
    positional: u64,
    /// The answer's value, or the arguments, complete so far.
    values: u64,
    /// The keyword arguments' names so far, as received.
    keywords: Vec<Vec<u8>>,
}

impl<K> Default for Pending<K> {
    fn default() -> Self {
        Pending {
            at: At::Idle,
            tape: Vec::new(),
            open: Vec::new(),
            text: None,
            answer: false,
            reqid: 0,
            clid: 0,
            method: Vec::new(),
            positional: 0,
            values: 0,
            keywords: Vec::new(),
        }
    }
}

/// A container being made from the tape: what it holds so far, and how many items are to come.
struct Filling<V> {
    open: Open<V>,
    left: u32,
}

enum Open<V> {
    /// A list and the index of its next item.
    List(V, usize),
    /// A dict, and the key whose value is next.
    Dict(V, Option<V>),
    Set(V),
    Tuple(Vec<V>, bool),
}

/// The quick pass over one chunk of the stream.
pub struct Quick<'p, B: Keep> {
    pending: &'p mut Pending<B::Kept>,
    max_index_length: usize,
    done: Option<Message<B>>,
}

impl<'p, B: Keep> Quick<'p, B> {
    /// Go on with `pending` (where the last chunk left it).
    pub fn new(pending: &'p mut Pending<B::Kept>, limits: &Limits) -> Quick<'p, B> {
        Quick { pending, max_index_length: limits.max_index_length, done: None }
    }

    /// A message starts (its top-level OPEN was read).
    pub fn start(&mut self) {
        self.give_up();
        self.done = None;
        self.pending.at = At::Type;
    }

    /// The next token of the message.
    #[inline]
    pub fn token(&mut self, build: &mut B, token: &Token<'_>) {
        if !matches!(self.pending.at, At::Idle) && self.step(build, token).is_none() {
            self.give_up();
        }
    }

    /// A `(unicode STRING)` of the message, read as one.
    #[inline]
    pub fn text(&mut self, build: &mut B, utf8: &[u8]) {
        if !matches!(self.pending.at, At::Idle) && self.whole_text(build, utf8).is_none() {
            self.give_up();
        }
    }

    /// The message just completed (its top-level CLOSE was the last token), if it was built.
    pub fn take(&mut self) -> Option<Message<B>> {
        self.done.take()
    }

    /// Drop the message: nothing is read until the next one starts.
    fn give_up(&mut self) {
        let p = &mut *self.pending;
        p.at = At::Idle;
        p.tape.clear();
        p.open.clear();
        p.text = None;
        p.keywords.clear();
    }

    fn whole_text(&mut self, b: &mut B, utf8: &[u8]) -> Option<()> {
        if !matches!(self.pending.at, At::Value) {
            return None;
        }
        let text = self.text_value(b, utf8)?;
        self.place(b, text)
    }

    /// Text, through [`Build::key`] if it is a dict's key.
    #[inline(always)]
    fn text_value(&self, b: &mut B, utf8: &[u8]) -> Option<B::Value> {
        match self.pending.open.last() {
            Some(&(Kind::Dict, _, len)) if len % 2 == 0 => b.key(utf8).ok(),
            _ => b.text(utf8).ok(),
        }
    }

    /// Take `token`; None to give up on the message.
    fn step(&mut self, b: &mut B, token: &Token<'_>) -> Option<()> {
        let at = self.pending.at;
        if let At::Value = at {
            return self.value(b, token);
        }
        let next = match (at, token) {
            (At::SeqType, _) => return self.sequence(token),
            (At::UnicodeText, Token::String(utf8) | Token::Vocab { word: utf8, .. }) => {
                let text = self.text_value(b, utf8)?;
                self.pending.text = Some(b.keep(text));
                At::UnicodeEnd
            }
            (At::UnicodeEnd, Token::Close(_)) => {
                let text = b.unkeep(self.pending.text.take()?);
                return self.place(b, text);
            }
            (At::NoneEnd, Token::Close(_)) => {
                let none = b.none().ok()?;
                return self.place(b, none);
            }
            (At::BooleanInt, Token::Int { type_byte: tb::INT, value }) => At::BooleanEnd(*value != Integer::Small(0)),
            (At::BooleanEnd(value), Token::Close(_)) => {
                let boolean = b.boolean(value).ok()?;
                return self.place(b, boolean);
            }
            _ => return self.layout(b, at, token),
        };
        self.pending.at = next;
        Some(())
    }

    /// A token of the message's own layout (not of a value).
    fn layout(&mut self, b: &mut B, at: At, token: &Token<'_>) -> Option<()> {
        let p = &mut *self.pending;
        p.at = match (at, token) {
            (At::Type, _) => match word(token, self.max_index_length)? {
                b"answer" => {
                    p.answer = true;
                    At::AnswerReqid
                }
                b"call" => {
                    p.answer = false;
                    At::CallReqid
                }
                _ => return None,
            },
            (At::AnswerReqid | At::CallReqid, Token::Int { type_byte: tb::INT, value: Integer::Small(reqid) }) => {
                p.reqid = *reqid;
                p.values = 0;
                if at == At::AnswerReqid {
                    At::Value
                } else {
                    At::CallClid
                }
            }
            (At::AnswerEnd, Token::Close(_)) => {
                let value = replay(b, &mut p.tape)?.pop()?;
                self.done = Some(Message::Answer { reqid: p.reqid, value });
                At::Idle
            }
            (At::CallClid, Token::Int { value: Integer::Small(clid), .. }) => {
                p.clid = *clid;
                At::CallMethod
            }
            (At::CallMethod, Token::String(name) | Token::Vocab { word: name, .. }) => {
                p.method.clear();
                p.method.extend_from_slice(name);
                At::ArgsOpen
            }
            (At::ArgsOpen, Token::Open(_)) => At::ArgsType,
            (At::ArgsType, _) if word(token, self.max_index_length)? == b"arguments" => At::ArgsCount,
            (At::ArgsCount, Token::Int { type_byte: tb::INT, value: Integer::Small(count) }) => {
                p.positional = *count as u64;
                if *count == 0 {
                    At::Keyword
                } else {
                    At::Value
                }
            }
            (At::Keyword, Token::Close(_)) => At::CallEnd,
            (At::Keyword, Token::String(name) | Token::Vocab { word: name, .. }) => {
                if p.keywords.iter().any(|n| n == name) {
                    return None;
                }
                p.keywords.push(name.to_vec());
                At::Value
            }
            (At::CallEnd, Token::Close(_)) => {
                self.done = Some(call(p, b)?);
                At::Idle
            }
            _ => return None,
        };
        Some(())
    }

    /// A token where a value goes.
    #[inline(always)]
    fn value(&mut self, b: &mut B, token: &Token<'_>) -> Option<()> {
        let value = match token {
            Token::Open(_) => {
                self.pending.at = At::SeqType;
                return Some(());
            }
            Token::Close(_) => return self.close(),
            Token::Int { value, .. } => b.int(value.clone()).ok()?,
            Token::String(raw) => b.bytes(raw).ok()?,
            Token::Float(f) => b.float(*f).ok()?,
            Token::Vocab { word, .. } => b.bytes(word).ok()?,
            _ => return None,
        };
        self.place(b, value)
    }

    /// The type word of a sequence opened where a value goes.
    fn sequence(&mut self, token: &Token<'_>) -> Option<()> {
        let p = &mut *self.pending;
        // Nearly always VOCAB: its index tells the word.
        let index = match *token {
            Token::Vocab { index, .. } => index,
            _ => word(token, self.max_index_length).and_then(vocab::foolscap_index).map_or(u64::MAX, u64::from),
        };
        let kind = match index {
            LIST => Kind::List,
            DICT => Kind::Dict,
            SET => Kind::Set,
            TUPLE => Kind::Tuple,
            IMMUTABLE_SET => Kind::FrozenSet,
            leaf => {
                p.at = match leaf {
                    UNICODE => At::UnicodeText,
                    NONE => At::NoneEnd,
                    BOOLEAN => At::BooleanInt,
                    _ => return None,
                };
                return Some(());
            }
        };
        p.open.push((kind, p.tape.len(), 0));
        p.tape.push(Piece::Open(kind, 0));
        p.at = At::Value;
        Some(())
    }

    /// A CLOSE where a value goes: the innermost container is complete (on the tape).
    fn close(&mut self) -> Option<()> {
        let p = &mut *self.pending;
        let (kind, at, len) = p.open.pop()?;
        if kind == Kind::Dict && len % 2 == 1 {
            return None;
        }
        p.tape[at] = Piece::Open(kind, len);
        self.placed()
    }

    /// A complete leaf goes on the tape.
    #[inline(always)]
    fn place(&mut self, b: &mut B, value: B::Value) -> Option<()> {
        let kept = b.keep(value);
        self.pending.tape.push(Piece::Value(kept));
        self.placed()
    }

    /// A complete value is on the tape: an item of the innermost open container, or the
    /// answer's value, an argument or a keyword argument's value.
    #[inline(always)]
    fn placed(&mut self) -> Option<()> {
        let p = &mut *self.pending;
        p.at = match p.open.last_mut() {
            Some((_, _, len)) => {
                *len = len.checked_add(1)?;
                At::Value
            }
            None => {
                p.values += 1;
                if p.answer {
                    At::AnswerEnd
                } else if p.values < p.positional {
                    At::Value
                } else {
                    At::Keyword
                }
            }
        };
        Some(())
    }
}

/// The complete call of `p`.
fn call<B: Keep>(p: &mut Pending<B::Kept>, b: &mut B) -> Option<Message<B>> {
    let method = b.name(&p.method).ok()?;
    let mut names = Vec::with_capacity(p.keywords.len());
    for name in &p.keywords {
        names.push(b.name(name).ok()?);
    }
    let mut values = replay(b, &mut p.tape)?;
    let kwargs = names.into_iter().zip(values.drain(p.positional as usize..)).collect();
    Some(Message::Call { reqid: p.reqid, clid: p.clid, method, args: values, kwargs })
}

/// Make the values of the tape (which is left empty): the message's top-level values, in order.
/// None if the builder refuses one (a duplicate or unhashable key, ...).
fn replay<B: Keep>(b: &mut B, tape: &mut Vec<Piece<B::Kept>>) -> Option<Vec<B::Value>> {
    let mut values = Vec::new();
    let mut stack: Vec<Filling<B::Value>> = Vec::new();
    for piece in tape.drain(..) {
        let mut value = match piece {
            Piece::Value(kept) => b.unkeep(kept),
            Piece::Open(kind, len) => {
                let open = match kind {
                    // SAFETY: filled below, item by item, before it is used; dropped if not.
                    Kind::List => Open::List(unsafe { b.list_of(len as usize) }.ok()?, 0),
                    Kind::Dict => Open::Dict(b.new_dict().ok()?, None),
                    Kind::Set => Open::Set(b.new_set().ok()?),
                    Kind::Tuple | Kind::FrozenSet => {
                        Open::Tuple(Vec::with_capacity(len as usize), kind == Kind::FrozenSet)
                    }
                };
                let filling = Filling { open, left: len };
                if len > 0 {
                    stack.push(filling);
                    continue;
                }
                finish(b, filling.open)?
            }
        };
        // Into the innermost container, which is complete once it holds all its items.
        loop {
            let Some(top) = stack.last_mut() else {
                values.push(value);
                break;
            };
            match &mut top.open {
                // SAFETY: the list was made for its `len` items, put in in order.
                Open::List(list, next) => {
                    unsafe { b.fill(list, *next, value) }.ok()?;
                    *next += 1;
                }
                Open::Dict(dict, key) => match key.take() {
                    None => *key = Some(value),
                    Some(k) => b.dict_insert(dict, k, value).ok()?,
                },
                Open::Set(set) => b.set_add(set, value).ok()?,
                Open::Tuple(items, _) => items.push(value),
            }
            top.left -= 1;
            if top.left > 0 {
                break;
            }
            let full = stack.pop()?;
            value = finish(b, full.open)?;
        }
    }
    Some(values)
}

/// The value of a container made from the tape, all its items in.
fn finish<B: Keep>(b: &mut B, open: Open<B::Value>) -> Option<B::Value> {
    match open {
        Open::List(list, _) | Open::Dict(list, None) | Open::Set(list) => Some(list),
        Open::Dict(_, Some(_)) => None,
        Open::Tuple(items, true) => b.frozenset(items).ok(),
        Open::Tuple(items, false) => b.tuple(items).ok(),
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
    use crate::foolscap::decode::tests::{describe, hex, TestBuild, V, VIOLATIONS};
    use crate::foolscap::encode::{word, Writer};
    use crate::foolscap::framer::{Frame, MessageFramer, Receive};

    impl Keep for TestBuild {
        type Kept = V;

        fn keep(&mut self, value: V) -> V {
            value
        }

        fn unkeep(&mut self, kept: V) -> V {
            kept
        }
    }

    /// One chunk's receiver: each message as the walker reads it, and as the quick pass built
    /// it (None: it gave up).
    struct Both<'p> {
        quick: Quick<'p, TestBuild>,
        build: TestBuild,
        limits: Limits,
        got: Vec<(String, Option<String>)>,
    }

    impl Receive<BananaError> for Both<'_> {
        fn frame(&mut self, frame: Frame<'_>) -> Result<(), BananaError> {
            if let Frame::Message { bytes, offset, first_object } = frame {
                let quick = self.quick.take().map(describe);
                let walked = read_message(bytes, offset, first_object, &self.limits, &mut self.build);
                self.got.push((walked.map_or_else(|e| format!("hard error {e}"), describe), quick));
            }
            Ok(())
        }

        fn start(&mut self) {
            self.quick.start();
        }

        fn token(&mut self, token: &Token<'_>) {
            self.quick.token(&mut self.build, token);
        }

        fn text(&mut self, utf8: &[u8]) {
            self.quick.text(&mut self.build, utf8);
        }
    }

    /// The messages of `data` fed in chunks of `size`, each as the walker and the quick pass
    /// make it.
    fn both(data: &[u8], size: usize, limits: Limits) -> Vec<(String, Option<String>)> {
        let mut framer = MessageFramer::new(limits.banana);
        let mut pending = Pending::default();
        let mut got = Vec::new();
        for chunk in data.chunks(size) {
            let quick = Quick::new(&mut pending, &limits);
            let mut receiver = Both { quick, build: TestBuild, limits, got: Vec::new() };
            framer.receive(chunk, &mut receiver).unwrap();
            got.extend(receiver.got);
        }
        got
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
