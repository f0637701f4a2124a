//! Values -> jelly -> banana bytes, in one walk: a [`Writer`] writes the tokens of each jelly form
//! and keeps the books on shared containers; a [`Walk`] says what each value is and hands out the
//! items of containers. The walk keeps its place on a heap stack, not the native one.
//!
//! Shared and cyclic containers: the first sighting of a tracked object records where its bytes
//! start; a later sighting gives it the next reference id and writes `["dereference", id]`. At the
//! end the first sightings that were referenced again are wrapped in `["reference", id, ...]` by
//! one splice over the buffer — the byte-level equivalent of Twisted rewriting its first
//! s-expression in place, so ids come out in the same (second-sighting) order.

use num_bigint::BigInt;

use super::{format_fields, tag, Error};
use crate::banana::vocab::{const_index, PB_VOCAB};
use crate::banana::{tb, BananaError, Dialect, Encoder, Limits};
use crate::ids::IdMap;

/// Says what each value is, for [`Writer::value`].
pub trait Walk {
    /// A value to write.
    type Item;
    /// A container being written: where its items stand.
    type Frame;
    type Error;

    /// Write `item`. A container is looked up with [`Writer::seen`] first, and unless it was seen,
    /// opened (its header written) and pushed on `stack` as a frame, whose items [`Walk::next`]
    /// hands out; the walk closes it once they are all written. (Pushed where it is built: a
    /// frame handed back would be copied on its way to the stack.)
    ///
    /// A walk may instead write a new container's items straight away, as far as they need no
    /// frame of their own: if it gets to the end, it closes the container and pushes nothing;
    /// if not, it pushes the frame and returns the item that stopped it, to be written next.
    fn write(
        &mut self,
        w: &mut Writer,
        stack: &mut Vec<Self::Frame>,
        item: Self::Item,
    ) -> Result<Option<Self::Item>, Error<Self::Error>>;

    /// Write the items of `frame` from where it stands as far as they need no frame of their own;
    /// return the first that may (for [`Walk::write`]), or None once all are written.
    fn next(&mut self, w: &mut Writer, frame: &mut Self::Frame) -> Result<Option<Self::Item>, Error<Self::Error>>;
}

/// What the writer refuses to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Lists nested deeper than `limit`.
    TooDeep { limit: usize },
    /// A value banana cannot carry.
    Banana(BananaError),
}

impl From<BananaError> for Refusal {
    fn from(e: BananaError) -> Refusal {
        Refusal::Banana(e)
    }
}

impl<E> From<Refusal> for Error<E> {
    fn from(r: Refusal) -> Error<E> {
        match r {
            Refusal::TooDeep { limit } => Error::TooDeepToSend { limit },
            Refusal::Banana(e) => Error::Banana(e),
        }
    }
}

/// A type tag as the writer writes it, with its `pb` VOCAB index found once (at compile time for
/// the constants in [`word`]) rather than looked up at every container.
#[derive(Debug, Clone, Copy)]
pub struct Word<'a> {
    text: &'a [u8],
    pb_index: Option<u8>,
}

impl<'a> Word<'a> {
    pub const fn new(text: &'a [u8]) -> Word<'a> {
        // (PB's table starts at 1: index 0 is not a word.)
        Word { text, pb_index: const_index(&PB_VOCAB, 1, text) }
    }
}

/// The tags of jelly's containers, as [`Word`]s.
pub mod word {
    use super::{tag, Word};

    pub const LIST: Word<'static> = Word::new(tag::LIST);
    pub const TUPLE: Word<'static> = Word::new(tag::TUPLE);
    pub const DICTIONARY: Word<'static> = Word::new(tag::DICTIONARY);
    pub const SET: Word<'static> = Word::new(tag::SET);
    pub const FROZENSET: Word<'static> = Word::new(tag::FROZENSET);
    pub const DECIMAL: Word<'static> = Word::new(tag::DECIMAL);
}

/// The bytes that start a dictionary's pair whose key is a short str: the pair's header and the
/// key as [`Writer::text`] writes it ([`Writer::pair_text_form`]). Kept by a walk that meets the
/// same key again, to write them with one copy of [`Form::ROOM`] bytes.
#[derive(Clone, Copy)]
pub struct Form {
    len: u8,
    bytes: [u8; Form::ROOM],
}

impl Default for Form {
    fn default() -> Self {
        Form { len: 0, bytes: [0; Form::ROOM] }
    }
}

impl Form {
    /// The most bytes a form holds: a pair's start with a key of up to 33 bytes.
    pub const ROOM: usize = 48;

    /// The form of the bytes written from `start` to the end of `out`, if they fit.
    fn of(out: &[u8], start: usize) -> Option<Form> {
        let written = &out[start..];
        if written.len() > Form::ROOM {
            return None;
        }
        let mut bytes = [0; Form::ROOM];
        bytes[..written.len()].copy_from_slice(written);
        Some(Form { len: written.len() as u8, bytes })
    }
}

/// Where a tracked object's bytes start, and its reference id once it is met again (0 until).
#[derive(Clone, Copy, Default)]
pub struct Seen {
    start: usize,
    ref_id: u32,
}

/// A writer's buffers, kept between messages so that a steady stream of them does not regrow
/// (and page-fault) fresh ones each time.
#[derive(Default)]
pub struct Buffers {
    out: Vec<u8>,
    seen: IdMap<Seen>,
    wraps: Vec<(usize, u32)>,
}

impl Buffers {
    /// Whether these are small enough to keep: one huge message should not pin its memory.
    pub fn worth_keeping(&self) -> bool {
        self.out.capacity() <= 4 << 20 && self.seen.capacity() <= 1 << 16
    }
}

/// Writes jelly values (and, through [`Writer::raw`], the banana around them) into one buffer.
/// Each [`Writer::value`] is its own id space for references, as each of Twisted's `jelly()` calls is.
pub struct Writer {
    enc: Encoder,
    /// Lists open in the value being written.
    depth: usize,
    max_depth: usize,
    /// Tracked objects of the value being written, by identity.
    seen: IdMap<Seen>,
    /// (byte offset of a first sighting, reference id) to wrap at the end.
    wraps: Vec<(usize, u32)>,
    next_ref: u32,
}

/// `["unicode", ...`: "unicode" is no vocabulary word, so this prefix is the same in every dialect.
const UNICODE: &[u8] = b"\x02\x80\x07\x82unicode";

impl Writer {
    /// A writer bounded by Twisted's default `max_depth`: what a receiver accepts by default.
    pub fn new(dialect: Dialect, buffers: Buffers) -> Writer {
        let Buffers { mut out, mut seen, mut wraps } = buffers;
        out.clear();
        seen.clear();
        wraps.clear();
        let enc = Encoder::appending(out, dialect);
        Writer { enc, depth: 0, max_depth: Limits::twisted().max_depth, seen, wraps, next_ref: 1 }
    }

    /// A writer that appends to `out` (what it holds stays), with no buffers for tracking
    /// shared containers: for values that hold none (see `rust/py/jelly.rs`'s `FlatWriter`).
    pub fn appending(dialect: Dialect, out: Vec<u8>) -> Writer {
        let buffers = Buffers { out, ..Buffers::default() };
        let enc = Encoder::appending(buffers.out, dialect);
        Writer {
            enc,
            depth: 0,
            max_depth: Limits::twisted().max_depth,
            seen: buffers.seen,
            wraps: buffers.wraps,
            next_ref: 1,
        }
    }

    /// The output buffer back, with everything written.
    pub fn into_output(self) -> Vec<u8> {
        self.enc.out
    }

    /// The bytes written so far.
    pub fn output(&self) -> &[u8] {
        &self.enc.out
    }

    /// The buffers back, for the next writer (the bytes written are dropped).
    pub fn into_buffers(self) -> Buffers {
        let Writer { enc, seen, wraps, .. } = self;
        Buffers { out: enc.out, seen, wraps }
    }

    /// The underlying banana encoder, for the items written around jelly values.
    pub fn raw(&mut self) -> &mut Encoder {
        &mut self.enc
    }

    /// Jelly one value: write `root`, then the items of each container it opens, innermost first.
    /// `stack` holds the open containers (empty, and emptied again, between calls).
    pub fn value<W: Walk>(
        &mut self,
        walk: &mut W,
        stack: &mut Vec<W::Frame>,
        root: W::Item,
    ) -> Result<(), Error<W::Error>> {
        let start = self.enc.out.len();
        self.depth = 0;
        let written = self.walk(walk, stack, root);
        stack.clear();
        if written.is_ok() && !self.wraps.is_empty() {
            self.splice_references(start);
        }
        self.seen.clear();
        self.wraps.clear();
        self.next_ref = 1;
        written
    }

    fn walk<W: Walk>(&mut self, walk: &mut W, stack: &mut Vec<W::Frame>, root: W::Item) -> Result<(), Error<W::Error>> {
        let mut item = root;
        loop {
            if let Some(inner) = walk.write(self, stack, item)? {
                item = inner;
                continue;
            }
            // The innermost open container with an item left gives the next item.
            item = loop {
                let Some(top) = stack.last_mut() else { return Ok(()) };
                match walk.next(self, top)? {
                    Some(inner) => break inner,
                    None => {
                        stack.pop();
                        self.close();
                    }
                }
            };
        }
    }

    /// Whether the object `id` (its address) was met before in this value: then its dereference
    /// has been written in its place. If not, it is remembered from here on; the caller keeps it
    /// alive until the value is written, so that no other object takes its address meanwhile.
    #[inline(always)]
    pub fn seen(&mut self, id: usize) -> Result<bool, Refusal> {
        let start = self.enc.out.len();
        match self.seen.get_or_insert(id, Seen { start, ref_id: 0 }) {
            None => Ok(false),
            Some(seen) => {
                if seen.ref_id == 0 {
                    seen.ref_id = self.next_ref;
                    self.next_ref += 1;
                    self.wraps.push((seen.start, seen.ref_id));
                }
                let id = seen.ref_id;
                self.open_list(2)?;
                self.enc.bytes(tag::DEREFERENCE)?;
                self.enc.int(i64::from(id));
                self.close();
                Ok(true)
            }
        }
    }

    /// How many objects [`Writer::seen`] has remembered in this value.
    pub fn tracked(&self) -> usize {
        self.seen.len()
    }

    /// The objects [`Writer::seen`] remembered in this value, from the `from`th on.
    pub fn tracked_from(&self, from: usize) -> impl Iterator<Item = usize> + '_ {
        self.seen.keys_from(from)
    }

    /// Whether the object `id` was met before in this value (nothing is written or remembered).
    pub fn was_seen(&self, id: usize) -> bool {
        self.seen.contains_key(id)
    }

    /// `[tag, ...len items]`: the items follow, then [`Writer::close`].
    #[inline(always)]
    pub fn open(&mut self, tag: Word<'_>, len: usize) -> Result<(), Refusal> {
        // The common shape, a short container with a PB vocabulary tag: its four bytes at once.
        if let (Dialect::Pb, Some(index), 0..0x7f) = (self.enc.dialect, tag.pb_index, len) {
            self.enter()?;
            let head = [len as u8 + 1, tb::LIST, index, tb::VOCAB];
            self.enc.out.extend_from_slice(&head);
            return Ok(());
        }
        self.open_list(len + 1)?;
        match (self.enc.dialect, tag.pb_index) {
            (Dialect::Pb, Some(index)) => self.enc.vocab(index),
            _ => self.enc.bytes(tag.text)?,
        }
        Ok(())
    }

    /// A bare list of `len` items (a dictionary's pair, the items a hook gave): they follow, then
    /// [`Writer::close`].
    #[inline(always)]
    pub fn open_list(&mut self, len: usize) -> Result<(), Refusal> {
        self.enter()?;
        Ok(self.enc.list(len)?)
    }

    /// The level of a dictionary's `[key, value]` pairs, opened before its first pair: each pair
    /// is then written by [`Writer::pair`] at this level (one check of the depth for them all),
    /// and the level closed by [`Writer::close`] after the last.
    #[inline(always)]
    pub fn open_pairs(&mut self) -> Result<(), Refusal> {
        self.enter()
    }

    /// A pair's list header (two items), at the level [`Writer::open_pairs`] opened.
    #[inline(always)]
    pub fn pair(&mut self) {
        self.enc.out.extend_from_slice(&[2, tb::LIST]);
    }

    /// One more level of lists.
    #[inline(always)]
    fn enter(&mut self) -> Result<(), Refusal> {
        if self.depth >= self.max_depth {
            return Err(Refusal::TooDeep { limit: self.max_depth });
        }
        // Below max_depth: no overflow.
        self.depth = self.depth.wrapping_add(1);
        Ok(())
    }

    #[inline(always)]
    pub fn close(&mut self) {
        debug_assert!(self.depth > 0);
        self.depth = self.depth.wrapping_sub(1);
    }

    #[inline(always)]
    pub fn int(&mut self, v: i64) {
        self.enc.int(v);
    }

    /// An integer of any size (one beyond ±(2**448 - 1) is refused).
    pub fn big_int(&mut self, v: &BigInt) -> Result<(), Refusal> {
        Ok(self.enc.big_int(v)?)
    }

    #[inline(always)]
    pub fn float(&mut self, v: f64) {
        self.enc.float(v);
    }

    #[inline(always)]
    pub fn bytes(&mut self, b: &[u8]) -> Result<(), Refusal> {
        Ok(self.enc.bytes(b)?)
    }

    /// [`Writer::pair`] and [`Writer::text`] (a pair whose key is a str), and the bytes they wrote
    /// if they fit in a [`Form`].
    #[inline(always)]
    pub fn pair_text_form(&mut self, utf8: &[u8]) -> Result<Option<Form>, Refusal> {
        let start = self.enc.out.len();
        self.pair();
        self.text(utf8)?;
        Ok(Form::of(&self.enc.out, start))
    }

    /// A pair's start again, from the form [`Writer::pair_text_form`] gave (its key checked as
    /// [`Writer::text`] checks a str).
    #[inline(always)]
    pub fn form(&mut self, form: &Form) -> Result<(), Refusal> {
        if self.depth >= self.max_depth {
            return Err(Refusal::TooDeep { limit: self.max_depth });
        }
        let out = &mut self.enc.out;
        out.reserve(Form::ROOM);
        // SAFETY: the reservation leaves room for all of `form.bytes` after the current end (one
        // copy of fixed size, rather than one of the form's length); the length then covers the
        // form's bytes only.
        unsafe {
            let end = out.len();
            std::ptr::copy_nonoverlapping(form.bytes.as_ptr(), out.as_mut_ptr().add(end), Form::ROOM);
            out.set_len(end + usize::from(form.len));
        }
        Ok(())
    }

    /// A str, as `["unicode", utf8]`.
    #[inline(always)]
    pub fn text(&mut self, utf8: &[u8]) -> Result<(), Refusal> {
        if self.depth >= self.max_depth {
            return Err(Refusal::TooDeep { limit: self.max_depth });
        }
        if utf8.len() < 0x80 && self.enc.dialect.vocab_index(utf8).is_none() {
            self.enc.short_string_after(UNICODE, utf8);
            return Ok(());
        }
        self.enc.out.extend_from_slice(UNICODE);
        Ok(self.enc.bytes(utf8)?)
    }

    pub fn none(&mut self) -> Result<(), Refusal> {
        self.tagged(&[tag::NONE])
    }

    pub fn boolean(&mut self, v: bool) -> Result<(), Refusal> {
        self.tagged(&[tag::BOOLEAN, if v { tag::TRUE } else { tag::FALSE }])
    }

    /// `[tag, "f1 f2 ..."]`: a `datetime`, `date`, `time` or `timedelta` by its fields.
    pub fn when(&mut self, tag: &[u8], fields: &[i64]) -> Result<(), Refusal> {
        self.tagged(&[tag, format_fields(fields).as_bytes()])
    }

    /// `["decimal", coefficient, exponent]`: the value `coefficient * 10**exponent`.
    pub fn decimal(&mut self, coefficient: &BigInt, exponent: i64) -> Result<(), Refusal> {
        self.open(word::DECIMAL, 2)?;
        self.enc.big_int(coefficient)?;
        self.enc.int(exponent);
        self.close();
        Ok(())
    }

    /// `["unpersistable", reason]`: what Twisted sends for an object it will not send.
    pub fn unpersistable(&mut self, reason: &str) -> Result<(), Refusal> {
        self.tagged(&[tag::UNPERSISTABLE, reason.as_bytes()])
    }

    /// `["class", name]`: a class, by its qualified name.
    pub fn class(&mut self, name: &str) -> Result<(), Refusal> {
        self.tagged(&[tag::CLASS, name.as_bytes()])
    }

    /// `[atom, atom, ...]` of byte strings.
    fn tagged(&mut self, atoms: &[&[u8]]) -> Result<(), Refusal> {
        self.open_list(atoms.len())?;
        for atom in atoms {
            self.enc.bytes(atom)?;
        }
        self.close();
        Ok(())
    }

    /// Wrap each first sighting that was referenced again in `["reference", id, ...]`.
    fn splice_references(&mut self, from: usize) {
        self.wraps.sort_unstable();
        let old = std::mem::take(&mut self.enc.out);
        let mut out = Encoder::with_capacity(self.enc.dialect, old.len() + self.wraps.len() * 20);
        out.out.extend_from_slice(&old[..from]);
        let mut copied = from;
        for &(offset, id) in &self.wraps {
            out.out.extend_from_slice(&old[copied..offset]);
            out.header(3);
            out.out.push(tb::LIST);
            // Not a string too long to send: the tag is a short word.
            let _ = out.bytes(tag::REFERENCE);
            out.int(i64::from(id));
            copied = offset;
        }
        out.out.extend_from_slice(&old[copied..]);
        self.enc.out = out.out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_carry_the_vocabulary_index_a_lookup_finds() {
        let words = [word::LIST, word::TUPLE, word::DICTIONARY, word::SET, word::FROZENSET, word::DECIMAL];
        for w in words.into_iter().chain([Word::new(b"remote"), Word::new(b"copy.Thing"), Word::new(b"")]) {
            assert_eq!(w.pb_index, Dialect::Pb.vocab_index(w.text), "{:?}", w.text);
        }
        assert_eq!(word::DICTIONARY.pb_index, Some(5));
        assert_eq!(word::SET.pb_index, None);
    }
}
