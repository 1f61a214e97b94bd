//! Connections: how the server accepts them, times them out, caps them, and closes them.
//!
//! One accept loop serves plain HTTP and TLS alike (hyper's HTTP/1 connections, rustls for
//! TLS), so both have the same defences against clients that open connections and send
//! nothing, or half a request:
//!
//! - **The client must keep up.** A connection has [`Limits::header_timeout`] from its
//!   opening (TLS handshake included) to send a complete request head,
//!   [`Limits::idle_timeout`] between the end of a response and the end of the next head,
//!   between two pieces of a request body it is sending, and to take more of an answer the
//!   server is writing (the socket's buffers full). Past it the connection is closed. The
//!   server's own work (a handler running, an event stream between events) has no such limit.
//! - **Open connections are capped** at [`Limits::max_connections`]. At the cap, the connection
//!   that has waited longest for its client (for a head, body bytes, or to read) is closed to make
//!   room for the newcomer, so that a flood of half-sent requests cannot starve good clients:
//!   it only ever evicts itself. Only when every open connection is waiting for the server is
//!   the newcomer refused, with `503 too-many-connections` (JSON). The same eviction frees a
//!   file descriptor when the process runs out of them.
//! - **The HTTP layer's own refusals are JSON too.** hyper answers a request head it cannot
//!   parse (400), one too large (431) or a URI too long (414) by itself, with an empty body;
//!   `Watched` puts the server's JSON error in place of that answer.

use axum::{Router, body::Body, extract::ConnectInfo, http::Request};
use colony_runtime::spawner::Spawner;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::{
    collections::BTreeMap,
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, Semaphore},
    time::Instant,
};

/// Default of [`Limits::max_connections`].
pub const MAX_CONNECTIONS: usize = 4_096;
/// Default of [`Limits::header_timeout`].
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`Limits::idle_timeout`].
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Refusals (503 at the cap) being written at once; past it a newcomer is closed unanswered.
/// Each holds its socket a moment so that the client reads the answer before the close.
const REFUSING: usize = 64;
/// How long a refusal may take: the TLS handshake, if any, the request head, and the answer.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// How many connections a server keeps open, and how long they may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most connections open at once; at least 1.
    pub max_connections: usize,
    /// From a connection's opening to the end of its first request head.
    pub header_timeout: Duration,
    /// From the end of a response to the end of the next request head on the same connection,
    /// between two pieces of a request body, and for the client to take more of an answer.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// The open connections, and among them those waiting for their client, oldest first.
#[derive(Debug)]
struct Connections {
    limits: Limits,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    open: usize,
    next: u64,
    /// Connections waiting for their client, by when they started waiting.
    waiting: BTreeMap<(Instant, u64), Arc<Slot>>,
}

/// One open connection.
#[derive(Debug)]
struct Slot {
    id: u64,
    state: Mutex<SlotState>,
    /// Woken when the connection starts waiting again, or is evicted.
    wake: Notify,
}

#[derive(Debug, Default)]
struct SlotState {
    /// When it started waiting for its client; `None` while the server has the next move.
    since: Option<Instant>,
    /// What it waits for.
    wait: Wait,
    in_flight: u32,
    /// Evicted or closed: it no longer counts as open.
    gone: bool,
}

/// What a connection waits for from its client.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Its first request head (and the TLS handshake before it).
    #[default]
    FirstHead,
    /// The next request head, after an answer.
    NextHead,
    /// More of a request body.
    Body,
    /// Room to write more of an answer: the client is not reading.
    Read,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Connections {
    /// A place for a new connection, evicting the one waiting longest for a head if the cap
    /// is reached; `None` if every open connection has a request in flight.
    fn admit(&self) -> Option<Arc<Slot>> {
        let mut table = locked(&self.table);
        if table.open >= self.limits.max_connections.max(1) && !Self::evict_oldest(&mut table) {
            return None;
        }
        table.open += 1;
        table.next += 1;
        let now = Instant::now();
        let slot = Arc::new(Slot {
            id: table.next,
            state: Mutex::new(SlotState {
                since: Some(now),
                ..SlotState::default()
            }),
            wake: Notify::new(),
        });
        table.waiting.insert((now, slot.id), slot.clone());
        Some(slot)
    }

    /// Closes the connection that has waited longest for a request head, if any does.
    fn evict_oldest(table: &mut Table) -> bool {
        let Some((_, victim)) = table.waiting.pop_first() else {
            return false;
        };
        let mut state = locked(&victim.state);
        state.since = None;
        state.gone = true;
        table.open -= 1;
        drop(state);
        victim.wake.notify_one();
        true
    }

    /// A request's head has arrived on `slot`.
    fn begin(self: &Arc<Self>, slot: &Arc<Slot>) -> InFlight {
        let mut table = locked(&self.table);
        let mut state = locked(&slot.state);
        if let Some(since) = state.since.take() {
            table.waiting.remove(&(since, slot.id));
        }
        state.in_flight += 1;
        InFlight {
            connections: self.clone(),
            slot: slot.clone(),
        }
    }

    /// A request's answer has been written (or dropped): the connection waits for the next.
    fn end(&self, slot: &Arc<Slot>) {
        let mut table = locked(&self.table);
        let mut state = locked(&slot.state);
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 && !state.gone {
            Self::wait(&mut table, &mut state, slot, Wait::NextHead);
        }
        drop(state);
        slot.wake.notify_one();
    }

    /// The connection waits (again) for its client, from now.
    fn wait(table: &mut Table, state: &mut SlotState, slot: &Arc<Slot>, wait: Wait) {
        if let Some(since) = state.since.take() {
            table.waiting.remove(&(since, slot.id));
        }
        let now = Instant::now();
        state.since = Some(now);
        state.wait = wait;
        table.waiting.insert((now, slot.id), slot.clone());
    }

    /// The handler waits for (more of) the request body: so does the connection, from now.
    fn body_wait(&self, slot: &Arc<Slot>) {
        let mut table = locked(&self.table);
        let mut state = locked(&slot.state);
        if !state.gone {
            Self::wait(&mut table, &mut state, slot, Wait::Body);
        }
        drop(state);
        slot.wake.notify_one();
    }

    /// Writing an answer waits for the client to read.
    fn read_wait(&self, slot: &Arc<Slot>) {
        let mut table = locked(&self.table);
        let mut state = locked(&slot.state);
        if !state.gone {
            Self::wait(&mut table, &mut state, slot, Wait::Read);
        }
        drop(state);
        slot.wake.notify_one();
    }

    /// The client read: writing goes on, or the connection waits for the next head.
    fn read_done(&self, slot: &Arc<Slot>) {
        let mut table = locked(&self.table);
        let mut state = locked(&slot.state);
        if state.wait != Wait::Read || state.gone {
            return;
        }
        if let Some(since) = state.since.take() {
            table.waiting.remove(&(since, slot.id));
        }
        if state.in_flight == 0 {
            Self::wait(&mut table, &mut state, slot, Wait::NextHead);
        }
        drop(state);
        slot.wake.notify_one();
    }

    /// The request body has all come, or is no longer read.
    fn body_done(&self, slot: &Slot) {
        let mut table = locked(&self.table);
        let mut state = locked(&slot.state);
        if state.wait == Wait::Body
            && let Some(since) = state.since.take()
        {
            table.waiting.remove(&(since, slot.id));
        }
    }

    /// The connection has closed.
    fn close(&self, slot: &Slot) {
        let mut table = locked(&self.table);
        let mut state = locked(&slot.state);
        if let Some(since) = state.since.take() {
            table.waiting.remove(&(since, slot.id));
        }
        if !state.gone {
            state.gone = true;
            table.open -= 1;
        }
    }

    /// Resolves when the connection must be closed: evicted, or waiting for a head too long.
    async fn expiry(&self, slot: &Slot) -> &'static str {
        loop {
            let notified = slot.wake.notified();
            let deadline = {
                let state = locked(&slot.state);
                if state.gone {
                    return "evicted to make room";
                }
                let allowed = match state.wait {
                    Wait::FirstHead => self.limits.header_timeout,
                    Wait::NextHead | Wait::Body | Wait::Read => self.limits.idle_timeout,
                };
                state
                    .since
                    .map(|since| (since, since + allowed, state.wait))
            };
            match deadline {
                None => notified.await,
                Some((since, deadline, wait)) => tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep_until(deadline) => {
                        let state = locked(&slot.state);
                        // Still waiting as it was when the deadline was set.
                        if state.since == Some(since) && state.wait == wait {
                            return match wait {
                                Wait::FirstHead => "no request head within the header timeout",
                                Wait::NextHead => "idle past the idle timeout",
                                Wait::Body => "no request body within the idle timeout",
                                Wait::Read => "the answer not read within the idle timeout",
                            };
                        }
                    }
                },
            }
        }
    }
}

/// A request in flight on a connection; its drop (the answer written, or abandoned) puts the
/// connection back among those waiting.
struct InFlight {
    connections: Arc<Connections>,
    slot: Arc<Slot>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.connections.end(&self.slot);
    }
}

/// A request body that counts its connection as waiting for its client while the handler
/// waits for more of it, refreshed at each piece; no longer once it has all come, or is
/// dropped.
struct Reading {
    body: Incoming,
    watch: Option<BodyWatch>,
}

struct BodyWatch {
    connections: Arc<Connections>,
    slot: Arc<Slot>,
}

impl Drop for BodyWatch {
    fn drop(&mut self) {
        self.connections.body_done(&self.slot);
    }
}

impl http_body::Body for Reading {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) if !self.body.is_end_stream() => {
                if let Some(w) = &self.watch {
                    w.connections.body_wait(&w.slot);
                }
            }
            Poll::Ready(_) => self.watch = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A response body that keeps its request in flight until hyper has taken all of it.
struct Guarded {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Serves `router` on `listener` until the task running this is stopped.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
) {
    let connections = Arc::new(Connections {
        limits,
        table: Mutex::default(),
    });
    let refusing = Arc::new(Semaphore::new(REFUSING));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                match e.raw_os_error() {
                    // Out of file descriptors (ENFILE, EMFILE): the connection waiting longest
                    // for its client gives its own up, so that requests keep being answered.
                    Some(23 | 24) => {
                        let evicted = Connections::evict_oldest(&mut locked(&connections.table));
                        if !evicted {
                            tracing::warn!(error = %e, "Cannot accept a connection.");
                        }
                        let pause = if evicted { 1 } else { 20 };
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                    // Out of memory for sockets (ENOMEM, ENOBUFS): a pause, not a busy loop.
                    Some(12 | 105) => {
                        tracing::warn!(error = %e, "Cannot accept a connection.");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    // One connection's trouble (reset before it was taken): the next.
                    _ => tracing::debug!(error = %e, "A connection was lost before accepted."),
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(slot) = connections.admit() else {
            if let Ok(permit) = refusing.clone().try_acquire_owned() {
                let tls = tls.clone();
                Spawner::spawn("http-refusal", async move {
                    let _ = tokio::time::timeout(REFUSAL_TIME, refuse(stream, tls)).await;
                    drop(permit);
                });
            }
            continue;
        };
        let (connections, router, tls) = (connections.clone(), router.clone(), tls.clone());
        Spawner::spawn("http-connection", async move {
            tokio::select! {
                reason = connections.expiry(&slot) => {
                    tracing::debug!(%peer, reason, "Connection closed.");
                }
                () = connection(stream, peer, tls, router, &connections, &slot) => {}
            }
            connections.close(&slot);
        });
    }
}

/// One connection, from the TLS handshake (if any) to its close.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    connections: &Arc<Connections>,
    slot: &Arc<Slot>,
) {
    match tls {
        None => http(stream, peer, router, connections, slot).await,
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(stream) => http(stream, peer, router, connections, slot).await,
            Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed."),
        },
    }
}

async fn http<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    connections: &Arc<Connections>,
    slot: &Arc<Slot>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (conns, owner) = (connections.clone(), slot.clone());
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let in_flight = conns.begin(&owner);
        let mut request = request.map(|body| {
            let watch = (!http_body::Body::is_end_stream(&body)).then(|| {
                conns.body_wait(&owner);
                BodyWatch {
                    connections: conns.clone(),
                    slot: owner.clone(),
                }
            });
            Body::new(Reading { body, watch })
        });
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let response = tower::ServiceExt::oneshot(router, request).await?;
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(Guarded {
                    body,
                    _in_flight: in_flight,
                })
            }))
        }
    });
    let io = TokioIo::new(Watched::new(stream, connections.clone(), slot.clone()));
    // hyper's default read buffer grows to about 400 KiB per connection for a long request
    // head: thousands of unauthenticated connections would hold gigabytes. A head beyond
    // MAX_HEAD gets 431. No route upgrades its connection, so none escapes the cap.
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(%peer, error = %e, "Connection ended with an error.");
    }
}

/// Largest request head (and read buffer) a connection holds, in bytes.
pub const MAX_HEAD: usize = 64 << 10;

/// Answers a newcomer the server has no room for with `503 too-many-connections`.
async fn refuse(stream: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
    let answer = response(
        503,
        "Service Unavailable",
        "too-many-connections",
        "every connection this server keeps open is handling a request: try again shortly",
        &[("retry-after", "1")],
    );
    match tls {
        None => say_and_close(stream, &answer).await,
        Some(acceptor) => {
            if let Ok(stream) = acceptor.accept(stream).await {
                say_and_close(stream, &answer).await;
            }
        }
    }
}

/// Waits for the request head (an answer sent before the request is one a client does not
/// expect), writes `answer`, then reads what the client sent until it closes (or the
/// caller's time runs out): closing with unread input would reset the connection, and the
/// client could lose the answer.
async fn say_and_close<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, answer: &[u8]) {
    let mut head = Vec::new();
    let mut sink = [0u8; 4096];
    while head.len() < 16 << 10 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&sink[..n]),
        }
    }
    if stream.write_all(answer).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut left: usize = 64 << 10;
    while left > 0 {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// A complete HTTP/1.1 response with a JSON error body, that closes the connection.
fn response(
    status: u16,
    reason: &str,
    code: &str,
    message: &str,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// The JSON error that replaces hyper's own empty answer to a request head it refused.
fn replacement(status: &[u8]) -> Option<Vec<u8>> {
    let (status, reason, code, message) = match status {
        b"400" => (
            400,
            "Bad Request",
            "bad-request",
            "the request head is not valid HTTP/1.1",
        ),
        b"414" => (
            414,
            "URI Too Long",
            "uri-too-long",
            "the request's URI is over 65,534 bytes",
        ),
        b"431" => (
            431,
            "Request Header Fields Too Large",
            "headers-too-large",
            "the request head is over 64 KiB or has over 100 headers",
        ),
        _ => return None,
    };
    Some(response(status, reason, code, message, &[]))
}

/// A connection's stream: counts the connection as waiting for its client while a write
/// cannot go on (the client does not read), and puts a JSON error in place of hyper's own
/// answers to request heads it could not read.
///
/// hyper writes those answers itself, as a bare head with `content-length: 0`, while no
/// request is in flight, and then closes. Every answer of the server's own has a body (the
/// router's errors are JSON), so a write that starts such a head while the connection has no
/// request in flight can only be one of those.
struct Watched<S> {
    inner: S,
    connections: Arc<Connections>,
    slot: Arc<Slot>,
    /// A replacement still to be written, and how much of it was.
    pending: Option<(Vec<u8>, usize)>,
    /// Counted as waiting for the client to read.
    stalled: bool,
}

impl<S> Watched<S> {
    fn new(inner: S, connections: Arc<Connections>, slot: Arc<Slot>) -> Self {
        Self {
            inner,
            connections,
            slot,
            pending: None,
            stalled: false,
        }
    }

    /// Counts the connection as waiting for its client while a write is pending.
    fn track<T>(&mut self, polled: Poll<T>) -> Poll<T> {
        match (&polled, self.stalled) {
            (Poll::Pending, false) => {
                self.stalled = true;
                self.connections.read_wait(&self.slot);
            }
            (Poll::Ready(_), true) => {
                self.stalled = false;
                self.connections.read_done(&self.slot);
            }
            _ => {}
        }
        polled
    }

    /// The JSON answer to put in place of `bytes`, if they are hyper's own refusal.
    fn intercept(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let status = bytes.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
        // Every answer's head passes here: the common ones go no further.
        if !matches!(status, b"400" | b"414" | b"431") {
            return None;
        }
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = bytes[..end].to_ascii_lowercase();
        let bare = head.windows(19).any(|w| w == b"content-length: 0\r\n")
            || head.ends_with(b"content-length: 0");
        if !bare || locked(&self.slot.state).in_flight > 0 {
            return None;
        }
        replacement(status)
    }
}

impl<S: AsyncWrite + Unpin> Watched<S> {
    /// Writes what is left of a replacement; ready when nothing is.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.pending {
            if *done == bytes.len() {
                self.pending = None;
                break;
            }
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.drain(cx))?;
        if let Some(answer) = self.intercept(buf) {
            self.pending = Some((answer, 0));
            // What hyper wrote is taken in full: the replacement goes out in its place.
            let _ = self.drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.drain(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && let Some(answer) = self.intercept(first)
        {
            self.pending = Some((answer, 0));
            let _ = self.drain(cx)?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            limits: Limits {
                max_connections: max,
                ..Limits::default()
            },
            table: Mutex::default(),
        })
    }

    #[test]
    fn at_the_cap_the_longest_waiting_goes_and_busy_ones_stay() {
        let c = connections(2);
        let a = c.admit().unwrap();
        let b = c.admit().unwrap();
        // `a` has a request in flight: it cannot be evicted; `b` waits for its head.
        let in_flight = c.begin(&a);
        let d = c.admit().expect("b is evicted for d");
        assert!(locked(&b.state).gone);
        assert!(!locked(&a.state).gone);
        let _d_busy = c.begin(&d);
        assert!(c.admit().is_none(), "every connection is busy: refused");
        // `a`'s answer is written: it waits again, and is the next to go.
        drop(in_flight);
        assert!(c.admit().is_some());
        assert!(locked(&a.state).gone);
        assert_eq!(locked(&c.table).open, 2);
        c.close(&b);
        c.close(&a);
        assert_eq!(
            locked(&c.table).open,
            2,
            "closing an evicted one counts nothing"
        );
        c.close(&d);
        assert_eq!(locked(&c.table).open, 1);
    }

    /// A client that reads nothing: every write waits, or one write waits and then goes.
    struct Stuck {
        waits: usize,
    }

    impl AsyncWrite for Stuck {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.waits == 0 {
                return Poll::Ready(Ok(buf.len()));
            }
            self.waits -= 1;
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn an_answer_the_client_does_not_read_makes_its_connection_evictable() {
        let c = connections(1);
        let slot = c.admit().unwrap();
        // An event stream, say: in flight for as long as it is open.
        let _stream = c.begin(&slot);
        assert!(c.admit().is_none(), "nothing to evict");
        let mut io = Watched::new(Stuck { waits: 1 }, c.clone(), slot.clone());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"event").is_pending());
        assert_eq!(locked(&slot.state).wait, Wait::Read);
        // The client reads: the stream goes on, out of reach again.
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"event").is_ready());
        assert!(locked(&slot.state).since.is_none());
        assert!(c.admit().is_none(), "nothing to evict");
        // It stops reading: the newcomer takes its place.
        io.inner.waits = 1;
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"event").is_pending());
        assert!(c.admit().is_some());
        assert!(locked(&slot.state).gone);
    }

    #[test]
    fn only_a_bare_refusal_without_a_request_in_flight_is_replaced() {
        let c = connections(4);
        let slot = c.admit().unwrap();
        let io = Watched::new(Vec::<u8>::new(), c.clone(), slot.clone());
        let bare =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let answer = io.intercept(bare).expect("replaced");
        let text = String::from_utf8(answer).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        assert!(text.contains("\"headers-too-large\""), "{text}");
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 52\r\n\r\n";
        assert!(
            io.intercept(ours).is_none(),
            "the router's answers have bodies"
        );
        assert!(io.intercept(b"{\"HTTP/1.1 400 \"}").is_none());
        let _busy = c.begin(&slot);
        assert!(
            io.intercept(bare).is_none(),
            "a request in flight: not hyper's"
        );
    }
}
