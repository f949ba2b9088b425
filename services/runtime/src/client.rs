//! Who a request comes from: the peer's address, or, when the peer is a trusted proxy
//! (`TRUSTED_PROXIES`), the address it forwards (`FORWARDED_HEADER`). Every per-client limit
//! (sockets, connections, rates) counts a client by its [`ClientKey`]: an IPv4 address, or
//! the /64 an IPv6 address is in, since one IPv6 host is given a whole /64 and may pick any
//! address in it.

use crate::server::TrustedProxy;
use axum::http::{HeaderMap, HeaderName};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

/// How a role tells its clients apart: the proxies it believes and their header.
#[derive(Debug, Clone)]
pub struct Clients {
    trusted: Arc<[TrustedProxy]>,
    header: HeaderName,
}

impl Clients {
    pub fn new(trusted: Vec<TrustedProxy>, header: HeaderName) -> Self {
        Self {
            trusted: trusted.into(),
            header,
        }
    }

    /// Whether `peer` is a proxy whose forwarding header is believed.
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted.iter().any(|p| p.contains(peer))
    }

    /// The client's address: the peer's, or, when the peer is a trusted proxy, the last
    /// address in its forwarding header that is not itself a trusted proxy (the one the
    /// nearest untrusted hop connected from; whatever a client wrote before it is ignored).
    pub fn address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        let forwarded = headers
            .get_all(&self.header)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .map(|a| a.to_canonical())
            .collect::<Vec<_>>();
        forwarded
            .into_iter()
            .rev()
            .find(|a| !self.is_trusted(*a))
            .unwrap_or(peer)
    }
}

/// A request's client, put in its extensions by [`identify`] for every handler and layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// Its address (see [`Clients::address`]).
    pub address: IpAddr,
    /// What per-client limits count it by.
    pub key: ClientKey,
}

impl Client {
    pub fn new(address: IpAddr) -> Self {
        Self {
            address,
            key: ClientKey::of(address),
        }
    }
}

/// What one client is counted as: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of `address`: itself for IPv4 (an IPv4-mapped IPv6 address is IPv4), its /64
    /// for IPv6.
    pub fn of(address: IpAddr) -> Self {
        match address.to_canonical() {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                Self(IpAddr::V6(Ipv6Addr::from(network)))
            }
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients(proxies: &[&str]) -> Clients {
        Clients::new(
            proxies.iter().map(|p| p.parse().unwrap()).collect(),
            HeaderName::from_static("x-forwarded-for"),
        )
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_address_is_believed_only_from_trusted_proxies() {
        let c = clients(&["10.0.0.0/8"]);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 7.7.7.7, 10.1.1.1".parse().unwrap(),
        );
        assert_eq!(c.address(ip("10.2.2.2"), &headers), ip("7.7.7.7"));
        assert_eq!(c.address(ip("8.8.8.8"), &headers), ip("8.8.8.8"));
        assert_eq!(c.address(ip("10.2.2.2"), &HeaderMap::new()), ip("10.2.2.2"));
        assert_eq!(
            c.address(ip("::ffff:10.2.2.2"), &headers),
            ip("7.7.7.7"),
            "an IPv4-mapped peer is its IPv4 address"
        );
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a = ClientKey::of(ip("2001:db8:1:2:aaaa::1"));
        let b = ClientKey::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        let other = ClientKey::of(ip("2001:db8:1:3::1"));
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            ClientKey::of(ip("::ffff:1.2.3.4")),
            ClientKey::of(ip("1.2.3.4"))
        );
        assert_ne!(ClientKey::of(ip("1.2.3.4")), ClientKey::of(ip("1.2.3.5")));
    }
}
