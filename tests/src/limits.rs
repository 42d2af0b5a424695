//! Running code short of file descriptors, for tests of what crm2fa does
//! when it runs out. The limit is the whole process's: a test that uses
//! this is a test binary of its own.
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// `f` run with only `spare` file descriptors left to open beyond those
/// open now (the soft limit lowered to the lowest free number plus
/// `spare`), the limit put back afterwards.
pub fn with_descriptors_left<T>(spare: u64, f: impl FnOnce() -> T) -> T {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, lowest_free() + spare, hard).expect("setrlimit");
    let out = f();
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).expect("setrlimit back");
    out
}

/// The lowest descriptor number not in use: with the limit there, no
/// descriptor can be had.
fn lowest_free() -> u64 {
    (0..)
        .find(|&fd| fcntl(fd, FcntlArg::F_GETFD).is_err())
        .and_then(|fd| u64::try_from(fd).ok())
        .expect("a free descriptor number")
}
