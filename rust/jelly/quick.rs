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

use super::decode::Build;
use super::Tag;
use crate::banana::cursor::{Cursor, Item, Plain};

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

/// What [`Quick::item`] found.
enum Got<V> {
    Value(V),
    /// A container, opened and pushed.
    Opened,
}

struct Quick<'a, 'b, 'c, B: Build> {
    b: &'b mut B,
    cur: Cursor<'a>,
    stack: &'c mut Vec<Open<B::Value>>,
    depth: usize,
    max_depth: usize,
}

/// The value of `cur`'s expression and the bytes it took, or None: the general walk's business.
/// `stack` is empty, and is emptied again.
pub(super) fn quick<B: Build>(
    cur: Cursor<'_>,
    max_depth: usize,
    whole: bool,
    build: &mut B,
    stack: &mut Vec<Open<B::Value>>,
) -> Option<(B::Value, usize)> {
    let mut q = Quick { b: build, cur, stack, depth: 0, max_depth };
    let value = q.value();
    q.stack.clear();
    let value = value?;
    if whole && !q.cur.at_end() {
        return None;
    }
    Some((value, q.cur.pos()))
}

impl<B: Build> Quick<'_, '_, '_, B> {
    fn value(&mut self) -> Option<B::Value> {
        let mut child = match self.item()? {
            Got::Value(v) => return Some(v),
            Got::Opened => None,
        };
        // Fill the innermost container until it is full (then it is the value for the one it is
        // in) or meets a container, which becomes the innermost.
        loop {
            let Some(top) = self.stack.last_mut() else { return child };
            let opened = if top.kind == Kind::Dict {
                if let Some(value) = child.take() {
                    let key = top.key.take()?;
                    self.b.set_item(&top.obj, &key, &value).ok()?;
                    top.next += 1;
                    self.depth -= 1;
                }
                self.pairs()?
            } else {
                if let Some(item) = child.take() {
                    self.place(item);
                }
                self.items()?
            };
            if !opened {
                child = Some(self.stack.pop()?.obj);
                self.depth -= 1;
            }
        }
    }

    /// Fill the top list or tuple; true if it stopped at a container (opened and pushed).
    #[inline(always)]
    fn items(&mut self) -> Option<bool> {
        loop {
            let top = self.stack.last()?;
            if top.next == top.len {
                return Some(false);
            }
            match self.item()? {
                Got::Value(v) => self.place(v),
                Got::Opened => return Some(true),
            }
        }
    }

    /// Put `item` in the next slot of the top list or tuple.
    #[inline(always)]
    fn place(&mut self, item: B::Value) {
        let Some(top) = self.stack.last_mut() else { return };
        // SAFETY: `next < len` (checked before the item was read), each slot is filled once, in
        // order, and the container goes nowhere until it is full: popped by `value`, or dropped.
        unsafe {
            match top.kind {
                Kind::List => self.b.fill_list(&top.obj, top.next, item),
                _ => self.b.fill_tuple(&top.obj, top.next, item),
            }
        }
        top.next += 1;
    }

    /// Fill the top dict; true if it stopped at a value that is a container (opened and pushed,
    /// its key kept in the dict's frame).
    #[inline(always)]
    fn pairs(&mut self) -> Option<bool> {
        loop {
            let top = self.stack.last()?;
            if top.next == top.len {
                return Some(false);
            }
            let pair = top.next;
            if !self.cur.pair() {
                let Item::List(2) = self.cur.next_item()? else { return None };
            }
            self.enter()?;
            // Keys are strs (which repeat from dict to dict: the builder's `key`), ints or floats.
            let key = match self.cur.plain()? {
                Plain::Text(s) => self.b.key(s, pair).ok()?,
                Plain::Int(v) => self.b.int(v).ok()?,
                Plain::Float(f) => self.b.float(f).ok()?,
            };
            match self.item()? {
                Got::Value(value) => {
                    let top = self.stack.last_mut()?;
                    self.b.set_item(&top.obj, &key, &value).ok()?;
                    top.next += 1;
                    self.depth -= 1;
                }
                Got::Opened => {
                    let len = self.stack.len();
                    self.stack[len - 2].key = Some(key);
                    return Some(true);
                }
            }
        }
    }

    /// The item at the cursor: a value, or a container opened (and pushed) to be filled.
    #[inline(always)]
    fn item(&mut self) -> Option<Got<B::Value>> {
        let b = &mut *self.b;
        if let Some(plain) = self.cur.plain() {
            return Some(Got::Value(match plain {
                Plain::Text(s) => b.text(s).ok()?,
                Plain::Int(v) => b.int(v).ok()?,
                Plain::Float(f) => b.float(f).ok()?,
            }));
        }
        let n = match self.cur.next_item()? {
            Item::List(n) if n > 0 => n,
            Item::Int(v) => return b.int(v).ok().map(Got::Value),
            Item::Float(f) => return b.float(f).ok().map(Got::Value),
            Item::Bytes(s) => return b.bytes(s).ok().map(Got::Value),
            Item::List(_) | Item::BigInt { .. } => return None,
        };
        self.enter()?;
        let kind = match self.cur.vocab() {
            Some((index, _)) => Tag::of_vocab(index),
            None => match self.cur.next_item()? {
                Item::Bytes(t) => Tag::classify(t),
                _ => return None,
            },
        };
        let (len, b) = (n - 1, &mut *self.b);
        // SAFETY (list and tuple): filled below or by `items`, slot by slot, before they go
        // anywhere.
        let (kind, obj) = match kind {
            Tag::List => (Kind::List, unsafe { b.list(len) }.ok()?),
            Tag::Tuple => (Kind::Tuple, unsafe { b.tuple(len) }.ok()?),
            Tag::Dictionary => (Kind::Dict, b.dict().ok()?),
            Tag::None if len == 0 => return self.leaf(|b, _| b.none().ok()),
            Tag::Boolean if len == 1 => {
                return self.leaf(|b, cur| match cur.next_item()? {
                    Item::Bytes(b"true") => b.boolean(true).ok(),
                    Item::Bytes(b"false") => b.boolean(false).ok(),
                    _ => None,
                })
            }
            Tag::Unicode if len == 1 => {
                return self.leaf(|b, cur| match cur.next_item()? {
                    Item::Bytes(s) => b.text(s).ok(),
                    _ => None,
                })
            }
            _ => return None,
        };
        // The plain items at the head of a list or tuple go in here: one of plain items only (the
        // common kind) is complete without going on the stack.
        let mut next = 0;
        if kind != Kind::Dict {
            while next < len {
                let Some(plain) = self.cur.plain() else { break };
                let item = match plain {
                    Plain::Text(s) => self.b.text(s).ok()?,
                    Plain::Int(v) => self.b.int(v).ok()?,
                    Plain::Float(f) => self.b.float(f).ok()?,
                };
                // SAFETY: as `place`: `next < len`, slots filled once, in order.
                unsafe {
                    match kind {
                        Kind::List => self.b.fill_list(&obj, next, item),
                        _ => self.b.fill_tuple(&obj, next, item),
                    }
                }
                next += 1;
            }
            if next == len {
                self.depth -= 1;
                return Some(Got::Value(obj));
            }
        }
        self.stack.push(Open { kind, obj, len, next, key: None });
        Some(Got::Opened)
    }

    /// A form whose list was entered and which holds no values: `make` reads the rest.
    fn leaf(&mut self, make: impl FnOnce(&mut B, &mut Cursor<'_>) -> Option<B::Value>) -> Option<Got<B::Value>> {
        let value = make(self.b, &mut self.cur)?;
        self.depth -= 1;
        Some(Got::Value(value))
    }

    /// One more level of list nesting, counted as the general walk counts it.
    #[inline(always)]
    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= self.max_depth).then_some(())
    }
}
