//! Python objects -> jelly -> banana bytes, in one walk.
//!
//! Shared and cyclic containers: the first sighting of a tracked object records where its bytes
//! start; a later sighting gives it the next reference id and writes `["dereference", id]`. At the
//! end the first sightings that were referenced again are wrapped in `["reference", id, ...]` by
//! one splice over the buffer — the byte-level equivalent of Twisted rewriting its first
//! s-expression in place, so ids come out in the same (second-sighting) order.

use std::collections::hash_map::Entry;

use num_bigint::BigInt;
use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyBytes, PyDate, PyDateTime, PyDelta, PyDict, PyFloat, PyFrozenSet, PyIterator, PyList, PySet, PyString,
    PyTime, PyTuple, PyType,
};
use pyo3::types::{PyDateAccess, PyDeltaAccess, PyTimeAccess, PyTzInfoAccess};

use super::{format_fields, recycle, tag};
use crate::banana::{tb, Dialect, Encoder, Integer, Limits};
use crate::py::errors::{jelly_error, PyBananaError};
use crate::py::{int_value, PtrMap};

/// Twisted's `qual()`: `__module__` and `__name__` of a class (not `__qualname__`: a nested
/// class is named as if it were at module level, and the wire must say what Twisted says).
pub fn qualified_name(cls: &Bound<'_, PyType>) -> PyResult<String> {
    Ok(format!("{}.{}", cls.module()?, cls.name()?))
}

struct Seen {
    start: usize,
    ref_id: u32,
}

/// One jelly call: one id space for shared references.
pub struct JellyEncoder<'py> {
    py: Python<'py>,
    out: Out,
    seen: PtrMap<Seen>,
    /// (byte offset of a first sighting, reference id) to wrap at the end.
    wraps: Vec<(usize, u32)>,
    next_ref: u32,
    /// Objects the hook made up; kept alive so their addresses stay unique while tracked.
    keep: Vec<Bound<'py, PyAny>>,
    hook: Option<Bound<'py, PyAny>>,
    /// The containers being written, innermost last: the walk keeps its place here rather than
    /// on the native stack, so no nesting depth can exhaust that.
    stack: Vec<Walk<'py>>,
}

/// The bytes and the list nesting they are at (apart from the stack, so both can be borrowed).
struct Out {
    enc: Encoder,
    depth: usize,
    max_depth: usize,
}

/// An item to write, and whether something else may hold it (see [`maybe_shared`]).
type Item<'py> = (Bound<'py, PyAny>, bool);

/// A container being written: where the walk goes on once the item being written is done.
enum Walk<'py> {
    /// A list of `len` items, `next` of them written. A hook may change the list under us, so
    /// its size is checked at each step.
    List {
        list: Bound<'py, PyList>,
        len: usize,
        next: usize,
    },
    Tuple {
        tuple: Bound<'py, PyTuple>,
        next: usize,
    },
    /// A dict of `len` items walked by `PyDict_Next` position. `value` is the value of the pair
    /// whose key is being written; `in_pair`: that pair's list is open.
    Dict {
        dict: Bound<'py, PyDict>,
        len: usize,
        pos: ffi::Py_ssize_t,
        written: usize,
        value: Option<Bound<'py, PyAny>>,
        in_pair: bool,
    },
    /// A set or frozenset of `len` members.
    Set {
        members: Bound<'py, PyIterator>,
        len: usize,
        written: usize,
    },
    /// The items a hook gave for an object.
    Items {
        items: Bound<'py, PyTuple>,
        next: usize,
    },
}

impl<'py> JellyEncoder<'py> {
    pub fn new(py: Python<'py>, dialect: Dialect, hook: Option<Bound<'py, PyAny>>) -> JellyEncoder<'py> {
        let (out, seen, stack) = Scratch::take();
        JellyEncoder {
            py,
            out: Out { enc: Encoder { out, dialect }, depth: 0, max_depth: Limits::twisted().max_depth },
            seen,
            wraps: Vec::new(),
            next_ref: 1,
            keep: Vec::new(),
            hook,
            stack: recycle(stack),
        }
    }

    /// Jelly one value. Each call is its own id space, as each of Twisted's `jelly()` calls is.
    pub fn jelly(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        let start = self.out.enc.out.len();
        self.value(obj)?;
        if !self.wraps.is_empty() {
            self.splice_references(start);
        }
        self.seen.clear();
        self.keep.clear();
        self.next_ref = 1;
        Ok(())
    }

    /// The underlying banana encoder, for envelope items written around jelly values.
    pub fn raw(&mut self) -> &mut Encoder {
        &mut self.out.enc
    }

    /// The encoded bytes, handed to `f`; the buffers go back to this thread's scratch.
    pub fn finish<R>(mut self, f: impl FnOnce(&[u8]) -> R) -> R {
        let result = f(&self.out.enc.out);
        let stack = recycle(std::mem::take(&mut self.stack));
        Scratch::give_back(std::mem::take(&mut self.out.enc.out), std::mem::take(&mut self.seen), stack);
        result
    }

    /// Jelly `obj`: write it, then the items of each container it opens, innermost first.
    fn value(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        let written = self.walk(obj);
        self.stack.clear();
        written
    }

    fn walk(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        let mut next = if self.out.scalar(obj)? { None } else { self.write(obj.clone(), true)? };
        loop {
            while let Some((item, maybe_shared)) = next {
                next = self.write(item, maybe_shared)?;
            }
            match self.step()? {
                Some(item) => next = Some(item),
                None => return Ok(()),
            }
        }
    }

    /// Write `obj`, which is not a scalar (see [`Out::scalar`]), or open it if it is a container:
    /// as [`Self::open_walk`], an item of it may come back, to be written next (the rest are
    /// written by [`Self::step`]). `maybe_shared` false promises that nothing else in this walk
    /// can reach it.
    #[inline(always)]
    fn write(&mut self, obj: Bound<'py, PyAny>, maybe_shared: bool) -> PyResult<Option<Item<'py>>> {
        if obj.is_exact_instance_of::<PyList>() {
            // SAFETY: the type was just checked.
            return self.list(unsafe { obj.cast_into_unchecked() }, maybe_shared);
        }
        if obj.is_exact_instance_of::<PyDict>() {
            // SAFETY: the type was just checked.
            return self.dict(unsafe { obj.cast_into_unchecked() }, maybe_shared);
        }
        if obj.is_exact_instance_of::<PyTuple>() {
            // SAFETY: the type was just checked.
            return self.tuple(unsafe { obj.cast_into_unchecked() }, maybe_shared);
        }
        self.write_other(obj, maybe_shared).map(|()| None)
    }

    /// [`Self::write`] for the less common types.
    #[inline(never)]
    fn write_other(&mut self, obj: Bound<'py, PyAny>, maybe_shared: bool) -> PyResult<()> {
        if obj.is_exact_instance_of::<PySet>() || obj.is_exact_instance_of::<PyFrozenSet>() {
            return self.set(obj, maybe_shared);
        }
        if let Ok(dt) = obj.cast_exact::<PyDateTime>() {
            refuse_tz(dt.get_tzinfo().is_some(), "datetime")?;
            let fields = [
                i64::from(dt.get_year()),
                i64::from(dt.get_month()),
                i64::from(dt.get_day()),
                i64::from(dt.get_hour()),
                i64::from(dt.get_minute()),
                i64::from(dt.get_second()),
                i64::from(dt.get_microsecond()),
            ];
            return self.out.tagged(&[tag::DATETIME, format_fields(&fields).as_bytes()]);
        }
        if let Ok(d) = obj.cast_exact::<PyDate>() {
            let fields = [i64::from(d.get_year()), i64::from(d.get_month()), i64::from(d.get_day())];
            return self.out.tagged(&[tag::DATE, format_fields(&fields).as_bytes()]);
        }
        if let Ok(t) = obj.cast_exact::<PyTime>() {
            refuse_tz(t.get_tzinfo().is_some(), "time")?;
            let fields = [
                i64::from(t.get_hour()),
                i64::from(t.get_minute()),
                i64::from(t.get_second()),
                i64::from(t.get_microsecond()),
            ];
            return self.out.tagged(&[tag::TIME, format_fields(&fields).as_bytes()]);
        }
        if let Ok(td) = obj.cast_exact::<PyDelta>() {
            let fields = [i64::from(td.get_days()), i64::from(td.get_seconds()), i64::from(td.get_microseconds())];
            return self.out.tagged(&[tag::TIMEDELTA, format_fields(&fields).as_bytes()]);
        }
        if obj.get_type().is(decimal_type(self.py)?) {
            return self.decimal(&obj);
        }
        if let Ok(cls) = obj.cast::<PyType>() {
            let name = qualified_name(cls)?;
            return self.out.tagged(&[tag::CLASS, name.as_bytes()]);
        }
        self.instance(&obj)
    }

    /// A tracked object seen before: write its dereference and return true. Otherwise remember
    /// it, unless it cannot be met again.
    #[inline]
    fn seen_again(&mut self, obj: &Bound<'py, PyAny>, maybe_shared: bool) -> PyResult<bool> {
        if !maybe_shared {
            return Ok(false);
        }
        self.track(obj)
    }

    fn track(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<bool> {
        let start = self.out.enc.out.len();
        match self.seen.entry(obj.as_ptr() as usize) {
            Entry::Vacant(v) => {
                v.insert(Seen { start, ref_id: 0 });
                Ok(false)
            }
            Entry::Occupied(mut o) => {
                let seen = o.get_mut();
                if seen.ref_id == 0 {
                    seen.ref_id = self.next_ref;
                    self.next_ref += 1;
                    self.wraps.push((seen.start, seen.ref_id));
                }
                let id = seen.ref_id;
                self.out.open(2)?;
                self.out.enc.bytes(tag::DEREFERENCE).map_err(PyBananaError::from)?;
                self.out.enc.int(i64::from(id));
                self.out.close();
                Ok(true)
            }
        }
    }

    #[inline(always)]
    fn list(&mut self, list: Bound<'py, PyList>, maybe_shared: bool) -> PyResult<Option<Item<'py>>> {
        if self.seen_again(list.as_any(), maybe_shared)? {
            return Ok(None);
        }
        let len = list.len();
        self.out.open(len + 1)?;
        self.out.enc.bytes(tag::LIST).map_err(PyBananaError::from)?;
        self.open_walk(Walk::List { list, len, next: 0 })
    }

    #[inline(always)]
    fn tuple(&mut self, tuple: Bound<'py, PyTuple>, maybe_shared: bool) -> PyResult<Option<Item<'py>>> {
        if self.seen_again(tuple.as_any(), maybe_shared)? {
            return Ok(None);
        }
        self.out.open(tuple.len() + 1)?;
        self.out.enc.bytes(tag::TUPLE).map_err(PyBananaError::from)?;
        self.open_walk(Walk::Tuple { tuple, next: 0 })
    }

    #[inline(always)]
    fn dict(&mut self, dict: Bound<'py, PyDict>, maybe_shared: bool) -> PyResult<Option<Item<'py>>> {
        if self.seen_again(dict.as_any(), maybe_shared)? {
            return Ok(None);
        }
        let len = dict.len();
        self.out.open(len + 1)?;
        self.out.enc.bytes(tag::DICTIONARY).map_err(PyBananaError::from)?;
        self.open_walk(Walk::Dict { dict, len, pos: 0, written: 0, value: None, in_pair: false })
    }

    fn set(&mut self, obj: Bound<'py, PyAny>, maybe_shared: bool) -> PyResult<()> {
        if self.seen_again(&obj, maybe_shared)? {
            return Ok(());
        }
        let len = obj.len()?;
        let atom = if obj.is_exact_instance_of::<PySet>() { tag::SET } else { tag::FROZENSET };
        self.out.open(len + 1)?;
        self.out.enc.bytes(atom).map_err(PyBananaError::from)?;
        self.stack.push(Walk::Set { members: obj.try_iter()?, len, written: 0 });
        Ok(())
    }

    /// Write the items of the open containers, innermost first (closing each as it completes),
    /// up to the first that is not a scalar: returned, for [`Self::write`]; None once every
    /// container is complete.
    #[inline(always)]
    fn step(&mut self) -> PyResult<Option<Item<'py>>> {
        while let Some(top) = self.stack.last_mut() {
            if let Some(item) = self.out.items(top)? {
                return Ok(Some(item));
            }
            self.stack.pop();
            self.out.close();
        }
        Ok(None)
    }

    /// Open `walk`, a container whose header was just written: write its items as far as they
    /// are scalars; if one is not, the container goes on the stack and that item is returned.
    #[inline(always)]
    fn open_walk(&mut self, mut walk: Walk<'py>) -> PyResult<Option<Item<'py>>> {
        let item = self.out.items(&mut walk)?;
        match item {
            Some(_) => self.stack.push(walk),
            None => self.out.close(),
        }
        Ok(item)
    }

    fn decimal(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        let (sign, digits, exponent): (u8, Vec<u8>, Bound<'py, PyAny>) = obj.call_method0("as_tuple")?.extract()?;
        let Ok(exponent) = exponent.extract::<i64>() else {
            return Err(jelly_error(format!("cannot jelly the non-finite Decimal {}", obj.str()?), None));
        };
        let mut coefficient = BigInt::from(0);
        for d in digits {
            coefficient = coefficient * 10 + d;
        }
        if sign == 1 {
            coefficient = -coefficient;
        }
        self.out.open(3)?;
        self.out.enc.bytes(tag::DECIMAL).map_err(PyBananaError::from)?;
        self.out.enc.big_int(&coefficient).map_err(PyBananaError::from)?;
        self.out.enc.int(exponent);
        self.out.close();
        Ok(())
    }

    /// Anything that is not a builtin jelly type: ask the hook, else Twisted's defaults.
    fn instance(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        if let Some(hook) = self.hook.clone() {
            if self.seen.contains_key(&(obj.as_ptr() as usize)) {
                self.track(obj)?;
                return Ok(());
            }
            let result = hook.call1((obj,))?;
            if !result.is_none() {
                let (items, track): (Bound<'py, PyAny>, bool) = result.extract().map_err(|_| {
                    pyo3::exceptions::PyTypeError::new_err("a jelly hook must return None or (items, track)")
                })?;
                if track {
                    self.track(obj)?;
                    self.keep.push(obj.clone());
                }
                let items = items.cast_into::<PyTuple>().or_else(|e| {
                    let any = e.into_inner();
                    any.cast::<PyList>().map(|l| l.to_tuple()).map_err(|_| {
                        pyo3::exceptions::PyTypeError::new_err("a jelly hook's items must be a tuple or list")
                    })
                })?;
                self.keep.push(items.clone().into_any());
                self.out.open(items.len())?;
                self.stack.push(Walk::Items { items, next: 0 });
                return Ok(());
            }
        }
        self.default_instance(obj)
    }

    /// Twisted's behaviour for objects without a jelly form of their own: functions, methods and
    /// modules cannot be sent; anything else goes as `unpersistable` (tracked like a container).
    fn default_instance(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        let kinds = code_types(self.py)?;
        for (kind, what) in kinds.iter().zip(["function", "bound method", "module"]) {
            if obj.is_instance(kind)? {
                return Err(jelly_error(format!("cannot send a {what} ({})", obj.repr()?), None));
            }
        }
        if self.track(obj)? {
            return Ok(());
        }
        let reason = format!("instance of class {} deemed insecure", qualified_name(&obj.get_type())?);
        self.out.tagged(&[tag::UNPERSISTABLE, reason.as_bytes()])
    }

    /// Wrap each first sighting that was referenced again in `["reference", id, ...]`.
    fn splice_references(&mut self, from: usize) {
        let mut wraps = std::mem::take(&mut self.wraps);
        wraps.sort_unstable();
        let old = std::mem::take(&mut self.out.enc.out);
        let mut out = Encoder::with_capacity(self.out.enc.dialect, old.len() + wraps.len() * 20);
        out.out.extend_from_slice(&old[..from]);
        let mut copied = from;
        for (offset, id) in wraps {
            out.out.extend_from_slice(&old[copied..offset]);
            out.header(3);
            out.out.push(tb::LIST);
            out.bytes(tag::REFERENCE).expect("short word");
            out.int(i64::from(id));
            copied = offset;
        }
        out.out.extend_from_slice(&old[copied..]);
        self.out.enc.out = out.out;
    }
}

impl Out {
    /// Write `obj` if it is an exact str, int, float or bytes, None or a bool (the common items,
    /// written without leaving the container they are in); false if it is not one of those.
    #[inline(always)]
    fn scalar(&mut self, obj: &Bound<'_, PyAny>) -> PyResult<bool> {
        let ty = obj.get_type_ptr();
        // SAFETY: only the addresses of CPython's static type objects are taken; each cast
        // below follows the check of its exact type.
        unsafe {
            if ty == &raw mut ffi::PyUnicode_Type {
                if self.depth >= self.max_depth {
                    return Err(self.too_deep());
                }
                // ["unicode", utf8]: "unicode" is no vocabulary word, so the prefix is fixed.
                self.enc.out.extend_from_slice(b"\x02\x80\x07\x82unicode");
                return match utf8_of(obj.cast_unchecked::<PyString>()) {
                    Some(text) => self.enc.bytes(text).map(|()| true).map_err(|e| PyBananaError::from(e).into()),
                    None => {
                        Err(jelly_error("cannot send a str that is not valid Unicode (a lone surrogate)".into(), None))
                    }
                };
            }
            if ty == &raw mut ffi::PyLong_Type {
                match int_value(obj)? {
                    Integer::Small(v) => self.enc.int(v),
                    Integer::Big(big) => self.enc.big_int(&big).map_err(PyBananaError::from)?,
                }
            } else if ty == &raw mut ffi::PyFloat_Type {
                self.enc.float(obj.cast_unchecked::<PyFloat>().value());
            } else if ty == &raw mut ffi::PyBytes_Type {
                self.enc.bytes(obj.cast_unchecked::<PyBytes>().as_bytes()).map_err(PyBananaError::from)?;
            } else if obj.is_none() {
                self.tagged(&[tag::NONE])?;
            } else if ty == &raw mut ffi::PyBool_Type {
                let atom = if obj.cast_unchecked::<PyBool>().is_true() { tag::TRUE } else { tag::FALSE };
                self.tagged(&[tag::BOOLEAN, atom])?;
            } else {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// `[atom, atom, ...]` of byte strings.
    fn tagged(&mut self, atoms: &[&[u8]]) -> PyResult<()> {
        self.open(atoms.len())?;
        for atom in atoms {
            self.enc.bytes(atom).map_err(PyBananaError::from)?;
        }
        self.close();
        Ok(())
    }

    /// Write the items of `walk` as far as they are scalars; return the first that is not one,
    /// with whether something else may hold it (see [`maybe_shared`]), or None once all are
    /// written.
    #[inline(always)]
    fn items<'py>(&mut self, walk: &mut Walk<'py>) -> PyResult<Option<Item<'py>>> {
        match walk {
            Walk::List { list, len, next } => loop {
                // Hook code may run while an item is written and shrink the list under us: check
                // the size each time, and hold each item by an owned reference while it is
                // serialized.
                if list.len() != *len {
                    return Err(changed_size("list"));
                }
                if *next == *len {
                    break;
                }
                // SAFETY: `next < len == len(list)` was just checked, with the GIL held.
                let item = unsafe { list.get_item_unchecked(*next) };
                *next += 1;
                if !self.scalar(&item)? {
                    return Ok(Some(shareable(item)));
                }
            },
            Walk::Tuple { tuple, next } => {
                while *next < tuple.len() {
                    // SAFETY: `next < len(tuple)`, just checked (a tuple's length is fixed).
                    let item = unsafe { tuple.get_item_unchecked(*next) };
                    *next += 1;
                    if !self.scalar(&item)? {
                        return Ok(Some(shareable(item)));
                    }
                }
            }
            Walk::Dict { dict, len, pos, written, value, in_pair } => loop {
                if let Some(value) = value.take() {
                    if !self.scalar(&value)? {
                        return Ok(Some(shareable(value)));
                    }
                }
                if *in_pair {
                    *in_pair = false;
                    self.close();
                }
                let mut key = std::ptr::null_mut();
                let mut item = std::ptr::null_mut();
                // SAFETY: PyDict_Next hands out borrowed pointers; both are turned into owned
                // references before any Python code (a hook) can run and mutate the dict.
                let pair = unsafe {
                    (ffi::PyDict_Next(dict.as_ptr(), pos, &mut key, &mut item) != 0)
                        .then(|| (Bound::from_borrowed_ptr(dict.py(), key), Bound::from_borrowed_ptr(dict.py(), item)))
                };
                let Some((key, item)) = pair else {
                    if *written != *len || dict.len() != *len {
                        return Err(changed_size("dict"));
                    }
                    break;
                };
                *written += 1;
                if *written > *len {
                    return Err(changed_size("dict"));
                }
                self.open(2)?;
                *in_pair = true;
                *value = Some(item);
                if !self.scalar(&key)? {
                    return Ok(Some(shareable(key)));
                }
            },
            Walk::Set { members, len, written } => {
                for member in members.by_ref() {
                    *written += 1;
                    if *written > *len {
                        return Err(changed_size("set"));
                    }
                    let member = member?;
                    if !self.scalar(&member)? {
                        return Ok(Some(shareable(member)));
                    }
                }
                if *written != *len {
                    return Err(changed_size("set"));
                }
            }
            // A hook's items are always tracked.
            Walk::Items { items, next } => {
                while *next < items.len() {
                    let item = items.get_item(*next)?;
                    *next += 1;
                    if !self.scalar(&item)? {
                        return Ok(Some((item, true)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// A list header one level deeper, within `max_depth`.
    #[inline(always)]
    fn open(&mut self, len: usize) -> PyResult<()> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(self.too_deep());
        }
        self.enc.list(len).map_err(|e| PyBananaError::from(e).into())
    }

    #[inline]
    fn close(&mut self) {
        self.depth -= 1;
    }

    #[cold]
    fn too_deep(&self) -> PyErr {
        jelly_error(format!("cannot send values nested deeper than max_depth={}", self.max_depth), None)
    }
}

/// Buffers kept per thread between calls, so a steady stream of large messages does not
/// regrow (and page-fault) a fresh buffer and map every time.
struct Scratch;

thread_local! {
    static SCRATCH: std::cell::RefCell<Option<ScratchBuffers>> = const { std::cell::RefCell::new(None) };
}

/// The output buffer, the map of objects seen and the walk's stack (its frames' lifetimes end
/// with each call; see [`recycle`]).
type ScratchBuffers = (Vec<u8>, PtrMap<Seen>, Vec<Walk<'static>>);

impl Scratch {
    /// Keep at most this much between calls.
    const MAX_BYTES: usize = 4 << 20;
    const MAX_ENTRIES: usize = 1 << 16;
    const MAX_FRAMES: usize = 1 << 10;

    fn take() -> ScratchBuffers {
        // A nested call (a hook that serializes) finds the slot empty and starts afresh.
        SCRATCH.with(|s| s.borrow_mut().take()).unwrap_or_else(|| {
            (Vec::with_capacity(1024), PtrMap::with_capacity_and_hasher(64, Default::default()), Vec::new())
        })
    }

    fn give_back(mut out: Vec<u8>, mut seen: PtrMap<Seen>, stack: Vec<Walk<'static>>) {
        if out.capacity() > Self::MAX_BYTES
            || seen.capacity() > Self::MAX_ENTRIES
            || stack.capacity() > Self::MAX_FRAMES
        {
            return;
        }
        out.clear();
        seen.clear();
        SCRATCH.with(|s| *s.borrow_mut() = Some((out, seen, stack)));
    }
}

/// The UTF-8 bytes of a str, read in place for compact ASCII strings (the common case) and
/// through `PyUnicode_AsUTF8AndSize` otherwise; None if it holds lone surrogates.
#[inline]
pub(crate) fn utf8_of<'a>(s: &'a Bound<'_, PyString>) -> Option<&'a [u8]> {
    let ptr = s.as_ptr();
    // SAFETY: `ptr` is a live str for the lifetime of `s`. A compact ASCII string keeps its
    // characters, one byte each, right after the object header, and never moves them.
    unsafe {
        if ffi::PyUnicode_IS_COMPACT_ASCII(ptr) != 0 {
            let data = ffi::PyUnicode_DATA(ptr).cast::<u8>();
            return Some(std::slice::from_raw_parts(data, ffi::PyUnicode_GET_LENGTH(ptr) as usize));
        }
    }
    s.to_str().ok().map(str::as_bytes)
}

/// `item` of a container we hold, with whether it [`maybe_shared`].
#[inline]
fn shareable(item: Bound<'_, PyAny>) -> (Bound<'_, PyAny>, bool) {
    let shared = maybe_shared(&item);
    (item, shared)
}

/// Whether anything but its parent container (and our one owned reference to it, taken while
/// iterating that container) may hold `obj`. If not, the walk cannot meet it twice, and it need
/// not be tracked for `reference`/`dereference`. Sound because the module holds the GIL (it does
/// not declare `gil_used = false`), so no other thread changes the count meanwhile; immortal
/// objects have huge counts and are simply tracked.
#[inline]
pub(crate) fn maybe_shared(obj: &Bound<'_, PyAny>) -> bool {
    obj.get_refcnt() > 2
}

fn refuse_tz(has_tz: bool, what: &str) -> PyResult<()> {
    if has_tz {
        return Err(jelly_error(format!("cannot jelly a {what} with a tzinfo (Twisted has no form for it)"), None));
    }
    Ok(())
}

fn changed_size(what: &str) -> PyErr {
    PyRuntimeError::new_err(format!("{what} changed size while it was being serialized"))
}

pub fn decimal_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static DECIMAL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    DECIMAL.import(py, "decimal", "Decimal")
}

/// `types.FunctionType`, `types.MethodType`, `types.ModuleType`.
fn code_types(py: Python<'_>) -> PyResult<[&Bound<'_, PyType>; 3]> {
    static FUNCTION: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static METHOD: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static MODULE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    Ok([
        FUNCTION.import(py, "types", "FunctionType")?,
        METHOD.import(py, "types", "MethodType")?,
        MODULE.import(py, "types", "ModuleType")?,
    ])
}
