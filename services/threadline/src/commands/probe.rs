//! `threadline probe`: asks a running role's own health endpoint and exits 0 when it answers
//! 200, 1 otherwise (another status, nothing listening, no answer in time). It serves the
//! container health checks of `docker-compose.yml`, so that the image needs no shell and no
//! HTTP client of its own beside the binary.

use super::Outcome;
use clap::Args;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use threadline_ports::settings::parse_duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What `probe` asks.
#[derive(Debug, Clone, Args)]
pub struct ProbeSettings {
    /// The address the role listens on (the role's own LISTEN_ADDR); an unspecified address
    /// (0.0.0.0, [::]) is asked on the loopback interface.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8000")]
    pub listen_addr: SocketAddr,
    /// The role's admin listener (its ADMIN_LISTEN_ADDR), asked instead when set: `/readyz`
    /// is served there only.
    #[arg(long, env = "ADMIN_LISTEN_ADDR")]
    pub admin_listen_addr: Option<SocketAddr>,
    /// The path asked: /readyz (ready to serve) or /healthz (the process runs).
    #[arg(long, default_value = "/readyz", value_parser = path)]
    pub path: String,
    /// How long the whole probe may take.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub timeout: Duration,
}

fn path(text: &str) -> Result<String, String> {
    if text.starts_with('/') && text.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(text.to_owned())
    } else {
        Err("a path starts with / and holds no spaces or control characters".into())
    }
}

/// Runs the probe: prints one line (the status line, or why there is none); all well only
/// on 200. A role that does not answer is what the probe found, not a failure to run.
pub async fn run(settings: &ProbeSettings) -> Outcome {
    let target =
        loopback_if_unspecified(settings.admin_listen_addr.unwrap_or(settings.listen_addr));
    let answer = tokio::time::timeout(settings.timeout, status_of(target, &settings.path)).await;
    let (found, ready) = match answer {
        Ok(Ok(status)) => (status.to_string(), status == 200),
        Ok(Err(e)) => (e.to_string(), false),
        Err(_) => (format!("no answer within {:?}", settings.timeout), false),
    };
    println!("http://{target}{}: {found}", settings.path);
    Ok(ready)
}

fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// The status code of `GET path` on `target`, over HTTP/1.0 so that the server closes the
/// connection after its answer.
async fn status_of(target: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(target).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {target}\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    status_code(&head).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the answer is not HTTP (no status line)",
        )
    })
}

/// The code of an HTTP/1.x status line at the start of `head`.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let mut words = std::str::from_utf8(line).ok()?.split_ascii_whitespace();
    words.next().filter(|v| v.starts_with("HTTP/1."))?;
    words.next().filter(|c| c.len() == 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_gives_the_code() {
        assert_eq!(
            status_code(b"HTTP/1.1 200 OK\r\ncontent-length: 2"),
            Some(200)
        );
        assert_eq!(
            status_code(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 20"), None);
        assert_eq!(status_code(b""), None);
    }

    #[test]
    fn an_unspecified_address_is_asked_on_the_loopback() {
        let any: SocketAddr = "0.0.0.0:8000".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loopback_if_unspecified(any).to_string(), "127.0.0.1:8000");
        let any6: SocketAddr = "[::]:81".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loopback_if_unspecified(any6).to_string(), "[::1]:81");
        let given: SocketAddr = "10.0.0.1:8000".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loopback_if_unspecified(given), given);
    }

    #[test]
    fn a_path_must_be_a_path() {
        assert!(path("/readyz").is_ok());
        assert!(path("readyz").is_err());
        assert!(path("/ready z").is_err());
        assert!(path("/x\r\nHost: y").is_err());
    }
}
