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

use super::{parse_fields, tag, Tag};
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
pub struct JellyDecoder<'py, 'a> {
    py: Python<'py>,
    cur: Cursor<'a>,
    base: u64,
    refs: HashMap<i64, Slot<'py>>,
    hook: Option<&'a Bound<'py, PyAny>>,
    strings: &'a mut StrCache,
    depth: usize,
    max_depth: usize,
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
        let max_depth = limits.max_depth;
        JellyDecoder { py, cur, base, refs: HashMap::new(), hook, strings, depth: 0, max_depth }
    }

    /// Build the expression. With `whole`, bytes left after it are an error.
    pub fn build(&mut self, whole: bool) -> PyResult<Bound<'py, PyAny>> {
        // Collections triggered while thousands of containers are being created would traverse
        // the half-built value again and again; nothing cyclic becomes garbage during a build.
        let _gc = GcPause::new();
        let pos = 0;
        let built = self.value()?;
        if whole && !self.cur.at_end() {
            return Err(self.error("bytes after the expression".into(), self.cur.pos()));
        }
        for (id, slot) in &self.refs {
            if !matches!(slot, Slot::Ready(_)) {
                return Err(self.error(format!("dereference to reference id {id}, which is never defined"), pos));
            }
        }
        if built.placeholder.is_some() {
            return Err(self.error("the value is a reference to itself".into(), pos));
        }
        Ok(built.obj)
    }

    /// Bytes of the expression read so far (after [`JellyDecoder::build`], the value's length).
    pub fn consumed(&self) -> usize {
        self.cur.pos()
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
            return Err(self.error("too deep".into(), at));
        }
        Ok(())
    }

    fn error(&self, msg: String, at: usize) -> PyErr {
        jelly_error(msg, Some(self.base + at as u64))
    }

    fn value(&mut self) -> PyResult<Built<'py>> {
        // The most common jelly form by far is a str: ["unicode", STRING].
        let at = self.cur.pos();
        if let Some(s) = self.cur.unicode() {
            return match decode_utf8(self.py, s) {
                Ok(s) => Ok(Built::done(s.into_any())),
                Err(e) => Err(self.error(format!("unicode is not valid UTF-8 ({e})"), at)),
            };
        }
        let (token, at) = self.next()?;
        let py = self.py;
        let obj = match token {
            Item::Int(v) => v.into_pyobject(py)?.into_any(),
            Item::Float(f) => PyFloat::new(py, f).into_any(),
            Item::Bytes(s) => PyBytes::new(py, s).into_any(),
            Item::List(n) => {
                self.enter(at)?;
                let built = self.tagged(n, at, None);
                self.depth -= 1;
                return built;
            }
            big @ Item::BigInt { .. } => match big.integer() {
                Some(Integer::Big(v)) => v.into_pyobject(py)?.into_any(),
                Some(Integer::Small(v)) => v.into_pyobject(py)?.into_any(),
                None => return Err(self.error("bad integer".into(), at)),
            },
        };
        Ok(Built::done(obj))
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

    fn arity(&self, t: &[u8], got: usize, want: usize, at: usize) -> PyResult<()> {
        if got != want {
            return Err(self.error(format!("{} takes {want} item(s), got {got}", show(t)), at));
        }
        Ok(())
    }

    /// A jelly list of `n` banana elements at `at`. `register` is the reference id this value
    /// defines, for containers that can be registered before their items exist.
    fn tagged(&mut self, n: usize, at: usize, register: Option<i64>) -> PyResult<Built<'py>> {
        let t = self.tag(n, at)?;
        let items = n - 1;
        let py = self.py;
        let obj = match Tag::classify(t) {
            Tag::List => return self.list(items, register),
            Tag::Dictionary => return self.dict(items, register),
            Tag::Set => return self.set(items, register),
            Tag::Tuple => return self.tuple(items),
            Tag::Frozenset => return self.frozenset(items),
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
            Tag::Reference => return self.reference(items, at),
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
            Tag::Persistent => {
                self.arity(t, items, 1, at)?;
                self.value()?;
                unpersistable(py, "persistent reference, and no persistent loader here")?
            }
            Tag::Refused => {
                let msg = format!("jelly type {} is not allowed (it names code to import)", show(t));
                return Err(insecure_jelly(msg, Some(self.base + at as u64)));
            }
            Tag::Other => return self.hooked(t, items, at),
        };
        Ok(Built::done(obj))
    }

    fn list(&mut self, items: usize, register: Option<i64>) -> PyResult<Built<'py>> {
        let py = self.py;
        if let Some(id) = register {
            // Registered before its items: build by appending so no one sees empty slots.
            let list = PyList::empty(py);
            self.define(id, list.clone().into_any(), self.cur.pos())?;
            for i in 0..items {
                let item = self.value()?;
                list.append(&item.obj)?;
                if let Some(pid) = item.placeholder {
                    self.add_site(pid, Site::ListItem(list.clone(), i));
                }
            }
            return Ok(Built::done(list.into_any()));
        }
        // SAFETY: PyList_New returns a new list with `items` NULL slots, each filled exactly once
        // by PyList_SET_ITEM (which steals the reference) before the list is handed out; on an
        // early error the partly filled list is dropped, and list deallocation skips NULL slots.
        let list = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyList_New(items as ffi::Py_ssize_t))? };
        let list = list.cast_into::<PyList>()?;
        for i in 0..items {
            let item = self.value()?;
            if let Some(pid) = item.placeholder {
                self.add_site(pid, Site::ListItem(list.clone(), i));
            }
            // SAFETY: see above; `i` < `items`, and each slot is set once.
            unsafe { ffi::PyList_SET_ITEM(list.as_ptr(), i as ffi::Py_ssize_t, item.obj.into_ptr()) };
        }
        Ok(Built::done(list.into_any()))
    }

    fn tuple(&mut self, items: usize) -> PyResult<Built<'py>> {
        let py = self.py;
        let mut values = Vec::with_capacity(items);
        let mut holds_placeholder = false;
        for _ in 0..items {
            let item = self.value()?;
            holds_placeholder |= item.unhashable_yet();
            values.push(item);
        }
        let tuple = PyTuple::new(py, values.iter().map(|b| &b.obj))?;
        for (i, item) in values.iter().enumerate() {
            if let Some(pid) = item.placeholder {
                self.add_site(pid, Site::TupleItem(tuple.clone(), i));
            }
        }
        Ok(Built { obj: tuple.into_any(), placeholder: None, holds_placeholder })
    }

    fn dict(&mut self, items: usize, register: Option<i64>) -> PyResult<Built<'py>> {
        let dict = PyDict::new(self.py);
        if let Some(id) = register {
            self.define(id, dict.clone().into_any(), self.cur.pos())?;
        }
        for _ in 0..items {
            let at = self.cur.pos();
            match self.next()? {
                (Item::List(2), _) => self.enter(at)?,
                _ => return Err(self.error("dictionary items must be [key, value] pairs".into(), at)),
            }
            let key = self.key()?;
            if key.unhashable_yet() {
                return Err(self.error("a dictionary key refers to an object that is not built yet".into(), at));
            }
            let value = self.value()?;
            dict.set_item(&key.obj, &value.obj).map_err(|e| self.error(format!("bad dictionary key: {e}"), at))?;
            if let Some(pid) = value.placeholder {
                self.add_site(pid, Site::DictValue(dict.clone(), key.obj));
            }
            self.depth -= 1;
        }
        Ok(Built::done(dict.into_any()))
    }

    /// A dictionary key. Keys repeat from one dict to the next, so str keys come from the cache:
    /// one object, hashed once, instead of a new string per dict.
    #[inline]
    fn key(&mut self) -> PyResult<Built<'py>> {
        let at = self.cur.pos();
        match self.cur.unicode() {
            Some(s) => match self.strings.get(self.py, s) {
                Ok(s) => Ok(Built::done(s.into_any())),
                Err(e) => Err(self.error(format!("unicode is not valid UTF-8 ({e})"), at)),
            },
            None => self.value(),
        }
    }

    fn set(&mut self, items: usize, register: Option<i64>) -> PyResult<Built<'py>> {
        let set = PySet::empty(self.py)?;
        if let Some(id) = register {
            self.define(id, set.clone().into_any(), self.cur.pos())?;
        }
        for _ in 0..items {
            let item = self.member()?;
            set.add(item)?;
        }
        Ok(Built::done(set.into_any()))
    }

    fn frozenset(&mut self, items: usize) -> PyResult<Built<'py>> {
        let mut members = Vec::with_capacity(items);
        for _ in 0..items {
            members.push(self.member()?);
        }
        Ok(Built::done(PyFrozenSet::new(self.py, &members)?.into_any()))
    }

    fn member(&mut self) -> PyResult<Bound<'py, PyAny>> {
        let at = self.cur.pos();
        let item = self.value()?;
        if item.unhashable_yet() {
            return Err(self.error("a set member refers to an object that is not built yet".into(), at));
        }
        // Check hashability here so the error names the offset.
        item.obj.hash().map_err(|e| self.error(format!("bad set member: {e}"), at))?;
        Ok(item.obj)
    }

    fn ref_id(&mut self) -> PyResult<i64> {
        match self.int("reference id")? {
            Integer::Small(id) => Ok(id),
            Integer::Big(_) => Err(self.error("reference id out of range".into(), self.cur.pos())),
        }
    }

    fn reference(&mut self, items: usize, at: usize) -> PyResult<Built<'py>> {
        self.arity(tag::REFERENCE, items, 2, at)?;
        let id = self.ref_id()?;
        match self.refs.get(&id) {
            None | Some(Slot::Pending { .. }) => {}
            Some(_) => return Err(self.error(format!("reference id {id} is defined twice"), at)),
        }
        self.refs.entry(id).or_insert(Slot::Building);
        let value_at = self.cur.pos();
        let built = match self.next()? {
            (Item::List(n), list_at) => {
                self.enter(list_at)?;
                let built = self.tagged(n, list_at, Some(id))?;
                self.depth -= 1;
                built
            }
            _ => return Err(self.error("a reference must wrap a jelly list".into(), value_at)),
        };
        if built.placeholder == Some(id) {
            return Err(self.error(format!("reference {id} refers only to itself"), at));
        }
        if !matches!(self.refs.get(&id), Some(Slot::Ready(_))) {
            self.define(id, built.obj.clone(), at)?;
        }
        Ok(built)
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

    fn add_site(&mut self, id: i64, site: Site<'py>) {
        if let Some(Slot::Pending { sites, .. }) = self.refs.get_mut(&id) {
            sites.push(site);
        }
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

    /// Tags jelly does not know itself: the hook decides, with the items already unjellied.
    fn hooked(&mut self, t: &'a [u8], items: usize, at: usize) -> PyResult<Built<'py>> {
        let Some(hook) = self.hook else {
            return Err(insecure_jelly(unregistered(t), Some(self.base + at as u64)));
        };
        let mut values = Vec::with_capacity(items);
        for _ in 0..items {
            let item_at = self.cur.pos();
            let item = self.value()?;
            if item.placeholder.is_some() {
                return Err(self.error(format!("an item of {} refers to an object not built yet", show(t)), item_at));
            }
            values.push(item.obj);
        }
        let values = PyList::new(self.py, values)?;
        let obj = hook.call1((PyBytes::new(self.py, t), values))?;
        // NotImplemented: the hook does not know the tag either.
        if obj.is(self.py.NotImplemented()) {
            return Err(insecure_jelly(unregistered(t), Some(self.base + at as u64)));
        }
        Ok(Built::done(obj))
    }
}

/// Recently decoded short dict keys, so a key that repeats is one object, created and hashed once
/// (a decoder keeps its cache across messages).
pub struct StrCache {
    slots: Vec<Option<CachedStr>>,
}

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
        StrCache { slots: Vec::new() }
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
