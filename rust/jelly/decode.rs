//! Banana bytes -> jelly -> values, in one walk over an expression, the values made by a [`Build`].
//!
//! The expression is one the framer has validated, or one the caller validates once this walk has
//! failed: bytes that are not banana come back as "malformed banana" for the framer's validator to
//! name. Jelly errors carry the stream offset of the list they are in.
//!
//! `["reference", id, X]`: a list, dict or set X is created empty and registered before its items
//! are built, so cycles through it resolve directly. A `dereference` to an object that is still
//! being built (only possible for tuples, frozensets and hook-made objects) yields a placeholder
//! whose position is remembered and patched once the object exists: list items, dict values and
//! tuple items can be patched; a placeholder used as a dict key or set member cannot (its hash
//! would change) and is refused.
//!
//! A tuple is patched in place, so nothing but this walk may have seen it: while it holds a
//! placeholder it is refused as a dict key, a set member and an item for the hook, and once the
//! hook has run (it may have kept anything it was given, and so whatever is later put into that)
//! a tuple still waiting for a placeholder is refused instead of patched.

use std::collections::HashMap;
use std::ptr::NonNull;

use num_bigint::{BigInt, Sign};

use super::{parse_fields, quick, recycle, tag, Error, Tag};
use crate::banana::cursor::{Cursor, Item, Plain};
use crate::banana::{Dialect, Integer, Limits};

pub use crate::banana::show;

/// Why a builder could not make or place a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault<E> {
    /// The value is unacceptable (an unhashable key, a date out of range, text that is not
    /// UTF-8): the decoder says in what, and where.
    Bad(String),
    /// Anything else, passed on as it is.
    Hard(E),
}

/// The fields of a date, time, datetime or timedelta, each narrowed to its type's width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    DateTime { year: i32, month: u8, day: u8, hour: u8, minute: u8, second: u8, microsecond: u32 },
    Date { year: i32, month: u8, day: u8 },
    Time { hour: u8, minute: u8, second: u8, microsecond: u32 },
    Delta { days: i32, seconds: i32, microseconds: i32 },
}

/// Makes the values of a jelly expression. Containers are made first and filled as their items
/// are read; the decoder keeps every rule of the format, the builder only makes and places values.
pub trait Build {
    /// A handle on a value; cloning it makes another handle on the same value.
    type Value: Clone;
    type Error;

    fn int(&mut self, value: i64) -> Result<Self::Value, Self::Error>;
    /// An integer beyond `i64`.
    fn big_int(&mut self, value: &BigInt) -> Result<Self::Value, Self::Error>;
    fn float(&mut self, value: f64) -> Result<Self::Value, Self::Error>;
    fn bytes(&mut self, value: &[u8]) -> Result<Self::Value, Self::Error>;
    /// `["unicode", utf8]`: [`Fault::Bad`] if the bytes are not UTF-8.
    fn text(&mut self, utf8: &[u8]) -> Result<Self::Value, Fault<Self::Error>>;
    /// A dictionary key written as `["unicode", utf8]`, of the dict's pair number `pair`: as
    /// [`Build::text`], but keys repeat from one dict to the next, mostly at the same place in
    /// each, so a builder may hand out one value for all of them.
    fn key(&mut self, utf8: &[u8], pair: usize) -> Result<Self::Value, Fault<Self::Error>>;
    /// The key of a dict's pair number `pair`, if `rest` (the bytes at the start of the pair)
    /// starts as the pair at this place in the last dict did, with a str key in the common shape
    /// (see [`super::pair_start`]): that key again, and the bytes its pair's start took. The
    /// default knows none.
    #[inline(always)]
    fn known_pair(&mut self, rest: &[u8], pair: usize) -> Option<(Self::Value, usize)> {
        let _ = (rest, pair);
        None
    }
    fn none(&mut self) -> Result<Self::Value, Self::Error>;
    fn boolean(&mut self, value: bool) -> Result<Self::Value, Self::Error>;
    /// [`Fault::Bad`] if a field is out of its range (a month of 13).
    fn when(&mut self, value: When) -> Result<Self::Value, Fault<Self::Error>>;
    /// `(-1)**negative * digits * 10**exponent`, `digits` (each 0-9) most significant first.
    fn decimal(&mut self, negative: bool, digits: &[u8], exponent: i64) -> Result<Self::Value, Fault<Self::Error>>;
    /// Stands for something the sender could not send; `reason` says what.
    fn unpersistable(&mut self, reason: &str) -> Result<Self::Value, Self::Error>;
    /// Stands for reference `id` until the object it names is built.
    fn placeholder(&mut self, id: i64) -> Result<Self::Value, Self::Error>;
    /// Whether `a` and `b` are the same object.
    fn same(&self, a: &Self::Value, b: &Self::Value) -> bool;

    /// A list with `len` empty slots.
    ///
    /// # Safety
    ///
    /// Until every slot is filled by [`Build::fill_list`] the list goes nowhere else (into
    /// another value, to the hook, out of the decoder); it may be dropped unfilled.
    unsafe fn list(&mut self, len: usize) -> Result<Self::Value, Self::Error>;
    /// # Safety
    ///
    /// `list` was made by [`Build::list`] with more than `index` slots, and slot `index` is empty.
    unsafe fn fill_list(&mut self, list: &Self::Value, index: usize, item: Self::Value);
    /// An empty list that grows by [`Build::push`]: one registered as a reference before its
    /// items exist, which anything may see while it grows.
    fn empty_list(&mut self) -> Result<Self::Value, Self::Error>;
    fn push(&mut self, list: &Self::Value, item: Self::Value) -> Result<(), Self::Error>;
    /// Put `value` at `index` of `list`, where a placeholder is.
    fn patch_list(&mut self, list: &Self::Value, index: usize, value: &Self::Value) -> Result<(), Self::Error>;
    /// A tuple with `len` empty slots.
    ///
    /// # Safety
    ///
    /// As for [`Build::list`], with [`Build::fill_tuple`].
    unsafe fn tuple(&mut self, len: usize) -> Result<Self::Value, Self::Error>;
    /// # Safety
    ///
    /// `tuple` was made by [`Build::tuple`] with more than `index` slots, and slot `index` is empty.
    unsafe fn fill_tuple(&mut self, tuple: &Self::Value, index: usize, item: Self::Value);
    /// Put `value` at `index` of `tuple`, where a placeholder is.
    ///
    /// # Safety
    ///
    /// `tuple` was made and filled by this builder, and nothing but the decoder can have seen it:
    /// it was not hashed, given to the hook, put into anything the hook was given, or returned.
    unsafe fn patch_tuple(&mut self, tuple: &Self::Value, index: usize, value: &Self::Value);
    fn dict(&mut self) -> Result<Self::Value, Self::Error>;
    /// `dict[key] = value`: [`Fault::Bad`] if `key` cannot be a key (it is unhashable).
    fn set_item(
        &mut self,
        dict: &Self::Value,
        key: &Self::Value,
        value: &Self::Value,
    ) -> Result<(), Fault<Self::Error>>;
    fn set(&mut self) -> Result<Self::Value, Self::Error>;
    /// [`Fault::Bad`] if `member` is unhashable.
    fn add(&mut self, set: &Self::Value, member: Self::Value) -> Result<(), Fault<Self::Error>>;
    /// [`Fault::Bad`] if `value` is unhashable (a frozenset's member, checked as it is read).
    fn hashable(&mut self, value: &Self::Value) -> Result<(), Fault<Self::Error>>;
    fn frozenset(&mut self, members: Vec<Self::Value>) -> Result<Self::Value, Self::Error>;
    /// Whether there is a hook for the tags jelly itself does not know.
    fn has_hook(&self) -> bool;
    /// The hook's value for `[tag, items...]`; None if it does not know the tag either.
    fn hook(&mut self, tag: &[u8], items: Vec<Self::Value>) -> Result<Option<Self::Value>, Self::Error>;
}

type Res<T, B> = Result<T, Error<<B as Build>::Error>>;

/// Decode one jelly value from `expr`, whose first byte is at stream offset `base`. With `whole`,
/// bytes left after the value are an error. Returns the value, and how many bytes were read (on
/// an error, where reading stopped).
///
/// The walk keeps the containers being built on a heap stack instead of recursing, so no nesting
/// depth the limits allow can exhaust the native stack of any thread.
pub fn decode<B: Build>(
    expr: &[u8],
    dialect: Dialect,
    limits: Limits,
    base: u64,
    build: &mut B,
    scratch: &mut Scratch,
    whole: bool,
) -> (Res<B::Value, B>, usize) {
    let cur = Cursor::new(expr, dialect, limits);
    let mut quick_stack = recycle(std::mem::take(&mut scratch.1));
    let quick = quick::quick(&cur, limits.max_depth, whole, build, &mut quick_stack);
    if quick_stack.capacity() <= 1 << 10 {
        scratch.1 = recycle(quick_stack);
    }
    if let Some((value, consumed)) = quick {
        return (Ok(value), consumed);
    }
    let rd = Reader {
        b: build,
        cur,
        base,
        refs: HashMap::new(),
        waiting: 0,
        hook_ran: false,
        depth: 0,
        max_depth: limits.max_depth,
    };
    let mut decoder = Decoder { rd, stack: recycle(std::mem::take(&mut scratch.0)) };
    let value = decoder.value().and_then(|built| decoder.check(built, whole));
    let Decoder { rd, mut stack } = decoder;
    // Keep a stack of ordinary size for the next walk; one a deeply nested value grew goes.
    if stack.capacity() <= 1 << 10 {
        stack.clear();
        scratch.0 = recycle(stack);
    }
    (value, rd.cur.pos())
}

/// The allocations of the last walk's stacks (the quick pass's and the general walk's), kept so
/// that the next walk costs none.
#[derive(Default)]
pub struct Scratch(Vec<Frame<'static, NonNull<()>>>, Vec<quick::Open<NonNull<()>>>);

// SAFETY: the vecs are always empty (each is emptied before it is kept), so they hold no values and
// may go to and be shared with other threads like any empty allocation.
unsafe impl Send for Scratch {}
unsafe impl Sync for Scratch {}

struct Decoder<'a, 'b, B: Build> {
    rd: Reader<'a, 'b, B>,
    /// The containers being built, innermost last.
    stack: Vec<Frame<'a, B::Value>>,
}

/// The cursor, the references and the builder: everything but the stack, so both can be
/// borrowed at once.
struct Reader<'a, 'b, B: Build> {
    b: &'b mut B,
    cur: Cursor<'a>,
    base: u64,
    refs: HashMap<i64, Slot<B::Value>>,
    /// References dereferenced before they were built, not yet patched.
    waiting: usize,
    /// The hook has run: no tuple may be patched from now on.
    hook_ran: bool,
    /// Banana lists entered and not yet left (counted as the framer counts them).
    depth: usize,
    max_depth: usize,
}

/// Where a placeholder was put.
enum Site<V> {
    ListItem(V, usize),
    TupleItem(V, usize),
    DictValue(V, V),
}

enum Slot<V> {
    /// `["reference", id, ...]` has started and nothing has asked for it yet.
    Building,
    /// Built; `pending`: it is or holds a tuple that still holds a placeholder.
    Ready { obj: V, pending: bool },
    /// Asked for before it was built: where its placeholder went.
    Waiting { placeholder: V, sites: Vec<Site<V>> },
}

/// A built value. `placeholder`: it stands for reference `id`, to be patched where it is put.
/// `pending`: it is a tuple with a placeholder somewhere inside, so it must not be hashed or seen
/// by the hook until patched.
struct Built<V> {
    obj: V,
    placeholder: Option<i64>,
    pending: bool,
}

impl<V> Built<V> {
    fn done(obj: V) -> Built<V> {
        Built { obj, placeholder: None, pending: false }
    }

    fn incomplete(&self) -> bool {
        self.placeholder.is_some() || self.pending
    }
}

/// A container being built: where the walk goes on once the item being read is complete.
enum Frame<'a, V> {
    /// `["list", ...]`, `next` items in. A list registered as a reference before its items grows
    /// by appending (anything may see it); any other is made at full size.
    List {
        list: V,
        len: usize,
        next: usize,
        append: bool,
    },
    /// A tuple made at full size and filled in place, like a list; `pending`: an item is (or
    /// holds) a placeholder.
    Tuple {
        tuple: V,
        len: usize,
        next: usize,
        pending: bool,
    },
    /// `["dictionary", [key, value], ...]`: `key` is the key of the pair (at `pair_at`) whose value
    /// is being read.
    Dict {
        dict: V,
        len: usize,
        pairs: usize,
        key: Option<V>,
        pair_at: usize,
    },
    /// A set, `member_at` where the member being read starts.
    Set {
        set: V,
        members: usize,
        member_at: usize,
    },
    Frozenset {
        members: Vec<V>,
        len: usize,
        member_at: usize,
    },
    /// `["reference", id, X]` (at `at`) while X is read.
    Reference {
        id: i64,
        at: usize,
    },
    /// `["persistent", X]` while X is read (and then dropped).
    Persistent,
    /// A tag for the hook while its items are read (boxed: rare, and the largest).
    Hooked(Box<Hooked<'a, V>>),
}

/// The list at `at` with a tag for the hook, `item_at` where the item being read starts.
struct Hooked<'a, V> {
    tag: &'a [u8],
    items: Vec<V>,
    len: usize,
    at: usize,
    item_at: usize,
}

/// A jelly list whose header and tag have been read (and which has been entered): one of the
/// forms that hold other values.
struct Open<'a> {
    kind: Tag,
    tag: &'a [u8],
    /// Elements after the tag.
    items: usize,
    at: usize,
}

/// What is at the cursor: a finished value (an atom, or a jelly form that holds no values), or a
/// form that holds values, to open.
enum Read<'a, V> {
    Value(Built<V>),
    Open(Open<'a>),
}

/// What the walk does next.
enum Next<'a, V> {
    /// Open this form (the innermost container read its header).
    Open(Open<'a>),
    /// Give this finished value to the innermost container (or return it, if none is open).
    Give(Built<V>),
}

impl<'a, B: Build> Decoder<'a, '_, B> {
    /// The checks that need the whole value: what follows it, and references never defined.
    fn check(&self, built: Built<B::Value>, whole: bool) -> Res<B::Value, B> {
        let rd = &self.rd;
        if whole && !rd.cur.at_end() {
            return Err(rd.error("bytes after the expression".into(), rd.cur.pos()));
        }
        for (id, slot) in &rd.refs {
            if !matches!(slot, Slot::Ready { .. }) {
                return Err(rd.error(format!("dereference to reference id {id}, which is never defined"), 0));
            }
        }
        if built.placeholder.is_some() {
            return Err(rd.error("the value is a reference to itself".into(), 0));
        }
        Ok(built.obj)
    }

    /// The value at the cursor: open containers, fill them, hand each finished one to the
    /// container it is in, until the outermost is finished.
    fn value(&mut self) -> Res<Built<B::Value>, B> {
        let mut open = match self.rd.item()? {
            Read::Value(built) => return Ok(built),
            Read::Open(open) => open,
        };
        loop {
            let mut child = self.open(open)?;
            // Fill containers, innermost first, until one meets another form to open.
            loop {
                if self.stack.is_empty() {
                    let Some(built) = child else { unreachable!("a finished value when no container is open") };
                    return Ok(built);
                }
                match self.step(child)? {
                    Next::Open(inner) => {
                        open = inner;
                        break;
                    }
                    Next::Give(built) => child = Some(built),
                }
            }
        }
    }

    /// Push the container for `open`, to be filled by [`Self::step`]; for a reference, its value's
    /// too. A reference to a form that holds no values gives that value, to the reference.
    #[inline(always)]
    fn open(&mut self, mut open: Open<'a>) -> Res<Option<Built<B::Value>>, B> {
        // The reference id this value defines, for containers that can be registered before their
        // items exist. `["reference", id, X]` opens X in turn: a loop, however long the chain.
        let mut register = None;
        loop {
            let rd = &mut self.rd;
            let Open { kind, tag: t, items, at } = open;
            let other = |e| Error::Other(e);
            let frame = match kind {
                Tag::List => match register {
                    Some(id) => {
                        let list = rd.b.empty_list().map_err(other)?;
                        rd.define(id, &list, false, rd.cur.pos())?;
                        Frame::List { list, len: items, next: 0, append: true }
                    }
                    None => {
                        // SAFETY: `step` fills each slot once, in order, before the frame is
                        // finished and the list given anywhere; on an error the frame is dropped.
                        let list = unsafe { rd.b.list(items) }.map_err(other)?;
                        Frame::List { list, len: items, next: 0, append: false }
                    }
                },
                Tag::Dictionary => {
                    let dict = rd.b.dict().map_err(other)?;
                    if let Some(id) = register {
                        rd.define(id, &dict, false, rd.cur.pos())?;
                    }
                    Frame::Dict { dict, len: items, pairs: items, key: None, pair_at: 0 }
                }
                Tag::Set => {
                    let set = rd.b.set().map_err(other)?;
                    if let Some(id) = register {
                        rd.define(id, &set, false, rd.cur.pos())?;
                    }
                    Frame::Set { set, members: items, member_at: 0 }
                }
                Tag::Tuple => {
                    // SAFETY: as for the list above.
                    let tuple = unsafe { rd.b.tuple(items) }.map_err(other)?;
                    Frame::Tuple { tuple, len: items, next: 0, pending: false }
                }
                Tag::Frozenset => Frame::Frozenset { members: Vec::with_capacity(items), len: items, member_at: 0 },
                Tag::Reference => {
                    rd.arity(tag::REFERENCE, items, 2, at)?;
                    let id = rd.ref_id()?;
                    match rd.refs.get(&id) {
                        None | Some(Slot::Waiting { .. }) => {}
                        Some(_) => return Err(rd.error(format!("reference id {id} is defined twice"), at)),
                    }
                    rd.refs.entry(id).or_insert(Slot::Building);
                    let value_at = rd.cur.pos();
                    let (n, list_at) = match rd.next()? {
                        (Item::List(n), list_at) => (n, list_at),
                        _ => return Err(rd.error("a reference must wrap a jelly list".into(), value_at)),
                    };
                    rd.enter(list_at)?;
                    let (kind, t) = rd.tag(n, list_at)?;
                    self.stack.push(Frame::Reference { id, at });
                    open = Open { kind, tag: t, items: n - 1, at: list_at };
                    register = Some(id);
                    continue;
                }
                Tag::Persistent => {
                    rd.arity(t, items, 1, at)?;
                    Frame::Persistent
                }
                Tag::Other => {
                    if !rd.b.has_hook() {
                        return Err(rd.insecure(unregistered(t), at));
                    }
                    Frame::Hooked(Box::new(Hooked {
                        tag: t,
                        items: Vec::with_capacity(items),
                        len: items,
                        at,
                        item_at: 0,
                    }))
                }
                leaf => {
                    let built = rd.leaf(leaf, t, items, at)?;
                    rd.depth -= 1;
                    return Ok(Some(built));
                }
            };
            self.stack.push(frame);
            return Ok(None);
        }
    }

    /// The innermost container takes `child` (None: it was just opened) and the items after it,
    /// up to one that is a form to open ([`Next::Open`]) or the container's end (it is then popped
    /// and given as finished).
    #[inline(always)]
    fn step(&mut self, mut child: Option<Built<B::Value>>) -> Res<Next<'a, B::Value>, B> {
        let rd = &mut self.rd;
        let Some(frame) = self.stack.last_mut() else {
            unreachable!("step() is only called with a container open");
        };
        // The next item, for a container that wants one: a value it takes in the loop's next
        // round, or a form to open first.
        macro_rules! read {
            () => {
                match rd.item()? {
                    Read::Value(built) => child = Some(built),
                    Read::Open(open) => return Ok(Next::Open(open)),
                }
            };
        }
        match frame {
            Frame::List { list, len, next, append } => loop {
                if let Some(item) = child.take() {
                    if let Some(pid) = item.placeholder {
                        rd.add_site(pid, Site::ListItem(list.clone(), *next));
                    }
                    if *append {
                        rd.b.push(list, item.obj).map_err(Error::Other)?;
                    } else {
                        // SAFETY: `next < len`, and each slot is filled once, in order.
                        unsafe { rd.b.fill_list(list, *next, item.obj) };
                    }
                    *next += 1;
                }
                // Plain items go straight into their slots.
                while *next < *len {
                    let Some(item) = rd.plain() else { break };
                    if *append {
                        rd.b.push(list, item?).map_err(Error::Other)?;
                    } else {
                        // SAFETY: `next < len`, and each slot is filled once, in order.
                        unsafe { rd.b.fill_list(list, *next, item?) };
                    }
                    *next += 1;
                }
                if *next == *len {
                    break;
                }
                read!();
            },
            Frame::Tuple { tuple, len, next, pending } => loop {
                if let Some(item) = child.take() {
                    *pending |= item.incomplete();
                    if let Some(pid) = item.placeholder {
                        rd.add_site(pid, Site::TupleItem(tuple.clone(), *next));
                    }
                    // SAFETY: `next < len`, and each slot is filled once, in order.
                    unsafe { rd.b.fill_tuple(tuple, *next, item.obj) };
                    *next += 1;
                }
                if *next == *len {
                    break;
                }
                read!();
            },
            Frame::Dict { dict, len, pairs, key, pair_at } => loop {
                if let Some(built) = child.take() {
                    match key.take() {
                        None if built.incomplete() => {
                            let msg = "a dictionary key refers to an object that is not built yet";
                            return Err(rd.error(msg.into(), *pair_at));
                        }
                        None => *key = Some(built.obj),
                        Some(k) => {
                            let at = *pair_at;
                            rd.b.set_item(dict, &k, &built.obj)
                                .map_err(|f| rd.fault(f, at, |why| format!("bad dictionary key: {why}")))?;
                            if let Some(pid) = built.placeholder {
                                rd.add_site(pid, Site::DictValue(dict.clone(), k));
                            }
                            rd.depth -= 1;
                            *pairs -= 1;
                        }
                    }
                }
                if key.is_none() {
                    if *pairs == 0 {
                        break;
                    }
                    let at = rd.cur.pos();
                    match rd.next()? {
                        (Item::List(2), _) => rd.enter(at)?,
                        _ => return Err(rd.error("dictionary items must be [key, value] pairs".into(), at)),
                    }
                    *pair_at = at;
                    // Keys repeat from one dict to the next: str keys go to the builder as keys.
                    let key_at = rd.cur.pos();
                    let Some(s) = rd.cur.unicode() else {
                        read!();
                        continue;
                    };
                    let k = rd.b.key(s, *len - *pairs).map_err(|f| rd.fault(f, key_at, not_utf8))?;
                    // A plain value completes the pair here.
                    if let Some(value) = rd.plain() {
                        let at = *pair_at;
                        rd.b.set_item(dict, &k, &value?)
                            .map_err(|f| rd.fault(f, at, |why| format!("bad dictionary key: {why}")))?;
                        rd.depth -= 1;
                        *pairs -= 1;
                        continue;
                    }
                    *key = Some(k);
                }
                read!();
            },
            Frame::Set { set, members, member_at } => loop {
                if let Some(item) = child.take() {
                    let at = *member_at;
                    if item.incomplete() {
                        return Err(rd.error(UNBUILT_MEMBER.into(), at));
                    }
                    rd.b.add(set, item.obj).map_err(|f| rd.fault(f, at, |why| format!("bad set member: {why}")))?;
                    *members -= 1;
                }
                if *members == 0 {
                    break;
                }
                *member_at = rd.cur.pos();
                read!();
            },
            Frame::Frozenset { members, len, member_at } => loop {
                if let Some(item) = child.take() {
                    let at = *member_at;
                    if item.incomplete() {
                        return Err(rd.error(UNBUILT_MEMBER.into(), at));
                    }
                    rd.b.hashable(&item.obj).map_err(|f| rd.fault(f, at, |why| format!("bad set member: {why}")))?;
                    members.push(item.obj);
                }
                if members.len() == *len {
                    break;
                }
                *member_at = rd.cur.pos();
                read!();
            },
            Frame::Reference { .. } => {}
            Frame::Persistent => {
                if child.is_none() {
                    read!();
                }
            }
            Frame::Hooked(h) => loop {
                let Hooked { tag, items, len, item_at, .. } = &mut **h;
                if let Some(item) = child.take() {
                    if item.incomplete() {
                        let msg = format!("an item of {} refers to an object not built yet", show(tag));
                        return Err(rd.error(msg, *item_at));
                    }
                    items.push(item.obj);
                }
                if items.len() == *len {
                    break;
                }
                *item_at = rd.cur.pos();
                read!();
            },
        }
        let Some(frame) = self.stack.pop() else { unreachable!("the frame matched above") };
        self.rd.depth -= 1;
        self.finish(frame, child).map(Next::Give)
    }

    /// A complete container's value. `child` is a reference's value.
    fn finish(&mut self, frame: Frame<'a, B::Value>, child: Option<Built<B::Value>>) -> Res<Built<B::Value>, B> {
        let rd = &mut self.rd;
        Ok(match frame {
            Frame::List { list, .. } => Built::done(list),
            Frame::Dict { dict, .. } => Built::done(dict),
            Frame::Set { set, .. } => Built::done(set),
            Frame::Tuple { tuple, pending, .. } => Built { obj: tuple, placeholder: None, pending },
            Frame::Frozenset { members, .. } => Built::done(rd.b.frozenset(members).map_err(Error::Other)?),
            Frame::Reference { id, at } => {
                let Some(built) = child else { unreachable!("a reference is finished by its value") };
                if built.placeholder == Some(id) {
                    return Err(rd.error(format!("reference {id} refers only to itself"), at));
                }
                if !matches!(rd.refs.get(&id), Some(Slot::Ready { .. })) {
                    rd.define(id, &built.obj, built.pending, at)?;
                }
                built
            }
            Frame::Persistent => {
                let reason = "persistent reference, and no persistent loader here";
                Built::done(rd.b.unpersistable(reason).map_err(Error::Other)?)
            }
            Frame::Hooked(h) => {
                let Hooked { tag, items, at, .. } = *h;
                rd.hook_ran = true;
                match rd.b.hook(tag, items).map_err(Error::Other)? {
                    Some(obj) => Built::done(obj),
                    None => return Err(rd.insecure(unregistered(tag), at)),
                }
            }
        })
    }
}

fn not_utf8(why: String) -> String {
    format!("unicode is not valid UTF-8 ({why})")
}

const UNBUILT_MEMBER: &str = "a set member refers to an object that is not built yet";

impl<'a, B: Build> Reader<'a, '_, B> {
    /// What is at the cursor. A list is entered and its tag read.
    #[inline(always)]
    fn item(&mut self) -> Res<Read<'a, B::Value>, B> {
        // The most common jelly form by far is a str: ["unicode", STRING].
        let at = self.cur.pos();
        if let Some(s) = self.cur.unicode() {
            return Ok(Read::Value(Built::done(self.b.text(s).map_err(|f| self.fault(f, at, not_utf8))?)));
        }
        let (item, at) = self.next()?;
        let other = |e| Error::Other(e);
        let obj = match item {
            Item::Int(v) => self.b.int(v).map_err(other)?,
            Item::Float(f) => self.b.float(f).map_err(other)?,
            Item::Bytes(s) => self.b.bytes(s).map_err(other)?,
            Item::List(n) => {
                self.enter(at)?;
                let (kind, t) = self.tag(n, at)?;
                if kind.holds_values() {
                    return Ok(Read::Open(Open { kind, tag: t, items: n - 1, at }));
                }
                let built = self.leaf(kind, t, n - 1, at)?;
                self.depth -= 1;
                return Ok(Read::Value(built));
            }
            big @ Item::BigInt { .. } => match big.integer() {
                Some(Integer::Big(v)) => self.b.big_int(&v).map_err(other)?,
                Some(Integer::Small(v)) => self.b.int(v).map_err(other)?,
                None => return Err(self.error("bad integer".into(), at)),
            },
        };
        Ok(Read::Value(Built::done(obj)))
    }

    /// A str, int or float at the cursor (see [`Cursor::plain`]) as a value; None, nothing read,
    /// for anything else.
    #[inline(always)]
    fn plain(&mut self) -> Option<Res<B::Value, B>> {
        let at = self.cur.pos();
        Some(match self.cur.plain()? {
            Plain::Text(s) => self.b.text(s).map_err(|f| self.fault(f, at, not_utf8)),
            Plain::Int(v) => self.b.int(v).map_err(Error::Other),
            Plain::Float(f) => self.b.float(f).map_err(Error::Other),
        })
    }

    /// The forms that hold no other jelly values, after their tag (`t`, of the list at `at` with
    /// `items` more elements).
    fn leaf(&mut self, kind: Tag, t: &[u8], items: usize, at: usize) -> Res<Built<B::Value>, B> {
        let other = |e| Error::Other(e);
        let obj = match kind {
            Tag::Unicode => {
                self.arity(t, items, 1, at)?;
                let s = self.atom(t)?;
                self.b.text(s).map_err(|f| self.fault(f, at, not_utf8))?
            }
            Tag::None => {
                self.arity(t, items, 0, at)?;
                self.b.none().map_err(other)?
            }
            Tag::Boolean => {
                self.arity(t, items, 1, at)?;
                match self.atom(t)? {
                    tag::TRUE => self.b.boolean(true).map_err(other)?,
                    tag::FALSE => self.b.boolean(false).map_err(other)?,
                    v => return Err(self.error(format!("boolean must be true or false, not {}", show(v)), at)),
                }
            }
            Tag::Dereference => {
                self.arity(t, items, 1, at)?;
                let id = self.ref_id()?;
                return self.dereference(id);
            }
            Tag::Datetime | Tag::Date | Tag::Time | Tag::Timedelta => {
                self.arity(t, items, 1, at)?;
                let text = self.atom(t)?;
                let when = when(t, text).map_err(|e| self.error(e, at))?;
                self.b.when(when).map_err(|f| self.fault(f, at, |why| format!("bad {}: {why}", show(t))))?
            }
            Tag::Decimal => {
                self.arity(t, items, 2, at)?;
                let value = self.int("decimal value")?;
                let Integer::Small(exponent) = self.int("decimal exponent")? else {
                    return Err(self.error("decimal exponent out of range".into(), at));
                };
                let value = value.to_big();
                let digits: Vec<u8> = value.magnitude().to_str_radix(10).bytes().map(|d| d - b'0').collect();
                let negative = value.sign() == Sign::Minus;
                self.b
                    .decimal(negative, &digits, exponent)
                    .map_err(|f| self.fault(f, at, |why| format!("bad decimal: {why}")))?
            }
            Tag::Unpersistable => {
                self.arity(t, items, 1, at)?;
                let reason = self.atom(t)?;
                self.b.unpersistable(&String::from_utf8_lossy(reason)).map_err(other)?
            }
            Tag::Refused => {
                return Err(
                    self.insecure(format!("jelly type {} is not allowed (it names code to import)", show(t)), at)
                );
            }
            Tag::List
            | Tag::Tuple
            | Tag::Dictionary
            | Tag::Set
            | Tag::Frozenset
            | Tag::Reference
            | Tag::Persistent
            | Tag::Other => unreachable!("forms that hold values are opened, not read as leaves"),
        };
        Ok(Built::done(obj))
    }

    fn dereference(&mut self, id: i64) -> Res<Built<B::Value>, B> {
        match self.refs.get(&id) {
            Some(Slot::Ready { obj, pending }) => {
                // A tuple that held a placeholder when it was defined holds none once every
                // dereference made too early has been patched.
                let pending = *pending && self.waiting > 0;
                return Ok(Built { obj: obj.clone(), placeholder: None, pending });
            }
            Some(Slot::Waiting { placeholder, .. }) => {
                return Ok(Built { obj: placeholder.clone(), placeholder: Some(id), pending: false });
            }
            _ => {}
        }
        let placeholder = self.b.placeholder(id).map_err(Error::Other)?;
        let slot = Slot::Waiting { placeholder: placeholder.clone(), sites: Vec::new() };
        self.refs.insert(id, slot);
        self.waiting += 1;
        Ok(Built { obj: placeholder, placeholder: Some(id), pending: false })
    }

    /// `id` now names `obj` (defined by the list at `at`): patch every place a placeholder for it
    /// went.
    fn define(&mut self, id: i64, obj: &B::Value, pending: bool, at: usize) -> Res<(), B> {
        let Some(Slot::Waiting { sites, .. }) = self.refs.insert(id, Slot::Ready { obj: obj.clone(), pending }) else {
            return Ok(());
        };
        self.waiting -= 1;
        for site in &sites {
            if let Site::TupleItem(tuple, _) = site {
                if self.b.same(tuple, obj) {
                    // Only bytes can say this: no Python value is a tuple that holds itself.
                    return Err(self.error(format!("reference {id} is a tuple that contains itself"), at));
                }
                if self.hook_ran {
                    let msg = format!("a tuple refers to reference {id}, which is only built after the hook has run");
                    return Err(self.error(msg, at));
                }
            }
        }
        for site in sites {
            match site {
                Site::ListItem(list, i) => self.b.patch_list(&list, i, obj).map_err(Error::Other)?,
                Site::DictValue(dict, key) => self
                    .b
                    .set_item(&dict, &key, obj)
                    .map_err(|f| self.fault(f, at, |why| format!("bad dictionary key: {why}")))?,
                // SAFETY: the tuple was made by this decoder and holds a placeholder at `i`. It has
                // not been hashed or given to the hook (values that hold placeholders are refused
                // as keys, members and hook items), the hook has not run (checked above) and the
                // value is not returned yet: nothing else can have seen it.
                Site::TupleItem(tuple, i) => unsafe { self.b.patch_tuple(&tuple, i, obj) },
            }
        }
        Ok(())
    }

    /// Remember that a placeholder for reference `id` went to `site`.
    fn add_site(&mut self, id: i64, site: Site<B::Value>) {
        if let Some(Slot::Waiting { sites, .. }) = self.refs.get_mut(&id) {
            sites.push(site);
        }
    }

    #[inline(always)]
    fn next(&mut self) -> Res<(Item<'a>, usize), B> {
        let at = self.cur.pos();
        match self.cur.next_item() {
            Some(item) => Ok((item, at)),
            // Not valid banana: a caller without a framer asks the validator for the details.
            None => Err(self.error("malformed banana".into(), at)),
        }
    }

    /// One more level of list nesting (counted like the framer counts it).
    #[inline]
    fn enter(&mut self, at: usize) -> Res<(), B> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(Error::TooDeep { limit: self.max_depth, offset: self.base + at as u64 });
        }
        Ok(())
    }

    fn error(&self, message: String, at: usize) -> Error<B::Error> {
        Error::invalid(message, self.base + at as u64)
    }

    fn insecure(&self, message: String, at: usize) -> Error<B::Error> {
        Error::Insecure { message, offset: Some(self.base + at as u64) }
    }

    /// A builder's fault at `at`: a Bad value as a jelly error whose message `say` makes.
    fn fault(&self, fault: Fault<B::Error>, at: usize, say: impl FnOnce(String) -> String) -> Error<B::Error> {
        match fault {
            Fault::Bad(why) => self.error(say(why), at),
            Fault::Hard(e) => Error::Other(e),
        }
    }

    /// The type tag of a jelly list, and what it is.
    #[inline(always)]
    fn tag(&mut self, n: usize, at: usize) -> Res<(Tag, &'a [u8]), B> {
        if n == 0 {
            return Err(self.error("empty list is not jelly (a type tag must come first)".into(), at));
        }
        if let Some((index, word)) = self.cur.vocab() {
            return Ok((Tag::of_vocab(index), word));
        }
        match self.next()? {
            (Item::Bytes(s), _) => Ok((Tag::classify(s), s)),
            (_, at) => Err(self.error("jelly list does not start with a byte-string type tag".into(), at)),
        }
    }

    fn atom(&mut self, what: &[u8]) -> Res<&'a [u8], B> {
        match self.next()? {
            (Item::Bytes(s), _) => Ok(s),
            (_, at) => Err(self.error(format!("{} expects a byte string", show(what)), at)),
        }
    }

    fn int(&mut self, what: &str) -> Res<Integer, B> {
        match self.next()? {
            (item @ (Item::Int(_) | Item::BigInt { .. }), at) => {
                item.integer().ok_or_else(|| self.error(format!("bad {what}"), at))
            }
            (_, at) => Err(self.error(format!("{what} must be an integer"), at)),
        }
    }

    fn ref_id(&mut self) -> Res<i64, B> {
        match self.int("reference id")? {
            Integer::Small(id) => Ok(id),
            Integer::Big(_) => Err(self.error("reference id out of range".into(), self.cur.pos())),
        }
    }

    fn arity(&self, t: &[u8], got: usize, want: usize, at: usize) -> Res<(), B> {
        if got != want {
            return Err(self.error(format!("{} takes {want} item(s), got {got}", show(t)), at));
        }
        Ok(())
    }
}

/// The fields of a `datetime`, `date`, `time` or `timedelta` body, narrowed to their widths.
fn when(t: &[u8], text: &[u8]) -> Result<When, String> {
    let narrow = |v: i64| u8::try_from(v).map_err(|_| format!("bad {}: field {v} out of range", show(t)));
    let microsecond = |v: i64| u32::try_from(v).map_err(|_| "microsecond out of range".to_owned());
    let year = |v: i64| i32::try_from(v).map_err(|_| "year out of range".to_owned());
    Ok(match t {
        tag::DATETIME => {
            let f = parse_fields(text, 3, 7)?;
            let g = |i: usize| f.get(i).copied().unwrap_or(0);
            When::DateTime {
                year: year(g(0))?,
                month: narrow(g(1))?,
                day: narrow(g(2))?,
                hour: narrow(g(3))?,
                minute: narrow(g(4))?,
                second: narrow(g(5))?,
                microsecond: microsecond(g(6))?,
            }
        }
        tag::DATE => {
            let f = parse_fields(text, 3, 3)?;
            When::Date { year: year(f[0])?, month: narrow(f[1])?, day: narrow(f[2])? }
        }
        tag::TIME => {
            let f = parse_fields(text, 0, 4)?;
            let g = |i: usize| f.get(i).copied().unwrap_or(0);
            When::Time {
                hour: narrow(g(0))?,
                minute: narrow(g(1))?,
                second: narrow(g(2))?,
                microsecond: microsecond(g(3))?,
            }
        }
        _ => {
            let f = parse_fields(text, 3, 3)?;
            let fit = |v: i64| i32::try_from(v).map_err(|_| format!("timedelta field {v} out of range"));
            When::Delta { days: fit(f[0])?, seconds: fit(f[1])?, microseconds: fit(f[2])? }
        }
    })
}

/// The message for a type tag nothing is registered for.
pub fn unregistered(t: &[u8]) -> String {
    let text = String::from_utf8_lossy(t);
    match text.rsplit_once('.') {
        Some((module, _)) => format!("no class is registered for type {} (module {module} is not allowed)", show(t)),
        None => format!("jelly type {} is not allowed", show(t)),
    }
}
