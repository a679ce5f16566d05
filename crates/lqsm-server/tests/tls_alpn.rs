//! The TLS listener speaks HTTP/1.1 only: the server is built without HTTP/2, so its
//! handshake must never let a client believe it may use h2 (a client that did would
//! send frames the server cannot read).
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_server::config::ServerConfig;
use lqsm_testkit::tls;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// A server on HTTPS with the test CA's certificate, and its address.
async fn tls_server(dir: &tempfile::TempDir) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let mut config = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.path().join("data"),
        ..ServerConfig::default()
    };
    config.tls.cert_file = Some(tls::CERT.into());
    config.tls.key_file = Some(tls::KEY.into());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound, listening) = tokio::sync::oneshot::channel();
    tokio::spawn(lqsm_server::serve(
        config,
        async move {
            let _ = stopped.await;
        },
        move |addr| {
            let _ = bound.send(addr);
        },
    ));
    let addr = tokio::time::timeout(lqsm_testkit::wait::DEADLINE, listening)
        .await
        .expect("the server listens in time")
        .expect("the server reports its address");
    (addr, stop)
}

/// A client trusting the test CA that offers these ALPN protocols.
fn connector(alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(tls::CA).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// The protocol the handshake agreed on, or the handshake's error.
async fn negotiate(
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, std::io::Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    connector(alpn)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

#[tokio::test]
async fn the_tls_listener_offers_http_1_1_and_never_agrees_to_h2() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _stop) = tls_server(&dir).await;

    // A client offering both (as browsers and reqwest with http2 do) gets HTTP/1.1, and
    // is answered in it.
    let mut both = negotiate(addr, &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(both.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    both.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    both.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A client offering only h2 is refused at the handshake (no protocol in common),
    // never told h2 was agreed.
    match negotiate(addr, &[b"h2"]).await {
        Err(refused) => assert!(
            format!("{refused:?}").contains("NoApplicationProtocol"),
            "refused for another reason: {refused:?}"
        ),
        Ok(stream) => panic!(
            "the handshake succeeded, agreeing to {:?}",
            stream.get_ref().1.alpn_protocol()
        ),
    }

    // A client offering nothing (plain HTTPS without ALPN) still works.
    let plain = negotiate(addr, &[]).await.unwrap();
    assert_eq!(plain.get_ref().1.alpn_protocol(), None);
}
