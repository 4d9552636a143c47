//! The baseline of `benches/ingress_load.py`: hyper (HTTP/1.1 and HTTP/2,
//! cleartext and TLS) and quinn + h3 (HTTP/3) answering every request with
//! the bytes Outpost's hello-world fixture answers, without JavaScript,
//! routing or limits.
//!
//! Usage: `bare-server --cert-dir DIR --http PORT --https PORT` (HTTP/3 on
//! the HTTPS port over UDP); `bare-server --write-cert DIR` writes a CA
//! (`ca.pem`) and a certificate for 127.0.0.1/localhost (`cert.pem`,
//! `key.pem`) for both servers to use.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const BODY: &[u8] = b"Hello from Outpost!\n";

fn response() -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .header("content-type", "text/plain;charset=UTF-8")
        .body(Full::new(Bytes::from_static(BODY)))
        .expect("a valid response")
}

fn write_cert(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "bench CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

fn tls_config(dir: &std::path::Path, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("cert.pem")).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn serve_tcp(address: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) {
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(|_request| async { Ok::<_, std::convert::Infallible>(response()) });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => builder.serve_connection(TokioIo::new(stream), service).await,
                    Err(_) => return,
                },
                None => builder.serve_connection(TokioIo::new(stream), service).await,
            };
        });
    }
}

async fn serve_h3(address: SocketAddr, tls: Arc<rustls::ServerConfig>) {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let endpoint = quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(crypto)), address).unwrap();
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else { return };
            let Ok(mut h3) = h3::server::builder().build::<_, Bytes>(h3_quinn::Connection::new(connection)).await
            else {
                return;
            };
            while let Ok(Some(resolver)) = h3.accept().await {
                tokio::spawn(async move {
                    let Ok((_request, mut stream)) = resolver.resolve_request().await else { return };
                    let (parts, _) = response().into_parts();
                    if stream.send_response(http::Response::from_parts(parts, ())).await.is_ok()
                        && stream.send_data(Bytes::from_static(BODY)).await.is_ok()
                    {
                        let _ = stream.finish().await;
                    }
                });
            }
        });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    if let Some(dir) = value("--write-cert") {
        return write_cert(std::path::Path::new(&dir));
    }
    let dir = std::path::PathBuf::from(value("--cert-dir").expect("--cert-dir DIR"));
    let http: u16 = value("--http").expect("--http PORT").parse().unwrap();
    let https: u16 = value("--https").expect("--https PORT").parse().unwrap();
    // The same shape as `outpost serve` on this machine: one thread for the
    // front (Outpost's other threads run isolates).
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls_config(&dir, &[b"h2", b"http/1.1"]));
        let h3 = tls_config(&dir, &[b"h3"]);
        println!("bare-server: ready");
        tokio::join!(
            serve_tcp(([127, 0, 0, 1], http).into(), None),
            serve_tcp(([127, 0, 0, 1], https).into(), Some(acceptor)),
            serve_h3(([127, 0, 0, 1], https).into(), h3),
        );
    });
}
