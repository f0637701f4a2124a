//! pbfast's core: a sans-IO implementation of Twisted PB's banana and jelly, and of foolscap's
//! banana and PB messages.
//!
//! Nothing here touches sockets, timers or the clock. Bytes (and the time) go in, values, events
//! or decisions come out:
//!
//! 1. A [`banana::Framer`] is fed each received chunk and hands back every complete top-level
//!    expression as one slice (limits are enforced while scanning, before anything is buffered).
//! 2. A builder turns an expression into values: [`banana::Value`] here, Python objects (with
//!    jelly applied) in the `python` feature.
//! 3. On a PB connection, a [`pb::Session`] negotiates the dialect and reads each expression as
//!    a command envelope around jelly values (`py::pb` hands Python one event tuple per
//!    command); [`refs::RefTable`] keeps the counts of the objects the peer holds.
//! 4. Outgoing values are encoded with a [`banana::Encoder`] into one buffer per message.
//!
//! foolscap connections use [`foolscap`] instead of steps 1-3: a [`foolscap::MessageFramer`]
//! splits the stream into top-level sequences, and [`foolscap::decode`] reads each as a call,
//! answer or error; [`foolscap::encode::Writer`] writes them. Below that a [`tls::TlsSession`]
//! turns received ciphertext into plaintext and outgoing messages into records, and exposes the
//! peer's certificate so its TubID can be checked.
//!
//! [`liveness::Liveness`] decides, from the times it is given, when a connection pings its peer
//! or closes for a handshake or a silence that lasted too long.
//!
//! The `python` feature adds the PyO3 module `pbfast._core`; without it the crate is plain Rust
//! and `cargo test` needs no interpreter.

pub mod banana;
pub mod foolscap;
pub mod ids;
pub mod jelly;
pub mod liveness;
pub mod pb;
#[cfg(feature = "python")]
mod py;
pub mod refs;
pub mod tls;
pub mod tubid;

/// The extension module `pbfast._core`.
#[cfg(feature = "python")]
#[pyo3::pymodule]
mod _core {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::py::foolscap::{FoolscapDecoderPy, FoolscapEncoderPy};
    #[pymodule_export]
    use crate::py::fs_session::FoolscapSession;
    #[pymodule_export]
    use crate::py::jelly::UnresolvedReference;
    #[pymodule_export]
    use crate::py::liveness::LivenessPy;
    #[pymodule_export]
    use crate::py::metrics::{metrics_collect, metrics_enable, metrics_enabled, metrics_record};
    #[pymodule_export]
    use crate::py::negotiate::NegotiationPy;
    #[pymodule_export]
    use crate::py::pb::{PbDecoderPy, PbEncoderPy};
    #[pymodule_export]
    use crate::py::pb_session::PbSession;
    #[pymodule_export]
    use crate::py::session::SessionPy;
    #[pymodule_export]
    use crate::py::tls::TlsSessionPy;
    #[pymodule_export]
    use crate::py::tubid::{base32, format_furl, parse_furl, parse_hint, tub_id};
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
        use crate::py::pb;
        m.add("PB_VERSION", crate::pb::PB_VERSION)?;
        m.add("EARLY_WRITE", crate::py::session::EARLY_WRITE)?;
        m.add("FLUSH_AT", crate::py::session::FLUSH_AT)?;
        for (name, kind) in [
            ("EV_MESSAGE", pb::EV_MESSAGE),
            ("EV_CACHEMESSAGE", pb::EV_CACHEMESSAGE),
            ("EV_ANSWER", pb::EV_ANSWER),
            ("EV_ERROR", pb::EV_ERROR),
            ("EV_BAD_CALL", pb::EV_BAD_CALL),
            ("EV_BAD_REPLY", pb::EV_BAD_REPLY),
            ("EV_DECREF", pb::EV_DECREF),
            ("EV_DECACHE", pb::EV_DECACHE),
            ("EV_UNCACHE", pb::EV_UNCACHE),
            ("EV_READY", pb::EV_READY),
            ("EV_UNKNOWN", pb::EV_UNKNOWN),
            ("EV_DID_NOT_UNDERSTAND", pb::EV_DID_NOT_UNDERSTAND),
            ("EV_RAISED", pb::EV_RAISED),
            ("EV_AWAITING", pb::EV_AWAITING),
            ("EV_FLUSH", pb::EV_FLUSH),
            ("EV_RETURNED", pb::EV_RETURNED),
        ] {
            m.add(name, kind)?;
        }
        // The class lives in pbfast.errors (as TLSError); this is the name the core raises it under.
        m.add("TlsError", m.py().get_type::<crate::py::errors::TLSError>())?;
        use crate::py::foolscap as fs;
        for (name, kind) in [
            ("FS_CALL", fs::FS_CALL),
            ("FS_ANSWER", fs::FS_ANSWER),
            ("FS_ERROR", fs::FS_ERROR),
            ("FS_PING", fs::FS_PING),
            ("FS_PONG", fs::FS_PONG),
            ("FS_VIOLATION", fs::FS_VIOLATION),
            ("FS_CALL_ABORTED", fs::FS_CALL_ABORTED),
            ("FS_PEER_ERROR", fs::FS_PEER_ERROR),
            ("FS_AWAITING", fs::FS_AWAITING),
            ("FS_RAISED", fs::FS_RAISED),
            ("FS_FLUSH", fs::FS_FLUSH),
            ("FS_DECIDE", fs::FS_DECIDE),
            ("FS_NEGOTIATED", fs::FS_NEGOTIATED),
        ] {
            m.add(name, kind)?;
        }
        use crate::py::liveness as live;
        for (name, what) in [
            ("DUE_NOTHING", live::DUE_NOTHING),
            ("DUE_PING", live::DUE_PING),
            ("DUE_HANDSHAKE", live::DUE_HANDSHAKE),
            ("DUE_IDLE", live::DUE_IDLE),
        ] {
            m.add(name, what)?;
        }
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("build_profile", if cfg!(debug_assertions) { "debug" } else { "release" })?;
        m.add("tls_aes_gcm", crate::tls::aes_gcm_implementation())?;
        Ok(())
    }
}
