//! Who may log in to the operator's page: the owner and staff accounts, one
//! line each in a file (`ROLE NAME HASH`, argon2id hashes), written by
//! `session-agent admin passwd` and read again at every login, so a changed
//! password counts at once.

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use argon2::{
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};

/// The owner's login name.
pub const OWNER: &str = "owner";
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 10;
/// Longest account name.
pub const MAX_NAME: usize = 32;

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Sells: sees who is online, makes and prints vouchers from the plans.
    Staff,
    /// Everything: prices, clients, sales, settings.
    Owner,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Staff => "staff",
            Role::Owner => "owner",
        }
    }
}

/// One account as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub role: Role,
    pub name: String,
    /// PHC string (`$argon2id$v=19$...`).
    pub hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("{what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {why} (each line is: owner|staff NAME ARGON2-HASH; set passwords with `session-agent admin passwd`)", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("a password needs at least {MIN_PASSWORD} characters")]
    ShortPassword,
    #[error("a staff name is 1 to {MAX_NAME} letters, digits, dots, dashes or underscores, and not \"owner\"")]
    BadName,
    #[error("no staff account {0:?}")]
    NoSuchStaff(String),
    #[error("hashing the password: {0}")]
    Hash(String),
}

/// The accounts file.
#[derive(Debug, Clone)]
pub struct Accounts {
    path: PathBuf,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NAME
        && n != OWNER
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Accounts {
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every account; none when the file does not exist.
    pub fn read(&self) -> Result<Vec<Account>, AccountsError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(AccountsError::File {
                    what: "reading the accounts",
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| AccountsError::Line {
                path: self.path.clone(),
                line: i + 1,
                why: why.into(),
            };
            let mut f = line.split_whitespace();
            let (Some(role), Some(name), Some(hash), None) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                return Err(bad("not three fields"));
            };
            let role = match role {
                "owner" => Role::Owner,
                "staff" => Role::Staff,
                _ => return Err(bad("the role is owner or staff")),
            };
            if (role == Role::Owner) != (name == OWNER)
                || (role == Role::Staff && !valid_name(name))
            {
                return Err(bad(
                    "the owner's name is \"owner\"; staff names are letters, digits, . _ -",
                ));
            }
            PasswordHash::new(hash).map_err(|e| bad(&format!("not an argon2 hash: {e}")))?;
            out.push(Account {
                role,
                name: name.into(),
                hash: hash.into(),
            });
        }
        Ok(out)
    }

    /// The account `name` if `password` is its password. An unknown name
    /// costs the same hashing as a wrong password.
    pub fn check(&self, name: &str, password: &str) -> Result<Option<Account>, AccountsError> {
        let accounts = self.read()?;
        let found = accounts.into_iter().find(|a| a.name == name);
        let hash = match &found {
            Some(a) => a.hash.clone(),
            None => dummy_hash(),
        };
        let ok = PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        Ok(found.filter(|_| ok))
    }

    /// Sets the password of the owner (`staff` none) or of a staff account,
    /// which is made if new.
    pub fn set_password(&self, staff: Option<&str>, password: &str) -> Result<Role, AccountsError> {
        if password.chars().count() < MIN_PASSWORD {
            return Err(AccountsError::ShortPassword);
        }
        let (role, name) = match staff {
            None => (Role::Owner, OWNER),
            Some(n) if valid_name(n) => (Role::Staff, n),
            Some(_) => return Err(AccountsError::BadName),
        };
        let hash = hash(password)?;
        let mut accounts = self.read()?;
        accounts.retain(|a| a.name != name);
        accounts.push(Account {
            role,
            name: name.into(),
            hash,
        });
        self.write(&accounts)?;
        Ok(role)
    }

    /// Removes a staff account.
    pub fn remove_staff(&self, name: &str) -> Result<(), AccountsError> {
        let mut accounts = self.read()?;
        let before = accounts.len();
        accounts.retain(|a| !(a.role == Role::Staff && a.name == name));
        if accounts.len() == before {
            return Err(AccountsError::NoSuchStaff(name.into()));
        }
        self.write(&accounts)
    }

    /// Replaces the file in one rename, readable by its owner only.
    fn write(&self, accounts: &[Account]) -> Result<(), AccountsError> {
        let err = |what, source| AccountsError::File {
            what,
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err("creating the folder of", e))?;
        }
        let mut text = String::from("# The operator page's accounts: ROLE NAME ARGON2-HASH.\n# Change them with `session-agent admin passwd [--staff NAME]`.\n");
        let mut sorted = accounts.to_vec();
        sorted.sort_by(|a, b| (b.role, &a.name).cmp(&(a.role, &b.name)));
        for a in &sorted {
            text.push_str(&format!("{} {} {}\n", a.role.name(), a.name, a.hash));
        }
        let tmp = self.path.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err("writing", e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| err("writing", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| err("replacing", e))
    }
}

fn hash(password: &str) -> Result<String, AccountsError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| AccountsError::Hash(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AccountsError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountsError::Hash(e.to_string()))
}

/// A hash no password matches in practice, made once, for unknown names.
fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| hash("no account has this password").unwrap_or_default())
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_set_checks_and_a_wrong_one_or_an_unknown_name_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let a = Accounts::at(dir.path().join("admin/accounts"));
        assert_eq!(a.read().unwrap(), vec![]);
        a.set_password(None, "correct horse").unwrap();
        a.set_password(Some("ana"), "battery staple").unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(a.path()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            a.check("owner", "correct horse").unwrap().unwrap().role,
            Role::Owner
        );
        assert_eq!(
            a.check("ana", "battery staple").unwrap().unwrap().role,
            Role::Staff
        );
        assert!(a.check("owner", "battery staple").unwrap().is_none());
        assert!(a.check("bob", "battery staple").unwrap().is_none());
        // A new password replaces the old.
        a.set_password(Some("ana"), "another one!").unwrap();
        assert!(a.check("ana", "battery staple").unwrap().is_none());
        assert_eq!(a.read().unwrap().len(), 2);
        a.remove_staff("ana").unwrap();
        assert!(a.check("ana", "another one!").unwrap().is_none());
        assert!(matches!(
            a.remove_staff("ana"),
            Err(AccountsError::NoSuchStaff(_))
        ));
    }

    #[test]
    fn short_passwords_bad_names_and_bad_lines_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let a = Accounts::at(dir.path().join("accounts"));
        assert!(matches!(
            a.set_password(None, "short"),
            Err(AccountsError::ShortPassword)
        ));
        for n in ["owner", "", "a b", "<x>"] {
            assert!(
                matches!(
                    a.set_password(Some(n), "long enough!"),
                    Err(AccountsError::BadName)
                ),
                "{n:?}"
            );
        }
        std::fs::write(a.path(), "owner owner notahash\n").unwrap();
        let e = a.read().unwrap_err().to_string();
        assert!(
            e.contains(":1: not an argon2 hash") && e.contains("admin passwd"),
            "{e}"
        );
    }
}
