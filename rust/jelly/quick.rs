//! The quick pass: most values are lists, tuples and dicts of strs, ints, floats, bytes, None and
//! bools, with no shared or cyclic containers. This walk builds exactly those, with none of the
//! general walk's bookkeeping (references, placeholders, the hook, error positions); at anything
//! else — another form, a malformed or over-limit item, a builder's refusal — it gives up, drops
//! what it built (nothing has seen it) and the general walk reads the expression from its start,
//! and says what is wrong if anything is.
//!
//! Every value it does build is the one the general walk would: the same builder calls, the same
//! limits (lists are counted towards `max_depth` as the general walk counts them), the same checks
//! on what follows the value.
//!
//! The walk is one function over a cursor and a nesting count of its own (locals, which live in
//! registers), with the builder's calls inlined into it.

use super::decode::Build;
use super::{push_in_place, Tag};
use crate::banana::cursor::{Cursor, Item, Plain, Token};

/// A container being filled.
pub(super) struct Open<V> {
    kind: Kind,
    obj: V,
    /// Items (for a dict, pairs) it holds, and how many are in.
    len: usize,
    next: usize,
    /// A dict's key whose value is a container being built.
    key: Option<V>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    List,
    Tuple,
    Dict,
}

/// What [`item`] found.
enum Got<V> {
    Value(V),
    /// A container to fill, pushed (where it is built: a frame handed back would be copied on
    /// its way to the stack, the copy waiting on the narrow stores that built it).
    Opened,
}

/// The value of `cur`'s expression and the bytes it took, or None: the general walk's business.
/// `stack` is empty, and is emptied again.
pub(super) fn quick<B: Build>(
    cur: &Cursor<'_>,
    max_depth: usize,
    whole: bool,
    b: &mut B,
    stack: &mut Vec<Open<B::Value>>,
) -> Option<(B::Value, usize)> {
    // A cursor of its own, which nothing outside this function sees: its fields live in registers.
    let mut cur = cur.clone();
    let value = walk(&mut cur, max_depth, b, stack);
    stack.clear();
    let value = value?;
    if whole && !cur.at_end() {
        return None;
    }
    Some((value, cur.pos()))
}

#[inline(always)]
fn walk<B: Build>(
    cur: &mut Cursor<'_>,
    max_depth: usize,
    b: &mut B,
    stack: &mut Vec<Open<B::Value>>,
) -> Option<B::Value> {
    // Lists open around the cursor, as the general walk counts them.
    let mut depth = 0;
    let pairs_ok = cur.limits().max_element_size >= 2;
    let mut child = match item(cur, b, &mut depth, max_depth, stack)? {
        Got::Value(v) => return Some(v),
        Got::Opened => None,
    };
    // Fill the innermost container until it is full (then it is the value for the one it is in)
    // or meets a container, which becomes the innermost.
    'fill: loop {
        let top = stack.last_mut()?;
        if top.kind == Kind::Dict {
            if let Some(value) = child.take() {
                let key = top.key.take()?;
                b.set_item(&top.obj, &key, &value).ok()?;
                top.next += 1;
                depth -= 1;
            }
            loop {
                let top = stack.last_mut()?;
                let pair = top.next;
                if pair == top.len {
                    break;
                }
                // The pair's start as the last dict had it at this place gives its key, without
                // reading it token by token (a pair's list needs max_element_size >= 2).
                let key = match pairs_ok.then(|| b.known_pair(cur.rest(), pair)).flatten() {
                    Some((key, took)) => {
                        enter(&mut depth, max_depth)?;
                        cur.skip_to(cur.pos() + took);
                        key
                    }
                    None => {
                        if !cur.pair() {
                            let Item::List(2) = cur.next_item()? else { return None };
                        }
                        enter(&mut depth, max_depth)?;
                        // Keys are strs (which repeat from dict to dict: the builder's `key`),
                        // ints or floats.
                        match cur.token() {
                            Some((Token::Text(s), end)) => {
                                cur.skip_to(end);
                                b.key(s, pair).ok()?
                            }
                            Some((Token::Int(v), end)) => {
                                cur.skip_to(end);
                                b.int(v).ok()?
                            }
                            Some((Token::Float(f), end)) => {
                                cur.skip_to(end);
                                b.float(f).ok()?
                            }
                            Some((Token::Tagged { .. }, _)) => return None,
                            None => match cur.plain()? {
                                Plain::Text(s) => b.key(s, pair).ok()?,
                                Plain::Int(v) => b.int(v).ok()?,
                                Plain::Float(f) => b.float(f).ok()?,
                            },
                        }
                    }
                };
                match item(cur, b, &mut depth, max_depth, stack)? {
                    Got::Value(value) => {
                        let top = stack.last_mut()?;
                        b.set_item(&top.obj, &key, &value).ok()?;
                        top.next += 1;
                        depth -= 1;
                    }
                    Got::Opened => {
                        // The dict is under the container just pushed.
                        let at = stack.len().checked_sub(2)?;
                        stack[at].key = Some(key);
                        continue 'fill;
                    }
                }
            }
        } else {
            if let Some(value) = child.take() {
                // SAFETY: `next < len` (checked before the item was read), each slot is filled
                // once, in order, and the container goes nowhere until it is full.
                unsafe { fill(b, top, value) };
            }
            loop {
                let top = stack.last_mut()?;
                if top.next == top.len {
                    break;
                }
                match item(cur, b, &mut depth, max_depth, stack)? {
                    // SAFETY: as above.
                    Got::Value(value) => unsafe { fill(b, stack.last_mut()?, value) },
                    Got::Opened => continue 'fill,
                }
            }
        }
        // Full: the value for the container it is in, if any.
        let done = stack.pop()?.obj;
        depth -= 1;
        if stack.is_empty() {
            return Some(done);
        }
        child = Some(done);
    }
}

/// Put `value` in the next slot of `top`, a list or tuple.
///
/// # Safety
///
/// `top.next < top.len`; the slots before it are filled and the others are empty.
#[inline(always)]
unsafe fn fill<B: Build>(b: &mut B, top: &mut Open<B::Value>, value: B::Value) {
    // SAFETY: the caller's contract.
    unsafe { place(b, top.kind, &top.obj, top.next, value) };
    top.next += 1;
}

/// Put `value` in slot `index` of `obj`, a list or tuple as `kind` says.
///
/// # Safety
///
/// As [`Build::fill_list`] and [`Build::fill_tuple`] ask.
#[inline(always)]
unsafe fn place<B: Build>(b: &mut B, kind: Kind, obj: &B::Value, index: usize, value: B::Value) {
    // SAFETY: the caller's contract is the builder's.
    unsafe {
        match kind {
            Kind::List => b.fill_list(obj, index, value),
            _ => b.fill_tuple(obj, index, value),
        }
    }
}

/// A str, int or float, as the builder makes it.
#[inline(always)]
fn plain<B: Build>(b: &mut B, plain: Plain<'_>) -> Option<B::Value> {
    match plain {
        Plain::Text(s) => b.text(s).ok(),
        Plain::Int(v) => b.int(v).ok(),
        Plain::Float(f) => b.float(f).ok(),
    }
}

/// The item at the cursor: a value, or a container to fill (its list entered).
#[inline(always)]
fn item<B: Build>(
    cur: &mut Cursor<'_>,
    b: &mut B,
    depth: &mut usize,
    max_depth: usize,
    stack: &mut Vec<Open<B::Value>>,
) -> Option<Got<B::Value>> {
    let Some((token, end)) = cur.token() else {
        // On copies, so that the cursor and the count (whose addresses the slow path takes) stay
        // in registers.
        let (mut c, mut d) = (cur.clone(), *depth);
        let got = slow_item(&mut c, b, &mut d, max_depth, stack);
        cur.skip_to(c.pos());
        *depth = d;
        return got;
    };
    cur.skip_to(end);
    match token {
        Token::Text(s) => b.text(s).ok().map(Got::Value),
        Token::Int(v) => b.int(v).ok().map(Got::Value),
        Token::Float(f) => b.float(f).ok().map(Got::Value),
        Token::Tagged { n, index } => {
            enter(depth, max_depth)?;
            open(cur, b, depth, Tag::of_vocab(index), n - 1, stack)
        }
    }
}

/// [`item`] for what [`Cursor::token`] does not read.
#[inline(never)]
fn slow_item<B: Build>(
    cur: &mut Cursor<'_>,
    b: &mut B,
    depth: &mut usize,
    max_depth: usize,
    stack: &mut Vec<Open<B::Value>>,
) -> Option<Got<B::Value>> {
    if let Some(p) = cur.plain() {
        return plain(b, p).map(Got::Value);
    }
    let n = match cur.next_item()? {
        Item::List(n) if n > 0 => n,
        Item::Int(v) => return b.int(v).ok().map(Got::Value),
        Item::Float(f) => return b.float(f).ok().map(Got::Value),
        Item::Bytes(s) => return b.bytes(s).ok().map(Got::Value),
        Item::List(_) | Item::BigInt { .. } => return None,
    };
    enter(depth, max_depth)?;
    let tag = match cur.vocab() {
        Some((index, _)) => Tag::of_vocab(index),
        None => match cur.next_item()? {
            Item::Bytes(t) => Tag::classify(t),
            _ => return None,
        },
    };
    open(cur, b, depth, tag, n - 1, stack)
}

/// The form tagged `tag` with `len` items, its list entered and its tag read: a container to
/// fill (pushed), or a value.
#[inline(always)]
fn open<B: Build>(
    cur: &mut Cursor<'_>,
    b: &mut B,
    depth: &mut usize,
    tag: Tag,
    len: usize,
    stack: &mut Vec<Open<B::Value>>,
) -> Option<Got<B::Value>> {
    // SAFETY (list and tuple): filled below or by `walk`, slot by slot, before they go anywhere.
    let (kind, obj) = match tag {
        Tag::List => (Kind::List, unsafe { b.list(len) }.ok()?),
        Tag::Tuple => (Kind::Tuple, unsafe { b.tuple(len) }.ok()?),
        Tag::Dictionary => {
            let obj = b.dict().ok()?;
            push_in_place(stack, Open { kind: Kind::Dict, obj, len, next: 0, key: None });
            return Some(Got::Opened);
        }
        _ => {
            let value = leaf(cur, b, tag, len)?;
            *depth -= 1;
            return Some(Got::Value(value));
        }
    };
    // The plain items at the head of a list or tuple go in here: one of plain items only (the
    // common kind) is complete without going on the stack.
    let mut next = 0;
    while next < len {
        let value = match cur.token() {
            Some((Token::Tagged { .. }, _)) => break,
            Some((token, end)) => {
                cur.skip_to(end);
                match token {
                    Token::Text(s) => b.text(s).ok()?,
                    Token::Int(v) => b.int(v).ok()?,
                    Token::Float(f) => b.float(f).ok()?,
                    Token::Tagged { .. } => return None,
                }
            }
            None => {
                let Some(p) = cur.plain() else { break };
                plain(b, p)?
            }
        };
        // SAFETY: `next < len`, slots filled once, in order, before the container goes anywhere.
        unsafe { place(b, kind, &obj, next, value) };
        next += 1;
    }
    if next == len {
        *depth -= 1;
        return Some(Got::Value(obj));
    }
    push_in_place(stack, Open { kind, obj, len, next, key: None });
    Some(Got::Opened)
}

/// A form whose list was entered and which holds no values (None, a bool, a str not in the
/// common shape), from its items after the tag.
#[inline(always)]
fn leaf<B: Build>(cur: &mut Cursor<'_>, b: &mut B, tag: Tag, len: usize) -> Option<B::Value> {
    match (tag, len) {
        (Tag::None, 0) => b.none().ok(),
        (Tag::Boolean, 1) => match cur.next_item()? {
            Item::Bytes(b"true") => b.boolean(true).ok(),
            Item::Bytes(b"false") => b.boolean(false).ok(),
            _ => None,
        },
        (Tag::Unicode, 1) => match cur.next_item()? {
            Item::Bytes(s) => b.text(s).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// One more level of list nesting, counted as the general walk counts it.
#[inline(always)]
fn enter(depth: &mut usize, max_depth: usize) -> Option<()> {
    *depth += 1;
    (*depth <= max_depth).then_some(())
}
