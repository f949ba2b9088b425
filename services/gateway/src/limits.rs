//! Who may open a socket: at most so many sockets per gateway and per client address (the
//! address a trusted proxy forwards, behind one), and only from allowed `Origin`s when an
//! allow-list is set (cross-site websocket hijacking). Past a limit the upgrade is refused
//! with a status and a JSON body, before any socket exists.

use axum::http::{HeaderMap, HeaderName, StatusCode};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// A proxy whose forwarding header is believed (the type of every role's `TRUSTED_PROXIES`).
pub use threadline_runtime::server::TrustedProxy;

/// The admission rules and the count of open sockets.
pub struct Admission {
    max_sockets: usize,
    max_per_address: usize,
    trusted_proxies: Vec<TrustedProxy>,
    forwarded_header: HeaderName,
    allowed_origins: Vec<String>,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Why an upgrade is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManySockets,
    TooManyFromAddress,
    ForeignOrigin,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::TooManySockets => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::TooManyFromAddress => StatusCode::TOO_MANY_REQUESTS,
            Refusal::ForeignOrigin => StatusCode::FORBIDDEN,
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            Refusal::TooManySockets => "Too many websockets on this server, try again later.",
            Refusal::TooManyFromAddress => "Too many websockets from this address.",
            Refusal::ForeignOrigin => "Origin not allowed.",
        }
    }
}

/// An open socket's place in the count; dropping it frees the place.
pub struct Permit {
    admission: Arc<Admission>,
    address: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.admission.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.per_address.remove(&self.address);
            }
        }
    }
}

impl Admission {
    /// `0` as a maximum means no limit; an empty allow-list allows every origin.
    pub fn new(
        max_sockets: usize,
        max_per_address: usize,
        trusted_proxies: Vec<TrustedProxy>,
        forwarded_header: HeaderName,
        allowed_origins: Vec<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            max_sockets,
            max_per_address,
            trusted_proxies,
            forwarded_header,
            allowed_origins: allowed_origins
                .into_iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
            open: Mutex::new(Open::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many sockets are open.
    pub fn open_sockets(&self) -> usize {
        self.lock().total
    }

    /// Checks the origin; a request without one (not from a browser) is not cross-site.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if self.allowed_origins.is_empty() {
            return Ok(());
        }
        let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or_default().to_ascii_lowercase();
        if self.allowed_origins.contains(&origin) {
            Ok(())
        } else {
            Err(Refusal::ForeignOrigin)
        }
    }

    /// The client's address: the peer's, or, when the peer is a trusted proxy, the last
    /// address in its forwarding header that is not itself a trusted proxy.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        let trusted = |a: IpAddr| self.trusted_proxies.iter().any(|p| p.contains(a));
        if !trusted(peer) {
            return peer;
        }
        let forwarded = headers
            .get_all(&self.forwarded_header)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .map(|a| a.to_canonical())
            .collect::<Vec<_>>();
        forwarded
            .into_iter()
            .rev()
            .find(|a| !trusted(*a))
            .unwrap_or(peer)
    }

    /// Takes a place for a socket from `address`, or says which limit it would pass.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Permit, Refusal> {
        let mut open = self.lock();
        if self.max_sockets > 0 && open.total >= self.max_sockets {
            return Err(Refusal::TooManySockets);
        }
        let from_address = open.per_address.get(&address).copied().unwrap_or(0);
        if self.max_per_address > 0 && from_address >= self.max_per_address {
            return Err(Refusal::TooManyFromAddress);
        }
        open.total += 1;
        *open.per_address.entry(address).or_default() += 1;
        Ok(Permit {
            admission: self.clone(),
            address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: usize, per_address: usize, proxies: &[&str]) -> Arc<Admission> {
        Admission::new(
            max,
            per_address,
            proxies.iter().map(|p| p.parse().unwrap()).collect(),
            HeaderName::from_static("x-forwarded-for"),
            vec!["https://shop.example".into()],
        )
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn limits_count_sockets_per_gateway_and_per_address() {
        let a = admission(3, 2, &[]);
        let p1 = a.admit(ip("1.1.1.1")).unwrap();
        let _p2 = a.admit(ip("1.1.1.1")).unwrap();
        assert_eq!(
            a.admit(ip("1.1.1.1")).err(),
            Some(Refusal::TooManyFromAddress)
        );
        let _p3 = a.admit(ip("2.2.2.2")).unwrap();
        assert_eq!(a.admit(ip("3.3.3.3")).err(), Some(Refusal::TooManySockets));
        drop(p1);
        assert!(a.admit(ip("1.1.1.1")).is_ok());
    }

    #[test]
    fn forwarded_address_is_believed_only_from_trusted_proxies() {
        let a = admission(0, 0, &["10.0.0.0/8"]);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 7.7.7.7, 10.1.1.1".parse().unwrap(),
        );
        assert_eq!(a.client_address(ip("10.2.2.2"), &headers), ip("7.7.7.7"));
        assert_eq!(a.client_address(ip("8.8.8.8"), &headers), ip("8.8.8.8"));
        assert_eq!(
            a.client_address(ip("10.2.2.2"), &HeaderMap::new()),
            ip("10.2.2.2")
        );
    }

    #[test]
    fn origins_outside_the_allow_list_are_refused() {
        let a = admission(0, 0, &[]);
        let mut headers = HeaderMap::new();
        assert!(a.check_origin(&headers).is_ok(), "no origin: not a browser");
        headers.insert("origin", "https://SHOP.example".parse().unwrap());
        assert!(a.check_origin(&headers).is_ok());
        headers.insert("origin", "https://evil.example".parse().unwrap());
        assert_eq!(a.check_origin(&headers), Err(Refusal::ForeignOrigin));
    }

    #[test]
    fn trusted_proxies_parse_addresses_and_blocks() {
        assert!("10.0.0.0/33".parse::<TrustedProxy>().is_err());
        assert!("nope".parse::<TrustedProxy>().is_err());
        let p: TrustedProxy = "192.168.0.0/16".parse().unwrap();
        assert!(p.contains(ip("192.168.4.5")));
        assert!(!p.contains(ip("192.169.0.1")));
        let all: TrustedProxy = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let v6: TrustedProxy = "::1".parse().unwrap();
        assert!(v6.contains(ip("::1")));
    }
}
