//! HTTPS behind a private CA: a receiver and an upstream serving a
//! certificate the test makes with `openssl`, trusted through
//! `delivery.tls_ca_file` and a source's `tls_ca_file`; without them the
//! relay refuses the certificate and says why.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::post};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::json;
use stamp_relay::{app::Relay, config::Paging, store::Table};
use stamp_relay_simulator::{SimConfig, Simulator};
use tokio_util::sync::CancellationToken;

use crate::harness::{App, TestStore, config, source, wait_for, wait_synced};
use crate::on_both_stores;

on_both_stores!(a_private_ca_is_trusted_where_configured);

/// A CA and a certificate for 127.0.0.1 it signed, made by `openssl`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_pki(dir: &Path) -> Pki {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=stamp-relay test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    ca.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec![
        "req",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
    ];
    csr.extend(ec);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "srv.pem",
            "-extfile",
            "ext.cnf",
        ],
    );
    Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("srv.pem"),
        key: dir.join("srv.key"),
    }
}

/// Serves `router` over TLS with the PKI's certificate on a loopback port.
async fn serve_tls(router: Router, pki: &Pki, cancel: CancellationToken) -> SocketAddr {
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(&pki.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = listener.accept() => accepted.unwrap().0,
            };
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(router);
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = builder.serve_connection(io, service).await;
            });
        }
    });
    addr
}

async fn a_private_ca_is_trusted_where_configured(ts: TestStore) {
    let pki = make_pki(ts.dir.path());
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let sim = Simulator::new(SimConfig {
        initial: vec![("patients".into(), 4)],
        ..SimConfig::default()
    });
    let upstream = serve_tls(sim.router(), &pki, cancel.clone()).await;
    let base_url = format!("https://{upstream}/api");

    // Without the CA the upstream's certificate is refused, in words.
    let untrusted = source(&base_url, &["patients"], Paging::Pages, 100);
    let mut relay =
        Relay::with_store(config(&ts.config, vec![untrusted]), ts.store.clone()).unwrap();
    let polled = relay.sync_once(&cancel).await;
    let error = format!("{:?}", polled[0].1.as_ref().err());
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    drop(relay);

    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    let hook = Router::new().route(
        "/hook",
        post(move || async move {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            StatusCode::NO_CONTENT
        }),
    );
    let receiver = serve_tls(hook, &pki, cancel.clone()).await;
    let mut trusted = source(&base_url, &["patients"], Paging::Pages, 100);
    trusted.tls_ca_file = Some(pki.ca.clone());
    let ca = pki.ca.clone();
    let app = App::spawn_with(&ts, vec![trusted], |c| c.delivery.tls_ca_file = Some(ca)).await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim).await;
    let body = json!({"url": format!("https://{receiver}/hook"), "resources": ["*"], "start": "beginning"});
    let id = app.post_json("/v1/subscriptions", &body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let look = async || hits.load(std::sync::atomic::Ordering::SeqCst);
    wait_for(
        "four deliveries over TLS",
        Duration::from_secs(20),
        look,
        |n| *n >= 4,
    )
    .await;
    let ping = app
        .post_json(&format!("/v1/subscriptions/{id}/test"), &json!({}))
        .await;
    assert_eq!(ping["outcome"], "delivered", "{ping}");
    app.stop().await;

    // A relay without delivery.tls_ca_file refuses the receiver's certificate.
    let app = App::spawn(&ts, vec![]).await;
    let ping = app
        .post_json(&format!("/v1/subscriptions/{id}/test"), &json!({}))
        .await;
    assert_eq!(ping["outcome"], "failed", "{ping}");
    let error = ping["error"].as_str().unwrap().to_lowercase();
    assert!(error.contains("certificate"), "{error}");
    app.stop().await;
}
