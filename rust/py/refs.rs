//! `pbfast._core.RefTable`: the Python face of [`crate::refs::RefTable`].

use pyo3::prelude::*;

use crate::refs::{RefError, RefTable};

pyo3::import_exception!(pbfast.errors, LimitExceeded);
pyo3::import_exception!(pbfast.errors, ProtocolError);

impl From<RefError> for PyErr {
    fn from(e: RefError) -> PyErr {
        match e {
            // Raised while sending: the call that tried fails, as in Twisted.
            RefError::Full { .. } => LimitExceeded::new_err((e.to_string(), "max_refs")),
            // Only the peer names luids: it broke the protocol.
            RefError::Unknown { .. } => ProtocolError::new_err(e.to_string()),
        }
    }
}

/// Which of our objects the peer holds: luid, count and pins per object key (`id(obj)`).
#[pyclass(module = "pbfast._core", name = "RefTable")]
pub struct RefTablePy(RefTable);

#[pymethods]
impl RefTablePy {
    #[new]
    #[pyo3(signature = (limit=1 << 16))]
    fn new(limit: usize) -> RefTablePy {
        RefTablePy(RefTable::new(limit))
    }

    /// Count one more `remote` of object `key`: `(luid, is_new)`. Raises `pbfast.LimitExceeded`
    /// (`max_refs`) when the table is full.
    fn send(&mut self, key: u64) -> PyResult<(u64, bool)> {
        Ok(self.0.send(key)?)
    }

    /// Keep each luid until `unpin`, whatever decrefs arrive (its call's reply is still to come).
    pub(crate) fn pin(&mut self, luids: Vec<u64>) -> PyResult<()> {
        for luid in luids {
            self.0.pin(luid)?;
        }
        Ok(())
    }

    /// Drop one pin from each luid; returns the luids this freed.
    fn unpin(&mut self, luids: Vec<u64>) -> PyResult<Vec<u64>> {
        let mut freed = Vec::new();
        for luid in luids {
            if self.0.unpin(luid)? {
                freed.push(luid);
            }
        }
        Ok(freed)
    }

    /// The peer dropped `count` references to `luid`; True if the entry is gone. Raises
    /// `ProtocolError` for a luid the peer does not hold.
    #[pyo3(signature = (luid, count=1))]
    fn decref(&mut self, luid: u64, count: u64) -> PyResult<bool> {
        Ok(self.0.decref(luid, count)?)
    }

    fn luid_of(&self, key: u64) -> Option<u64> {
        self.0.luid_of(key)
    }

    fn count(&self, luid: u64) -> u64 {
        self.0.count(luid)
    }

    fn __contains__(&self, luid: u64) -> bool {
        self.0.contains(luid)
    }

    fn __len__(&self) -> usize {
        self.0.len()
    }

    #[getter]
    fn limit(&self) -> usize {
        self.0.limit()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}
