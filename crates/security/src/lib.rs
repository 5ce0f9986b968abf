//! Who may talk to a Weir process.
//!
//! Every Weir port (the JobManager's RPC and REST ports, a TaskManager's data-exchange and
//! metrics ports) accepts only callers that present the cluster's shared secret, a [`Token`]:
//! as `authorization: Bearer <token>` metadata on gRPC ([`ClientAuth`], checked by
//! [`ServerAuth`]) and as an `Authorization: Bearer <token>` header on HTTP ([`Token::allows`]).
//! A missing or wrong token is refused with `Unauthenticated` / 401 and nothing else.
//!
//! Where the token comes from ([`resolve`]): `security.auth.token`, else the file
//! `security.auth.token-file`, else the user's default file ([`default_file`]), created with a
//! fresh random token (mode 0600) by whichever Weir process of the user needs it first. So the
//! processes one user starts on one machine share a token with no setup, and other users of
//! the machine cannot reach them.
//!
//! [`check_bind`] refuses a port bound off loopback unless TLS is on and a token is set, or the
//! operator said `--insecure`.
//!
//! Must not depend on any other Weir crate.

#![warn(missing_docs)]

mod tls;

pub use tls::{Tls, TlsFiles, TlsListener};

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Shortest token accepted (a generated one has 64 characters).
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest token accepted.
pub const MAX_TOKEN_LEN: usize = 512;

/// What is wrong with a token or its file.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The token is too short, too long, or has characters a header cannot carry.
    #[error("{origin}: {reason}")]
    BadToken {
        /// Where it came from (a key or a file).
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// The token file cannot be read or created.
    #[error("token file '{path}': {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A port would be reachable from other machines without protection.
    #[error(
        "{what} {addr} is not a loopback address: off loopback a Weir port needs TLS \
         (security.ssl.enabled) and a token (security.auth.token or security.auth.token-file); \
         --insecure binds it anyway"
    )]
    UnsafeBind {
        /// The flag or key that names the address.
        what: String,
        /// The address.
        addr: SocketAddr,
    },
}

/// The cluster's shared secret. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(******)")
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Self) -> bool {
        constant_time_eq(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl Eq for Token {}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("******")
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the fold from being cut short by the optimiser.
    std::hint::black_box(diff) == 0
}

impl Token {
    /// `text` as a token; `origin` names where it came from in errors (never the value).
    pub fn new(text: &str, origin: &str) -> Result<Self, SecurityError> {
        let bad = |reason: String| SecurityError::BadToken {
            origin: origin.to_string(),
            reason,
        };
        let text = text.trim();
        if text.len() < MIN_TOKEN_LEN || text.len() > MAX_TOKEN_LEN {
            return Err(bad(format!(
                "a token has {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} characters; this one has {}",
                text.len()
            )));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "a token is printable ASCII without spaces (it travels in a header)".into(),
            ));
        }
        Ok(Self(text.into()))
    }

    /// A fresh token: 32 bytes from the operating system's random source, as 64 hex digits.
    pub fn generate() -> Result<Self, SecurityError> {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| SecurityError::File {
                path: "/dev/urandom".into(),
                reason: e.to_string(),
            })?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self(hex.into()))
    }

    /// The secret itself, for a child process's environment or a file; never for a log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `Bearer <token>`.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether an `Authorization` value (`Bearer <token>`) carries this token.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let presented = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
            .unwrap_or(b"");
        constant_time_eq(presented, self.0.as_bytes())
    }
}

/// The default token file: `$XDG_CONFIG_HOME/weir/auth-token`, else
/// `$HOME/.config/weir/auth-token`.
pub fn default_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("weir").join("auth-token"))
}

/// Reads the token in `path`.
pub fn read_file(path: &Path) -> Result<Token, SecurityError> {
    let file_error = |reason: String| SecurityError::File {
        path: path.to_path_buf(),
        reason,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_LEN as u64 + 2).read_to_string(&mut text))
        .map_err(|e| file_error(e.to_string()))?;
    Token::new(&text, &format!("token file '{}'", path.display()))
}

/// Reads the token in `path`, or creates the file (mode 0600, its folder 0700) with a fresh
/// one when there is none; two processes racing to create it agree on the winner's token.
pub fn read_or_create(path: &Path) -> Result<Token, SecurityError> {
    let file_error = |reason: String| SecurityError::File {
        path: path.to_path_buf(),
        reason,
    };
    if path.exists() {
        return read_file(path);
    }
    if let Some(dir) = path.parent() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| file_error(e.to_string()))?;
    }
    let token = Token::generate()?;
    // Written under a name of its own (random: threads of one process, or processes with the
    // same pid in different containers, never share it), then linked into place: the file
    // appears whole or not at all, and a concurrent creator's link fails, so it reads the
    // winner's.
    let nonce = Token::generate()?;
    let staging = path.with_extension(format!("tmp-{}", &nonce.expose()[..16]));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&staging).and_then(|mut f| {
        f.write_all(token.expose().as_bytes())
            .and_then(|()| f.sync_all())
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&staging);
        return Err(file_error(e.to_string()));
    }
    let linked = std::fs::hard_link(&staging, path);
    let _ = std::fs::remove_file(&staging);
    match linked {
        Ok(()) => {
            tracing::info!(file = %path.display(), "generated this user's Weir token");
            Ok(token)
        }
        Err(_) if path.exists() => read_file(path),
        Err(e) => Err(file_error(e.to_string())),
    }
}

/// The token a process uses: `token` (`security.auth.token`), else `file`
/// (`security.auth.token-file`, which must exist), else the user's [`default_file`], created
/// when missing.
pub fn resolve(token: Option<&str>, file: Option<&Path>) -> Result<Token, SecurityError> {
    if let Some(t) = token {
        return Token::new(t, "security.auth.token");
    }
    if let Some(f) = file {
        return read_file(f);
    }
    let path = default_file().ok_or_else(|| SecurityError::File {
        path: PathBuf::from("$HOME/.config/weir/auth-token"),
        reason: "neither XDG_CONFIG_HOME nor HOME is set; set security.auth.token-file".into(),
    })?;
    read_or_create(&path)
}

/// Refuses `addr` (named `what` in the error) when it is not loopback, unless `tls` and a
/// token protect it or `insecure` is set (then it logs a warning).
pub fn check_bind(
    what: &str,
    addr: SocketAddr,
    tls: bool,
    insecure: bool,
) -> Result<(), SecurityError> {
    if addr.ip().is_loopback() || tls {
        return Ok(());
    }
    if insecure {
        tracing::warn!(%what, %addr, "--insecure: this port is reachable off loopback without TLS");
        return Ok(());
    }
    Err(SecurityError::UnsafeBind {
        what: what.to_string(),
        addr,
    })
}

/// Adds `authorization: Bearer <token>` to every gRPC request of a client (nothing when it
/// has no token: a process whose embedder chose none).
#[derive(Clone)]
pub struct ClientAuth(Option<MetadataValue<Ascii>>);

impl ClientAuth {
    /// Sends `token`, if any.
    pub fn new(token: Option<&Token>) -> Self {
        Self(token.map(|t| {
            let mut value: MetadataValue<Ascii> = t
                .bearer()
                .parse()
                .expect("a token is printable ASCII (checked when made)");
            value.set_sensitive(true);
            value
        }))
    }
}

impl Interceptor for ClientAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Refuses every gRPC request without the token, with `Unauthenticated`. Without a token
/// (an embedded server whose embedder chose none) every request passes.
#[derive(Clone)]
pub struct ServerAuth(Option<Token>);

impl ServerAuth {
    /// Accepts `token` only; `None` accepts all.
    pub fn new(token: Option<Token>) -> Self {
        Self(token)
    }
}

impl Interceptor for ServerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.0 else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        if token.allows(presented) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong token (authorization: Bearer <security.auth.token>)",
            ))
        }
    }
}

/// A client channel that sends the token.
pub type AuthChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, ClientAuth>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_checked_whole_and_never_printed() {
        let t = Token::new("0123456789abcdef-secret", "test").unwrap();
        assert!(t.allows(Some(b"Bearer 0123456789abcdef-secret")));
        assert!(!t.allows(Some(b"Bearer 0123456789abcdef-secreT")));
        assert!(!t.allows(Some(b"Bearer 0123456789abcdef-secret ")));
        assert!(!t.allows(Some(b"0123456789abcdef-secret")));
        assert!(!t.allows(Some(b"Bearer ")));
        assert!(!t.allows(None));
        assert_eq!(format!("{t:?} {t}"), "Token(******) ******");
    }

    #[test]
    fn a_short_spaced_or_binary_token_is_refused_naming_its_origin_not_its_value() {
        for bad in [
            "short",
            "has a space in it ok",
            "tab\there-and-more-bytes",
            "é-not-ascii-but-long",
        ] {
            let e = Token::new(bad, "security.auth.token")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("security.auth.token:"), "{e}");
            assert!(!e.contains(bad), "{e}");
        }
    }

    #[test]
    fn the_token_file_is_created_once_private_and_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir").join("auth-token");
        let a = read_or_create(&path).unwrap();
        let b = read_or_create(&path).unwrap();
        assert_eq!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "only its owner reads it: {mode:o}");
        }
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    #[test]
    fn a_missing_or_empty_token_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = resolve(None, Some(&missing)).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        let e = resolve(None, Some(&empty)).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn off_loopback_needs_tls_or_insecure() {
        let any: SocketAddr = "0.0.0.0:6123".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:6123".parse().unwrap();
        let lo6: SocketAddr = "[::1]:6123".parse().unwrap();
        assert!(check_bind("--rpc-bind", lo, false, false).is_ok());
        assert!(check_bind("--rpc-bind", lo6, false, false).is_ok());
        let e = check_bind("--rpc-bind", any, false, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--rpc-bind 0.0.0.0:6123") && e.contains("--insecure"),
            "{e}"
        );
        assert!(check_bind("--rpc-bind", any, true, false).is_ok());
        assert!(check_bind("--rpc-bind", any, false, true).is_ok());
    }

    #[test]
    fn the_server_interceptor_refuses_what_the_client_interceptor_does_not_sign() {
        let t = Token::generate().unwrap();
        let mut server = ServerAuth::new(Some(t.clone()));
        let status = server.call(Request::new(())).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let signed = ClientAuth::new(Some(&t)).call(Request::new(())).unwrap();
        assert!(server.call(signed).is_ok());
        let other = Token::generate().unwrap();
        let wrong = ClientAuth::new(Some(&other))
            .call(Request::new(()))
            .unwrap();
        assert_eq!(
            server.call(wrong).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let unsigned = ClientAuth::new(None).call(Request::new(())).unwrap();
        assert!(ServerAuth::new(None).call(unsigned).is_ok());
    }
}
