//! Bounded malloc arenas on glibc, without `unsafe`.
//!
//! glibc's malloc gives a thread that finds the arenas in use a new arena of its own, up to
//! eight per core. A job of buckets allocates each bucket's points and ciphertexts on whichever
//! rayon or tokio thread runs that step, and memory freed into one thread's arena is not reused
//! by another's, so over a long job the arenas' peaks add up: at a fixed bucket size the
//! querier peaked at 205 MiB at 10^7 rows per side and 381.5 MiB at 3·10^7 (BENCHMARKS.md,
//! "Jobs of buckets through the service"). With as many arenas as cores the same 10^7 job
//! peaked at 113 MiB, for 1.9% more time.
//!
//! glibc reads its arena limit from the environment once, when the process starts, and the only
//! call that sets it later (`mallopt`) is `unsafe` foreign code. So the binary, when the limit is
//! not set, replaces itself (`exec`, same process id, same arguments) with the variable set:
//! one extra `exec` at start-up, nothing else changes.
//!
//! Invariants:
//! - a limit the user set (`MALLOC_ARENA_MAX`, or `GLIBC_TUNABLES` naming `arena_max`) is kept;
//! - the replaced process finds the variable set, so it never replaces itself again;
//! - if the `exec` fails (the binary was deleted or replaced meanwhile), the process goes on
//!   with glibc's default and says so on standard error.

/// The environment variable glibc reads its arena limit from.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: &str = "MALLOC_ARENA_MAX";

/// The arena limit this binary sets: one per core it may use, at least two.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn arena_limit() -> usize {
    std::thread::available_parallelism().map_or(2, |cores| cores.get().max(2))
}

/// Whether the environment already limits glibc's arenas.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_is_set() -> bool {
    std::env::var_os(ARENA_MAX).is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|tunables| tunables.contains("arena_max"))
}

/// On glibc, when the environment sets no arena limit, replaces this process with itself run
/// with `MALLOC_ARENA_MAX` set to [`arena_limit`]; returns only if nothing was to be done or the
/// replacement failed (then it says so on standard error).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn limit_arenas() {
    use std::os::unix::process::CommandExt;

    if limit_is_set() {
        return;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next();
    let replaced = std::env::current_exe().map(|exe| {
        let mut command = std::process::Command::new(exe);
        if let Some(arg0) = arg0 {
            command.arg0(arg0);
        }
        // `exec` returns only on failure.
        command
            .args(args)
            .env(ARENA_MAX, arena_limit().to_string())
            .exec()
    });
    let error = match replaced {
        Ok(error) | Err(error) => error,
    };
    eprintln!(
        "warning: could not restart with {ARENA_MAX} set ({error}); memory may grow over long jobs"
    );
}

/// Elsewhere malloc is not glibc's: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_arenas() {}
