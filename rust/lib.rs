//! pbfast's core: a sans-IO implementation of Twisted PB's banana and jelly and foolscap's banana
//! token layer.
//!
//! Nothing here touches sockets, timers, TLS or the clock. Bytes go in, values or events come out:
//!
//! 1. A [`banana::Framer`] is fed each received chunk and hands back every complete top-level
//!    expression as one slice (limits are enforced while scanning, before anything is buffered).
//! 2. A builder turns an expression into values: [`banana::Value`] here, Python objects (with
//!    jelly applied) in the `python` feature.
//! 3. Outgoing values are encoded with a [`banana::Encoder`] into one buffer per message.
//!
//! The `python` feature adds the PyO3 module `pbfast._core`; without it the crate is plain Rust
//! and `cargo test` needs no interpreter.

pub mod banana;
pub mod jelly;
#[cfg(feature = "python")]
mod py;

/// The extension module `pbfast._core`.
#[cfg(feature = "python")]
#[pyo3::pymodule]
mod _core {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::jelly::decode::UnresolvedReference;
    #[pymodule_export]
    use crate::py::{banana_decode, banana_encode, dumps, encode_tokens, loads, DecoderPy, TokenizerPy};

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        use crate::banana::{vocab, PREFIX_LIMIT, SIZE_LIMIT};
        let words = |table: &[&[u8]]| table.iter().map(|w| pyo3::types::PyBytes::new(m.py(), w)).collect::<Vec<_>>();
        m.add("SIZE_LIMIT", SIZE_LIMIT)?;
        m.add("PREFIX_LIMIT", PREFIX_LIMIT)?;
        m.add("PB_VOCAB", pyo3::types::PyTuple::new(m.py(), words(&vocab::PB_VOCAB))?)?;
        m.add("FOOLSCAP_VOCAB", pyo3::types::PyTuple::new(m.py(), words(&vocab::FOOLSCAP_VOCAB))?)?;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("build_profile", if cfg!(debug_assertions) { "debug" } else { "release" })?;
        Ok(())
    }
}
