//! A byte meter between the database driver and the server.
//!
//! sqlx reads every protocol message whole before drhost sees a value, so
//! the byte cap in `collect` comes too late for one huge row: a single
//! PostgreSQL value can be 1 GB (`SELECT repeat('x', 400000000)`), a
//! MariaDB row as large as the server's `max_allowed_packet`. The driver
//! therefore reaches the server through this relay, on a Unix socket in a
//! private directory: it counts what the server sends in answer to each
//! request (the bytes since the driver last wrote) and closes both sides
//! once an answer passes the allowance. No answer larger than that ever
//! reaches the driver's buffers.
//!
//! Counting is not quite enough for PostgreSQL: sqlx reserves (and zeroes)
//! a buffer for a whole message as soon as it reads the message's 5-byte
//! header, so a header that announces 400 MB costs 400 MB at once. The relay
//! therefore also reads PostgreSQL's message headers and closes the
//! connection before a header announcing more than the allowance reaches the
//! driver. (MariaDB sends at most 16 MiB per packet: counting bounds it.)
//!
//! TLS: MariaDB's passes through the relay (the driver checks the
//! certificate; counting works on encrypted bytes too). PostgreSQL's is
//! ended in the relay ([`super::tls`]), because headers inside TLS cannot be
//! read: the relay asks the server for TLS and checks its certificate as
//! the URL's `sslmode` says, and the driver speaks plaintext to the relay.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

use super::tls::{Insist, PgTls};

/// Where the server really is.
#[derive(Debug, Clone)]
pub enum Upstream {
    Tcp(String, u16),
    Unix(PathBuf),
}

/// What the relay knows of the protocol it carries.
#[derive(Debug, Clone)]
pub enum Protocol {
    /// Bytes only (MariaDB; its TLS, if any, passes through).
    Opaque,
    /// PostgreSQL: message headers are checked too, and TLS to the server,
    /// if the URL asks for it, is the relay's.
    Postgres(Option<PgTls>),
}

/// PostgreSQL's `SSLRequest`: a client that wants TLS sends it first, and the
/// server answers with one byte, `S` (TLS follows) or `N`.
const PG_SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Where the relay is in PostgreSQL's stream of server messages (always
/// plaintext here: TLS, if any, was ended before).
#[derive(Debug, PartialEq, Eq)]
enum PgState {
    /// Inside a message header (type byte and 4-byte length): its bytes so far.
    Header(Vec<u8>),
    /// Inside a message body: bytes left.
    Body(u64),
}

impl PgState {
    fn new() -> PgState {
        PgState::Header(Vec::new())
    }

    /// Follows `chunk` from the server; `Err(announced)` when a message
    /// announces a body larger than `allowance`.
    fn follow(&mut self, chunk: &[u8], allowance: u64) -> Result<(), u64> {
        let mut rest = chunk;
        while !rest.is_empty() {
            match self {
                PgState::Header(h) => {
                    let take = (5 - h.len()).min(rest.len());
                    h.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if h.len() == 5 {
                        // The length counts itself, not the type byte.
                        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
                        let body = u64::from(len).saturating_sub(4);
                        if body > allowance {
                            return Err(body);
                        }
                        *self = PgState::Body(body);
                    }
                }
                PgState::Body(left) => {
                    let take = (*left).min(rest.len() as u64);
                    rest = &rest[take as usize..];
                    *left -= take;
                    if *left == 0 {
                        *self = PgState::Header(Vec::new());
                    }
                }
            }
        }
        // A body that ended exactly at the chunk's end.
        if *self == PgState::Body(0) {
            *self = PgState::Header(Vec::new());
        }
        Ok(())
    }
}

/// One relay, for one connection URL; stops when dropped.
pub struct Meter {
    dir: tempfile::TempDir,
    accept: tokio::task::JoinHandle<()>,
    /// Why the last connection to the server failed, for the driver's error
    /// (which only sees the relay close).
    last_error: Arc<std::sync::Mutex<Option<String>>>,
}

const CHUNK: usize = 64 << 10;

impl Meter {
    /// Listens on `<private dir>/<socket_name>` and relays each connection to
    /// `upstream`, closing it when one answer passes `allowance` bytes.
    /// Counts those cuts into `cuts`, which the caller shares, so it can tell
    /// a cut from a network failure.
    pub fn start(
        upstream: Upstream,
        protocol: Protocol,
        socket_name: &str,
        allowance: u64,
        cuts: Arc<AtomicU64>,
    ) -> io::Result<Meter> {
        // tempfile makes the directory 0700: only drhost's user can connect.
        let dir = tempfile::Builder::new().prefix("drhost-db-").tempdir()?;
        let listener = UnixListener::bind(dir.path().join(socket_name))?;
        let last_error = Arc::new(std::sync::Mutex::new(None));
        let accept = tokio::spawn({
            let last_error = Arc::clone(&last_error);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let upstream = upstream.clone();
                    let protocol = protocol.clone();
                    let cuts = Arc::clone(&cuts);
                    let last_error = Arc::clone(&last_error);
                    tokio::spawn(async move {
                        let server = match connect(&upstream, &protocol).await {
                            Ok(s) => s,
                            Err(e) => {
                                // Recorded before the driver's side closes, so
                                // the driver's error can name the cause.
                                if let Ok(mut last) = last_error.lock() {
                                    *last = Some(e.to_string());
                                }
                                drop(client);
                                return;
                            }
                        };
                        let pg = matches!(protocol, Protocol::Postgres(_));
                        if let Err(e) = relay(client, server, pg, allowance, &cuts).await {
                            tracing::debug!("database relay: {e}");
                        }
                    });
                }
            }
        });
        Ok(Meter {
            dir,
            accept,
            last_error,
        })
    }

    /// The directory holding the socket (PostgreSQL's `socket` option).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Why the relay last failed to reach the server, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

type Halves = (
    Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
);

async fn connect(upstream: &Upstream, protocol: &Protocol) -> io::Result<Halves> {
    let tls = match protocol {
        Protocol::Postgres(Some(tls)) => Some(tls),
        _ => None,
    };
    match upstream {
        Upstream::Tcp(host, port) => {
            let s = TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("{host}:{port}: {e}")))?;
            s.set_nodelay(true)?;
            match tls {
                Some(tls) => pg_tls(s, tls).await,
                None => {
                    let (r, w) = s.into_split();
                    Ok((Box::new(r), Box::new(w)))
                }
            }
        }
        Upstream::Unix(path) => {
            let s = UnixStream::connect(path)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            match tls {
                Some(tls) => pg_tls(s, tls).await,
                None => {
                    let (r, w) = s.into_split();
                    Ok((Box::new(r), Box::new(w)))
                }
            }
        }
    }
}

/// Asks a PostgreSQL server for TLS (`SSLRequest`) and does the handshake,
/// checking the certificate as `tls` says; plaintext if the server refuses
/// and the mode allows it.
async fn pg_tls<S>(mut s: S, tls: &PgTls) -> io::Result<Halves>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    s.write_all(&PG_SSL_REQUEST).await?;
    // One byte only: anything the server sent after it must be TLS, so a
    // plaintext answer injected before the handshake fails it.
    let mut answer = [0u8];
    s.read_exact(&mut answer).await?;
    match (answer[0], tls.insist) {
        (b'S', _) => {
            let stream = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config))
                .connect(tls.server_name.clone(), s)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("TLS: {e}")))?;
            let (r, w) = tokio::io::split(stream);
            Ok((Box::new(r), Box::new(w)))
        }
        (b'N', Insist::Prefer) => {
            let (r, w) = tokio::io::split(s);
            Ok((Box::new(r), Box::new(w)))
        }
        (b'N', Insist::Require) => Err(io::Error::other(
            "the server does not support TLS, which the URL's sslmode requires",
        )),
        (other, _) => Err(io::Error::other(format!(
            "unexpected answer 0x{other:02x} to a TLS request"
        ))),
    }
}

async fn relay(
    client: UnixStream,
    (mut server_r, mut server_w): Halves,
    postgres: bool,
    allowance: u64,
    cuts: &AtomicU64,
) -> io::Result<()> {
    let (mut client_r, mut client_w) = client.into_split();
    // Bytes the server has sent since the driver last wrote: one answer.
    let answered = AtomicU64::new(0);
    let requests = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = client_r.read(&mut buf).await?;
            if n == 0 {
                return server_w.shutdown().await;
            }
            answered.store(0, Ordering::SeqCst);
            server_w.write_all(&buf[..n]).await?;
        }
    };
    let answers = async {
        let mut buf = vec![0u8; CHUNK];
        let mut pg = PgState::new();
        loop {
            let n = server_r.read(&mut buf).await?;
            if n == 0 {
                return client_w.shutdown().await;
            }
            let total = answered.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            let announced = if postgres {
                pg.follow(&buf[..n], allowance).err()
            } else {
                None
            };
            if total > allowance || announced.is_some() {
                cuts.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(
                    "a database answer passed {allowance} bytes: connection closed ([limits] max-guest-bytes)"
                );
                // Dropping both halves closes the driver's socket and the server's.
                return Ok(());
            }
            client_w.write_all(&buf[..n]).await?;
        }
    };
    // Either side ending ends the connection.
    tokio::select! {
        r = requests => r,
        r = answers => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers every request with `size` bytes.
    async fn server(size: usize) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut req = [0u8; 16];
                    while let Ok(n) = s.read(&mut req).await {
                        if n == 0 {
                            return;
                        }
                        let answer = vec![b'x'; size];
                        if s.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    async fn ask(meter: &Meter, times: usize, expect: usize) -> io::Result<()> {
        let mut c = UnixStream::connect(meter.dir().join("s")).await?;
        for _ in 0..times {
            c.write_all(b"?").await?;
            let mut got = vec![0u8; expect];
            c.read_exact(&mut got).await?;
        }
        Ok(())
    }

    /// A PostgreSQL message: type byte, length (counting itself), body.
    fn pg_message(kind: u8, body: usize) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&u32::try_from(body + 4).unwrap().to_be_bytes());
        m.extend(std::iter::repeat_n(b'x', body));
        m
    }

    #[test]
    fn a_postgres_header_announcing_too_much_is_caught_wherever_the_chunks_split_it() {
        let mut stream = pg_message(b'R', 8);
        stream.extend(pg_message(b'D', 100));
        stream.extend(pg_message(b'D', 5000)); // over an allowance of 1000
        for split in 1..stream.len() {
            let mut pg = PgState::new();
            let r = pg
                .follow(&stream[..split], 1000)
                .and_then(|()| pg.follow(&stream[split..], 1000));
            assert_eq!(r, Err(5000), "split at {split}");
        }
        // Within the allowance, any number of messages pass.
        let mut pg = PgState::new();
        let many: Vec<u8> = (0..100).flat_map(|_| pg_message(b'D', 900)).collect();
        assert_eq!(pg.follow(&many, 1000), Ok(()));
    }

    #[tokio::test]
    async fn answers_within_the_allowance_pass_however_many_there_are() {
        let port = server(1000).await;
        let cuts = Arc::new(AtomicU64::new(0));
        let m = Meter::start(
            Upstream::Tcp("127.0.0.1".into(), port),
            Protocol::Opaque,
            "s",
            1000,
            Arc::clone(&cuts),
        )
        .unwrap();
        // 50 answers of 1000 bytes: 50 000 in all, each within 1000.
        ask(&m, 50, 1000).await.unwrap();
        assert_eq!(cuts.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_answer_past_the_allowance_closes_the_connection_before_it_arrives() {
        let port = server(4 << 20).await;
        let cuts = Arc::new(AtomicU64::new(0));
        let m = Meter::start(
            Upstream::Tcp("127.0.0.1".into(), port),
            Protocol::Opaque,
            "s",
            1 << 20,
            Arc::clone(&cuts),
        )
        .unwrap();
        let mut c = UnixStream::connect(m.dir().join("s")).await.unwrap();
        c.write_all(b"?").await.unwrap();
        let mut got = Vec::new();
        // The relay closes the socket: the read ends, with at most the allowance.
        let _ = c.read_to_end(&mut got).await;
        assert!(got.len() <= 1 << 20, "{} bytes got through", got.len());
        assert_eq!(cuts.load(Ordering::SeqCst), 1);
    }

    /// A server that answers a TLS request with `answer`, then echoes.
    async fn refusing_tls(answer: u8) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut req = [0u8; 8];
                    if s.read_exact(&mut req).await.is_err() || req != PG_SSL_REQUEST {
                        return;
                    }
                    let _ = s.write_all(&[answer]).await;
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&pg_message(b'Z', n)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    fn pg_meter(port: u16, mode: sqlx::postgres::PgSslMode) -> Meter {
        let tls = PgTls::new(mode, "127.0.0.1", &super::super::tls::TlsFiles::default()).unwrap();
        Meter::start(
            Upstream::Tcp("127.0.0.1".into(), port),
            Protocol::Postgres(tls),
            "s",
            1 << 20,
            Arc::new(AtomicU64::new(0)),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_server_refusing_tls_is_refused_when_required_and_spoken_to_in_plaintext_when_preferred()
     {
        use sqlx::postgres::PgSslMode;
        let port = refusing_tls(b'N').await;
        // prefer: plaintext goes on (each answer: a 5-byte header and 1 byte).
        let m = pg_meter(port, PgSslMode::Prefer);
        ask(&m, 2, 6).await.unwrap();
        // require: the relay closes, and says why.
        let m = pg_meter(port, PgSslMode::Require);
        assert!(ask(&m, 1, 6).await.is_err());
        let why = m.last_error().expect("the relay says why");
        assert!(why.contains("does not support TLS"), "{why}");
        // Neither S nor N: a protocol error, named.
        let port = refusing_tls(b'E').await;
        let m = pg_meter(port, PgSslMode::Prefer);
        assert!(ask(&m, 1, 6).await.is_err());
        let why = m.last_error().expect("the relay says why");
        assert!(why.contains("0x45"), "{why}");
    }

    #[tokio::test]
    async fn a_server_that_cannot_be_reached_is_named() {
        // A port nobody listens on: bind, note it, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let m = Meter::start(
            Upstream::Tcp("127.0.0.1".into(), port),
            Protocol::Opaque,
            "s",
            1 << 20,
            Arc::new(AtomicU64::new(0)),
        )
        .unwrap();
        let r = ask(&m, 1, 1).await;
        assert!(r.is_err());
        // The relay records why before it closes the driver's side.
        let why = m.last_error().expect("the relay says why it failed");
        assert!(why.contains(&format!("127.0.0.1:{port}")), "{why}");
    }
}
