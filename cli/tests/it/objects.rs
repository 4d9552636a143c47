//! Durable Objects through real workers: one instance per id, events one
//! at a time, storage that survives a crash, alarms that fire (after a
//! restart too) and retry.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{self, worker, Dev};

fn json(reply: &support::Reply) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.text());
    serde_json::from_slice(&reply.body).unwrap_or_else(|err| panic!("not JSON ({err}): {}", reply.text()))
}

/// Polls `path` until `done` holds for its JSON (alarms fire on their own time).
async fn poll_until(dev: &Dev, path: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let value = json(&support::get(dev.addr, path).await);
        if done(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{path} never got there; last {value}; logs:\n{}", dev.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn concurrent_increments_never_interleave_inside_storage_calls() {
    let dev = Dev::start(&support::fixture("durable-objects"), &[]);
    // Each request reads the count, then writes count + 1: without the input
    // gate, requests delivered between the read and the write would repeat
    // values.
    let requests = (0..40).map(|_| support::get(dev.addr, "/counter/increment?name=burst"));
    let replies = futures::future::join_all(requests).await;
    let values: BTreeSet<u64> = replies.iter().map(|reply| json(reply)["value"].as_u64().unwrap()).collect();
    assert_eq!(values, (1..=40).collect(), "every increment saw the one before it");
    assert_eq!(json(&support::get(dev.addr, "/counter/read?name=burst").await)["value"], 40);
}

#[tokio::test]
async fn one_instance_per_id_even_when_every_request_gets_its_own_isolate() {
    let dir = worker(&[
        (
            "outpost.toml",
            "name = \"solo\"\nisolation = \"per-request\"\n[[durable_objects.bindings]]\nname = \"HITS\"\nclass_name = \"Hits\"\n",
        ),
        (
            "worker.js",
            r#"
            let constructed = 0;
            export class Hits {
              constructor() { constructed++; this.count = 0; }
              fetch() { this.count++; return Response.json({ count: this.count, constructed }); }
            }
            export default {
              fetch(request, env) {
                const name = new URL(request.url).searchParams.get("name");
                return env.HITS.get(env.HITS.idFromName(name)).fetch(request);
              },
            };
            "#,
        ),
    ]);
    let dev = Dev::start(dir.path(), &[]);
    for expected in 1..=5 {
        let reply = json(&support::get(dev.addr, "/?name=a").await);
        assert_eq!(reply["count"], expected, "the same in-memory instance answers: {reply}");
        assert_eq!(reply["constructed"], 1, "constructed once: {reply}");
    }
    let other = json(&support::get(dev.addr, "/?name=b").await);
    assert_eq!((other["count"].as_u64(), other["constructed"].as_u64()), (Some(1), Some(2)));
}

#[tokio::test]
async fn storage_survives_a_kill() {
    let fixture = support::fixture("durable-objects");
    let dev = Dev::start(&fixture, &[]);
    for _ in 0..3 {
        json(&support::get(dev.addr, "/counter/increment?name=durable").await);
    }
    // SIGKILL: no shutdown path runs. Acknowledged writes are on disk.
    let data_dir = dev.stop();
    let dev = Dev::start_in(&fixture, data_dir, &[]);
    assert_eq!(json(&support::get(dev.addr, "/counter/read?name=durable").await)["value"], 3);
}

#[tokio::test]
async fn alarms_fire_and_failed_runs_are_retried() {
    let dev = Dev::start(&support::fixture("durable-objects"), &[]);
    json(&support::get(dev.addr, "/counter/alarm-set?name=ring&in=200").await);
    let status = poll_until(&dev, "/counter/alarm-status?name=ring", Duration::from_secs(10), |v| {
        v["runs"].as_array().is_some_and(|runs| !runs.is_empty()) && v["alarm"].is_null()
    })
    .await;
    assert_eq!(status["runs"], serde_json::json!([{ "retryCount": 0, "isRetry": false }]));

    // The first run throws: the alarm stays set, and runs again (2 s later).
    json(&support::get(dev.addr, "/counter/alarm-set?name=flaky&in=0&mode=fail-once").await);
    let status = poll_until(&dev, "/counter/alarm-status?name=flaky", Duration::from_secs(15), |v| {
        v["runs"].as_array().is_some_and(|runs| runs.len() == 2) && v["alarm"].is_null()
    })
    .await;
    assert_eq!(
        status["runs"],
        serde_json::json!([{ "retryCount": 0, "isRetry": false }, { "retryCount": 1, "isRetry": true }])
    );
    assert!(dev.logs().contains("the first alarm run fails on purpose"), "the failure is logged");
}

#[tokio::test]
async fn an_alarm_set_before_a_crash_fires_after_the_restart() {
    let fixture = support::fixture("durable-objects");
    let dev = Dev::start(&fixture, &[]);
    json(&support::get(dev.addr, "/counter/alarm-set?name=phoenix&in=1500").await);
    let data_dir = dev.stop();
    let dev = Dev::start_in(&fixture, data_dir, &[]);
    let status = poll_until(&dev, "/counter/alarm-status?name=phoenix", Duration::from_secs(10), |v| {
        v["runs"].as_array().is_some_and(|runs| !runs.is_empty())
    })
    .await;
    assert_eq!(status["runs"].as_array().unwrap().len(), 1);
}

/// The chat-room pattern: the worker passes WebSocket upgrades to one
/// object through its stub, the object accepts them and talks to every
/// client; the worker returns the stub's response as is, or rewraps its
/// `webSocket` in a new Response.
#[tokio::test]
async fn websockets_pass_through_stubs_to_the_object_that_accepts_them() {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let dir = worker(&[
        ("outpost.toml", "name = \"chat\"\n[[durable_objects.bindings]]\nname = \"ROOM\"\nclass_name = \"Room\"\n"),
        (
            "worker.js",
            r#"
            export class Room {
              constructor() { this.sockets = new Set(); }
              fetch(request) {
                const url = new URL(request.url);
                if (url.pathname === "/count") return Response.json({ sockets: this.sockets.size });
                const [client, server] = Object.values(new WebSocketPair());
                server.accept();
                this.sockets.add(server);
                const who = url.searchParams.get("who");
                server.addEventListener("message", (event) => {
                  for (const socket of this.sockets) socket.send(`${who}: ${event.data}`);
                });
                server.addEventListener("close", () => this.sockets.delete(server));
                return new Response(null, { status: 101, webSocket: client });
              }
            }
            export default {
              async fetch(request, env) {
                const stub = env.ROOM.get(env.ROOM.idFromName("lobby"));
                if (new URL(request.url).searchParams.has("drop")) {
                  // Kept (so no garbage collection closes it), not returned.
                  globalThis.kept = await stub.fetch(request);
                  return new Response("dropped");
                }
                if (new URL(request.url).searchParams.has("rewrap")) {
                  const answer = await stub.fetch(request);
                  if (answer.status !== 101 || answer.webSocket === null) return new Response("no socket", { status: 500 });
                  return new Response(null, { status: 101, webSocket: answer.webSocket });
                }
                return stub.fetch(request);
              },
            };
            "#,
        ),
    ]);
    let dev = Dev::start(dir.path(), &[]);
    let connect = |path: &'static str| {
        let addr = dev.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (socket, response) =
                tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp).await.expect("the upgrade succeeds");
            assert_eq!(response.status(), 101);
            socket
        }
    };
    let mut a = connect("/chat?who=a").await;
    let mut b = connect("/chat?who=b&rewrap=1").await;
    let next = |message: Option<Result<Message, _>>| message.expect("a message").expect("no error");
    a.send(Message::text("hi")).await.unwrap();
    assert_eq!(next(a.next().await), Message::text("a: hi"));
    assert_eq!(next(b.next().await), Message::text("a: hi"));
    b.send(Message::text("yo")).await.unwrap();
    assert_eq!(next(a.next().await), Message::text("b: yo"));
    assert_eq!(next(b.next().await), Message::text("b: yo"));
    // The object keeps answering ordinary requests while sockets are open.
    assert_eq!(json(&support::get(dev.addr, "/count").await)["sockets"], 2);
    a.close(None).await.unwrap();
    let after = poll_until(&dev, "/count", Duration::from_secs(10), |reply| reply["sockets"] == 1).await;
    assert_eq!(after["sockets"], 1);
    b.send(Message::text("alone")).await.unwrap();
    assert_eq!(next(b.next().await), Message::text("b: alone"));

    // A socket the worker got from the object but did not return is closed
    // when its request ends: the object sees the close.
    let upgrade = [
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let dropped = support::send(dev.addr, "GET", "/chat?who=c&drop=1", &upgrade, b"").await;
    assert_eq!((dropped.status, dropped.text().as_str()), (200, "dropped"));
    let after = poll_until(&dev, "/count", Duration::from_secs(10), |reply| reply["sockets"] == 1).await;
    assert_eq!(after["sockets"], 1, "the dropped socket was closed");

    // Shutting down closes the object's sockets as going away (1001), and
    // the node exits without waiting for the client to leave.
    let mut dev = dev;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(dev.pid(), libc::SIGTERM) };
    match tokio::time::timeout(Duration::from_secs(10), b.next()).await.expect("a close frame in time") {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
    let status = dev.wait_exit(Duration::from_secs(10)).expect("the node exits");
    assert!(status.success(), "{status:?}; logs:\n{}", dev.logs());
}
