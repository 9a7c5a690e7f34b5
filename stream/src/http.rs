//! The HTTP/1.1 upgrade, both sides: which transport a request asks for, protocol
//! negotiation as kubelet does it (the first of the client's protocols the server has), the
//! 101 answers, and a client's request and the response it reads back.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use hyper::{Response, StatusCode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub type Body = Full<Bytes>;

pub const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
pub const WS_PROTOCOL_HEADER: &str = "sec-websocket-protocol";

pub fn error_response(code: StatusCode, message: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *r.status_mut() = code;
    r
}

fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn is_spdy(headers: &HeaderMap) -> bool {
    headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("spdy/3.1"))
}

/// The client's protocols from every `name` header, each possibly a comma list.
fn offered(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The first protocol the client offers that `ours` has; `Ok("")` when it offers none
/// (the oldest protocol, as kubelet takes it); Err naming both lists when none match.
fn negotiate(headers: &HeaderMap, name: &str, ours: &[&str]) -> Result<String, String> {
    let theirs = offered(headers, name);
    if theirs.is_empty() {
        return Ok(String::new());
    }
    theirs
        .iter()
        .find(|p| ours.contains(&p.as_str()))
        .cloned()
        .ok_or_else(|| {
            format!("unable to upgrade: unable to negotiate protocol: client supports {theirs:?}, server supports {ours:?}")
        })
}

/// Checks an upgrade request and agrees on one of `protocols`: whether it is WebSocket
/// (else SPDY), the protocol, and the response to send: 101, or the error (400 for no or a
/// bad upgrade, 403 for no common protocol).
pub fn accept(headers: &HeaderMap, protocols: &[&str]) -> (bool, String, Response<Body>) {
    let (websocket, name) = match (is_websocket(headers), is_spdy(headers)) {
        (true, _) => (true, WS_PROTOCOL_HEADER),
        (false, true) => (false, PROTOCOL_HEADER),
        _ => {
            let message = "this URL needs an upgrade to SPDY/3.1 or WebSocket";
            return (
                false,
                String::new(),
                error_response(StatusCode::BAD_REQUEST, message),
            );
        }
    };
    let protocol = match negotiate(headers, name, protocols) {
        Ok(p) => p,
        Err(e) => {
            return (
                websocket,
                String::new(),
                error_response(StatusCode::FORBIDDEN, &e),
            )
        }
    };
    let response = match websocket {
        true => websocket_switch(headers, &protocol),
        false => spdy_switch(&protocol),
    };
    (websocket, protocol, response)
}

/// 101 Switching Protocols to SPDY/3.1.
fn spdy_switch(protocol: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Ok(v) = HeaderValue::from_str(protocol) {
        h.insert(PROTOCOL_HEADER, v);
    }
    r
}

/// 101 Switching Protocols to WebSocket, or 400 for a handshake without a key.
fn websocket_switch(headers: &HeaderMap, protocol: &str) -> Response<Body> {
    let Some(key) = headers.get("sec-websocket-key") else {
        return error_response(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    if !protocol.is_empty() {
        if let Ok(v) = HeaderValue::from_str(protocol) {
            h.insert(WS_PROTOCOL_HEADER, v);
        }
    }
    r
}

/// `http://host:port/path?query` -> (host:port, path?query).
pub fn split_url(url: &str) -> std::io::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{url}: only http:// URLs are supported"),
            )
        })?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    Ok((
        host.to_owned(),
        if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
    ))
}

/// A client's SPDY upgrade: sends the request offering `protocols` and reads the 101; the
/// connection then speaks SPDY. Returns it with the protocol the server chose.
pub async fn spdy_connect(url: &str, protocols: &[&str]) -> std::io::Result<(TcpStream, String)> {
    let (host, path) = split_url(url)?;
    let mut tcp = TcpStream::connect(&host).await?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;
    // Read the response head byte by byte: nothing after it may be consumed.
    let mut reader = BufReader::with_capacity(1, &mut tcp);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).await?;
    let mut chosen = String::new();
    let mut body_hint = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case(PROTOCOL_HEADER) {
                chosen = v.trim().to_owned();
            }
            body_hint.push_str(&line);
        }
    }
    if !status_line.contains(" 101 ") {
        let mut body = String::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            tokio::io::AsyncReadExt::read_to_string(&mut reader, &mut body),
        )
        .await;
        return Err(std::io::Error::other(format!(
            "{}: {}",
            status_line.trim(),
            body.trim()
        )));
    }
    Ok((tcp, chosen))
}

/// A client's WebSocket upgrade of `url` (plus `query`, if any) offering `protocols`:
/// the socket, and the protocol the server chose ("" for none).
pub async fn ws_connect(
    url: &str,
    query: &str,
    protocols: &str,
) -> std::io::Result<(tokio_tungstenite::WebSocketStream<TcpStream>, String)> {
    let (host, path) = split_url(url)?;
    let uri = match (query.is_empty(), path.contains('?')) {
        (true, _) => format!("ws://{host}{path}"),
        (false, true) => format!("ws://{host}{path}&{query}"),
        (false, false) => format!("ws://{host}{path}?{query}"),
    };
    let tcp = TcpStream::connect(&host).await?;
    let request = tokio_tungstenite::tungstenite::http::Request::builder()
        .uri(uri)
        .header("Host", &host)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .header(WS_PROTOCOL_HEADER, protocols)
        .body(())
        .map_err(std::io::Error::other)?;
    let (ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(std::io::Error::other)?;
    let protocol = response
        .headers()
        .get(WS_PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((ws, protocol))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_first_supported_protocol_wins() {
        let mut h = HeaderMap::new();
        h.append(
            PROTOCOL_HEADER,
            HeaderValue::from_static("v9.channel.k8s.io"),
        );
        h.append(
            PROTOCOL_HEADER,
            HeaderValue::from_static("v4.channel.k8s.io, v3.channel.k8s.io"),
        );
        let ours = [
            "v5.channel.k8s.io",
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
        ];
        assert_eq!(
            negotiate(&h, PROTOCOL_HEADER, &ours).unwrap(),
            "v4.channel.k8s.io"
        );
        assert_eq!(
            negotiate(&HeaderMap::new(), PROTOCOL_HEADER, &ours).unwrap(),
            ""
        );
        let mut none = HeaderMap::new();
        none.insert(
            PROTOCOL_HEADER,
            HeaderValue::from_static("v9.channel.k8s.io"),
        );
        assert!(negotiate(&none, PROTOCOL_HEADER, &ours)
            .unwrap_err()
            .contains("v9"));
        assert_eq!(
            split_url("http://127.0.0.1:1/exec/abc").unwrap(),
            ("127.0.0.1:1".to_owned(), "/exec/abc".to_owned())
        );
    }
}
