//! The quick pass: most messages are answers and calls whose values are lists, tuples, dicts,
//! sets, text, bytes, ints, floats, None and booleans. This builds them from the framer's tokens
//! as it reads them (see [`Receive`](super::framer::Receive)), so each token is read once, and
//! keeps its place between chunks. At anything else — another sequence type, a `reference`, an
//! `error`, an ABORT, a layout the walker refuses, a builder's refusal — it gives up on the
//! message and drops what it built (nothing has seen it); the framed message is then read by
//! [`read_message`](super::decode::read_message), which says what is wrong if anything is.
//!
//! Every message it does build is the one the walker would: the same builder calls on the same
//! values, in the same order but for names (made once the call is complete). Limits are the
//! framer's, checked before a token gets here; the one the walker adds for type words
//! (`max_index_length`) is checked here too.

use super::decode::{Build, Message};
use super::Limits;
use crate::banana::decode::Token;
use crate::banana::{tb, Integer};

/// A [`Build`] whose values can be kept while the rest of their message arrives: between chunks
/// a builder's values may not be kept as they are (Python objects are bound to the call that
/// made them).
pub trait Keep: Build {
    type Kept;
    fn keep(&mut self, value: Self::Value) -> Self::Kept;
    fn unkeep(&mut self, kept: Self::Kept) -> Self::Value;

    /// A container (list, dict, set, tuple, frozenset) made for the message being built.
    #[inline(always)]
    fn made(&mut self, container: &Self::Value) {
        let _ = container;
    }

    /// The message being built waits for the next chunk.
    fn set_aside(&mut self) {}

    /// The message being built is complete (`true`; its values are about to be handed on) or
    /// dropped.
    fn finished(&mut self, complete: bool) {
        let _ = complete;
    }
}

/// A container being filled: `C` the container, `K` the items of a tuple, kept.
enum Open<C, K> {
    List(C),
    /// A dict, and the key whose value is still to come.
    Dict(C, Option<C>),
    Set(C),
    /// A tuple's (`true`: an immutable-set's) items so far: it is made once complete.
    Tuple(Vec<K>, bool),
}

/// What the next token of the message being built must be.
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
    /// A value: the next item of the innermost container, or if none is open, the answer, an
    /// argument or a keyword argument's value.
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

/// The message being built, kept between chunks.
pub struct Pending<K> {
    at: At,
    /// The containers open around the innermost one, outermost first.
    outer: Vec<Open<K, K>>,
    /// The innermost open container, between chunks.
    top: Option<Open<K, K>>,
    /// The text of a `(unicode ...)` whose CLOSE is still to come.
    text: Option<K>,
    answer: bool,
    reqid: i64,
    clid: i64,
    method: Vec<u8>,
    positional: u64,
    /// The positional arguments (an answer's value) so far.
    args: Vec<K>,
    /// Keyword arguments so far, their names as received, and the name whose value is being read.
    kwargs: Vec<(Vec<u8>, K)>,
    keyword: Vec<u8>,
}

impl<K> Default for Pending<K> {
    fn default() -> Self {
        Pending {
            at: At::Idle,
            outer: Vec::new(),
            top: None,
            text: None,
            answer: false,
            reqid: 0,
            clid: 0,
            method: Vec::new(),
            positional: 0,
            args: Vec::new(),
            kwargs: Vec::new(),
            keyword: Vec::new(),
        }
    }
}

/// The quick pass over one chunk: its [`Pending`] message, the innermost container held as the
/// builder's value.
pub struct Quick<'p, B: Keep> {
    pending: &'p mut Pending<B::Kept>,
    top: Option<Open<B::Value, B::Kept>>,
    max_index_length: usize,
    done: Option<Message<B>>,
}

impl<'p, B: Keep> Quick<'p, B> {
    /// Go on with `pending` (where the last chunk left it).
    pub fn resume(pending: &'p mut Pending<B::Kept>, limits: &Limits, build: &mut B) -> Quick<'p, B> {
        let top = pending.top.take().map(|open| live(build, open));
        Quick { pending, top, max_index_length: limits.max_index_length, done: None }
    }

    /// Keep where the message stands for the next chunk.
    pub fn suspend(self, build: &mut B) {
        if self.pending.at != At::Idle {
            build.set_aside();
        }
        self.pending.top = self.top.map(|open| kept(build, open));
    }

    /// A message starts (its top-level OPEN was read).
    pub fn start(&mut self, build: &mut B) {
        self.give_up(build);
        self.done = None;
        self.pending.at = At::Type;
    }

    /// The next token of the message.
    #[inline]
    pub fn token(&mut self, build: &mut B, token: &Token<'_>) {
        if self.pending.at != At::Idle && self.step(build, token).is_none() {
            self.give_up(build);
        }
    }

    /// A `(unicode STRING)` of the message, read as one.
    #[inline]
    pub fn text(&mut self, build: &mut B, utf8: &[u8]) {
        if self.pending.at != At::Idle && self.whole_text(build, utf8).is_none() {
            self.give_up(build);
        }
    }

    /// The message just completed (its top-level CLOSE was the last token), if it was built.
    pub fn take(&mut self) -> Option<Message<B>> {
        self.done.take()
    }

    /// Drop the message: nothing is built until the next one starts.
    fn give_up(&mut self, build: &mut B) {
        let p = &mut *self.pending;
        p.at = At::Idle;
        self.top = None;
        p.outer.clear();
        p.text = None;
        p.args.clear();
        p.kwargs.clear();
        build.finished(false);
    }

    fn whole_text(&mut self, b: &mut B, utf8: &[u8]) -> Option<()> {
        if self.pending.at != At::Value {
            return None;
        }
        let text = self.text_value(b, utf8)?;
        self.place(b, text)
    }

    /// Text, through [`Build::key`] if it is a dict's key.
    #[inline(always)]
    fn text_value(&mut self, b: &mut B, utf8: &[u8]) -> Option<B::Value> {
        match self.top {
            Some(Open::Dict(_, None)) => b.key(utf8).ok(),
            _ => b.text(utf8).ok(),
        }
    }

    /// Take `token`; None to give up on the message.
    fn step(&mut self, b: &mut B, token: &Token<'_>) -> Option<()> {
        let at = self.pending.at;
        if at == At::Value {
            return self.value(b, token);
        }
        let next = match (at, token) {
            (At::SeqType, _) => return self.sequence(b, token),
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
                if at == At::AnswerReqid {
                    At::Value
                } else {
                    At::CallClid
                }
            }
            (At::AnswerEnd, Token::Close(_)) => {
                let value = b.unkeep(p.args.pop()?);
                b.finished(true);
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
                if p.kwargs.iter().any(|(n, _)| n == name) {
                    return None;
                }
                p.keyword.clear();
                p.keyword.extend_from_slice(name);
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
            Token::Close(_) => return self.close(b),
            Token::Int { value, .. } => b.int(value.clone()).ok()?,
            Token::String(raw) => b.bytes(raw).ok()?,
            Token::Float(f) => b.float(*f).ok()?,
            Token::Vocab { word, .. } => b.bytes(word).ok()?,
            _ => return None,
        };
        self.place(b, value)
    }

    /// The type word of a sequence opened where a value goes.
    fn sequence(&mut self, b: &mut B, token: &Token<'_>) -> Option<()> {
        let open = match word(token, self.max_index_length)? {
            b"list" => Open::List(b.new_list().ok()?),
            b"dict" => Open::Dict(b.new_dict().ok()?, None),
            b"set" => Open::Set(b.new_set().ok()?),
            b"tuple" => Open::Tuple(Vec::new(), false),
            b"immutable-set" => Open::Tuple(Vec::new(), true),
            leaf => {
                self.pending.at = match leaf {
                    b"unicode" => At::UnicodeText,
                    b"none" => At::NoneEnd,
                    b"boolean" => At::BooleanInt,
                    _ => return None,
                };
                return Some(());
            }
        };
        if let Open::List(container) | Open::Dict(container, _) | Open::Set(container) = &open {
            b.made(container);
        }
        if let Some(outer) = self.top.take() {
            self.pending.outer.push(kept(b, outer));
        }
        self.top = Some(open);
        self.pending.at = At::Value;
        Some(())
    }

    /// A CLOSE where a value goes: the innermost container is complete.
    fn close(&mut self, b: &mut B) -> Option<()> {
        let value = match self.top.take()? {
            Open::List(list) => list,
            Open::Dict(dict, None) => dict,
            Open::Dict(_, Some(_)) => return None,
            Open::Set(set) => set,
            Open::Tuple(items, frozen) => {
                let items = items.into_iter().map(|item| b.unkeep(item)).collect();
                let tuple = if frozen { b.frozenset(items) } else { b.tuple(items) }.ok()?;
                b.made(&tuple);
                tuple
            }
        };
        self.top = self.pending.outer.pop().map(|open| live(b, open));
        self.place(b, value)
    }

    /// A complete value goes into the innermost container, or where the message takes it.
    #[inline(always)]
    fn place(&mut self, b: &mut B, value: B::Value) -> Option<()> {
        match &mut self.top {
            Some(Open::List(list)) => b.list_push(list, value).ok()?,
            Some(Open::Dict(dict, key)) => match key.take() {
                None => *key = Some(value),
                Some(k) => b.dict_insert(dict, k, value).ok()?,
            },
            Some(Open::Set(set)) => b.set_add(set, value).ok()?,
            Some(Open::Tuple(items, _)) => items.push(b.keep(value)),
            None => return self.place_outside(b, value),
        }
        self.pending.at = At::Value;
        Some(())
    }

    /// A complete value that is the answer's, an argument or a keyword argument's.
    fn place_outside(&mut self, b: &mut B, value: B::Value) -> Option<()> {
        let p = &mut *self.pending;
        let value = b.keep(value);
        p.at = if p.answer {
            p.args.push(value);
            At::AnswerEnd
        } else if (p.args.len() as u64) < p.positional {
            p.args.push(value);
            if p.args.len() as u64 == p.positional {
                At::Keyword
            } else {
                At::Value
            }
        } else {
            p.kwargs.push((std::mem::take(&mut p.keyword), value));
            At::Keyword
        };
        Some(())
    }
}

/// The complete call of `p`: its names made now.
fn call<B: Keep>(p: &mut Pending<B::Kept>, b: &mut B) -> Option<Message<B>> {
    let method = b.name(&p.method).ok()?;
    let mut names = Vec::with_capacity(p.kwargs.len());
    for (name, _) in &p.kwargs {
        names.push(b.name(name).ok()?);
    }
    let args = p.args.drain(..).map(|arg| b.unkeep(arg)).collect();
    let kwargs = names.into_iter().zip(p.kwargs.drain(..)).map(|(name, (_, value))| (name, b.unkeep(value))).collect();
    b.finished(true);
    Some(Message::Call { reqid: p.reqid, clid: p.clid, method, args, kwargs })
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

fn live<B: Keep>(b: &mut B, open: Open<B::Kept, B::Kept>) -> Open<B::Value, B::Kept> {
    match open {
        Open::List(list) => Open::List(b.unkeep(list)),
        Open::Dict(dict, key) => {
            let dict = b.unkeep(dict);
            Open::Dict(dict, key.map(|k| b.unkeep(k)))
        }
        Open::Set(set) => Open::Set(b.unkeep(set)),
        Open::Tuple(items, frozen) => Open::Tuple(items, frozen),
    }
}

fn kept<B: Keep>(b: &mut B, open: Open<B::Value, B::Kept>) -> Open<B::Kept, B::Kept> {
    match open {
        Open::List(list) => Open::List(b.keep(list)),
        Open::Dict(dict, key) => {
            let dict = b.keep(dict);
            Open::Dict(dict, key.map(|k| b.keep(k)))
        }
        Open::Set(set) => Open::Set(b.keep(set)),
        Open::Tuple(items, frozen) => Open::Tuple(items, frozen),
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
            self.quick.start(&mut self.build);
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
            let mut build = TestBuild;
            let quick = Quick::resume(&mut pending, &limits, &mut build);
            let mut receiver = Both { quick, build, limits, got: Vec::new() };
            framer.receive(chunk, &mut receiver).unwrap();
            let Both { quick, mut build, got: more, .. } = receiver;
            quick.suspend(&mut build);
            got.extend(more);
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
