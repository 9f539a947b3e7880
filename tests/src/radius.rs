//! A real RADIUS server for the tests: FreeRADIUS from Debian in a namespace,
//! with a configuration of its own (users file, one client for everyone with
//! the test's secret, accounting written to a `detail` file the tests read).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::netns::ns_command;

/// What the server is started with.
#[derive(Debug, Clone)]
pub struct RadiusConfig {
    pub secret: String,
    /// The users file (FreeRADIUS `files` module syntax).
    pub users: String,
    /// Sign Access answers with a Message-Authenticator (FreeRADIUS 3.2.1
    /// does not by itself; 3.2.5 and later do).
    pub sign_answers: bool,
    /// Accounting into SQLite as well, and a counter (`sqlcounter`) that
    /// answers a user with a `Max-Total-Octets` check item the data left of it,
    /// summed over every gateway's records, as ChilliSpot-Max-Total-Octets.
    pub data_counter: bool,
    /// Users, their limits and accounting in PostgreSQL (the socket directory
    /// of a [`crate::postgres::Postgres`]) instead: the README's fleet
    /// configuration, with counters of time, data and days after the first
    /// login, `expiration`, Simultaneous-Use through the open sessions of
    /// `radacct`, and Accounting-On/Off closing a gateway's sessions.
    pub postgres: Option<PathBuf>,
    /// With `postgres`: an open session not updated for this long no longer
    /// counts against Simultaneous-Use (its gateway is gone).
    pub stale_secs: u64,
}

impl RadiusConfig {
    pub fn new(secret: &str, users: &str) -> Self {
        Self {
            secret: secret.into(),
            users: users.into(),
            sign_answers: true,
            data_counter: false,
            postgres: None,
            stale_secs: 660,
        }
    }
}

/// A FreeRADIUS process (`freeradius -X`) in a namespace, killed on drop.
pub struct FreeRadius {
    ns: String,
    addr: IpAddr,
    child: Option<Child>,
    pub dir: PathBuf,
}

/// One accounting record of the detail file: attribute name -> value (quotes removed).
pub type AcctRecord = BTreeMap<String, String>;

impl FreeRadius {
    /// Auth on `addr`:1812, accounting on `addr`:1813, in `ns` (an
    /// unspecified `addr`: every address of `ns`).
    pub fn start(ns: &str, addr: IpAddr, cfg: &RadiusConfig) -> FreeRadius {
        assert!(
            std::path::Path::new("/usr/sbin/freeradius").exists(),
            "freeradius is missing: `cargo xtask test` installs it (apt-get install freeradius freeradius-utils)"
        );
        let dir = std::env::temp_dir().join(format!("sa-radius-{ns}-{}", crate::unique_id()));
        for sub in ["log", "run", "radacct"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let d = dir.display();
        let sign = if cfg.sign_answers {
            "update reply {\n      Message-Authenticator := 0x00\n    }"
        } else {
            ""
        };
        let listen = if addr.is_unspecified() {
            "*".to_string()
        } else {
            addr.to_string()
        };
        let (sql_modules, counter, sql) = if let Some(pg) = &cfg.postgres {
            (fleet_modules(pg, cfg.stale_secs), ROAMING_POLICY, "sql")
        } else if cfg.data_counter {
            (
                format!(
                    r#"  sql {{
    dialect = "sqlite"
    driver = "rlm_sql_sqlite"
    sqlite {{
      filename = "{d}/radius.db"
      busy_timeout = 200
      bootstrap = "/etc/freeradius/3.0/mods-config/sql/main/sqlite/schema.sql"
    }}
{SQL_TABLES}    delete_stale_sessions = yes
    pool {{
      start = 1
      min = 1
      max = 2
      spare = 1
      uses = 0
      retry_delay = 30
      lifetime = 0
      idle_timeout = 60
    }}
    read_clients = no
    client_table = "nas"
    group_attribute = "SQL-Group"
    $INCLUDE /etc/freeradius/3.0/mods-config/sql/main/sqlite/queries.conf
  }}
  sqlcounter datacounter {{
    sql_module_instance = sql
    dialect = sqlite
    counter_name = Total-Octets-Used
    check_name = Max-Total-Octets
    reply_name = ChilliSpot-Max-Total-Octets
    key = User-Name
    reset = never
    query = "SELECT IFNULL(SUM(acctinputoctets + acctoutputoctets), 0) FROM radacct WHERE username = '%{{${{key}}}}'"
  }}
"#
                ),
                "datacounter",
                "sql",
            )
        } else {
            (String::new(), "", "")
        };
        let conf = format!(
            r#"prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = {d}/log
raddbdir = {d}
radacctdir = {d}/radacct
name = freeradius
confdir = {d}
modconfdir = {d}
run_dir = {d}/run
db_dir = {d}
libdir = /usr/lib/freeradius
pidfile = {d}/run/radiusd.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 16384
hostname_lookups = no
log {{
  destination = files
  file = {d}/log/radius.log
  auth = yes
}}
security {{
  allow_core_dumps = no
  max_attributes = 200
  reject_delay = 0
  status_server = yes
}}
client everyone {{
  ipaddr = 0.0.0.0/0
  secret = "{secret}"
  require_message_authenticator = yes
}}
modules {{
  expr {{
  }}
{sql_modules}  pap {{
  }}
  files {{
    filename = {d}/users
  }}
  detail {{
    filename = {d}/radacct/detail
    permissions = 0600
    header = "%t"
  }}
}}
server default {{
  listen {{
    type = auth
    ipaddr = {listen}
    port = 1812
  }}
  listen {{
    type = acct
    ipaddr = {listen}
    port = 1813
  }}
  authorize {{
    files
    {counter}
    pap
  }}
  session {{
    {sql}
  }}
  authenticate {{
    Auth-Type PAP {{
      pap
    }}
  }}
  preacct {{
    update request {{
      Acct-Unique-Session-Id := "%{{md5:%{{User-Name}},%{{Acct-Session-Id}},%{{NAS-IP-Address}},%{{NAS-Identifier}},%{{Calling-Station-Id}}}}"
    }}
  }}
  accounting {{
    detail
    {sql}
  }}
  post-auth {{
    {sign}
    Post-Auth-Type REJECT {{
      {sign}
    }}
  }}
}}
"#,
            secret = cfg.secret
        );
        std::fs::write(dir.join("radiusd.conf"), conf).unwrap();
        // The Gigawords of CoovaChilli's dictionary, which Debian's lacks.
        std::fs::write(
            dir.join("dictionary"),
            "BEGIN-VENDOR ChilliSpot\n\
             ATTRIBUTE ChilliSpot-Max-Input-Gigawords 21 integer\n\
             ATTRIBUTE ChilliSpot-Max-Output-Gigawords 22 integer\n\
             ATTRIBUTE ChilliSpot-Max-Total-Gigawords 23 integer\n\
             END-VENDOR ChilliSpot\n\
             ATTRIBUTE Max-Total-Octets 3100 integer64\n\
             ATTRIBUTE Max-All-Session 3101 integer64\n\
             ATTRIBUTE Expire-After 3102 integer64\n",
        )
        .unwrap();
        std::fs::write(dir.join("users"), &cfg.users).unwrap();
        let mut r = FreeRadius {
            ns: ns.to_string(),
            addr,
            child: None,
            dir,
        };
        r.run();
        r
    }

    fn out(&self) -> PathBuf {
        self.dir.join("log/debug.out")
    }

    fn run(&mut self) {
        let out = std::fs::File::create(self.out()).unwrap();
        let child = ns_command(&self.ns, "/usr/sbin/freeradius")
            .args(["-X", "-d"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting freeradius in {}: {e}", self.ns));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("freeradius exited ({status}): {}", self.log());
            }
            if self.log().contains("Ready to process requests") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "freeradius not ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn auth_addr(&self) -> SocketAddr {
        SocketAddr::new(self.addr, 1812)
    }

    pub fn acct_addr(&self) -> SocketAddr {
        SocketAddr::new(self.addr, 1813)
    }

    /// Its debug output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.out()).unwrap_or_default()
    }

    /// Stops the server (an outage); [`FreeRadius::resume`] starts it again.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn resume(&mut self) {
        self.stop();
        self.run();
    }

    /// The accounting records written so far, in order.
    pub fn accounting(&self) -> Vec<AcctRecord> {
        let text = std::fs::read_to_string(self.dir.join("radacct/detail")).unwrap_or_default();
        let mut out = Vec::new();
        let mut cur: Option<AcctRecord> = None;
        for line in text.lines() {
            if line.trim().is_empty() {
                if let Some(r) = cur.take() {
                    out.push(r);
                }
            } else if !line.starts_with(['\t', ' ']) {
                if let Some(r) = cur.take() {
                    out.push(r);
                }
                cur = Some(AcctRecord::new());
            } else if let Some((k, v)) = line.trim().split_once(" = ") {
                cur.get_or_insert_with(AcctRecord::new)
                    .insert(k.to_string(), v.trim_matches('"').to_string());
            }
        }
        out.extend(cur);
        out
    }

    /// Waits until a record matches `f`, and returns it.
    pub fn wait_record(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&AcctRecord) -> bool,
    ) -> AcctRecord {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.accounting().into_iter().find(|r| f(r)) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no accounting record {what} within {timeout:?}; records: {:#?}",
                self.accounting()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The fleet's authorize: a MAC login (Call-Check) of a device that used a
/// code is that code's login (its name in the Accept's User-Name, which the
/// gateway's accounting then carries); then the codes' limits and counters.
/// Without its database the server does not answer (the portal then says
/// "try again") rather than refuse a good code.
const ROAMING_POLICY: &str = r#"if (&Service-Type == Call-Check) {
      update request {
        &User-Name := "%{sql:SELECT username FROM radacct WHERE callingstationid = '%{Calling-Station-Id}' AND username IN (SELECT code FROM session_agent_codes) ORDER BY acctstarttime DESC LIMIT 1}"
      }
      if (&User-Name != "") {
        update control {
          &Auth-Type := Accept
        }
        update reply {
          &User-Name := &request:User-Name
        }
      }
      else {
        update control {
          &Auth-Type := Reject
        }
      }
    }
    sql {
      fail = 1
    }
    if (fail) {
      update control {
        &Response-Packet-Type := Do-Not-Respond
      }
      return
    }
    expiration
    timecounter
    datacounter
    expire_on_login"#;

/// The tables of FreeRADIUS's SQL schema, as its `sql` module names them.
const SQL_TABLES: &str = r#"    radius_db = "radius"
    acct_table1 = "radacct"
    acct_table2 = "radacct"
    postauth_table = "radpostauth"
    authcheck_table = "radcheck"
    groupcheck_table = "radgroupcheck"
    authreply_table = "radreply"
    groupreply_table = "radgroupreply"
    usergroup_table = "radusergroup"
"#;

/// The fleet's modules: `sql` on PostgreSQL and the counters (as in the
/// README's "Many gateways" section).
fn fleet_modules(pg: &std::path::Path, stale_secs: u64) -> String {
    let pg = pg.display();
    format!(
        r#"  sql {{
    dialect = "postgresql"
    driver = "rlm_sql_postgresql"
    server = "{pg}"
    port = 5432
    login = "postgres"
    password = ""
{SQL_TABLES}    read_groups = no
    delete_stale_sessions = no
    pool {{
      start = 1
      min = 1
      max = 32
      spare = 4
      uses = 0
      retry_delay = 1
      lifetime = 0
      idle_timeout = 60
    }}
    read_clients = no
    client_table = "nas"
    group_attribute = "SQL-Group"
    # Before the stock queries, which would win otherwise: an open session
    # counts while its gateway keeps updating it.
    simul_count_query = "SELECT COUNT(*) FROM radacct WHERE username = '%{{SQL-User-Name}}' AND acctstoptime IS NULL AND acctupdatetime > NOW() - INTERVAL '{stale_secs} seconds'"
    simul_verify_query = ""
    $INCLUDE /etc/freeradius/3.0/mods-config/sql/main/postgresql/queries.conf
  }}
  sqlcounter timecounter {{
    sql_module_instance = sql
    dialect = postgresql
    counter_name = Max-All-Session-Time
    check_name = Max-All-Session
    reply_name = Session-Timeout
    key = User-Name
    reset = never
    query = "SELECT COALESCE(SUM(acctsessiontime), 0) FROM radacct WHERE username = '%{{${{key}}}}'"
  }}
  sqlcounter datacounter {{
    sql_module_instance = sql
    dialect = postgresql
    counter_name = Total-Octets-Used
    check_name = Max-Total-Octets
    reply_name = ChilliSpot-Max-Total-Octets
    key = User-Name
    reset = never
    query = "SELECT COALESCE(SUM(acctinputoctets + acctoutputoctets), 0) FROM radacct WHERE username = '%{{${{key}}}}'"
  }}
  sqlcounter expire_on_login {{
    sql_module_instance = sql
    dialect = postgresql
    counter_name = Expire-After-Initial-Login
    check_name = Expire-After
    reply_name = Session-Timeout
    key = User-Name
    reset = never
    query = "SELECT COALESCE(EXTRACT(EPOCH FROM (NOW() - MIN(acctstarttime)))::bigint, 0) FROM radacct WHERE username = '%{{${{key}}}}'"
  }}
  expiration {{
  }}
"#
    )
}

/// A record's attribute as text.
pub fn attr<'a>(r: &'a AcctRecord, name: &str) -> Option<&'a str> {
    r.get(name).map(String::as_str)
}

impl FreeRadius {
    /// Waits (up to 30 s) for a record of `status` (Start, Stop, ...), of
    /// `user` when given.
    pub fn wait_status(&self, status: &str, user: Option<&str>) -> AcctRecord {
        let what = format!("{status} of {}", user.unwrap_or("anyone"));
        self.wait_record(&what, Duration::from_secs(30), |r| {
            attr(r, "Acct-Status-Type") == Some(status)
                && user.is_none_or(|u| attr(r, "User-Name") == Some(u))
        })
    }
}

/// `radclient` from `ns`: sends `attrs` (`A = v, B = w`) as a `kind` request
/// (auth, acct, coa, disconnect) to `server` with `secret`, one try of two
/// seconds. Returns whether a valid answer came, and radclient's output.
pub fn radclient(
    ns: &str,
    server: SocketAddr,
    kind: &str,
    secret: &str,
    attrs: &str,
) -> (bool, String) {
    use std::io::Write;
    let mut child = ns_command(ns, "/usr/bin/radclient")
        .args(["-x", "-r", "1", "-t", "2"])
        .arg(server.to_string())
        .arg(kind)
        .arg(secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("radclient: {e} (apt-get install freeradius-utils)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(attrs.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // radclient fails on a NAK too: an answer is one it received (and checked).
    (
        text.contains("\nReceived ") || text.starts_with("Received "),
        text,
    )
}

/// An octet count of a record: Acct-X-Octets plus Acct-X-Gigawords x 2^32.
pub fn octets(r: &AcctRecord, dir: &str) -> u64 {
    let n = |k: String| r.get(&k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(format!("Acct-{dir}-Octets")) + (n(format!("Acct-{dir}-Gigawords")) << 32)
}

impl Drop for FreeRadius {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Links gateway namespace `gw` to the AAA namespace `aaa` with a veth pair:
/// 10.250.`n`.1 on the gateway's side (its NAS-IP-Address), 10.250.`n`.2
/// on the server's (/30s). Returns both.
pub fn link_to_aaa(gw: &str, aaa: &str, n: u8) -> (std::net::Ipv4Addr, std::net::Ipv4Addr) {
    use crate::netns::{ip, ip_n};
    let (gw_if, aaa_if) = ("aaa0".to_string(), format!("gw{n}"));
    ip(&[
        "link", "add", &gw_if, "netns", gw, "type", "veth", "peer", "name", &aaa_if, "netns", aaa,
    ]);
    let (g, a) = (
        std::net::Ipv4Addr::new(10, 250, n, 1),
        std::net::Ipv4Addr::new(10, 250, n, 2),
    );
    ip_n(gw, &["addr", "add", &format!("{g}/30"), "dev", &gw_if]);
    ip_n(aaa, &["addr", "add", &format!("{a}/30"), "dev", &aaa_if]);
    ip_n(gw, &["link", "set", &gw_if, "up"]);
    ip_n(aaa, &["link", "set", &aaa_if, "up"]);
    (g, a)
}

/// An agent whose codes are checked at the AAA server `server`
/// (`[vouchers] backend = "radius"`), accounting there too, as gateway
/// `nas` at `nas_ip`, with `secret`.
pub fn fleet_gateway(
    hs: &crate::Hotspot,
    server: std::net::Ipv4Addr,
    nas: &str,
    nas_ip: std::net::Ipv4Addr,
    secret: &str,
) -> crate::AgentBuilder {
    std::fs::create_dir_all(&hs.state_dir).unwrap();
    let file = hs.state_dir.join("radius.secret");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    crate::AgentBuilder::new(hs)
        .arg("--vouchers-backend")
        .arg("radius")
        .arg("--radius-server")
        .arg(format!("{server}:1812"))
        .arg("--radius-acct-server")
        .arg(format!("{server}:1813"))
        .arg("--radius-secret-file")
        .arg(file.display().to_string())
        .arg("--radius-nas-id")
        .arg(nas)
        .arg("--radius-nas-ip")
        .arg(nas_ip.to_string())
        .arg("--radius-timeout-ms")
        .arg("300")
        .arg("--radius-retries")
        .arg("1")
}
