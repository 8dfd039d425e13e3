//! Waiting for the signals that ask a process to stop: SIGTERM, and Ctrl-C (SIGINT).

use crate::CliError;

/// Stop signals, listened for from creation on, so that one arriving early is not lost.
pub(crate) struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers. Must run inside the runtime.
    pub(crate) fn new() -> Result<Self, CliError> {
        Ok(Self {
            #[cfg(unix)]
            terminate: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(CliError::Signals)?,
        })
    }

    /// Waits for SIGTERM or Ctrl-C.
    pub(crate) async fn wait(&mut self) -> Result<(), CliError> {
        #[cfg(unix)]
        {
            tokio::select! {
                r = tokio::signal::ctrl_c() => r.map_err(CliError::Signals),
                _ = self.terminate.recv() => Ok(()),
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await.map_err(CliError::Signals)
        }
    }
}
