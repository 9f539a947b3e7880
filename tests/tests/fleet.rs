//! Many gateways, one operator: codes written by `vouchers create --sql` into
//! FreeRADIUS's PostgreSQL schema, checked by the README's fleet configuration
//! (sql on PostgreSQL, counters of time and data, Simultaneous-Use,
//! Accounting-On/Off), with a real PostgreSQL and a real FreeRADIUS.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use session_tests::postgres::Postgres;
use session_tests::radius::{fleet_gateway, link_to_aaa, radclient, FreeRadius, RadiusConfig};
use session_tests::traffic::http;
use session_tests::{
    agent_bin, require_root, Agent, AgentBuilder, Hotspot, Netns, NftRef, ServerSet, TcpTransfer,
};

const SECRET: &str = "fl33t-s3cret";

/// An Access-Request for `code` from NAS `nas_ip`: the reply's attributes, or
/// None for a reject.
fn auth(ns: &str, server: SocketAddr, code: &str, nas_ip: &str) -> Option<String> {
    let (answered, text) = radclient(
        ns,
        server,
        "auth",
        SECRET,
        &format!("User-Name = \"{code}\", User-Password = \"{code}\", NAS-IP-Address = {nas_ip}, Message-Authenticator = 0x00"),
    );
    assert!(answered, "no answer: {text}");
    if text.contains("Received Access-Accept") {
        Some(text)
    } else {
        assert!(text.contains("Received Access-Reject"), "{text}");
        None
    }
}

fn acct(ns: &str, server: SocketAddr, attrs: &str) {
    let (answered, text) = radclient(ns, server, "acct", SECRET, attrs);
    assert!(
        answered && text.contains("Accounting-Response"),
        "accounting not answered: {text}"
    );
}

/// The value of `name` in radclient's printout of a reply.
fn reply_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.trim().split_once(" = "))
        .filter(|(k, _)| *k == name)
        .filter_map(|(_, v)| v.trim().parse().ok())
        .next_back()
}

#[test]
fn codes_written_with_sql_are_counted_across_gateways_refused_twice_at_once_and_freed_by_accounting_on(
) {
    require_root();
    let pg = Postgres::start();
    let aaa = Netns::new(&format!("{}-aaa", session_tests::unique_id()));
    session_tests::netns::ip_n(aaa.name(), &["link", "set", "lo", "up"]);
    let mut cfg = RadiusConfig::new(SECRET, "");
    cfg.postgres = Some(pg.dir.clone());
    let radius = FreeRadius::start(aaa.name(), IpAddr::V4(Ipv4Addr::LOCALHOST), &cfg);
    let (auth_at, acct_at) = (radius.auth_addr(), radius.acct_addr());

    let codes = pg.create_codes(&[
        "--count",
        "2",
        "--type",
        "time_or_data",
        "--time-secs",
        "3600",
        "--data-mb",
        "500",
        "--down-mbits",
        "20",
    ]);
    assert_eq!(codes.len(), 2);
    let code = &codes[0];
    assert_eq!(
        pg.rows(&format!(
            "SELECT attribute, op, value FROM radcheck WHERE username = '{code}' ORDER BY attribute"
        )),
        vec![
            vec!["Cleartext-Password".to_string(), ":=".into(), code.clone()],
            vec!["Max-All-Session".into(), ":=".into(), "3600".into()],
            vec!["Max-Total-Octets".into(), ":=".into(), "500000000".into()],
            vec!["Simultaneous-Use".into(), ":=".into(), "1".into()],
        ]
    );

    // Fresh: the whole of it.
    let r = auth(aaa.name(), auth_at, code, "10.250.1.1").expect("a fresh code is accepted");
    assert_eq!(reply_value(&r, "Session-Timeout"), Some(3600), "{r}");
    assert_eq!(
        reply_value(&r, "ChilliSpot-Max-Total-Octets"),
        Some(500_000_000),
        "{r}"
    );
    assert_eq!(
        reply_value(&r, "WISPr-Bandwidth-Max-Down"),
        Some(20_000_000),
        "{r}"
    );
    // A wrong password is refused.
    let (_, text) = radclient(
        aaa.name(),
        auth_at,
        "auth",
        SECRET,
        &format!("User-Name = \"{code}\", User-Password = \"nope\", NAS-IP-Address = 10.250.1.1, Message-Authenticator = 0x00"),
    );
    assert!(text.contains("Access-Reject"), "{text}");

    // Used at gateway A: 1,200 s and 200,000,123 bytes, then a Stop.
    let session = |nas: &str, id: &str, status: &str, secs: u64, up: u64, down: u64| {
        format!(
            "User-Name = \"{code}\", Acct-Status-Type = {status}, Acct-Session-Id = \"{id}\", \
             NAS-IP-Address = {nas}, NAS-Identifier = \"gw\", Calling-Station-Id = \"02-00-00-00-00-01\", \
             Acct-Session-Time = {secs}, Acct-Input-Octets = {up}, Acct-Output-Octets = {down}"
        )
    };
    acct(
        aaa.name(),
        acct_at,
        &session("10.250.1.1", "a1", "Start", 0, 0, 0),
    );
    // Online at A: refused at B.
    assert!(
        auth(aaa.name(), auth_at, code, "10.250.2.1").is_none(),
        "a code online at one gateway is refused at another: {}\nradacct: {:?}",
        radius.log(),
        pg.rows("SELECT username, nasipaddress, acctstarttime, acctupdatetime, acctstoptime FROM radacct")
    );
    acct(
        aaa.name(),
        acct_at,
        &session("10.250.1.1", "a1", "Stop", 1200, 50_000_000, 150_000_123),
    );
    let r = auth(aaa.name(), auth_at, code, "10.250.2.1").expect("after the Stop, B accepts");
    assert_eq!(reply_value(&r, "Session-Timeout"), Some(2400), "{r}");
    assert_eq!(
        reply_value(&r, "ChilliSpot-Max-Total-Octets"),
        Some(500_000_000 - 200_000_123),
        "{r}"
    );

    // At B it goes online; B loses power and comes back: its Accounting-On
    // closes what it had open, and the code is accepted again at once.
    acct(
        aaa.name(),
        acct_at,
        &session("10.250.2.1", "b1", "Start", 0, 0, 0),
    );
    assert!(auth(aaa.name(), auth_at, code, "10.250.1.1").is_none());
    acct(
        aaa.name(),
        acct_at,
        "Acct-Status-Type = Accounting-On, NAS-IP-Address = 10.250.2.1, NAS-Identifier = \"gw\", Acct-Session-Id = \"on\"",
    );
    assert!(
        auth(aaa.name(), auth_at, code, "10.250.1.1").is_some(),
        "B's Accounting-On closed its sessions"
    );
    // Another gateway's Accounting-On closes nothing of A's.
    acct(
        aaa.name(),
        acct_at,
        &session("10.250.1.1", "a2", "Start", 0, 0, 0),
    );
    acct(
        aaa.name(),
        acct_at,
        "Acct-Status-Type = Accounting-On, NAS-IP-Address = 10.250.3.1, NAS-Identifier = \"gw3\", Acct-Session-Id = \"on3\"",
    );
    assert!(auth(aaa.name(), auth_at, code, "10.250.2.1").is_none());
    // A is lost for good (no Stop, no Accounting-On): once its session has
    // gone without an update past the stale time, it no longer counts.
    pg.psql(
        "radius",
        "UPDATE radacct SET acctupdatetime = NOW() - INTERVAL '661 seconds' WHERE acctsessionid = 'a2'",
    );
    assert!(
        auth(aaa.name(), auth_at, code, "10.250.2.1").is_some(),
        "a session its gateway stopped updating is stale"
    );

    // The other code of the batch is untouched by all this.
    let r = auth(aaa.name(), auth_at, &codes[1], "10.250.1.1").expect("the second code");
    assert_eq!(reply_value(&r, "Session-Timeout"), Some(3600), "{r}");
    drop(radius);
}

const PORTAL: u16 = 8908;
const FORM: &str = "Content-Type: application/x-www-form-urlencoded";

fn portal(hs: &Hotspot) -> SocketAddr {
    SocketAddr::from((hs.gw_lan_addr(false), PORTAL))
}

/// The portal form posted from namespace `ns`: (status, head, page).
fn type_code(ns: &str, at: SocketAddr, code: &str) -> (u16, String, String) {
    http(
        ns,
        at,
        "POST",
        "/portal/redeem",
        &[FORM],
        &format!("code={code}"),
    )
}

/// A gateway whose portal checks codes at the AAA server `server`.
fn gateway(hs: &Hotspot, server: Ipv4Addr, nas: &str, nas_ip: Ipv4Addr) -> Agent {
    gateway_with(hs, server, nas, nas_ip).start()
}

fn gateway_with(hs: &Hotspot, server: Ipv4Addr, nas: &str, nas_ip: Ipv4Addr) -> AgentBuilder {
    fleet_gateway(hs, server, nas, nas_ip, SECRET)
        .arg("--captive-listen")
        .arg(portal(hs).to_string())
}

/// The latest session of the device of `mac` at `agent`.
fn session_of(agent: &Agent, mac: &str) -> Value {
    let d = agent
        .api()
        .get(&format!("/v1/devices/by-mac/{mac}"))
        .ok("device");
    let list = agent
        .api()
        .get(&format!("/v1/devices/{}/sessions", d["id"]))
        .ok("sessions");
    list.as_array()
        .and_then(|l| l.last())
        .cloned()
        .unwrap_or_else(|| panic!("no session: {list}"))
}

/// Waits for an open radacct row of `code` at `nas_ip` (its Start).
fn open_at(pg: &Postgres, code: &str, nas_ip: Ipv4Addr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg
        .rows(&format!(
            "SELECT 1 FROM radacct WHERE username = '{code}' AND nasipaddress = '{nas_ip}' AND acctstoptime IS NULL"
        ))
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "no Start of {code} at {nas_ip}: {:?}",
            pg.rows("SELECT username, nasipaddress, acctstarttime, acctstoptime FROM radacct")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for the radacct row of `code` at `nas_ip` to be closed:
/// (Acct-Session-Time, input + output octets, terminate cause).
fn closed_at(pg: &Postgres, code: &str, nas_ip: Ipv4Addr) -> (u64, u64, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = pg.rows(&format!(
            "SELECT acctsessiontime, acctinputoctets + acctoutputoctets, acctterminatecause \
             FROM radacct WHERE username = '{code}' AND nasipaddress = '{nas_ip}' AND acctstoptime IS NOT NULL"
        ));
        if let Some(r) = rows.first() {
            return (r[0].parse().unwrap(), r[1].parse().unwrap(), r[2].clone());
        }
        assert!(
            Instant::now() < deadline,
            "no closed session of {code} at {nas_ip}: {:?}",
            pg.rows("SELECT username, nasipaddress, acctstarttime, acctstoptime FROM radacct")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two gateways and one AAA server (FreeRADIUS with PostgreSQL) in a
/// namespace of its own, linked to each; dropped server first.
struct Fleet {
    _radius: FreeRadius,
    a: Hotspot,
    b: Hotspot,
    _aaa: Netns,
    pg: Postgres,
    /// Each gateway's NAS-IP-Address, and the server's address as it sees it.
    nas_a: Ipv4Addr,
    aaa_a: Ipv4Addr,
    nas_b: Ipv4Addr,
    aaa_b: Ipv4Addr,
}

fn fleet() -> Fleet {
    let pg = Postgres::start();
    let (a, b) = (
        Hotspot::builder().clients(1).build(),
        Hotspot::builder().clients(1).build(),
    );
    let aaa = Netns::new(&format!("{}-aaa", a.id));
    let (nas_a, aaa_a) = link_to_aaa(&a.gw_ns, aaa.name(), 1);
    let (nas_b, aaa_b) = link_to_aaa(&b.gw_ns, aaa.name(), 2);
    let mut cfg = RadiusConfig::new(SECRET, "");
    cfg.postgres = Some(pg.dir.clone());
    let radius = FreeRadius::start(aaa.name(), Ipv4Addr::UNSPECIFIED.into(), &cfg);
    Fleet {
        _radius: radius,
        a,
        b,
        _aaa: aaa,
        pg,
        nas_a,
        aaa_a,
        nas_b,
        aaa_b,
    }
}

#[test]
fn a_code_typed_at_two_gateways_gives_the_exact_remainder_once_at_a_time_and_a_reboot_frees_it() {
    require_root();
    let f = fleet();
    let Fleet {
        a,
        b,
        pg,
        nas_a,
        aaa_a,
        nas_b,
        aaa_b,
        ..
    } = &f;
    let (nas_a, aaa_a, nas_b, aaa_b) = (*nas_a, *aaa_a, *nas_b, *aaa_b);
    let code = pg
        .create_codes(&[
            "--count",
            "1",
            "--type",
            "time_or_data",
            "--time-secs",
            "3600",
            "--data-mb",
            "500",
            "--price",
            "20 PHP",
        ])
        .remove(0);
    let (agent_a, mut agent_b) = (
        gateway(a, aaa_a, "gw-a", nas_a),
        gateway(b, aaa_b, "gw-b", nas_b),
    );
    let (nft_a, nft_b) = (NftRef::install(a), NftRef::install(b));
    let srv_a = ServerSet::start(&a.server_ns, a.server_v4, a.server_v6, 5171, 5172);
    let srv_b = ServerSet::start(&b.server_ns, b.server_v4, b.server_v6, 5171, 5172);
    let (ca, cb) = (a.clients[0].clone(), b.clients[0].clone());

    // At A, typed with dashes and small letters as a customer may.
    let typed = format!("{}-{}", &code[..5], &code[5..]).to_lowercase();
    let before_login = Instant::now();
    let (st, head, page) = type_code(&ca.ns, portal(a), &typed);
    let after_login = Instant::now();
    assert_eq!(st, 303, "{head}\n{page}\n{}", agent_a.log_tail());
    assert!(agent_a.client_or_zero(&ca.mac).allowed);
    TcpTransfer::run(&ca.ns, srv_a.tcp4.addr, 200_000, 3_000_000).expect("online at A");

    // Online at A (its Start recorded): refused at B, with the server's word for it.
    open_at(pg, &code, nas_a);
    let (st, _, page) = type_code(&cb.ns, portal(b), &code);
    assert_eq!(
        st,
        403,
        "{page}\n{}\nradacct: {:?}",
        agent_a.log_tail(),
        pg.rows("SELECT username, nasipaddress, acctstarttime, acctupdatetime, acctstoptime, now() FROM radacct")
    );
    assert!(page.contains("already logged in"), "{page}");
    assert!(!agent_b.client_or_zero(&cb.mac).allowed);

    // Paused at A after a while: a Stop.
    std::thread::sleep(Duration::from_millis(2_500));
    let before_pause = Instant::now();
    let (st, head, page) = http(&ca.ns, portal(a), "POST", "/portal/pause", &[FORM], "");
    let after_pause = Instant::now();
    assert_eq!(st, 303, "{head}\n{page}");
    let (secs_a, octets_a, cause) = closed_at(pg, &code, nas_a);
    let ref_a = nft_a.get(&ca.mac);
    assert_eq!(
        octets_a,
        ref_a.up_bytes + ref_a.down_bytes,
        "A's octets against the reference {ref_a:?}"
    );
    // Whole seconds online, as the clock saw them (within the second a
    // count rounds off).
    let (least, most) = (
        before_pause.duration_since(after_login).as_secs_f64(),
        after_pause.duration_since(before_login).as_secs_f64(),
    );
    assert!(
        secs_a as f64 >= least.floor() - 1.0 && secs_a as f64 <= most.ceil() + 1.0,
        "{secs_a} s at A, online between {least:.2} and {most:.2} s"
    );
    assert_eq!(cause, "User-Request");

    // At B: exactly what is left.
    let (st, head, page) = type_code(&cb.ns, portal(b), &code);
    assert_eq!(st, 303, "{head}\n{page}\n{}", agent_b.log_tail());
    let s = session_of(&agent_b, &cb.mac);
    assert_eq!(s["time_secs"].as_u64(), Some(3600 - secs_a), "{s}");
    assert_eq!(
        s["data_bytes"].as_u64(),
        Some(500_000_000 - octets_a),
        "{s}"
    );
    TcpTransfer::run(&cb.ns, srv_b.tcp4.addr, 100_000, 1_000_000).expect("online at B");

    // B loses power: killed, its datapath gone with the reboot, started
    // again. It closes the session it had open (NAS-Reboot), so the code
    // is free at once, with B's octets exact up to its last commit.
    agent_b.kill9();
    agent_b.detach(&b.lan_if);
    agent_b = agent_b.restart();
    let (_, octets_b, cause) = closed_at(pg, &code, nas_b);
    assert_eq!(cause, "NAS-Reboot");
    let ref_b = nft_b.get(&cb.mac);
    assert!(
        octets_b <= ref_b.up_bytes + ref_b.down_bytes,
        "{octets_b} against {ref_b:?}"
    );
    let (st, head, page) = type_code(&ca.ns, portal(a), &code);
    assert_eq!(
        st,
        303,
        "after B's reboot the code works at A again: {head}\n{page}\n{}",
        agent_a.log_tail()
    );

    // The sale: once, where the code was first used, at its batch's price.
    let out = Command::new(agent_bin())
        .args([
            "vouchers",
            "sales",
            "--format",
            "csv",
            "--sql",
            &pg.conninfo(),
        ])
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "time,code,batch,price,currency,gateway,device");
    assert_eq!(lines.len(), 2, "{csv}");
    let f: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(
        &f[1..],
        &[
            code.as_str(),
            "fleet",
            "20.00",
            "PHP",
            &nas_a.to_string(),
            &ca.mac.to_uppercase().replace(':', "-")
        ],
        "{csv}"
    );
    open_at(pg, &code, nas_a);
    let out = Command::new(agent_bin())
        .args(["vouchers", "sales", "--sql", &pg.conninfo()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report
            .lines()
            .any(|l| l.contains("total") && l.contains("20.00")),
        "{report}"
    );
    // Online now: the customer, at A again.
    let online = &report[report.find("ONLINE NOW").expect("online table")..];
    let a_line = [nas_a.to_string(), "1".to_string()];
    assert!(
        online
            .lines()
            .any(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>() == a_line),
        "{report}"
    );
    drop((agent_a, agent_b, f));
}

#[test]
fn postgresql_stopped_mid_session_loses_and_doubles_nothing_and_the_portal_says_try_again_without_a_server(
) {
    require_root();
    let mut pg = Postgres::start();
    let hs = Hotspot::builder().clients(2).build();
    let aaa = Netns::new(&format!("{}-aaa", hs.id));
    let (nas, aaa_addr) = link_to_aaa(&hs.gw_ns, aaa.name(), 1);
    let mut cfg = RadiusConfig::new(SECRET, "");
    cfg.postgres = Some(pg.dir.clone());
    let mut radius = FreeRadius::start(aaa.name(), Ipv4Addr::UNSPECIFIED.into(), &cfg);
    let codes = pg.create_codes(&["--count", "2", "--type", "data", "--data-mb", "100"]);
    let agent = gateway(&hs, aaa_addr, "gw-a", nas);
    let nft = NftRef::install(&hs);
    let srv = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5181, 5182);
    let (c, other) = (hs.clients[0].clone(), hs.clients[1].clone());

    let (st, head, page) = type_code(&c.ns, portal(&hs), &codes[0]);
    assert_eq!(st, 303, "{head}\n{page}\n{}", agent.log_tail());
    TcpTransfer::run(&c.ns, srv.tcp4.addr, 300_000, 1_000_000).expect("online");
    // The database goes away mid-session: the customer stays online, the
    // server answers no accounting, and the agent's book keeps it.
    pg.stop();
    TcpTransfer::run(&c.ns, srv.tcp4.addr, 200_000, 2_000_000).expect("still online");
    let (st, head, page) = http(&c.ns, portal(&hs), "POST", "/portal/pause", &[FORM], "");
    assert_eq!(st, 303, "{head}\n{page}");
    assert!(
        agent.log_shows(
            |l| l.contains("RADIUS accounting waits"),
            Duration::from_secs(10)
        ),
        "the Stop waits: {}",
        agent.log_tail()
    );
    pg.resume();
    let (_, octets, cause) = closed_at(&pg, &codes[0], nas);
    let r = nft.get(&c.mac);
    assert_eq!(
        octets,
        r.up_bytes + r.down_bytes,
        "against the reference {r:?}"
    );
    assert_eq!(cause, "User-Request");
    let rows = pg.rows(&format!(
        "SELECT count(*) FROM radacct WHERE username = '{}'",
        codes[0]
    ));
    assert_eq!(
        rows,
        vec![vec!["1".to_string()]],
        "one record of the session"
    );

    // Without its database the server does not answer rather than refuse:
    // the portal asks to try again, and no wrong try is counted.
    pg.stop();
    for _ in 0..6 {
        let (st, _, page) = type_code(&other.ns, portal(&hs), &codes[1]);
        assert_eq!(st, 503, "{page}");
        assert!(page.contains("try again in a minute"), "{page}");
    }
    pg.resume();
    // No RADIUS server answers: the same, and the code is not spent.
    radius.stop();
    let (st, _, page) = type_code(&other.ns, portal(&hs), &codes[1]);
    assert_eq!(st, 503, "{page}");
    assert!(page.contains("try again in a minute"), "{page}");
    assert!(!agent.client_or_zero(&other.mac).allowed);
    radius.resume();
    let (st, head, page) = type_code(&other.ns, portal(&hs), &codes[1]);
    assert_eq!(st, 303, "{head}\n{page}");
    // Codes the server does not know count as wrong tries: the sixth in a
    // minute is not sent.
    for n in 0..5 {
        let (st, _, page) = type_code(&c.ns, portal(&hs), &format!("WRONG{n}CODE"));
        assert_eq!(st, 403, "try {n}: {page}");
        assert!(page.contains("does not exist"), "{page}");
    }
    let (st, _, page) = type_code(&c.ns, portal(&hs), &codes[0]);
    assert_eq!(st, 429, "{page}");
}

#[test]
fn a_phone_that_used_a_code_at_one_gateway_is_let_in_at_another_by_its_mac_for_what_is_left() {
    require_root();
    let f = fleet();
    let Fleet {
        a,
        b,
        pg,
        nas_a,
        aaa_a,
        nas_b,
        aaa_b,
        ..
    } = &f;
    let (nas_a, aaa_a, nas_b, aaa_b) = (*nas_a, *aaa_a, *nas_b, *aaa_b);
    let code = pg
        .create_codes(&["--count", "1", "--type", "data", "--data-mb", "50"])
        .remove(0);
    // The same phone at both: B's station gets A's MAC.
    let (ca, cb) = (a.clients[0].clone(), b.clients[0].clone());
    session_tests::netns::ip_n(
        &cb.ns,
        &["link", "set", "dev", &cb.ifname, "address", &ca.mac],
    );
    session_tests::netns::ip_n(
        &b.gw_ns,
        &[
            "neigh",
            "replace",
            &cb.ipv4.to_string(),
            "lladdr",
            &ca.mac,
            "dev",
            &b.lan_if,
            "nud",
            "permanent",
        ],
    );
    let agent_a = gateway(a, aaa_a, "gw-a", nas_a);
    let agent_b = gateway_with(b, aaa_b, "gw-b", nas_b)
        .arg("--radius-mac-auth")
        .start();
    let nft_a = NftRef::install(a);
    let srv_a = ServerSet::start(&a.server_ns, a.server_v4, a.server_v6, 5191, 5192);
    let srv_b = ServerSet::start(&b.server_ns, b.server_v4, b.server_v6, 5191, 5192);

    let (st, head, page) = type_code(&ca.ns, portal(a), &code);
    assert_eq!(st, 303, "{head}\n{page}");
    TcpTransfer::run(&ca.ns, srv_a.tcp4.addr, 100_000, 2_000_000).expect("online at A");
    let (st, _, _) = http(&ca.ns, portal(a), "POST", "/portal/pause", &[FORM], "");
    assert_eq!(st, 303);
    let (_, used_a, _) = closed_at(pg, &code, nas_a);
    let r = nft_a.get(&ca.mac);
    assert_eq!(used_a, r.up_bytes + r.down_bytes);

    // At B the phone's first frame logs it in by its MAC, for what is left
    // of its code, and B's accounting names the code.
    let _ = TcpTransfer::run_timeout(
        &cb.ns,
        srv_b.tcp4.addr,
        100,
        100,
        Duration::from_millis(300),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent_b.client_or_zero(&ca.mac).allowed {
        assert!(
            Instant::now() < deadline,
            "the phone was not let in at B: {}",
            agent_b.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = session_of(&agent_b, &ca.mac);
    assert_eq!(s["data_bytes"].as_u64(), Some(50_000_000 - used_a), "{s}");
    TcpTransfer::run(&cb.ns, srv_b.tcp4.addr, 10_000, 10_000).expect("online at B");
    open_at(pg, &code, nas_b);
    drop((agent_a, agent_b, f));
}
