//! The operator page on a real agent, over HTTPS with the certificate it made
//! at its first start: the owner logs in, makes a plan and codes from it; a
//! customer redeems one on the portal page from a client namespace; the page
//! shows the client and the sale, the CSV carries it, and the owner pauses
//! the client from the page. Clients that have not paid cannot open a
//! connection to the page, and plain HTTP gets no page.

use std::{net::SocketAddr, time::Duration};

use session_tests::{
    agent::admin_passwd,
    https::{csrf_of, form_value, Site},
    require_root,
    traffic::portal_redeem,
    AgentBuilder, Hotspot,
};

const ADMIN_PORT: u16 = 8443;
const CAPTIVE_PORT: u16 = 8908;
const PASSWORD: &str = "a long owner password";

#[test]
fn the_owner_sells_a_plans_code_that_a_customer_redeems_and_sees_the_sale_over_https() {
    require_root();
    let hs = Hotspot::builder().clients(2).build();
    let accounts = hs.state_dir.join("admin-accounts");
    let short = admin_passwd(&accounts, None, "short");
    assert!(!short.status.success(), "a short password is refused");
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least"));
    let out = admin_passwd(&accounts, None, PASSWORD);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let admin = SocketAddr::from((hs.gw_lan_addr(false), ADMIN_PORT));
    let captive = SocketAddr::from((hs.gw_lan_addr(false), CAPTIVE_PORT));
    let cert = hs.state_dir.join("admin-cert.pem");
    let agent = AgentBuilder::new(&hs)
        .operator_page(admin, &accounts, &hs.state_dir)
        .arg("--captive-listen")
        .arg(captive.to_string())
        .arg("--poll-ms")
        .arg("100")
        .start();
    assert!(cert.exists(), "the certificate is made at the first start");

    // The operator, on the gateway itself.
    let mut op = Site::https(&hs.gw_ns, admin, &cert);
    let a = op.get("/admin");
    assert_eq!(a.status, 303, "{}", a.head);
    assert!(a.head.contains("strict-transport-security"), "{}", a.head);
    let a = op.post(
        "/admin/login",
        &format!("name=owner&password={}", form_value(PASSWORD)),
    );
    assert_eq!(a.status, 303, "{}\n{}", a.head, a.body);
    let page = op.get("/admin/plans");
    assert_eq!(page.status, 200);
    let csrf = csrf_of(&page.body).expect("the plans page has forms");
    let a = op.post(
        "/admin/plans",
        &format!("csrf={csrf}&name=1+hour&price=20&currency=PHP&kind=time&minutes=60&mb=0&down=0&up=0&exp_days="),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    let a = op.post(
        "/admin/vouchers",
        &format!("csrf={csrf}&plan=1+hour&count=3"),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    let print = a.header("location").expect("to the printable codes");
    let sheet = op.get(&print);
    assert_eq!(sheet.status, 200);
    assert_eq!(
        sheet.body.matches("class=\"slip\"").count(),
        3,
        "{}",
        sheet.body
    );
    assert!(sheet.body.contains("20.00 PHP"));
    let at = sheet.body.find("class=\"code mono\">").unwrap() + "class=\"code mono\">".len();
    let code = sheet.body[at..].split('<').next().unwrap().to_string();

    // The customers: the page is out of reach before they pay.
    let c = hs.client(0).clone();
    let unpaid = Site::plain(&hs.client(1).ns, admin);
    assert!(
        !unpaid.reachable(),
        "a client that has not paid opened a connection to the operator page"
    );
    let (st, head, body) = portal_redeem(&c.ns, captive, &code);
    assert_eq!(st, 303, "{head}\n{body}");

    // The page shows the client and the sale.
    let clients = op.get("/admin/clients/table");
    assert_eq!(clients.status, 200);
    assert!(clients.body.contains(&c.mac), "{}", clients.body);
    assert!(clients.body.contains("connected"), "{}", clients.body);
    let overview = op.get("/admin");
    assert!(
        overview.body.contains("id=\"today\">20.00 PHP<"),
        "{}",
        overview.body
    );
    let csv = op.get("/admin/sales.csv");
    assert_eq!(csv.status, 200);
    assert!(csv.head.contains("content-type: text/csv"));
    let rows: Vec<&str> = csv.body.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{}", csv.body);
    assert!(
        rows[0].contains(",1 hour,20.00,PHP,") && rows[0].contains(&c.mac),
        "{}",
        rows[0]
    );
    // A session sold through the API with a price is a sale too; a price
    // that is not one makes nothing.
    let api = agent.api();
    let other = api.device_id(&hs.client(1).mac);
    let r = api.post(
        &format!("/v1/devices/{other}/sessions"),
        &serde_json::json!({"type": 0, "time_secs": 600, "use_global_speed": true,
                            "sale": {"price": "15.5", "currency": "PHP", "plan": "walk-in"}}),
    );
    r.ok("a sold session");
    let r = api.post(
        &format!("/v1/devices/{other}/sessions"),
        &serde_json::json!({"type": 0, "time_secs": 600, "use_global_speed": true,
                            "sale": {"price": "15.555", "currency": "PHP"}}),
    );
    assert_eq!(r.status, 400, "{:?}", r.body);
    let sessions = api
        .get(&format!("/v1/devices/{other}/sessions"))
        .ok("sessions");
    assert_eq!(sessions.as_array().unwrap().len(), 1, "{sessions}");
    let csv = op.get("/admin/sales.csv");
    let rows: Vec<&str> = csv.body.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{}", csv.body);
    assert!(
        rows.iter().any(|r| r.contains(",walk-in,15.50,PHP,,")),
        "{}",
        csv.body
    );
    assert!(op.get("/admin").body.contains("id=\"today\">35.50 PHP<"));

    // Paused from the page: the agent disconnects it.
    let device = clients
        .body
        .split("data-device=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let a = op.post(
        "/admin/clients/pause",
        &format!("csrf={csrf}&device={device}"),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    let connected = agent
        .api()
        .get(&format!("/v1/devices/{device}/connected"))
        .ok("connected");
    assert_eq!(connected["connected"], false, "{connected}");
    assert!(op.get("/admin/clients/table").body.contains("paused"));

    // Blocked from the page: another code typed on the portal is refused and
    // stays unused; unblocked, it buys.
    let a = op.post(
        "/admin/clients/block",
        &format!("csrf={csrf}&device={device}"),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    assert!(op.get("/admin/clients/table").body.contains("blocked"));
    let at = sheet.body.rfind("class=\"code mono\">").unwrap() + "class=\"code mono\">".len();
    let second = sheet.body[at..].split('<').next().unwrap().to_string();
    assert_ne!(second, code);
    let (st, _, body) = portal_redeem(&c.ns, captive, &second);
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("blocked"), "{body}");
    let v = agent
        .api()
        .get(&format!("/v1/vouchers/{second}"))
        .ok("voucher");
    assert_eq!(v["state"], "unused", "{v}");
    let a = op.post(
        "/admin/clients/unblock",
        &format!("csrf={csrf}&device={device}"),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    let (st, head, body) = portal_redeem(&c.ns, captive, &second);
    assert_eq!(st, 303, "{head}\n{body}");

    // Plain HTTP on the HTTPS port gets no page.
    let mut plain = Site::plain(&hs.gw_ns, admin);
    let a = plain.get("/admin/login");
    assert_ne!(a.status, 200, "plain HTTP was served: {}", a.head);
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn the_owner_edits_the_walled_garden_on_the_page_and_it_is_written_and_applied_at_once() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    std::fs::create_dir_all(&hs.state_dir).unwrap();
    let accounts = hs.state_dir.join("admin-accounts");
    assert!(admin_passwd(&accounts, None, PASSWORD).status.success());
    let cfg = hs.state_dir.join("config.toml");
    std::fs::write(&cfg, "# the shop's gateway\nidle_timeout_secs = 0\n").unwrap();
    // Plain HTTP on loopback: the operator on the gateway itself.
    let admin: SocketAddr = "127.0.0.1:8443".parse().unwrap();
    let agent = AgentBuilder::new(&hs)
        .arg("--config")
        .arg(cfg.display().to_string())
        .arg("--admin-listen")
        .arg(admin.to_string())
        .arg("--admin-plain-http")
        .arg("--admin-accounts")
        .arg(accounts.display().to_string())
        .start();
    let garden = session_tests::TcpServer::start(&hs.server_ns, hs.server_sock(false, 5002));
    let unpaid = hs.client(0).clone();
    let reach = || {
        session_tests::TcpTransfer::run_timeout(
            &unpaid.ns,
            garden.addr,
            100,
            1000,
            Duration::from_millis(700),
        )
        .is_ok()
    };
    assert!(!reach(), "the server is in the garden before the change");

    let mut op = Site::plain(&hs.gw_ns, admin);
    let a = op.post(
        "/admin/login",
        &format!("name=owner&password={}", form_value(PASSWORD)),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    let page = op.get("/admin/settings");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(&cfg.display().to_string()),
        "the page names the file"
    );
    let csrf = csrf_of(&page.body).unwrap();
    let form = |garden: &str| {
        format!(
            "csrf={csrf}&walled_garden={}&walled_garden_domains=&idle_timeout_secs=0&global_down_mbits=0&global_up_mbits=0",
            form_value(garden)
        )
    };
    // A wrong entry: refused with the reason, nothing written or applied.
    let a = op.post("/admin/settings", &form("not-an-address"));
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("walled_garden"), "{}", a.body);
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap(),
        "# the shop's gateway\nidle_timeout_secs = 0\n"
    );
    let a = op.post(
        "/admin/settings",
        &form(&format!("{}/32:5002", hs.server_addr(false))),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("configuration reloaded") {
        assert!(
            std::time::Instant::now() < end,
            "not reloaded:\n{}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reach(), "the garden entry saved on the page does not pass");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.starts_with("# the shop's gateway\n"),
        "the file's comment is gone: {text}"
    );
    assert!(
        text.contains(&format!("{}/32:5002", hs.server_addr(false))),
        "{text}"
    );
    assert!(op
        .get("/admin/settings?saved=1")
        .body
        .contains("Saved; the agent applied it."));
}

#[test]
fn the_control_api_on_tcp_speaks_https_with_the_same_certificate_and_still_wants_its_token() {
    require_root();
    let hs = Hotspot::builder().clients(1).build();
    std::fs::create_dir_all(&hs.state_dir).unwrap();
    let api = SocketAddr::from((hs.gw_lan_addr(false), 8480));
    let cert = hs.state_dir.join("admin-cert.pem");
    let _agent = AgentBuilder::new(&hs)
        .arg("--api-tcp")
        .arg(api.to_string())
        .arg("--api-token")
        .arg("s3cret-token")
        .arg("--api-tls")
        .arg("--admin-cert")
        .arg(cert.display().to_string())
        .arg("--admin-key")
        .arg(hs.state_dir.join("admin-key.pem").display().to_string())
        .start();
    assert!(
        cert.exists(),
        "the certificate is made for the API alone too"
    );
    let mut s = Site::https(&hs.gw_ns, api, &cert);
    let a = s.send(
        "GET",
        "/v1/status",
        &["Authorization: Bearer s3cret-token"],
        "",
    );
    assert_eq!(a.status, 200, "{}\n{}", a.head, a.body);
    assert!(a.body.contains("\"lans\""), "{}", a.body);
    let a = s.get("/v1/status");
    assert_eq!(a.status, 401, "{}", a.head);
    // In clear, the token gets no answer.
    let mut plain = Site::plain(&hs.gw_ns, api);
    let a = plain.send(
        "GET",
        "/v1/status",
        &["Authorization: Bearer s3cret-token"],
        "",
    );
    assert_ne!(a.status, 200, "{}", a.head);
}
