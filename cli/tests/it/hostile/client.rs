//! A client attacking the front with raw bytes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{attack, hostile_node, Bystander};

/// Tells what the worker saw of the request.
const MIRROR: &str = r#"export default { async fetch(request) {
  const url = new URL(request.url);
  if (url.pathname === "/body") return new Response(`read ${(await request.arrayBuffer()).byteLength}`);
  if (url.pathname === "/ws") {
    const [client, server] = Object.values(new WebSocketPair());
    server.accept();
    server.addEventListener("message", (event) => server.send(`echo ${event.data.length ?? event.data.byteLength}`));
    return new Response(null, { status: 101, webSocket: client });
  }
  return Response.json({ url: request.url, headers: Object.fromEntries(request.headers) });
} };"#;

/// Writes `request` on a new connection and reads until the server closes
/// it or stays silent for a second.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), socket.read(&mut buffer)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn the_host_header_cannot_rewrite_the_url() {
    let mut node = hostile_node(MIRROR, "", "", &[]);
    let addr = node.http.unwrap();
    let bystander = Bystander::watch(addr);
    for (head, what) in [
        ("GET /anything HTTP/1.1\r\nHost: attacker.test/vault#\r\n\r\n", "a path in Host"),
        ("GET /anything HTTP/1.1\r\nHost: attacker.test\r\nHost: innocent.test\r\n\r\n", "two Hosts"),
        ("GET /anything HTTP/1.1\r\nHost: user@attacker.test\r\n\r\n", "user info in Host"),
        ("GET /anything HTTP/1.1\r\nConnection: close\r\n\r\n", "no Host"),
        ("GET /anything HTTP/1.1\r\nHost: attacker.test:99999\r\n\r\n", "a bad port"),
    ] {
        let answer = raw(addr, head.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
        assert!(!answer.contains("\"url\""), "{what} reached the worker: {answer}");
    }
    // A good request: the URL is made of the checked host and the path.
    let answer = raw(addr, b"GET /anything?x=1 HTTP/1.1\r\nHost: attacker.test\r\nConnection: close\r\n\r\n").await;
    assert!(answer.contains("\"url\":\"http://attacker.test/anything?x=1\""), "{answer}");
    bystander.assert_unharmed(&mut node).await;
}

#[tokio::test]
async fn edge_headers_from_the_client_are_not_believed() {
    let mut node = hostile_node(MIRROR, "", "", &[]);
    let addr = node.http.unwrap();
    let reply = crate::support::send(
        addr,
        "GET",
        "/",
        &[
            ("host", "attacker.test"),
            ("x-request-id", "forged-id"),
            ("x-forwarded-for", "203.0.113.9"),
            ("cf-ray", "forged-ray"),
            ("cf-ipcountry", "US"),
            ("cf-connecting-ip", "203.0.113.9"),
        ],
        b"",
    )
    .await;
    let bystander = Bystander::watch(addr);
    let seen: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let headers = &seen["headers"];
    assert_ne!(headers["x-request-id"], "forged-id", "{seen}");
    assert_eq!(headers["x-request-id"].as_str(), reply.header("x-request-id"), "{seen}");
    assert_eq!(headers["cf-ray"], headers["x-request-id"], "{seen}");
    assert!(headers.get("cf-ipcountry").is_none(), "{seen}");
    assert_eq!(headers["cf-connecting-ip"], "127.0.0.1", "{seen}");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1", "{seen}");
    bystander.assert_unharmed(&mut node).await;
}

#[tokio::test]
async fn malformed_bodies_and_connect_are_the_clients_fault() {
    let mut node = hostile_node(MIRROR, "", "", &[]);
    let addr = node.http.unwrap();
    let bystander = Bystander::watch(addr);
    let chunked = raw(
        addr,
        b"POST /body HTTP/1.1\r\nHost: attacker.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot hex\r\n0\r\n\r\n",
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 400"), "{chunked}");
    let connect = raw(addr, b"CONNECT attacker.test:443 HTTP/1.1\r\nHost: attacker.test:443\r\n\r\n").await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");
    // The connection was not turned into a tunnel: the answer is all there is.
    assert!(!connect.contains("\"url\""), "{connect}");
    bystander.assert_unharmed(&mut node).await;
}

#[tokio::test]
async fn silent_connections_are_closed_at_the_head_timeout() {
    let mut node = hostile_node(MIRROR, "", "[limits]\nmax_connections = 50\nheader_timeout_ms = 500\n", &[]);
    let addr = node.http.unwrap();
    // 60 connections that never send a whole request: more than the node
    // admits. Some send nothing at all, some the first byte of an HTTP/2
    // preface (which hyper waits for whole), some half a head.
    let mut silent = Vec::new();
    for i in 0..60 {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        match i % 3 {
            0 => {}
            1 => socket.write_all(b"P").await.unwrap(),
            _ => socket.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap(),
        }
        silent.push(socket);
    }
    // They are closed after the head timeout, and a real client gets in.
    let reply = attack(addr, "GET", "/", Duration::from_secs(10))
        .await
        .expect("a normal client is served while silent connections wait");
    assert_eq!(reply.status, 200);
    let bystander = Bystander::watch(addr);
    let mut closed = 0;
    for socket in &mut silent {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut byte)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 60, "every silent connection is closed");
    bystander.assert_unharmed(&mut node).await;
}

/// A WebSocket opened by hand: the handshake, then raw frames.
async fn raw_websocket(addr: SocketAddr) -> tokio::net::TcpStream {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: attacker.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        socket.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    socket
}

/// A client frame: masked (with a zero mask, so the payload is as given)
/// unless `masked` is false.
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n < 65536 => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&[0, 0, 0, 0]);
    }
    out.extend_from_slice(payload);
    out
}

/// Reads server frames until a close frame; returns its code.
async fn close_code(socket: &mut tokio::net::TcpStream) -> Option<u16> {
    let read = async {
        loop {
            let mut head = [0u8; 2];
            socket.read_exact(&mut head).await.ok()?;
            let mut len = u64::from(head[1] & 0x7f);
            if len == 126 {
                let mut ext = [0u8; 2];
                socket.read_exact(&mut ext).await.ok()?;
                len = u64::from(u16::from_be_bytes(ext));
            } else if len == 127 {
                let mut ext = [0u8; 8];
                socket.read_exact(&mut ext).await.ok()?;
                len = u64::from_be_bytes(ext);
            }
            let mut payload = vec![0u8; len as usize];
            socket.read_exact(&mut payload).await.ok()?;
            if head[0] & 0x0f == 0x8 {
                return payload.get(..2).map(|code| u16::from_be_bytes([code[0], code[1]]));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.ok().flatten()
}

#[tokio::test]
async fn websocket_protocol_errors_close_with_their_codes() {
    let mut node = hostile_node(MIRROR, "", "", &[]);
    let addr = node.http.unwrap();
    let bystander = Bystander::watch(addr);
    // A client's close is echoed.
    let mut socket = raw_websocket(addr).await;
    socket.write_all(&frame(0x8, &4000u16.to_be_bytes(), true)).await.unwrap();
    assert_eq!(close_code(&mut socket).await, Some(4000));
    // An unmasked client frame is a protocol error: 1002.
    let mut socket = raw_websocket(addr).await;
    socket.write_all(&frame(0x1, b"hi", false)).await.unwrap();
    assert_eq!(close_code(&mut socket).await, Some(1002));
    // Text that is not UTF-8: 1007.
    let mut socket = raw_websocket(addr).await;
    socket.write_all(&frame(0x1, &[0xff, 0xfe, 0xfd], true)).await.unwrap();
    assert_eq!(close_code(&mut socket).await, Some(1007));
    // A message over 1 MiB: 1009, as soon as its header says so.
    let mut socket = raw_websocket(addr).await;
    let mut big = frame(0x2, &vec![7u8; 2 << 20], true);
    big.truncate(256);
    socket.write_all(&big).await.unwrap();
    assert_eq!(close_code(&mut socket).await, Some(1009));
    bystander.assert_unharmed(&mut node).await;
}

#[tokio::test]
async fn routes_match_the_path_the_worker_sees() {
    // /admin/ of the attacker's host belongs to the innocent worker.
    let routes = "[[routes]]\npattern = \"attacker.test/admin/*\"\nworker = \"innocent\"\n";
    let mut node = hostile_node(MIRROR, "", routes, &[]);
    let addr = node.http.unwrap();
    let bystander = Bystander::watch(addr);
    for target in ["/x/../admin/y", "/x/%2e%2e/admin/y", "/x/./../admin/y"] {
        let head = format!("GET {target} HTTP/1.1\r\nHost: attacker.test\r\nConnection: close\r\n\r\n");
        let answer = raw(addr, head.as_bytes()).await;
        assert!(answer.ends_with("innocent ok"), "{target} was not routed as the path it means: {answer}");
    }
    // And the worker sees the same path the router matched.
    let answer = raw(addr, b"GET /admin/../z HTTP/1.1\r\nHost: attacker.test\r\nConnection: close\r\n\r\n").await;
    assert!(answer.contains("\"url\":\"http://attacker.test/z\""), "{answer}");
    bystander.assert_unharmed(&mut node).await;
}
