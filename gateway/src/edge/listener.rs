//! Listener: the public TCP listening socket, with every option its
//! connections need set once on it instead of once per connection.
//!
//! Linux copies a listening socket's TCP options into each socket it
//! accepts, so `TCP_NODELAY` (a push server's small frames must leave at
//! once, not wait for the previous one's ACK) and `TCP_USER_TIMEOUT` (data a
//! vanished peer never acknowledges is kept only so long) cost no system
//! call per connect. `TCP_DEFER_ACCEPT` hands a connection over only once
//! its first bytes (the HTTP upgrade request or the TLS hello) are in, so
//! the first read of every connection finds its request instead of waiting
//! for it, and connections that never send anything do not reach the
//! server at all. This module owns the listening socket only; it must not
//! accept, read or write.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// The kernel's listen queue limit on the machines we measured.
const LISTEN_BACKLOG: i32 = 4096;

/// How long the kernel holds a connection that sent nothing yet before it
/// gives up deferring (and passes it on; the handshake timeout then ends it).
const DEFER_ACCEPT_SECS: libc::c_int = 5;

/// What every accepted public connection inherits from the listener.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionOptions {
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged.
    pub unacknowledged_limit: Duration,
}

/// Binds `address` and listens, with `options` set for every connection.
pub fn bind(address: SocketAddr, options: ConnectionOptions) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_user_timeout(Some(options.unacknowledged_limit))?;
    defer_accept(&socket, DEFER_ACCEPT_SECS)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn defer_accept(socket: &Socket, seconds: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid descriptor owned by `socket`, and an option value of
    // the type and size TCP_DEFER_ACCEPT takes (an int of seconds).
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&seconds as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// The premise of this module: accepted sockets carry the listener's
    /// options without any call of their own.
    #[test]
    fn accepted_connections_inherit_the_listener_options() {
        let limit = Duration::from_millis(12_345);
        let listener = bind(
            "127.0.0.1:0".parse().expect("address"),
            ConnectionOptions {
                unacknowledged_limit: limit,
            },
        )
        .expect("bind");
        listener.set_nonblocking(false).expect("blocking");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        // Deferred: the connection is handed over once the client has sent.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
        let (accepted, _) = listener.accept().expect("accept");
        let accepted = socket2::SockRef::from(&accepted);
        assert!(accepted.tcp_nodelay().expect("TCP_NODELAY"));
        assert_eq!(
            accepted.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
            Some(limit)
        );
    }
}
