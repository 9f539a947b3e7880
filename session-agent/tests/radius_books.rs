//! RADIUS's bookkeeping over an in-memory gateway: the sweep finds a session
//! that stopped without an event the bookkeeping heard and writes its Stop,
//! and leaves the sessions that still run alone until their update is due.

mod common;

use common::MemGateway;
use session_agent::radius::{Radius, RadiusOptions};
use session_model::MacAddr;
use session_radius::acct::{Book, OpenSession, Reading};

#[test]
fn a_stop_no_event_told_of_is_written_by_the_sweep_and_running_sessions_are_left_alone() {
    let MemGateway { rt, mgr, gw, .. } = MemGateway::new();
    let dir = tempfile::tempdir().unwrap();
    let now = mgr.clock().now_secs();
    let mut open = Vec::new();
    for n in 1..=3u8 {
        let d = mgr
            .create_device(MacAddr::new([2, 0, 0, 0, 0, n]), None, None)
            .unwrap();
        let s = rt
            .block_on(mgr.create_session(d.id, 0, 3_600, 0.0, None, 0, 0, false))
            .unwrap();
        rt.block_on(gw.connect(d.id, "RADIUS login")).unwrap();
        open.push((d.id, s.id()));
    }
    // The book the agent left: the three sessions open at the server, their
    // interim updates an hour away.
    let path = dir.path().join("book.redb");
    {
        let book = Book::open(Some(&path), u64::MAX).unwrap();
        let rows: Vec<_> = open
            .iter()
            .map(|&(device_id, session_id)| {
                let s = OpenSession {
                    session_id,
                    device_id,
                    acct_session_id: format!("5A-{session_id}"),
                    user_name: format!("user{session_id}"),
                    calling: "02-00-00-00-00-01".into(),
                    framed_ip: None,
                    class: Vec::new(),
                    state: None,
                    started_at: now,
                    interim_secs: 3_600,
                    next_interim: now + 3_600,
                    base_up: 0,
                    base_down: 0,
                    mark: Reading::default(),
                    last: Reading::default(),
                };
                (s, None)
            })
            .collect();
        book.record_many(&rows).unwrap();
    }
    let radius = Radius::open(
        RadiusOptions {
            book: Some(path),
            queue_limit: u64::MAX,
            ..RadiusOptions::default()
        },
        None,
    )
    .unwrap();
    // The second device stops while nobody listens to the session events.
    rt.block_on(gw.disconnect(open[1].0, "gone")).unwrap();
    // The first round after a start sweeps: the stopped session's Stop.
    rt.block_on(radius.books_once(&gw)).unwrap();
    assert_eq!(radius.open_count(), 2, "the stopped session is closed");
    assert_eq!(radius.queued(), 1, "its Stop waits for the server");
    // The next rounds find nothing to do: the running ones are not due.
    rt.block_on(radius.books_once(&gw)).unwrap();
    assert_eq!((radius.open_count(), radius.queued()), (2, 1));
}
