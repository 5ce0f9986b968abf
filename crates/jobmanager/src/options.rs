//! The JobManager's own settings (addresses, heartbeats, timeouts), with Flink's key names.
//!
//! Job settings (checkpointing, restart strategy) are per job and come from the
//! [`crate::JobSettingsResolver`]; these are the process's.

use crate::error::JobManagerError;
use std::net::SocketAddr;
use std::time::Duration;

/// The configuration key of each [`JobManagerOptions`] field, for error messages and the CLI.
pub mod keys {
    /// [`super::JobManagerOptions::rpc_bind`] (Flink: `jobmanager.rpc.address` + `.port`).
    pub const RPC_BIND: &str = "jobmanager.rpc.bind";
    /// [`super::JobManagerOptions::rest_bind`] (Flink: `rest.bind-address` + `rest.port`).
    pub const REST_BIND: &str = "rest.bind";
    /// [`super::JobManagerOptions::heartbeat_interval`].
    pub const HEARTBEAT_INTERVAL: &str = "heartbeat.interval";
    /// [`super::JobManagerOptions::heartbeat_timeout`].
    pub const HEARTBEAT_TIMEOUT: &str = "heartbeat.timeout";
    /// [`super::JobManagerOptions::slot_request_timeout`].
    pub const SLOT_REQUEST_TIMEOUT: &str = "slot.request.timeout";
    /// [`super::JobManagerOptions::cancel_timeout`] (Flink's nearest:
    /// `task.cancellation.timeout`).
    pub const CANCEL_TIMEOUT: &str = "jobmanager.cancel.timeout";
    /// [`super::JobManagerOptions::adaptive`]: `default` or `adaptive`.
    pub const SCHEDULER: &str = "jobmanager.scheduler";
    /// [`super::JobManagerOptions::adaptive`]'s duration.
    pub const RESOURCE_STABILIZATION_TIMEOUT: &str =
        "jobmanager.adaptive-scheduler.resource-stabilization-timeout";
}

/// How the JobManager listens and how patient it is.
///
/// The defaults are fast, for a recovery-first runtime: a hung TaskManager is declared lost
/// after 2 s without a heartbeat (Flink: 10 s interval, 50 s timeout). A killed one is noticed
/// at once anyway, through its broken control stream.
#[derive(Clone, Debug)]
pub struct JobManagerOptions {
    /// Where the gRPC services listen (TaskManager sessions, the Dispatcher); port 0 picks a
    /// free port. Default `127.0.0.1:6123`.
    pub rpc_bind: SocketAddr,
    /// Where the REST API listens; port 0 picks a free port. Default `127.0.0.1:8081`.
    pub rest_bind: SocketAddr,
    /// How often a TaskManager sends a heartbeat (told to it in `Registered`). Default 200 ms.
    pub heartbeat_interval: Duration,
    /// A TaskManager silent for longer is declared lost. Default 2 s; must exceed the interval.
    pub heartbeat_timeout: Duration,
    /// How long a JobMaster waits for enough free slots before the (re)deployment fails.
    /// Default 30 s.
    pub slot_request_timeout: Duration,
    /// How long a JobMaster waits for the tasks of a cancelled attempt to confirm, before it
    /// goes on without them. Default 10 s.
    pub cancel_timeout: Duration,
    /// `jobmanager.scheduler: adaptive`: `Some(resource-stabilization-timeout)` — a job that
    /// lacks slots after `slot_request_timeout` runs at the parallelism the free slots allow,
    /// and scales back up once enough slots were available for this long. `None`: a job
    /// runs at its parallelism or not at all.
    pub adaptive: Option<Duration>,
    /// The cluster's token (`security.auth.token`): every RPC and REST call must present it
    /// (`authorization: Bearer …`); the web UI's page, script and style are served without it.
    /// `None` (an embedder's choice, never the CLI's): no check.
    pub auth: Option<weir_security::Token>,
    /// TLS on the RPC and REST ports (`security.ssl.*`); `None`: plaintext.
    pub tls: Option<weir_security::Tls>,
}

impl Default for JobManagerOptions {
    fn default() -> Self {
        Self {
            rpc_bind: SocketAddr::from(([127, 0, 0, 1], 6123)),
            rest_bind: SocketAddr::from(([127, 0, 0, 1], 8081)),
            heartbeat_interval: Duration::from_millis(200),
            heartbeat_timeout: Duration::from_secs(2),
            slot_request_timeout: Duration::from_secs(30),
            cancel_timeout: Duration::from_secs(10),
            adaptive: None,
            auth: None,
            tls: None,
        }
    }
}

impl JobManagerOptions {
    /// Checks the options; the error names the first bad key.
    pub fn validate(&self) -> Result<(), JobManagerError> {
        let bad = |key: &'static str, value: Duration, expected: &'static str| {
            Err(JobManagerError::InvalidOption {
                key,
                value: format!("{value:?}"),
                expected,
            })
        };
        if self.heartbeat_interval < Duration::from_millis(1) {
            return bad(
                keys::HEARTBEAT_INTERVAL,
                self.heartbeat_interval,
                "at least 1 ms",
            );
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return bad(
                keys::HEARTBEAT_TIMEOUT,
                self.heartbeat_timeout,
                "more than heartbeat.interval",
            );
        }
        if self.slot_request_timeout.is_zero() {
            return bad(
                keys::SLOT_REQUEST_TIMEOUT,
                self.slot_request_timeout,
                "more than 0",
            );
        }
        if self.cancel_timeout.is_zero() {
            return bad(keys::CANCEL_TIMEOUT, self.cancel_timeout, "more than 0");
        }
        Ok(())
    }

    /// How often the ResourceManager looks for silent TaskManagers: half the interval, so a
    /// timeout is noticed at most that late.
    pub(crate) fn heartbeat_check_period(&self) -> Duration {
        (self.heartbeat_interval / 2).max(Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        JobManagerOptions::default().validate().unwrap();
    }

    #[test]
    fn a_timeout_not_above_the_interval_names_its_key() {
        let o = JobManagerOptions {
            heartbeat_timeout: Duration::from_millis(200),
            ..Default::default()
        };
        let e = o.validate().unwrap_err().to_string();
        assert!(e.contains("heartbeat.timeout"), "{e}");
    }
}
