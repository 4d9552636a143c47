//! WebSocket upgrades at the front: which requests ask for one (HTTP/1.1
//! `Upgrade`, HTTP/2 extended CONNECT), and moving bytes between the
//! upgraded connection and the worker's end of the pipe.

use std::sync::Arc;

use hyper_util::rt::TokioIo;

use crate::server::Connection;

pub(crate) fn is_h2_websocket<B>(request: &http::Request<B>) -> bool {
    request.version() == http::Version::HTTP_2
        && request.method() == http::Method::CONNECT
        && request
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

pub(crate) fn is_websocket_upgrade<B>(request: &http::Request<B>) -> bool {
    let has =
        |name: http::header::HeaderName, token: &str| {
            request.headers().get_all(name).iter().any(|value| {
                value.to_str().is_ok_and(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
            })
        };
    request.version() <= http::Version::HTTP_11
        && has(http::header::UPGRADE, "websocket")
        && has(http::header::CONNECTION, "upgrade")
}

/// Moves bytes between the upgraded connection and the worker's socket
/// until either side closes.
/// The connection (and its place under `max_connections`) lives as long.
pub(crate) async fn join_upgraded(
    upgrade: hyper::upgrade::OnUpgrade,
    mut pipe: tokio::io::DuplexStream,
    connection: Arc<Connection>,
) {
    let client = connection.client;
    match upgrade.await {
        Ok(upgraded) => {
            if let Err(err) = relay(TokioIo::new(upgraded), &mut pipe).await {
                tracing::debug!(%client, "WebSocket connection ended: {err}");
            }
        }
        Err(err) => tracing::debug!(%client, "the upgrade failed: {err}"),
    }
}

/// Copies bytes both ways until the worker's side ends: then the connection
/// ends too, even if the client stays silent (the socket is closed; nothing
/// it sends could be delivered). A client that ends first still gets what
/// the worker sends until the worker's side ends.
async fn relay(
    client: impl tokio::io::AsyncRead + tokio::io::AsyncWrite,
    pipe: &mut tokio::io::DuplexStream,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut pipe_read, mut pipe_write) = tokio::io::split(pipe);
    let to_client = async {
        let copied = tokio::io::copy(&mut pipe_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
        copied
    };
    let to_worker = async {
        let copied = tokio::io::copy(&mut client_read, &mut pipe_write).await;
        let _ = pipe_write.shutdown().await;
        copied
    };
    tokio::pin!(to_client, to_worker);
    tokio::select! {
        done = &mut to_client => done.map(drop),
        done = &mut to_worker => {
            // The worker's last frames (its close) still go out.
            let sent = to_client.await;
            done.and(sent).map(drop)
        }
    }
}
