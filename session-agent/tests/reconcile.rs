//! The gateway keeps the datapath equal to the sessions: a client is let
//! through if and only if its session runs (or the operator let it through),
//! at its session's speed and with a budget where it has one. Runs the real
//! gateway over the real pinned maps; needs root and bpffs.

mod common;

use std::sync::Arc;

use common::*;
use session_agent::{
    dataplane::Maps,
    gateway::{Gateway, GatewayConfig, Mismatch},
};
use session_model::{MacAddr, MemoryStore};

fn gateway(h: &ProgramHarness) -> Arc<Gateway> {
    Gateway::over_pins(
        h.root(),
        "t",
        Arc::new(MemoryStore::new()),
        Arc::new(session_model::SystemClock),
        GatewayConfig::default(),
    )
    .unwrap()
}

fn flags(maps: &Maps, m: &MacAddr) -> u32 {
    maps.flags_of(maps.slot_of(m).unwrap())
}

fn counted(gw: &Gateway, m: Mismatch) -> u64 {
    gw.stats().reconciled[m as usize].load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn the_poll_corrects_every_way_the_datapath_can_differ_from_the_sessions() {
    let mut h = ProgramHarness::new("sa-rec", &[]).unwrap();
    let gw = gateway(&h);
    let mgr = gw.sessions();
    let (paid, stray, operator) = (client_mac(1), client_mac(2), client_mac(3));
    let d = mgr.create_device(paid, None, None).unwrap();
    // 20/10 Mbit/s and 5 MB.
    mgr.create_session(d.id, 2, 3_600, 5.0, None, 20, 10, false)
        .await
        .unwrap();
    gw.connect(d.id, "go").await.unwrap();
    gw.poll().await.unwrap();
    assert!(
        gw.enforce_sessions().unwrap().is_empty(),
        "a healthy gateway finds nothing"
    );

    // Each way the kernel can differ, made behind the agent's back.
    let slot = h.maps.slot_of(&paid).unwrap();
    h.maps.set_allowed(&stray, true).unwrap();
    h.maps.set_allowed_by(&operator, true, true).unwrap();
    h.maps.set_allowed(&paid, false).unwrap();
    let found = gw.enforce_sessions().unwrap();
    assert_eq!(
        found,
        vec![
            (Mismatch::BlockedWhileConnected, paid),
            (Mismatch::AllowedWithoutSession, stray),
        ],
        "the operator's own allow is left alone"
    );
    assert_ne!(
        flags(&h.maps, &paid) & POLICY_ALLOWED,
        0,
        "let through again"
    );
    assert_eq!(flags(&h.maps, &stray) & POLICY_ALLOWED, 0, "blocked again");
    assert_ne!(flags(&h.maps, &operator) & POLICY_ALLOWED, 0);

    h.maps
        .set_rates(slot, RateLimit::UNLIMITED, RateLimit::UNLIMITED)
        .unwrap();
    assert_eq!(
        gw.enforce_sessions().unwrap(),
        vec![(Mismatch::Speed, paid)]
    );
    let p = h.maps.policy(slot).unwrap();
    assert_eq!((p.up.rate_bytes, p.down.rate_bytes), (1_250_000, 2_500_000));

    h.maps.set_budget(slot, None).unwrap();
    assert_eq!(
        gw.enforce_sessions().unwrap(),
        vec![(Mismatch::Budget, paid)]
    );
    assert_ne!(flags(&h.maps, &paid) & POLICY_QUOTA, 0);
    assert_eq!(h.maps.budget(slot).unwrap(), 5_000_000);
    assert!(gw.enforce_sessions().unwrap().is_empty());
    for (m, n) in [
        (Mismatch::AllowedWithoutSession, 1),
        (Mismatch::BlockedWhileConnected, 1),
        (Mismatch::Speed, 1),
        (Mismatch::Budget, 1),
    ] {
        assert_eq!(counted(&gw, m), n, "{m:?}");
    }
    // The operator's block clears its own allow.
    h.maps.set_allowed_by(&operator, false, true).unwrap();
    assert_eq!(
        flags(&h.maps, &operator) & (POLICY_ALLOWED | POLICY_MANUAL),
        0
    );
}

#[tokio::test]
async fn devices_the_datapath_forgot_with_no_sessions_are_removed_after_retention() {
    let mut h = ProgramHarness::new("sa-rec", &[]).unwrap();
    let gw = gateway(&h);
    let mgr = gw.sessions();
    let forgotten = mgr.create_device(client_mac(4), None, None).unwrap();
    let in_table = mgr.create_device(client_mac(5), None, None).unwrap();
    h.maps.ensure_slot(&client_mac(5)).unwrap();
    let with_session = mgr.create_device(client_mac(6), None, None).unwrap();
    mgr.create_session(with_session.id, 0, 60, 0.0, None, 0, 0, false)
        .await
        .unwrap();
    // Within retention: nothing goes.
    assert_eq!(gw.gc(3_600).await.unwrap(), (vec![], vec![]));
    let (_, devices) = gw.gc(0).await.unwrap();
    assert_eq!(devices, vec![forgotten.id]);
    assert!(mgr.device(forgotten.id).is_err());
    assert!(mgr.device(in_table.id).is_ok() && mgr.device(with_session.id).is_ok());
}

#[tokio::test]
async fn bytes_counted_while_a_session_changes_come_off_its_new_kernel_budget() {
    let h = ProgramHarness::new("sa-rec", &[]).unwrap();
    let gw = gateway(&h);
    let mgr = gw.sessions();
    let mac = client_mac(7);
    let d = mgr.create_device(mac, None, None).unwrap();
    let sid = mgr
        .create_session(d.id, 1, 0, 5.0, None, 0, 0, false)
        .await
        .unwrap()
        .id();
    gw.connect(d.id, "go").await.unwrap();
    gw.poll().await.unwrap();
    let slot = h.maps.slot_of(&mac).unwrap();
    assert_eq!(h.maps.budget(slot).unwrap(), 5_000_000);
    // The portal cuts the allocation to 2 MB while the client moves 300 kB:
    // the bytes land between the reading the change charged and the new budget.
    let maps = &h.maps;
    gw.update_session(sid, |s| {
        maps.add_up_bytes(slot, 300_000).unwrap();
        s.set_data_bytes(2_000_000);
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        h.maps.budget(slot).unwrap(),
        1_700_000,
        "the kernel would let the client use the 300 kB twice"
    );
    gw.poll().await.unwrap();
    let s = mgr.session(sid).unwrap();
    assert_eq!(s.data().data_cons_bytes, 300_000);
    assert_eq!(
        h.maps.budget(slot).unwrap() as u64,
        s.data().remaining_data_bytes(),
        "kernel budget and remaining data differ"
    );
}

#[tokio::test]
async fn a_table_larger_than_one_check_is_checked_whole_in_turn() {
    let mut h = ProgramHarness::new("sa-rec-win", &[]).unwrap();
    let gw = gateway(&h);
    let mac = |i: u32| MacAddr::new([0x02, 0xbb, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    // More clients than one check compares; the last ten are let through
    // behind the agent's back.
    let n = 1024 + 10;
    for i in 0..n {
        h.maps.set_allowed(&mac(i), i >= n - 10).unwrap();
    }
    assert!(
        gw.enforce_sessions().unwrap().is_empty(),
        "the first window holds none of them"
    );
    let found = gw.enforce_sessions().unwrap();
    assert_eq!(found.len(), 10, "the next window holds them all: {found:?}");
    assert!(found
        .iter()
        .all(|(m, _)| *m == Mismatch::AllowedWithoutSession));
    for i in n - 10..n {
        assert_eq!(flags(&h.maps, &mac(i)) & POLICY_ALLOWED, 0, "blocked again");
    }
    // The table is whole again: the next check starts over from the first slot.
    h.maps.set_allowed(&mac(0), true).unwrap();
    assert_eq!(
        gw.enforce_sessions().unwrap(),
        vec![(Mismatch::AllowedWithoutSession, mac(0))]
    );
}
