//! Sockets the standard library does not make: the portal redirect's
//! transparent listeners and the packet socket that sends held DNS answers
//! on (socket2), the one raw call socket2 lacks, and the one `bpf` command
//! aya 0.14 lacks (reading a hash map in batches), with what makes them sound.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

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

/// `BPF_MAP_LOOKUP_BATCH` (Linux 5.6).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of the kernel's `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of a hash map (`BPF_MAP_TYPE_HASH` or `LRU_HASH`, one value
/// per key) in batches of `chunk`: one `bpf` call per batch, where walking
/// the keys (`get_next_key`, then a lookup) takes two per entry. Entries
/// added or removed meanwhile may or may not be seen, as with a walk.
/// Kernels before 5.6 answer `EINVAL`.
pub fn bpf_map_entries<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    chunk: usize,
) -> io::Result<Vec<(K, V)>> {
    let mut chunk = chunk.max(1);
    // SAFETY: `Pod` types are plain data for which any bytes, zeros too, are valid.
    let (k0, v0): (K, V) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    let (mut keys, mut values) = (vec![k0; chunk], vec![v0; chunk]);
    let mut out = Vec::new();
    // The kernel's position in the table (a bucket index for hash maps).
    let (mut at, mut next) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const at as u64 },
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is the batch command's argument of the size passed;
        // the kernel writes at most `count` keys and values into buffers of
        // `chunk` each, whose types are those of the map's keys and values
        // (the caller's promise, checked by the kernel against their sizes
        // only), and a u32 position into `next`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (r < 0).then(io::Error::last_os_error);
        let n = (attr.count as usize).min(chunk);
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match err.as_ref().and_then(io::Error::raw_os_error) {
            None => {}
            // The end of the table.
            Some(libc::ENOENT) => return Ok(out),
            // A bucket holds more entries than a batch: a bigger batch.
            Some(libc::ENOSPC) if n == 0 && chunk < 1 << 20 => {
                chunk *= 2;
                keys.resize(chunk, k0);
                values.resize(chunk, v0);
                continue;
            }
            Some(_) => return Err(err.expect("an error")),
        }
        at = next;
        first = false;
    }
}
