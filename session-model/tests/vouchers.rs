//! Vouchers through the sessions manager: batches, redemption, states, revocation.

use std::sync::Arc;

use session_model::{
    testing::FaultyStore, MacAddr, ManualClock, MemoryStore, ModelError, NewBatch, RedeemRefusal,
    SessionType, SessionsMgr, VoucherState, VoucherTemplate,
};

const T0: i64 = 1_700_000_000;

fn mac(n: u8) -> MacAddr {
    MacAddr::new([2, 0, 0, 0, 0, n])
}

fn batch(count: u32, max_devices: u32) -> NewBatch {
    NewBatch {
        batch: "morning".into(),
        price: Some("10 PHP".into()),
        count,
        template: VoucherTemplate {
            session_type: SessionType::Time,
            time_secs: 600,
            data_bytes: 0,
            exp_days: None,
            down_mbits: 4,
            up_mbits: 1,
            use_global_speed: false,
        },
        valid_until: Some(T0 + 86_400),
        max_devices,
        code_len: 10,
        group: 5,
        sale: None,
    }
}

fn setup() -> (Arc<SessionsMgr>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let mgr = Arc::new(SessionsMgr::new(
        Arc::new(MemoryStore::new()),
        clock.clone(),
    ));
    (mgr, clock)
}

#[test]
fn of_fifty_devices_redeeming_one_code_at_once_exactly_one_wins() {
    let clock = Arc::new(ManualClock::new(T0));
    // Voucher reads of 20 ms: wide enough that, without the manager's
    // redemption lock, concurrent redemptions all read the code unused.
    let m = Arc::new(SessionsMgr::new(
        Arc::new(FaultyStore::voucher_reads_taking(
            std::time::Duration::from_millis(20),
        )),
        clock,
    ));
    let code = m.create_vouchers(&batch(1, 1)).unwrap()[0].code.clone();
    let devices: Vec<_> = (0..50)
        .map(|i| m.create_device(mac(i), None, None).unwrap().id)
        .collect();
    let barrier = Arc::new(std::sync::Barrier::new(devices.len()));
    let handles: Vec<_> = devices
        .into_iter()
        .map(|d| {
            let (m, code, barrier) = (m.clone(), code.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                m.redeem_voucher(d, &code).map(|(s, _)| s.id())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        assert!(
            matches!(
                r,
                Err(ModelError::Redeem(RedeemRefusal::LockedToOtherDevice))
            ),
            "{r:?}"
        );
    }
    assert_eq!(m.store().sessions().unwrap().len(), 1);
    let v = m.voucher(&code).unwrap();
    assert_eq!(v.redemptions.len(), 1);
    assert_eq!(m.voucher_state(&v), VoucherState::Active);
}

#[test]
fn a_redeemed_code_buys_its_template_and_follows_its_states() {
    let (m, clock) = setup();
    let vs = m.create_vouchers(&batch(3, 1)).unwrap();
    assert_eq!(vs.len(), 3);
    let d = m.create_device(mac(1), None, None).unwrap();
    // Typed in lower case with the printed dash.
    let typed = vs[0].display_code().to_lowercase();
    assert_eq!(typed.len(), 11);
    let (s, v) = m.redeem_voucher(d.id, &typed).unwrap();
    assert_eq!(s.session_type(), SessionType::Time);
    assert_eq!(s.time_secs(), 600);
    assert_eq!((s.data().down_mbits, s.data().up_mbits), (4, 1));
    assert_eq!(v.redemptions[0].mac, mac(1));
    assert_eq!(
        m.redeem_voucher(d.id, &vs[0].code).unwrap_err().to_string(),
        format!(
            "this device already redeemed this code (session {})",
            s.id()
        )
    );
    // A second code queues a second session.
    let (s2, _) = m.redeem_voucher(d.id, &vs[1].code).unwrap();
    assert_eq!(m.device_sessions(d.id).unwrap().len(), 2);
    assert!(s2.id() > s.id());

    // The session used up: the code is used up.
    let mut r = m.store().session(s.id()).unwrap().unwrap();
    r.data.time_cons = 600;
    r.settle_end(T0);
    m.store().save_session(&r).unwrap();
    let v = m.voucher(&vs[0].code).unwrap();
    assert_eq!(m.voucher_state(&v), VoucherState::UsedUp);
    assert!(matches!(
        m.revoke_voucher(&vs[0].code),
        Err(ModelError::VoucherNotRevocable {
            state: "used_up",
            ..
        })
    ));

    // The third is revoked, then refused.
    m.revoke_voucher(&vs[2].code).unwrap();
    assert!(matches!(
        m.redeem_voucher(d.id, &vs[2].code),
        Err(ModelError::Redeem(RedeemRefusal::Revoked))
    ));
    assert_eq!(
        m.voucher_state(&m.voucher(&vs[2].code).unwrap()),
        VoucherState::Revoked
    );
    // Past the last day an unused code is expired.
    let fresh = m.create_vouchers(&batch(1, 1)).unwrap().remove(0);
    clock.advance_secs(86_401);
    assert_eq!(m.voucher_state(&fresh), VoucherState::Expired);
    assert!(matches!(
        m.redeem_voucher(d.id, &fresh.code),
        Err(ModelError::Redeem(RedeemRefusal::Expired))
    ));
    assert!(matches!(
        m.redeem_voucher(d.id, "NOPE-NOPE"),
        Err(ModelError::Redeem(RedeemRefusal::Unknown))
    ));
    assert!(matches!(
        m.redeem_voucher(d.id, "0O1Il"),
        Err(ModelError::Redeem(RedeemRefusal::Unknown))
    ));
}

#[test]
fn a_batch_that_cannot_be_sold_is_refused_whole() {
    let (m, _) = setup();
    let bad = |f: &dyn Fn(&mut NewBatch)| {
        let mut b = batch(5, 1);
        f(&mut b);
        let e = m.create_vouchers(&b).unwrap_err();
        assert!(m.store().vouchers().unwrap().is_empty(), "{e}");
        e.to_string()
    };
    assert!(bad(&|b| b.count = 0).contains("count must be 1 to 1000,"));
    assert!(bad(&|b| b.code_len = 4).contains("code_length must be 6 to 32"));
    assert!(bad(&|b| b.max_devices = 0).contains("max_devices"));
    assert!(bad(&|b| b.batch = String::new()).contains("batch must have"));
    assert!(bad(&|b| b.valid_until = Some(T0 - 1)).contains("in the past"));
    assert!(bad(&|b| b.template.time_secs = 0).contains("non-zero"));
}

fn plan(name: &str, price_minor: u64) -> session_model::Plan {
    session_model::Plan {
        name: name.into(),
        price_minor,
        currency: "PHP".into(),
        template: batch(1, 1).template,
        created_at: 0,
    }
}

#[test]
fn a_plan_sells_its_codes_at_the_price_they_were_made_with() {
    let (m, clock) = setup();
    m.save_plan(plan("1 hour", 2000)).unwrap();
    let p = m.plan("1 hour").unwrap();
    assert_eq!(p.created_at, T0);
    let mut b = batch(2, 2);
    b.sale = Some(p.terms());
    let codes = m.create_vouchers(&b).unwrap();
    // The price changes after the codes were made: they keep theirs.
    clock.advance_secs(10);
    m.save_plan(plan("1 hour", 2500)).unwrap();
    assert_eq!(
        m.plan("1 hour").unwrap().created_at,
        T0,
        "a resave keeps the first save's time"
    );
    assert_eq!(
        m.sales(0).unwrap(),
        vec![],
        "nothing is sold before a redemption"
    );

    let d1 = m.create_device(mac(1), None, None).unwrap().id;
    let d2 = m.create_device(mac(2), None, None).unwrap().id;
    clock.advance_secs(5);
    m.redeem_voucher(d1, &codes[0].code).unwrap();
    // A second device on the same code is not a second sale.
    m.redeem_voucher(d2, &codes[0].code).unwrap();
    // A code made without a plan is no sale.
    let free = m.create_vouchers(&batch(1, 1)).unwrap();
    m.redeem_voucher(d2, &free[0].code).unwrap();

    let sales = m.sales(0).unwrap();
    assert_eq!(sales.len(), 1, "{sales:?}");
    assert_eq!(sales[0].price_minor, 2000);
    assert_eq!(sales[0].plan, "1 hour");
    assert_eq!(sales[0].mac, mac(1));
    assert_eq!(sales[0].at, T0 + 15);
    assert_eq!(
        m.sales(T0 + 16).unwrap(),
        vec![],
        "`from` bounds the report"
    );
}

#[test]
fn a_plan_with_a_bad_name_price_or_currency_is_refused_and_nothing_is_kept() {
    let (m, _) = setup();
    for (p, what) in [
        (plan("", 100), "name"),
        (plan(" padded", 100), "name"),
        (plan(&"x".repeat(41), 100), "name"),
        (
            plan("ok", session_model::plan::MAX_PRICE_MINOR + 1),
            "price",
        ),
        (
            session_model::Plan {
                currency: "php".into(),
                ..plan("ok", 100)
            },
            "currency",
        ),
    ] {
        let e = m.save_plan(p).unwrap_err();
        assert!(matches!(e, ModelError::InvalidPlan(_)), "{what}: {e}");
    }
    assert_eq!(m.plans().unwrap(), vec![]);
    assert!(matches!(
        m.remove_plan("none"),
        Err(ModelError::UnknownPlan(_))
    ));
}

#[test]
fn prices_are_read_as_people_type_them_and_printed_with_two_decimals() {
    use session_model::{format_price, parse_price};
    assert_eq!(parse_price("20").unwrap(), 2000);
    assert_eq!(parse_price(" 20.5 ").unwrap(), 2050);
    assert_eq!(parse_price("0.05").unwrap(), 5);
    for bad in [
        "",
        ".5",
        "20.555",
        "-1",
        "1e3",
        "20,50",
        "99999999999999999999",
    ] {
        assert!(parse_price(bad).is_err(), "{bad:?}");
    }
    assert_eq!(format_price(2050, "PHP"), "20.50 PHP");
}

#[test]
fn a_blocked_device_neither_connects_nor_redeems_and_its_code_stays_unused() {
    let (m, _) = setup();
    let d = m.create_device(mac(9), None, None).unwrap().id;
    let codes = m.create_vouchers(&batch(1, 1)).unwrap();
    m.set_blocked(d, true).unwrap();
    assert!(m.is_blocked(d).unwrap());
    assert_eq!(m.blocked_devices().unwrap(), vec![d]);
    let e = m.redeem_voucher(d, &codes[0].code).unwrap_err();
    assert!(matches!(e, ModelError::Blocked(id) if id == d), "{e}");
    let v = m.voucher(&codes[0].code).unwrap();
    assert_eq!(
        m.voucher_state(&v),
        VoucherState::Unused,
        "the code was not spent"
    );
    m.set_blocked(d, false).unwrap();
    m.redeem_voucher(d, &codes[0].code).unwrap();
    // Blocked again with a session to use: it does not connect.
    m.set_blocked(d, true).unwrap();
    let e = block_on(m.connect(d, "")).unwrap_err();
    assert!(matches!(e, ModelError::Blocked(_)), "{e}");
    assert!(!m
        .is_blocked(m.create_device(mac(10), None, None).unwrap().id)
        .unwrap());
}

/// Runs a future to its end on this thread.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_session_sold_with_a_price_is_a_sale_beside_the_codes() {
    let (m, clock) = setup();
    let d = m.create_device(mac(3), None, None).unwrap().id;
    let terms = session_model::SaleTerms::new("walk-in", "15.5", "PHP").unwrap();
    m.record_sale(7, mac(3), &terms).unwrap();
    clock.advance_secs(5);
    let sales = m.sales(i64::MIN).unwrap();
    assert_eq!(sales.len(), 1, "{sales:?}");
    assert_eq!(
        (
            sales[0].price_minor,
            sales[0].code.as_str(),
            sales[0].session_id
        ),
        (1550, "", 7)
    );
    assert_eq!(m.sales(T0 + 1).unwrap(), vec![], "`from` bounds them too");
    for (plan, price, currency) in [("", "1", "PHP"), ("x", "1.234", "PHP"), ("x", "1", "php")] {
        assert!(
            session_model::SaleTerms::new(plan, price, currency).is_err(),
            "{plan:?} {price:?} {currency:?}"
        );
    }
    let _ = d;
}
