//! The server's connections: its own accept loop in front of tonic, with connection caps, a TLS
//! handshake timeout and a first-bytes timeout, and the open-files limit they must fit in.
//!
//! tonic's own `serve` accepts every TCP connection and, with TLS, waits on its handshake with
//! no timeout: half-open connections and silent sockets stayed open for as long as their peer
//! liked, and enough of them used up the process's open files, so an honest query hung. Here:
//!
//! - a connection over the per-address or the total cap is closed right after accept, before
//!   any TLS work ([`ConnectionLimits::per_address`], [`ConnectionLimits::total`]);
//! - each TLS handshake runs in its own task under [`ConnectionLimits::handshake_timeout`], so a
//!   slow one never holds up accepting the next connection;
//! - a connection (plaintext, or TLS after its handshake) that sends no byte of application
//!   data within [`ConnectionLimits::first_bytes_timeout`] is closed: [`Connection`] fails its
//!   first read, and hyper drops it;
//! - a connection counts against the caps from accept until hyper drops it (its [`Connection`]
//!   holds the count).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::client_cert::{CertificateDigest, ClientAuth, digest};
use crate::tls::{TlsError, TlsIdentity};

/// Open files kept free for everything but connections: the state database (and its journal),
/// data files, object storage clients, the listener itself.
pub const RESERVED_FILES: u64 = 64;

/// How long the accept loop waits before accepting again after an error that is not about one
/// connection (e.g. the process is out of open files), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Connections handed to tonic that it has not taken yet.
const QUEUE: usize = 64;

/// How many connections a server keeps open, and how long a connection may take to show it is
/// a real client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections from one IP address (IPv4-mapped IPv6 addresses count as IPv4); one
    /// more is closed right after accept. Default: 64.
    pub per_address: u32,
    /// Open connections in all; one more is closed right after accept. Default: 1,024, and
    /// never more than the open-files limit minus [`RESERVED_FILES`] (see
    /// [`ConnectionLimits::fitted`]).
    pub total: u32,
    /// How long a TLS handshake may take from accept; a connection still handshaking then is
    /// closed. Default: 10 s.
    pub handshake_timeout: Duration,
    /// How long a connection may go, after accept (plaintext) or after its handshake (TLS),
    /// before its first byte of application data (the HTTP/2 preface); a silent one is closed
    /// then. Default: 10 s.
    pub first_bytes_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            per_address: 64,
            total: 1024,
            handshake_timeout: Duration::from_secs(10),
            first_bytes_timeout: Duration::from_secs(10),
        }
    }
}

/// Connection limits that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionLimitsError {
    /// A limit is zero, which would close every connection.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

impl ConnectionLimits {
    /// Checks that every limit lets some connection through.
    pub fn validate(&self) -> Result<(), ConnectionLimitsError> {
        if self.per_address == 0 {
            return Err(ConnectionLimitsError::Zero("max connections per address"));
        }
        if self.total == 0 {
            return Err(ConnectionLimitsError::Zero("max connections"));
        }
        if self.handshake_timeout.is_zero() {
            return Err(ConnectionLimitsError::Zero("handshake timeout"));
        }
        if self.first_bytes_timeout.is_zero() {
            return Err(ConnectionLimitsError::Zero("first-bytes timeout"));
        }
        Ok(())
    }

    /// These limits with [`ConnectionLimits::total`] lowered, if need be, to fit an open-files
    /// limit of `open_files` (`None`: unknown, no change) less [`RESERVED_FILES`], and never
    /// below one connection.
    pub fn fitted(&self, open_files: Option<u64>) -> ConnectionLimits {
        let Some(open_files) = open_files else {
            return *self;
        };
        let room = open_files.saturating_sub(RESERVED_FILES).max(1);
        let total = u64::from(self.total).min(room);
        ConnectionLimits {
            total: u32::try_from(total).unwrap_or(self.total),
            ..*self
        }
    }
}

/// The process's open-files limit (the soft `RLIMIT_NOFILE`) before and after
/// [`raise_open_files_limit`]; `None` where the platform has no such limit or it cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFilesLimit {
    /// The limit as the process started with it.
    pub before: Option<u64>,
    /// The limit now: the hard limit if raising worked, else `before`.
    pub now: Option<u64>,
}

/// Raises the process's soft open-files limit to its hard limit (where the platform allows;
/// on macOS, to the kernel's per-process maximum) and says what it was and is. Never fails: a
/// limit that cannot be raised is reported as it is. Calling it again changes nothing.
pub fn raise_open_files_limit() -> OpenFilesLimit {
    #[cfg(unix)]
    {
        let soft = || {
            rlimit::Resource::NOFILE
                .get()
                .ok()
                .map(|(soft, _hard)| soft)
        };
        let before = soft();
        // An error leaves the limit as it was; `now` reads it again either way.
        let _ = rlimit::increase_nofile_limit(u64::MAX);
        OpenFilesLimit {
            before,
            now: soft(),
        }
    }
    #[cfg(not(unix))]
    {
        OpenFilesLimit {
            before: None,
            now: None,
        }
    }
}

/// Why the server's connections cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionsError {
    /// Unusable connection limits.
    #[error(transparent)]
    Limits(#[from] ConnectionLimitsError),
    /// The TLS identity does not make a TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The open connections of one listener: counts per address and in all, against the caps.
#[derive(Debug, Clone)]
pub struct Connections {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    limits: ConnectionLimits,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    per_address: HashMap<IpAddr, u32>,
    refused: u64,
}

impl Shared {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        // Nothing panics while holding the lock; a poisoned lock still has consistent counts.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for one more connection from `ip`, or `None` when a cap is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = ip.to_canonical();
        let mut counts = self.counts();
        let from_ip = counts.per_address.get(&ip).copied().unwrap_or(0);
        if counts.total >= self.limits.total || from_ip >= self.limits.per_address {
            counts.refused += 1;
            return None;
        }
        counts.total += 1;
        counts.per_address.insert(ip, from_ip + 1);
        Some(Slot {
            shared: Arc::clone(self),
            ip,
        })
    }
}

/// One connection's place under the caps, given back when dropped.
#[derive(Debug)]
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.shared.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_address.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_address.remove(&self.ip);
            }
        }
    }
}

impl Connections {
    /// Accepts connections on `listener` under `limits` (with TLS when `tls` is given, asking
    /// for client certificates as `clients` says) in a task of its own, and returns them as a
    /// stream for tonic's `serve_with_incoming_shutdown`: only connections under the caps, with their TLS
    /// handshake done in time, each closed if it sends nothing within the first-bytes timeout.
    /// The accept loop stops when the stream is dropped. Must be called within a tokio runtime.
    pub fn accept(
        listener: TcpListener,
        limits: ConnectionLimits,
        tls: Option<&TlsIdentity>,
        clients: &ClientAuth,
    ) -> Result<(Connections, Incoming), ConnectionsError> {
        limits.validate()?;
        let tls = match tls {
            Some(identity) => Some(TlsAcceptor::from(identity.rustls_server_config(clients)?)),
            None => None,
        };
        let connections = Connections {
            shared: Arc::new(Shared {
                limits,
                counts: Mutex::new(Counts::default()),
            }),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(accept_loop(
            listener,
            Arc::clone(&connections.shared),
            tls,
            tx,
        ));
        Ok((
            connections,
            Incoming {
                inner: ReceiverStream::new(rx),
            },
        ))
    }

    /// The limits these connections are held to.
    pub fn limits(&self) -> ConnectionLimits {
        self.shared.limits
    }

    /// Connections open now (from accept, through any handshake, until dropped).
    pub fn open(&self) -> u32 {
        self.shared.counts().total
    }

    /// Connections open now from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> u32 {
        let counts = self.shared.counts();
        counts
            .per_address
            .get(&ip.to_canonical())
            .copied()
            .unwrap_or(0)
    }

    /// Connections closed right after accept because a cap was reached, so far.
    pub fn refused(&self) -> u64 {
        self.shared.counts().refused
    }
}

/// The stream of connections ready for HTTP/2, for tonic's `serve_with_incoming_shutdown`.
#[derive(Debug)]
pub struct Incoming {
    inner: ReceiverStream<Result<Connection, Infallible>>,
}

impl tokio_stream::Stream for Incoming {
    type Item = Result<Connection, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// Whether an accept error is about one connection only (accept again at once) rather than
/// the process (out of open files or memory: wait a little first).
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    tx: mpsc::Sender<Result<Connection, Infallible>>,
) {
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_per_connection(&error) => continue,
            Err(_) => {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Over a cap: dropped here, before any TLS work.
        let Some(slot) = shared.admit(peer.ip()) else {
            continue;
        };
        let info = TcpConnectInfo {
            local_addr: stream.local_addr().ok(),
            remote_addr: Some(peer),
        };
        // What tonic's own TCP incoming sets (`tcp_nodelay(true)` on the builder).
        let _ = stream.set_nodelay(true);
        let limits = shared.limits;
        let tls = tls.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut info = PeerInfo {
                tcp: info,
                client_cert_sha256: None,
            };
            let io: Box<dyn Io> = match tls {
                None => Box::new(stream),
                Some(acceptor) => {
                    match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            info.client_cert_sha256 = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(<[_]>::first)
                                .map(|cert| digest(cert));
                            Box::new(stream)
                        }
                        // Timed out or failed: dropping the stream closes it and frees the slot.
                        Ok(Err(_)) | Err(_) => return,
                    }
                }
            };
            let connection = Connection::new(io, info, slot, limits.first_bytes_timeout);
            // The server stopped: the connection is dropped with the message.
            let _ = tx.send(Ok(connection)).await;
        });
    }
}

/// A byte stream a [`Connection`] can carry: plain TCP or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// An accepted connection (TCP, or TLS after its handshake) under the caps: it holds its place
/// under them until dropped, and its reads fail with `TimedOut` if no byte arrives within the
/// first-bytes timeout of its creation. tonic sees the peer's address through [`Connected`]
/// (`Request::remote_addr` works, with TLS too).
pub struct Connection {
    io: Box<dyn Io>,
    info: PeerInfo,
    /// Until the first byte arrives: when the connection is given up.
    first_bytes: Option<Pin<Box<Sleep>>>,
    _slot: Slot,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.info)
            .field("waiting_for_first_bytes", &self.first_bytes.is_some())
            .finish_non_exhaustive()
    }
}

impl Connection {
    fn new(io: Box<dyn Io>, info: PeerInfo, slot: Slot, first_bytes: Duration) -> Self {
        Connection {
            io,
            info,
            first_bytes: Some(Box::pin(tokio::time::sleep(first_bytes))),
            _slot: slot,
        }
    }
}

/// What the service knows of a connection's peer: its addresses, and the digest of the client
/// certificate it presented over TLS (one the handshake accepted: chained to the client CA when
/// there is one, else one of the collaboration's pins).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The local and remote addresses.
    pub tcp: TcpConnectInfo,
    /// The client certificate's SHA-256, when the peer presented one.
    pub client_cert_sha256: Option<CertificateDigest>,
}

impl Connected for Connection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(deadline) = &mut this.first_bytes {
            match &polled {
                Poll::Ready(Ok(())) if buf.filled().len() > before => this.first_bytes = None,
                Poll::Ready(_) => {}
                Poll::Pending => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no data within the first-bytes timeout",
                        )));
                    }
                }
            }
        }
        polled
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::Instant;
    use tokio_rustls::rustls;
    use tokio_stream::StreamExt;

    fn limits(per_address: u32, total: u32, timeouts: Duration) -> ConnectionLimits {
        ConnectionLimits {
            per_address,
            total,
            handshake_timeout: timeouts,
            first_bytes_timeout: timeouts,
        }
    }

    async fn start(
        limits: ConnectionLimits,
        tls: Option<&TlsIdentity>,
    ) -> (SocketAddr, Connections, Incoming) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connections, incoming) =
            Connections::accept(listener, limits, tls, &ClientAuth::default()).unwrap();
        (addr, connections, incoming)
    }

    /// How long until the server closed `stream` (end of stream or reset), or `None` if it is
    /// still open after `within`. Data from the server (a TLS alert) is read past.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(start + within, stream.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn next(incoming: &mut Incoming) -> Connection {
        match tokio::time::timeout(Duration::from_secs(5), incoming.next()).await {
            Ok(Some(Ok(connection))) => connection,
            other => panic!("no connection came through: {other:?}"),
        }
    }

    /// Serves connections as hyper does: reads until the end or an error, then drops them.
    fn drain(mut incoming: Incoming) {
        tokio::spawn(async move {
            while let Some(Ok(mut connection)) = incoming.next().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(1..) = connection.read(&mut buf).await {}
                });
            }
        });
    }

    fn client_config(identity: &TlsIdentity) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&identity.cert_pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    #[test]
    fn defaults_are_valid_and_zero_limits_are_refused() {
        let defaults = ConnectionLimits::default();
        assert_eq!(defaults.validate(), Ok(()));
        assert_eq!((defaults.per_address, defaults.total), (64, 1024));
        for (limits, what) in [
            (
                ConnectionLimits {
                    per_address: 0,
                    ..defaults
                },
                "max connections per address",
            ),
            (
                ConnectionLimits {
                    total: 0,
                    ..defaults
                },
                "max connections",
            ),
            (
                ConnectionLimits {
                    handshake_timeout: Duration::ZERO,
                    ..defaults
                },
                "handshake timeout",
            ),
            (
                ConnectionLimits {
                    first_bytes_timeout: Duration::ZERO,
                    ..defaults
                },
                "first-bytes timeout",
            ),
        ] {
            assert_eq!(limits.validate(), Err(ConnectionLimitsError::Zero(what)));
        }
    }

    #[test]
    fn the_total_fits_the_open_files_limit() {
        let defaults = ConnectionLimits::default();
        assert_eq!(defaults.fitted(None), defaults);
        assert_eq!(defaults.fitted(Some(1024)).total, 1024 - 64);
        assert_eq!(defaults.fitted(Some(524_288)).total, 1024);
        assert_eq!(defaults.fitted(Some(10)).total, 1);
        assert_eq!(defaults.fitted(Some(u64::MAX)).total, 1024);
        assert_eq!(defaults.fitted(Some(1024)).per_address, 64);
    }

    #[test]
    fn the_open_files_limit_only_goes_up() {
        let first = raise_open_files_limit();
        if cfg!(unix) {
            let (before, now) = (first.before.unwrap(), first.now.unwrap());
            assert!(now >= before, "{first:?}");
            // Raised already: a second call changes nothing.
            let second = raise_open_files_limit();
            assert_eq!(second.before, second.now);
            assert_eq!(second.now, first.now);
        }
    }

    #[tokio::test]
    async fn a_connection_that_never_sends_a_client_hello_is_closed_after_the_handshake_timeout() {
        let identity = TlsIdentity::self_signed(&["localhost"]).unwrap();
        let (addr, connections, incoming) =
            start(limits(8, 8, Duration::from_millis(300)), Some(&identity)).await;
        drain(incoming);
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let closed = closed_within(&mut silent, Duration::from_secs(5)).await;
        let closed = closed.expect("the server kept a connection without a ClientHello");
        assert!(
            closed >= Duration::from_millis(250),
            "closed after {closed:?}"
        );
        assert_eq!(connections.open(), 0);
    }

    #[tokio::test]
    async fn a_slow_handshake_does_not_hold_up_the_next_one() {
        let identity = TlsIdentity::self_signed(&["localhost"]).unwrap();
        let (addr, connections, mut incoming) =
            start(limits(8, 8, Duration::from_secs(5)), Some(&identity)).await;
        // Half a ClientHello (a record header announcing 512 bytes, then 5 of them).
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 1, 2, 3, 4, 5])
            .await
            .unwrap();
        let started = Instant::now();
        let connector = tokio_rustls::TlsConnector::from(client_config(&identity));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut honest = connector.connect(name, tcp).await.unwrap();
        assert_eq!(honest.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        honest.write_all(b"PRI * HTTP/2.0").await.unwrap();
        let mut connection = next(&mut incoming).await;
        assert!(started.elapsed() < Duration::from_secs(4));
        let mut buf = [0u8; 14];
        connection.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"PRI * HTTP/2.0");
        assert_eq!(
            connection.connect_info().tcp.remote_addr(),
            Some(honest.get_ref().0.local_addr().unwrap())
        );
        assert_eq!(connections.open(), 2, "the stalled handshake still counts");
        assert!(
            closed_within(&mut stalled, Duration::from_millis(100))
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_after_the_first_bytes_timeout() {
        let (addr, connections, incoming) =
            start(limits(8, 8, Duration::from_millis(300)), None).await;
        drain(incoming);
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut talking = TcpStream::connect(addr).await.unwrap();
        talking.write_all(b"P").await.unwrap();
        let closed = closed_within(&mut silent, Duration::from_secs(5)).await;
        let closed = closed.expect("the server kept a connection that sent nothing");
        assert!(
            closed >= Duration::from_millis(250),
            "closed after {closed:?}"
        );
        // A connection that sent its first byte in time may then go quiet.
        assert!(
            closed_within(&mut talking, Duration::from_millis(500))
                .await
                .is_none()
        );
        assert_eq!(connections.open(), 1);
    }

    #[tokio::test]
    async fn the_per_address_cap_closes_one_more_at_once_and_a_closed_one_frees_its_slot() {
        let (addr, connections, mut incoming) =
            start(limits(3, 100, Duration::from_secs(10)), None).await;
        let mut clients = Vec::new();
        let mut served = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            served.push(next(&mut incoming).await);
        }
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let closed = closed_within(&mut extra, Duration::from_secs(1)).await;
        let closed = closed.expect("the connection over the cap stayed open");
        assert!(
            closed < Duration::from_millis(500),
            "closed after {closed:?}"
        );
        for client in &mut clients {
            assert!(
                closed_within(client, Duration::from_millis(100))
                    .await
                    .is_none()
            );
        }
        let localhost: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(connections.open_from(localhost), 3);
        assert_eq!(connections.refused(), 1);

        // A connection dropped by the server (as hyper drops it) gives its slot back.
        drop(served.pop());
        assert_eq!(connections.open(), 2);
        let mut again = TcpStream::connect(addr).await.unwrap();
        served.push(next(&mut incoming).await);
        assert!(
            closed_within(&mut again, Duration::from_millis(200))
                .await
                .is_none()
        );
        assert_eq!(connections.open(), 3);
        assert_eq!(connections.refused(), 1);
    }

    #[tokio::test]
    async fn the_total_cap_closes_one_more_at_once() {
        let (addr, connections, mut incoming) =
            start(limits(100, 2, Duration::from_secs(10)), None).await;
        let (mut clients, mut served) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            served.push(next(&mut incoming).await);
        }
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let closed = closed_within(&mut extra, Duration::from_secs(1)).await;
        assert!(
            closed.is_some(),
            "the connection over the total stayed open"
        );
        assert_eq!((connections.open(), connections.refused()), (2, 1));
    }
}
