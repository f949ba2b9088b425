//! What the gateway reads from a websocket upgrade before any socket exists: the `?since=`
//! resume parameter of the query string, the `Origin` header against the allow-list, and the
//! client's address from a trusted proxy's forwarding header (and the proxy list itself, as
//! written in `TRUSTED_PROXIES`). Frames from the client are never parsed: there is nothing
//! else to fuzz there.
//!
//! Input: `query\npeer address\ntrusted proxies (comma-separated)\nforwarded header values
//! (|-separated)\norigin\nallowed origins (comma-separated)`; an origin line `-` is absent.
//!
//! Properties: `since` is decoded as `application/x-www-form-urlencoded` decodes it (checked
//! against the `form_urlencoded` crate) and is a message id exactly when that text is a UUID;
//! the client's address is the peer unless the peer is a trusted proxy, and then the last
//! forwarded address that is not one (or the peer); an origin passes exactly when it is absent,
//! the allow-list is empty or it is on the list.

#![no_main]

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr};
use threadline_fuzz::{optional, split, text};
use threadline_gateway::limits::{Admission, Clients, TrustedProxy};
use threadline_gateway::parse_since;
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    let ([query, peer, proxies, forwarded, origin], allowed) = split(data);
    since(&text(query));

    let proxies: Vec<(TrustedProxy, Cidr)> = text(proxies)
        .split(',')
        .filter_map(|p| {
            let parsed = p.parse::<TrustedProxy>().ok();
            let reference = Cidr::parse(p);
            assert_eq!(parsed.is_some(), reference.is_some(), "proxy {p:?}");
            parsed.zip(reference)
        })
        .collect();
    let allowed: Vec<String> = text(allowed).split(',').map(str::to_owned).collect();
    let forwarded_header = HeaderName::from_static("x-forwarded-for");
    let admission = Admission::new(0, 0, allowed.clone());
    let clients = Clients::new(
        proxies.iter().map(|(p, _)| *p).collect(),
        forwarded_header.clone(),
    );
    let cidrs: Vec<Cidr> = proxies.into_iter().map(|(_, c)| c).collect();

    let mut headers = HeaderMap::new();
    for value in forwarded.split(|b| *b == b'|') {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(forwarded_header.clone(), value);
        }
    }
    if let Some(value) = optional(origin).and_then(|o| HeaderValue::from_bytes(o).ok()) {
        headers.insert(header::ORIGIN, value);
    }

    let peer: IpAddr = text(peer)
        .trim()
        .parse()
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    client_address(&clients, &cidrs, peer, &headers);
    origin_check(&admission, &allowed, &headers);
});

/// The `since` parameter against a reference decoder.
fn since(query: &str) {
    let raw = query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| *key == "since")
        .map(|(_, value)| value);
    let parsed = parse_since(Some(query));
    let Some(raw) = raw else {
        assert_eq!(parsed, Ok(None));
        return;
    };
    let decoded = form_urlencoded::parse(format!("since={raw}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    match Uuid::try_parse(&decoded) {
        Ok(id) => assert_eq!(parsed, Ok(Some(id)), "since={raw:?}"),
        Err(_) => assert_eq!(parsed, Err(decoded), "since={raw:?}"),
    }
}

/// A trusted proxy as the reference reads it: a network and a prefix length.
#[derive(Clone, Copy)]
struct Cidr {
    network: IpAddr,
    prefix: u32,
}

impl Cidr {
    fn parse(text: &str) -> Option<Cidr> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().ok()?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().map(u32::from).filter(|p| *p <= bits)?,
            None => bits,
        };
        Some(Cidr { network, prefix })
    }

    /// By masks, where the gateway shifts.
    fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

fn client_address(clients: &Clients, proxies: &[Cidr], peer: IpAddr, headers: &HeaderMap) {
    let trusted = |a: IpAddr| proxies.iter().any(|p| p.contains(a));
    let peer_canonical = peer.to_canonical();
    let expected = if trusted(peer_canonical) {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .map(|a| a.to_canonical())
            .rev()
            .find(|a| !trusted(*a))
            .unwrap_or(peer_canonical)
    } else {
        peer_canonical
    };
    assert_eq!(clients.address(peer, headers), expected);
}

fn origin_check(admission: &Admission, allowed: &[String], headers: &HeaderMap) {
    let list: Vec<String> = allowed
        .iter()
        .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
        .filter(|o| !o.is_empty())
        .collect();
    let passes = match headers.get(header::ORIGIN) {
        None => true,
        Some(_) if list.is_empty() => true,
        Some(origin) => list.contains(&origin.to_str().unwrap_or_default().to_ascii_lowercase()),
    };
    assert_eq!(admission.check_origin(headers).is_ok(), passes);
}
