//! One framed top-level sequence -> a PB message, with its values built through [`Build`].
//!
//! The rules are foolscap's unslicers': which tokens each sequence type takes, in which order,
//! and how `reference` numbers objects (by the receiver's count of OPEN tokens). Lists, dicts and
//! sets can be referred to while they are being filled, so cycles through them work; a tuple,
//! frozenset or copyable only once it is complete (foolscap patches such references later with
//! Deferreds; here they discard the message instead).
//!
//! Whatever is wrong inside a message is a [`Fault::Violation`] and discards only that message
//! (the framer has already checked that the stream itself is sound). A few things foolscap
//! treats as fatal for the connection are Violations here too: a bad argument layout, a duplicate
//! dict key or attribute name, a reference to nothing.

use std::collections::HashSet;
use std::fmt::Display;

use crate::banana::decode::{Step, Token, TokenReader};
use crate::banana::{show, tb, vocab, Dialect, Integer};

use super::{quick_header, Limits, UNICODE};

/// Why a value could not be built.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault<E> {
    /// The message is unacceptable; the text says why.
    Violation(String),
    /// The sender gave up on the message part-way (an ABORT token).
    Aborted,
    /// Something that must stop decoding altogether (from the builder).
    Hard(E),
}

pub type Built<T, E> = Result<T, Fault<E>>;

/// Makes the values of a message. Errors a builder returns are Violations (or `Hard`); the walker
/// adds where in the stream they happened.
pub trait Build {
    type Value: Clone;
    /// Method, keyword-argument and attribute names (UTF-8 text).
    type Name;
    type Error;

    fn name(&mut self, raw: &[u8]) -> Built<Self::Name, Self::Error>;
    fn int(&mut self, value: Integer) -> Built<Self::Value, Self::Error>;
    fn float(&mut self, value: f64) -> Built<Self::Value, Self::Error>;
    fn bytes(&mut self, value: &[u8]) -> Built<Self::Value, Self::Error>;
    /// `(unicode STRING)`; the bytes may not be UTF-8.
    fn text(&mut self, utf8: &[u8]) -> Built<Self::Value, Self::Error>;
    /// [`Build::text`] for a dict key (the same keys tend to come again and again).
    fn key(&mut self, utf8: &[u8]) -> Built<Self::Value, Self::Error> {
        self.text(utf8)
    }
    /// `(decimal STRING)`: the text form of a decimal.
    fn decimal(&mut self, text: &str) -> Built<Self::Value, Self::Error>;
    fn none(&mut self) -> Built<Self::Value, Self::Error>;
    fn boolean(&mut self, value: bool) -> Built<Self::Value, Self::Error>;
    fn new_list(&mut self) -> Built<Self::Value, Self::Error>;
    fn list_push(&mut self, list: &Self::Value, item: Self::Value) -> Built<(), Self::Error>;
    fn tuple(&mut self, items: Vec<Self::Value>) -> Built<Self::Value, Self::Error>;
    fn new_set(&mut self) -> Built<Self::Value, Self::Error>;
    /// Fails on an unhashable member.
    fn set_add(&mut self, set: &Self::Value, item: Self::Value) -> Built<(), Self::Error>;
    fn frozenset(&mut self, items: Vec<Self::Value>) -> Built<Self::Value, Self::Error>;
    fn new_dict(&mut self) -> Built<Self::Value, Self::Error>;
    /// Fails on an unhashable or duplicate key.
    fn dict_insert(&mut self, dict: &Self::Value, key: Self::Value, value: Self::Value) -> Built<(), Self::Error>;
    /// `(copyable TYPENAME name value ...)`, attribute names unique and in wire order.
    fn copyable(&mut self, typename: &str, state: Vec<(Self::Name, Self::Value)>) -> Built<Self::Value, Self::Error>;
    fn my_reference(&mut self, clid: i64, iface: Option<&str>, furl: Option<&str>) -> Built<Self::Value, Self::Error>;
    fn your_reference(&mut self, clid: i64) -> Built<Self::Value, Self::Error>;
    fn their_reference(&mut self, giftid: i64, furl: &str) -> Built<Self::Value, Self::Error>;
}

/// One received top-level sequence.
pub enum Message<B: Build> {
    Call {
        reqid: i64,
        clid: i64,
        method: B::Name,
        args: Vec<B::Value>,
        kwargs: Vec<(B::Name, B::Value)>,
    },
    Answer {
        reqid: i64,
        value: B::Value,
    },
    Error {
        reqid: i64,
        failure: B::Value,
    },
    /// The sender aborted a call while sending it: foolscap sends no reply to these.
    CallAborted {
        reqid: Option<i64>,
    },
    /// A sequence that is not an acceptable message. `what` is `call`, `answer`, `error` or
    /// `unknown` (a type that is none of those).
    Violation {
        what: &'static str,
        reqid: Option<i64>,
        message: String,
    },
}

/// Read the top-level sequence `frame` (from the framer: complete and properly nested), whose
/// first byte is at stream offset `offset` and whose OPEN is object number `first_object`.
pub fn read_message<B: Build>(
    frame: &[u8],
    offset: u64,
    first_object: u64,
    limits: &Limits,
    build: &mut B,
) -> Result<Message<B>, B::Error> {
    let mut walker = Walker {
        reader: TokenReader::new(frame, offset, Dialect::Foolscap, limits.banana),
        data: frame,
        len: frame.len(),
        pos: 0,
        last: 0,
        base: offset,
        first_object,
        objects: Vec::new(),
        limits,
        build,
        stack: Vec::new(),
        key: false,
    };
    let mut reqid = None;
    let (what, result) = match walker.top_level() {
        Ok(b"call") => ("call", walker.call(&mut reqid)),
        Ok(b"answer") => ("answer", walker.reply(&mut reqid).map(|(reqid, value)| Message::Answer { reqid, value })),
        Ok(b"error") => ("error", walker.reply(&mut reqid).map(|(reqid, failure)| Message::Error { reqid, failure })),
        Ok(other) => {
            let message = format!("unknown top-level OPEN type {} at byte {offset}", show(other));
            return Ok(Message::Violation { what: "unknown", reqid: None, message });
        }
        Err(fault) => ("unknown", Err(fault)),
    };
    match result {
        Ok(message) => Ok(message),
        Err(Fault::Violation(message)) => Ok(Message::Violation { what, reqid, message }),
        Err(Fault::Aborted) if what == "call" => Ok(Message::CallAborted { reqid }),
        Err(Fault::Aborted) => {
            let message = format!("ABORT received at byte {}", offset + walker.last as u64);
            Ok(Message::Violation { what, reqid, message })
        }
        Err(Fault::Hard(e)) => Err(e),
    }
}

/// What an object number stands for, for `reference`.
enum Slot<V> {
    /// A sequence type that cannot be referred to (`none`, `unicode`, a reference, ...).
    Unreferenceable,
    /// A tuple, frozenset or copyable still being read.
    Incomplete(&'static str),
    Ready(V),
}

struct Walker<'a, 'b, B: Build> {
    reader: TokenReader<'a>,
    data: &'a [u8],
    len: usize,
    pos: usize,
    /// Where the last token read starts.
    last: usize,
    base: u64,
    first_object: u64,
    /// Object numbers of this message, from `first_object` on.
    objects: Vec<Slot<B::Value>>,
    limits: &'b Limits,
    build: &'b mut B,
    /// The sequences open around the one being read, innermost last.
    stack: Vec<Seq<'a, B>>,
    /// The value being read is a dict key.
    key: bool,
}

/// A sequence being read: where the walk goes on once the value being read is complete.
enum Seq<'a, B: Build> {
    List(B::Value),
    /// A dict opened at `at`; `key` is a key (read at `key_at`) whose value is still to come.
    Dict {
        dict: B::Value,
        at: usize,
        key: Option<B::Value>,
        key_at: usize,
    },
    /// A set, `item_at` where the item being read starts.
    Set {
        set: B::Value,
        item_at: usize,
    },
    /// A tuple, or with `frozen` an immutable-set, opened at `at` as object number `index`.
    Tuple {
        items: Vec<B::Value>,
        frozen: bool,
        at: usize,
        index: usize,
    },
    /// Boxed: rare, and the largest.
    Copyable(Box<Copyable<'a, B>>),
}

/// `(copyable TYPENAME name value ...)` opened at `at` as object number `index`: its state so
/// far, and the name whose value is being read.
struct Copyable<'a, B: Build> {
    typename: &'a str,
    at: usize,
    index: usize,
    state: Pairs<B>,
    names: Names<'a>,
    name: Option<B::Name>,
}

/// What an OPEN starts: a value (a sequence that holds no other values), or a sequence to fill.
enum Opened<'a, B: Build> {
    Value(B::Value),
    Seq(Seq<'a, B>),
}

type Walked<T, B> = Built<T, <B as Build>::Error>;
/// Named values in the order received: a copyable's state, a call's keyword arguments.
type Pairs<B> = Vec<(<B as Build>::Name, <B as Build>::Value)>;

impl<'a, B: Build> Walker<'a, '_, B> {
    /// The next token that is not a PING or PONG, and where it starts.
    #[inline(always)]
    fn next(&mut self) -> Walked<(Token<'a>, usize), B> {
        // The common tokens are read here; the frame was checked by the framer, so no limit can
        // be exceeded.
        let at = self.pos;
        if let Some((type_byte, value, body)) = quick_header(self.data, at) {
            let mut end = body;
            let token = match type_byte {
                tb::OPEN => Some(Token::Open(value)),
                tb::CLOSE => Some(Token::Close(value)),
                // A quick header holds at most 56 bits.
                tb::INT => Some(Token::Int { type_byte, value: Integer::Small(value as i64) }),
                tb::NEG => Some(Token::Int { type_byte, value: Integer::Small(-(value as i64)) }),
                tb::VOCAB => vocab::foolscap_word(value).map(|word| Token::Vocab { index: value, word }),
                tb::STRING => {
                    usize::try_from(value).ok().and_then(|n| self.data.get(body..body.checked_add(n)?)).map(|s| {
                        end += s.len();
                        Token::String(s)
                    })
                }
                tb::FLOAT => self.data.get(body..body + 8).map(|raw| {
                    end += 8;
                    Token::Float(f64::from_be_bytes(raw.try_into().expect("8 bytes")))
                }),
                _ => None,
            };
            if let Some(token) = token {
                self.pos = end;
                self.last = at;
                return Ok((token, at));
            }
        }
        self.next_general()
    }

    #[inline(never)]
    fn next_general(&mut self) -> Walked<(Token<'a>, usize), B> {
        loop {
            let at = self.pos;
            match self.reader.step(at) {
                Ok(Step::Token(Token::Ping(_) | Token::Pong(_), end)) => self.pos = end,
                Ok(Step::Token(token, end)) => {
                    self.pos = end;
                    self.last = at;
                    return Ok((token, at));
                }
                // The framer delivers whole, checked sequences; this is only a safety net.
                _ => return Err(self.violation("the message is cut short", at)),
            }
        }
    }

    fn violation(&self, what: impl Display, at: usize) -> Fault<B::Error> {
        Fault::Violation(format!("{what} at byte {}", self.base + at as u64))
    }

    /// Add the position to a builder's Violation.
    fn at_byte<T>(&self, result: Walked<T, B>, at: usize) -> Walked<T, B> {
        result.map_err(|fault| match fault {
            Fault::Violation(why) => self.violation(why, at),
            other => other,
        })
    }

    /// Add the position (and what was being read) to a builder's Violation.
    #[inline(always)]
    fn located<T>(&self, result: Walked<T, B>, context: impl Display, at: usize) -> Walked<T, B> {
        match result {
            Ok(value) => Ok(value),
            Err(fault) => Err(self.locate(fault, context, at)),
        }
    }

    #[cold]
    fn locate(&self, fault: Fault<B::Error>, context: impl Display, at: usize) -> Fault<B::Error> {
        match fault {
            Fault::Violation(why) => self.violation(format_args!("{context}: {why}"), at),
            other => other,
        }
    }

    /// The top-level OPEN and its type word.
    fn top_level(&mut self) -> Walked<&'a [u8], B> {
        let (token, at) = self.next()?;
        debug_assert!(matches!(token, Token::Open(_)));
        self.objects.push(Slot::Unreferenceable);
        self.index_token(at, self.limits.max_index_length, "first index token")
    }

    /// An index token: the type word of a sequence (or a copyable's type name).
    fn index_token(&mut self, open_at: usize, limit: usize, what: &str) -> Walked<&'a [u8], B> {
        match self.next()? {
            (Token::String(s), at) if s.len() > limit => {
                Err(self.violation(format_args!("{what} is too long, {}>{limit}", s.len()), at))
            }
            (Token::String(s), _) => Ok(s),
            (Token::Vocab { word, .. }, _) => Ok(word),
            (Token::Abort(_), _) => Err(Fault::Aborted),
            (Token::Close(_), _) => Err(self.violation("a sequence with no type", open_at)),
            (other, at) => Err(self.violation(format_args!("{what} is {}, not STRING or VOCAB", kind(&other)), at)),
        }
    }

    /// The value that starts with `token` (read at `at`). The sequences it holds are read with
    /// a heap stack of the ones open around the one being read, not by recursion, so no nesting
    /// depth can exhaust the native stack.
    fn value(&mut self, token: Token<'a>, at: usize) -> Walked<B::Value, B> {
        let Token::Open(_) = token else { return self.atom_value(token, at) };
        let mut seq = match self.sequence(at)? {
            Opened::Value(value) => return Ok(value),
            Opened::Seq(seq) => seq,
        };
        let mut child = None;
        loop {
            match self.step(&mut seq, child)? {
                // A sequence in this one: read it first.
                Some(inner) => {
                    self.stack.push(std::mem::replace(&mut seq, inner));
                    child = None;
                }
                None => {
                    let value = self.finish(seq)?;
                    match self.stack.pop() {
                        Some(outer) => {
                            seq = outer;
                            child = Some(value);
                        }
                        None => return Ok(value),
                    }
                }
            }
        }
    }

    /// The value of a token that is not an OPEN.
    fn atom_value(&mut self, token: Token<'a>, at: usize) -> Walked<B::Value, B> {
        match token {
            Token::Int { value, .. } => self.build.int(value),
            Token::String(s) => self.build.bytes(s),
            Token::Vocab { word, .. } => self.build.bytes(word),
            Token::Float(f) => self.build.float(f),
            Token::Abort(_) => Err(Fault::Aborted),
            other => Err(self.violation(format_args!("unexpected {} token", kind(&other)), at)),
        }
    }

    /// The next child of a sequence, or None at its CLOSE.
    fn child(&mut self) -> Walked<Option<B::Value>, B> {
        match self.next()? {
            (Token::Close(_), _) => Ok(None),
            (token, at) => self.value(token, at).map(Some),
        }
    }

    /// The one value a fixed-shape sequence needs here.
    fn required(&mut self, what: impl Display, open_at: usize) -> Walked<B::Value, B> {
        match self.child()? {
            Some(value) => Ok(value),
            None => Err(self.violation(format_args!("{what} ended too early"), open_at)),
        }
    }

    /// A token that must be an atom (no sequence): for the fields of fixed-shape sequences.
    fn atom(&mut self, what: impl Display, open_at: usize) -> Walked<(Token<'a>, usize), B> {
        match self.next()? {
            (Token::Abort(_), _) => Err(Fault::Aborted),
            (Token::Close(_), _) => Err(self.violation(format_args!("{what} ended too early"), open_at)),
            (Token::Open(_), at) => Err(self.violation(format_args!("{what} takes no sequences"), at)),
            found => Ok(found),
        }
    }

    /// The CLOSE of a fixed-shape sequence.
    fn end(&mut self, what: impl Display) -> Walked<(), B> {
        match self.next()? {
            (Token::Close(_), _) => Ok(()),
            (Token::Abort(_), _) => Err(Fault::Aborted),
            (_, at) => Err(self.violation(format_args!("too many items in {what}"), at)),
        }
    }

    /// An INT (and, with `negative`, NEG) that fits in 64 bits.
    fn int_field(&mut self, what: &str, negative: bool, open_at: usize) -> Walked<i64, B> {
        match self.atom(what, open_at)? {
            (Token::Int { type_byte, value: Integer::Small(v) }, _)
                if type_byte == tb::INT || (negative && type_byte == tb::NEG) =>
            {
                Ok(v)
            }
            (token, at) => {
                let want = if negative { "an INT or NEG" } else { "an INT" };
                Err(self.violation(format_args!("{what} must be {want} (in 64 bits), not {}", kind(&token)), at))
            }
        }
    }

    /// A STRING or VOCAB field that must be UTF-8 text.
    fn text_field(&mut self, what: &str, open_at: usize) -> Walked<&'a str, B> {
        match self.atom(what, open_at)? {
            (Token::String(s), at) => {
                std::str::from_utf8(s).map_err(|_| self.violation(format_args!("{what} is not UTF-8"), at))
            }
            (Token::Vocab { word, .. }, _) => Ok(std::str::from_utf8(word).expect("vocabulary words are ASCII")),
            (token, at) => Err(self.violation(format_args!("{what} must be a STRING, not {}", kind(&token)), at)),
        }
    }

    /// A name (method, keyword argument, attribute) from a STRING or VOCAB token.
    fn name(&mut self, raw: &[u8], what: &str, at: usize) -> Walked<B::Name, B> {
        let name = self.build.name(raw);
        self.located(name, what, at)
    }

    /// A sequence whose OPEN was read at `at`: its value if it holds no other values, else the
    /// sequence to fill.
    fn sequence(&mut self, at: usize) -> Walked<Opened<'a, B>, B> {
        let index = self.objects.len();
        self.objects.push(Slot::Unreferenceable);
        if let Some(text) = self.quick_unicode() {
            return text.map(Opened::Value);
        }
        let word = self.index_token(at, self.limits.max_index_length, "first index token")?;
        let seq = match word {
            // Lists, dicts and sets can be referred to while they are being filled.
            b"list" => {
                let list = self.build.new_list()?;
                self.objects[index] = Slot::Ready(list.clone());
                Seq::List(list)
            }
            b"dict" => {
                let dict = self.build.new_dict()?;
                self.objects[index] = Slot::Ready(dict.clone());
                Seq::Dict { dict, at, key: None, key_at: 0 }
            }
            b"set" => {
                let set = self.build.new_set()?;
                self.objects[index] = Slot::Ready(set.clone());
                Seq::Set { set, item_at: 0 }
            }
            b"tuple" | b"immutable-set" => {
                let frozen = word == b"immutable-set";
                self.objects[index] = Slot::Incomplete(if frozen { "immutable-set" } else { "tuple" });
                Seq::Tuple { items: Vec::new(), frozen, at, index }
            }
            b"copyable" => {
                let typename = self.index_token(at, self.limits.max_copyable_name, "copyable type name")?;
                let Ok(typename) = std::str::from_utf8(typename) else {
                    return Err(self.violation("copyable type name is not UTF-8", at));
                };
                self.objects[index] = Slot::Incomplete("copyable");
                let copyable = Copyable { typename, at, index, state: Vec::new(), names: Names::default(), name: None };
                Seq::Copyable(Box::new(copyable))
            }
            other => return self.leaf(other, at).map(Opened::Value),
        };
        Ok(Opened::Seq(seq))
    }

    /// The rest of `(unicode STRING)` after its OPEN, read in one go if its tokens are the
    /// common ones (else None, for the general path): text is most of what a typical message
    /// holds, dict keys among it, and each is four tokens.
    #[inline(always)]
    fn quick_unicode(&mut self) -> Option<Walked<B::Value, B>> {
        let (data, at) = (self.data, self.pos);
        if data.get(at..at + 2)? != [UNICODE, tb::VOCAB] {
            return None;
        }
        let (tb::STRING, len, body) = quick_header(data, at + 2)? else { return None };
        let end = body.checked_add(usize::try_from(len).ok()?)?;
        let utf8 = data.get(body..end)?;
        // The framer has checked that a CLOSE here is this sequence's.
        let (tb::CLOSE, _, close_end) = quick_header(data, end)? else { return None };
        self.pos = close_end;
        self.last = end;
        let text = if self.key { self.build.key(utf8) } else { self.build.text(utf8) };
        Some(self.located(text, "unicode", at + 2))
    }

    /// `seq` takes `child` (None: it was just opened) and the tokens after it, up to a sequence
    /// in it that holds values (returned, to be read first) or its own CLOSE (None).
    fn step(&mut self, seq: &mut Seq<'a, B>, mut child: Option<B::Value>) -> Walked<Option<Seq<'a, B>>, B> {
        // A child token of the sequence: a value it takes in the loop's next round, or a
        // sequence to read first.
        macro_rules! take {
            ($found:expr) => {
                match $found {
                    (Token::Open(_), at) => match self.sequence(at)? {
                        Opened::Value(value) => child = Some(value),
                        Opened::Seq(inner) => break Some(inner),
                    },
                    (token, at) => child = Some(self.atom_value(token, at)?),
                }
            };
        }
        self.key = false;
        Ok(match seq {
            Seq::List(list) => loop {
                if let Some(item) = child.take() {
                    self.build.list_push(list, item)?;
                }
                match self.next()? {
                    (Token::Close(_), _) => break None,
                    found => take!(found),
                }
            },
            Seq::Dict { dict, at, key, key_at } => loop {
                if let Some(value) = child.take() {
                    match key.take() {
                        None => *key = Some(value),
                        Some(k) => {
                            let inserted = self.build.dict_insert(dict, k, value);
                            self.located(inserted, "dict", *key_at)?;
                        }
                    }
                }
                if key.is_none() {
                    *key_at = self.pos;
                }
                self.key = key.is_none();
                match self.next()? {
                    (Token::Close(_), _) if key.is_none() => break None,
                    (Token::Close(_), _) => return Err(self.violation("dict ended after a key", *at)),
                    found => take!(found),
                }
            },
            Seq::Set { set, item_at } => loop {
                if let Some(item) = child.take() {
                    let added = self.build.set_add(set, item);
                    self.located(added, "set", *item_at)?;
                }
                *item_at = self.pos;
                match self.next()? {
                    (Token::Close(_), _) => break None,
                    found => take!(found),
                }
            },
            Seq::Tuple { items, .. } => loop {
                items.extend(child.take());
                match self.next()? {
                    (Token::Close(_), _) => break None,
                    found => take!(found),
                }
            },
            Seq::Copyable(c) => loop {
                if let Some(value) = child.take() {
                    let Some(name) = c.name.take() else { unreachable!("a copyable's value follows its name") };
                    c.state.push((name, value));
                }
                let Some((raw, at)) = self.next_name(&mut c.names, &ATTRIBUTES)? else { break None };
                c.name = Some(self.name(raw, ATTRIBUTES.name, at)?);
                match self.next()? {
                    (Token::Close(_), _) => {
                        let what = format_args!("copyable {} ended too early", show(c.typename.as_bytes()));
                        return Err(self.violation(what, c.at));
                    }
                    found => take!(found),
                }
            },
        })
    }

    /// The value of a sequence whose CLOSE has been read.
    fn finish(&mut self, seq: Seq<'a, B>) -> Walked<B::Value, B> {
        match seq {
            Seq::List(list) => Ok(list),
            Seq::Dict { dict, .. } => Ok(dict),
            Seq::Set { set, .. } => Ok(set),
            // Referable only once complete.
            Seq::Tuple { items, frozen, at, index } => {
                let built = if frozen { self.build.frozenset(items) } else { self.build.tuple(items) };
                let value = self.located(built, if frozen { "immutable-set" } else { "tuple" }, at)?;
                self.objects[index] = Slot::Ready(value.clone());
                Ok(value)
            }
            Seq::Copyable(c) => {
                let Copyable { typename, at, index, state, .. } = *c;
                // The builder names the copyable in its messages.
                let built = self.build.copyable(typename, state);
                let value = self.at_byte(built, at)?;
                self.objects[index] = Slot::Ready(value.clone());
                Ok(value)
            }
        }
    }

    /// The sequence types that hold no other sequences.
    #[inline(never)]
    fn leaf(&mut self, word: &[u8], at: usize) -> Walked<B::Value, B> {
        match word {
            b"none" => {
                self.end("none")?;
                self.build.none()
            }
            b"boolean" => {
                let (token, bool_at) = self.atom("boolean", at)?;
                let Token::Int { type_byte: tb::INT, value } = token else {
                    return Err(self.violation(format_args!("boolean takes an INT, not {}", kind(&token)), bool_at));
                };
                self.end("boolean")?;
                self.build.boolean(value != Integer::Small(0))
            }
            b"unicode" => {
                let (token, text_at) = self.atom("unicode", at)?;
                let (Token::String(utf8) | Token::Vocab { word: utf8, .. }) = token else {
                    return Err(self.violation(format_args!("unicode takes a STRING, not {}", kind(&token)), text_at));
                };
                self.end("unicode")?;
                let text = self.build.text(utf8);
                self.located(text, "unicode", text_at)
            }
            b"decimal" => {
                let text = self.text_field("decimal", at)?;
                self.end("decimal")?;
                let decimal = self.build.decimal(text);
                self.located(decimal, "decimal", at)
            }
            b"reference" => {
                let number = self.int_field("reference", false, at)?;
                self.end("reference")?;
                self.reference(number, at)
            }
            b"my-reference" => {
                let clid = self.int_field("my-reference clid", true, at)?;
                let (mut iface, mut furl) = (None, None);
                if let Some((token, field_at)) = self.optional()? {
                    iface = Some(self.text_token(token, "my-reference interface name", field_at)?);
                    if let Some((token, field_at)) = self.optional()? {
                        furl = Some(self.text_token(token, "my-reference FURL", field_at)?);
                        self.end("my-reference")?;
                    }
                }
                let iface = iface.filter(|name| !name.is_empty());
                let built = self.build.my_reference(clid, iface, furl);
                self.located(built, "my-reference", at)
            }
            b"your-reference" => {
                let clid = self.int_field("your-reference clid", true, at)?;
                self.end("your-reference")?;
                let built = self.build.your_reference(clid);
                self.located(built, "your-reference", at)
            }
            b"their-reference" => {
                let giftid = self.int_field("their-reference giftID", false, at)?;
                let furl = self.text_field("their-reference FURL", at)?;
                self.end("their-reference")?;
                let built = self.build.their_reference(giftid, furl);
                self.located(built, "their-reference", at)
            }
            other => Err(self.violation(format_args!("unknown OPEN type {}", show(other)), at)),
        }
    }

    /// The next field of a sequence with optional fields, or None at its CLOSE.
    fn optional(&mut self) -> Walked<Option<(Token<'a>, usize)>, B> {
        match self.next()? {
            (Token::Close(_), _) => Ok(None),
            (Token::Abort(_), _) => Err(Fault::Aborted),
            found => Ok(Some(found)),
        }
    }

    fn text_token(&self, token: Token<'a>, what: &str, at: usize) -> Walked<&'a str, B> {
        match token {
            Token::String(s) => {
                std::str::from_utf8(s).map_err(|_| self.violation(format_args!("{what} is not UTF-8"), at))
            }
            Token::Vocab { word, .. } => Ok(std::str::from_utf8(word).expect("vocabulary words are ASCII")),
            other => Err(self.violation(format_args!("{what} must be a STRING, not {}", kind(&other)), at)),
        }
    }

    /// The next name of `name value ...` pairs (a copyable's state, a call's keyword arguments),
    /// and where it is; None at the sequence's CLOSE. Each name may come once.
    fn next_name(&mut self, names: &mut Names<'a>, what: &Named) -> Walked<Option<(&'a [u8], usize)>, B> {
        let (raw, at) = match self.next()? {
            (Token::Close(_), _) => return Ok(None),
            (Token::String(s) | Token::Vocab { word: s, .. }, at) => (s, at),
            (Token::Abort(_), _) => return Err(Fault::Aborted),
            (other, at) => {
                let why = format_args!("{} must be STRINGs, not {}", what.names, kind(&other));
                return Err(self.violation(why, at));
            }
        };
        if !names.insert(raw) {
            return Err(self.violation(format_args!("duplicate {} {}", what.duplicate, show(raw)), at));
        }
        Ok(Some((raw, at)))
    }

    /// The object `(reference number)` names.
    fn reference(&mut self, number: i64, at: usize) -> Walked<B::Value, B> {
        let slot = u64::try_from(number)
            .ok()
            .and_then(|n| n.checked_sub(self.first_object))
            .and_then(|i| self.objects.get(usize::try_from(i).ok()?));
        match slot {
            Some(Slot::Ready(value)) => Ok(value.clone()),
            Some(Slot::Incomplete(what)) => {
                Err(self.violation(format_args!("reference to object {number}, a {what} not complete yet"), at))
            }
            Some(Slot::Unreferenceable) => {
                Err(self.violation(format_args!("reference to object {number}, which cannot be referred to"), at))
            }
            None => Err(self.violation(format_args!("reference to unknown object {number}"), at)),
        }
    }

    /// `(call reqid clid method (arguments n_pos v... name value...))`, after its type word.
    fn call(&mut self, reqid: &mut Option<i64>) -> Walked<Message<B>, B> {
        let call_at = 0;
        let id = self.int_field("call request ID", false, call_at)?;
        *reqid = Some(id);
        let clid = self.int_field("call object ID", true, call_at)?;
        let method = match self.atom("call", call_at)? {
            (Token::String(s) | Token::Vocab { word: s, .. }, at) => self.name(s, "method name", at)?,
            (other, at) => {
                return Err(self.violation(format_args!("method name must be a STRING, not {}", kind(&other)), at))
            }
        };
        let args_at = match self.next()? {
            (Token::Open(_), at) => at,
            (Token::Abort(_), _) => return Err(Fault::Aborted),
            (Token::Close(_), _) => return Err(self.violation("call ended too early", call_at)),
            (other, at) => {
                let why = format_args!("call arguments must be an 'arguments' sequence, not {}", kind(&other));
                return Err(self.violation(why, at));
            }
        };
        self.objects.push(Slot::Unreferenceable);
        let word = self.index_token(args_at, self.limits.max_index_length, "first index token")?;
        if word != b"arguments" {
            let why = format_args!("call arguments must be an 'arguments' sequence, not {}", show(word));
            return Err(self.violation(why, args_at));
        }
        let positional = self.int_field("arguments", false, args_at)?;
        // Each argument takes at least a byte, which bounds what a claimed count may reserve.
        let mut args = Vec::with_capacity(usize::try_from(positional).unwrap_or(usize::MAX).min(self.len - self.pos));
        for _ in 0..positional {
            args.push(self.required("arguments", args_at)?);
        }
        let mut kwargs = Vec::new();
        let mut names = Names::default();
        while let Some((raw, at)) = self.next_name(&mut names, &KEYWORDS)? {
            let name = self.name(raw, KEYWORDS.name, at)?;
            kwargs.push((name, self.required("arguments", args_at)?));
        }
        self.end("call")?;
        Ok(Message::Call { reqid: id, clid, method, args, kwargs })
    }

    /// `(answer reqid value)` or `(error reqid failure)`, after the type word.
    fn reply(&mut self, reqid: &mut Option<i64>) -> Walked<(i64, B::Value), B> {
        let id = self.int_field("request ID", false, 0)?;
        *reqid = Some(id);
        let value = self.required("reply", 0)?;
        self.end("reply")?;
        Ok((id, value))
    }
}

/// How `Walker::named` words its violations for one kind of pairs.
struct Named {
    /// What the names must be, in the plural.
    names: &'static str,
    /// What a name given twice is.
    duplicate: &'static str,
    /// What one name is, for the builder's refusal.
    name: &'static str,
}

const ATTRIBUTES: Named =
    Named { names: "copyable attribute names", duplicate: "attribute name", name: "copyable attribute name" };
const KEYWORDS: Named =
    Named { names: "keyword argument names", duplicate: "keyword argument", name: "keyword argument name" };

/// Names already used in one sequence: a short list, a set once there are many.
#[derive(Default)]
struct Names<'a> {
    few: Vec<&'a [u8]>,
    many: Option<HashSet<&'a [u8]>>,
}

impl<'a> Names<'a> {
    /// False if `name` was there already.
    fn insert(&mut self, name: &'a [u8]) -> bool {
        if let Some(many) = &mut self.many {
            return many.insert(name);
        }
        if self.few.contains(&name) {
            return false;
        }
        self.few.push(name);
        if self.few.len() > 16 {
            self.many = Some(self.few.drain(..).collect());
        }
        true
    }
}

/// A token's kind, for messages.
fn kind(token: &Token<'_>) -> &'static str {
    tb::name(token.type_byte())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::banana::BananaError;
    use crate::foolscap::{Frame, MessageFramer};

    /// Values as a test builder makes them: containers are shared cells, so sharing and cycles
    /// can be checked.
    #[derive(Clone, Debug)]
    pub(crate) enum V {
        None,
        Bool(bool),
        Int(Integer),
        Float(f64),
        Bytes(Vec<u8>),
        Text(String),
        Decimal(String),
        List(Rc<RefCell<Vec<V>>>),
        Tuple(Rc<Vec<V>>),
        Set(Rc<RefCell<Vec<V>>>),
        FrozenSet(Vec<V>),
        Dict(Rc<RefCell<Vec<(V, V)>>>),
        Copy(String, Vec<(String, V)>),
        MyRef(i64, Option<String>, Option<String>),
        YourRef(i64),
        TheirRef(i64, String),
    }

    /// An s-expression; a container met again while inside it prints as `^`.
    fn render(v: &V, inside: &mut Vec<usize>) -> String {
        let seq = |word: &str, ptr: usize, items: Vec<&V>, inside: &mut Vec<usize>| {
            if inside.contains(&ptr) {
                return "^".to_string();
            }
            inside.push(ptr);
            let parts: Vec<String> = items.iter().map(|v| render(v, inside)).collect();
            inside.pop();
            format!("({word}{}{})", if parts.is_empty() { "" } else { " " }, parts.join(" "))
        };
        match v {
            V::None => "None".into(),
            V::Bool(b) => format!("{b}"),
            V::Int(Integer::Small(i)) => format!("{i}"),
            V::Int(Integer::Big(i)) => format!("{i}"),
            V::Float(f) => format!("{f:?}"),
            V::Bytes(b) => format!("b{}", show(b)),
            V::Text(s) => format!("{s:?}"),
            V::Decimal(s) => format!("Decimal({s})"),
            V::List(l) => seq("list", Rc::as_ptr(l) as usize, l.borrow().iter().collect(), inside),
            V::Tuple(t) => seq("tuple", Rc::as_ptr(t) as usize, t.iter().collect(), inside),
            V::Set(s) => seq("set", Rc::as_ptr(s) as usize, s.borrow().iter().collect(), inside),
            V::FrozenSet(items) => seq("frozenset", 0, items.iter().collect(), inside),
            V::Dict(d) => {
                let pairs = d.borrow();
                seq("dict", Rc::as_ptr(d) as usize, pairs.iter().flat_map(|(k, v)| [k, v]).collect(), inside)
            }
            V::Copy(name, state) => {
                let parts: Vec<String> = state.iter().map(|(k, v)| format!("{k}={}", render(v, inside))).collect();
                format!("(copyable {name} {})", parts.join(" "))
            }
            V::MyRef(clid, iface, furl) => format!("(my-reference {clid} {iface:?} {furl:?})"),
            V::YourRef(clid) => format!("(your-reference {clid})"),
            V::TheirRef(giftid, furl) => format!("(their-reference {giftid} {furl})"),
        }
    }

    fn shown(v: &V) -> String {
        render(v, &mut Vec::new())
    }

    fn hashable(v: &V) -> bool {
        match v {
            V::List(_) | V::Set(_) | V::Dict(_) => false,
            V::Tuple(items) => items.iter().all(hashable),
            _ => true,
        }
    }

    pub(crate) struct TestBuild;

    type R<T> = Built<T, String>;

    impl Build for TestBuild {
        type Value = V;
        type Name = String;
        type Error = String;

        fn name(&mut self, raw: &[u8]) -> R<String> {
            String::from_utf8(raw.to_vec()).map_err(|_| Fault::Violation("not UTF-8".into()))
        }
        fn int(&mut self, value: Integer) -> R<V> {
            Ok(V::Int(value))
        }
        fn float(&mut self, value: f64) -> R<V> {
            Ok(V::Float(value))
        }
        fn bytes(&mut self, value: &[u8]) -> R<V> {
            Ok(V::Bytes(value.to_vec()))
        }
        fn text(&mut self, utf8: &[u8]) -> R<V> {
            self.name(utf8).map(V::Text)
        }
        fn decimal(&mut self, text: &str) -> R<V> {
            Ok(V::Decimal(text.into()))
        }
        fn none(&mut self) -> R<V> {
            Ok(V::None)
        }
        fn boolean(&mut self, value: bool) -> R<V> {
            Ok(V::Bool(value))
        }
        fn new_list(&mut self) -> R<V> {
            Ok(V::List(Rc::default()))
        }
        fn list_push(&mut self, list: &V, item: V) -> R<()> {
            let V::List(l) = list else { unreachable!() };
            l.borrow_mut().push(item);
            Ok(())
        }
        fn tuple(&mut self, items: Vec<V>) -> R<V> {
            Ok(V::Tuple(Rc::new(items)))
        }
        fn new_set(&mut self) -> R<V> {
            Ok(V::Set(Rc::default()))
        }
        fn set_add(&mut self, set: &V, item: V) -> R<()> {
            let V::Set(s) = set else { unreachable!() };
            if !hashable(&item) {
                return Err(Fault::Violation("unhashable member".into()));
            }
            s.borrow_mut().push(item);
            Ok(())
        }
        fn frozenset(&mut self, items: Vec<V>) -> R<V> {
            Ok(V::FrozenSet(items))
        }
        fn new_dict(&mut self) -> R<V> {
            Ok(V::Dict(Rc::default()))
        }
        fn dict_insert(&mut self, dict: &V, key: V, value: V) -> R<()> {
            let V::Dict(d) = dict else { unreachable!() };
            if !hashable(&key) {
                return Err(Fault::Violation("unhashable key".into()));
            }
            if d.borrow().iter().any(|(k, _)| shown(k) == shown(&key)) {
                return Err(Fault::Violation(format!("duplicate key {}", shown(&key))));
            }
            d.borrow_mut().push((key, value));
            Ok(())
        }
        fn copyable(&mut self, typename: &str, state: Vec<(String, V)>) -> R<V> {
            match typename {
                "unknown.Type" => Err(Fault::Violation(format!("unknown copyable type '{typename}'"))),
                "hard.Stop" => Err(Fault::Hard("stop".into())),
                _ => Ok(V::Copy(typename.into(), state)),
            }
        }
        fn my_reference(&mut self, clid: i64, iface: Option<&str>, furl: Option<&str>) -> R<V> {
            Ok(V::MyRef(clid, iface.map(Into::into), furl.map(Into::into)))
        }
        fn your_reference(&mut self, clid: i64) -> R<V> {
            Ok(V::YourRef(clid))
        }
        fn their_reference(&mut self, giftid: i64, furl: &str) -> R<V> {
            Ok(V::TheirRef(giftid, furl.into()))
        }
    }

    pub(crate) fn describe(message: Message<TestBuild>) -> String {
        match message {
            Message::Call { reqid, clid, method, args, kwargs } => {
                let args: Vec<String> = args.iter().map(shown).collect();
                let kwargs: Vec<String> = kwargs.iter().map(|(k, v)| format!("{k}={}", shown(v))).collect();
                format!("call {reqid} {clid} {method:?} [{}] {{{}}}", args.join(" "), kwargs.join(" "))
            }
            Message::Answer { reqid, value } => format!("answer {reqid} {}", shown(&value)),
            Message::Error { reqid, failure } => format!("error {reqid} {}", shown(&failure)),
            Message::CallAborted { reqid } => format!("aborted {reqid:?}"),
            Message::Violation { what, reqid, message } => format!("violation {what} {reqid:?}: {message}"),
        }
    }

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// Every message in `data` (a stream whose first OPEN is object `first`), described.
    fn messages(data: &[u8], first: u64) -> Vec<String> {
        let mut framer = MessageFramer::new(Limits::foolscap().banana);
        let mut out = Vec::new();
        framer
            .feed(data, |frame: Frame<'_>| -> Result<(), BananaError> {
                if let Frame::Message { bytes, offset, first_object } = frame {
                    let m = read_message(bytes, offset, first + first_object, &Limits::foolscap(), &mut TestBuild);
                    out.push(m.map(describe).unwrap_or_else(|e| format!("hard error {e}")));
                }
                Ok(())
            })
            .unwrap();
        out
    }

    fn one(data: &str) -> String {
        let mut all = messages(&hex(data), 0);
        assert_eq!(all.len(), 1, "{all:?}");
        all.pop().unwrap()
    }

    #[test]
    fn captured_value_mix() {
        // A -> B: the answer to echo(value mix), from a capture between stock foolscap Tubs.
        let data = hex("04880d870481058804870688008706890788018701810789088801870081088900817f8100018101830486800000
             010985010000000000000000843ff8000000000000058262797465730988088708
             82756e69636f64c3a909890a880587018102810a890b880387018261028101826b01810b890c8803870d88088701
             82750d890e88048701810e890c890f88068703810f89108807870481108905890489");
        let got = messages(&data, 4);
        assert_eq!(
            got,
            [concat!(
                r#"answer 4 (list None true false 0 127 128 -1 -2147483649 18446744073709551616 1.5 b'bytes' "#,
                r#""unicodé" (tuple 1 2) (dict b'a' 2 b'k' 1) (dict "u" (list 1)) (set 3) (frozenset 4))"#
            )]
        );
    }

    #[test]
    fn captured_calls_and_references() {
        assert_eq!(one("02880b8702810181038261646403880c8702810181028103890289"), r#"call 2 1 "add" [1 2] {}"#);
        assert_eq!(
            one("04880b8703810181038261646405880c8700810182610583018262068501000000000005890489"),
            r#"call 3 1 "add" [] {a=-5 b=1099511627776}"#
        );
        let furl = "pb://p3n3laqzc6zqyn7t6mxkckhqjq4whutl@tcp:127.0.0.1:51953/server-swissnum";
        let answer = format!("00880d87018101880f870181008249 82{}01890089", hex_of(furl.as_bytes()));
        assert_eq!(one(&answer), format!(r#"answer 1 (my-reference 1 None Some("{furl}"))"#));
        assert_eq!(
            one("21880b870a8101810b8269735f6d795f6368696c6422880c870181238810870281238922892189"),
            r#"call 10 1 "is_my_child" [(your-reference 2)] {}"#
        );
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn shared_and_cyclic_containers() {
        // (answer 5 (list (list 1) (reference 19))), the inner list opened as object 19.
        let data = hex("11880d870581128804871388048701811389148802871381148912891189");
        let mut framer = MessageFramer::new(Limits::foolscap().banana);
        framer
            .feed(&data, |frame: Frame<'_>| -> Result<(), BananaError> {
                let Frame::Message { bytes, offset, .. } = frame else { panic!() };
                let Ok(Message::Answer { value: V::List(outer), .. }) =
                    read_message(bytes, offset, 17, &Limits::foolscap(), &mut TestBuild)
                else {
                    panic!()
                };
                let (V::List(a), V::List(b)) = (&outer.borrow()[0], &outer.borrow()[1]) else { panic!() };
                assert!(Rc::ptr_eq(a, b));
                Ok(())
            })
            .unwrap();
        // A list that holds itself, and a dict whose value is itself.
        assert_eq!(one("00880d8701810188048702880287018102890189 0089"), "answer 1 (list ^)");
        assert_eq!(one("00880d870181 01880387 018278 0288028701810289 0189 0089"), "answer 1 (dict b'x' ^)");
    }

    /// Messages the walker refuses (as `(hex, part of the violation)`), each the only message
    /// of its stream.
    pub(crate) const VIOLATIONS: [(&str, &str); 17] = [
        ("00880d870181 01880782 66726f62626c65 0189 0089", "unknown OPEN type 'frobble'"),
        ("00880b870181 0181 0581 0089", "method name must be a STRING, not INT"),
        ("00880d870181 0188028700810189 0089", "reference to object 0, which cannot be referred to"),
        ("00880d870181 0188028709810189 0089", "reference to unknown object 9"),
        ("00880d870181 01880587 0288028701810289 0189 0089", "reference to object 1, a tuple not complete yet"),
        ("00880d870181 018803870181018101810281 0189 0089", "dict: duplicate key 1"),
        ("00880d870181 01880387 028804870289 0181 0189 0089", "dict: unhashable key"),
        ("00880d870181 01880187 0082 0189 0089", "boolean takes an INT, not STRING"),
        ("00880d870181 01880887 0282fffe 0189 0089", "unicode: not UTF-8"),
        ("00880d870181 01881287 0c82756e6b6e6f776e2e54797065 0189 0089", "unknown copyable type 'unknown.Type'"),
        ("00880d870181 01881287 018274 018278 0181 018278 0281 0189 0089", "duplicate attribute name 'x'"),
        ("00880d870181 0188 1082 61616161616161616161616161616161 0189 0089", "first index token is too long, 16>15"),
        ("00880d870181 01880087 0181 0189 0089", "too many items in none"),
        ("00880d870181 0089", "reply ended too early"),
        ("00880b870181 0181 01820a 01880c87 018278 0189 0089", "arguments must be an INT"),
        ("00880b870181 0181 01820a 01880c87 0281 0181 0189 0089", "arguments ended too early"),
        ("00880b870181 0181 01820a 01880c87 0081 0182610181 0182610281 0189 0089", "duplicate keyword argument 'a'"),
    ];

    #[test]
    fn violations_discard_one_message() {
        for (data, why) in VIOLATIONS {
            let got = one(data);
            assert!(got.contains(why), "{data}: {got}");
            assert!(got.starts_with("violation "), "{data}: {got}");
        }
        assert_eq!(
            one("00880d870181 01880387 0181 0189 0089"),
            "violation answer Some(1): dict ended after a key at byte 6"
        );
        assert!(one("00880c870181 0089").starts_with("violation unknown None: unknown top-level OPEN type 'arguments'"));
        // The stream goes on: the message after a violation decodes.
        let two = messages(&hex("00880d870181 01880782 66726f62626c65 0189 0089 02880d87028103810289"), 0);
        assert_eq!(two[1], "answer 2 3");
    }

    #[test]
    fn the_unicode_word() {
        assert_eq!(vocab::foolscap_word(u64::from(UNICODE)), Some(&b"unicode"[..]));
        // Text as VOCAB, or as a STRING word rather than the VOCAB, takes the general path.
        assert_eq!(one("00880d870181 01880887 0487 0189 0089"), r#"answer 1 "list""#);
        assert_eq!(one("00880d870181 0188 0782756e69636f6465 018278 0189 0089"), r#"answer 1 "x""#);
        assert!(one("00880d870181 01880887 0281 0189 0089").contains("unicode takes a STRING, not INT"));
    }

    #[test]
    fn aborts() {
        // The capture's aborted call: no reply is due.
        let aborted =
            "24880b870b81018104826563686f25880c870181268804870181278804870281278a2789268a2689258a2589248a2489";
        assert_eq!(messages(&hex(aborted), 0x24), ["aborted Some(11)"]);
        assert_eq!(
            one("00880d870181 01880487 018a0189 008a0089"),
            "violation answer Some(1): ABORT received at byte 10"
        );
        // A hook's hard error stops the walk.
        assert_eq!(one("00880d870181 01881287 0982686172642e53746f70 0189 0089"), "hard error stop");
    }
}
