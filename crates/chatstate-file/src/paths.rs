//! Where each record lives: ids become file names that cannot escape the store's
//! folder or collide.
//!
//! A name component is `<readable>-<hash>`: up to 24 characters of the id kept from
//! `a-z 0-9 _` (lowercased; `_` when none are left), for an operator to recognise,
//! then 32 hex digits of the SHA-256 of the exact id, which tell ids apart. So `../`
//! becomes `_-3c9…`, `Ana` and `ana` get different names on case-insensitive file
//! systems, `con` or `nul` can never be a whole name, and a 512-byte id still makes
//! a short name. The full id is stored inside the record and compared on every read,
//! so even a hash collision could not return another tenant's data.
//!
//! ```text
//! <dir>/FORMAT                                        "chatstate-file 2"
//! <dir>/sessions/<tenant>/<channel>~<user>.s          record + message window
//! <dir>/session-locks/<tenant>/<channel>~<user>~<name>.l   lock holder and fence
//! <dir>/focus/<scope>/<name>.f                        focus document
//! <dir>/cache/<namespace>/<key>.k                     cache entry (its aliases in the metadata)
//! <dir>/cache-aliases/<namespace>/<key>.a             an alias: the entry it names
//! <dir>/counters/counters.c                           every counter + applied batch ids
//! <dir>/replies/<run>.r                               a streamed reply: JSON lines, append-only
//! <dir>/locks/00.lock … ff.lock                       lock stripes (flock) for writers
//! ```

use std::path::{Path, PathBuf};

use chatstate_core::{CacheKey, FocusKey, RunId, SessionKey};
use sha2::{Digest, Sha256};

/// The file name component for `id`.
pub(crate) fn component(id: &str) -> String {
    let readable: String = id
        .chars()
        .filter_map(|c| {
            let c = c.to_ascii_lowercase();
            (c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_').then_some(c)
        })
        .take(24)
        .collect();
    let digest = Sha256::digest(id.as_bytes());
    let mut name = if readable.is_empty() {
        "_".to_string()
    } else {
        readable
    };
    name.push('-');
    for b in &digest[..16] {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// Paths of every record under a store's folder.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: PathBuf) -> Self {
        Layout { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tenant_dir(&self, tenant: &str) -> PathBuf {
        self.root.join("sessions").join(component(tenant))
    }

    pub fn session(&self, key: &SessionKey) -> PathBuf {
        self.tenant_dir(key.tenant()).join(format!(
            "{}~{}.s",
            component(key.channel()),
            component(key.user())
        ))
    }

    pub fn session_lock(&self, key: &SessionKey, name: &str) -> PathBuf {
        self.root
            .join("session-locks")
            .join(component(key.tenant()))
            .join(format!(
                "{}~{}~{}.l",
                component(key.channel()),
                component(key.user()),
                component(name)
            ))
    }

    pub fn focus_dir(&self, scope: &str) -> PathBuf {
        self.root.join("focus").join(component(scope))
    }

    pub fn focus(&self, key: &FocusKey) -> PathBuf {
        self.focus_dir(key.scope())
            .join(format!("{}.f", component(key.name())))
    }

    pub fn cache_dir(&self, namespace: &str) -> PathBuf {
        self.root.join("cache").join(component(namespace))
    }

    pub fn cache(&self, key: &CacheKey) -> PathBuf {
        self.cache_dir(key.namespace())
            .join(format!("{}.k", component(key.key())))
    }

    pub fn cache_alias_dir(&self, namespace: &str) -> PathBuf {
        self.root.join("cache-aliases").join(component(namespace))
    }

    pub fn cache_alias(&self, alias: &CacheKey) -> PathBuf {
        self.cache_alias_dir(alias.namespace())
            .join(format!("{}.a", component(alias.key())))
    }

    pub fn counters(&self) -> PathBuf {
        self.root.join("counters").join("counters.c")
    }

    pub fn replies_dir(&self) -> PathBuf {
        self.root.join("replies")
    }

    pub fn reply(&self, run: &RunId) -> PathBuf {
        self.replies_dir()
            .join(format!("{}.r", component(run.as_str())))
    }

    pub fn lock_stripe(&self, stripe: u8) -> PathBuf {
        self.root.join("locks").join(format!("{stripe:02x}.lock"))
    }

    /// The lock stripe of a record path under this root: one of 256, from a hash of
    /// the path *relative to the root*. With the root canonicalized at open, every
    /// process gets the same stripe for a record however it spelled the folder
    /// (`./data`, `data/.`, an absolute path, a symlink) or wherever the folder is
    /// mounted.
    pub fn stripe_of(&self, path: &Path) -> u8 {
        let relative = path.strip_prefix(&self.root).unwrap_or(path);
        Sha256::digest(relative.as_os_str().as_encoded_bytes())[0]
    }

    /// The folders the sweeper walks, each two levels deep (`kind/<group>/<file>`).
    pub fn swept_dirs(&self) -> [PathBuf; 5] {
        [
            self.root.join("sessions"),
            self.root.join("session-locks"),
            self.root.join("focus"),
            self.root.join("cache"),
            self.root.join("cache-aliases"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn hostile_ids_make_plain_distinct_names() {
        let ids = [
            "..",
            "../x",
            "/etc/passwd",
            "a/b",
            "\0",
            "a\0b",
            "con",
            "CON",
            "nul.txt",
            "Ana",
            "ana",
            "ANA",
            "🙂",
            "",
            " ",
            "C:\\x",
            "%2e%2e",
        ];
        let mut seen = HashSet::new();
        for id in ids {
            let c = component(id);
            assert!(seen.insert(c.clone()), "{id:?} collides");
            assert!(c.len() <= 24 + 1 + 32, "{id:?} -> {c}");
            assert!(
                c.chars().all(|ch| ch.is_ascii_lowercase()
                    || ch.is_ascii_digit()
                    || ch == '_'
                    || ch == '-'),
                "{id:?} -> {c}"
            );
            assert!(!c.starts_with('.') && !c.starts_with('-'));
        }
        let long = component(&"x".repeat(512));
        assert_eq!(long.len(), 24 + 1 + 32);
    }

    #[test]
    fn a_records_stripe_does_not_depend_on_where_the_root_is() {
        let (a, b) = (
            Layout::new(PathBuf::from("/srv/chatstate-data")),
            Layout::new(PathBuf::from("/mnt/other/place")),
        );
        let stripes: HashSet<u8> = (0..64)
            .map(|i| {
                let k = SessionKey::new("t", "c", format!("u{i}")).unwrap();
                let stripe = a.stripe_of(&a.session(&k));
                assert_eq!(stripe, b.stripe_of(&b.session(&k)), "user u{i}");
                stripe
            })
            .collect();
        assert!(stripes.len() > 1, "records spread over stripes");
    }

    #[test]
    fn every_path_stays_under_the_root() {
        let layout = Layout::new(PathBuf::from("/store"));
        let k = SessionKey::new("../../..", "/", "..").unwrap();
        for p in [layout.session(&k), layout.session_lock(&k, "../x")] {
            assert!(p.starts_with("/store"), "{p:?}");
            assert!(
                p.components().all(|c| matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::RootDir
                )),
                "{p:?}"
            );
        }
    }
}
