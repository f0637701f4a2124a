//! Banana bytes -> jelly -> Python objects, in one walk over an expression the framer has
//! already validated (so token errors cannot happen here; jelly errors can).
//!
//! `["reference", id, X]`: a list, dict or set X is created empty and registered before its
//! items are built, so cycles through it resolve directly. A `dereference` to an object that is
//! still being built (only possible for tuples, frozensets and hook-made objects) yields a
//! placeholder whose position is remembered and patched once the object exists — lists, dict
//! values and tuples can be patched; a placeholder used as a dict key or set member cannot
//! (its hash would change) and is refused.

use std::collections::HashMap;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyBytes, PyDate, PyDateTime, PyDelta, PyDict, PyFloat, PyFrozenSet, PyList, PySet, PyString, PyTime,
    PyTuple,
};

use super::{parse_fields, recycle, tag, Tag};
use crate::banana::cursor::{Cursor, Item};
use crate::banana::{Dialect, Integer, Limits};
use crate::py::errors::{insecure_jelly, jelly_error, unpersistable};

pub use crate::banana::show;

/// Marks the spot of a reference to an object that is not built yet.
#[pyclass(module = "pbfast._core", name = "UnresolvedReference", frozen)]
pub struct UnresolvedReference {
    #[pyo3(get)]
    id: i64,
}

#[pymethods]
impl UnresolvedReference {
    fn __repr__(&self) -> String {
        format!("<unresolved jelly reference {}>", self.id)
    }
}

enum Site<'py> {
    ListItem(Bound<'py, PyList>, usize),
    TupleItem(Bound<'py, PyTuple>, usize),
    DictValue(Bound<'py, PyDict>, Bound<'py, PyAny>),
}

enum Slot<'py> {
    /// `["reference", id, ...]` has started and nothing has asked for it yet.
    Building,
    Ready(Bound<'py, PyAny>),
    Pending {
        placeholder: Bound<'py, PyAny>,
        sites: Vec<Site<'py>>,
    },
}

/// A built value. `placeholder`: it stands for reference `id`, to be patched where it is put.
/// `holds_placeholder`: it is a tuple with a placeholder somewhere inside, so it must not be
/// hashed until patched.
struct Built<'py> {
    obj: Bound<'py, PyAny>,
    placeholder: Option<i64>,
    holds_placeholder: bool,
}

impl<'py> Built<'py> {
    fn done(obj: Bound<'py, PyAny>) -> Built<'py> {
        Built { obj, placeholder: None, holds_placeholder: false }
    }

    fn unhashable_yet(&self) -> bool {
        self.placeholder.is_some() || self.holds_placeholder
    }
}

/// Unjelly one expression. `hook(tag, items)` builds values for tags jelly itself does not know
/// (returning `NotImplemented` for tags it does not know either).
///
/// The walk keeps the containers being built on a heap stack (`stack`) instead of recursing, so
/// no nesting depth the limits allow can exhaust the native stack of any thread.
pub struct JellyDecoder<'py, 'a> {
    rd: Reader<'py, 'a>,
    /// The containers being built, innermost last.
    stack: Vec<Frame<'py, 'a>>,
}

/// The cursor, the references and what reading items needs: everything but the stack, so both
/// can be borrowed at once.
struct Reader<'py, 'a> {
    py: Python<'py>,
    cur: Cursor<'a>,
    base: u64,
    refs: HashMap<i64, Slot<'py>>,
    hook: Option<&'a Bound<'py, PyAny>>,
    strings: &'a mut StrCache,
    /// Banana lists entered and not yet left (counted as the framer counts them).
    depth: usize,
    max_depth: usize,
}

/// A container being built: where the walk goes on once the item being read is complete.
enum Frame<'py, 'a> {
    /// `["list", ...]`, `next` items in. A list registered as a reference before its items
    /// grows by appending (no one may see empty slots); any other is made at full size.
    List {
        list: Bound<'py, PyList>,
        len: usize,
        next: usize,
        append: bool,
    },
    /// A tuple made at full size and filled in place, like a list; `holds_placeholder`: an
    /// item is (or holds) a placeholder, so the tuple must not be hashed until patched.
    Tuple {
        tuple: Bound<'py, PyTuple>,
        len: usize,
        next: usize,
        holds_placeholder: bool,
    },
    /// `["dictionary", [key, value], ...]`: `key` is the key of the pair (at `pair_at`) whose
    /// value is being read.
    Dict {
        dict: Bound<'py, PyDict>,
        pairs: usize,
        key: Option<Bound<'py, PyAny>>,
        pair_at: usize,
    },
    /// A set or frozenset, `member_at` where the member being read starts.
    Set {
        set: Bound<'py, PySet>,
        members: usize,
        member_at: usize,
    },
    Frozenset {
        members: Vec<Bound<'py, PyAny>>,
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
    Hooked(Box<Hooked<'py, 'a>>),
}

/// The list at `at` with a tag for the hook, `item_at` where the item being read starts.
struct Hooked<'py, 'a> {
    hook: &'a Bound<'py, PyAny>,
    tag: &'a [u8],
    items: Vec<Bound<'py, PyAny>>,
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

/// What is at the cursor: a finished value (an atom, or a jelly form that holds no values), or
/// a form that holds values, to open.
enum Read<'py, 'a> {
    Value(Built<'py>),
    Open(Open<'a>),
}

/// What the walk does next.
enum Next<'py, 'a> {
    /// Open this form (the innermost container read its header).
    Open(Open<'a>),
    /// Give this finished value to the innermost container (or return it, if none is open).
    Give(Built<'py>),
}

impl<'py, 'a> JellyDecoder<'py, 'a> {
    /// `expr` holds one expression whose first byte is at stream offset `base`.
    pub fn new(
        py: Python<'py>,
        expr: &'a [u8],
        dialect: Dialect,
        limits: Limits,
        base: u64,
        hook: Option<&'a Bound<'py, PyAny>>,
        strings: &'a mut StrCache,
    ) -> JellyDecoder<'py, 'a> {
        let cur = Cursor::new(expr, dialect, limits);
        let refs = HashMap::new();
        let stack = recycle(std::mem::take(&mut strings.frames.0));
        let rd = Reader { py, cur, base, refs, hook, strings, depth: 0, max_depth: limits.max_depth };
        JellyDecoder { rd, stack }
    }

    /// Build the expression. With `whole`, bytes left after it are an error.
    pub fn build(&mut self, whole: bool) -> PyResult<Bound<'py, PyAny>> {
        // Collections triggered while thousands of containers are being created would traverse
        // the half-built value again and again; nothing cyclic becomes garbage during a build.
        let _gc = GcPause::new();
        let pos = 0;
        let built = self.value();
        // Keep a stack of ordinary size for the next walk; one a deeply nested value grew goes.
        let stack = std::mem::take(&mut self.stack);
        if stack.capacity() <= 1 << 10 {
            self.rd.strings.frames.0 = recycle(stack);
        }
        let built = built?;
        let rd = &self.rd;
        if whole && !rd.cur.at_end() {
            return Err(rd.error("bytes after the expression".into(), rd.cur.pos()));
        }
        for (id, slot) in &rd.refs {
            if !matches!(slot, Slot::Ready(_)) {
                return Err(rd.error(format!("dereference to reference id {id}, which is never defined"), pos));
            }
        }
        if built.placeholder.is_some() {
            return Err(rd.error("the value is a reference to itself".into(), pos));
        }
        Ok(built.obj)
    }

    /// Bytes of the expression read so far (after [`JellyDecoder::build`], the value's length).
    pub fn consumed(&self) -> usize {
        self.rd.cur.pos()
    }

    /// The value at the cursor: open containers, fill them, hand each finished one to the
    /// container it is in, until the outermost is finished.
    fn value(&mut self) -> PyResult<Built<'py>> {
        let mut open = match self.rd.item()? {
            Read::Value(built) => return Ok(built),
            Read::Open(open) => open,
        };
        loop {
            let mut child = self.open(open, None)?;
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

    /// Push the container for `open`, to be filled by [`Self::step`]; for a reference, its
    /// value's too. `register` is the reference id this value defines, for containers that can
    /// be registered before their items exist. A reference to a form that holds no values gives
    /// that value, to the reference.
    #[inline(always)]
    fn open(&mut self, mut open: Open<'a>, mut register: Option<i64>) -> PyResult<Option<Built<'py>>> {
        // `["reference", id, X]` opens X in turn, with X's id: a loop, however long the chain.
        loop {
            let rd = &mut self.rd;
            let Open { kind, tag: t, items, at } = open;
            let py = rd.py;
            let frame = match kind {
                Tag::List => match register {
                    Some(id) => {
                        let list = PyList::empty(py);
                        let pos = rd.cur.pos();
                        rd.define(id, list.clone().into_any(), pos)?;
                        Frame::List { list, len: items, next: 0, append: true }
                    }
                    None => {
                        // SAFETY: PyList_New returns a new list with `items` NULL slots, each
                        // filled exactly once by PyList_SET_ITEM (in `step`) before the list is
                        // handed out; on an early error the partly filled list is dropped, and
                        // list deallocation skips NULL slots.
                        let list =
                            unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyList_New(items as ffi::Py_ssize_t))? };
                        Frame::List { list: list.cast_into::<PyList>()?, len: items, next: 0, append: false }
                    }
                },
                Tag::Dictionary => {
                    let dict = PyDict::new(py);
                    if let Some(id) = register {
                        let pos = rd.cur.pos();
                        rd.define(id, dict.clone().into_any(), pos)?;
                    }
                    Frame::Dict { dict, pairs: items, key: None, pair_at: 0 }
                }
                Tag::Set => {
                    let set = PySet::empty(py)?;
                    if let Some(id) = register {
                        let pos = rd.cur.pos();
                        rd.define(id, set.clone().into_any(), pos)?;
                    }
                    Frame::Set { set, members: items, member_at: 0 }
                }
                Tag::Tuple => {
                    // SAFETY: as for the list above, with PyTuple_New and PyTuple_SET_ITEM; tuple
                    // deallocation skips NULL slots too.
                    let tuple =
                        unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyTuple_New(items as ffi::Py_ssize_t))? };
                    Frame::Tuple { tuple: tuple.cast_into::<PyTuple>()?, len: items, next: 0, holds_placeholder: false }
                }
                Tag::Frozenset => Frame::Frozenset { members: Vec::with_capacity(items), len: items, member_at: 0 },
                Tag::Reference => {
                    rd.arity(tag::REFERENCE, items, 2, at)?;
                    let id = rd.ref_id()?;
                    match rd.refs.get(&id) {
                        None | Some(Slot::Pending { .. }) => {}
                        Some(_) => return Err(rd.error(format!("reference id {id} is defined twice"), at)),
                    }
                    rd.refs.entry(id).or_insert(Slot::Building);
                    let value_at = rd.cur.pos();
                    let (n, list_at) = match rd.next()? {
                        (Item::List(n), list_at) => (n, list_at),
                        _ => return Err(rd.error("a reference must wrap a jelly list".into(), value_at)),
                    };
                    rd.enter(list_at)?;
                    let t = rd.tag(n, list_at)?;
                    self.stack.push(Frame::Reference { id, at });
                    open = Open { kind: Tag::classify(t), tag: t, items: n - 1, at: list_at };
                    register = Some(id);
                    continue;
                }
                Tag::Persistent => {
                    rd.arity(t, items, 1, at)?;
                    Frame::Persistent
                }
                Tag::Other => {
                    let Some(hook) = rd.hook else {
                        return Err(insecure_jelly(unregistered(t), Some(rd.base + at as u64)));
                    };
                    let hooked = Hooked { hook, tag: t, items: Vec::with_capacity(items), len: items, at, item_at: 0 };
                    Frame::Hooked(Box::new(hooked))
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
    /// up to one that is a form to open ([`Next::Open`]) or the container's end (it is then
    /// popped and given as finished).
    #[inline(always)]
    fn step(&mut self, mut child: Option<Built<'py>>) -> PyResult<Next<'py, 'a>> {
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
                        list.append(&item.obj)?;
                    } else {
                        // SAFETY: see `open`; `next` < `len`, and each slot is set once.
                        unsafe { ffi::PyList_SET_ITEM(list.as_ptr(), *next as ffi::Py_ssize_t, item.obj.into_ptr()) };
                    }
                    *next += 1;
                }
                if *next == *len {
                    break;
                }
                read!();
            },
            Frame::Tuple { tuple, len, next, holds_placeholder } => loop {
                if let Some(item) = child.take() {
                    *holds_placeholder |= item.unhashable_yet();
                    if let Some(pid) = item.placeholder {
                        rd.add_site(pid, Site::TupleItem(tuple.clone(), *next));
                    }
                    // SAFETY: see `open`; `next` < `len`, and each slot is set once.
                    unsafe { ffi::PyTuple_SET_ITEM(tuple.as_ptr(), *next as ffi::Py_ssize_t, item.obj.into_ptr()) };
                    *next += 1;
                }
                if *next == *len {
                    break;
                }
                read!();
            },
            Frame::Dict { dict, pairs, key, pair_at } => loop {
                if let Some(built) = child.take() {
                    match key.take() {
                        None if built.unhashable_yet() => {
                            let msg = "a dictionary key refers to an object that is not built yet";
                            return Err(rd.error(msg.into(), *pair_at));
                        }
                        None => *key = Some(built.obj),
                        Some(k) => {
                            let set = dict.set_item(&k, &built.obj);
                            set.map_err(|e| rd.error(format!("bad dictionary key: {e}"), *pair_at))?;
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
                    // Keys repeat from one dict to the next, so str keys come from the cache:
                    // one object, hashed once, instead of a new string per dict.
                    let key_at = rd.cur.pos();
                    match rd.cur.unicode() {
                        Some(s) => match rd.strings.get(rd.py, s) {
                            Ok(s) => *key = Some(s.into_any()),
                            Err(e) => return Err(rd.error(format!("unicode is not valid UTF-8 ({e})"), key_at)),
                        },
                        None => {
                            read!();
                            continue;
                        }
                    }
                }
                read!();
            },
            Frame::Set { set, members, member_at } => loop {
                if let Some(item) = child.take() {
                    set.add(rd.member(item, *member_at)?)?;
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
                    members.push(rd.member(item, *member_at)?);
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
                    if item.placeholder.is_some() {
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
    fn finish(&mut self, frame: Frame<'py, 'a>, child: Option<Built<'py>>) -> PyResult<Built<'py>> {
        let rd = &mut self.rd;
        let py = rd.py;
        Ok(match frame {
            Frame::List { list, .. } => Built::done(list.into_any()),
            Frame::Dict { dict, .. } => Built::done(dict.into_any()),
            Frame::Set { set, .. } => Built::done(set.into_any()),
            Frame::Tuple { tuple, holds_placeholder, .. } => {
                Built { obj: tuple.into_any(), placeholder: None, holds_placeholder }
            }
            Frame::Frozenset { members, .. } => Built::done(PyFrozenSet::new(py, &members)?.into_any()),
            Frame::Reference { id, at } => {
                let Some(built) = child else { unreachable!("a reference is finished by its value") };
                if built.placeholder == Some(id) {
                    return Err(rd.error(format!("reference {id} refers only to itself"), at));
                }
                if !matches!(rd.refs.get(&id), Some(Slot::Ready(_))) {
                    rd.define(id, built.obj.clone(), at)?;
                }
                built
            }
            Frame::Persistent => Built::done(unpersistable(py, "persistent reference, and no persistent loader here")?),
            Frame::Hooked(h) => {
                let Hooked { hook, tag, items, at, .. } = *h;
                let items = PyList::new(py, items)?;
                let obj = hook.call1((PyBytes::new(py, tag), items))?;
                // NotImplemented: the hook does not know the tag either.
                if obj.is(py.NotImplemented()) {
                    return Err(insecure_jelly(unregistered(tag), Some(rd.base + at as u64)));
                }
                Built::done(obj)
            }
        })
    }
}

impl<'py, 'a> Reader<'py, 'a> {
    /// What is at the cursor. A list is entered and its tag read.
    #[inline(always)]
    fn item(&mut self) -> PyResult<Read<'py, 'a>> {
        // The most common jelly form by far is a str: ["unicode", STRING].
        let at = self.cur.pos();
        if let Some(s) = self.cur.unicode() {
            return match decode_utf8(self.py, s) {
                Ok(s) => Ok(Read::Value(Built::done(s.into_any()))),
                Err(e) => Err(self.error(format!("unicode is not valid UTF-8 ({e})"), at)),
            };
        }
        let (item, at) = self.next()?;
        let py = self.py;
        let obj = match item {
            Item::Int(v) => v.into_pyobject(py)?.into_any(),
            Item::Float(f) => PyFloat::new(py, f).into_any(),
            Item::Bytes(s) => PyBytes::new(py, s).into_any(),
            Item::List(n) => {
                self.enter(at)?;
                let t = self.tag(n, at)?;
                let open = Open { kind: Tag::classify(t), tag: t, items: n - 1, at };
                if open.kind.holds_values() {
                    return Ok(Read::Open(open));
                }
                let built = self.leaf(open.kind, t, open.items, at)?;
                self.depth -= 1;
                return Ok(Read::Value(built));
            }
            big @ Item::BigInt { .. } => match big.integer() {
                Some(Integer::Big(v)) => v.into_pyobject(py)?.into_any(),
                Some(Integer::Small(v)) => v.into_pyobject(py)?.into_any(),
                None => return Err(self.error("bad integer".into(), at)),
            },
        };
        Ok(Read::Value(Built::done(obj)))
    }

    /// The forms that hold no other jelly values, after their tag (`t`, of the list at `at`
    /// with `items` more elements).
    fn leaf(&mut self, kind: Tag, t: &[u8], items: usize, at: usize) -> PyResult<Built<'py>> {
        let py = self.py;
        let obj = match kind {
            Tag::Unicode => {
                self.arity(t, items, 1, at)?;
                let s = self.atom(t)?;
                match decode_utf8(py, s) {
                    Ok(s) => s.into_any(),
                    Err(e) => return Err(self.error(format!("unicode is not valid UTF-8 ({e})"), at)),
                }
            }
            Tag::None => {
                self.arity(t, items, 0, at)?;
                py.None().into_bound(py)
            }
            Tag::Boolean => {
                self.arity(t, items, 1, at)?;
                match self.atom(t)? {
                    tag::TRUE => PyBool::new(py, true).to_owned().into_any(),
                    tag::FALSE => PyBool::new(py, false).to_owned().into_any(),
                    other => return Err(self.error(format!("boolean must be true or false, not {}", show(other)), at)),
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
                self.date_like(t, text).map_err(|e| self.error(e, at))?
            }
            Tag::Decimal => {
                self.arity(t, items, 2, at)?;
                let value = self.int("decimal value")?;
                let exponent = self.int("decimal exponent")?;
                self.decimal(value, exponent).map_err(|e| self.error(e, at))?
            }
            Tag::Unpersistable => {
                self.arity(t, items, 1, at)?;
                let reason = self.atom(t)?;
                unpersistable(py, &String::from_utf8_lossy(reason))?
            }
            Tag::Refused => {
                let msg = format!("jelly type {} is not allowed (it names code to import)", show(t));
                return Err(insecure_jelly(msg, Some(self.base + at as u64)));
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

    fn dereference(&mut self, id: i64) -> PyResult<Built<'py>> {
        match self.refs.get(&id) {
            Some(Slot::Ready(obj)) => return Ok(Built::done(obj.clone())),
            Some(Slot::Pending { placeholder, .. }) => {
                return Ok(Built { obj: placeholder.clone(), placeholder: Some(id), holds_placeholder: false });
            }
            _ => {}
        }
        let placeholder = Bound::new(self.py, UnresolvedReference { id })?.into_any();
        self.refs.insert(id, Slot::Pending { placeholder: placeholder.clone(), sites: Vec::new() });
        Ok(Built { obj: placeholder, placeholder: Some(id), holds_placeholder: false })
    }

    /// `id` now names `obj` (defined by the list at `at`): patch every place a placeholder for it
    /// went.
    fn define(&mut self, id: i64, obj: Bound<'py, PyAny>, at: usize) -> PyResult<()> {
        if let Some(Slot::Pending { sites, .. }) = self.refs.insert(id, Slot::Ready(obj.clone())) {
            let contains_itself = |site: &Site<'py>| matches!(site, Site::TupleItem(t, _) if t.is(&obj));
            if sites.iter().any(contains_itself) {
                // Only bytes can say this: no Python value is a tuple that holds itself.
                return Err(self.error(format!("reference {id} is a tuple that contains itself"), at));
            }
            for site in sites {
                match site {
                    Site::ListItem(list, i) => list.set_item(i, &obj)?,
                    Site::DictValue(dict, key) => dict.set_item(key, &obj)?,
                    Site::TupleItem(tuple, i) => {
                        // SAFETY: the tuple was made by this decoder and holds a placeholder at
                        // `i`; it has not been hashed (pending tuples are refused as keys and
                        // set members). PyTuple_SET_ITEM steals the new reference; the old item
                        // reference is released after the slot no longer points to it.
                        unsafe {
                            let slot = (*tuple.as_ptr().cast::<ffi::PyTupleObject>()).ob_item.as_mut_ptr().add(i);
                            let old = *slot;
                            *slot = obj.clone().into_ptr();
                            ffi::Py_DECREF(old);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Remember that a placeholder for reference `id` went to `site`.
    fn add_site(&mut self, id: i64, site: Site<'py>) {
        if let Some(Slot::Pending { sites, .. }) = self.refs.get_mut(&id) {
            sites.push(site);
        }
    }

    #[inline(always)]
    fn next(&mut self) -> PyResult<(Item<'a>, usize)> {
        let at = self.cur.pos();
        match self.cur.next_item() {
            Some(item) => Ok((item, at)),
            // Not valid banana: a caller without a framer asks the validator for the details.
            None => Err(self.error("malformed banana".into(), at)),
        }
    }

    /// One more level of list nesting (counted like the framer counts it).
    #[inline]
    fn enter(&mut self, at: usize) -> PyResult<()> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(self.error(format!("lists nested deeper than max_depth={}", self.max_depth), at));
        }
        Ok(())
    }

    fn error(&self, msg: String, at: usize) -> PyErr {
        jelly_error(msg, Some(self.base + at as u64))
    }

    /// The type tag of a jelly list.
    fn tag(&mut self, n: usize, at: usize) -> PyResult<&'a [u8]> {
        if n == 0 {
            return Err(self.error("empty list is not jelly (a type tag must come first)".into(), at));
        }
        match self.next()? {
            (Item::Bytes(s), _) => Ok(s),
            (_, at) => Err(self.error("jelly list does not start with a byte-string type tag".into(), at)),
        }
    }

    fn atom(&mut self, what: &[u8]) -> PyResult<&'a [u8]> {
        match self.next()? {
            (Item::Bytes(s), _) => Ok(s),
            (_, at) => Err(self.error(format!("{} expects a byte string", show(what)), at)),
        }
    }

    fn int(&mut self, what: &str) -> PyResult<Integer> {
        match self.next()? {
            (item @ (Item::Int(_) | Item::BigInt { .. }), at) => {
                item.integer().ok_or_else(|| self.error(format!("bad {what}"), at))
            }
            (_, at) => Err(self.error(format!("{what} must be an integer"), at)),
        }
    }

    fn ref_id(&mut self) -> PyResult<i64> {
        match self.int("reference id")? {
            Integer::Small(id) => Ok(id),
            Integer::Big(_) => Err(self.error("reference id out of range".into(), self.cur.pos())),
        }
    }

    fn arity(&self, t: &[u8], got: usize, want: usize, at: usize) -> PyResult<()> {
        if got != want {
            return Err(self.error(format!("{} takes {want} item(s), got {got}", show(t)), at));
        }
        Ok(())
    }

    /// A set or frozenset member read at `at`: hashable, and built.
    fn member(&self, item: Built<'py>, at: usize) -> PyResult<Bound<'py, PyAny>> {
        if item.unhashable_yet() {
            return Err(self.error("a set member refers to an object that is not built yet".into(), at));
        }
        // Check hashability here so the error names the offset.
        item.obj.hash().map_err(|e| self.error(format!("bad set member: {e}"), at))?;
        Ok(item.obj)
    }

    fn date_like(&self, t: &[u8], text: &[u8]) -> Result<Bound<'py, PyAny>, String> {
        let py = self.py;
        let bad = |e: PyErr| format!("bad {}: {e}", show(t));
        let narrow = |v: i64| u8::try_from(v).map_err(|_| format!("bad {}: field {v} out of range", show(t)));
        Ok(match t {
            tag::DATETIME => {
                let f = parse_fields(text, 3, 7)?;
                let g = |i: usize| f.get(i).copied().unwrap_or(0);
                let year = i32::try_from(g(0)).map_err(|_| "year out of range".to_owned())?;
                let us = u32::try_from(g(6)).map_err(|_| "microsecond out of range".to_owned())?;
                PyDateTime::new(
                    py,
                    year,
                    narrow(g(1))?,
                    narrow(g(2))?,
                    narrow(g(3))?,
                    narrow(g(4))?,
                    narrow(g(5))?,
                    us,
                    None,
                )
                .map_err(bad)?
                .into_any()
            }
            tag::DATE => {
                let f = parse_fields(text, 3, 3)?;
                let year = i32::try_from(f[0]).map_err(|_| "year out of range".to_owned())?;
                PyDate::new(py, year, narrow(f[1])?, narrow(f[2])?).map_err(bad)?.into_any()
            }
            tag::TIME => {
                let f = parse_fields(text, 0, 4)?;
                let g = |i: usize| f.get(i).copied().unwrap_or(0);
                let us = u32::try_from(g(3)).map_err(|_| "microsecond out of range".to_owned())?;
                PyTime::new(py, narrow(g(0))?, narrow(g(1))?, narrow(g(2))?, us, None).map_err(bad)?.into_any()
            }
            _ => {
                let f = parse_fields(text, 3, 3)?;
                let fit = |v: i64| i32::try_from(v).map_err(|_| format!("timedelta field {v} out of range"));
                PyDelta::new(py, fit(f[0])?, fit(f[1])?, fit(f[2])?, true).map_err(bad)?.into_any()
            }
        })
    }

    fn decimal(&self, value: Integer, exponent: Integer) -> Result<Bound<'py, PyAny>, String> {
        let py = self.py;
        let Integer::Small(exponent) = exponent else {
            return Err("decimal exponent out of range".into());
        };
        let value = value.to_big();
        let sign = u8::from(value.sign() == num_bigint::Sign::Minus);
        let digits: Vec<u8> = value.magnitude().to_str_radix(10).bytes().map(|d| d - b'0').collect();
        let decimal = super::encode::decimal_type(py).map_err(|e| e.to_string())?;
        let digits = PyTuple::new(py, digits).map_err(|e| e.to_string())?;
        decimal.call1(((sign, digits, exponent),)).map_err(|e| format!("bad decimal: {e}"))
    }
}

/// Recently decoded short dict keys, so a key that repeats is one object, created and hashed once
/// (a decoder keeps its cache across messages); and the allocation of the last walk's stack, so
/// that the next message costs none.
pub struct StrCache {
    slots: Vec<Option<CachedStr>>,
    frames: SpareFrames,
}

/// An empty stack of frames (see [`recycle`]).
#[derive(Default)]
struct SpareFrames(Vec<Frame<'static, 'static>>);

// SAFETY: the vec is always empty (it is recycled empty on the way in), so it holds no Python
// references and may go to and be shared with other threads like any empty allocation.
unsafe impl Send for SpareFrames {}
unsafe impl Sync for SpareFrames {}

/// A cached string, keyed by its length and [`key_of`] its bytes.
struct CachedStr {
    len: usize,
    key: [u64; 3],
    string: Py<PyString>,
}

impl Default for StrCache {
    fn default() -> Self {
        StrCache::new()
    }
}

impl StrCache {
    const MAX_LEN: usize = 24;
    const SLOTS: usize = 512;

    pub fn new() -> StrCache {
        StrCache { slots: Vec::new(), frames: SpareFrames::default() }
    }

    /// The `str` for UTF-8 `bytes`; a `UnicodeDecodeError` if they are not UTF-8.
    #[inline]
    pub fn get<'py>(&mut self, py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
        let len = bytes.len();
        if len > Self::MAX_LEN {
            return decode_utf8(py, bytes);
        }
        if self.slots.is_empty() {
            self.slots.resize_with(Self::SLOTS, || None);
        }
        let key = key_of(bytes);
        let h =
            (key[0] ^ key[1].rotate_left(21) ^ key[2].rotate_left(42) ^ len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let slot = &mut self.slots[(h >> (64 - Self::SLOTS.trailing_zeros())) as usize];
        if let Some(c) = slot {
            if c.len == len && c.key == key {
                return Ok(c.string.bind(py).clone());
            }
        }
        let string = decode_utf8(py, bytes)?;
        *slot = Some(CachedStr { len, key, string: string.clone().unbind() });
        Ok(string)
    }
}

/// Up to 24 bytes as three words, by overlapping loads: for a given length every byte lands in
/// some word, so equal (length, key) means equal bytes.
#[inline(always)]
fn key_of(b: &[u8]) -> [u64; 3] {
    let n = b.len();
    let w8 = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let w4 = |i: usize| u64::from(u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes")));
    match n {
        0 => [0, 0, 0],
        1..=3 => [u64::from(b[0]) | u64::from(b[n / 2]) << 8 | u64::from(b[n - 1]) << 16, 0, 0],
        4..=8 => [w4(0) | w4(n - 4) << 32, 0, 0],
        9..=16 => [w8(0), w8(n - 8), 0],
        _ => [w8(0), w8(8), w8(n - 8)],
    }
}

/// One pass: Python validates and decodes.
pub(crate) fn decode_utf8<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
    // SAFETY: the pointer and length describe `bytes`; PyUnicode_DecodeUTF8 copies them and
    // returns a new reference or NULL with an exception set.
    unsafe {
        let ptr = ffi::PyUnicode_DecodeUTF8(bytes.as_ptr().cast(), bytes.len() as ffi::Py_ssize_t, c"strict".as_ptr());
        Ok(Bound::from_owned_ptr_or_err(py, ptr)?.cast_into_unchecked())
    }
}

/// Pauses the cyclic garbage collector for its lifetime, if it was running.
pub(crate) struct GcPause(bool);

impl GcPause {
    pub(crate) fn new() -> GcPause {
        // SAFETY: called with the GIL held (we are building Python objects).
        GcPause(unsafe { ffi::PyGC_Disable() } != 0)
    }
}

impl Drop for GcPause {
    fn drop(&mut self) {
        if self.0 {
            // SAFETY: as above; restores the state found in `new`.
            unsafe { ffi::PyGC_Enable() };
        }
    }
}

/// The message for a type tag nothing is registered for.
pub fn unregistered(t: &[u8]) -> String {
    let text = String::from_utf8_lossy(t);
    match text.rsplit_once('.') {
        Some((module, _)) => format!("no class is registered for type {} (module {module} is not allowed)", show(t)),
        None => format!("jelly type {} is not allowed", show(t)),
    }
}
