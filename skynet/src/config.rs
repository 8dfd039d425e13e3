//! Typed, validated settings for a node's RPC layer.

use std::time::Duration;

use crate::error::NodeError;

/// Limits and timers of a node's transport. Start from [`RpcConfig::default`] and change what
/// you need; [`crate::NodeBuilder::start`] validates it.
///
/// ```
/// use std::time::Duration;
/// let config = skynet::RpcConfig {
///     default_deadline: Duration::from_secs(5),
///     ..Default::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug)]

pub struct RpcConfig {
    /// Largest frame body accepted or sent, in bytes. Checked from the header, before any
    /// allocation. Default 16 MiB.
    pub max_frame_size: usize,
    /// Deadline of a call that sets none. Default 30 s.
    pub default_deadline: Duration,
    /// Calls a node runs at once for one connection; beyond it calls are answered
    /// `Unavailable`. Default 10,000.
    pub max_concurrent_calls: usize,
    /// Time to establish a connection before the call fails as unreachable. Default 3 s.
    pub connect_timeout: Duration,
    /// A connection with no traffic for this long is considered dead. Default 10 s.
    pub idle_timeout: Duration,
    /// Keep-alive interval, well below `idle_timeout`. Default 2 s.
    pub keep_alive: Duration,
    /// How long a graceful shutdown waits for running calls. Default 10 s.
    pub drain_timeout: Duration,
    /// How long a graceful shutdown waits on the config store in all: marking the node's
    /// instances unregistered, revoking its registration lease, stopping its store member.
    /// What is not done by then is given up (and logged): a sick store cannot hold a stopping
    /// node. Default 3 s.
    pub shutdown_grace: Duration,
    /// Requests at least this large travel on a stream of their own, so that they do not hold
    /// up small calls behind them. Default 64 KiB.
    pub large_message: usize,
    /// UDP socket send and receive buffer size asked of the OS. Default 4 MiB.
    pub socket_buffer: usize,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            max_frame_size: 16 << 20,
            default_deadline: Duration::from_secs(30),
            max_concurrent_calls: 10_000,
            connect_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(3),
            large_message: 64 << 10,
            socket_buffer: 4 << 20,
        }
    }
}

impl RpcConfig {
    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<(), NodeError> {
        let fail = |m: &str| Err(NodeError::Config(m.to_owned()));
        if self.max_frame_size < 1024 || self.max_frame_size > (1 << 30) {
            return fail("max_frame_size must be between 1 KiB and 1 GiB");
        }
        if self.default_deadline.is_zero() {
            return fail("default_deadline must be positive");
        }
        if self.max_concurrent_calls == 0 {
            return fail("max_concurrent_calls must be positive");
        }
        if self.connect_timeout.is_zero() {
            return fail("connect_timeout must be positive");
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return fail("keep_alive must be positive and below idle_timeout");
        }
        if self.shutdown_grace.is_zero() {
            return fail("shutdown_grace must be positive");
        }
        if self.large_message == 0 {
            return fail("large_message must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_nonsense_is_not() {
        assert!(RpcConfig::default().validate().is_ok());
        let bad = RpcConfig {
            keep_alive: Duration::from_secs(20),
            ..Default::default()
        };
        assert!(matches!(bad.validate(), Err(NodeError::Config(_))));
        let bad = RpcConfig {
            max_frame_size: 10,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
