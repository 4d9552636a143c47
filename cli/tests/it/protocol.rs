//! HTTP-level behaviour of the front: malformed requests never reach a worker.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, Dev};

async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test]
async fn malformed_requests_get_400_and_never_reach_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("worker.js"),
        "export default { fetch(request) { console.log('worker saw ' + request.method + ' ' + request.url); return new Response('ok'); } };\n",
    )
    .unwrap();
    let dev = Dev::start(dir.path(), &[]);
    let addr = dev.addr;

    // A well-formed keep-alive connection makes requests meanwhile.
    let healthy = tokio::spawn(async move {
        use http_body_util::BodyExt;
        let mut sender = support::connect(addr).await;
        let mut replies = Vec::new();
        for _ in 0..3 {
            let request = http::Request::get("/healthy")
                .header("host", addr.to_string())
                .body(http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            replies.push(response.into_body().collect().await.unwrap().to_bytes());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        replies
    });

    let garbage: [&[u8]; 4] = [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
    ];
    for bytes in garbage {
        let reply = raw_exchange(addr, bytes).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{:?} got {reply:?}", String::from_utf8_lossy(bytes));
    }
    let replies = healthy.await.unwrap();
    assert!(replies.iter().all(|body| body == "ok"), "{replies:?}");
    // Nothing but the healthy requests reached the worker.
    assert_eq!(support::get(addr, "/after").await.text(), "ok");
    let logs = dev.wait_for_log("/after");
    assert_eq!(logs.matches("worker saw").count(), 4, "{logs}");
}

#[tokio::test]
async fn oversized_headers_are_rejected() {
    let dev = Dev::start(&support::fixture("hello"), &[]);
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024));
    let reply = raw_exchange(dev.addr, big.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431") || reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    assert_eq!(support::get(dev.addr, "/").await.status, 200);
}
