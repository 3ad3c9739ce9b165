//! Accepted connections: noticing a peer that went away while its response
//! is still streaming.
//!
//! hyper (HTTP/1.1) does not read from a connection while it writes a
//! response body, so a client that closes its socket in the middle of an SSE
//! stream is only noticed at the next write — up to a heartbeat later. Each
//! accepted socket is therefore shared (an `Arc<TcpStream>`) between the
//! [`Conn`] that hyper reads and writes and a small watch task that waits for
//! the kernel's "peer closed" readiness (EPOLLRDHUP/HUP/ERR) without reading a
//! byte. When it fires, the connection's [`CancellationToken`] is cancelled;
//! streams served on that connection hold the token (looked up by the peer
//! address in [`Connections`]) and end at once, dropping their presence guard.
//! So a client that closes or is killed (FIN or RST) leaves within
//! milliseconds, not a heartbeat.
//!
//! A peer that vanishes without FIN or RST is not seen here; the heartbeat
//! write plus `TCP_USER_TIMEOUT` bound that case (see `server`).
//!
//! The watch task ends when hyper drops the [`Conn`], so the socket closes
//! exactly when hyper closes it. A client that half-closes its sending side
//! while still reading a stream is treated as gone; HTTP clients do not do
//! that on an SSE request.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long the watch waits before looking again when the socket is readable
/// only because request bytes wait for hyper (pipelining): hyper reads them
/// when it is ready; the watch must not spin meanwhile.
const RECHECK: Duration = Duration::from_millis(200);

/// The close tokens of the open connections, by peer address.
#[derive(Debug, Default)]
pub struct Connections {
    map: Mutex<HashMap<SocketAddr, (u64, CancellationToken)>>,
    next: AtomicU64,
}

impl Connections {
    /// An empty registry.
    pub fn new() -> Arc<Connections> {
        Arc::new(Connections::default())
    }

    /// The token cancelled when the peer at `peer` closes its connection.
    pub fn closed(&self, peer: &SocketAddr) -> Option<CancellationToken> {
        let map = self.map.lock().expect("connections lock");
        map.get(peer).map(|(_, t)| t.clone())
    }

    /// Open connections being watched.
    pub fn len(&self) -> usize {
        self.map.lock().expect("connections lock").len()
    }

    /// Whether no connection is being watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts watching an accepted socket; hyper gets the returned [`Conn`].
    pub fn watch(self: &Arc<Self>, io: TcpStream, peer: SocketAddr) -> Conn {
        let io = Arc::new(io);
        let token = CancellationToken::new();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.map
            .lock()
            .expect("connections lock")
            .insert(peer, (id, token.clone()));
        let (alive, dropped) = oneshot::channel();
        tokio::spawn(watch(io.clone(), token, dropped, self.clone(), peer, id));
        Conn { io, _alive: alive }
    }

    fn forget(&self, peer: &SocketAddr, id: u64) {
        let mut map = self.map.lock().expect("connections lock");
        if map.get(peer).is_some_and(|(i, _)| *i == id) {
            map.remove(peer);
        }
    }
}

async fn watch(
    io: Arc<TcpStream>,
    token: CancellationToken,
    mut dropped: oneshot::Receiver<()>,
    conns: Arc<Connections>,
    peer: SocketAddr,
    id: u64,
) {
    loop {
        tokio::select! {
            _ = &mut dropped => break,
            ready = io.ready(Interest::READABLE) => match ready {
                Ok(r) if r.is_read_closed() || r.is_error() => {
                    token.cancel();
                    break;
                }
                Ok(_) => tokio::select! {
                    _ = &mut dropped => break,
                    _ = tokio::time::sleep(RECHECK) => {}
                },
                Err(_) => {
                    token.cancel();
                    break;
                }
            },
        }
    }
    conns.forget(&peer, id);
}

/// An accepted socket as hyper sees it; dropping it ends the watch.
#[derive(Debug)]
pub struct Conn {
    io: Arc<TcpStream>,
    _alive: oneshot::Sender<()>,
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.io.poll_read_ready(cx))?;
            // Into the unfilled part as it is: `initialize_unfilled` would
            // zero hyper's whole read buffer (8 KiB) on every read.
            match self.io.try_read_buf(buf) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.io.poll_write_ready(cx))?;
            match self.io.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.io.poll_write_ready(cx))?;
            match self.io.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match socket2::SockRef::from(&*self.io).shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(conns: &Arc<Connections>) -> (Conn, TcpStream, SocketAddr) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, peer) = l.accept().await.unwrap();
        (conns.watch(server, peer), client, peer)
    }

    #[tokio::test]
    async fn data_flows_and_a_close_cancels_the_token() {
        let conns = Connections::new();
        let (mut conn, mut client, peer) = pair(&conns).await;
        let token = conns.closed(&peer).unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        conn.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        assert!(!token.is_cancelled());
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), token.cancelled())
            .await
            .expect("the close is noticed without a read or write");
        drop(conn);
    }

    #[tokio::test]
    async fn dropping_the_conn_closes_the_socket_and_forgets_it() {
        let conns = Connections::new();
        let (conn, mut client, _) = pair(&conns).await;
        assert_eq!(conns.len(), 1);
        drop(conn);
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("the peer sees the close")
            .unwrap();
        assert_eq!(n, 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !conns.is_empty() {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
    }
}
