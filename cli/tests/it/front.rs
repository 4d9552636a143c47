//! The node's front door with real clients: `outpost serve` with TLS
//! (HTTP/1.1 and HTTP/2 by ALPN, certificates by SNI, a CA made here),
//! h2c, routing, limits, graceful shutdown; `outpost dev --https`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{self, Node, Reply};

/// An HTTP/2 connection with prior knowledge (h2c).
async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(connection);
    sender
}

/// A WebSocket over HTTP/2 (extended CONNECT to `/chat`), after one plain
/// request answered `warm_status`: once that is answered the server's
/// settings (which allow extended CONNECT) have arrived.
async fn h2_websocket_connect(addr: SocketAddr, warm_status: u16) -> http::Response<hyper::body::Incoming> {
    let mut sender = h2c(addr).await;
    let warm = http::Request::get(format!("http://{addr}/")).body(Full::new(Bytes::new())).unwrap();
    assert_eq!(sender.send_request(warm).await.unwrap().status(), warm_status);
    let mut connect = http::Request::connect(format!("http://{addr}/chat"))
        .header("sec-websocket-version", "13")
        .body(Full::new(Bytes::new()))
        .unwrap();
    connect.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    sender.send_request(connect).await.unwrap()
}

/// An echo worker: says who it is and what it was told about the request.
const ECHO: &str = r#"
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/slow") await new Promise((resolve) => setTimeout(resolve, Number(url.searchParams.get("ms"))));
    const body = await request.arrayBuffer();
    return Response.json({
      worker: env.NAME,
      url: request.url,
      protocol: request.cf?.httpProtocol ?? null,
      tls: request.cf?.tlsVersion ?? null,
      ip: request.headers.get("cf-connecting-ip"),
      proto: request.headers.get("x-forwarded-proto"),
      bytes: body.byteLength,
    });
  },
};
"#;

/// A certificate authority made for one test, and certificates it signs.
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
        TestCa { cert: params.self_signed(&key).unwrap(), key }
    }

    /// `(chain PEM, key PEM, leaf DER)` for `names`.
    fn issue(&self, names: &[&str]) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        client_config(self.cert.der().clone(), alpn)
    }
}

fn client_config(ca: CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

fn worker_files(name: &str) -> Vec<(String, String)> {
    vec![
        (format!("workers/{name}/outpost.toml"), format!("name = \"{name}\"\n[vars]\nNAME = \"{name}\"\n")),
        (format!("workers/{name}/worker.js"), ECHO.to_string()),
    ]
}

fn json(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap_or_else(|err| panic!("not JSON ({err}): {}", reply.text()))
}

async fn read_reply<B>(response: http::Response<B>) -> Reply
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the whole body").to_bytes();
    Reply { status: parts.status.as_u16(), headers: parts.headers, body }
}

fn request(host: &str, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(path).header("host", host).body(Full::new(Bytes::new())).unwrap()
}

/// One request over TLS with `alpn`; also returns the leaf certificate the
/// server presented.
async fn https_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    path: &str,
) -> (Reply, Vec<u8>, Option<Vec<u8>>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let tls = connector.connect(name, tcp).await.expect("a TLS handshake the client trusts");
    let (_, session) = tls.get_ref();
    let leaf = session.peer_certificates().unwrap()[0].to_vec();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let io = TokioIo::new(tls);
    let reply = if alpn.as_deref() == Some(b"h2") {
        let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(connection);
        let uri = format!("https://{server_name}{path}");
        let request = http::Request::get(uri).body(Full::new(Bytes::new())).unwrap();
        read_reply(sender.send_request(request).await.unwrap()).await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        read_reply(sender.send_request(request(server_name, path)).await.unwrap()).await
    };
    (reply, leaf, alpn)
}

/// One HTTP/3 request with a quinn/h3 client.
async fn h3_request(addr: SocketAddr, ca: &TestCa, server_name: &str, method: &str, path: &str, body: &[u8]) -> Reply {
    let crypto = ca.client_config(&[b"h3"]);
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let connection = endpoint.connect(addr, server_name).unwrap().await.expect("a QUIC handshake the client trusts");
    let (mut driver, mut sender) = h3::client::new(h3_quinn::Connection::new(connection)).await.unwrap();
    let drive = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    let request = http::Request::builder().method(method).uri(format!("https://{server_name}{path}")).body(()).unwrap();
    let mut stream = sender.send_request(request).await.unwrap();
    if !body.is_empty() {
        stream.send_data(Bytes::copy_from_slice(body)).await.unwrap();
    }
    stream.finish().await.unwrap();
    let response = stream.recv_response().await.unwrap();
    let mut bytes = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        use bytes::Buf as _;
        while chunk.has_remaining() {
            let part = chunk.chunk();
            bytes.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    drop(sender);
    drive.abort();
    endpoint.close(0u32.into(), b"done");
    Reply { status: response.status().as_u16(), headers: response.headers().clone(), body: Bytes::from(bytes) }
}

fn tls_node(ca: &TestCa) -> (Node, Vec<u8>, Vec<u8>) {
    let (a_chain, a_key, a_der) = ca.issue(&["a.test"]);
    let (b_chain, b_key, b_der) = ca.issue(&["*.b.test"]);
    let mut files = worker_files("alpha");
    files.extend(worker_files("beta"));
    files.push(("certs/a.pem".into(), a_chain));
    files.push(("certs/a-key.pem".into(), a_key));
    files.push(("certs/b.pem".into(), b_chain));
    files.push(("certs/b-key.pem".into(), b_key));
    let node = Node::start(
        r#"
data_dir = "state"
[[listeners]]
address = "127.0.0.1:0"
tls = true
[[listeners]]
address = "127.0.0.1:0"
[[certificates]]
hosts = ["a.test"]
cert = "certs/a.pem"
key = "certs/a-key.pem"
[[certificates]]
hosts = ["*.b.test"]
cert = "certs/b.pem"
key = "certs/b-key.pem"
[[workers]]
path = "workers/alpha"
[[workers]]
path = "workers/beta"
[[routes]]
pattern = "a.test/*"
worker = "alpha"
[[routes]]
pattern = "*.b.test/*"
worker = "beta"
[[routes]]
pattern = "*.b.test/alpha/*"
worker = "alpha"
"#,
        &files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect::<Vec<_>>(),
    );
    (node, a_der, b_der)
}

#[tokio::test]
async fn https_serves_http1_and_http2_with_certificates_chosen_by_sni() {
    let ca = TestCa::new();
    let (node, a_der, b_der) = tls_node(&ca);
    let addr = node.https.expect("a TLS listener");

    let (reply, leaf, alpn) = https_get(addr, ca.client_config(&[b"h2"]), "a.test", "/x?y=1").await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(leaf, a_der, "the a.test certificate");
    let body = json(&reply);
    assert_eq!(body["worker"], "alpha");
    assert_eq!(body["protocol"], "HTTP/2");
    assert_eq!(body["tls"], "TLSv1.3");
    assert_eq!(body["url"], "https://a.test/x?y=1");
    assert_eq!(body["ip"], "127.0.0.1");
    assert_eq!(body["proto"], "https");
    assert!(reply.header("x-request-id").is_some());

    let (reply, leaf, alpn) = https_get(addr, ca.client_config(&[b"http/1.1"]), "shop.b.test", "/").await;
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(leaf, b_der, "the wildcard certificate for *.b.test");
    let body = json(&reply);
    assert_eq!((body["worker"].as_str(), body["protocol"].as_str()), (Some("beta"), Some("HTTP/1.1")));

    // The most specific route wins.
    let (reply, _, _) = https_get(addr, ca.client_config(&[b"h2"]), "shop.b.test", "/alpha/1").await;
    assert_eq!(json(&reply)["worker"], "alpha");
    // HTTPS responses advertise HTTP/3 on the same port.
    assert_eq!(reply.header("alt-svc"), Some(format!("h3=\":{}\"; ma=86400", addr.port()).as_str()));
    drop(node);
}

#[tokio::test]
async fn http3_serves_the_same_workers_over_quic() {
    let ca = TestCa::new();
    let (node, _, _) = tls_node(&ca);
    let addr = node.https.expect("a TLS listener");
    let reply = h3_request(addr, &ca, "a.test", "GET", "/over/quic", b"").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = json(&reply);
    assert_eq!(body["worker"], "alpha");
    assert_eq!(body["protocol"], "HTTP/3");
    assert_eq!(body["tls"], "TLSv1.3");
    assert_eq!(body["url"], "https://a.test/over/quic");
    assert!(reply.header("x-request-id").is_some());
    // A request body streams in.
    let reply = h3_request(addr, &ca, "x.b.test", "POST", "/upload", &[7u8; 100_000]).await;
    let body = json(&reply);
    assert_eq!((body["worker"].as_str(), body["bytes"].as_u64()), (Some("beta"), Some(100_000)));
}

#[tokio::test]
async fn cleartext_speaks_h2c_and_unrouted_hosts_get_404() {
    let ca = TestCa::new();
    let (node, _, _) = tls_node(&ca);
    let addr = node.http.expect("a cleartext listener");
    // HTTP/2 with prior knowledge.
    let mut sender = h2c(addr).await;
    let h2 = http::Request::get("http://a.test/h2c").body(Full::new(Bytes::new())).unwrap();
    let reply = read_reply(sender.send_request(h2).await.unwrap()).await;
    let body = json(&reply);
    assert_eq!((body["worker"].as_str(), body["protocol"].as_str()), (Some("alpha"), Some("HTTP/2")));
    assert_eq!(body["url"], "http://a.test/h2c");
    assert!(body["tls"].is_null());

    let reply = support::send(addr, "GET", "/", &[("host", "nowhere.example:8080")], b"").await;
    assert_eq!(reply.status, 404);
    assert!(reply.text().contains("nowhere.example"), "{}", reply.text());
}

fn limits_node(limits: &str) -> Node {
    let files = worker_files("alpha");
    Node::start(
        &format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[workers]]\npath = \"workers/alpha\"\n[[routes]]\npattern = \"*/*\"\nworker = \"alpha\"\n[limits]\n{limits}\n"
        ),
        &files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect::<Vec<_>>(),
    )
}

#[tokio::test]
async fn oversized_bodies_get_413_and_the_node_stays_healthy() {
    let node = limits_node("max_body_bytes = 1024");
    let addr = node.http.unwrap();
    let reply = support::send(addr, "POST", "/", &[], &[b'x'; 2048]).await;
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(reply.text().contains("1024"), "{}", reply.text());
    let reply = support::send(addr, "POST", "/", &[], &[b'x'; 1000]).await;
    assert_eq!(json(&reply)["bytes"], 1000);
}

#[tokio::test]
async fn a_slowloris_client_is_dropped_while_others_are_served() {
    let node = limits_node("header_timeout_ms = 500");
    let addr = node.http.unwrap();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n").await.unwrap();
    let started = Instant::now();
    let trickle = async {
        let mut buffer = [0u8; 256];
        loop {
            // One header byte at a time, never finishing the head.
            if slow.write_all(b"x").await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => return,
                Err(_) => {}
            }
            assert!(started.elapsed() < Duration::from_secs(10), "the slow client was never dropped");
        }
    };
    let (_, reply) = tokio::join!(trickle, support::get(addr, "/"));
    assert_eq!(reply.status, 200, "others are served meanwhile");
    assert!(started.elapsed() < Duration::from_secs(5), "dropped after {:?}", started.elapsed());
    assert!(!node.logs().contains("\"worker\""), "no worker saw the slow request");
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_then_exits_0() {
    let mut node = limits_node("shutdown_grace_ms = 5000");
    let addr = node.http.unwrap();
    let in_flight = tokio::spawn(async move { support::get(addr, "/slow?ms=800").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(node.pid(), libc::SIGTERM) };
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "the request in flight finished: {}", reply.text());
    let mut child = node.child.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the node did not exit; logs:\n{}", node.logs());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}; logs:\n{}", node.logs());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

#[tokio::test]
async fn dev_https_serves_with_a_local_ca() {
    let dir = support::fixture("hello");
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("dev")
        .arg(&dir)
        .args(["--port", "0", "--https", "--data-dir"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port: u16 = line.trim().rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap();
    let ca_pem = std::fs::read(data.path().join("tls/ca.pem")).unwrap();
    let ca = CertificateDer::from_pem_slice(&ca_pem).expect("a PEM certificate");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (reply, _, alpn) = https_get(addr, client_config(ca, &[b"h2", b"http/1.1"]), "localhost", "/").await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(reply.status, 200);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn websockets_the_cloudflare_way() {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let dir = support::worker(&[(
        "worker.js",
        r#"
        export default {
          fetch(request) {
            if (request.headers.get("upgrade") !== "websocket") {
              return new Response("expected a WebSocket", { status: 426 });
            }
            const [client, server] = Object.values(new WebSocketPair());
            server.accept();
            server.addEventListener("message", (event) => {
              if (event.data === "bye") server.close(1000, "see you");
              else if (event.data === "bad close") {
                try { server.close(1006); } catch (error) { server.send(error.name); }
              }
              else server.send(typeof event.data === "string" ? `echo: ${event.data}` : event.data);
            });
            // Sent before the response: delivered once the client is there.
            server.send("hello");
            return new Response(null, { status: 101, webSocket: client });
          },
        };
        "#,
    )]);
    let dev = support::Dev::start(dir.path(), &[]);
    let tcp = tokio::net::TcpStream::connect(dev.addr).await.unwrap();
    let (mut socket, response) =
        tokio_tungstenite::client_async(format!("ws://{}/chat", dev.addr), tcp).await.expect("the upgrade succeeds");
    assert_eq!(response.status(), 101);
    assert!(response.headers().get("x-request-id").is_some());
    let next = |message: Option<Result<Message, _>>| message.expect("a message").expect("no error");
    assert_eq!(next(socket.next().await), Message::text("hello"));
    socket.send(Message::text("hi")).await.unwrap();
    assert_eq!(next(socket.next().await), Message::text("echo: hi"));
    socket.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(next(socket.next().await), Message::binary(vec![1u8, 2, 3]));
    // 1006 is for the local side only: refused, the socket stays open.
    socket.send(Message::text("bad close")).await.unwrap();
    assert_eq!(next(socket.next().await), Message::text("InvalidAccessError"));
    socket.send(Message::text("bye")).await.unwrap();
    match next(socket.next().await) {
        Message::Close(Some(frame)) => assert_eq!((u16::from(frame.code), frame.reason.as_str()), (1000, "see you")),
        other => panic!("expected a close frame, got {other:?}"),
    }
    // An ordinary request to the same worker is not upgraded.
    assert_eq!(support::get(dev.addr, "/").await.status, 426);

    // The same worker over HTTP/2 (extended CONNECT, h2c here).
    let response = h2_websocket_connect(dev.addr, 426).await;
    assert_eq!(response.status(), 200, "extended CONNECT is accepted with 200");
    let upgraded = hyper::upgrade::on(response).await.expect("an HTTP/2 tunnel");
    let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    assert_eq!(next(socket.next().await), Message::text("hello"));
    socket.send(Message::text("over h2")).await.unwrap();
    assert_eq!(next(socket.next().await), Message::text("echo: over h2"));
}

#[tokio::test]
async fn connections_over_the_limit_wait_until_one_closes() {
    let node = limits_node("max_connections = 2");
    let addr = node.http.unwrap();
    let mut first = support::connect(addr).await;
    let mut second = support::connect(addr).await;
    let empty = || http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync();
    for sender in [&mut first, &mut second] {
        let request = http::Request::get("/").header("host", "a.test").body(empty()).unwrap();
        assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    }
    // Both connections stay open (keep-alive): a third waits in the backlog.
    let third = tokio::spawn(async move { support::get(addr, "/").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third connection was served while two were open");
    drop(first);
    let reply = tokio::time::timeout(Duration::from_secs(5), third).await.expect("served once one closed").unwrap();
    assert_eq!(reply.status, 200);
    drop(second);
}

#[tokio::test]
async fn sighup_reloads_workers_and_routes_without_dropping_the_node() {
    let node = limits_node("");
    let addr = node.http.unwrap();
    assert_eq!(json(&support::get(addr, "/").await)["worker"], "alpha");
    for (name, text) in worker_files("beta") {
        let path = node.dir().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let routed_to_beta = "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[workers]]\npath = \"workers/alpha\"\n[[workers]]\npath = \"workers/beta\"\n[[routes]]\npattern = \"*/*\"\nworker = \"beta\"\n";
    std::fs::write(node.dir().join("node.toml"), routed_to_beta).unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(node.pid(), libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while json(&support::get(addr, "/").await)["worker"] != "beta" {
        assert!(Instant::now() < deadline, "never routed to beta; logs:\n{}", node.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file changes nothing.
    std::fs::write(node.dir().join("node.toml"), "[[routes]]\npattern = \"*/*\"\nworker = \"nobody\"\n").unwrap();
    unsafe { libc::kill(node.pid(), libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.logs().contains("reload failed") {
        assert!(Instant::now() < deadline, "the failed reload was not logged; logs:\n{}", node.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(json(&support::get(addr, "/").await)["worker"], "beta");
}

#[tokio::test]
async fn a_body_that_stalls_fails_its_request_and_frees_the_worker() {
    let node = limits_node("body_timeout_ms = 300");
    let addr = node.http.unwrap();
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled.write_all(b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\n0123456789").await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    // The body never completes: the worker's read fails after 300 ms and
    // the request is answered (408, the client's fault), not held open.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buffer[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => panic!("the stalled request was never answered"),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(support::get(addr, "/").await.status, 200);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let node = limits_node("header_timeout_ms = 400");
    let addr = node.http.unwrap();
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let mut buffer = vec![0u8; 4096];
    let mut answered = false;
    // The answer, then nothing: the server closes the idle connection.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buffer)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => answered |= String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"),
            Ok(Err(_)) => break,
            Err(_) => panic!("an idle keep-alive connection stayed open"),
        }
    }
    assert!(answered);
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
}

#[tokio::test]
async fn an_http2_websocket_the_worker_does_not_accept_is_not_an_open_tunnel() {
    let dir = support::worker(&[("worker.js", "export default { fetch() { return new Response('plain'); } };\n")]);
    let dev = support::Dev::start(dir.path(), &[]);
    let response = h2_websocket_connect(dev.addr, 200).await;
    assert_eq!(response.status(), 502, "a 2xx would read as an accepted WebSocket");
}

/// A redeploy retires the old isolates: an object's WebSockets are closed
/// as going away (1001) so that the old instance ends and the new version's
/// instance is the only one (new clients meet it, not an empty twin).
#[tokio::test]
async fn a_redeploy_closes_the_old_objects_websockets() {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let room = r#"
        export class Room {
          constructor() { this.sockets = new Set(); }
          fetch(request) {
            if (new URL(request.url).pathname === "/count") return Response.json({ sockets: this.sockets.size });
            const [client, server] = Object.values(new WebSocketPair());
            server.accept();
            this.sockets.add(server);
            server.addEventListener("message", (event) => server.send(`${VERSION}: ${event.data}`));
            server.addEventListener("close", () => this.sockets.delete(server));
            return new Response(null, { status: 101, webSocket: client });
          }
        }
        export default {
          fetch(request, env) { return env.ROOM.get(env.ROOM.idFromName("lobby")).fetch(request); },
        };
    "#;
    let config = "name = \"chat\"\n[[durable_objects.bindings]]\nname = \"ROOM\"\nclass_name = \"Room\"\n";
    let node = Node::start(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[workers]]\npath = \"workers/chat\"\n[[routes]]\npattern = \"*/*\"\nworker = \"chat\"\n",
        &[
            ("workers/chat/outpost.toml", config.to_string()),
            ("workers/chat/worker.js", format!("const VERSION = \"v1\";\n{room}")),
        ],
    );
    let addr = node.http.unwrap();
    let connect = || async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio_tungstenite::client_async(format!("ws://{addr}/chat"), tcp).await.expect("the upgrade succeeds").0
    };
    let next = |message: Option<Result<Message, _>>| message.expect("a message").expect("no error");
    let mut old = connect().await;
    old.send(Message::text("hi")).await.unwrap();
    assert_eq!(next(old.next().await), Message::text("v1: hi"));

    std::fs::write(node.dir().join("workers/chat/worker.js"), format!("const VERSION = \"v2\";\n{room}")).unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(node.pid(), libc::SIGHUP) };
    match tokio::time::timeout(Duration::from_secs(10), old.next()).await.expect("a close frame in time") {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}; logs:\n{}", node.logs()),
    }
    // Reading on sends the client's half of the close handshake.
    let _ = old.next().await;
    let mut new = connect().await;
    new.send(Message::text("hi")).await.unwrap();
    assert_eq!(next(new.next().await), Message::text("v2: hi"));
    assert_eq!(json(&support::get(addr, "/count").await)["sockets"], 1, "one instance, with only the new socket");
}

/// A WebSocket's client end goes out in one response only: returning it
/// again fails that request and leaves the first connection working.
#[tokio::test]
async fn a_websocket_goes_out_in_one_response_only() {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let dir = support::worker(&[(
        "worker.js",
        r#"
        let sent = null;
        export default {
          fetch(request) {
            if (sent !== null) return new Response(null, { status: 101, webSocket: sent });
            const [client, server] = Object.values(new WebSocketPair());
            server.accept();
            server.addEventListener("message", (event) => server.send(`echo: ${event.data}`));
            sent = client;
            return new Response(null, { status: 101, webSocket: client });
          },
        };
        "#,
    )]);
    let dev = support::Dev::start(dir.path(), &[]);
    let tcp = tokio::net::TcpStream::connect(dev.addr).await.unwrap();
    let (mut first, _) = tokio_tungstenite::client_async(format!("ws://{}/", dev.addr), tcp).await.unwrap();
    let tcp = tokio::net::TcpStream::connect(dev.addr).await.unwrap();
    match tokio_tungstenite::client_async(format!("ws://{}/", dev.addr), tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 500),
        other => panic!("the second upgrade should fail with 500, got {:?}", other.map(|(_, r)| r.status())),
    }
    dev.wait_for_log("already went out in a response");
    first.send(Message::text("still here")).await.unwrap();
    let echoed = first.next().await.expect("a message").expect("no error");
    assert_eq!(echoed, Message::text("echo: still here"));
}
