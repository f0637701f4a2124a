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

#[cfg(feature = "python")]
mod jelly;
#[cfg(feature = "python")]
mod py;
