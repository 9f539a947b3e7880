//! A RADIUS login whose Start cannot be written to the accounting book (its
//! disk full) is refused and undone: the device is not let through with a
//! session the server would never hear of. Alone in its test binary: it makes
//! every file write of the process fail for a moment (`RLIMIT_FSIZE`).

use std::{net::UdpSocket, sync::Arc, time::Duration};

use radius::core::{avp::AVP, code::Code, packet::Packet};
use session_agent::{
    datapath::MemDatapath,
    gateway::{Gateway, GatewayConfig},
    radius::{Radius, RadiusOptions, Secret},
};
use session_model::{MacAddr, MemoryStore, SessionsMgr, SystemClock};
use session_radius::codec::attr;

const SECRET: &[u8] = b"book-full-secret";

/// A RADIUS server on loopback that accepts every login for an hour.
fn accepting_server() -> std::net::SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let Ok(req) = Packet::decode(&buf[..n], SECRET) else {
                continue;
            };
            let mut accept = req.make_response_packet(Code::AccessAccept);
            accept.add(AVP::from_u32(attr::SESSION_TIMEOUT as _, 3600));
            let bytes = session_radius::codec::encode_signed(accept).unwrap();
            let _ = sock.send_to(&bytes, from);
        }
    });
    addr
}

/// Every write to a file fails (`EFBIG`) while the returned guard lives.
struct NoFileWrites(libc::rlimit);

impl NoFileWrites {
    fn now() -> Self {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit with valid pointers to rlimits;
        // SIGXFSZ ignored, so a write past the limit fails with EFBIG
        // instead of ending the process.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut old), 0);
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: old.rlim_max,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &none), 0);
        }
        NoFileWrites(old)
    }
}

impl Drop for NoFileWrites {
    fn drop(&mut self) {
        // SAFETY: setrlimit with a valid pointer to the limit read before.
        unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &self.0) };
    }
}

#[test]
fn a_login_whose_start_cannot_be_written_is_refused_and_the_device_stays_blocked() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mgr = Arc::new(SessionsMgr::new(
        Arc::new(MemoryStore::new()),
        Arc::new(SystemClock),
    ));
    mgr.register_session_provider(
        session_agent::radius::PROVIDER,
        Arc::new(session_agent::radius::RadiusProvider),
    )
    .unwrap();
    let dp = Arc::new(MemDatapath::new(1));
    let gw = rt.block_on(async {
        Gateway::with_datapath(mgr.clone(), dp.clone(), GatewayConfig::default())
    });
    let mac = MacAddr::new([2, 0, 0, 0, 0, 0x42]);
    let device = mgr.create_device(mac, None, None).unwrap();
    let opts = RadiusOptions {
        auth_servers: vec![accepting_server()],
        secret: Secret(SECRET.to_vec()),
        timeout: Duration::from_secs(2),
        book: Some(dir.path().join("book.redb")),
        ..RadiusOptions::default()
    };
    let radius = Radius::open(opts.clone(), None).unwrap();
    let refused = {
        let _full = NoFileWrites::now();
        rt.block_on(radius.login(&gw, device.id, "alice", "secret"))
    };
    let Err(e) = refused else {
        panic!("a login whose Start was not written went through");
    };
    let text = e.to_string();
    assert!(
        text.contains(": write: ") && text.contains("free space"),
        "the error names the book's write and the fix: {text}"
    );
    assert!(!dp.allowed(&mac), "the device was let through");
    assert!(!mgr.is_connected(device.id).unwrap());
    assert!(
        mgr.device_sessions(device.id).unwrap().is_empty(),
        "the refused login left its session behind"
    );
    assert_eq!(radius.open_count(), 0);
    // The book refuses writes after a failed one, disk or not, as the error
    // says: the next login is refused the same way.
    assert!(rt
        .block_on(radius.login(&gw, device.id, "alice", "secret"))
        .is_err());
    assert!(!dp.allowed(&mac));
    // After a restart (the book opened again), the login goes through and
    // its Start is in the book.
    drop(radius);
    let radius = Radius::open(opts, None).unwrap();
    rt.block_on(radius.login(&gw, device.id, "alice", "secret"))
        .unwrap();
    assert!(dp.allowed(&mac));
    assert!(mgr.is_connected(device.id).unwrap());
    assert_eq!(radius.open_count(), 1);
}
