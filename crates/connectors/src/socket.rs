//! Lines from a TCP socket, as Flink's `socketTextStream` (try it with `nc -lk 9999`).

use crate::{subtask_of, ConnectorError};
use std::io::{self, BufReader};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_runtime::{Source, SourceContext, SourcePoll, SourceReader, UserError};

/// How long one read may block; also how soon an idle reader notices cancellation.
const READ_TIMEOUT: Duration = Duration::from_millis(50);
/// How long one `poll` keeps reading once it has records (a slow trickle must not hold them).
const POLL_BUDGET: Duration = Duration::from_millis(100);
/// The default bound on connecting.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A source of text lines read from `host:port` over TCP.
///
/// Always runs with parallelism 1 ([`Source::parallel`] is false).
///
/// **Not replayable:** what was read from the socket is gone, so its reader keeps the default
/// [`SourceReader::snapshot_position`] (`None`) and a restored reader simply reconnects and
/// reads what the peer sends from then on. Lines read since the last completed checkpoint are
/// lost: across a failure this source is at-most-once, so a job reading it is not exactly-once
/// (or even at-least-once) end to end. Use it for demos and interactive tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketTextSource {
    host: String,
    port: u16,
    connect_timeout: Duration,
}

impl SocketTextSource {
    /// A source reading from `host:port`; connecting waits at most 5 s.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// Bounds connecting (per resolved address) by `timeout` instead of 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Connects and returns the reader; `cancelled` is checked between reads.
    pub fn connect(&self, cancelled: Arc<AtomicBool>) -> Result<SocketTextReader, ConnectorError> {
        let addr = self.address();
        let connect_err = |cause| ConnectorError::Connect {
            addr: addr.clone(),
            cause,
        };
        let candidates = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(connect_err)?;
        let mut last_err =
            io::Error::new(io::ErrorKind::NotFound, "the host resolved to no address");
        for candidate in candidates {
            match TcpStream::connect_timeout(&candidate, self.connect_timeout) {
                Ok(stream) => {
                    stream
                        .set_read_timeout(Some(READ_TIMEOUT))
                        .map_err(connect_err)?;
                    tracing::info!(addr = %addr, "socket source connected");
                    return Ok(SocketTextReader {
                        addr,
                        reader: BufReader::new(stream),
                        line: Vec::new(),
                        offset: 0,
                        cancelled,
                        finished: false,
                    });
                }
                Err(e) => last_err = e,
            }
        }
        Err(connect_err(last_err))
    }
}

impl Source<String> for SocketTextSource {
    fn name(&self) -> String {
        "socket".to_string()
    }

    fn parallel(&self) -> bool {
        false
    }

    fn create_reader(
        &self,
        ctx: &SourceContext,
        // Never a position of ours (we save none): a restore starts afresh.
        _restored: Option<&[u8]>,
    ) -> Result<Box<dyn SourceReader<String>>, UserError> {
        let (_, parallelism) = subtask_of(ctx)?;
        if parallelism != 1 {
            return Err(ConnectorError::InvalidConfig {
                connector: "socket",
                reason: format!("a socket source runs with parallelism 1, not {parallelism}"),
            }
            .into());
        }
        Ok(Box::new(self.connect(Arc::clone(&ctx.cancelled))?))
    }
}

/// The reader of a [`SocketTextSource`]. It saves no position (see the source's docs).
pub struct SocketTextReader {
    addr: String,
    reader: BufReader<TcpStream>,
    /// The line read so far; a read timeout may leave a partial line here for the next poll.
    line: Vec<u8>,
    /// Bytes of the stream consumed before `line`.
    offset: u64,
    cancelled: Arc<AtomicBool>,
    finished: bool,
}

impl SocketTextReader {
    /// Turns the buffered line into a record, stripping `\n` and a trailing `\r`.
    fn take_line(&mut self, out: &mut Vec<String>) -> Result<(), ConnectorError> {
        let len = self.line.len() as u64;
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
        }
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        let text = std::str::from_utf8(&self.line).map_err(|e| ConnectorError::SocketUtf8 {
            addr: self.addr.clone(),
            offset: self.offset + e.valid_up_to() as u64,
        })?;
        out.push(text.to_string());
        self.offset += len;
        self.line.clear();
        Ok(())
    }
}

impl SourceReader<String> for SocketTextReader {
    /// Reads complete lines until `max`, a read timeout with nothing new ([`SourcePoll::Idle`]),
    /// or end of stream ([`SourcePoll::Finished`]; a last line without `\n` still counts).
    /// Returns `Idle` at once when the job is cancelled, so the task loop sees the flag.
    fn poll(&mut self, out: &mut Vec<String>, max: usize) -> Result<SourcePoll, UserError> {
        if self.finished {
            return Ok(SourcePoll::Finished);
        }
        let started = Instant::now();
        let mut produced = 0;
        while produced < max {
            if self.cancelled.load(Ordering::Relaxed) {
                return Ok(SourcePoll::Idle(Duration::ZERO));
            }
            if produced > 0 && started.elapsed() >= POLL_BUDGET {
                break;
            }
            // On a timeout, bytes read so far stay in `self.line` (read_until appends as it goes).
            let read =
                crate::read_line_bounded(&mut self.reader, &mut self.line, crate::MAX_LINE_BYTES);
            if crate::overran(&self.line, crate::MAX_LINE_BYTES) {
                return Err(ConnectorError::LineTooLong {
                    source_name: self.addr.clone(),
                    offset: 0,
                    max: crate::MAX_LINE_BYTES,
                }
                .into());
            }
            match read {
                Ok(0) => {
                    if !self.line.is_empty() {
                        self.take_line(out)?;
                    }
                    self.finished = true;
                    tracing::info!(addr = %self.addr, "socket source reached end of stream");
                    return Ok(SourcePoll::Finished);
                }
                Ok(_) => {
                    if self.line.last() == Some(&b'\n') {
                        self.take_line(out)?;
                        produced += 1;
                    }
                    // Otherwise the stream ended mid-line; the next read returns 0.
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(if produced > 0 {
                        SourcePoll::More
                    } else {
                        SourcePoll::Idle(Duration::ZERO)
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(cause) => {
                    return Err(ConnectorError::SocketRead {
                        addr: self.addr.clone(),
                        cause,
                    }
                    .into())
                }
            }
        }
        Ok(SourcePoll::More)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{ctx, drain};
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn the_socket_source_reads_lines_until_the_peer_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.write_all(b"hello\r\nwor").expect("write");
            conn.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(120));
            conn.write_all("ld\n\nlast ünicode".as_bytes())
                .expect("write");
        });
        let source = SocketTextSource::new("127.0.0.1", port);
        assert!(!Source::<String>::parallel(&source));
        let mut reader = source
            .create_reader(&ctx("sock", 0, 1), None)
            .expect("reader");
        let lines = drain(reader.as_mut(), 10);
        server.join().expect("server");
        assert_eq!(lines, vec!["hello", "world", "", "last ünicode"]);
    }

    #[test]
    fn an_idle_socket_makes_the_reader_idle_not_blocked() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            rx.recv().expect("go");
            conn.write_all(b"late\n").expect("write");
        });
        let context = ctx("sock", 0, 1);
        let mut reader = SocketTextSource::new("127.0.0.1", port)
            .connect(Arc::clone(&context.cancelled))
            .expect("reader");
        let mut out = Vec::new();
        let started = Instant::now();
        assert!(matches!(
            reader.poll(&mut out, 10).expect("poll"),
            SourcePoll::Idle(_)
        ));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(out.is_empty());
        tx.send(()).expect("send");
        assert_eq!(drain(&mut reader, 10), vec!["late"]);
        server.join().expect("server");
    }

    #[test]
    fn a_cancelled_reader_returns_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let context = ctx("sock", 0, 1);
        let mut reader = SocketTextSource::new("127.0.0.1", port)
            .connect(Arc::clone(&context.cancelled))
            .expect("reader");
        context.cancelled.store(true, Ordering::Relaxed);
        assert_eq!(
            reader.poll(&mut Vec::new(), 10).expect("poll"),
            SourcePoll::Idle(Duration::ZERO)
        );
        drop(listener);
    }

    #[test]
    fn a_refused_connection_is_an_error_naming_the_address() {
        // Bind then drop: the port is very likely closed now.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let err = SocketTextSource::new("127.0.0.1", port)
            .connect_timeout(Duration::from_secs(1))
            .connect(Arc::new(AtomicBool::new(false)))
            .err()
            .expect("refused");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        assert!(err.retry_may_help());
    }

    #[test]
    fn a_socket_source_refuses_parallelism_above_one() {
        let source = SocketTextSource::new("127.0.0.1", 1);
        assert!(source.create_reader(&ctx("sock", 0, 2), None).is_err());
    }
}
