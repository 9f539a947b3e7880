//! A RADIUS login whose Start cannot be written to the accounting book (its
//! disk full) is refused and undone: the device is not let through with a
//! session the server would never hear of. Alone in its test binary: it makes
//! every file write of the process fail for a moment (`RLIMIT_FSIZE`).

mod common;

use std::{net::UdpSocket, time::Duration};

use common::MemGateway;
use radius::core::{avp::AVP, code::Code, packet::Packet};
use session_agent::radius::{Radius, RadiusOptions, Secret};
use session_model::{testing::FilesUpTo, MacAddr};
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

#[test]
fn a_login_whose_start_cannot_be_written_is_refused_and_the_device_stays_blocked() {
    let MemGateway { rt, mgr, dp, gw } = MemGateway::new();
    let dir = tempfile::tempdir().unwrap();
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
    let (refused, again) = {
        let _full = FilesUpTo::bytes(0);
        (
            rt.block_on(radius.login(&gw, device.id, "alice", "secret")),
            // Still full: opening the book again fails, or its write does.
            rt.block_on(radius.login(&gw, device.id, "alice", "secret")),
        )
    };
    let Err(e) = refused else {
        panic!("a login whose Start was not written went through");
    };
    let text = e.to_string();
    assert!(
        text.contains(": write: ") && text.contains("free space"),
        "the error names the book's write and the fix: {text}"
    );
    assert!(
        again.is_err(),
        "a login went through while the disk was full"
    );
    assert!(!dp.allowed(&mac), "the device was let through");
    assert!(!mgr.is_connected(device.id).unwrap());
    assert!(
        mgr.device_sessions(device.id).unwrap().is_empty(),
        "the refused login left its session behind"
    );
    assert_eq!(radius.open_count(), 0);
    // With room again, the book is opened again at its next use (redb
    // refuses every use after a failed write until then): the login goes
    // through without a restart, and its Start is in the file.
    rt.block_on(radius.login(&gw, device.id, "alice", "secret"))
        .unwrap();
    assert!(dp.allowed(&mac));
    assert!(mgr.is_connected(device.id).unwrap());
    assert_eq!(radius.open_count(), 1);
    drop(radius);
    assert_eq!(Radius::open(opts, None).unwrap().open_count(), 1);
}
