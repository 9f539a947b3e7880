//! The operator page's guard, over real sockets on loopback: every route
//! refuses without a login, staff are refused every owner route, a change
//! without its CSRF token (or from another site) is refused and changes
//! nothing, the cookie carries its flags, wrong passwords lock the address,
//! and text from outside renders inert. The routes come from
//! `admin::ROUTES`, so a route added without the guard fails here.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use session_agent::{
    admin::{self, Accounts, AdminState, Role, ROUTES},
    datapath::MemDatapath,
    gateway::{Gateway, GatewayConfig},
    history::History,
};
use session_model::{MemoryStore, SessionsMgr, SystemClock};

const OWNER_PW: &str = "owner's long password";
const STAFF_PW: &str = "staff's long password";

struct Page {
    addr: SocketAddr,
    /// The configuration file the settings page writes, and its reloads.
    cfg: std::path::PathBuf,
    reloads: std::sync::Mutex<tokio::sync::mpsc::Receiver<()>>,
    accounts: Accounts,
    gw: Arc<Gateway>,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

fn page() -> Page {
    let dir = tempfile::tempdir().unwrap();
    let accounts = Accounts::at(dir.path().join("admin-accounts"));
    accounts.set_password(None, OWNER_PW).unwrap();
    accounts.set_password(Some("ana"), STAFF_PW).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mgr = Arc::new(SessionsMgr::new(
        Arc::new(MemoryStore::new()),
        Arc::new(SystemClock),
    ));
    let gw = rt.block_on(async {
        Gateway::with_datapath(mgr, Arc::new(MemDatapath::new(1)), GatewayConfig::default())
    });
    let st = AdminState::new(
        gw.clone(),
        accounts.clone(),
        false,
        Some("http://10.0.0.1:8908/portal".into()),
        Some(History::open(gw.clone(), chrono::Utc::now().timestamp()).unwrap()),
    );
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "# mine\nlans = [\"wlan0\"]\n").unwrap();
    let (tx, reloads) = tokio::sync::mpsc::channel(1);
    st.set_settings(
        Some(Arc::new(session_agent::config_file::ConfigFile::at(&cfg))),
        Some(tx),
    );
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = l.local_addr().unwrap();
    rt.spawn(async move {
        axum::serve(
            l,
            admin::router(st).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    Page {
        addr,
        cfg,
        reloads: std::sync::Mutex::new(reloads),
        accounts,
        gw,
        _dir: dir,
        _rt: rt,
    }
}

struct Answer {
    status: u16,
    head: String,
    /// The head as sent (a location's case matters).
    raw: String,
    body: String,
}

/// One request: `cookie` (a token) and a form `body`, with `extra` headers.
fn send(
    p: &Page,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    extra: &[&str],
    body: &str,
) -> Answer {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n",
        p.addr,
        body.len()
    );
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {}={c}\r\n", admin::COOKIE));
    }
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    // To the end; a stream of events (which does not end) to its head.
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        if text.contains("\r\n\r\n") && text.contains("content-type: text/event-stream") {
            break;
        }
    }
    let out = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    Answer {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head: head.to_ascii_lowercase(),
        raw: head.to_string(),
        body: body.to_string(),
    }
}

/// A form posted with the login `cookie`.
fn post(p: &Page, path: &str, cookie: &str, body: &str) -> Answer {
    send(p, "POST", path, Some(cookie), &[], body)
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Logs in: (cookie token, the CSRF token of its pages).
fn log_in(p: &Page, name: &str, pw: &str) -> (String, String) {
    let a = send(
        p,
        "POST",
        "/admin/login",
        None,
        &[],
        &format!("name={}&password={}", enc(name), enc(pw)),
    );
    assert_eq!(a.status, 303, "{}\n{}", a.head, a.body);
    let cookie = a
        .head
        .lines()
        .find_map(|l| l.strip_prefix(&format!("set-cookie: {}=", admin::COOKIE)))
        .expect("a cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = send(p, "GET", "/admin/vouchers", Some(&cookie), &[], "");
    assert_eq!(page.status, 200);
    let at = page
        .body
        .find("name=\"csrf\" value=\"")
        .expect("a form with its token")
        + 19;
    let csrf = page.body[at..].split('"').next().unwrap().to_string();
    (cookie, csrf)
}

#[test]
fn every_route_refuses_without_a_login_or_with_a_forged_cookie() {
    let p = page();
    assert!(ROUTES.len() >= 15, "{ROUTES:?}");
    for cookie in [None, Some("00".repeat(32).as_str())] {
        for (method, path, _) in ROUTES {
            let a = send(&p, method, path, cookie, &[], "csrf=x");
            if *method == "GET" {
                assert_eq!(a.status, 303, "{method} {path}: {}", a.head);
                assert!(
                    a.head.contains("location: /admin/login"),
                    "{method} {path}: {}",
                    a.head
                );
            } else {
                assert_eq!(a.status, 401, "{method} {path}: {}", a.head);
            }
            assert!(!a.body.contains("<table"), "{method} {path} showed a table");
        }
    }
}

#[test]
fn a_staff_account_is_refused_every_owner_route_and_form() {
    let p = page();
    let (cookie, csrf) = log_in(&p, "ana", STAFF_PW);
    let mut owner_routes = 0;
    for (method, path, role) in ROUTES {
        let a = send(
            &p,
            method,
            path,
            Some(&cookie),
            &[],
            &format!("csrf={csrf}&name=x&device=1&code=x"),
        );
        if *role == Role::Owner {
            owner_routes += 1;
            assert_eq!(a.status, 403, "{method} {path}: {}", a.head);
        } else {
            assert_ne!(a.status, 403, "{method} {path}: {}", a.body);
            assert_ne!(a.status, 401, "{method} {path}: {}", a.body);
        }
    }
    assert!(owner_routes >= 6);
    // Nor do the owner's forms show on the pages staff may see.
    let plans = send(&p, "GET", "/admin/plans", Some(&cookie), &[], "");
    assert!(
        !plans.body.contains("action=\"/admin/plans\""),
        "{}",
        plans.body
    );
}

#[test]
fn a_change_without_its_csrf_token_or_from_another_site_is_refused_and_changes_nothing() {
    let p = page();
    let (cookie, csrf) = log_in(&p, "owner", OWNER_PW);
    let plan = "name=1h&price=20&currency=PHP&kind=time&minutes=60&mb=0&down=0&up=0&exp_days=";
    // The token with its first byte changed (one in 256 tokens starts with 00).
    let first = if csrf.starts_with("00") { "11" } else { "00" };
    for (body, extra) in [
        (plan.to_string(), vec![]),
        (format!("{plan}&csrf={first}{}", &csrf[2..]), vec![]),
        (
            format!("{plan}&csrf={csrf}"),
            vec!["Origin: https://evil.example"],
        ),
    ] {
        let a = send(&p, "POST", "/admin/plans", Some(&cookie), &extra, &body);
        assert_eq!(a.status, 403, "{body} {extra:?}: {}", a.body);
        assert!(
            p.gw.sessions().plans().unwrap().is_empty(),
            "{body}: a plan was saved"
        );
    }
    // Another login's token is not this one's.
    let (_, other) = log_in(&p, "owner", OWNER_PW);
    let a = post(&p, "/admin/plans", &cookie, &format!("{plan}&csrf={other}"));
    assert_eq!(a.status, 403);
    let a = send(
        &p,
        "POST",
        "/admin/plans",
        Some(&cookie),
        &[&format!("Origin: http://{}", p.addr)],
        &format!("{plan}&csrf={csrf}"),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(p.gw.sessions().plans().unwrap().len(), 1);
}

#[test]
fn the_login_cookie_is_secure_http_only_and_same_site_strict_and_ends_at_logout() {
    let p = page();
    let a = send(
        &p,
        "POST",
        "/admin/login",
        None,
        &[],
        &format!("name=owner&password={}", enc(OWNER_PW)),
    );
    let set = a
        .head
        .lines()
        .find(|l| l.starts_with("set-cookie: "))
        .expect("a cookie")
        .to_string();
    for flag in ["secure", "httponly", "samesite=strict", "path=/admin"] {
        assert!(
            set.split(';').any(|f| f.trim() == flag),
            "{flag} missing: {set}"
        );
    }
    let (cookie, csrf) = log_in(&p, "owner", OWNER_PW);
    assert_eq!(
        send(&p, "GET", "/admin", Some(&cookie), &[], "").status,
        200
    );
    let out = post(&p, "/admin/logout", &cookie, &format!("csrf={csrf}"));
    assert_eq!(out.status, 303);
    assert_eq!(
        send(&p, "GET", "/admin", Some(&cookie), &[], "").status,
        303,
        "the login ended"
    );
}

#[test]
fn five_wrong_passwords_a_minute_lock_the_address_even_for_the_right_one() {
    let p = page();
    for i in 0..admin::MAX_WRONG {
        let a = send(
            &p,
            "POST",
            "/admin/login",
            None,
            &[],
            "name=owner&password=wrong+guess",
        );
        assert_eq!(a.status, 401, "try {i}");
        assert!(a.body.contains("Wrong name or password"));
    }
    let a = send(
        &p,
        "POST",
        "/admin/login",
        None,
        &[],
        &format!("name=owner&password={}", enc(OWNER_PW)),
    );
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(a.head.contains("retry-after: "), "{}", a.head);
    assert!(!a.head.contains("set-cookie"), "no login while locked");
}

#[test]
fn a_changed_password_ends_the_accounts_logins() {
    let p = page();
    let (cookie, _) = log_in(&p, "ana", STAFF_PW);
    p.accounts
        .set_password(Some("ana"), "a brand new password")
        .unwrap();
    let a = send(&p, "GET", "/admin/clients", Some(&cookie), &[], "");
    assert_eq!(a.status, 303, "the old login ended: {}", a.head);
}

#[test]
fn a_plan_named_like_a_script_renders_as_text_under_a_policy_without_inline_script() {
    let p = page();
    let (cookie, csrf) = log_in(&p, "owner", OWNER_PW);
    let evil = "<script>alert(1)</script>";
    let a = post(
        &p,
        "/admin/plans",
        &cookie,
        &format!(
            "csrf={csrf}&name={}&price=5&currency=PHP&kind=time&minutes=30",
            enc(evil)
        ),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    for path in ["/admin/plans", "/admin/vouchers"] {
        let page = send(&p, "GET", path, Some(&cookie), &[], "");
        assert!(
            !page.body.contains(evil),
            "{path} carries the script as markup"
        );
        assert!(
            page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{path}: {}",
            page.body
        );
        let csp = page
            .head
            .lines()
            .find_map(|l| l.strip_prefix("content-security-policy: "))
            .expect("a content security policy")
            .to_string();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert!(
            !page.body.contains("<script>"),
            "{path} has an inline script"
        );
        assert!(
            !page.body.contains("style=\""),
            "{path} has an inline style"
        );
    }
}

#[test]
fn codes_made_from_a_plan_print_with_its_price_and_a_qr_code_that_opens_the_portal_with_the_code() {
    let p = page();
    let (cookie, csrf) = log_in(&p, "owner", OWNER_PW);
    let a = post(
        &p,
        "/admin/plans",
        &cookie,
        &format!(
            "csrf={csrf}&name=Day&price=50.5&currency=php&kind=time_or_data&minutes=1440&mb=500"
        ),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    // Staff may sell.
    let (staff, staff_csrf) = log_in(&p, "ana", STAFF_PW);
    let a = post(
        &p,
        "/admin/vouchers",
        &staff,
        &format!("csrf={staff_csrf}&plan=Day&count=2"),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    let to = a
        .raw
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .to_string();
    let sheet = send(&p, "GET", &to, Some(&staff), &[], "");
    assert_eq!(
        sheet.body.matches("class=\"slip\"").count(),
        2,
        "{}",
        sheet.body
    );
    assert!(sheet.body.contains("50.50 PHP"), "{}", sheet.body);
    let codes: Vec<String> =
        p.gw.sessions()
            .store()
            .vouchers()
            .unwrap()
            .iter()
            .map(|v| {
                assert_eq!(v.sale.as_ref().unwrap().price_minor, 5050);
                v.display_code()
            })
            .collect();
    for c in &codes {
        let link = format!("http://10.0.0.1:8908/portal?code={}", c.replace('-', "%2D"));
        assert!(
            sheet.body.contains(&format!(
                "<svg class=\"qr\" role=\"img\" aria-label=\"{link}\""
            )),
            "no QR code of {link}"
        );
    }
    // Too many at once, or a plan that is not there, is refused with the reason.
    let a = post(
        &p,
        "/admin/vouchers",
        &staff,
        &format!("csrf={staff_csrf}&plan=Day&count=201"),
    );
    assert_eq!(a.status, 400);
    assert!(a.body.contains("from 0 to 200"), "{}", a.body);
    let a = post(
        &p,
        "/admin/vouchers",
        &staff,
        &format!("csrf={staff_csrf}&plan=Night&count=1"),
    );
    assert_eq!(a.status, 400);
    assert!(a.body.contains("no price plan named"), "{}", a.body);
    assert_eq!(p.gw.sessions().store().vouchers().unwrap().len(), 2);
}

#[test]
fn settings_saved_on_the_page_are_written_into_the_file_and_a_reload_is_asked_for() {
    let p = page();
    let (cookie, csrf) = log_in(&p, "owner", OWNER_PW);
    let form = |garden: &str| {
        format!(
            "csrf={csrf}&walled_garden={}&walled_garden_domains={}&idle_timeout_secs=600&global_down_mbits=20&global_up_mbits=5",
            enc(garden),
            enc("*.pay.example\nbank.example")
        )
    };
    let a = send(
        &p,
        "POST",
        "/admin/settings",
        Some(&cookie),
        &[],
        &form("10.0.0.0/8:443\n2001:db8::/32"),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    let text = std::fs::read_to_string(&p.cfg).unwrap();
    assert!(text.starts_with("# mine\n"), "{text}");
    for want in [
        "10.0.0.0/8:443",
        "*.pay.example",
        "idle_timeout_secs = 600",
        "global_up_mbits = 5",
    ] {
        assert!(text.contains(want), "{want} not in {text}");
    }
    assert!(
        p.reloads.lock().unwrap().try_recv().is_ok(),
        "no reload asked for"
    );
    let shown = send(&p, "GET", "/admin/settings", Some(&cookie), &[], "");
    assert!(shown.body.contains("bank.example"), "{}", shown.body);

    // Refused whole: nothing written, no reload.
    let a = send(
        &p,
        "POST",
        "/admin/settings",
        Some(&cookie),
        &[],
        &form("10.0.0.0/33"),
    );
    assert_eq!(a.status, 400);
    assert!(a.body.contains("Not saved"), "{}", a.body);
    assert_eq!(std::fs::read_to_string(&p.cfg).unwrap(), text);
    assert!(p.reloads.lock().unwrap().try_recv().is_err());
}
