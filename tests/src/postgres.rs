//! A real PostgreSQL server for the tests: Debian's `postgresql`, a cluster of
//! its own in a temporary directory, run as the `postgres` user and reached
//! only through a Unix socket there (no TCP port), holding FreeRADIUS's schema
//! (`schema.sql` of freeradius-postgresql) in database `radius`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's server binaries are (the newest version installed).
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.retain(|p| p.join("postgres").exists());
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!("PostgreSQL is missing: `cargo xtask test` installs it (apt-get install postgresql)")
    })
}

/// FreeRADIUS's schema for PostgreSQL.
pub const RADIUS_SCHEMA: &str = "/etc/freeradius/3.0/mods-config/sql/main/postgresql/schema.sql";

/// A PostgreSQL server, stopped and removed on drop.
pub struct Postgres {
    pub dir: PathBuf,
    child: Option<Child>,
}

/// The `postgres` user's uid and gid.
fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres")).then(|| (f[2].parse().ok(), f[3].parse().ok()))
        })
        .and_then(|(u, g)| Some((u?, g?)))
        .expect("no postgres user: apt-get install postgresql")
}

/// `program` run as the `postgres` user (directly: a signal to the child
/// reaches the server itself), from `/`.
fn as_postgres(program: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let (uid, gid) = postgres_ids();
    let mut c = Command::new(program);
    c.uid(uid).gid(gid).current_dir("/");
    c
}

impl Postgres {
    /// A fresh cluster with database `radius` and FreeRADIUS's schema in it.
    pub fn start() -> Postgres {
        assert!(
            Path::new(RADIUS_SCHEMA).exists(),
            "{RADIUS_SCHEMA} is missing: apt-get install freeradius-postgresql"
        );
        let dir = std::env::temp_dir().join(format!("sa-pg-{}", crate::unique_id()));
        std::fs::create_dir_all(&dir).unwrap();
        crate::netns::run_ok(Command::new("chown").args(["postgres:postgres"]).arg(&dir));
        // Its socket directory is searched by FreeRADIUS and the CLI (root).
        crate::netns::run_ok(Command::new("chmod").args(["0755"]).arg(&dir));
        let out = as_postgres(&bin_dir().join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(dir.join("data"))
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres { dir, child: None };
        pg.run();
        pg.psql("postgres", "CREATE DATABASE radius");
        // Read here (the file is root's), fed to psql.
        let schema = std::fs::read(RADIUS_SCHEMA).unwrap();
        let mut child = as_postgres(Path::new("/usr/bin/psql"))
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-h"])
            .arg(&pg.dir)
            .args(["-d", "radius"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&schema).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "loading {RADIUS_SCHEMA}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn run(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        crate::netns::run_ok(
            Command::new("chown")
                .args(["postgres:postgres"])
                .arg(self.dir.join("server.log")),
        );
        let child = as_postgres(&bin_dir().join("postgres"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "listen_addresses=", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("postgres exited ({status}): {}", self.log());
            }
            if self.try_psql("postgres", "SELECT 1").is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The connection string for libpq-style clients (the socket directory).
    pub fn conninfo(&self) -> String {
        format!("host={} user=postgres dbname=radius", self.dir.display())
    }

    fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = as_postgres(Path::new("/usr/bin/psql"))
            .args(["-v", "ON_ERROR_STOP=1", "-tA", "-F", "|", "-h"])
            .arg(&self.dir)
            .args(["-d", db, "-c", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `sql` in database `db`; its rows, `|` between fields.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql {sql:?}: {e}"))
    }

    /// `sql` in the `radius` database, as rows of fields.
    pub fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        self.psql("radius", sql)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('|').map(str::to_string).collect())
            .collect()
    }

    /// `session-agent vouchers create --batch fleet ARGS --sql ... --json`
    /// into this database: the codes made.
    pub fn create_codes(&self, args: &[&str]) -> Vec<String> {
        let out = Command::new(crate::agent_bin())
            .args(["vouchers", "create", "--json", "--batch", "fleet"])
            .args(args)
            .args(["--sql", &self.conninfo()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "vouchers create --sql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let made: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        made.iter()
            .map(|m| m["code"].as_str().unwrap().to_string())
            .collect()
    }

    /// Stops the server (fast shutdown: what was committed stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
    }

    /// Starts it again after [`Postgres::stop`].
    pub fn resume(&mut self) {
        self.stop();
        self.run();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
