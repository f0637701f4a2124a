//! Helpers on Python objects that both codecs use: str from and to UTF-8, the cache of decoded
//! strings, the garbage collector's pause, `Decimal`, class names.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString, PyType};

use crate::jelly::decode::Scratch;
use crate::jelly::{pair_start, PairStart};

/// Recently decoded short strings (dict keys, method names), so a string that repeats is one
/// object, created and hashed once (a decoder keeps its cache across messages); and the allocation
/// of the last jelly walk's stack, so that the next message costs none.
pub struct StrCache {
    slots: Vec<Option<CachedStr>>,
    /// The key last met at each of a dict's first pairs: dicts of one shape follow one another,
    /// so a dict's key is nearly always the one the last dict had at its place, found here
    /// without hashing its bytes or reaching into the larger table.
    by_pair: [Option<CachedStr>; Self::PAIRS],
    /// The same keys, by the bytes that start their pair ([`pair_start`]), as words and the
    /// masks of their bytes: a pair whose start is the same is known by a few compares.
    pair_starts: [Option<KnownPair>; Self::PAIRS],
    /// The strs of one ASCII character, by their code (Python's own, taken once): the commonest
    /// short strs, each found by an index rather than a call.
    chars: Vec<Option<Py<PyString>>>,
    pub(crate) scratch: Scratch,
}

/// See [`StrCache::known_pair`].
struct KnownPair {
    words: [u64; KnownPair::WORDS],
    masks: [u64; KnownPair::WORDS],
    len: usize,
    string: Py<PyString>,
}

impl KnownPair {
    const WORDS: usize = PairStart::ROOM / 8;

    fn new(start: &PairStart, string: Py<PyString>) -> KnownPair {
        let mut words = [0; KnownPair::WORDS];
        let mut masks = [0; KnownPair::WORDS];
        for (i, (word, mask)) in words.iter_mut().zip(&mut masks).enumerate() {
            let chunk = &start.bytes[i * 8..i * 8 + 8];
            *word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            let valid = start.len.saturating_sub(i * 8).min(8);
            *mask = if valid == 8 { !0 } else { (1u64 << (valid * 8)) - 1 };
        }
        KnownPair { words, masks, len: start.len, string }
    }
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
    const PAIRS: usize = 8;

    pub fn new() -> StrCache {
        StrCache {
            slots: Vec::new(),
            by_pair: Default::default(),
            pair_starts: Default::default(),
            chars: Vec::new(),
            scratch: Scratch::default(),
        }
    }

    /// The str of UTF-8 `bytes` (a `UnicodeDecodeError` if they are not UTF-8), the one of a
    /// single ASCII character from this cache.
    #[inline(always)]
    pub fn text<'py>(&mut self, py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
        if let [c @ 0..0x80] = *bytes {
            if let Some(Some(s)) = self.chars.get(usize::from(c)) {
                return Ok(s.bind(py).clone());
            }
            return self.char_miss(py, c);
        }
        decode_utf8(py, bytes)
    }

    #[inline(never)]
    fn char_miss<'py>(&mut self, py: Python<'py>, c: u8) -> PyResult<Bound<'py, PyString>> {
        let s = decode_utf8(py, &[c])?;
        if self.chars.is_empty() {
            self.chars.resize_with(0x80, || None);
        }
        self.chars[usize::from(c)] = Some(s.clone().unbind());
        Ok(s)
    }

    /// The key of a dict's pair number `pair` if `rest`, the bytes at the pair, start as the
    /// pair there last did (see [`crate::jelly::decode::Build::known_pair`]).
    #[inline(always)]
    pub fn known_pair<'py>(&self, py: Python<'py>, rest: &[u8], pair: usize) -> Option<(Bound<'py, PyString>, usize)> {
        let known = self.pair_starts.get(pair)?.as_ref()?;
        let window: &[u8; PairStart::ROOM] = rest.get(..PairStart::ROOM)?.try_into().ok()?;
        let mut differ = 0;
        for i in 0..KnownPair::WORDS {
            let word = u64::from_le_bytes(*window[i * 8..].first_chunk::<8>().expect("8 bytes"));
            differ |= (word ^ known.words[i]) & known.masks[i];
        }
        (differ == 0).then(|| (known.string.bind(py).clone(), known.len))
    }

    /// [`StrCache::get`] for the key of a dict's pair number `pair`.
    #[inline(always)]
    pub fn key<'py>(&mut self, py: Python<'py>, bytes: &[u8], pair: usize) -> PyResult<Bound<'py, PyString>> {
        let len = bytes.len();
        let Some(last) = self.by_pair.get(pair) else { return self.get(py, bytes) };
        if len > Self::MAX_LEN {
            return self.miss(py, bytes);
        }
        let key = key_of(bytes);
        if let Some(c) = last {
            if c.len == len && same_key(&c.key, &key) {
                return Ok(c.string.bind(py).clone());
            }
        }
        self.pair_miss(py, bytes, pair)
    }

    /// A key not found at its pair's place: looked up in the table, and remembered there.
    #[inline(never)]
    fn pair_miss<'py>(&mut self, py: Python<'py>, bytes: &[u8], pair: usize) -> PyResult<Bound<'py, PyString>> {
        let string = self.get(py, bytes)?;
        let (len, key) = (bytes.len(), key_of(bytes));
        self.by_pair[pair] = Some(CachedStr { len, key, string: string.clone().unbind() });
        self.pair_starts[pair] = pair_start(bytes).map(|start| KnownPair::new(&start, string.clone().unbind()));
        Ok(string)
    }

    /// The `str` for UTF-8 `bytes`; a `UnicodeDecodeError` if they are not UTF-8.
    #[inline(always)]
    pub fn get<'py>(&mut self, py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
        let len = bytes.len();
        if len > Self::MAX_LEN || self.slots.is_empty() {
            return self.miss(py, bytes);
        }
        let key = key_of(bytes);
        if let Some(c) = &self.slots[Self::slot(len, key)] {
            if c.len == len && same_key(&c.key, &key) {
                return Ok(c.string.bind(py).clone());
            }
        }
        self.miss(py, bytes)
    }

    /// The slot of a string by its length and key.
    #[inline(always)]
    fn slot(len: usize, key: [u64; 3]) -> usize {
        let h =
            (key[0] ^ key[1].rotate_left(21) ^ key[2].rotate_left(42) ^ len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> (64 - Self::SLOTS.trailing_zeros())) as usize
    }

    /// A string not in the cache: decoded, and cached if it is short.
    #[inline(never)]
    fn miss<'py>(&mut self, py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
        let string = decode_utf8(py, bytes)?;
        let len = bytes.len();
        if len <= Self::MAX_LEN {
            if self.slots.is_empty() {
                self.slots.resize_with(Self::SLOTS, || None);
            }
            let key = key_of(bytes);
            self.slots[Self::slot(len, key)] = Some(CachedStr { len, key, string: string.clone().unbind() });
        }
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

/// Whether two keys are equal, compared word by word in registers: a compare of the arrays as
/// a whole reads the one just built back from memory in one wide load, which must wait for the
/// narrower stores that wrote it.
#[inline(always)]
fn same_key(a: &[u64; 3], b: &[u64; 3]) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) == 0
}

/// A `str` from UTF-8 bytes (a `UnicodeDecodeError` if they are not), in one pass.
#[inline]
pub(crate) fn decode_utf8<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
    // One ASCII character is one of Python's cached one-character strings; longer ASCII, the common
    // case, is copied into a new compact string.
    if let [c @ 0..0x80] = *bytes {
        // SAFETY: a C API constructor returning a new reference (or NULL with an exception set).
        return unsafe {
            Ok(Bound::from_owned_ptr_or_err(py, ffi::PyUnicode_FromOrdinal(c.into()))?.cast_into_unchecked())
        };
    }
    if bytes.len() > 1 && bytes.is_ascii() {
        // SAFETY: PyUnicode_New(n, 127) returns a new compact ASCII string with room for n
        // characters of one byte each (and its terminating NUL) or NULL with an exception set;
        // the n ASCII bytes are copied into that room before anyone else sees the string.
        unsafe {
            let s = Bound::from_owned_ptr_or_err(py, ffi::PyUnicode_New(bytes.len() as ffi::Py_ssize_t, 127))?;
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), ffi::PyUnicode_DATA(s.as_ptr()).cast::<u8>(), bytes.len());
            return Ok(s.cast_into_unchecked());
        }
    }
    // SAFETY: the pointer and length describe `bytes`; PyUnicode_DecodeUTF8 copies them and
    // returns a new reference or NULL with an exception set.
    unsafe {
        let ptr = ffi::PyUnicode_DecodeUTF8(bytes.as_ptr().cast(), bytes.len() as ffi::Py_ssize_t, c"strict".as_ptr());
        Ok(Bound::from_owned_ptr_or_err(py, ptr)?.cast_into_unchecked())
    }
}

/// The UTF-8 bytes of a str, read in place for compact ASCII strings (the common case) and
/// through `PyUnicode_AsUTF8AndSize` otherwise; None if it holds lone surrogates.
#[inline]
pub(crate) fn utf8_of<'a>(s: &'a Bound<'_, PyString>) -> Option<&'a [u8]> {
    let ptr = s.as_ptr();
    // SAFETY: `ptr` is a live str for the lifetime of `s`. A compact ASCII string keeps its
    // characters, one byte each, right after the object header, and never moves or changes them.
    unsafe {
        if ffi::PyUnicode_IS_COMPACT_ASCII(ptr) != 0 {
            let data = ffi::PyUnicode_DATA(ptr).cast::<u8>();
            return Some(std::slice::from_raw_parts(data, ffi::PyUnicode_GET_LENGTH(ptr) as usize));
        }
    }
    s.to_str().ok().map(str::as_bytes)
}

/// Pauses the cyclic garbage collector for its lifetime, if it was running: collections
/// triggered while thousands of containers are being created would traverse the half-built value
/// again and again, and nothing cyclic becomes garbage meanwhile.
///
/// The switch is the interpreter's, shared by every thread; with the GIL only one thread builds
/// at a time (a hook that releases it lets others build with collections paused, which is only
/// later collecting). Free-threaded, builders run side by side and would turn it off and on
/// under each other, so there it is left alone.
pub(crate) struct GcPause(bool);

impl GcPause {
    pub(crate) fn new() -> GcPause {
        #[cfg(not(Py_GIL_DISABLED))]
        // SAFETY: called with the GIL held (we are building Python objects).
        return GcPause(unsafe { ffi::PyGC_Disable() } != 0);
        #[cfg(Py_GIL_DISABLED)]
        GcPause(false)
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

/// Twisted's `qual()`: `__module__` and `__name__` of a class (not `__qualname__`: a nested class
/// is named as if it were at module level, and the wire must say what Twisted says).
pub fn qualified_name(cls: &Bound<'_, PyType>) -> PyResult<String> {
    Ok(format!("{}.{}", cls.module()?, cls.name()?))
}

/// `decimal.Decimal`.
pub fn decimal_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static DECIMAL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    DECIMAL.import(py, "decimal", "Decimal")
}

/// An item of a list or dict being written (by either wire's encoder). With the GIL, a borrowed
/// reference: writing a scalar runs no Python code, so nothing can change the container
/// meanwhile, and an item that is not a scalar is made an owned reference before the walk goes on. Free-threaded, another thread may
/// change the container at any time, so every item is an owned reference taken under its lock.
#[cfg(not(Py_GIL_DISABLED))]
pub(crate) type Entry<'a, 'py> = pyo3::Borrowed<'a, 'py, PyAny>;
#[cfg(Py_GIL_DISABLED)]
pub(crate) type Entry<'a, 'py> = Bound<'py, PyAny>;

/// Item `index` of `list`, which has more than `index` items.
#[inline(always)]
pub(crate) fn list_item<'a, 'py>(list: &'a Bound<'py, PyList>, index: usize) -> PyResult<Entry<'a, 'py>> {
    // SAFETY: `index < len(list)` (the caller's check), and with the GIL held no other thread can
    // change the list while the item is used (see `Entry`).
    #[cfg(not(Py_GIL_DISABLED))]
    return Ok(unsafe {
        pyo3::Borrowed::from_ptr(list.py(), ffi::PyList_GET_ITEM(list.as_ptr(), index as ffi::Py_ssize_t))
    });
    // Free-threaded: PyList_GetItemRef reads the item and takes its reference under the list's lock.
    #[cfg(Py_GIL_DISABLED)]
    list.get_item(index)
}

/// The next (key, value) of `dict` from position `pos`; None at its end.
#[inline(always)]
pub(crate) fn dict_next<'a, 'py>(
    dict: &'a Bound<'py, PyDict>,
    pos: &mut ffi::Py_ssize_t,
) -> Option<(Entry<'a, 'py>, Entry<'a, 'py>)> {
    let (mut key, mut value) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: PyDict_Next hands out borrowed pointers to the dict's current entry, used as `Entry`
    // says.
    #[cfg(not(Py_GIL_DISABLED))]
    return unsafe {
        (ffi::PyDict_Next(dict.as_ptr(), pos, &mut key, &mut value) != 0)
            .then(|| (pyo3::Borrowed::from_ptr(dict.py(), key), pyo3::Borrowed::from_ptr(dict.py(), value)))
    };
    // Free-threaded: the entry is read and its references taken under the dict's lock.
    #[cfg(Py_GIL_DISABLED)]
    pyo3::sync::with_critical_section(dict, || unsafe {
        (ffi::PyDict_Next(dict.as_ptr(), pos, &mut key, &mut value) != 0)
            .then(|| (Bound::from_borrowed_ptr(dict.py(), key), Bound::from_borrowed_ptr(dict.py(), value)))
    })
}
