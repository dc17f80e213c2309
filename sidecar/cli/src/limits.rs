//! The `abmesh serve` flags that bound what slow or idle clients may hold:
//! how long a request body may take, how many body bytes all connections
//! may hold together, and how long a connection may wait before sending a
//! request's headers. Flattened into `serve`'s flags.
//!
//! `--header-read-timeout` is hyper's header read timeout. In hyper 1.x
//! (checked in 1.12: `proto/h1/conn.rs`, `poll_read_head` starts the timer
//! whenever the connection is ready for a request head, and `idle()` re-arms
//! it after each response) it bounds both the wait for a new connection's
//! first request and the wait of a kept-alive connection for its next one,
//! so it is also the keep-alive idle timeout; no separate one is needed.
//! A connection that runs out of it is closed without a response.
//!
//! `--transparent-huge-pages` (off by default) is about what those clients
//! cost. With transparent huge pages the allocator's regions are backed by
//! 2 MiB pages, and a region counts whole as soon as one byte of it is
//! touched. Measured on `abmesh serve` (debug build, tests/soak_hardening.rs
//! setup): 2000 idle connections took 34 MB of RSS with them and 21 MB
//! without; 300 oversized bodies raised the peak by 44 MB with them and
//! 16 MB without, and left 31 MB rather than 11 MB behind. A
//! sidecar's memory should be predictable, so by default the process opts
//! out (`prctl(PR_SET_THP_DISABLE)`, Linux; the system setting is left
//! alone).

use std::time::Duration;

use abmesh_server::body::BodyLimits;

use crate::error::ConfigError;
use crate::size::parse_size;

/// Most seconds any of these timeouts may be set to (a day).
const MAX_SECONDS: u64 = 86_400;

/// Limits on slow and idle clients (flattened into `abmesh serve`).
#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// A request body must arrive whole within this many seconds of its
    /// headers; a slower one gets a 408 and its connection is closed. The
    /// deadline is for the whole body, not the gaps between its parts, so
    /// a trickle cannot hold a connection forever.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub body_read_timeout: u64,

    /// Most bytes of request bodies held in memory at once, across all
    /// connections (bytes, or with KiB/MiB/GiB), counted as they arrive; a
    /// body that would go past it gets a 503 with Retry-After. At least
    /// --body-limit.
    #[arg(long, default_value = "256MiB", value_parser = parse_size, value_name = "SIZE")]
    pub body_bytes_in_flight: usize,

    /// A connection must send a request's headers within this many
    /// seconds: the first request's, and on a kept-alive connection the
    /// next one's (so it is also the idle timeout of keep-alive
    /// connections). Otherwise it is closed.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub header_read_timeout: u64,

    /// Let the process use transparent huge pages (when the system allows
    /// them). Off by default: with them, each 2 MiB region the allocator
    /// touches counts whole, so many idle or slow clients cost several
    /// times the memory.
    #[arg(long)]
    pub transparent_huge_pages: bool,
}

fn seconds(flag: &'static str, got: u64) -> Result<Duration, ConfigError> {
    if got == 0 {
        return Err(ConfigError::TooSmall {
            flag,
            min: 1,
            got: 0,
        });
    }
    if got > MAX_SECONDS {
        return Err(ConfigError::TooLarge {
            flag,
            max: MAX_SECONDS as usize,
            got: got as usize,
        });
    }
    Ok(Duration::from_secs(got))
}

impl LimitArgs {
    /// The body limits, checked against `--body-limit` (a cap below it
    /// would refuse every large body even on an idle server).
    pub fn body_limits(&self, body_limit: usize) -> Result<BodyLimits, ConfigError> {
        if self.body_bytes_in_flight < body_limit {
            return Err(ConfigError::TooSmall {
                flag: "body-bytes-in-flight",
                min: body_limit,
                got: self.body_bytes_in_flight,
            });
        }
        Ok(BodyLimits {
            read_timeout: seconds("body-read-timeout", self.body_read_timeout)?,
            max_in_flight: self.body_bytes_in_flight,
        })
    }

    /// Applies `--transparent-huge-pages` to this process (call it before
    /// the runtime starts); says why when it cannot.
    pub fn apply_memory_settings(&self) {
        if self.transparent_huge_pages {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            // SAFETY: prctl with integer arguments; it only sets a flag of
            // this process (inherited by its children).
            let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
            if rc != 0 {
                tracing::warn!(
                    error = %std::io::Error::last_os_error(),
                    "could not opt out of transparent huge pages; memory per connection may be higher"
                );
            }
        }
    }

    /// `--header-read-timeout`.
    pub fn header_read_timeout(&self) -> Result<Duration, ConfigError> {
        seconds("header-read-timeout", self.header_read_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: LimitArgs,
    }

    #[test]
    fn defaults_and_checks() {
        let c = Cli::parse_from(["x"]).limits;
        assert_eq!(
            c.body_limits(64 << 20).unwrap(),
            BodyLimits {
                read_timeout: Duration::from_secs(60),
                max_in_flight: 256 << 20
            }
        );
        assert_eq!(c.header_read_timeout().unwrap(), Duration::from_secs(30));
        let e = c.body_limits(512 << 20).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "--body-bytes-in-flight must be at least {} (got {})",
                512 << 20,
                256 << 20
            )
        );
        let c = Cli::parse_from(["x", "--body-read-timeout", "0"]).limits;
        assert!(c.body_limits(1).is_err());
        let c = Cli::parse_from(["x", "--header-read-timeout", "100000"]).limits;
        assert_eq!(
            c.header_read_timeout().unwrap_err().to_string(),
            "--header-read-timeout must be at most 86400 (got 100000)"
        );
    }
}
