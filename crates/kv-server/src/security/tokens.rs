//! Bearer tokens: made at random, stored as SHA-256 hashes, compared in
//! constant time.
//!
//! A token table is a TOML file a node reads at start:
//!
//! ```toml
//! [[token]]
//! name = "ops"        # who holds it (logged, never the token)
//! role = "admin"      # read, write or admin
//! sha256 = "9f86d0..." # hex SHA-256 of the token (`kvctl token hash`)
//! ```

use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::{Role, SecurityError};

/// One line of the token table, as written in the file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds the token.
    pub name: String,
    /// What it may do: `read`, `write` or `admin`.
    pub role: String,
    /// The hex SHA-256 of the token.
    pub sha256: String,
}

impl TokenEntry {
    /// The entry as a TOML table, to append to a token file.
    pub fn to_toml(&self) -> String {
        format!(
            "[[token]]\nname = {:?}\nrole = {:?}\nsha256 = {:?}\n",
            self.name, self.role, self.sha256
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug)]
struct Known {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// The tokens a node accepts (their hashes), with their roles.
#[derive(Debug, Clone, Default)]
pub struct TokenTable(Arc<Vec<Known>>);

impl TokenTable {
    /// Parses a token file.
    ///
    /// # Errors
    /// [`SecurityError::Config`] for TOML that does not parse, an unknown
    /// role, a hash that is not 64 hex digits, or a name given twice.
    pub fn from_toml(text: &str) -> Result<Self, SecurityError> {
        let file: TokenFile =
            toml::from_str(text).map_err(|e| SecurityError::Config(format!("tokens: {e}")))?;
        let mut known: Vec<Known> = Vec::new();
        for entry in file.token {
            let hash = parse_hash(&entry.sha256).ok_or_else(|| {
                SecurityError::Config(format!(
                    "token {:?}: sha256 must be 64 hex digits",
                    entry.name
                ))
            })?;
            if known.iter().any(|k| k.name == entry.name) {
                return Err(SecurityError::Config(format!(
                    "token {:?} is listed twice",
                    entry.name
                )));
            }
            known.push(Known {
                role: entry.role.parse()?,
                name: entry.name,
                hash,
            });
        }
        Ok(TokenTable(Arc::new(known)))
    }

    /// Whether no token is accepted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The holder and role of `token`, if it is one of the table's. Every
    /// entry is compared, each in constant time, so the time taken says
    /// nothing about which entry (or how much of one) matched.
    pub fn check(&self, token: &str) -> Option<(&str, Role)> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for known in self.0.iter() {
            if bool::from(known.hash.ct_eq(&hash)) {
                found = Some((known.name.as_str(), known.role));
            }
        }
        found
    }
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The hex SHA-256 of a token: what a token file stores.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random token: 32 bytes from the operating system, hex, prefixed
/// `kv_` so that it is recognisable in a leaked log.
///
/// # Errors
/// [`SecurityError::Io`] if the operating system gives no randomness.
pub fn new_token() -> Result<String, SecurityError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| SecurityError::Io(format!("randomness: {e}")))?;
    Ok(format!(
        "kv_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// A table of `(name, role, token)` entries, as a token file holds them.
#[cfg(test)]
pub(crate) fn table_of(entries: &[(&str, &str, &str)]) -> Result<TokenTable, SecurityError> {
    let text: String = entries
        .iter()
        .map(|(name, role, token)| {
            TokenEntry {
                name: (*name).into(),
                role: (*role).into(),
                sha256: hash_token(token),
            }
            .to_toml()
        })
        .collect();
    TokenTable::from_toml(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::table_of as table;

    #[test]
    fn a_token_is_known_by_its_hash_with_its_role() {
        let t = table(&[("ops", "admin", "secret-1"), ("app", "write", "secret-2")]).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.check("secret-1"), Some(("ops", Role::Admin)));
        assert_eq!(t.check("secret-2"), Some(("app", Role::Write)));
        assert_eq!(t.check("secret-3"), None);
        assert_eq!(t.check(""), None);
        assert_eq!(t.check("secret-1 "), None);
        assert!(TokenTable::default().check("secret-1").is_none());
    }

    #[test]
    fn bad_token_files_are_refused_with_the_reason() {
        let e = table(&[("ops", "root", "x")]).unwrap_err();
        assert!(e.to_string().contains("root"), "{e}");
        let e = table(&[("ops", "read", "x"), ("ops", "write", "y")]).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e =
            TokenTable::from_toml("[[token]]\nname = \"a\"\nrole = \"read\"\nsha256 = \"abc\"\n")
                .unwrap_err();
        assert!(e.to_string().contains("64 hex"), "{e}");
        let e = TokenTable::from_toml(
            "[[token]]\nname = \"a\"\nrole = \"read\"\nsha256 = \"zz\"\nextra = 1\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("extra"), "{e}");
        assert!(TokenTable::from_toml("").unwrap().is_empty());
    }

    #[test]
    fn new_tokens_differ_and_hash_to_64_hex_digits() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("kv_") && a.len() == 67, "{a}");
        let h = hash_token(&a);
        assert_eq!(h.len(), 64);
        assert!(parse_hash(&h).is_some());
        assert!(parse_hash(&h[..63]).is_none());
    }
}
