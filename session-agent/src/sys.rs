//! Sockets the standard library does not make: the portal redirect's
//! transparent listeners and the packet socket that sends held DNS answers
//! on (socket2), and the one raw call socket2 lacks, with what makes it sound.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Whether an accept error means the listening socket itself is gone (shut
/// down from outside, e.g. by `ss -K`, or closed) rather than one
/// connection failing or descriptors running out for a while: accepting
/// again can never succeed.
pub fn listener_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EBADF) | Some(libc::ENOTSOCK) | Some(libc::EOPNOTSUPP)
    )
}

/// A listening TCP socket on the loopback address and `port` that accepts
/// connections to any address the datapath hands it (`IP_TRANSPARENT`,
/// needs CAP_NET_ADMIN) and marks what it sends with `mark` (`SO_MARK`).
pub fn transparent_listener(v6: bool, port: u16, mark: u32) -> io::Result<std::net::TcpListener> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_mark(mark)?;
    let addr: SocketAddr = if v6 {
        s.set_only_v6(true)?;
        s.set_ip_transparent_v6(true)?;
        (Ipv6Addr::LOCALHOST, port).into()
    } else {
        s.set_ip_transparent_v4(true)?;
        (Ipv4Addr::LOCALHOST, port).into()
    };
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// A packet socket that sends whole Ethernet frames, marked with `mark`
/// (`SO_MARK`, needs CAP_NET_ADMIN; the frames pass the egress qdisc and its
/// programs). It receives nothing (protocol 0).
pub fn packet_sender(mark: u32) -> io::Result<OwnedFd> {
    let s = Socket::new(Domain::PACKET, Type::RAW, None)?;
    s.set_mark(mark)?;
    Ok(s.into())
}

/// Sends `frame` (from its Ethernet header) out of interface `ifindex`.
/// Written here: socket2 makes no link-layer (`sockaddr_ll`) address.
pub fn send_frame(fd: &OwnedFd, ifindex: u32, frame: &[u8]) -> io::Result<()> {
    if frame.len() < 14 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "runt frame"));
    }
    // SAFETY: sockaddr_ll is plain integers and bytes; all zero is valid.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_ifindex = ifindex as i32;
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: `frame` is valid for its length and `sa` is a sockaddr_ll of the
    // size passed.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
