//! A websocket client of the gateway, with waits that are always bounded.

use futures::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

/// How long a frame that should come may take.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// An open websocket on `/ws/chat/<thread>/`.
pub struct Ws {
    url: String,
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The close code the server sent, once [`try_next_text`](Self::try_next_text) read it.
    closed_with: Option<u16>,
}

/// Why a websocket did not open: the HTTP status of a refused upgrade, if there was one.
pub struct Refused {
    pub status: Option<u16>,
    pub body: String,
    pub error: String,
}

impl std::fmt::Debug for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (status {:?}, body {:?})",
            self.error, self.status, self.body
        )
    }
}

impl Ws {
    /// Opens `url`; the upgrade's answer if the server refused it.
    pub async fn connect(url: &str) -> Result<Ws, Refused> {
        match tokio::time::timeout(CONNECT_TIMEOUT, connect_async(url)).await {
            Err(_) => Err(Refused {
                status: None,
                body: String::new(),
                error: format!("no answer to the upgrade within {CONNECT_TIMEOUT:?}"),
            }),
            Ok(Ok((stream, _response))) => Ok(Ws {
                url: url.to_owned(),
                stream,
                closed_with: None,
            }),
            Ok(Err(Error::Http(response))) => Err(Refused {
                status: Some(response.status().as_u16()),
                body: response
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
                error: "upgrade refused".into(),
            }),
            Ok(Err(e)) => Err(Refused {
                status: None,
                body: String::new(),
                error: e.to_string(),
            }),
        }
    }

    /// The next text frame, within `FRAME_TIMEOUT`.
    pub async fn next_text(&mut self) -> String {
        self.next_text_within(FRAME_TIMEOUT).await
    }

    /// The next text frame, skipping pings and pongs; panics on anything else, on a closed
    /// socket, or when none comes within `timeout`.
    pub async fn next_text_within(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.next()).await {
                Err(_) => panic!("no text frame on {} within {timeout:?}", self.url),
                Ok(Some(Ok(Message::Text(text)))) => return text.as_str().to_owned(),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
                Ok(Some(Ok(Message::Binary(b)))) => {
                    panic!(
                        "binary frame of {} bytes on {}, expected text",
                        b.len(),
                        self.url
                    )
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    panic!("{} was closed by the server: {frame:?}", self.url)
                }
                Ok(Some(Err(e))) => panic!("{} failed: {e}", self.url),
                Ok(None) => panic!("{} ended", self.url),
            }
        }
    }

    /// The next text frame within `timeout`, skipping pings and pongs; `None` when the socket
    /// closes, fails or stays silent that long (for a client that then resumes).
    pub async fn try_next_text(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => return Some(text.as_str().to_owned()),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
                Ok(Some(Ok(Message::Close(frame)))) => {
                    self.closed_with = frame.map(|f| u16::from(f.code));
                    return None;
                }
                _ => return None,
            }
        }
    }

    /// The close code the server sent, if [`try_next_text`](Self::try_next_text) ended on
    /// one.
    pub fn closed_with(&self) -> Option<u16> {
        self.closed_with
    }

    /// Asserts that no frame but pings and pongs arrives for `window`, and that the socket
    /// stays open meanwhile.
    pub async fn assert_silent(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
                Ok(Some(Ok(Message::Text(text)))) => {
                    panic!("unexpected frame on {}: {}", self.url, text.as_str())
                }
                Ok(Some(Ok(other))) => panic!("unexpected frame on {}: {other:?}", self.url),
                Ok(Some(Err(e))) => panic!("{} failed: {e}", self.url),
                Ok(None) => panic!("{} ended", self.url),
            }
        }
    }

    /// Reads until the server closes the socket, skipping pings and pongs; the close code,
    /// or `None` if the connection ended without a close frame. Panics on a text or binary
    /// frame, or if nothing ends the socket within `FRAME_TIMEOUT`.
    pub async fn next_close(&mut self) -> Option<u16> {
        self.read_until_close(false).await
    }

    /// As [`next_close`](Self::next_close), skipping any text frames that come first.
    pub async fn next_close_after_frames(&mut self) -> Option<u16> {
        self.read_until_close(true).await
    }

    async fn read_until_close(&mut self, skip_frames: bool) -> Option<u16> {
        let deadline = Instant::now() + FRAME_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.next()).await {
                Err(_) => panic!("{} was not closed within {FRAME_TIMEOUT:?}", self.url),
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
                Ok(Some(Ok(_))) if skip_frames => {}
                Ok(Some(Ok(other))) => panic!("unexpected frame on {}: {other:?}", self.url),
                Ok(Some(Err(_)) | None) => return None,
            }
        }
    }

    /// Sends a frame from the client.
    pub async fn send(&mut self, message: Message) {
        tokio::time::timeout(FRAME_TIMEOUT, self.stream.send(message))
            .await
            .unwrap_or_else(|_| panic!("sending on {} timed out", self.url))
            .unwrap_or_else(|e| panic!("sending on {} failed: {e}", self.url));
    }

    /// Closes the socket politely.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(FRAME_TIMEOUT, self.stream.close(None)).await;
    }
}
