//! Running a received call on a plain `Referenceable` without a Python frame of the broker's:
//! the dispatch both wires' fast paths share (`fast.rs` for PB, `foolscap.rs` for a Tub).
//!
//! A type is plain when it keeps the default dispatch (the broker's `is_plain` decides, asked once
//! per type): a call on it is ``remote_<name>(*args, **kwargs)``. [`Dispatch::call`] declines
//! anything else — another type, a missing method; [`Dispatch::call_any`] runs those the way
//! the object asks (its `remoteMessageReceived`) and reports a missing method the way the wire
//! does ([`Flavor`]), and [`Dispatch::call_function`] runs a callable (a foolscap callable's
//! negative clid), so every call of either wire is dispatched here whatever its target.

use pyo3::exceptions::{PyAttributeError, PyException};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};

use super::metrics::Tally;
use super::PtrMap;

/// Method names remembered per connection (a peer may send any number of distinct names).
const MAX_NAMES: usize = 256;

/// What running a call came to.
pub enum Called<'py> {
    /// The method returned this (not awaitable).
    Returned(Bound<'py, PyAny>),
    /// The method returned an awaitable: the broker awaits it and replies.
    Awaiting(Bound<'py, PyAny>),
    /// The method raised.
    Raised(PyErr),
    /// Not a call for this path (not a plain type, or no such method): the broker runs it.
    Declined,
}

/// What running a call on any object came to (see [`Dispatch::call_any`]).
pub enum Ran<'py> {
    /// The result (not awaitable), and the perspective it is sent for, if not the default.
    Returned(Bound<'py, PyAny>, Option<Bound<'py, PyAny>>),
    /// An awaitable result, and the perspective its result is sent for.
    Awaiting(Bound<'py, PyAny>, Option<Bound<'py, PyAny>>),
    /// The method (or the lookup of it) raised.
    Raised(PyErr),
}

/// Whose rules the dispatch follows where the wires differ.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Twisted PB: a missing method of a plain object is reported by its
    /// `remoteMessageReceived` (`NoSuchMethod`, Twisted's wording); a result is sent for the
    /// object's `serializingPerspective()`.
    Pb,
    /// foolscap: a missing method is the lookup's own `AttributeError`, as foolscap reports it;
    /// there are no perspectives (`serializingPerspective` is never asked).
    Foolscap,
}

/// The per-connection caches of the dispatch.
pub struct Dispatch {
    flavor: Flavor,
    /// `is_plain(type) -> bool`.
    is_plain: Py<PyAny>,
    /// Type -> whether it dispatches with the default; the type is kept so its address is not
    /// reused while it is a key.
    types: PtrMap<(Py<PyType>, bool)>,
    /// Method name (the decoder's cached str, kept alive likewise) -> `"remote_<name>"`.
    names: PtrMap<(Py<PyString>, Py<PyString>)>,
    /// The calls counted by the metrics, and the labels of the names met.
    pub tally: Tally,
}

impl Dispatch {
    pub fn new(is_plain: Py<PyAny>, flavor: Flavor) -> Dispatch {
        Dispatch { flavor, is_plain, types: PtrMap::default(), names: PtrMap::default(), tally: Tally::default() }
    }

    /// Run `method(*args, **kwargs)` on `target` if it is plain. Errors are only those that are
    /// not the caller's business (KeyboardInterrupt, SystemExit, a failing `is_plain`).
    pub fn call<'py>(
        &mut self,
        py: Python<'py>,
        target: &Bound<'py, PyAny>,
        method: &Bound<'py, PyString>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Called<'py>> {
        if !self.plain(py, target)? {
            return Ok(Called::Declined);
        }
        let attribute = self.attribute_name(py, method);
        let called = match kwargs {
            None => call_method(target, &attribute, args),
            Some(kwargs) => match target.getattr(&attribute) {
                Ok(method) => method.call(args, Some(kwargs)),
                Err(_) => return Ok(Called::Declined),
            },
        };
        Ok(match called {
            Ok(result) if awaitable(&result) => Called::Awaiting(result),
            Ok(result) => Called::Returned(result),
            // No such method: the broker reports it (the method never ran).
            Err(e) if e.is_instance_of::<PyAttributeError>(py) && !target.hasattr(&attribute)? => Called::Declined,
            Err(e) if !e.is_instance_of::<PyException>(py) => return Err(e),
            Err(e) => Called::Raised(e),
        })
    }

    /// Run a call on any object: plain ones as [`Dispatch::call`] does, the others through
    /// `target.remoteMessageReceived(broker, method, args, kwargs)` (which reports a missing
    /// method itself). A plain object's missing method is reported as the [`Flavor`] says. With
    /// PB's, the second item is then `target.serializingPerspective()`, the perspective the
    /// result is sent for (None when it is the default); with foolscap's it is always None.
    #[allow(clippy::too_many_arguments)]
    pub fn call_any<'py>(
        &mut self,
        py: Python<'py>,
        broker: &Bound<'py, PyAny>,
        target: &Bound<'py, PyAny>,
        method: &Bound<'py, PyString>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Ran<'py>> {
        match self.call(py, target, method, args, kwargs)? {
            Called::Returned(result) => return Ok(Ran::Returned(result, None)),
            Called::Awaiting(awaitable) => return Ok(Ran::Awaiting(awaitable, None)),
            Called::Raised(e) => return Ok(Ran::Raised(e)),
            Called::Declined => {}
        }
        if self.flavor == Flavor::Foolscap && self.plain(py, target)? {
            // No such method: foolscap's error is the lookup's (`getattr` raises it, with
            // Python's own message), or, should the method have appeared meanwhile, its call.
            let attribute = self.attribute_name(py, method);
            return ran(py, target.getattr(&attribute).and_then(|m| m.call(args, kwargs)), None);
        }
        let kwargs = match kwargs {
            Some(kwargs) => kwargs.clone(),
            None => PyDict::new(py),
        };
        let result = target.call_method1(pyo3::intern!(py, "remoteMessageReceived"), (broker, method, args, kwargs));
        if self.flavor == Flavor::Foolscap {
            return ran(py, result, None);
        }
        let ran_for = result.and_then(|result| {
            let perspective = target.call_method0(pyo3::intern!(py, "serializingPerspective"))?;
            Ok((result, perspective))
        });
        match ran_for {
            Ok((result, perspective)) => ran(py, Ok(result), (!perspective.is_none()).then_some(perspective)),
            Err(e) => ran(py, Err(e), None),
        }
    }

    /// Run `target(*args, **kwargs)`: a call on a callable the peer holds (foolscap's negative
    /// clids), whatever its type.
    pub fn call_function<'py>(
        &mut self,
        py: Python<'py>,
        target: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Ran<'py>> {
        ran(py, target.call(args, kwargs), None)
    }

    /// Whether calls on `target` may run here (`is_plain`, cached per type).
    fn plain(&mut self, py: Python<'_>, target: &Bound<'_, PyAny>) -> PyResult<bool> {
        let cls = target.get_type();
        let key = cls.as_ptr() as usize;
        if let Some((_, plain)) = self.types.get(&key) {
            return Ok(*plain);
        }
        let plain = self.is_plain.bind(py).call1((&cls,))?.is_truthy()?;
        // The type is kept alive, so its address cannot be reused by another type.
        self.types.insert(key, (cls.unbind(), plain));
        Ok(plain)
    }

    /// `"remote_" + name`, made once per distinct name. This is `prefixed_method`'s lookup
    /// without a Python frame per call; a miss is declined, so only the broker reports it.
    fn attribute_name<'py>(&mut self, py: Python<'py>, name: &Bound<'py, PyString>) -> Bound<'py, PyString> {
        let key = name.as_ptr() as usize;
        if let Some((_, attribute)) = self.names.get(&key) {
            return attribute.bind(py).clone();
        }
        let attribute = PyString::new(py, &format!("remote_{}", name.to_string_lossy()));
        if self.names.len() < MAX_NAMES {
            self.names.insert(key, (name.clone().unbind(), attribute.clone().unbind()));
        }
        attribute
    }

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.is_plain)
    }
}

/// What a call that ran came to: its result (awaitable or not), or what it raised. Errors are
/// only those that are not the caller's business (KeyboardInterrupt, SystemExit).
fn ran<'py>(
    py: Python<'py>,
    result: PyResult<Bound<'py, PyAny>>,
    perspective: Option<Bound<'py, PyAny>>,
) -> PyResult<Ran<'py>> {
    Ok(match result {
        Ok(result) if awaitable(&result) => Ran::Awaiting(result, perspective),
        Ok(result) => Ran::Returned(result, perspective),
        Err(e) if !e.is_instance_of::<PyException>(py) => return Err(e),
        Err(e) => Ran::Raised(e),
    })
}

/// `target.<name>(*args)` without making a bound method (CPython finds the function on the
/// type and calls it with `target` first, unless the instance shadows it).
fn call_method<'py>(
    target: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
    args: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    const INLINE: usize = 8;
    let n = args.len();
    let mut inline = [std::ptr::null_mut::<ffi::PyObject>(); INLINE + 1];
    let mut heap = Vec::new();
    let argv: &mut [*mut ffi::PyObject] = if n < INLINE {
        &mut inline[..=n]
    } else {
        heap.resize(n + 1, std::ptr::null_mut());
        &mut heap
    };
    argv[0] = target.as_ptr();
    for (slot, item) in argv[1..].iter_mut().zip(args.iter_borrowed()) {
        *slot = item.as_ptr();
    }
    // SAFETY: every pointer in `argv` is borrowed from `target` or the `args` tuple, both alive
    // for the call; CPython may use slot 0 as scratch only with PY_VECTORCALL_ARGUMENTS_OFFSET,
    // which it clears when it passes `target` on as the first argument.
    unsafe {
        let result = ffi::PyObject_VectorcallMethod(
            name.as_ptr(),
            argv.as_ptr(),
            (n + 1) | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET,
            std::ptr::null_mut(),
        );
        Bound::from_owned_ptr_or_err(target.py(), result)
    }
}

/// Whether `obj` can be awaited (its type fills the `am_await` slot: coroutines, futures,
/// tasks and any class with `__await__`).
fn awaitable(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: `obj` is a live object; its type object outlives this read of two slots.
    unsafe {
        let ty = ffi::Py_TYPE(obj.as_ptr());
        let methods = (*ty).tp_as_async;
        !methods.is_null() && (*methods).am_await.is_some()
    }
}
