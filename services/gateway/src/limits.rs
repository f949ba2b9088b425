//! Who may open a socket: at most so many sockets per gateway and per client (see
//! [`threadline_runtime::client`]: an address or IPv6 /64, the one a trusted proxy forwards
//! behind one), and only from allowed `Origin`s when an
//! allow-list is set (cross-site websocket hijacking). Past a limit the upgrade is refused
//! with a status and a JSON body, before any socket exists.

use axum::http::{HeaderMap, StatusCode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
pub use threadline_runtime::client::{ClientKey, Clients};
/// A proxy whose forwarding header is believed (the type of every role's `TRUSTED_PROXIES`).
pub use threadline_runtime::server::TrustedProxy;

/// The admission rules and the count of open sockets.
pub struct Admission {
    max_sockets: usize,
    max_per_address: usize,
    allowed_origins: Vec<String>,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_address: HashMap<ClientKey, usize>,
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
    address: ClientKey,
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
        allowed_origins: Vec<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            max_sockets,
            max_per_address,
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

    /// Takes a place for a socket from the client `address`, or says which limit it would
    /// pass.
    pub fn admit(self: &Arc<Self>, address: ClientKey) -> Result<Permit, Refusal> {
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

    fn admission(max: usize, per_address: usize) -> Arc<Admission> {
        Admission::new(max, per_address, vec!["https://shop.example".into()])
    }

    fn ip(text: &str) -> ClientKey {
        ClientKey::of(text.parse().unwrap())
    }

    #[test]
    fn limits_count_sockets_per_gateway_and_per_address() {
        let a = admission(3, 2);
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
        let v6 = admission(0, 1);
        let _p = v6.admit(ip("2001:db8::1")).unwrap();
        assert_eq!(
            v6.admit(ip("2001:db8::2")).err(),
            Some(Refusal::TooManyFromAddress),
            "one IPv6 /64 is one client"
        );
        assert!(v6.admit(ip("2001:db8:0:1::1")).is_ok());
    }

    #[test]
    fn origins_outside_the_allow_list_are_refused() {
        let a = admission(0, 0);
        let mut headers = HeaderMap::new();
        assert!(a.check_origin(&headers).is_ok(), "no origin: not a browser");
        headers.insert("origin", "https://SHOP.example".parse().unwrap());
        assert!(a.check_origin(&headers).is_ok());
        headers.insert("origin", "https://evil.example".parse().unwrap());
        assert_eq!(a.check_origin(&headers), Err(Refusal::ForeignOrigin));
    }
}
