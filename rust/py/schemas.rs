//! The string limits a Tub's decoder holds calls to as they arrive (see
//! [`crate::foolscap::MessageFramer::feed_limited`]): a call on an object whose class declares
//! a `RemoteInterface` may carry no string longer than its method's arguments admit, so a longer
//! one is refused before it is buffered.
//!
//! The broker's `call_limits(type)` says, once per type, whether calls on its objects are checked
//! against an interface and, if so, the longest string each method's arguments may hold. Calls
//! on any other object (and on the Tub itself, clid 0, or a callable, a negative clid) cost one
//! lookup by type; while no such object has been filed in the connection's tables
//! (`Session.checks_calls`), nothing is asked at all.

use std::collections::HashMap;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyType;

use super::tables::Tables;
use super::PtrMap;
use crate::foolscap::framer::CallHeader;

/// One interface's limits.
struct Interface {
    /// Its `__remote_name__`.
    name: String,
    /// Method name -> the longest string its arguments may hold (None: unbounded).
    methods: HashMap<Box<[u8]>, Option<u64>>,
}

/// The call last given a limit, for the message should it be refused.
struct Asked {
    interface: Arc<Interface>,
    method: Box<[u8]>,
    /// The method's limit; None: the interface has no such method.
    limit: Option<u64>,
}

/// One connection's call limits, by target type.
pub struct CallLimits {
    /// `call_limits(type)`: None, or `(interface name, {method name: limit or None})`.
    ask: Py<PyAny>,
    /// Type -> its interface's limits (None: its calls are not checked); the type is kept so
    /// its address is not reused while it is a key.
    types: PtrMap<(Py<PyType>, Option<Arc<Interface>>)>,
    /// No call is held below this: sequence type words, up to `max_index_length` bytes, may
    /// come as STRINGs.
    floor: u64,
    asked: Option<Asked>,
}

impl CallLimits {
    pub fn new(ask: Py<PyAny>, floor: u64) -> CallLimits {
        CallLimits { ask, types: PtrMap::default(), floor, asked: None }
    }

    /// The longest string `call` (on one of the objects in `tables`) may hold in its arguments (None: no limit of its own). A method
    /// the interface lacks is limited to the floor: the call is refused anyway.
    pub fn limit(&mut self, py: Python<'_>, tables: &Tables, call: CallHeader<'_>) -> PyResult<Option<u64>> {
        if call.clid <= 0 {
            return Ok(None);
        }
        let Some(target) = tables.object_at(py, call.clid) else { return Ok(None) };
        let Some(interface) = self.interface_of(py, &target)? else { return Ok(None) };
        let limit = match interface.methods.get(call.method) {
            Some(None) => return Ok(None),
            Some(&Some(limit)) => Some(limit),
            None => None,
        };
        let effective = limit.unwrap_or(0).max(self.floor);
        self.asked = Some(Asked { interface, method: call.method.into(), limit });
        Ok(Some(effective))
    }

    /// Why the call last given a limit was refused: a string of `length` bytes, at stream
    /// offset `at`.
    pub fn refusal(&self, length: u64, at: u64) -> String {
        let Some(asked) = &self.asked else { return too_long(length, at) };
        let (interface, method) = (&asked.interface.name, String::from_utf8_lossy(&asked.method));
        match asked.limit {
            // As `RemoteInterface.method` words it.
            None => format!("{interface} has no method '{method}'"),
            Some(limit) => format!(
                "{interface}.{method}: a string of {length} bytes at byte {at} in the arguments, refused as it \
                 arrived: the interface allows at most {limit}"
            ),
        }
    }

    fn interface_of(&mut self, py: Python<'_>, target: &Bound<'_, PyAny>) -> PyResult<Option<Arc<Interface>>> {
        let cls = target.get_type();
        let key = cls.as_ptr() as usize;
        if let Some((_, interface)) = self.types.get(&key) {
            return Ok(interface.clone());
        }
        let limits: Option<(String, HashMap<String, Option<u64>>)> = self.ask.bind(py).call1((&cls,))?.extract()?;
        let interface = limits.map(|(name, methods)| {
            let methods = methods.into_iter().map(|(method, limit)| (method.into_bytes().into(), limit)).collect();
            Arc::new(Interface { name, methods })
        });
        self.types.insert(key, (cls.unbind(), interface.clone()));
        Ok(interface)
    }

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.ask)
    }
}

/// Why a call was refused, when nothing more is known of it.
pub fn too_long(length: u64, at: u64) -> String {
    format!("a string of {length} bytes at byte {at} is longer than the call may hold")
}
