//! The bindings' `cfg`s for the interpreter they are built for (`Py_GIL_DISABLED` on a
//! free-threaded one); without the `python` feature there is no interpreter to ask.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(Py_GIL_DISABLED)");
    #[cfg(feature = "python")]
    pyo3_build_config::use_pyo3_cfgs();
}
