//! The operator page in Chromium, over HTTPS with the agent's own
//! certificate, on a phone's screen and on a desktop's: a wrong password and
//! the lockout, the owner's login, a plan made, codes made from it and
//! printed, a customer redeeming one on the portal from a client namespace,
//! the client appearing in the live table without a reload, its rate chart
//! moving once a minute of its traffic is recorded, the sale in
//! today's revenue, pausing the client from the page; a staff account that
//! sees no prices to change and no sales. Screenshots of every page land in
//! `target/admin-screenshots/`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde_json::json;
use session_tests::{
    agent::admin_passwd, require_root, traffic::http, AgentBuilder, Browser, BrowserOptions,
    Hotspot, TcpServer, TcpTransfer,
};

const ADMIN_PORT: u16 = 8443;
const CAPTIVE_PORT: u16 = 8908;
const OWNER_PW: &str = "the owner's long password";
const STAFF_PW: &str = "the helper's long password";

fn shots() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/admin-screenshots"
    ))
}

fn passwd(accounts: &std::path::Path, staff: Option<&str>, password: &str) {
    let out = admin_passwd(accounts, staff, password);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn log_in(b: &Browser, base: &str, name: &str, password: &str) -> String {
    b.goto(&format!("{base}/admin/login"));
    b.execute(
        "document.querySelector('input[name=name]').value = arguments[0];\
         document.querySelector('input[name=password]').value = arguments[1];",
        &[json!(name), json!(password)],
    );
    b.find("main.login button").click();
    // The answer's page, once it is there.
    b.wait_for_text("Log", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    b.page_text()
}

#[test]
fn the_owner_runs_the_hotspot_from_a_phone_and_a_helper_only_sells() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    let accounts = hs.state_dir.join("admin-accounts");
    passwd(&accounts, None, OWNER_PW);
    passwd(&accounts, Some("ana"), STAFF_PW);
    let admin = SocketAddr::from((hs.gw_lan_addr(false), ADMIN_PORT));
    let captive = SocketAddr::from((hs.gw_lan_addr(false), CAPTIVE_PORT));
    let cert = hs.state_dir.join("admin-cert.pem");
    let _agent = AgentBuilder::new(&hs)
        .operator_page(admin, &accounts, &hs.state_dir)
        .arg("--captive-listen")
        .arg(captive.to_string())
        .arg("--poll-ms")
        .arg("100")
        .start();
    let dir = shots();
    std::fs::create_dir_all(&dir).unwrap();
    let base = format!("https://{admin}");
    let phone = Browser::start_with(
        &hs.gw_ns,
        &[],
        BrowserOptions {
            desktop: false,
            trust_cert: Some(cert.clone()),
        },
    );

    // A wrong password, then the owner's.
    log_in(&phone, &base, "owner", "not the password");
    phone.wait_for_text("Wrong name or password", Duration::from_secs(10));
    phone.screenshot(&dir.join("phone-1-wrong-password.png"));
    log_in(&phone, &base, "owner", OWNER_PW);
    let text = phone.wait_for_text("Recent events", Duration::from_secs(10));
    assert!(text.contains("Connected (paying)"), "{text}");
    let cookies = phone.execute("return document.cookie", &[]);
    assert_eq!(
        cookies,
        json!(""),
        "the login cookie is HttpOnly: scripts do not see it"
    );
    let width = phone.execute("return document.documentElement.scrollWidth", &[]);
    assert!(
        width.as_u64().unwrap() <= 360,
        "wider than the phone: {width}"
    );
    phone.screenshot(&dir.join("phone-2-overview.png"));

    // A plan, and codes made from it.
    phone.goto(&format!("{base}/admin/plans"));
    phone.execute(
        "const f = document.querySelector('form[action=\"/admin/plans\"]');\
         const v = (k, x) => { f.elements[k].value = x; };\
         v('name', '1 hour'); v('price', '20'); v('currency', 'PHP'); v('kind', 'time'); v('minutes', '60');",
        &[],
    );
    phone.find("form[action=\"/admin/plans\"] button").click();
    let text = phone.wait_for_text("20.00 PHP", Duration::from_secs(10));
    assert!(text.contains("1 hour"), "{text}");
    phone.screenshot(&dir.join("phone-3-plans.png"));
    phone.goto(&format!("{base}/admin/vouchers"));
    phone.execute(
        "document.querySelector('input[name=count]').value = '4';",
        &[],
    );
    phone
        .find("form[action=\"/admin/vouchers\"] button")
        .click();
    phone.wait_for_text("4 codes of 1 hour", Duration::from_secs(10));
    let qr = phone.execute("return document.querySelectorAll('svg.qr').length", &[]);
    assert_eq!(qr, json!(4), "a QR code per slip");
    phone.screenshot(&dir.join("phone-4-print.png"));
    let code = phone.find(".slip .code").text();

    // The live table, open before the customer pays.
    phone.goto(&format!("{base}/admin/clients"));
    let c = hs.client(0).clone();
    assert!(!phone.page_text().contains(&c.mac));
    let (st, head, body) = http(
        &c.ns,
        captive,
        "POST",
        "/portal/redeem",
        &["Content-Type: application/x-www-form-urlencoded"],
        &format!("code={code}"),
    );
    assert_eq!(st, 303, "{head}\n{body}");
    let text = phone.wait_for_text(&c.mac, Duration::from_secs(10));
    assert!(text.contains("connected"), "{text}");
    phone.screenshot(&dir.join("phone-5-clients.png"));

    // The client's own page: its rate chart moves once a minute of its
    // traffic is recorded (the history samples at each minute's end).
    let server = TcpServer::start(&hs.server_ns, hs.server_sock(false, 5001));
    phone.find("tbody a").click();
    phone.wait_for_text("Its rate, last hour", Duration::from_secs(10));
    let caption = || {
        phone
            .execute(
                "return document.querySelector('#client-rate figcaption').textContent",
                &[],
            )
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(caption().ends_with("peak 0 bit/s"), "{}", caption());
    let end = std::time::Instant::now() + Duration::from_secs(100);
    while caption().ends_with("peak 0 bit/s") {
        assert!(
            std::time::Instant::now() < end,
            "the rate chart did not move: {}",
            caption()
        );
        // About 4 Mbit/s while we wait.
        let _ = TcpTransfer::run(&c.ns, server.addr, 500_000, 1_500_000);
        std::thread::sleep(Duration::from_millis(1000));
    }
    phone.screenshot(&dir.join("phone-6-client.png"));

    // Paused from the page.
    phone.goto(&format!("{base}/admin/clients"));
    phone
        .find("form[action=\"/admin/clients/pause\"] button")
        .click();
    let text = phone.wait_for_text("paused", Duration::from_secs(10));
    assert!(text.contains("Resume"), "{text}");

    // The sale in today's revenue.
    phone.goto(&format!("{base}/admin"));
    assert_eq!(phone.find("#today").text(), "20.00 PHP");
    phone.goto(&format!("{base}/admin/sales"));
    let text = phone.page_text();
    assert!(
        text.contains("1 hour") && text.contains("20.00 PHP"),
        "{text}"
    );
    phone.screenshot(&dir.join("phone-7-sales.png"));

    // A helper at a desk: sells, sees no sales and no prices to change.
    let desk = Browser::start_with(
        &hs.gw_ns,
        &[],
        BrowserOptions {
            desktop: true,
            trust_cert: Some(cert.clone()),
        },
    );
    // The owner at a desk first: the overview with its charts.
    let text = log_in(&desk, &base, "owner", OWNER_PW);
    assert!(text.contains("Revenue per day"), "{text}");
    assert_eq!(
        desk.execute(
            "return document.querySelectorAll('figure.chart svg').length",
            &[]
        ),
        json!(3),
        "the rate of the last hour and day, and the revenue"
    );
    desk.screenshot(&dir.join("desktop-0-overview-owner.png"));
    desk.find("form.logout button").click();
    desk.wait_for_text("Password", Duration::from_secs(10));
    let text = log_in(&desk, &base, "ana", STAFF_PW);
    assert!(text.contains("ana (staff)"), "{text}");
    assert!(!text.contains("Sales"), "staff see the sales: {text}");
    assert!(
        !text.contains("Sold today") && !text.contains("Revenue"),
        "staff see the money: {text}"
    );
    desk.screenshot(&dir.join("desktop-1-overview-staff.png"));
    desk.goto(&format!("{base}/admin/plans"));
    assert!(desk.try_find("form[action=\"/admin/plans\"]").is_none());
    desk.goto(&format!("{base}/admin/sales"));
    assert!(desk.page_text().contains("may not do this"));
    desk.goto(&format!("{base}/admin/clients"));
    desk.screenshot(&dir.join("desktop-2-clients-staff.png"));

    // Five wrong passwords lock this address, even for the right one (both
    // browsers come from the gateway's address: the phone's wrong one counts
    // too while it is less than a minute old).
    desk.find("form.logout button").click();
    desk.wait_for_text("Password", Duration::from_secs(10));
    for _ in 0..5 {
        log_in(&desk, &base, "owner", "guess");
    }
    let text = log_in(&desk, &base, "owner", OWNER_PW);
    assert!(text.contains("Too many wrong passwords"), "{text}");
    desk.screenshot(&dir.join("desktop-3-locked.png"));
}
