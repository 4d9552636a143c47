//! The front fuzzed with raw bytes on an in-memory connection: request
//! heads, chunked bodies, pipelines, upgrades, garbage. Whatever arrives,
//! the front answers with a well-formed status line (never a 500 for the
//! client's own mistakes) or closes the connection, and a worker only ever
//! sees a URL built from a valid host.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::body::FirstByteDeadline;
use crate::handler::{Body, Handler, HandlerError, RequestContext};
use crate::head::valid_authority;
use crate::server::{serve_io, Connection, ServerConfig, Shared};

/// A worker stand-in: checks what the front hands it, reads the body.
struct Probe;

impl Handler for Probe {
    fn handle(
        &self,
        request: http::Request<Body>,
        context: RequestContext,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Body>, HandlerError>> + Send>> {
        Box::pin(async move {
            let uri: http::Uri = context.url.parse().unwrap_or_else(|err| panic!("bad URL {:?}: {err}", context.url));
            let authority = uri.authority().unwrap_or_else(|| panic!("no host in {:?}", context.url));
            assert!(valid_authority(authority.as_str()), "the worker got host {authority:?}");
            assert!(request.headers().get("cf-connecting-ip").is_some(), "no client address");
            match request.into_body().collect().await {
                Ok(body) => {
                    let text = body.to_bytes().len().to_string();
                    Ok(http::Response::new(Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed_unsync()))
                }
                Err(_) => Err(HandlerError::WorkerFailed),
            }
        })
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
}

/// Sends `input` on one connection and returns what came back.
fn exchange(input: &[u8]) -> Vec<u8> {
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let config = ServerConfig {
                max_body_bytes: 4096,
                max_header_bytes: 8192,
                // Short, so that an input that stalls costs little time.
                header_read_timeout: Duration::from_millis(50),
                body_read_timeout: Duration::from_millis(50),
                ..ServerConfig::default()
            };
            let timeout = config.header_read_timeout;
            let shared = Arc::new(Shared::new(config, Arc::new(Probe)));
            let connection = Arc::new(Connection {
                client: "192.0.2.1:4000".parse().unwrap(),
                local: "127.0.0.1:80".parse().unwrap(),
                tls: None,
                alt_svc: None,
                _permit: None,
            });
            let (client, server) = tokio::io::duplex(1 << 16);
            let graceful = GracefulShutdown::new();
            let io = TokioIo::new(FirstByteDeadline::new(server, timeout));
            let served = tokio::spawn(serve_io(io, connection, graceful.watcher(), shared));
            let (mut read, mut write) = tokio::io::split(client);
            let writing = async {
                let _ = write.write_all(input).await;
                let _ = write.shutdown().await;
            };
            let mut output = Vec::new();
            let reading = tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut output));
            let (_, read) = tokio::join!(writing, reading);
            assert!(read.is_ok(), "the connection was neither answered nor closed within 10 s");
            served.abort();
            // A panic in the connection's task (the handler's checks) is
            // this input's failure.
            if let Err(err) = served.await {
                if err.is_panic() {
                    std::panic::resume_unwind(err.into_panic());
                }
            }
            output
        })
    })
}

/// The invariants, and an outcome: the statuses of the responses.
fn check(input: &[u8]) -> u64 {
    let output = exchange(input);
    if input.starts_with(b"PRI * HTTP/2.0") {
        // HTTP/2 frames: hyper's own business; no hang is all we ask.
        return 2;
    }
    let text = String::from_utf8_lossy(&output);
    // The outcome: which statuses were answered (not how many of each).
    let mut statuses = std::collections::BTreeSet::new();
    for response in text.split("HTTP/1.").skip(1) {
        let status: u16 = response
            .get(2..5)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("a malformed status line in {text:?}"));
        assert!((100..600).contains(&status), "status {status}");
        assert_ne!(status, 500, "the client's mistake answered as the worker's: {text:?}");
        statuses.insert(status);
    }
    let outcome =
        statuses.iter().fold(1u64, |outcome, status| outcome.wrapping_mul(1009).wrapping_add(u64::from(*status)));
    if !output.is_empty() {
        assert!(output.starts_with(b"HTTP/1."), "output that is not a response: {text:?}");
    }
    outcome
}

const SEEDS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
    b"GET /x?y=1 HTTP/1.1\r\nHost: a.test:8080\r\nConnection: close\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"GET http://b.test/abs HTTP/1.1\r\nHost: a.test\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a.test/vault#\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n",
    b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 99999\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n",
    b"",
];

const DICTIONARY: &[&[u8]] = &[
    b"\r\n",
    b"Host: ",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"0\r\n\r\n",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"GET ",
    b"POST ",
    b"CONNECT ",
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"x-request-id: ",
    b"cf-connecting-ip: 1.2.3.4\r\n",
    b"@",
    b"#",
    b"%2f",
    b"[::1]",
    b":65536",
];

#[test]
fn fuzz_http1_heads_and_bodies() {
    let report =
        outpost_fuzz::run(&outpost_fuzz::Target { name: "ingress-http1", seeds: SEEDS, dictionary: DICTIONARY }, check);
    assert!(report.outcomes > 1, "{report:?}");
}
