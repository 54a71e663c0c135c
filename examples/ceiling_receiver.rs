//! The ceiling for `bench/intake.sh`: the least a Rust receiver can do per delivery on this machine. It
//! reads the body, verifies `X-Hub-Signature` with the same code as `serve` (`ClientSecrets`, HMAC-SHA1
//! over the raw bytes), and answers 200, on the same crates (tokio, hyper's HTTP/1 server through axum);
//! it stores nothing and runs no worker. `serve`'s requests/s as a share of this one's is what durability
//! and processing cost.
//!
//!   INTERCOM_CLIENT_SECRET=… cargo run --release --example ceiling_receiver -- 127.0.0.1:8090

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use intercom_webhooks::receiving::signature::{ClientSecrets, SIGNATURE_HEADER};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8090".into());
    let secret =
        std::env::var("INTERCOM_CLIENT_SECRET").map_err(|_| anyhow::anyhow!("set INTERCOM_CLIENT_SECRET"))?;
    let secrets = Arc::new(ClientSecrets::parse(&secret)?);
    let app = Router::new()
        .route("/webhooks/intercom", post(receive))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(secrets);
    let listener = tokio::net::TcpListener::bind(&address).await?;
    eprintln!("ceiling receiver on http://{address}/webhooks/intercom");
    axum::serve(
        listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        }),
        app,
    )
    .await?;
    Ok(())
}

async fn receive(
    State(secrets): State<Arc<ClientSecrets>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let signature = headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes());
    match secrets.verify(signature, &body) {
        Ok(_) => (StatusCode::OK, r#"{"status":"ok"}"#),
        Err(_) => (StatusCode::UNAUTHORIZED, r#"{"error":"signature"}"#),
    }
}
