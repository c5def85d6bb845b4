//! The byte transport under TLS: real TCP, or — with the `sim` feature,
//! inside a turmoil simulation — turmoil's simulated TCP, so the real RPC
//! and TLS code runs over a network the simulation can partition, slow down
//! and replay from a seed (`docs/simulation.md`). Chosen at run time; the
//! only places the fabric dials and listens are here.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connected byte stream.
pub(crate) enum Stream {
    Tcp(tokio::net::TcpStream),
    #[cfg(feature = "sim")]
    Sim(turmoil::net::TcpStream),
}

impl Stream {
    /// Dials `addr`.
    pub(crate) async fn connect(addr: SocketAddr) -> io::Result<Stream> {
        #[cfg(feature = "sim")]
        if crate::env::simulated() {
            return turmoil::net::TcpStream::connect(addr)
                .await
                .map(Stream::Sim);
        }
        tokio::net::TcpStream::connect(addr).await.map(Stream::Tcp)
    }

    /// Latency matters more than packet count for RPC.
    pub(crate) fn set_nodelay(&self) {
        match self {
            Stream::Tcp(s) => {
                let _ = s.set_nodelay(true);
            }
            #[cfg(feature = "sim")]
            Stream::Sim(_) => {}
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "sim")]
            Stream::Sim(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "sim")]
            Stream::Sim(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "sim")]
            Stream::Sim(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            #[cfg(feature = "sim")]
            Stream::Sim(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "sim")]
            Stream::Sim(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "sim")]
            Stream::Sim(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A listening socket.
pub(crate) enum Listener {
    Tcp(tokio::net::TcpListener),
    /// With the address asked for: turmoil binds only the unspecified
    /// address, so a host's own address is bound as `0.0.0.0` and reported
    /// as asked (gossip publishes it).
    #[cfg(feature = "sim")]
    Sim(turmoil::net::TcpListener, SocketAddr),
}

impl Listener {
    pub(crate) async fn bind(addr: SocketAddr) -> io::Result<Listener> {
        #[cfg(feature = "sim")]
        if crate::env::simulated() {
            let unspecified = SocketAddr::new(
                std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                addr.port(),
            );
            let l = turmoil::net::TcpListener::bind(unspecified).await?;
            let local = if addr.ip().is_unspecified() {
                l.local_addr()?
            } else {
                SocketAddr::new(addr.ip(), l.local_addr()?.port())
            };
            return Ok(Listener::Sim(l, local));
        }
        tokio::net::TcpListener::bind(addr).await.map(Listener::Tcp)
    }

    pub(crate) async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, a)| (Stream::Tcp(s), a)),
            #[cfg(feature = "sim")]
            Listener::Sim(l, _) => l.accept().await.map(|(s, a)| (Stream::Sim(s), a)),
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr(),
            #[cfg(feature = "sim")]
            Listener::Sim(_, local) => Ok(*local),
        }
    }
}
