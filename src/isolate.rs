//! The last line of defence: whatever happens while processing one record (a panic included)
//! stays with that record. [`guard`] runs one unit of per-record work and turns a panic into an
//! error the caller sends to the dead-letter output as `internal_error`; [`install_panic_hook`]
//! keeps the panic messages of a poisoned stream from flooding the log.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Panics caught by [`guard`] since the process started.
static CAUGHT: AtomicU64 = AtomicU64::new(0);

/// How many panic messages are printed in full before the hook starts to summarise.
const FULL_REPORTS: u64 = 10;

/// Past `FULL_REPORTS`, at most one message per this interval (with the count since).
const REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// Runs one unit of per-record work. A panic inside it is caught and returned as an error
/// naming its message; the caller dead-letters the record and goes on.
///
/// `AssertUnwindSafe`: the state a panicking unit may leave half updated is one key's
/// detection state (the engine drops it: see `Engine::reset_subject`), counters, and a
/// results buffer the caller clears; none of it is memory-unsafe, and no lock we hold is
/// poisoned in a way we rely on (our mutexes recover from poisoning).
pub fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        CAUGHT.fetch_add(1, Ordering::Relaxed);
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-text payload".to_owned()
        };
        let mut message = format!("internal error: {message}");
        if message.len() > 300 {
            let mut end = 300;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        message
    })
}

/// Test hook, in debug builds only: panics when `id` equals the environment variable
/// `AKWATCH_TEST_PANIC_ON`, so the end-to-end tests can prove that a panic inside the per-record
/// work is isolated (no input can trigger one on purpose any more). Release builds compile it
/// to nothing.
#[inline]
pub fn fault_point(id: &str) {
    #[cfg(debug_assertions)]
    {
        static TARGET: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let target = TARGET.get_or_init(|| std::env::var("AKWATCH_TEST_PANIC_ON").ok());
        if target.as_deref() == Some(id) {
            panic!("injected fault for event {id}");
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = id;
}

/// Test hook, in debug builds only: whether the changelog snapshot of this round may be
/// written. With `AKWATCH_TEST_CHANGELOG_LAG=1` only the first round's snapshots are written,
/// so the changelog stays behind the inventory store — as after changelog writes that fail —
/// and a restart applies events the store has already counted (the end-to-end test proves they
/// are not counted twice). Release builds always write.
#[inline]
pub fn changelog_round_allowed(round: u64) -> bool {
    #[cfg(debug_assertions)]
    {
        static LAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let lag = *LAG.get_or_init(|| std::env::var_os("AKWATCH_TEST_CHANGELOG_LAG").is_some());
        !lag || round == 0
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = round;
        true
    }
}

/// Panics caught so far.
pub fn caught() -> u64 {
    CAUGHT.load(Ordering::Relaxed)
}

/// Installs a panic hook that prints the first panics in full (with location) and then at
/// most one line a minute with the number suppressed, so a stream of poisoned records costs
/// a few log lines, not one per record. Idempotent.
pub fn install_panic_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let default = std::panic::take_hook();
        let seen = AtomicU64::new(0);
        let last: Mutex<Option<(Instant, u64)>> = Mutex::new(None);
        std::panic::set_hook(Box::new(move |info| {
            let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
            if n <= FULL_REPORTS {
                default(info);
                if n == FULL_REPORTS {
                    eprintln!(
                        "akwatch: {FULL_REPORTS} panics reported; further ones are summarised once a minute"
                    );
                }
                return;
            }
            let mut last = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let due = last.is_none_or(|(at, _)| at.elapsed() >= REPORT_INTERVAL);
            if due {
                let since = last.map_or(n - FULL_REPORTS, |(_, count)| n - count);
                let location = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                eprintln!("akwatch: {since} more panic(s) caught, the latest at {location}");
                *last = Some((Instant::now(), n));
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_and_work_goes_on() {
        let before = caught();
        let r: Result<u32, String> = guard(|| panic!("boom at {}", 7));
        assert_eq!(r.unwrap_err(), "internal error: boom at 7");
        assert_eq!(guard(|| 5).unwrap(), 5);
        assert!(caught() > before);
        let long = "x".repeat(10_000);
        let r: Result<(), String> = guard(|| panic!("{long}"));
        assert!(r.unwrap_err().len() <= 300);
    }
}
