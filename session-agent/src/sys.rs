//! Raw socket calls, each unsafe block with what makes it sound: the portal
//! redirect's transparent listeners and the packet socket that sends held DNS
//! answers on.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn set_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is an open socket; the option value is a c_int on the
    // stack whose size is passed along.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

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
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: a plain socket(2) call; the descriptor is owned right below.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int(&fd, libc::SOL_SOCKET, libc::SO_MARK, mark as libc::c_int)?;
    if v6 {
        set_int(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
        set_int(&fd, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)?;
    } else {
        set_int(&fd, libc::SOL_IP, libc::IP_TRANSPARENT, 1)?;
    }
    let addr: SocketAddr = if v6 {
        (Ipv6Addr::LOCALHOST, port).into()
    } else {
        (Ipv4Addr::LOCALHOST, port).into()
    };
    let r = match addr {
        SocketAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sa` is a sockaddr_in of the size passed.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: `sa` is a sockaddr_in6 of the size passed.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on the socket just bound.
    if unsafe { libc::listen(fd.as_raw_fd(), 1024) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::net::TcpListener::from(fd))
}

/// A packet socket that sends whole Ethernet frames, marked with `mark`
/// (`SO_MARK`, needs CAP_NET_ADMIN; the frames pass the egress qdisc and its
/// programs). It receives nothing (protocol 0).
pub fn packet_sender(mark: u32) -> io::Result<OwnedFd> {
    // SAFETY: a plain socket(2) call; the descriptor is owned right below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int(&fd, libc::SOL_SOCKET, libc::SO_MARK, mark as libc::c_int)?;
    Ok(fd)
}

/// Sends `frame` (from its Ethernet header) out of interface `ifindex`.
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
