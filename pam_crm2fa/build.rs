//! Links the unwinder (libgcc_eh) into the module.
//!
//! The module keeps `panic = "unwind"`: a panic is caught at the PAM entry
//! points and becomes PAM_ABORT, never a crashed sshd child or screen
//! locker. Rust's std asks for the unwinder as the shared `libgcc_s.so.1`,
//! which no PAM application (sshd, su, login, sudo) has loaded already, so
//! every login paid to open, map and relocate it: 51 us of the module's 154
//! in a `dlopen` + `dlclose`. Named here, the static archive comes first in
//! the link, resolves every `_Unwind_*` symbol, and `--as-needed` then
//! leaves `libgcc_s` out of the module's dependencies. The archive is part
//! of gcc, the linker the build already uses.
fn main() {
    println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
}
