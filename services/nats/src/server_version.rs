//! Which nats-server versions threadline runs on: the oldest it is tested against, and the
//! releases known to lose data, about which a role warns when it starts.

/// The oldest nats-server threadline supports and tests (Debian 12's package). Older ones
/// may lack what the adapter asks of JetStream.
pub const OLDEST_SUPPORTED: Version = Version(2, 9, 10);

/// A nats-server release, as its `INFO` reports it (`2.15.1`, `2.11.0-RC.2`: the suffix is
/// left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Reads `major.minor.patch`, with or without a leading `v` or a `-suffix`.
    pub fn parse(text: &str) -> Option<Version> {
        let text = text.trim().trim_start_matches('v');
        let core = text.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let version = Version(
            parts.next()??,
            parts.next()??,
            parts.next().unwrap_or(Some(0))?,
        );
        parts.next().is_none().then_some(version)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// What an operator should hear about a server of version `reported`, if anything.
pub fn warning(reported: &str) -> Option<String> {
    let Some(version) = Version::parse(reported) else {
        return Some(format!(
            "nats-server reports version {reported:?}, which threadline cannot read; it is \
             tested with {OLDEST_SUPPORTED} and later"
        ));
    };
    if version < OLDEST_SUPPORTED {
        return Some(format!(
            "nats-server {version} is older than {OLDEST_SUPPORTED}, the oldest threadline \
             supports: upgrade it"
        ));
    }
    if (Version(2, 10, 20)..=Version(2, 10, 22)).contains(&version) {
        return Some(format!(
            "nats-server {version} can lose a whole stream when its process crashes (fixed in \
             2.10.23): upgrade it"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_as_the_server_reports_them() {
        assert_eq!(Version::parse("2.9.10"), Some(Version(2, 9, 10)));
        assert_eq!(Version::parse("v2.15.1"), Some(Version(2, 15, 1)));
        assert_eq!(Version::parse("2.11.0-RC.2"), Some(Version(2, 11, 0)));
        assert_eq!(Version::parse("2.10"), Some(Version(2, 10, 0)));
        assert_eq!(Version::parse("two"), None);
        assert_eq!(Version::parse("2.9.10.1"), None);
        assert!(Version(2, 10, 0) > Version(2, 9, 10));
    }

    #[test]
    fn old_and_known_bad_servers_are_warned_about() {
        assert_eq!(warning("2.9.10"), None);
        assert_eq!(warning("2.15.1"), None);
        assert_eq!(warning("2.10.23"), None);
        assert!(warning("2.9.9").is_some_and(|w| w.contains("older than 2.9.10")));
        assert!(warning("2.2.0").is_some());
        assert!(warning("2.10.21").is_some_and(|w| w.contains("2.10.23")));
        assert!(warning("garbage").is_some());
    }
}
