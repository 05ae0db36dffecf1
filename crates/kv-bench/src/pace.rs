//! Starting operations on time, on the runtime's own event loop.
//!
//! The open loop starts each operation at its intended moment. tokio's
//! timer ticks in whole milliseconds, too coarse at thousands of operations
//! a second (an operation started up to a millisecond late counts that as
//! latency). An OS thread sleeping between operations is precise but costs
//! two wake-ups per operation (its own, then the runtime worker it hands
//! the operation to), and on a small machine those wake-ups were a third of
//! the load generator's CPU (`perf record` at 5,000 operations a second).
//! On Linux a `timerfd` registered with the runtime's event loop is as
//! precise and wakes only the worker that starts the operation.

use std::io;
use std::time::Instant;

/// A one-shot timer with sub-millisecond resolution that a task awaits.
pub(crate) struct PreciseTimer {
    #[cfg(target_os = "linux")]
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

#[cfg(target_os = "linux")]
impl PreciseTimer {
    /// A timer on the current runtime's event loop.
    ///
    /// # Errors
    ///
    /// The operating system's, if it cannot make a timer (or the runtime
    /// has no I/O driver).
    pub(crate) fn new() -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        #[allow(unsafe_code)]
        // SAFETY: a plain system call; a descriptor it returns is owned
        // by nothing else.
        let fd = unsafe {
            let raw = libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            );
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            std::os::fd::OwnedFd::from_raw_fd(raw)
        };
        #[allow(unsafe_code)]
        // SAFETY: the descriptor is owned by the `OwnedFd` the `AsyncFd`
        // owns, so it stays open and the same file for the `AsyncFd`'s life.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }?;
        Ok(Self { fd })
    }

    /// Returns at `due` (at once if it has passed).
    ///
    /// # Errors
    ///
    /// The operating system's, if the timer cannot be set or read.
    pub(crate) async fn sleep_until(&self, due: Instant) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let Some(left) = due
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
        else {
            return Ok(());
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(left.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: left.subsec_nanos() as libc::c_long,
            },
        };
        let raw = self.fd.as_raw_fd();
        #[allow(unsafe_code)]
        // SAFETY: `raw` is this timer's open descriptor and `spec` a valid
        // setting; the old setting is not asked for.
        let set = unsafe { libc::timerfd_settime(raw, 0, &spec, std::ptr::null_mut()) };
        if set < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = 0u64;
            #[allow(unsafe_code)]
            // SAFETY: reads at most 8 bytes into an 8-byte integer.
            let read = unsafe {
                libc::read(
                    raw,
                    std::ptr::from_mut(&mut expirations).cast::<libc::c_void>(),
                    std::mem::size_of::<u64>(),
                )
            };
            if read == 8 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::WouldBlock {
                return Err(err);
            }
            ready.clear_ready();
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl PreciseTimer {
    /// Elsewhere tokio's timer (whole milliseconds).
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {})
    }

    /// Returns at `due`, to tokio's timer's millisecond.
    pub(crate) async fn sleep_until(&self, due: Instant) -> io::Result<()> {
        tokio::time::sleep_until(due.into()).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn it_wakes_at_the_moment_asked_and_not_before() {
        let timer = PreciseTimer::new().unwrap();
        for micros in [0u64, 150, 700, 2_300] {
            let start = Instant::now();
            let due = start + Duration::from_micros(micros);
            timer.sleep_until(due).await.unwrap();
            assert!(Instant::now() >= due, "woke before {micros} us");
        }
        // A moment already past returns at once, and the timer is reusable.
        let past = Instant::now();
        timer.sleep_until(past).await.unwrap();
        timer
            .sleep_until(Instant::now() + Duration::from_micros(300))
            .await
            .unwrap();
    }
}
