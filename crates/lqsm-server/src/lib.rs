//! LQSM's server: the JobServer HTTP API and the ResourceManager runtime over a
//! durable store, in one process with nothing else to install.

pub mod audit;
pub mod auth;
pub mod auth_failures;
pub mod autoscale;
pub mod config;
pub mod convert;
pub mod dashboard;
pub mod error;
pub mod forwarding;
pub mod history;
pub mod jobserver;
pub mod leadership;
pub mod live_logs;
pub mod metrics;
pub mod resource_manager;
pub mod schedule_api;
pub mod scheduler;
pub mod tls;
pub mod view;
pub mod workflow_api;

use crate::config::{ServerConfig, StoreBackend};
use axum::serve::ListenerExt;
use lqsm_core::codec::{self, CodecError};
use lqsm_core::{JobRecord, ResourceManager, RestoreInput};
use lqsm_store::{EmbeddedStore, Store};
use std::future::Future;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use thiserror::Error;

/// Why the server could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A setting is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] lqsm_store::StoreError),
    /// The stored state cannot be rebuilt.
    #[error(transparent)]
    Restore(#[from] lqsm_core::RestoreError),
    /// A stored record was written by a newer LQSM: the data is fine, this binary is too
    /// old for it.
    #[error("stored {what} cannot be read: {source}")]
    NewerFormat {
        /// Which record, e.g. "job 0190…".
        what: String,
        /// The format found and the newest this build reads.
        source: CodecError,
    },
    /// Listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Meta key saying that every job record is in the current format with its index fields
/// (data of the first releases is JSON and has no index; [`upgrade_records`] rewrites it).
pub const RECORDS_UPGRADED: &str = "records_upgraded";

/// Meta key of an upgrade's progress: the key of the last job [`upgrade_records`] rewrote,
/// committed with it, so that an upgrade interrupted by a crash resumes after it (the
/// store's counts would count a job rewritten twice twice).
pub const UPGRADE_PROGRESS: &str = "records_upgrade_progress";

/// Whether the stored records need [`upgrade_records`], and from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// Every record is current.
    Done,
    /// Rewrite the jobs after this key (all of them for `None`).
    After(Option<lqsm_store::JobKey>),
}

/// Rebuilds the core from the store (or starts a fresh cluster with `root.default`).
pub fn restore(store: &dyn Store, config: &ServerConfig) -> Result<ResourceManager, ServerError> {
    restore_and_check(store, config).map(|(rm, _)| rm)
}

/// As [`restore`], and says whether the store's records still need [`upgrade_records`].
pub fn restore_and_check(
    store: &dyn Store,
    config: &ServerConfig,
) -> Result<(ResourceManager, Upgrade), ServerError> {
    let started = std::time::Instant::now();
    let mut snapshot = store.load()?;
    let meta = |name: &str| snapshot.meta.iter().find(|(k, _)| k == name);
    let upgrade = match meta(RECORDS_UPGRADED) {
        Some(_) => Upgrade::Done,
        None => Upgrade::After(
            meta(UPGRADE_PROGRESS).and_then(|(_, key)| lqsm_store::JobKey::try_from(&key[..]).ok()),
        ),
    };
    let loaded = started.elapsed();
    // The low bits of a UUIDv7 are random: a fresh seed per process.
    let seed = uuid::Uuid::now_v7().as_u128() as u64;
    let core_config = config.scheduler.core();
    let now = resource_manager::wall_clock();
    let fresh = snapshot.queues.is_empty() && snapshot.jobs.is_empty();
    let next_token = snapshot
        .meta
        .iter()
        .find(|(k, _)| k == resource_manager::NEXT_TOKEN)
        .and_then(|(_, v)| v.as_slice().try_into().ok())
        .map_or(0, u64::from_le_bytes);
    let mut rm = if fresh {
        let mut rm = ResourceManager::new(core_config, config.policies.clone(), seed)
            .map_err(|e| ServerError::Config(e.to_string()))?;
        // No guarantee: alone it still gets the whole cluster (idle capacity is lent),
        // and new queues can be given guarantees without first shrinking it.
        rm.create_queue(
            "root.default",
            lqsm_core::QueueConfig::with_capacity(0.0, 100.0),
        )
        .map_err(|e| ServerError::Config(e.to_string()))?;
        // The counter outlives the queues and jobs: a worker registered before they
        // were all removed must not be given its number again.
        rm.resume_tokens_from(next_token);
        rm
    } else {
        let queues = snapshot
            .queues
            .iter()
            .map(|(path, bytes)| {
                codec::decode_queue(bytes).map_err(|e| record_error(format!("queue `{path}`"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let jobs = decode_jobs(std::mem::take(&mut snapshot.jobs))?;
        let decoded = started.elapsed();
        let schedules = snapshot
            .meta
            .iter()
            .filter(|(k, _)| k.starts_with(resource_manager::SCHEDULE_PREFIX))
            .map(|(k, v)| {
                serde_json::from_slice(v).map_err(|e| {
                    ServerError::Store(lqsm_store::StoreError::Corrupt {
                        what: format!("the stored schedule `{k}`: {e}"),
                    })
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let broadcasts = snapshot
            .meta
            .iter()
            .filter(|(k, _)| k.starts_with(resource_manager::BROADCAST_PREFIX))
            .map(|(k, v)| {
                serde_json::from_slice(v).map_err(|e| {
                    ServerError::Store(lqsm_store::StoreError::Corrupt {
                        what: format!("the stored broadcast `{k}`: {e}"),
                    })
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let input = RestoreInput {
            queues,
            jobs,
            next_token,
            schedules,
            broadcasts,
        };
        let grace = Duration::from_millis(config.scheduler.reclaim_grace_ms);
        let (rm, report) = ResourceManager::restore(
            core_config,
            config.policies.clone(),
            seed,
            input,
            now,
            grace,
        )?;
        tracing::info!(
            load_ms = loaded.as_millis() as u64,
            decode_ms = (decoded - loaded).as_millis() as u64,
            restore_ms = (started.elapsed() - decoded).as_millis() as u64,
            queues = report.queues,
            pending = report.pending,
            awaiting_reclaim = report.awaiting_reclaim,
            finished = report.finished,
            "restored state"
        );
        rm
    };
    for warning in apply_declared_queues(&mut rm, config)? {
        tracing::warn!("{warning}");
    }
    for warning in apply_declared_schedules(&mut rm, config)? {
        tracing::warn!("{warning}");
    }
    Ok((rm, upgrade))
}

/// Jobs rewritten per commit by [`upgrade_records`]: each commit stays well under a second.
const UPGRADE_BATCH: usize = 50_000;

/// Hands memory the allocator holds free back to the system. A restore frees as much as
/// Samples the cluster's figures once a second while this server leads, for
/// `GET /v1/cluster/history`; forgets them when it stops leading.
async fn sample_history(
    history: Arc<history::History>,
    scheduler: Arc<dyn scheduler::Scheduler>,
    role: tokio::sync::watch::Receiver<leadership::Role>,
) {
    let mut every = tokio::time::interval(history::SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        if *role.borrow() != leadership::Role::Leader {
            history.clear();
            continue;
        }
        if let Ok(view) = scheduler.view().await {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            history.record(history::sample(&view, now_ms));
        }
    }
}

/// it keeps (the raw records, decoding buffers); mimalloc would return it over the next
/// seconds, so a server would report ready at up to half again its steady size.
pub(crate) fn return_freed_memory() {
    #[cfg(feature = "mimalloc")]
    #[allow(unsafe_code)]
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time.
    // With `force` it returns what the calling thread's heap, the heaps of threads that
    // have ended and the shared arenas hold free: the restore loaded on this thread and
    // decoded on threads that have ended.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// Rewrites every job and queue record in the current format, with the index fields the
/// store's reads need, then marks the store upgraded ([`RECORDS_UPGRADED`]). Done once, on
/// the first start of a release with indexes over data of an older one, which kept none:
/// jobs are written as new to the index, in key order, each commit recording how far it got
/// ([`UPGRADE_PROGRESS`]), so that a crash half-way resumes `after` the last job rewritten.
/// Returns the number of jobs rewritten.
pub fn upgrade_records(
    store: &dyn Store,
    rm: &ResourceManager,
    epoch: lqsm_store::Epoch,
    after: Option<lqsm_store::JobKey>,
) -> Result<usize, ServerError> {
    let mut batch = lqsm_store::WriteBatch {
        epoch,
        ..lqsm_store::WriteBatch::default()
    };
    let mut ids: Vec<lqsm_core::JobId> = rm.jobs().map(|job| job.id).collect();
    ids.sort_unstable();
    // The release before this one also upgraded in batches, but marked no progress: what it
    // indexed before it stopped is in the index already and is written as such.
    let indexed = match after {
        None => indexed_jobs(store)?,
        Some(_) => std::collections::HashSet::new(),
    };
    let mut rewritten = 0;
    for id in ids {
        let key = *id.0.as_bytes();
        if after.is_some_and(|after| key <= after) {
            continue;
        }
        if let Some(record) = rm.job_record(id) {
            let previous = indexed.contains(&key).then_some(record.state);
            batch
                .jobs
                .push(resource_manager::job_entry(&record, previous));
            rewritten += 1;
        }
        if batch.jobs.len() == UPGRADE_BATCH {
            batch.meta.push((UPGRADE_PROGRESS.to_owned(), key.to_vec()));
            store.commit(&batch)?;
            batch.jobs.clear();
            batch.meta.clear();
        }
    }
    for view in rm.queues() {
        if let Some(record) = rm.queue_record(view.id()) {
            batch
                .queues
                .push((record.path.to_string(), codec::encode_queue(&record)));
        }
    }
    batch.meta.push((
        RECORDS_UPGRADED.to_owned(),
        codec::CURRENT_FORMAT.to_le_bytes().to_vec(),
    ));
    store.commit(&batch)?;
    Ok(rewritten)
}

/// The jobs the store's index lists (under any state): none for data of the first
/// releases, which kept no index.
fn indexed_jobs(
    store: &dyn Store,
) -> Result<std::collections::HashSet<lqsm_store::JobKey>, ServerError> {
    let mut indexed = std::collections::HashSet::new();
    let states: std::collections::BTreeSet<String> =
        store.counts()?.into_iter().map(|c| c.state).collect();
    for state in states {
        let mut query = lqsm_store::JobQuery {
            filter: lqsm_store::JobFilter::State(state),
            order: lqsm_store::Order::OldestFirst,
            after: None,
            limit: 10_000,
        };
        loop {
            let page = store.jobs(&query)?;
            indexed.extend(page.jobs.iter().map(|(key, _)| *key));
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
    }
    Ok(indexed)
}

/// A record that cannot be decoded: written by a newer LQSM, or damaged.
fn record_error(what: String, error: CodecError) -> ServerError {
    match error {
        CodecError::NewerFormat { .. } => ServerError::NewerFormat {
            what,
            source: error,
        },
        CodecError::Corrupt(why) => ServerError::Store(lqsm_store::StoreError::Corrupt {
            what: format!("{what}: {why}"),
        }),
    }
}

/// Decodes job records on every core, freeing each raw record once decoded.
fn decode_jobs(raw: Vec<(lqsm_store::JobKey, Vec<u8>)>) -> Result<Vec<JobRecord>, ServerError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(1);
    let per_thread = raw.len().div_ceil(threads).max(1);
    let mut chunks = Vec::with_capacity(threads);
    let mut rest = raw;
    while rest.len() > per_thread {
        let tail = rest.split_off(per_thread);
        chunks.push(rest);
        rest = tail;
    }
    chunks.push(rest);
    let decode = |chunk: Vec<(lqsm_store::JobKey, Vec<u8>)>| {
        let mut decoder = codec::JobDecoder::default();
        chunk
            .into_iter()
            .map(|(key, bytes)| {
                decoder
                    .decode(&bytes)
                    .map_err(|e| record_error(format!("job {}", uuid::Uuid::from_bytes(key)), e))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let decoded: Vec<Result<Vec<JobRecord>, ServerError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| scope.spawn(move || decode(chunk)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ServerError::Store(lqsm_store::StoreError::Corrupt {
                        what: "a job record could not be decoded".into(),
                    }))
                })
            })
            .collect()
    });
    let mut jobs = Vec::new();
    for part in decoded {
        jobs.extend(part?);
    }
    Ok(jobs)
}

/// Opens the store the config names (`[store] backend`).
pub fn open_store(config: &ServerConfig) -> Result<Arc<dyn Store>, ServerError> {
    match config.store.backend {
        StoreBackend::Embedded => Ok(Arc::new(EmbeddedStore::open(&config.data_dir)?)),
        StoreBackend::Postgres => {
            let options = config
                .store
                .postgres_options()
                .map_err(ServerError::Config)?;
            let store = lqsm_store_postgres::PostgresStore::open(&options)
                .map_err(|e| ServerError::Store(e.into()))?;
            Ok(Arc::new(store))
        }
    }
}

/// Creates the queues the config declares that do not exist yet.
///
/// The rule for everything the config declares: the config creates what is missing and
/// never overrides what is stored. A declared queue changed since through the API keeps
/// its stored settings (the API's change is the newer decision), so a restart is always
/// possible; each difference comes back as a warning to log, in wire terms.
fn apply_declared_queues(
    rm: &mut ResourceManager,
    config: &ServerConfig,
) -> Result<Vec<String>, ServerError> {
    let mut declared = config.queues.clone();
    declared.sort_by_key(|q| q.path.matches('.').count());
    let mut warnings = Vec::new();
    for decl in &declared {
        let wanted = convert::queue_config(&decl.settings, &lqsm_core::QueueConfig::default())
            .map_err(|e| {
                ServerError::Config(format!("queue `{}`: {}", decl.path, e.detail.message))
            })?;
        if let Ok(existing) = rm.queue(&decl.path) {
            let differences = settings_differences(
                &convert::queue_settings(&wanted),
                &convert::queue_settings(existing.config()),
            );
            if !differences.is_empty() {
                warnings.push(format!(
                    "queue `{}` in the config differs from the stored queue, which is kept \
                     (changed through the API since it was declared): {}; \
                     make the config match, or change the queue with `lqsm queue update {}`",
                    decl.path,
                    differences.join(", "),
                    decl.path
                ));
            }
            continue;
        }
        rm.create_queue(&decl.path, wanted)
            .map_err(|e| ServerError::Config(format!("queue `{}`: {e}", decl.path)))?;
    }
    Ok(warnings)
}

/// Creates the schedules the config declares that do not exist yet, under the rule of
/// declared queues: the config creates what is missing and never overrides what is stored
/// (a schedule changed through the API since keeps its settings, with a warning).
fn apply_declared_schedules(
    rm: &mut ResourceManager,
    config: &ServerConfig,
) -> Result<Vec<String>, ServerError> {
    let mut warnings = Vec::new();
    for decl in &config.schedules {
        let refused = |what: String| {
            ServerError::Config(format!("schedule `{}` in the config: {what}", decl.name))
        };
        let spec = schedule_api::declared_spec(decl).map_err(|e| {
            refused(format!(
                "{}{}",
                e.detail.field.map(|f| format!("{f}: ")).unwrap_or_default(),
                e.detail.message
            ))
        })?;
        match rm.schedule_named(&spec.name) {
            Some(stored) if stored.spec == spec => {}
            Some(_) => warnings.push(format!(
                "schedule `{}` in the config differs from the stored schedule, which is kept (changed through the API since it was declared); make the config match, or change it with PATCH /v1/schedules/{}",
                spec.name, spec.name
            )),
            None => {
                rm.create_schedule(spec, resource_manager::wall_clock())
                    .map_err(|e| refused(e.to_string()))?;
            }
        }
    }
    Ok(warnings)
}

/// The settings that differ, as `name: config X, stored Y` with wire names and values.
fn settings_differences(
    declared: &lqsm_api::QueueSettings,
    stored: &lqsm_api::QueueSettings,
) -> Vec<String> {
    let as_fields = |settings: &lqsm_api::QueueSettings| match serde_json::to_value(settings) {
        Ok(serde_json::Value::Object(fields)) => fields,
        _ => serde_json::Map::new(),
    };
    let declared = as_fields(declared);
    let stored = as_fields(stored);
    let mut names: Vec<&String> = declared.keys().chain(stored.keys()).collect();
    names.sort();
    names.dedup();
    let shown = |v: Option<&serde_json::Value>| v.map_or("unset".to_owned(), |v| v.to_string());
    names
        .into_iter()
        .filter(|name| declared.get(*name) != stored.get(*name))
        .map(|name| {
            format!(
                "{name}: config {}, stored {}",
                shown(declared.get(name)),
                shown(stored.get(name))
            )
        })
        .collect()
}

/// How long a stopping server lets its HTTP calls in flight finish.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// Runs the server until `shutdown` resolves: stops accepting, lets requests in
/// flight finish and the commit in flight land, then returns. `on_listening` is told
/// the bound address (useful with port 0) as soon as it listens, before the state is
/// restored: until then `/readyz` answers 503 and API calls 503 `unavailable`.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    serve_after(config, shutdown, on_listening, async {}).await
}

/// As [`serve`], restoring the state only once `before_restore` resolves (tests hold the
/// server in its restoring phase with it).
pub async fn serve_after(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
    before_restore: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    serve_inner(config, shutdown, on_listening, before_restore, None).await
}

/// As [`serve`], on `store` instead of the one the config names: for tests that build
/// their own store (one that fails or crashes on demand, `lqsm_store::faults`). The
/// config's `[store] backend` still decides what a failing store does to the server.
pub async fn serve_on_store(
    config: ServerConfig,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    serve_inner(config, shutdown, on_listening, async {}, Some(store)).await
}

async fn serve_inner(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
    before_restore: impl Future<Output = ()>,
    given_store: Option<Arc<dyn Store>>,
) -> Result<(), ServerError> {
    if config.tokens.is_empty() && !config.listen.ip().is_loopback() && !config.insecure {
        return Err(ServerError::Config(format!(
            "refusing to listen on {} without tokens: configure tokens, listen on loopback, or pass --insecure",
            config.listen
        )));
    }
    config.tls.check().map_err(ServerError::Config)?;
    let tls = match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(cert), Some(key)) => {
            Some(tls::acceptor(cert, key).map_err(|e| ServerError::Config(e.to_string()))?)
        }
        _ => None,
    };
    let trusted = match &config.tls.ca_file {
        Some(path) => tls::certificates("tls.ca_file", path)
            .map_err(|e| ServerError::Config(e.to_string()))?
            .into_iter()
            .map(|der| reqwest::Certificate::from_der(&der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ServerError::Config(format!("tls.ca_file: {e}")))?,
        None => Vec::new(),
    };
    let auth = auth::Auth::new(&config.tokens).map_err(ServerError::Config)?;
    let autoscaling = autoscale::Setup::from_config(&config).map_err(ServerError::Config)?;
    let audit = match &config.audit_log {
        Some(path) => {
            audit::AuditLog::to_file(path).map_err(|e| ServerError::Config(e.to_string()))?
        }
        None => audit::AuditLog::log_only(),
    };
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    if let Some(handle) = metrics.clone() {
        // Histogram samples pile up until drained; without a scrape nothing would drain
        // them, so drain on a timer.
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        });
    }
    let switch = Arc::new(scheduler::Switch::default());
    let ready = Arc::new(AtomicBool::new(false));
    let (role, role_updates) = tokio::sync::watch::channel(leadership::Role::Starting);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let identity = leadership::Identity::of(&config, addr);
    let state = jobserver::AppState {
        scheduler: switch.clone(),
        auth: Arc::new(auth),
        limits: config.limits.clone(),
        ready: ready.clone(),
        metrics,
        role: role_updates,
        forwarder: forwarding::Forwarder::new(&identity.node, &trusted),
        audit: Arc::new(audit),
        auth_failures: Arc::new(auth_failures::AuthFailures::new(
            config.limits.max_failed_auth_per_minute,
        )),
        history: Arc::new(history::History::default()),
        tls: tls.is_some(),
    };
    tokio::spawn(sample_history(
        state.history.clone(),
        state.scheduler.clone(),
        state.role.clone(),
    ));
    // Serve probes (and 503s) while the state is restored.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = jobserver::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let stopped = async move {
        let _ = stop_rx.await;
    };
    let http = match tls {
        None => tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .into_future(),
        ),
        Some(acceptor) => {
            // `tap_io` only so that the connection's address reaches the handlers
            // (axum gives connect info for it as for a plain listener).
            let listener = tls::TlsListener::new(listener, acceptor)
                .map_err(|source| ServerError::Listen {
                    addr: config.listen,
                    source,
                })?
                .tap_io(|_| {});
            tokio::spawn(
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .into_future(),
            )
        }
    };
    tracing::info!(%addr, node = %identity.node, data_dir = %config.data_dir.display(), "listening; restoring state");
    on_listening(addr);
    before_restore.await;
    let opening = std::time::Instant::now();
    // Opening replays a journal or connects to a database: off the async threads.
    let opened = match given_store {
        Some(store) => Ok(store),
        None => {
            let config = config.clone();
            tokio::task::spawn_blocking(move || open_store(&config))
                .await
                .unwrap_or_else(|e| {
                    Err(ServerError::Config(format!(
                        "opening the store failed: {e}"
                    )))
                })
        }
    };
    let store = match opened {
        Ok(store) => store,
        Err(e) => {
            let _ = stop_tx.send(());
            let _ = http.await;
            return Err(e);
        }
    };
    // After a crash, opening replays the store's journal: often the longest part of a restart.
    tracing::info!(
        open_ms = opening.elapsed().as_millis() as u64,
        "opened the store"
    );
    if config.store.backend == StoreBackend::Postgres {
        let checked = {
            let store = store.clone();
            let identity = identity.clone();
            let renew_every = Duration::from_millis(config.store.lease_renew_ms.max(1));
            tokio::task::spawn_blocking(move || {
                let now = leadership::lease_clock(store.as_ref())?;
                let servers = store.servers()?;
                Ok::<_, lqsm_store::StoreError>(leadership::node_in_use(
                    &servers,
                    &identity,
                    now,
                    renew_every,
                ))
            })
            .await
            .unwrap_or_else(|e| Err(lqsm_store::StoreError::Engine(e.to_string())))
        };
        let refusal = match checked {
            Ok(refusal) => refusal.map(ServerError::Config),
            Err(e) => Some(ServerError::Store(e)),
        };
        if let Some(e) = refusal {
            let _ = stop_tx.send(());
            let _ = http.await;
            let _ = tokio::task::spawn_blocking(move || drop(store)).await;
            return Err(e);
        }
    }
    let announcing = leadership::announce(
        store.clone(),
        identity.clone(),
        Duration::from_millis(config.store.lease_renew_ms.max(1)),
    );
    let (lease, _) = tokio::sync::watch::channel(None);
    let local_workers = Arc::new(autoscale::LocalWorkers::default());
    let reach = autoscale::Reach {
        url: identity.address.clone(),
        ca_file: config
            .tls
            .ca_file
            .clone()
            .or_else(|| config.tls.cert_file.clone()),
    };
    let led = leadership::run(
        leadership::Context {
            config,
            identity,
            store: store.clone(),
            switch: switch.clone(),
            role,
            ready,
            lease,
            autoscale: autoscaling.map(|setup| leadership::Autoscaling {
                setup,
                local: local_workers.clone(),
                reach,
            }),
        },
        shutdown,
    )
    .await;
    // The workers this server started drain and stop with it.
    local_workers.stop_all();
    announcing.abort();
    let _ = announcing.await;
    let _ = stop_tx.send(());
    // Calls in flight finish; a follower's calls waiting at the leader (long-polls, waits
    // of minutes) are cut after HTTP_DRAIN.
    let mut http = http;
    let served = match tokio::time::timeout(HTTP_DRAIN, &mut http).await {
        Ok(served) => served,
        Err(_) => {
            http.abort();
            Ok(Ok(()))
        }
    };
    // The last handle on the store goes on a blocking thread: closing a database
    // connection blocks.
    switch.set(None);
    let _ = tokio::task::spawn_blocking(move || drop(store)).await;
    match served {
        Ok(Ok(())) => {}
        Ok(Err(source)) => return Err(ServerError::Listen { addr, source }),
        Err(e) => return Err(ServerError::Config(format!("HTTP task failed: {e}"))),
    }
    led
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(path: &str, capacity: f64) -> config::QueueDecl {
        config::QueueDecl {
            path: path.into(),
            settings: lqsm_api::QueueSettings {
                capacity: Some(capacity),
                ..lqsm_api::QueueSettings::default()
            },
        }
    }

    fn core() -> ResourceManager {
        ResourceManager::new(
            lqsm_core::Config::default(),
            lqsm_core::Policies::default(),
            1,
        )
        .expect("valid")
    }

    #[test]
    fn declared_queues_are_created_parents_first_and_kept_when_equal() {
        let mut rm = core();
        let config = ServerConfig {
            queues: vec![
                declared("root.etl.daily", 100.0),
                declared("root.etl", 60.0),
            ],
            ..ServerConfig::default()
        };
        let warnings = apply_declared_queues(&mut rm, &config).expect("created");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(rm.queue("root.etl.daily").is_ok());
        // Applying the same declarations again (a restart) changes nothing.
        let warnings = apply_declared_queues(&mut rm, &config).expect("unchanged");
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn a_declared_queue_changed_through_the_api_keeps_its_stored_settings_with_a_warning() {
        let mut rm = core();
        rm.create_queue(
            "root.etl",
            lqsm_core::QueueConfig::with_capacity(40.0, 100.0),
        )
        .expect("stored");
        let config = ServerConfig {
            queues: vec![declared("root.etl", 60.0)],
            ..ServerConfig::default()
        };
        let warnings = apply_declared_queues(&mut rm, &config).expect("a restart is possible");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let text = &warnings[0];
        assert!(
            text.contains("queue `root.etl` in the config differs from the stored queue"),
            "{text}"
        );
        assert!(
            text.contains("capacity: config 60.0, stored 40.0"),
            "{text}"
        );
        assert!(text.contains("lqsm queue update root.etl"), "{text}");
        assert!(!text.contains("Some("), "no Rust debug output: {text}");
        assert_eq!(rm.queue("root.etl").expect("kept").config().capacity, 40.0);
    }
}
