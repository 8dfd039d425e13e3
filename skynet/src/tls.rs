//! Cluster credentials: a private certificate authority and the node certificates it signs.
//!
//! Every member of a cluster holds the CA certificate and a certificate of its own signed by that
//! CA. Connections are TLS 1.3 with both sides presenting and verifying a certificate, so a
//! process without the cluster's credentials can neither serve nor call. The rustls `ring`
//! provider is passed explicitly; skynet never installs or relies on a process-wide default.
//!
//! ```no_run
//! use skynet::tls::{ClusterCa, Credentials};
//! # fn main() -> Result<(), skynet::tls::TlsError> {
//! // Once, for the whole cluster, by an operator:
//! let ca = ClusterCa::generate()?;
//! ca.write_to_dir("/etc/skynet")?;
//! // For each node:
//! let creds: Credentials = ca.issue("router-1")?;
//! creds.write_to_dir("/etc/skynet", "router-1")?;
//! // On a developer machine, one call does both, idempotently, in a directory only you can
//! // write to:
//! let creds = Credentials::development("/tmp/skynet-dev", "router-1")?;
//! // Nodes that join that cluster use its CA and fail if there is none, rather than make a
//! // CA of their own that no member would trust:
//! let creds = Credentials::development_existing("/tmp/skynet-dev", "router-2")?;
//! # Ok(()) }
//! ```
//!
//! A handshake that fails because one side does not accept the other's certificate (signed by
//! another CA, expired, missing) fails a call at once with
//! [`CallError::HandshakeRefused`](crate::CallError::HandshakeRefused) naming the peer and the
//! reason, and the accepting node logs a warning naming the remote address.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The name every node certificate carries and every client asks for (TLS SNI). Any holder of a
/// certificate from the cluster CA is a trusted member, so the name only has to be shared.
pub const CLUSTER_SERVER_NAME: &str = "cluster.skynet";

/// Credentials could not be created, read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Reading or writing a credentials file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A PEM file held no usable certificate or key.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// Generating or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the credentials.
    #[error("TLS configuration rejected: {0}")]
    Config(#[from] rustls::Error),
    /// The node name cannot be used in a certificate or file name.
    #[error("invalid node name {0:?}: use 1-64 ASCII letters, digits, '-', '_' or '.'")]
    NodeName(String),
    /// A private key file can be read or changed by users other than its owner, so the key may
    /// be known to someone else (Unix only; development mode only warns).
    #[error(
        "{path}: private key file has mode {mode:04o}, open to group or others; \
         run `chmod 600 {path}`"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A node that joins a cluster found no cluster CA (`ca.pem`) in its credentials directory
    /// ([`Credentials::development_existing`]): a new CA there would sign certificates no
    /// member of the cluster accepts.
    #[error(
        "no cluster CA in {}: a node that joins a cluster needs the CA that the cluster's \
         first node created there",
        dir.display()
    )]
    NoClusterCa {
        /// The directory.
        dir: PathBuf,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn pem_error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// What a loader does with a private key file that group or others can access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyCheck {
    /// Refuse it with [`TlsError::KeyPermissions`]: credentials an operator placed.
    Refuse,
    /// Load it and log a warning: development mode, whose files are throwaway.
    Warn,
}

/// Reads a private key file, checking its permission bits on the open file (not the path, so a
/// file swapped in after the check is not read instead).
fn read_private_key(path: &Path, check: KeyCheck) -> Result<Vec<u8>, TlsError> {
    use std::io::Read as _;
    let file = fs::File::open(path).map_err(io_error(path))?;
    check_key_mode(&file, path, check)?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error(path))?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(pem_error(path, "larger than 64 KiB: not a private key"));
    }
    Ok(bytes)
}

/// A PEM private key is a few kilobytes at most; reading stops past this.
const MAX_KEY_FILE: u64 = 64 * 1024;

#[cfg(unix)]
fn check_key_mode(file: &fs::File, path: &Path, check: KeyCheck) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = file
        .metadata()
        .map_err(io_error(path))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    match check {
        KeyCheck::Refuse => Err(TlsError::KeyPermissions {
            path: path.to_owned(),
            mode,
        }),
        KeyCheck::Warn => {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:04o}"),
                "development private key file is open to group or others; run `chmod 600` on it"
            );
            Ok(())
        }
    }
}

#[cfg(not(unix))]
fn check_key_mode(_: &fs::File, _: &Path, _: KeyCheck) -> Result<(), TlsError> {
    Ok(())
}

/// Creates `dir` and any missing parents; on Unix the directories it creates are 0700, since
/// they hold private keys. An existing directory is left as it is.
fn create_key_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_error(dir))
}

fn check_node_name(name: &str) -> Result<(), TlsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(TlsError::NodeName(name.to_owned()))
    }
}

/// The cluster's certificate authority: signs node certificates.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";

impl ClusterCa {
    /// Creates a new CA with a fresh key.
    pub fn generate() -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "skynet cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA written by [`ClusterCa::write_to_dir`].
    ///
    /// On Unix, a `ca.key` that group or others can access (any of mode `0o077`) is refused
    /// with [`TlsError::KeyPermissions`]: whoever can read it can sign certificates for the
    /// whole cluster. Only the development loaders ([`Credentials::development`],
    /// [`Credentials::development_existing`]) load such a key, with a warning.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Self, TlsError> {
        Self::load_dir_checked(dir.as_ref(), KeyCheck::Refuse)
    }

    fn load_dir_checked(dir: &Path, check: KeyCheck) -> Result<Self, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_error(&cert_path))?;
        let key_pem = String::from_utf8(read_private_key(&key_path, check)?)
            .map_err(|_| pem_error(&key_path, "not UTF-8 text"))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| pem_error(&key_path, e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| pem_error(&cert_path, e.to_string()))?;
        Ok(Self {
            issuer,
            cert_pem,
            key_pem,
        })
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600 on Unix) into `dir`, creating it (mode 0700)
    /// if missing. Existing files are never overwritten: that would orphan every certificate
    /// the old CA signed.
    pub fn write_to_dir(&self, dir: impl AsRef<Path>) -> Result<(), TlsError> {
        let dir = dir.as_ref();
        create_key_dir(dir)?;
        // Key first: a reader that finds ca.pem can rely on ca.key being complete.
        write_new(&dir.join(CA_KEY_FILE), self.key_pem.as_bytes())?;
        write_new(&dir.join(CA_CERT_FILE), self.cert_pem.as_bytes())
    }

    /// The CA certificate in PEM form, to distribute to members.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs a certificate for the node `name` with a fresh key.
    pub fn issue(&self, name: &str) -> Result<Credentials, TlsError> {
        check_node_name(name)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![CLUSTER_SERVER_NAME.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        Credentials::from_pem(
            self.cert_pem.as_bytes(),
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            Path::new("<generated>"),
        )
    }
}

/// Creates `path` with `bytes` and mode 0600 (on Unix), failing if it exists; the file is only
/// visible once complete.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    // Unique to this call: the pid separates processes, the counter threads of one process.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    // A file of that name is a leftover of a crashed process that had our pid; removing it
    // (not opening it) means no stale file or link is written through, and the new file is
    // 0600 from its creation on, so no other user can open it before its mode is set.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error(&tmp)(e)),
        _ => {}
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(io_error(&tmp))?;
    // Exactly 0600 whatever the umask.
    restrict_permissions(&file, &tmp)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp))?;
    // hard_link refuses to replace an existing file, which makes concurrent creators safe.
    let linked = fs::hard_link(&tmp, path).map_err(io_error(path));
    let _ = fs::remove_file(&tmp);
    linked
}

#[cfg(unix)]
fn restrict_permissions(file: &fs::File, path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt as _;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_error(path))
}

#[cfg(not(unix))]
fn restrict_permissions(_: &fs::File, _: &Path) -> Result<(), TlsError> {
    Ok(())
}

/// What a node needs to join a cluster: the CA certificate, its own certificate chain and key.
#[derive(Clone)]
pub struct Credentials {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    // Kept as given so they can be written out again byte for byte.
    chain_pem: Arc<[u8]>,
    key_pem: Arc<[u8]>,
}

impl Credentials {
    /// A secret derived one-way from this node's private key, for keys that must survive a
    /// restart of the same node (QUIC's stateless reset key).
    pub(crate) fn derived_secret(&self, purpose: &str) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"skynet derived secret\0");
        ctx.update(purpose.as_bytes());
        ctx.update(b"\0");
        ctx.update(self.key.secret_der());
        let digest = ctx.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

impl Credentials {
    /// Parses PEM text: the CA certificate, the node's certificate chain and its private key.
    /// `origin` names the source in errors.
    pub fn from_pem(
        ca_pem: &[u8],
        chain_pem: &[u8],
        key_pem: &[u8],
        origin: &Path,
    ) -> Result<Self, TlsError> {
        let ca = CertificateDer::from_pem_slice(ca_pem)
            .map_err(|e| pem_error(origin, format!("CA certificate: {e}")))?;
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(origin, format!("certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(pem_error(origin, "no certificate in the chain"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| pem_error(origin, format!("private key: {e}")))?;
        Ok(Self {
            ca,
            chain,
            key: Arc::new(key),
            chain_pem: chain_pem.into(),
            key_pem: key_pem.into(),
        })
    }

    /// Loads `ca.pem`, `<name>.pem` and `<name>.key` from `dir`.
    ///
    /// On Unix, a `<name>.key` that group or others can access (any of mode `0o077`) is
    /// refused with [`TlsError::KeyPermissions`]; `chmod 600` it. Only the development loaders
    /// ([`Credentials::development`], [`Credentials::development_existing`]) load such a key,
    /// with a warning.
    pub fn load_dir(dir: impl AsRef<Path>, name: &str) -> Result<Self, TlsError> {
        Self::load_dir_checked(dir.as_ref(), name, KeyCheck::Refuse)
    }

    fn load_dir_checked(dir: &Path, name: &str, check: KeyCheck) -> Result<Self, TlsError> {
        check_node_name(name)?;
        let read = |file: String| {
            let path = dir.join(file);
            fs::read(&path).map_err(io_error(&path))
        };
        let ca = read(CA_CERT_FILE.to_owned())?;
        let chain = read(format!("{name}.pem"))?;
        let key = read_private_key(&dir.join(format!("{name}.key")), check)?;
        Self::from_pem(&ca, &chain, &key, dir)
    }

    /// Writes `<name>.pem` and `<name>.key` (mode 0600 on Unix) into `dir`, creating it (mode
    /// 0700) if missing; never overwrites.
    pub fn write_to_dir(&self, dir: impl AsRef<Path>, name: &str) -> Result<(), TlsError> {
        check_node_name(name)?;
        let dir = dir.as_ref();
        create_key_dir(dir)?;
        write_new(&dir.join(format!("{name}.key")), &self.key_pem)?;
        write_new(&dir.join(format!("{name}.pem")), &self.chain_pem)
    }

    /// Development mode: uses the CA in `dir`, creating it on first use, and the node's
    /// certificate there, issuing it on first use. Safe when several processes start at once.
    /// Keep such a directory to one machine and one user: its CA key signs for the whole
    /// cluster. Only the first node of a cluster should create the CA; a node that joins one
    /// uses [`Credentials::development_existing`], so that a mistyped directory fails instead
    /// of making a CA of its own that no member trusts.
    ///
    /// Files it writes are 0600 and a directory it creates is 0700 (on Unix). An existing
    /// directory is used as it is, so point it at a directory only you can write to. The
    /// development loaders are the only ones that accept a private key (`ca.key`,
    /// `<name>.key`) that group or others can access: they log a warning instead of failing
    /// with [`TlsError::KeyPermissions`]. [`NodeBuilder::development_credentials`] and the
    /// `--certs` flag of `skynet node` without `--join` use it.
    ///
    /// [`NodeBuilder::development_credentials`]: crate::NodeBuilder::development_credentials
    pub fn development(dir: impl AsRef<Path>, name: &str) -> Result<Self, TlsError> {
        check_node_name(name)?;
        let dir = dir.as_ref();
        if !dir.join(CA_CERT_FILE).exists() {
            match ClusterCa::generate()?.write_to_dir(dir) {
                Ok(()) => {}
                // Another process won the race; use its CA.
                Err(TlsError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Self::development_node(dir, name)
    }

    /// Development mode for a node that joins an existing cluster: like
    /// [`Credentials::development`], but the cluster CA must be in `dir` already. Without
    /// `ca.pem` there it fails with [`TlsError::NoClusterCa`] and writes nothing (nor creates
    /// `dir`): a CA made here would sign a certificate that no member of the cluster accepts,
    /// and the node could never join. The node's own certificate is still issued on first use.
    /// [`NodeBuilder::development_credentials_existing`] and the `--certs` flag of every
    /// `skynet` role that joins (`--join`) use it.
    ///
    /// [`NodeBuilder::development_credentials_existing`]:
    ///     crate::NodeBuilder::development_credentials_existing
    pub fn development_existing(dir: impl AsRef<Path>, name: &str) -> Result<Self, TlsError> {
        check_node_name(name)?;
        let dir = dir.as_ref();
        let ca = dir.join(CA_CERT_FILE);
        match ca.try_exists() {
            Ok(true) => Self::development_node(dir, name),
            Ok(false) => Err(TlsError::NoClusterCa {
                dir: dir.to_owned(),
            }),
            Err(e) => Err(io_error(&ca)(e)),
        }
    }

    /// The node's development certificate in `dir`, issued from the CA there on first use.
    fn development_node(dir: &Path, name: &str) -> Result<Self, TlsError> {
        match Self::load_dir_checked(dir, name, KeyCheck::Warn) {
            Ok(creds) => Ok(creds),
            Err(TlsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                let creds = ClusterCa::load_dir_checked(dir, KeyCheck::Warn)?.issue(name)?;
                match creds.write_to_dir(dir, name) {
                    Ok(()) => Ok(creds),
                    Err(TlsError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists =>
                    {
                        Self::load_dir_checked(dir, name, KeyCheck::Warn)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// A TLS 1.3 server configuration that demands a client certificate from the cluster CA,
    /// with the given ALPN and crypto provider. skynet's own endpoint uses it; it is public so
    /// tools and benchmarks can stand up a plain endpoint with the same trust.
    pub fn server_config(
        &self,
        alpn: &[u8],
        provider: &Arc<CryptoProvider>,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }

    /// A TLS 1.3 client configuration that trusts only the cluster CA and presents our
    /// certificate, with the given ALPN and crypto provider.
    pub fn client_config(
        &self,
        alpn: &[u8],
        provider: &Arc<CryptoProvider>,
    ) -> Result<rustls::ClientConfig, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::Locked as _;

    #[test]
    fn issued_credentials_survive_a_round_trip_through_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate().expect("ca");
        ca.write_to_dir(dir.path()).expect("write ca");
        let creds = ca.issue("node-1").expect("issue");
        creds
            .write_to_dir(dir.path(), "node-1")
            .expect("write node");
        let loaded = Credentials::load_dir(dir.path(), "node-1").expect("load");
        assert_eq!(loaded.chain, creds.chain);
        assert_eq!(loaded.ca, creds.ca);
        let reloaded_ca = ClusterCa::load_dir(dir.path()).expect("load ca");
        reloaded_ca.issue("node-2").expect("reloaded CA can sign");
    }

    #[test]
    fn files_are_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        ClusterCa::generate()
            .and_then(|ca| ca.write_to_dir(dir.path()))
            .expect("first");
        let second = ClusterCa::generate().and_then(|ca| ca.write_to_dir(dir.path()));
        assert!(matches!(second, Err(TlsError::Io { .. })));
    }

    #[test]
    fn development_mode_shares_one_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Credentials::development(dir.path(), "a").expect("a");
        let b = Credentials::development(dir.path(), "b").expect("b");
        let a_again = Credentials::development(dir.path(), "a").expect("a again");
        assert_eq!(a.ca, b.ca);
        assert_eq!(a.chain, a_again.chain);
    }

    #[test]
    fn joining_development_mode_needs_the_ca_and_writes_nothing_without_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let missing = root.path().join("missing");
        match Credentials::development_existing(&missing, "b") {
            Err(TlsError::NoClusterCa { dir }) => {
                assert_eq!(dir, missing);
                let message = TlsError::NoClusterCa { dir }.to_string();
                assert!(
                    message.contains(&missing.display().to_string()),
                    "{message}"
                );
            }
            other => panic!("expected NoClusterCa, got {other:?}"),
        }
        assert!(!missing.exists(), "the directory was created");
        let empty = root.path().join("empty");
        fs::create_dir(&empty).expect("mkdir");
        assert!(matches!(
            Credentials::development_existing(&empty, "b"),
            Err(TlsError::NoClusterCa { .. })
        ));
        assert_eq!(fs::read_dir(&empty).expect("read dir").count(), 0);

        // Once the first node made the CA, a joining node gets a certificate from it.
        let first = Credentials::development(&empty, "a").expect("first node");
        let joined = Credentials::development_existing(&empty, "b").expect("joins");
        assert_eq!(joined.ca, first.ca);
        assert!(empty.join("b.pem").exists());
        let again = Credentials::development_existing(&empty, "b").expect("again");
        assert_eq!(again.chain, joined.chain);
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    #[cfg(unix)]
    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// A CA and `node-1` written to `dir`.
    #[cfg(unix)]
    fn write_cluster(dir: &Path) {
        let ca = ClusterCa::generate().expect("ca");
        ca.write_to_dir(dir).expect("write ca");
        ca.issue("node-1")
            .and_then(|c| c.write_to_dir(dir, "node-1"))
            .expect("write node");
    }

    #[cfg(unix)]
    #[test]
    fn written_keys_are_0600_in_a_0700_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("new").join("certs");
        write_cluster(&dir);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("new")), 0o700);
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        assert_eq!(mode(&dir.join("node-1.key")), 0o600);

        let dev = root.path().join("dev");
        Credentials::development(&dev, "a").expect("development");
        assert_eq!(mode(&dev), 0o700);
        assert_eq!(mode(&dev.join("ca.key")), 0o600);
        assert_eq!(mode(&dev.join("a.key")), 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn a_key_open_to_others_is_refused_outside_development_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_cluster(dir.path());
        let node_key = dir.path().join("node-1.key");
        chmod(&node_key, 0o644);
        match Credentials::load_dir(dir.path(), "node-1") {
            Err(TlsError::KeyPermissions { path, mode }) => {
                assert_eq!(path, node_key);
                assert_eq!(mode, 0o644);
                let message = TlsError::KeyPermissions { path, mode }.to_string();
                assert!(message.contains("0644"), "{message}");
                assert!(message.contains("chmod 600"), "{message}");
            }
            other => panic!("expected KeyPermissions, got {other:?}"),
        }
        // Group access alone is enough to refuse it, and so is a CA key open to others.
        chmod(&node_key, 0o640);
        assert!(matches!(
            Credentials::load_dir(dir.path(), "node-1"),
            Err(TlsError::KeyPermissions { mode: 0o640, .. })
        ));
        let ca_key = dir.path().join("ca.key");
        chmod(&ca_key, 0o604);
        assert!(matches!(
            ClusterCa::load_dir(dir.path()),
            Err(TlsError::KeyPermissions { ref path, mode: 0o604 }) if *path == ca_key
        ));
        // 0600 (and stricter) loads.
        chmod(&node_key, 0o600);
        chmod(&ca_key, 0o400);
        Credentials::load_dir(dir.path(), "node-1").expect("0600 loads");
        ClusterCa::load_dir(dir.path()).expect("0400 loads");
    }

    /// A `tracing` writer that keeps what it is given.
    #[cfg(unix)]
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    #[cfg(unix)]
    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.locked().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[cfg(unix)]
    #[test]
    fn development_mode_loads_a_key_open_to_others_with_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Credentials::development(dir.path(), "a").expect("first");
        let key = dir.path().join("a.key");
        chmod(&key, 0o644);
        chmod(&dir.path().join("ca.key"), 0o644);
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let (again, other) = tracing::subscriber::with_default(subscriber, || {
            (
                Credentials::development(dir.path(), "a"),
                // A new name loads the open CA key to issue its certificate.
                Credentials::development(dir.path(), "b"),
            )
        });
        assert_eq!(again.expect("loads").chain, first.chain);
        other.expect("issues");
        let logs = String::from_utf8(captured.0.locked().clone()).expect("utf-8");
        assert!(logs.contains("WARN"), "{logs}");
        assert!(logs.contains(&key.display().to_string()), "{logs}");
        assert!(
            logs.contains(&dir.path().join("ca.key").display().to_string()),
            "{logs}"
        );
        assert!(logs.contains("chmod 600"), "{logs}");
    }

    #[test]
    fn bad_names_and_bad_pem_are_typed_errors() {
        let ca = ClusterCa::generate().expect("ca");
        assert!(matches!(ca.issue("../etc"), Err(TlsError::NodeName(_))));
        assert!(matches!(ca.issue(""), Err(TlsError::NodeName(_))));
        let err = Credentials::from_pem(b"junk", b"junk", b"junk", Path::new("x"));
        assert!(matches!(err, Err(TlsError::Pem { .. })));
    }
}
