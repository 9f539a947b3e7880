//! Logins to the operator's page: the session cookie, its CSRF token, and
//! the limit on wrong passwords per address.
//!
//! A login is a random 256-bit token in a cookie (`Secure; HttpOnly;
//! SameSite=Strict`) that names a session kept in memory; a restart logs
//! everyone out. Each session has its own CSRF token, which every form
//! carries and every change must send back.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::accounts::Role;

/// The session cookie's name.
pub const COOKIE: &str = "sa_admin";
/// How long a login lasts without use.
pub const IDLE: Duration = Duration::from_secs(8 * 3600);
/// Wrong passwords an address may send per [`WINDOW`].
pub const MAX_WRONG: usize = 5;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Logins kept at most (the oldest goes).
const MAX_SESSIONS: usize = 256;
/// Addresses whose wrong passwords are remembered at most.
const MAX_ADDRESSES: usize = 10_000;

/// Who is logged in.
#[derive(Debug, Clone)]
pub struct Login {
    pub name: String,
    pub role: Role,
    pub csrf: String,
    /// The account's hash when it logged in: a changed password or a
    /// removed account ends the login.
    pub hash: String,
    used: Instant,
}

/// The logins and the wrong passwords.
#[derive(Debug, Default)]
pub struct Logins {
    sessions: Mutex<HashMap<String, Login>>,
    wrong: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

/// 32 random bytes, hex.
fn token() -> String {
    let mut b = [0u8; 32];
    // The OS's random source failing is not survivable for logins.
    getrandom::fill(&mut b).expect("the OS's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Logins {
    /// A new login of `name`: its cookie token.
    pub fn open(&self, name: &str, role: Role, hash: &str) -> String {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        s.retain(|_, l| now.duration_since(l.used) < IDLE);
        if s.len() >= MAX_SESSIONS {
            if let Some(oldest) = s.iter().min_by_key(|(_, l)| l.used).map(|(k, _)| k.clone()) {
                s.remove(&oldest);
            }
        }
        let t = token();
        s.insert(
            t.clone(),
            Login {
                name: name.into(),
                role,
                csrf: token(),
                hash: hash.into(),
                used: now,
            },
        );
        t
    }

    /// The login of a cookie token, still fresh (its use counts).
    pub fn get(&self, token: &str) -> Option<Login> {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let l = s.get_mut(token)?;
        if now.duration_since(l.used) >= IDLE {
            s.remove(token);
            return None;
        }
        l.used = now;
        Some(l.clone())
    }

    pub fn close(&self, token: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }

    /// `Err(retry after)` while `from` used up its wrong passwords.
    pub fn admit(&self, from: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut w = self.wrong.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = w.get_mut(&from) else {
            return Ok(());
        };
        while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            q.pop_front();
        }
        if q.len() >= MAX_WRONG {
            let first = *q.front().expect("not empty");
            return Err(WINDOW.saturating_sub(now.duration_since(first)));
        }
        Ok(())
    }

    /// `from` sent a wrong password.
    pub fn wrong(&self, from: IpAddr, now: Instant) {
        let mut w = self.wrong.lock().unwrap_or_else(|e| e.into_inner());
        if w.len() >= MAX_ADDRESSES && !w.contains_key(&from) {
            w.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
            if w.len() >= MAX_ADDRESSES {
                // Every remembered address is still locked: the newcomer is
                // held to the limit from its first try on.
                return;
            }
        }
        w.entry(from).or_default().push_back(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_wrong_passwords_a_minute_lock_the_address_and_only_that_one() {
        let l = Logins::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for i in 0..MAX_WRONG {
            assert!(l.admit(a, t0).is_ok(), "try {i}");
            l.wrong(a, t0);
        }
        let wait = l.admit(a, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(l.admit(b, t0).is_ok());
        assert!(
            l.admit(a, t0 + WINDOW).is_ok(),
            "a minute later it may try again"
        );
    }

    #[test]
    fn a_login_has_its_own_tokens_and_ends_at_logout() {
        let l = Logins::default();
        let t1 = l.open("owner", Role::Owner, "h1");
        let t2 = l.open("ana", Role::Staff, "h2");
        assert_ne!(t1, t2);
        assert_eq!(t1.len(), 64);
        let (a, b) = (l.get(&t1).unwrap(), l.get(&t2).unwrap());
        assert_ne!(a.csrf, b.csrf);
        assert_eq!(b.role, Role::Staff);
        l.close(&t1);
        assert!(l.get(&t1).is_none());
        assert!(l.get(&t2).is_some());
    }
}
