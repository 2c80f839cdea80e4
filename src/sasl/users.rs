//! The users clients log in to klink as (`[proxy] sasl.users_file`): salted
//! SCRAM credentials (RFC 5802 section 3), never passwords, one TOML
//! record per user and mechanism:
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! mechanism = "SCRAM-SHA-512"
//! salt = "…"           # base64
//! iterations = 4096
//! stored_key = "…"     # base64
//! server_key = "…"     # base64
//! ```
//!
//! `klink user add` writes it. A running klink rereads it when it changes
//! (checked at each login), so adding or removing a user needs no restart;
//! a file that turns unreadable keeps the users last read, with a warning.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::scram::{ScramHash, StoredCredential};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    name: String,
    mechanism: ScramHash,
    salt: String,
    iterations: u32,
    stored_key: String,
    server_key: String,
}

impl Record {
    fn credential(&self) -> StoredCredential {
        StoredCredential {
            hash: self.mechanism,
            salt: self.salt.clone(),
            iterations: self.iterations,
            stored_key: self.stored_key.clone(),
            server_key: self.server_key.clone(),
        }
    }

    fn new(name: &str, credential: StoredCredential) -> Record {
        Record {
            name: name.to_string(),
            mechanism: credential.hash,
            salt: credential.salt,
            iterations: credential.iterations,
            stored_key: credential.stored_key,
            server_key: credential.server_key,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, rename = "user")]
    users: Vec<Record>,
}

const HEADER: &str = "# klink's client users: salted SCRAM credentials, no passwords.\n\
# Written by `klink user add`; keep it private (0600).\n\n";

fn read_file(path: &Path) -> Result<File, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for record in &file.users {
        check_name(&record.name).map_err(|e| format!("{}: {e}", path.display()))?;
        // A credential that cannot log anyone in is an operator's mistake
        // worth stopping on, not a user silently refused later.
        if !record.credential().is_usable() {
            return Err(format!(
                "{}: the {} credential of user {:?} is malformed (salt, keys or iterations)",
                path.display(),
                record.mechanism.name(),
                record.name
            ));
        }
    }
    Ok(file)
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(format!(
            "user name {name:?} is empty or holds control characters"
        ));
    }
    Ok(())
}

/// Credentials by user name.
type ByName = HashMap<String, Vec<StoredCredential>>;

fn index(file: &File) -> ByName {
    let mut by_name = ByName::new();
    for record in &file.users {
        by_name
            .entry(record.name.clone())
            .or_default()
            .push(record.credential());
    }
    by_name
}

/// What identifies one version of the file without reading it.
type Stamp = (SystemTime, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

struct Loaded {
    stamp: Option<Stamp>,
    by_name: Arc<ByName>,
}

/// The users file as a running klink holds it.
pub struct Users {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users").field("path", &self.path).finish()
    }
}

impl Users {
    /// Reads the file now: a klink that cannot read it does not start.
    pub fn open(path: &Path) -> Result<Users, String> {
        let stamp = stamp(path);
        let file = read_file(path)?;
        Ok(Users {
            path: path.to_path_buf(),
            loaded: Mutex::new(Loaded {
                stamp,
                by_name: Arc::new(index(&file)),
            }),
        })
    }

    /// The users as the file now says, rereading it if it changed.
    fn current(&self) -> Arc<ByName> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(&self.path);
        if now != loaded.stamp {
            loaded.stamp = now;
            match read_file(&self.path) {
                Ok(file) => {
                    let users = index(&file);
                    tracing::info!(file = %self.path.display(), users = users.len(), "client users file reread");
                    loaded.by_name = Arc::new(users);
                }
                // Logged once per change of the file, as the stamp moved.
                Err(e) => tracing::warn!(
                    error = %e,
                    "client users file unreadable: logins keep using the users last read"
                ),
            }
        }
        loaded.by_name.clone()
    }

    pub fn count(&self) -> usize {
        self.current().len()
    }

    /// The user's credential for a SCRAM mechanism.
    pub fn credential(&self, name: &str, hash: ScramHash) -> Option<StoredCredential> {
        self.current()
            .get(name)?
            .iter()
            .find(|c| c.hash == hash)
            .cloned()
    }

    /// Whether `password` is the user's (a PLAIN login): checked against
    /// the user's SCRAM-SHA-256 credential if there is one (cheaper), else
    /// the other. Runs PBKDF2: call it off the async threads.
    pub fn check_password(&self, name: &str, password: &str) -> bool {
        let users = self.current();
        let Some(credentials) = users.get(name) else {
            return false;
        };
        let best = credentials
            .iter()
            .find(|c| c.hash == ScramHash::Sha256)
            .or_else(|| credentials.first());
        best.is_some_and(|c| c.verifies_password(password))
    }
}

/// Adds `name` (or replaces its credentials) with one credential per
/// mechanism, creating the file (0600) if needed. The file is replaced
/// whole, through a temporary file and a rename, so a running klink never
/// reads half of it.
pub fn add_user(
    path: &Path,
    name: &str,
    password: &str,
    mechanisms: &[ScramHash],
    iterations: u32,
) -> Result<(), String> {
    check_name(name)?;
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    let mut file = match path.exists() {
        true => read_file(path)?,
        false => File::default(),
    };
    file.users.retain(|r| r.name != name);
    for &hash in mechanisms {
        let credential =
            StoredCredential::generate(hash, password, iterations).map_err(|e| e.to_string())?;
        file.users.push(Record::new(name, credential));
    }
    write_file(path, &file)
}

/// Removes every credential of `name`; false if it had none.
pub fn remove_user(path: &Path, name: &str) -> Result<bool, String> {
    let mut file = read_file(path)?;
    let before = file.users.len();
    file.users.retain(|r| r.name != name);
    if file.users.len() == before {
        return Ok(false);
    }
    write_file(path, &file)?;
    Ok(true)
}

/// Each user and the mechanisms it can log in with, by name.
pub fn list_users(path: &Path) -> Result<Vec<(String, Vec<ScramHash>)>, String> {
    let file = read_file(path)?;
    let mut users: Vec<(String, Vec<ScramHash>)> = Vec::new();
    for record in file.users {
        match users.iter_mut().find(|(name, _)| *name == record.name) {
            Some((_, hashes)) => hashes.push(record.mechanism),
            None => users.push((record.name, vec![record.mechanism])),
        }
    }
    users.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(users)
}

fn write_file(path: &Path, file: &File) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let text = toml::to_string(file).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let temp = path.with_file_name(name);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(fail)?;
    out.write_all(HEADER.as_bytes()).map_err(fail)?;
    out.write_all(text.as_bytes()).map_err(fail)?;
    out.sync_all().map_err(fail)?;
    drop(out);
    std::fs::rename(&temp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: [ScramHash; 2] = [ScramHash::Sha256, ScramHash::Sha512];

    #[test]
    fn added_users_log_in_and_the_file_holds_no_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        add_user(&path, "alice", "alice-secret-pw", &BOTH, 4096).unwrap();
        add_user(&path, "bob", "bob-pw", &[ScramHash::Sha512], 4096).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("secret"), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let users = Users::open(&path).unwrap();
        assert_eq!(users.count(), 2);
        assert!(users.check_password("alice", "alice-secret-pw"));
        assert!(!users.check_password("alice", "bob-pw"));
        assert!(users.check_password("bob", "bob-pw"));
        assert!(!users.check_password("carol", "bob-pw"));
        assert!(users.credential("alice", ScramHash::Sha512).is_some());
        assert!(users.credential("bob", ScramHash::Sha256).is_none());
        assert_eq!(
            list_users(&path).unwrap(),
            vec![
                ("alice".to_string(), BOTH.to_vec()),
                ("bob".to_string(), vec![ScramHash::Sha512])
            ]
        );
    }

    #[test]
    fn a_changed_file_is_reread_and_a_broken_one_keeps_the_last_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        add_user(&path, "alice", "one", &BOTH, 4096).unwrap();
        let users = Users::open(&path).unwrap();
        add_user(&path, "alice", "two", &BOTH, 4096).unwrap();
        add_user(&path, "bob", "three", &BOTH, 4096).unwrap();
        assert!(users.check_password("alice", "two"));
        assert!(!users.check_password("alice", "one"));
        assert_eq!(users.count(), 2);

        assert!(remove_user(&path, "bob").unwrap());
        assert!(!remove_user(&path, "bob").unwrap());
        assert_eq!(users.count(), 1);

        std::fs::write(&path, "[[user]]\nname = 3\n").unwrap();
        assert_eq!(users.count(), 1);
        assert!(users.check_password("alice", "two"));
    }

    #[test]
    fn malformed_files_are_refused_at_open_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        assert!(Users::open(&path).unwrap_err().contains("users.toml"));
        std::fs::write(
            &path,
            "[[user]]\nname = \"a\"\nmechanism = \"SCRAM-SHA-256\"\nsalt = \"c2FsdA==\"\n\
             iterations = 4096\nstored_key = \"c2hvcnQ=\"\nserver_key = \"c2hvcnQ=\"\n",
        )
        .unwrap();
        let err = Users::open(&path).unwrap_err();
        assert!(err.contains("malformed"), "{err}");
        std::fs::write(&path, "[[user]]\nname = \"a\"\npassword = \"x\"\n").unwrap();
        assert!(Users::open(&path).is_err());
        assert!(add_user(&path, "", "pw", &BOTH, 4096).is_err());
        assert!(add_user(&dir.path().join("new.toml"), "a", "", &BOTH, 4096).is_err());
        assert!(add_user(&dir.path().join("new.toml"), "a", "pw", &BOTH, 10).is_err());
    }

    #[test]
    fn a_file_made_here_logs_in_through_the_scram_server() {
        use crate::sasl::ClientExchange;
        use crate::sasl::Mechanism;
        use crate::sasl::scram::{ScramServer, ServerStep};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        add_user(&path, "svc,1=x", "pw", &BOTH, 4096).unwrap();
        let users = Users::open(&path).unwrap();
        let mut client = ClientExchange::start(Mechanism::ScramSha512, "svc,1=x", "pw");
        let mut server = ScramServer::new(ScramHash::Sha512);
        let ServerStep::Continue(first) = server
            .step(&client.first(), |n| users.credential(n, ScramHash::Sha512))
            .unwrap()
        else {
            panic!("expected server-first")
        };
        let last = client.step(&first).unwrap().unwrap();
        let ServerStep::Done {
            username,
            server_final,
        } = server.step(&last, |_| None).unwrap()
        else {
            panic!("expected success")
        };
        assert_eq!(username, "svc,1=x");
        assert_eq!(client.step(&server_final), Ok(None));
    }
}
