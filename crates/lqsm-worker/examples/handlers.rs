//! A Rust program that serves its own function (`billing.invoice`), then calls it
//! through the server the way Celery code does: `.delay(...)` then `.get(timeout)`.
//!
//! ```text
//! lqsm server &                      # listens on http://127.0.0.1:7420
//! cargo run -p lqsm-worker --example handlers -- http://127.0.0.1:7420
//! ```
#![allow(clippy::print_stdout, missing_docs)]

use lqsm_client::Client;
use lqsm_worker::{WorkerBuilder, WorkerConfig};
use serde_json::{Value, json};
use std::time::Duration;

/// What the handler needs from a job's arguments.
#[derive(serde::Deserialize)]
struct InvoiceRequest {
    customer: String,
    amount_cents: u64,
}

/// The handler: any async function from JSON arguments to a serialisable result.
async fn invoice(args: Value) -> Result<Value, String> {
    let req: InvoiceRequest =
        serde_json::from_value(args).map_err(|e| format!("bad invoice request: {e}"))?;
    // Real work would await a database or an HTTP call here.
    let tax = req.amount_cents / 5;
    Ok(json!({
        "customer": req.customer,
        "net_cents": req.amount_cents,
        "tax_cents": tax,
        "total_cents": req.amount_cents + tax,
    }))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First thing, before any thread starts: when the worker starts this program
    // again to supervise a command attempt, this runs the supervisor and never
    // returns. It is what guarantees that no process of a command job outlives the
    // worker, even one killed with SIGKILL.
    lqsm_worker::supervisor::run_if_asked();
    tokio::runtime::Runtime::new()?.block_on(serve_and_call())
}

async fn serve_and_call() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let server = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("LQSM_SERVER").ok())
        .unwrap_or_else(|| "http://127.0.0.1:7420".to_owned());
    let token = std::env::var("LQSM_TOKEN").ok();

    // The worker side: register the handler, run until told to stop.
    let mut config = WorkerConfig::new(server.clone());
    config.token = token.clone();
    config.name = "handlers-example".into();
    let worker = WorkerBuilder::new(config)
        .handler("billing.invoice", invoice)
        .build()?;
    println!(
        "worker {} serves {:?}",
        worker.id(),
        worker.startup().handlers
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));

    // The client side: submit, then wait for the result.
    let client = Client::new(&server, token)?;
    let handle = client
        .delay(
            "root.default",
            "billing.invoice",
            json!({"customer": "ACME", "amount_cents": 12_500}),
        )
        .await?;
    println!("submitted job {}", handle.id());
    let outcome = handle.get(Duration::from_secs(30)).await;

    let _ = stop.send(());
    let summary = running.await??;
    match outcome {
        Ok(invoice) => println!("invoice: {invoice}"),
        Err(e) => println!("no invoice: {e}"),
    }
    println!("worker ran {} attempt(s)", summary.started);
    Ok(())
}
