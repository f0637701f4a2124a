//! Jelly for Python objects: the [`Build`] that makes them from jelly bytes and the [`Walk`] that
//! writes them, around the pure codec in `crate::jelly`, with a hook for the classes the broker
//! layer adds (Referenceable, Copyable, Cacheable, ...).

use num_bigint::BigInt;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyBytes, PyDate, PyDateAccess, PyDateTime, PyDelta, PyDeltaAccess, PyDict, PyFloat, PyFrozenSet,
    PyIterator, PyList, PySet, PyString, PyTime, PyTimeAccess, PyTuple, PyType, PyTzInfoAccess,
};

use super::errors::unpersistable;
use super::int_value;
use super::objects::{decimal_type, dict_next, list_item, qualified_name, utf8_of, GcPause, StrCache};
use crate::banana::{Dialect, Encoder, Integer, Limits};
use crate::jelly::decode::{decode, Build, Fault, When};
use crate::jelly::encode::{word, Buffers, Form, Walk, Writer};
use crate::jelly::{push_in_place, recycle, tag, Error};

type Failed<E = PyErr> = Error<E>;

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

/// Unjelly one expression into Python objects. `hook(tag, items)` builds values for tags jelly
/// itself does not know (returning `NotImplemented` for tags it does not know either).
pub struct JellyDecoder<'py, 'a> {
    build: PyBuild<'py, 'a>,
    expr: &'a [u8],
    dialect: Dialect,
    limits: Limits,
    base: u64,
    consumed: usize,
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
        JellyDecoder { build: PyBuild { py, hook, strings }, expr, dialect, limits, base, consumed: 0 }
    }

    /// Build the expression. With `whole`, bytes left after it are an error.
    pub fn build(&mut self, whole: bool) -> PyResult<Bound<'py, PyAny>> {
        let _gc = GcPause::new();
        let mut scratch = std::mem::take(&mut self.build.strings.scratch);
        let (value, consumed) =
            decode(self.expr, self.dialect, self.limits, self.base, &mut self.build, &mut scratch, whole);
        self.build.strings.scratch = scratch;
        self.consumed = consumed;
        Ok(value?)
    }

    /// Bytes of the expression read so far (after [`JellyDecoder::build`], the value's length).
    pub fn consumed(&self) -> usize {
        self.consumed
    }
}

/// Makes Python objects for the decoder.
struct PyBuild<'py, 'a> {
    py: Python<'py>,
    hook: Option<&'a Bound<'py, PyAny>>,
    /// Dictionary keys, which repeat from one dict to the next.
    strings: &'a mut StrCache,
}

/// A new reference from the C API, or its exception.
#[inline(always)]
fn owned<'py>(py: Python<'py>, ptr: *mut ffi::PyObject) -> PyResult<Bound<'py, PyAny>> {
    if ptr.is_null() {
        return Err(raised(py));
    }
    // SAFETY: every caller passes what a C API function returned: a new reference (or NULL with
    // an exception set, handled above).
    Ok(unsafe { Bound::from_owned_ptr(py, ptr) })
}

/// A failed placement or construction, as the value's fault: the decoder says what and where.
fn bad(e: PyErr) -> Fault<PyErr> {
    Fault::Bad(e.to_string())
}

/// The exception a failed C API call (returning -1 or NULL) left.
#[cold]
#[inline(never)]
fn raised(py: Python<'_>) -> PyErr {
    PyErr::fetch(py)
}

impl<'py> Build for PyBuild<'py, '_> {
    type Value = Bound<'py, PyAny>;
    type Error = PyErr;

    #[inline(always)]
    fn int(&mut self, value: i64) -> PyResult<Self::Value> {
        // SAFETY: a C API constructor (see `owned`).
        owned(self.py, unsafe { ffi::PyLong_FromLongLong(value) })
    }

    fn big_int(&mut self, value: &BigInt) -> PyResult<Self::Value> {
        Ok(value.into_pyobject(self.py)?.into_any())
    }

    #[inline(always)]
    fn float(&mut self, value: f64) -> PyResult<Self::Value> {
        // SAFETY: a C API constructor (see `owned`).
        owned(self.py, unsafe { ffi::PyFloat_FromDouble(value) })
    }

    fn bytes(&mut self, value: &[u8]) -> PyResult<Self::Value> {
        // SAFETY: a C API constructor (see `owned`) copying `value`, whose pointer and length it gets.
        owned(self.py, unsafe { ffi::PyBytes_FromStringAndSize(value.as_ptr().cast(), value.len() as ffi::Py_ssize_t) })
    }

    #[inline(always)]
    fn text(&mut self, utf8: &[u8]) -> Result<Self::Value, Fault<PyErr>> {
        self.strings.text(self.py, utf8).map(Bound::into_any).map_err(bad)
    }

    #[inline(always)]
    fn key(&mut self, utf8: &[u8], pair: usize) -> Result<Self::Value, Fault<PyErr>> {
        self.strings.key(self.py, utf8, pair).map(Bound::into_any).map_err(bad)
    }

    #[inline(always)]
    fn known_pair(&mut self, rest: &[u8], pair: usize) -> Option<(Self::Value, usize)> {
        self.strings.known_pair(self.py, rest, pair).map(|(key, took)| (key.into_any(), took))
    }

    fn none(&mut self) -> PyResult<Self::Value> {
        Ok(self.py.None().into_bound(self.py))
    }

    fn boolean(&mut self, value: bool) -> PyResult<Self::Value> {
        Ok(PyBool::new(self.py, value).to_owned().into_any())
    }

    fn when(&mut self, value: When) -> Result<Self::Value, Fault<PyErr>> {
        let py = self.py;
        let made = match value {
            When::DateTime { year, month, day, hour, minute, second, microsecond } => {
                PyDateTime::new(py, year, month, day, hour, minute, second, microsecond, None).map(Bound::into_any)
            }
            When::Date { year, month, day } => PyDate::new(py, year, month, day).map(Bound::into_any),
            When::Time { hour, minute, second, microsecond } => {
                PyTime::new(py, hour, minute, second, microsecond, None).map(Bound::into_any)
            }
            When::Delta { days, seconds, microseconds } => {
                PyDelta::new(py, days, seconds, microseconds, true).map(Bound::into_any)
            }
        };
        made.map_err(bad)
    }

    fn decimal(&mut self, negative: bool, digits: &[u8], exponent: i64) -> Result<Self::Value, Fault<PyErr>> {
        let py = self.py;
        let digits = PyTuple::new(py, digits).map_err(bad)?;
        decimal_type(py).and_then(|d| d.call1(((u8::from(negative), digits, exponent),))).map_err(bad)
    }

    fn unpersistable(&mut self, reason: &str) -> PyResult<Self::Value> {
        unpersistable(self.py, reason)
    }

    fn placeholder(&mut self, id: i64) -> PyResult<Self::Value> {
        Ok(Bound::new(self.py, UnresolvedReference { id })?.into_any())
    }

    fn same(&self, a: &Self::Value, b: &Self::Value) -> bool {
        a.is(b)
    }

    #[inline(always)]
    unsafe fn list(&mut self, len: usize) -> PyResult<Self::Value> {
        // SAFETY: a C API constructor (see `owned`): a list of `len` NULL slots, which the caller
        // fills before the list goes anywhere (list deallocation skips NULL slots, so it may be
        // dropped unfilled).
        owned(self.py, unsafe { ffi::PyList_New(len as ffi::Py_ssize_t) })
    }

    #[inline(always)]
    unsafe fn fill_list(&mut self, list: &Self::Value, index: usize, item: Self::Value) {
        // SAFETY: `list` is a list from `Self::list` with an empty slot `index` (the caller's
        // contract); PyList_SET_ITEM takes over the new reference.
        unsafe { ffi::PyList_SET_ITEM(list.as_ptr(), index as ffi::Py_ssize_t, item.into_ptr()) };
    }

    fn empty_list(&mut self) -> PyResult<Self::Value> {
        Ok(PyList::empty(self.py).into_any())
    }

    #[inline]
    fn push(&mut self, list: &Self::Value, item: Self::Value) -> PyResult<()> {
        // SAFETY: `list` is a list from `empty_list`; PyList_Append takes its own reference.
        match unsafe { ffi::PyList_Append(list.as_ptr(), item.as_ptr()) } {
            0 => Ok(()),
            _ => Err(raised(self.py)),
        }
    }

    fn patch_list(&mut self, list: &Self::Value, index: usize, value: &Self::Value) -> PyResult<()> {
        list.cast::<PyList>()?.set_item(index, value)
    }

    #[inline(always)]
    unsafe fn tuple(&mut self, len: usize) -> PyResult<Self::Value> {
        // SAFETY: as `list`, with PyTuple_New (tuple deallocation skips NULL slots too).
        owned(self.py, unsafe { ffi::PyTuple_New(len as ffi::Py_ssize_t) })
    }

    #[inline(always)]
    unsafe fn fill_tuple(&mut self, tuple: &Self::Value, index: usize, item: Self::Value) {
        // SAFETY: `tuple` is a tuple from `Self::tuple` with an empty slot `index`, that no one
        // else has seen yet (the caller's contract): filling it is still creating it.
        // PyTuple_SET_ITEM takes over the new reference.
        unsafe { ffi::PyTuple_SET_ITEM(tuple.as_ptr(), index as ffi::Py_ssize_t, item.into_ptr()) };
    }

    unsafe fn patch_tuple(&mut self, tuple: &Self::Value, index: usize, value: &Self::Value) {
        // SAFETY: `tuple` is a complete tuple from `Self::tuple` with a placeholder at `index`, seen
        // by nothing but the decoder (the caller's contract), so changing it is still part of
        // creating it. The slot takes a new reference to `value`; the placeholder's reference is
        // released once the slot no longer points to it.
        unsafe {
            let slot = (*tuple.as_ptr().cast::<ffi::PyTupleObject>()).ob_item.as_mut_ptr().add(index);
            let old = std::mem::replace(&mut *slot, value.clone().into_ptr());
            ffi::Py_DECREF(old);
            // A collection (one a hook asked for) may have stopped tracking the tuple while it held
            // only the placeholder; with `value` it may be part of a cycle the collector must see.
            if ffi::PyObject_GC_IsTracked(tuple.as_ptr()) == 0 {
                ffi::PyObject_GC_Track(tuple.as_ptr().cast());
            }
        }
    }

    #[inline(always)]
    fn dict(&mut self) -> PyResult<Self::Value> {
        // SAFETY: a C API constructor (see `owned`).
        owned(self.py, unsafe { ffi::PyDict_New() })
    }

    #[inline(always)]
    fn set_item(&mut self, dict: &Self::Value, key: &Self::Value, value: &Self::Value) -> Result<(), Fault<PyErr>> {
        // SAFETY: `dict` is a dict from `Self::dict`; PyDict_SetItem takes its own references.
        match unsafe { ffi::PyDict_SetItem(dict.as_ptr(), key.as_ptr(), value.as_ptr()) } {
            0 => Ok(()),
            _ => Err(bad(raised(self.py))),
        }
    }

    fn set(&mut self) -> PyResult<Self::Value> {
        Ok(PySet::empty(self.py)?.into_any())
    }

    fn add(&mut self, set: &Self::Value, member: Self::Value) -> Result<(), Fault<PyErr>> {
        // SAFETY: `set` is a set from `Self::set`; PySet_Add takes its own reference.
        match unsafe { ffi::PySet_Add(set.as_ptr(), member.as_ptr()) } {
            0 => Ok(()),
            _ => Err(bad(raised(self.py))),
        }
    }

    fn hashable(&mut self, value: &Self::Value) -> Result<(), Fault<PyErr>> {
        value.hash().map(drop).map_err(bad)
    }

    fn frozenset(&mut self, members: Vec<Self::Value>) -> PyResult<Self::Value> {
        Ok(PyFrozenSet::new(self.py, &members)?.into_any())
    }

    fn has_hook(&self) -> bool {
        self.hook.is_some()
    }

    fn hook(&mut self, tag: &[u8], items: Vec<Self::Value>) -> PyResult<Option<Self::Value>> {
        let (py, Some(hook)) = (self.py, self.hook) else { return Ok(None) };
        let value = hook.call1((PyBytes::new(py, tag), PyList::new(py, items)?))?;
        // NotImplemented: the hook does not know the tag either.
        Ok((!value.is(py.NotImplemented())).then_some(value))
    }
}

/// Jelly Python values into one buffer: the values of one message, each in its own id space.
pub struct JellyEncoder<'py> {
    w: Writer,
    walk: PyWalk<'py>,
    stack: Vec<Frame>,
}

impl<'py> JellyEncoder<'py> {
    pub fn new(py: Python<'py>, dialect: Dialect, hook: Option<Bound<'py, PyAny>>) -> JellyEncoder<'py> {
        let Spare { buffers, stack, keep } = Spare::take();
        let walk = PyWalk { py, hook, keep: recycle(keep), keys: Default::default(), kept: 0 };
        JellyEncoder { w: Writer::new(dialect, buffers), walk, stack: recycle(stack) }
    }

    /// Jelly one value. Each call is its own id space, as each of Twisted's `jelly()` calls is.
    pub fn jelly(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        let written = self.w.value(&mut self.walk, &mut self.stack, obj.clone());
        // The objects tracked for this value can go now: the next value is its own id space.
        // (The keys' forms go first: they are good only while `keep` holds the keys.)
        self.walk.keys = Default::default();
        self.walk.keep.clear();
        self.walk.kept = 0;
        Ok(written?)
    }

    /// The underlying banana encoder, for envelope items written around jelly values.
    pub fn raw(&mut self) -> &mut Encoder {
        self.w.raw()
    }

    /// The encoded bytes, handed to `f`; the buffers go back to this thread's spares.
    pub fn finish<R>(self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self.w.output())
    }
}

impl Drop for JellyEncoder<'_> {
    fn drop(&mut self) {
        // An empty writer takes the place of this one: it allocates nothing.
        let w = std::mem::replace(&mut self.w, Writer::new(Dialect::Pb, Buffers::default()));
        let (stack, keep) = (std::mem::take(&mut self.stack), std::mem::take(&mut self.walk.keep));
        Spare::give_back(w.into_buffers(), recycle(stack), recycle(keep));
    }
}

/// Writes the values that need none of the walk's bookkeeping — scalars, and tuples or lists of
/// scalars: a call's arguments and most answers — straight into a message's buffer, leaving
/// anything else to a [`JellyEncoder`]. The bytes are the walk's: such a value holds no
/// container that could be met twice, and no hook sees a scalar.
pub struct FlatWriter {
    w: Writer,
    start: usize,
}

impl FlatWriter {
    /// A writer appending to `out`; [`FlatWriter::finish`] gives it back.
    pub fn new(dialect: Dialect, out: &mut Vec<u8>) -> FlatWriter {
        let start = out.len();
        FlatWriter { w: Writer::appending(dialect, std::mem::take(out)), start }
    }

    /// Whether `obj` is written here (a scalar, or a tuple or list of scalars).
    #[inline]
    pub fn fits(obj: &Bound<'_, PyAny>) -> bool {
        let items = if let Ok(tuple) = obj.cast_exact::<PyTuple>() {
            tuple.as_slice()
        } else if let Ok(list) = obj.cast_exact::<PyList>() {
            return list.iter().all(|item| is_scalar(&item));
        } else {
            return is_scalar(obj);
        };
        items.iter().all(is_scalar)
    }

    /// The underlying banana encoder, for envelope items written around values.
    pub fn raw(&mut self) -> &mut Encoder {
        self.w.raw()
    }

    /// Write `obj`, which [`FlatWriter::fits`].
    pub fn value(&mut self, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        if scalar(&mut self.w, obj)? {
            return Ok(());
        }
        if let Ok(tuple) = obj.cast_exact::<PyTuple>() {
            self.w.open(word::TUPLE, tuple.len()).map_err(Error::from)?;
            for item in tuple.as_slice() {
                self.item(item)?;
            }
        } else {
            // No Python code runs while scalars are written: the list cannot change meanwhile.
            let list = obj.cast_exact::<PyList>()?;
            self.w.open(word::LIST, list.len()).map_err(Error::from)?;
            for item in list.iter() {
                self.item(&item)?;
            }
        }
        self.w.close();
        Ok(())
    }

    fn item(&mut self, item: &Bound<'_, PyAny>) -> PyResult<()> {
        if !scalar(&mut self.w, item)? {
            return Err(PyRuntimeError::new_err("a flat value's item is not a scalar"));
        }
        Ok(())
    }

    /// `{}`, as the walk writes an empty dict.
    pub fn empty_dict(&mut self) -> PyResult<()> {
        self.w.open(word::DICTIONARY, 0).map_err(Error::from)?;
        self.w.close();
        Ok(())
    }

    /// Give the buffer back to `out`: with what was written if `ok`, as it was before if not.
    pub fn finish(self, ok: bool, out: &mut Vec<u8>) {
        *out = self.w.into_output();
        if !ok {
            out.truncate(self.start);
        }
    }
}

/// Whether [`scalar`] writes `obj`.
#[inline(always)]
fn is_scalar(obj: &Bound<'_, PyAny>) -> bool {
    let ty = obj.get_type_ptr();
    ty == &raw mut ffi::PyUnicode_Type
        || ty == &raw mut ffi::PyLong_Type
        || ty == &raw mut ffi::PyFloat_Type
        || ty == &raw mut ffi::PyBytes_Type
        || ty == &raw mut ffi::PyBool_Type
        || obj.is_none()
}

/// A writer's buffers, the walk's stack and its list of objects kept alive, kept per thread between
/// calls (empty, with the lifetimes of their elements ended; see [`recycle`]).
struct Spare {
    buffers: Buffers,
    stack: Vec<Frame>,
    keep: Vec<Bound<'static, PyAny>>,
}

thread_local! {
    static SPARE: std::cell::RefCell<Option<Spare>> = const { std::cell::RefCell::new(None) };
}

impl Spare {
    fn take() -> Spare {
        // A nested call (a hook that serializes) finds the slot empty and starts afresh.
        SPARE.with(|s| s.borrow_mut().take()).unwrap_or_else(|| Spare {
            buffers: Buffers::default(),
            stack: Vec::new(),
            keep: Vec::new(),
        })
    }

    fn give_back(buffers: Buffers, stack: Vec<Frame>, keep: Vec<Bound<'static, PyAny>>) {
        if buffers.worth_keeping() && stack.capacity() <= 1 << 10 && keep.capacity() <= 1 << 16 {
            SPARE.with(|s| *s.borrow_mut() = Some(Spare { buffers, stack, keep }));
        }
    }
}

/// Says what Python values are, for the writer.
struct PyWalk<'py> {
    py: Python<'py>,
    hook: Option<Bound<'py, PyAny>>,
    /// References that keep objects alive until the value is written, so that no other object
    /// takes their address meanwhile (hook code may drop what it held): the tracked objects
    /// (those the walk tracks itself only from [`PyWalk::secure`] on), the objects frames point to
    /// that are not tracked, the strs in `keys`.
    keep: Vec<Bound<'py, PyAny>>,
    /// The str key last met at each of a dict's first pairs, by its address, with the form of
    /// its pair's header and key: dicts of one shape follow one another, and a key found here is
    /// written with one copy. Each str here is held by `keep`; emptied with it.
    keys: [(usize, Form); PyWalk::KEYS],
    /// How many of the objects the writer tracks `keep` holds (see [`PyWalk::secure`]).
    kept: usize,
}

/// A container being written: where the walk goes on once the item being written is done. One
/// shape for every kind of container rather than an enum, so that the walk builds a new frame
/// straight into its place on the stack. Its objects are borrowed: held by [`PyWalk::keep`], or
/// (a list, dict or tuple, under the GIL) reachable from the value with no Python code run since
/// it was met (see [`PyWalk::sighting`]). A frame costs no reference counting.
struct Frame {
    kind: Kind,
    /// The list, tuple or dict; a set's iterator; the tuple of items a hook gave.
    obj: *mut ffi::PyObject,
    /// Items (a dict's pairs) it holds. Hook code may change a list, dict or set under us, so
    /// their sizes are checked at each step.
    len: usize,
    /// The next item's index; a dict's `PyDict_Next` position.
    next: ffi::Py_ssize_t,
    /// Pairs or members written so far (dicts and sets).
    written: usize,
    /// A dict's value of the pair whose key is being written (null if none).
    value: *mut ffi::PyObject,
}

#[derive(Clone, Copy)]
enum Kind {
    List,
    Tuple,
    Dict,
    Set,
    /// The items a hook gave for an object.
    Items,
}

impl Frame {
    fn new(kind: Kind, obj: *mut ffi::PyObject, len: usize) -> Frame {
        Frame { kind, obj, len, next: 0, written: 0, value: std::ptr::null_mut() }
    }
}

impl<'py> Walk for PyWalk<'py> {
    type Item = Bound<'py, PyAny>;
    type Frame = Frame;
    type Error = PyErr;

    #[inline(always)]
    fn write(
        &mut self,
        w: &mut Writer,
        stack: &mut Vec<Frame>,
        obj: Bound<'py, PyAny>,
    ) -> Result<Option<Bound<'py, PyAny>>, Failed> {
        // The containers first: but for the root, the walk hands out only items that are not
        // scalars (it writes those where it meets them).
        let ty = obj.get_type_ptr();
        // SAFETY (each cast): the type was just checked; only the addresses of CPython's static
        // type objects are taken.
        let (kind, atom, len) = unsafe {
            if ty == &raw mut ffi::PyList_Type {
                (Kind::List, word::LIST, obj.cast_unchecked::<PyList>().len())
            } else if ty == &raw mut ffi::PyDict_Type {
                (Kind::Dict, word::DICTIONARY, obj.cast_unchecked::<PyDict>().len())
            } else if ty == &raw mut ffi::PyTuple_Type {
                (Kind::Tuple, word::TUPLE, obj.cast_unchecked::<PyTuple>().len())
            } else {
                if scalar(w, &obj)? {
                    return Ok(None);
                }
                return self.write_other(w, stack, obj).map(|()| None);
            }
        };
        if let Some(obj) = self.sighting(w, &obj)? {
            w.open(atom, len)?;
            // Its items straight away, as far as they are scalars; a container of scalars only
            // (the common kind) leaves the stack as it found it. (The frame is built in its place
            // on the stack: one built here and copied there would wait on the stores that built it.)
            push_in_place(stack, Frame::new(kind, obj, len));
            let frame = stack.last_mut().expect("just pushed");
            if let Some(inner) = self.next(w, frame)? {
                return Ok(Some(inner));
            }
            stack.pop();
            w.close();
        }
        Ok(None)
    }

    #[inline(always)]
    fn next(&mut self, w: &mut Writer, frame: &mut Frame) -> Result<Option<Bound<'py, PyAny>>, Failed> {
        // SAFETY (each cast): `obj` is alive (see `Frame`) and of the type its kind says (see
        // `Frame::new`'s callers).
        let obj = unsafe { pyo3::Borrowed::from_ptr(self.py, frame.obj) };
        match frame.kind {
            Kind::List => {
                let list = unsafe { obj.cast_unchecked::<PyList>() };
                // (The position in a local while the items are scalars.)
                let (len, mut next) = (frame.len, frame.next as usize);
                loop {
                    // Hook code may run while an item is written and shrink the list under us:
                    // check the size each time, and hold each item by an owned reference while it
                    // is written.
                    if list.len() != len {
                        return Err(changed_size("list"));
                    }
                    if next == len {
                        break;
                    }
                    let item = list_item(&list, next)?;
                    next += 1;
                    if !scalar(w, item.as_any())? && !self.flat(w, item.as_any())? {
                        frame.next = next as ffi::Py_ssize_t;
                        return Ok(Some(item.as_any().clone()));
                    }
                }
                frame.next = next as ffi::Py_ssize_t;
            }
            Kind::Tuple => {
                let tuple = unsafe { obj.cast_unchecked::<PyTuple>() };
                while (frame.next as usize) < frame.len {
                    // SAFETY: `next < len(tuple)`, just checked (a tuple's length is fixed).
                    let item = unsafe { tuple.get_item_unchecked(frame.next as usize) };
                    frame.next += 1;
                    if !scalar(w, &item)? {
                        return Ok(Some(item));
                    }
                }
            }
            Kind::Dict => loop {
                if !frame.value.is_null() {
                    // SAFETY: held by `keep` (see below).
                    let value = unsafe { pyo3::Borrowed::from_ptr(self.py, frame.value) };
                    frame.value = std::ptr::null_mut();
                    if !scalar(w, &value)? {
                        return Ok(Some(value.to_owned()));
                    }
                }
                let dict = unsafe { obj.cast_unchecked::<PyDict>() };
                if frame.written == frame.len && frame.len > 0 {
                    // Every pair written: no need to ask for the end, if it has not changed size.
                    if dict.len() != frame.len {
                        return Err(changed_size("dict"));
                    }
                    w.close();
                    break;
                }
                let Some((key, item)) = dict_next(&dict, &mut frame.next) else {
                    if frame.written != frame.len || dict.len() != frame.len {
                        return Err(changed_size("dict"));
                    }
                    if frame.written > 0 {
                        w.close();
                    }
                    break;
                };
                let pair = frame.written;
                if pair == 0 {
                    w.open_pairs()?;
                }
                frame.written += 1;
                if frame.written > frame.len {
                    return Err(changed_size("dict"));
                }
                // A str key met at this place before: its pair's header and the key in one copy.
                if matches!(self.keys.get(pair), Some(&(known, _)) if known == key.as_ptr() as usize) {
                    w.form(&self.keys[pair].1)?;
                } else if !(pair < PyWalk::KEYS && self.pair_key(w, key.as_any(), pair)?) {
                    w.pair();
                    if !scalar(w, key.as_any())? {
                        // The value waits while the key is written, held by `keep` (hook code may
                        // change the dict meanwhile).
                        frame.value = item.as_ptr();
                        self.keep.push(item.as_any().clone());
                        return Ok(Some(key.as_any().clone()));
                    }
                }
                if !scalar(w, item.as_any())? && !self.flat(w, item.as_any())? {
                    return Ok(Some(item.as_any().clone()));
                }
            },
            Kind::Set => {
                let members = unsafe { obj.cast_unchecked::<PyIterator>() };
                for member in members.to_owned() {
                    frame.written += 1;
                    if frame.written > frame.len {
                        return Err(changed_size("set"));
                    }
                    let member = member?;
                    if !scalar(w, &member)? {
                        return Ok(Some(member));
                    }
                }
                if frame.written != frame.len {
                    return Err(changed_size("set"));
                }
            }
            Kind::Items => {
                let items = unsafe { obj.cast_unchecked::<PyTuple>() };
                while (frame.next as usize) < items.len() {
                    let item = items.get_item(frame.next as usize)?;
                    frame.next += 1;
                    if !scalar(w, &item)? {
                        return Ok(Some(item));
                    }
                }
            }
        }
        Ok(None)
    }
}

impl<'py> PyWalk<'py> {
    const KEYS: usize = 8;

    /// Write the header of a dict's pair number `pair` and its key, if the key is a str, and
    /// keep their form for the key at this place; false (nothing written) if the key is not a
    /// str.
    #[inline(never)]
    fn pair_key(&mut self, w: &mut Writer, key: &Bound<'py, PyAny>, pair: usize) -> Result<bool, Failed> {
        if key.get_type_ptr() != &raw mut ffi::PyUnicode_Type {
            return Ok(false);
        }
        // SAFETY: the type was just checked.
        let Some(utf8) = utf8_of(unsafe { key.cast_unchecked::<PyString>() }) else { return Ok(false) };
        if let Some(form) = w.pair_text_form(utf8)? {
            self.keys[pair] = (key.as_ptr() as usize, form);
            self.keep.push(key.clone());
        }
        Ok(true)
    }

    /// Write `obj` if it is a short exact list or tuple of scalars only (a record's tags, a
    /// point's coordinates), where it was met: as [`Walk::write`] would, without a frame of its
    /// own or a return to the walk. False if it is not one.
    #[inline(always)]
    fn flat(&mut self, w: &mut Writer, obj: &Bound<'py, PyAny>) -> Result<bool, Failed> {
        // Free-threaded, another thread may change a list between its check and its writing:
        // it goes through its frame, which checks each item as it takes it.
        #[cfg(Py_GIL_DISABLED)]
        {
            let _ = (w, obj);
            Ok(false)
        }
        #[cfg(not(Py_GIL_DISABLED))]
        {
            const MOST: usize = 16;
            let ty = obj.get_type_ptr();
            let ptr = obj.as_ptr();
            // SAFETY: the types were just checked; with the GIL held, and no Python code run while
            // scalars are written, the items stay as they are read here until they are written.
            let (atom, items) = unsafe {
                if ty == &raw mut ffi::PyList_Type {
                    let len = ffi::PyList_GET_SIZE(ptr) as usize;
                    let items = (*ptr.cast::<ffi::PyListObject>()).ob_item;
                    (word::LIST, if len == 0 { &[][..] } else { std::slice::from_raw_parts(items, len) })
                } else if ty == &raw mut ffi::PyTuple_Type {
                    let len = ffi::PyTuple_GET_SIZE(ptr) as usize;
                    let items = (*ptr.cast::<ffi::PyTupleObject>()).ob_item.as_ptr();
                    (word::TUPLE, std::slice::from_raw_parts(items, len))
                } else {
                    return Ok(false);
                }
            };
            // SAFETY (each item): a live object the container holds (see above).
            let py = self.py;
            let item = |p: *mut ffi::PyObject| unsafe { pyo3::Borrowed::from_ptr(py, p) };
            if items.len() > MOST || !items.iter().all(|&p| is_scalar(&item(p))) {
                return Ok(false);
            }
            if self.sighting(w, obj)?.is_some() {
                w.open(atom, items.len())?;
                for &p in items {
                    if !scalar(w, &item(p))? {
                        return Err(changed_size("list"));
                    }
                }
                w.close();
            }
            Ok(true)
        }
    }

    /// A tracked object's first sighting in this value: then it is kept alive until the value is
    /// written, and its address given back; None if it was met before, and its dereference
    /// written.
    #[inline(always)]
    fn first_sighting(&mut self, w: &mut Writer, obj: Bound<'py, PyAny>) -> Result<Option<*mut ffi::PyObject>, Failed> {
        let ptr = obj.as_ptr();
        if w.seen(ptr as usize)? {
            return Ok(None);
        }
        push_in_place(&mut self.keep, obj);
        Ok(Some(ptr))
    }

    /// [`PyWalk::first_sighting`] for a list, dict or tuple met by the walk itself. With the GIL
    /// held, no Python code runs while such containers and scalars are written, so each
    /// container stays reachable from the value, and alive, without a reference of ours, until
    /// [`PyWalk::secure`] takes one before anything that may run Python code. Free-threaded,
    /// another thread may drop it at any time: it is kept at once.
    #[inline(always)]
    fn sighting(&mut self, w: &mut Writer, obj: &Bound<'py, PyAny>) -> Result<Option<*mut ffi::PyObject>, Failed> {
        #[cfg(Py_GIL_DISABLED)]
        return self.first_sighting(w, obj.clone());
        #[cfg(not(Py_GIL_DISABLED))]
        {
            let ptr = obj.as_ptr();
            Ok((!w.seen(ptr as usize)?).then_some(ptr))
        }
    }

    /// Take a reference to every object tracked but not yet kept: from here on Python code may
    /// run (a hook, a class's attributes, a collection when something is allocated), which may
    /// drop what the value held.
    #[cold]
    fn secure(&mut self, w: &Writer) {
        let py = self.py;
        // SAFETY: each address is that of an object tracked since the last `secure`, alive and
        // unchanged (see `sighting`): a new reference to it is taken before anything can drop it.
        self.keep.extend(
            w.tracked_from(self.kept).map(|a| unsafe { Bound::from_borrowed_ptr(py, a as *mut ffi::PyObject) }),
        );
        self.kept = w.tracked();
    }

    /// Keep `obj` alive until the value is written; its address, for a frame.
    fn hold(&mut self, obj: Bound<'py, PyAny>) -> *mut ffi::PyObject {
        let ptr = obj.as_ptr();
        self.keep.push(obj);
        ptr
    }

    /// [`Walk::write`] for the less common types.
    #[inline(never)]
    fn write_other(&mut self, w: &mut Writer, stack: &mut Vec<Frame>, obj: Bound<'py, PyAny>) -> Result<(), Failed> {
        self.secure(w);
        if obj.is_exact_instance_of::<PySet>() || obj.is_exact_instance_of::<PyFrozenSet>() {
            let atom = if obj.is_exact_instance_of::<PySet>() { word::SET } else { word::FROZENSET };
            let Some(set) = self.first_sighting(w, obj)? else { return Ok(()) };
            // SAFETY: held by `keep` from now until the value is written.
            let set = unsafe { pyo3::Borrowed::from_ptr(self.py, set) };
            let len = set.len()?;
            w.open(atom, len)?;
            let members = self.hold(set.try_iter()?.into_any());
            stack.push(Frame::new(Kind::Set, members, len));
            return Ok(());
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
            w.when(tag::DATETIME, &fields)?;
        } else if let Ok(d) = obj.cast_exact::<PyDate>() {
            w.when(tag::DATE, &[i64::from(d.get_year()), i64::from(d.get_month()), i64::from(d.get_day())])?;
        } else if let Ok(t) = obj.cast_exact::<PyTime>() {
            refuse_tz(t.get_tzinfo().is_some(), "time")?;
            let fields = [
                i64::from(t.get_hour()),
                i64::from(t.get_minute()),
                i64::from(t.get_second()),
                i64::from(t.get_microsecond()),
            ];
            w.when(tag::TIME, &fields)?;
        } else if let Ok(td) = obj.cast_exact::<PyDelta>() {
            let fields = [i64::from(td.get_days()), i64::from(td.get_seconds()), i64::from(td.get_microseconds())];
            w.when(tag::TIMEDELTA, &fields)?;
        } else if obj.get_type().is(decimal_type(self.py)?) {
            decimal(w, &obj)?;
        } else if let Ok(cls) = obj.cast::<PyType>() {
            w.class(&qualified_name(cls)?)?;
        } else {
            return self.instance(w, stack, &obj);
        }
        Ok(())
    }

    /// Anything that is not a builtin jelly type: ask the hook, else Twisted's defaults.
    fn instance(&mut self, w: &mut Writer, stack: &mut Vec<Frame>, obj: &Bound<'py, PyAny>) -> Result<(), Failed> {
        if let Some(hook) = self.hook.clone() {
            if w.was_seen(obj.as_ptr() as usize) {
                w.seen(obj.as_ptr() as usize)?;
                return Ok(());
            }
            let result = hook.call1((obj,))?;
            if !result.is_none() {
                let (items, track): (Bound<'py, PyAny>, bool) = result
                    .extract()
                    .map_err(|_| PyTypeError::new_err("a jelly hook must return None or (items, track)"))?;
                if track {
                    self.first_sighting(w, obj.clone())?;
                }
                let items = items.cast_into::<PyTuple>().or_else(|e| {
                    let any = e.into_inner();
                    any.cast::<PyList>()
                        .map(|l| l.to_tuple())
                        .map_err(|_| PyTypeError::new_err("a jelly hook's items must be a tuple or list"))
                })?;
                w.open_list(items.len())?;
                let len = items.len();
                let items = self.hold(items.into_any());
                stack.push(Frame::new(Kind::Items, items, len));
                return Ok(());
            }
        }
        self.default_instance(w, obj)
    }

    /// Twisted's behaviour for objects without a jelly form of their own: functions, methods and
    /// modules cannot be sent; anything else goes as `unpersistable` (tracked like a container).
    fn default_instance(&mut self, w: &mut Writer, obj: &Bound<'py, PyAny>) -> Result<(), Failed> {
        let kinds = code_types(self.py)?;
        for (kind, what) in kinds.iter().zip(["function", "bound method", "module"]) {
            if obj.is_instance(kind)? {
                return Err(Error::unsendable(format!("cannot send a {what} ({})", obj.repr()?)));
            }
        }
        if self.first_sighting(w, obj.clone())?.is_none() {
            return Ok(());
        }
        let reason = format!("instance of class {} deemed insecure", qualified_name(&obj.get_type())?);
        Ok(w.unpersistable(&reason)?)
    }
}

/// Write `obj` if it is an exact str, int, float or bytes, None or a bool (the common items,
/// written without leaving the container they are in); false if it is not one of those.
#[inline(always)]
fn scalar(w: &mut Writer, obj: &Bound<'_, PyAny>) -> Result<bool, Failed> {
    let ty = obj.get_type_ptr();
    // SAFETY: only the addresses of CPython's static type objects are taken; each cast below
    // follows the check of its exact type.
    unsafe {
        if ty == &raw mut ffi::PyUnicode_Type {
            return match utf8_of(obj.cast_unchecked::<PyString>()) {
                Some(text) => w.text(text).map(|()| true).map_err(Error::from),
                None => Err(Error::unsendable("cannot send a str that is not valid Unicode (a lone surrogate)".into())),
            };
        }
        if ty == &raw mut ffi::PyLong_Type {
            match int_value(obj)? {
                Integer::Small(v) => w.int(v),
                Integer::Big(big) => w.big_int(&big)?,
            }
        } else if ty == &raw mut ffi::PyFloat_Type {
            w.float(obj.cast_unchecked::<PyFloat>().value());
        } else if ty == &raw mut ffi::PyBytes_Type {
            w.bytes(obj.cast_unchecked::<PyBytes>().as_bytes())?;
        } else if obj.is_none() {
            w.none()?;
        } else if ty == &raw mut ffi::PyBool_Type {
            w.boolean(obj.cast_unchecked::<PyBool>().is_true())?;
        } else {
            return Ok(false);
        }
    }
    Ok(true)
}

fn decimal(w: &mut Writer, obj: &Bound<'_, PyAny>) -> Result<(), Failed> {
    let (sign, digits, exponent): (u8, Vec<u8>, Bound<'_, PyAny>) = obj.call_method0("as_tuple")?.extract()?;
    let Ok(exponent) = exponent.extract::<i64>() else {
        return Err(Error::unsendable(format!("cannot jelly the non-finite Decimal {}", obj.str()?)));
    };
    let mut coefficient = BigInt::from(0);
    for d in digits {
        coefficient = coefficient * 10 + d;
    }
    if sign == 1 {
        coefficient = -coefficient;
    }
    Ok(w.decimal(&coefficient, exponent)?)
}

fn refuse_tz(has_tz: bool, what: &str) -> Result<(), Failed> {
    if has_tz {
        return Err(Error::unsendable(format!("cannot jelly a {what} with a tzinfo (Twisted has no form for it)")));
    }
    Ok(())
}

fn changed_size(what: &str) -> Failed {
    Error::Other(PyRuntimeError::new_err(format!("{what} changed size while it was being serialized")))
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
