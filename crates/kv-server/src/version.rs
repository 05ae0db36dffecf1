//! Versions a node speaks and stores, and which peers it accepts.
//!
//! - The **wire version** is the internal protocol between nodes (the
//!   `Internal` service's messages and what they mean). Version 1 is every
//!   release before versions were announced; version 2 added paged
//!   anti-entropy and ring change proposals.
//! - The **format version** is what a node stores (sibling sets, tables,
//!   commit log, ring and identity files). Version 2 tags sibling sets with
//!   write ids; a node reads format 1 (untagged sibling sets) and writes 2.
//!
//! Every call a node makes to another announces both in its user agent
//! (`kv-node/0.1.0 wire/2 format/2`; a call without them is from a release
//! before versions, wire 1). The policy (docs/operations.md, "Upgrades"):
//! a release works with the release before and the release after it, so a
//! rolling upgrade goes one release at a time; a peer further away is
//! refused on every internal call with a message that says so, never
//! half-understood. What each peer announced is shown by `kvctl status`.

/// The internal protocol this node speaks.
pub const WIRE_VERSION: u32 = 2;
/// The storage format this node writes.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest storage format this node reads.
pub const MIN_FORMAT_VERSION: u32 = 1;

/// What a peer announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Versions {
    /// Its wire version.
    pub wire: u32,
    /// Its format version.
    pub format: u32,
}

impl Versions {
    /// This node's.
    pub const OURS: Versions = Versions {
        wire: WIRE_VERSION,
        format: FORMAT_VERSION,
    };

    /// A peer from before versions were announced.
    pub const UNANNOUNCED: Versions = Versions { wire: 1, format: 1 };

    /// The versions a user agent announces: `wire/N` and `format/N` among
    /// its words; a caller that names none predates them (wire and format
    /// 1). A word that names a version badly counts as no version at all
    /// (the check then judges by wire 1).
    pub fn from_user_agent(agent: Option<&[u8]>) -> Versions {
        let mut found = Versions::UNANNOUNCED;
        let Some(text) = agent.and_then(|a| std::str::from_utf8(a).ok()) else {
            return found;
        };
        for word in text.split_whitespace() {
            if let Some(v) = word.strip_prefix("wire/").and_then(|v| v.parse().ok()) {
                found.wire = v;
            } else if let Some(v) = word.strip_prefix("format/").and_then(|v| v.parse().ok()) {
                found.format = v;
            }
        }
        found
    }

    /// Whether this node can work with a peer that announced `self`.
    ///
    /// # Errors
    ///
    /// The reason, naming both sides' versions and what to do.
    pub fn check(self) -> Result<(), String> {
        let ours = Versions::OURS;
        if self.wire + 1 < ours.wire || self.wire > ours.wire + 1 {
            return Err(format!(
                "the calling node speaks wire version {}; this node speaks {} and works with {} to {}: upgrade one release at a time (docs/operations.md, Upgrades)",
                self.wire,
                ours.wire,
                ours.wire - 1,
                ours.wire + 1
            ));
        }
        Ok(())
    }
}

/// What this node announces on every call to a peer.
pub fn user_agent(page: Option<&str>) -> String {
    let mut agent = format!(
        "kv-node/{} wire/{WIRE_VERSION} format/{FORMAT_VERSION}",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(page) = page.filter(|p| is_host_port(p)) {
        agent.push_str(" page/");
        agent.push_str(page);
    }
    agent
}

/// Where a peer serves its status page (`host:port`), as its calls
/// announce it (`page/host:port` in the user agent: a release that does
/// not know the word ignores it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPage(pub String);

impl PeerPage {
    /// The page a user agent announces, if it names a plain host and port
    /// (anything else is ignored: it ends up in links on the page).
    pub fn from_user_agent(agent: Option<&[u8]>) -> Option<PeerPage> {
        let text = std::str::from_utf8(agent?).ok()?;
        text.split_whitespace()
            .find_map(|w| w.strip_prefix("page/"))
            .filter(|p| is_host_port(p))
            .map(|p| PeerPage(p.to_string()))
    }
}

/// `host:port` with a host of letters, digits, dots, dashes (or an IPv6
/// address in brackets) and a port number.
fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let host_ok = |h: &str| {
        !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host_ok(host),
    };
    text.len() <= 255 && host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_user_agent_announces_the_status_page_when_it_is_a_host_and_port() {
        let agent = user_agent(Some("10.0.0.5:8001"));
        assert!(agent.ends_with(" page/10.0.0.5:8001"), "{agent}");
        assert_eq!(
            PeerPage::from_user_agent(Some(agent.as_bytes())),
            Some(PeerPage("10.0.0.5:8001".into()))
        );
        assert_eq!(
            Versions::from_user_agent(Some(agent.as_bytes())),
            Versions::OURS
        );
        for page in ["[::1]:8001", "node-2.example:80"] {
            let agent = user_agent(Some(page));
            assert_eq!(
                PeerPage::from_user_agent(Some(agent.as_bytes())),
                Some(PeerPage(page.into()))
            );
        }
        // Nothing that could not be a link's host and port.
        for bad in [
            "page/<script>:80",
            "page/host",
            "page/host:0",
            "page/host:99999",
            "page/:80",
            "page/[zz]:80",
            "page/a\"b:80",
        ] {
            assert_eq!(
                PeerPage::from_user_agent(Some(bad.as_bytes())),
                None,
                "{bad}"
            );
        }
        assert!(!user_agent(Some("<b>:1")).contains("page/"));
        assert_eq!(PeerPage::from_user_agent(Some(&[0xff, 0xfe])), None);
        assert_eq!(PeerPage::from_user_agent(None), None);
    }

    use super::*;

    #[test]
    fn a_user_agent_announces_versions_and_silence_means_the_first() {
        let ours = user_agent(None);
        assert_eq!(
            Versions::from_user_agent(Some(ours.as_bytes())),
            Versions::OURS
        );
        // tonic appends its own word after ours.
        let sent = format!("{ours} tonic/0.14.2");
        assert_eq!(
            Versions::from_user_agent(Some(sent.as_bytes())),
            Versions::OURS
        );
        assert_eq!(Versions::from_user_agent(None), Versions::UNANNOUNCED);
        assert_eq!(
            Versions::from_user_agent(Some(b"tonic/0.14.2".as_slice())),
            Versions::UNANNOUNCED
        );
        assert_eq!(
            Versions::from_user_agent(Some(b"wire/x format/\xff".as_slice())),
            Versions::UNANNOUNCED
        );
    }

    #[test]
    fn a_release_works_with_the_one_before_and_after_it_only() {
        let v = |wire| Versions { wire, format: 2 };
        assert!(v(WIRE_VERSION - 1).check().is_ok());
        assert!(v(WIRE_VERSION).check().is_ok());
        assert!(v(WIRE_VERSION + 1).check().is_ok());
        let refused = v(WIRE_VERSION + 2).check().unwrap_err();
        assert!(refused.contains("wire version 4"), "{refused}");
        assert!(refused.contains("one release at a time"), "{refused}");
        assert!(v(0).check().is_err());
    }
}
