//! Bodies stream both ways: nothing is buffered whole, backpressure holds,
//! and a failure mid-body is visible to the client.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

use crate::support::{self, Dev};

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn request_and_response_bodies_stream_interactively() {
    let dev = Dev::start(&support::fixture("streams"), &[]);
    let mut sender = support::connect(dev.addr).await;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    let body = StreamBody::new(receiver_stream(rx)).boxed_unsync();
    let request = http::Request::post("/echo").header("host", "localhost").body(body).unwrap();
    // The worker echoes each chunk as it arrives. If either direction were
    // buffered whole, the second chunk would never be asked for: deadlock.
    let exchange = async {
        tx.send(Ok(Frame::data(Bytes::from_static(b"ping 1;")))).await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut seen = Vec::new();
        for round in 1..=3 {
            while seen.len() < round * 7 {
                let frame = body.frame().await.expect("more body").unwrap();
                seen.extend_from_slice(&frame.into_data().unwrap());
            }
            assert_eq!(&seen[(round - 1) * 7..], format!("ping {round};").as_bytes());
            if round < 3 {
                tx.send(Ok(Frame::data(Bytes::from(format!("ping {};", round + 1))))).await.unwrap();
            }
        }
        drop(tx);
        assert!(body.frame().await.is_none(), "the body ends when the request body ends");
    };
    tokio::time::timeout(LIMIT, exchange).await.expect("bodies stream without waiting for their end");
}

/// `StreamBody` wants a `Stream`; an mpsc receiver becomes one.
fn receiver_stream<T>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn large_bodies_pass_through() {
    let dev = Dev::start(&support::fixture("streams"), &[]);
    let payload = vec![b'x'; 8 * 1024 * 1024];
    let reply = support::send(dev.addr, "POST", "/count", &[], &payload).await;
    assert_eq!(reply.text(), r#"{"bytes":8388608}"#);
    let reply = support::send(dev.addr, "POST", "/echo", &[], &payload).await;
    assert_eq!(reply.body.len(), payload.len());
}

#[tokio::test]
async fn a_stream_failing_midway_cuts_the_response() {
    let dev = Dev::start(&support::fixture("streams"), &[]);
    let mut sender = support::connect(dev.addr).await;
    let request = http::Request::get("/fail-midway")
        .header("host", "localhost")
        .body(http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first part\n");
    // The client must not mistake the cut body for a complete one.
    let rest = tokio::time::timeout(LIMIT, body.collect()).await.unwrap();
    assert!(rest.is_err(), "a failed stream ends in an error, not a clean end");
    dev.wait_for_log("the producer failed");
    assert_eq!(support::get(dev.addr, "/text-streams").await.text(), "héllo wörld");
}

#[tokio::test]
async fn a_client_going_away_cancels_the_worker_stream() {
    let dev = Dev::start(&support::fixture("streams"), &[]);
    {
        let mut sender = support::connect(dev.addr).await;
        let request = http::Request::get("/endless")
            .header("host", "localhost")
            .body(http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let mut body = response.into_body();
        body.frame().await.unwrap().unwrap();
        // Dropping the body and the connection closes the socket.
    }
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let stats: serde_json::Value =
            serde_json::from_slice(&support::get(dev.addr, "/endless-stats").await.body).unwrap();
        if stats["cancelled"] == 1 {
            assert_eq!(stats["started"], 1);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the endless stream was never cancelled: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
