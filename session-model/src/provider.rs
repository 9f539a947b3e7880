//! The name of a session's provider, held once: every session of a provider
//! shares one copy of its name.
//!
//! A gateway holds tens of thousands of sessions of a handful of providers
//! (`local` for most). A `String` per session is a heap block each (32 bytes
//! for `local`, 2 MiB at 65,536 sessions) and a clone of a record allocates.
//! A [`Provider`] is a shared, immutable name: names read from the store or an
//! API are looked up in a small table of the names seen, so the sessions of
//! one provider point at one block, and a clone is a count.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Names kept in the shared table at most: past this (a store or API that makes
/// up names), each further name is its own block, as a `String` would be.
const SHARED_NAMES: usize = 64;

static NAMES: Mutex<Vec<Arc<str>>> = Mutex::new(Vec::new());

/// A session provider's name (seed `SessionData.provider`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Provider(Arc<str>);

impl Provider {
    /// The provider named `name`, sharing the block of an earlier one of the
    /// same name.
    pub fn new(name: &str) -> Self {
        // A poisoned table is still a valid list of names.
        Provider(shared(
            &mut NAMES.lock().unwrap_or_else(|p| p.into_inner()),
            name,
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `name`'s block in `names`, added there while it has room.
fn shared(names: &mut Vec<Arc<str>>, name: &str) -> Arc<str> {
    if let Some(n) = names.iter().find(|n| &***n == name) {
        return n.clone();
    }
    let n: Arc<str> = Arc::from(name);
    if names.len() < SHARED_NAMES {
        names.push(n.clone());
    }
    n
}

impl Deref for Provider {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Provider {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Provider {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Provider {
    fn from(name: &str) -> Self {
        Provider::new(name)
    }
}

impl From<String> for Provider {
    fn from(name: String) -> Self {
        Provider::new(&name)
    }
}

impl From<&String> for Provider {
    fn from(name: &String) -> Self {
        Provider::new(name)
    }
}

impl From<Provider> for String {
    fn from(p: Provider) -> Self {
        p.0.to_string()
    }
}

impl PartialEq<str> for Provider {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Provider {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Provider {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Provider {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Provider {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Provider::new(&String::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_of_one_name_share_one_block_and_compare_as_their_names() {
        let name = format!("shared-{}", std::process::id());
        let (a, b) = (Provider::new(&name), Provider::from(name.clone()));
        assert!(Arc::ptr_eq(&a.0, &b.0), "one block for one name");
        assert_eq!(a, b);
        assert_eq!(a, name.as_str());
        assert_eq!(a.to_string(), name);
        assert_ne!(a, Provider::new("another"));
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, format!("\"{name}\""));
        let back: Provider = serde_json::from_str(&json).unwrap();
        assert!(
            Arc::ptr_eq(&a.0, &back.0),
            "a name read back shares the block"
        );
    }

    #[test]
    fn names_past_the_table_are_still_kept_each_in_its_own_block() {
        let mut names = Vec::new();
        let made: Vec<(String, Arc<str>)> = (0..SHARED_NAMES + 8)
            .map(|i| format!("made-up-{i}"))
            .map(|n| {
                let block = shared(&mut names, &n);
                (n, block)
            })
            .collect();
        assert_eq!(names.len(), SHARED_NAMES);
        for (i, (n, block)) in made.iter().enumerate() {
            assert_eq!(&**block, n.as_str());
            let again = shared(&mut names, n);
            assert_eq!(Arc::ptr_eq(block, &again), i < SHARED_NAMES, "{n}");
        }
    }
}
