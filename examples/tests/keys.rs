//! Where the example cluster keeps its CA and node keys: a directory it makes fresh, with a
//! random name and mode 0700, never one that already exists. The `skynet-cluster` binary runs
//! in test mode with its own `TMPDIR`, so the test sees every directory it makes.
//!
//! The cluster used to take `<temp dir>/skynet-cluster-<pid>`, adopting it if it existed: another
//! local user could create it first with a CA of their own. The test claims that name right
//! after the start, as such a user would, and checks that the cluster never touches it.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use skynet::tls::ClusterCa;

/// Bound on every wait: the whole cluster starts in seconds, but the machine may be busy.
const WAIT: Duration = Duration::from_secs(180);

/// The running cluster; SIGTERM, then SIGKILL, when dropped.
struct Cluster {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
}

impl Cluster {
    fn start(tmp: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_skynet-cluster"))
            .env("SKYNET_CLUSTER_TEST", "1")
            .env("TMPDIR", tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting skynet-cluster")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child: Some(child),
            lines,
        })
    }

    fn pid(&self) -> anyhow::Result<u32> {
        Ok(self.child.as_ref().context("stopped")?.id())
    }

    /// The next line of output (bounded).
    fn line(&self, deadline: Instant) -> anyhow::Result<String> {
        self.lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .context("no more output from the cluster in time")
    }

    /// SIGTERM, then waits (bounded) for the supervisor to stop everything and exit.
    fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("already stopped");
        };
        let pid = child.id();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(WAIT) {
            Ok(status) => Ok(status?),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                bail!("the cluster did not stop in time")
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

fn mode(path: &Path) -> anyhow::Result<u32> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    Ok(meta.permissions().mode() & 0o7777)
}

#[test]
fn the_cluster_keeps_its_keys_in_a_new_private_directory() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cluster = Cluster::start(tmp.path())?;

    // The predictable name, claimed with a CA of our own as another local user could.
    let claimed = tmp
        .path()
        .join(format!("skynet-cluster-{}", cluster.pid()?));
    match std::fs::create_dir(&claimed) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("the cluster made the predictable {}", claimed.display())
        }
        made => made.with_context(|| format!("claiming {}", claimed.display()))?,
    }
    ClusterCa::generate()?.write_to_dir(claimed.join("certs"))?;
    let claimed_ca = std::fs::read(claimed.join("certs").join("ca.pem"))?;

    // The first line says where the keys are.
    let deadline = Instant::now() + WAIT;
    let first = cluster.line(deadline)?;
    let keys = first
        .strip_prefix("keys dir=")
        .and_then(|rest| rest.strip_suffix(" mode=0700"))
        .map(PathBuf::from)
        .with_context(|| format!("the first line is not the keys line: {first:?}"))?;
    let dir = keys
        .parent()
        .context("the keys dir has a parent")?
        .to_owned();
    ensure!(keys == dir.join("certs"), "{keys:?}");
    ensure!(dir.parent() == Some(tmp.path()), "{dir:?} is not in TMPDIR");
    ensure!(dir != claimed, "the cluster adopted {claimed:?}");
    ensure!(mode(&dir)? == 0o700, "{dir:?} has mode {:o}", mode(&dir)?);
    ensure!(
        mode(&keys)? == 0o700,
        "{keys:?} has mode {:o}",
        mode(&keys)?
    );

    // Once the whole cluster runs, every key in it is 0600 and the CA is its own.
    loop {
        let line = cluster.line(deadline)?;
        if let Some(rest) = line.strip_prefix("cluster ready dir=") {
            ensure!(Path::new(rest) == dir, "{line:?} is not about {dir:?}");
            break;
        }
        ensure!(line != "stopped", "the cluster stopped by itself");
    }
    let mut key_files = 0;
    for entry in std::fs::read_dir(&keys)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "key") {
            ensure!(
                mode(&path)? == 0o600,
                "{path:?} has mode {:o}",
                mode(&path)?
            );
            key_files += 1;
        }
    }
    // The CA and ten processes, plus the node that stored the route.
    ensure!(key_files >= 11, "only {key_files} keys in {keys:?}");
    ensure!(std::fs::read(keys.join("ca.pem"))? != claimed_ca);

    // SIGTERM (Ctrl-C's twin) removes the cluster's directory and nothing else.
    let status = cluster.stop()?;
    ensure!(status.success(), "{status}");
    ensure!(!dir.exists(), "{dir:?} is left");
    ensure!(std::fs::read(claimed.join("certs").join("ca.pem"))? == claimed_ca);
    let left: Vec<_> = std::fs::read_dir(tmp.path())?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    ensure!(left == [claimed.clone()], "{left:?}");
    let claimed_entries: Vec<_> = std::fs::read_dir(&claimed)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    ensure!(claimed_entries == ["certs"], "{claimed_entries:?}");
    Ok(())
}
