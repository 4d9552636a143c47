//! An HTTP/3 load generator for `benches/ingress_load.py` (h2load here
//! has no HTTP/3): `c` QUIC connections, each keeping `m` requests in
//! flight, for `d` seconds; prints requests/second and latency.
//!
//! Usage: `h3-load --url https://127.0.0.1:PORT/ --ca CA.pem [-c 4] [-m 16] [-d 10]`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let url: http::Uri = value("--url").expect("--url").parse().unwrap();
    let ca = value("--ca").expect("--ca CA.pem");
    let connections: usize = value("-c").map_or(4, |v| v.parse().unwrap());
    let streams: usize = value("-m").map_or(16, |v| v.parse().unwrap());
    let seconds: u64 = value("-d").map_or(10, |v| v.parse().unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(run(url, ca, connections, streams, Duration::from_secs(seconds)));
}

async fn run(url: http::Uri, ca: String, connections: usize, streams: usize, duration: Duration) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&ca).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(crypto)).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let host = url.host().unwrap().to_string();
    let address = format!("{host}:{}", url.port_u16().unwrap_or(443)).parse().unwrap();

    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let connection = endpoint.connect(address, &host).unwrap().await.expect("QUIC handshake");
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(connection)).await.unwrap();
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        for _ in 0..streams {
            let mut sender = sender.clone();
            let (done, failed, stop, latencies, url) =
                (done.clone(), failed.clone(), stop.clone(), latencies.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let request = http::Request::get(url.clone()).body(()).unwrap();
                    let ok = async {
                        let mut stream = sender.send_request(request).await.ok()?;
                        stream.finish().await.ok()?;
                        let response = stream.recv_response().await.ok()?;
                        while let Some(mut chunk) = stream.recv_data().await.ok()? {
                            let _: Bytes = chunk.copy_to_bytes(chunk.remaining());
                        }
                        response.status().is_success().then_some(())
                    }
                    .await;
                    match ok {
                        Some(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            mine.push(started.elapsed());
                        }
                        None => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies.lock().unwrap().extend(mine);
            }));
        }
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for task in tasks {
        let _ = task.await;
    }
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort();
    let p50 = latencies.get(latencies.len() / 2).copied().unwrap_or_default();
    let completed = done.load(Ordering::Relaxed);
    println!(
        "h3-load: {completed} requests in {:.2} s, {:.0} req/s, p50 {:.3} ms, {} failed",
        elapsed.as_secs_f64(),
        completed as f64 / elapsed.as_secs_f64(),
        p50.as_secs_f64() * 1000.0,
        failed.load(Ordering::Relaxed)
    );
    endpoint.close(0u32.into(), b"done");
}
