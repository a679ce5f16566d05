//! Which server runs the ResourceManager.
//!
//! Every server sharing a store serves the whole HTTP API; one at a time **leads**: it
//! holds the store's lease, has the state restored in its core and commits at the lease's
//! epoch. The others **follow**: they read jobs from the store themselves and hand every
//! other call to the leader (see `jobserver`'s forwarding). A follower watches the lease
//! and takes it once it lapses or is given up, then restores the state from the store
//! and leads; its new epoch fences every later commit of the old leader.
//!
//! The leader renews its lease every `lease_renew_ms` and steps down by its own monotonic
//! clock before the lease can have lapsed by the store's clock, counting from when it
//! sent its last successful renewal. A leader that steps down (or whose commit is fenced)
//! drops its core and follows; nothing it acknowledged is lost, since it acknowledged
//! only what was durable.
//!
//! The embedded store is opened by one process only: its server always leads, and a
//! failure of its store stops the server (fail-stop), as it always did.

use crate::config::{ServerConfig, StoreBackend};
use crate::scheduler::{Follower, InProcess, StoreReads, Switch};
use crate::{ServerError, Upgrade, resource_manager, view};
use lqsm_store::{Lease, ServerInfo, Store, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What this server is now; the JobServer routes calls by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Restoring the state (to lead) or opening the store: API calls answer 503.
    Starting,
    /// Runs the ResourceManager: answers every call itself.
    Leader,
    /// Another server leads, reachable at this address when known.
    Follower {
        /// The leader's advertised URL, or `None` while no leader is known (an election
        /// is under way, or the store cannot be read).
        leader: Option<String>,
    },
}

/// How often a follower reads the lease: the longest a failover waits after a leader gave
/// its lease up (a SIGTERM), and well under any lease's time to live.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// How long a stopping actor may take to land its commit in flight.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How soon a failed lease renewal is tried again.
const RENEW_RETRY: Duration = Duration::from_millis(250);

/// This server as the others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name it leads under.
    pub node: String,
    /// Where the others reach it.
    pub address: String,
}

impl Identity {
    /// The configured node name and address, or those derived from the bound address.
    pub fn of(config: &ServerConfig, bound: std::net::SocketAddr) -> Self {
        let host = || {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".to_owned())
        };
        let node = config
            .store
            .node
            .clone()
            .unwrap_or_else(|| format!("{}:{}", host(), bound.port()));
        let scheme = config.tls.scheme();
        let address = config.advertise.clone().unwrap_or_else(|| {
            if bound.ip().is_unspecified() {
                format!("{scheme}://{}:{}", host(), bound.port())
            } else {
                format!("{scheme}://{bound}")
            }
        });
        Self { node, address }
    }
}

/// Everything the role loop works with.
pub(crate) struct Context {
    pub(crate) config: ServerConfig,
    pub(crate) identity: Identity,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) switch: Arc<Switch>,
    pub(crate) role: watch::Sender<Role>,
    pub(crate) ready: Arc<AtomicBool>,
    /// The lease as this server last saw it (its own while it leads).
    pub(crate) lease: watch::Sender<Option<Lease>>,
    /// The worker autoscaler, when it is on: it runs while this server leads.
    pub(crate) autoscale: Option<Autoscaling>,
}

/// What the autoscaler needs to run under a leader.
pub(crate) struct Autoscaling {
    pub(crate) setup: Arc<crate::autoscale::Setup>,
    pub(crate) local: Arc<crate::autoscale::LocalWorkers>,
    pub(crate) reach: crate::autoscale::Reach,
}

impl Context {
    fn backend(&self) -> &'static str {
        match self.config.store.backend {
            StoreBackend::Embedded => "embedded",
            StoreBackend::Postgres => "postgres",
        }
    }

    fn reads(&self) -> StoreReads {
        StoreReads::new(self.store.clone(), self.backend(), self.lease.subscribe())
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.config.store.lease_ttl_ms.max(1))
    }

    fn renew_every(&self) -> Duration {
        Duration::from_millis(self.config.store.lease_renew_ms.max(1))
    }

    /// Only a store several servers share has followers; the embedded one is this
    /// process's alone.
    fn shared(&self) -> bool {
        self.config.store.backend == StoreBackend::Postgres
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(store.as_ref()))
            .await
            .unwrap_or_else(|e| Err(StoreError::Engine(format!("a store task failed: {e}"))))
    }
}

/// Now, by the clock leases are judged by: the store's when it has a shared one (a
/// database's), else this machine's.
pub(crate) fn lease_clock(store: &dyn Store) -> Result<u64, StoreError> {
    Ok(store
        .clock_ms()?
        .unwrap_or_else(|| resource_manager::wall_clock().0))
}

/// The lease this server holds, as `/metrics` shows it.
fn publish_lease(lease: &Lease) {
    ::metrics::gauge!("lqsm_store_epoch").set(lease.epoch as f64);
    ::metrics::gauge!("lqsm_lease_expires_at_seconds").set(lease.expires_at_ms as f64 / 1000.0);
}

/// Tells the other servers, every renewal interval, that this one is alive and where.
pub(crate) fn announce(
    store: Arc<dyn Store>,
    identity: Identity,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let store = store.clone();
            let identity = identity.clone();
            let announced = tokio::task::spawn_blocking(move || {
                store.announce(&ServerInfo {
                    node: identity.node,
                    address: identity.address,
                    seen_at_ms: lease_clock(store.as_ref())?,
                })
            })
            .await;
            if let Ok(Err(e)) = announced {
                tracing::warn!(error = %e, "could not announce this server in the store");
            }
        }
    })
}

/// Why this server must not start under its node name: another server, at another
/// address, announced itself under it within the last few renewal intervals. Two servers
/// of one name would each take the lease from the other as their own.
pub(crate) fn node_in_use(
    servers: &[ServerInfo],
    identity: &Identity,
    now_ms: u64,
    renew_every: Duration,
) -> Option<String> {
    let recent_ms = u64::try_from(renew_every.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_mul(3);
    servers
        .iter()
        .find(|s| {
            s.node == identity.node
                && s.address != identity.address
                && now_ms.saturating_sub(s.seen_at_ms) < recent_ms
        })
        .map(|other| {
            format!(
                "[store] node `{}` is in use by the server at {} (seen {} ms ago); give each server sharing the store its own node name",
                other.node,
                other.address,
                now_ms.saturating_sub(other.seen_at_ms)
            )
        })
}

/// How a spell of leading ended.
enum Led {
    /// The server is shutting down; the lease was given up.
    ShutDown,
    /// The lease was lost, lapsed or fenced (or, on a shared store, the store failed):
    /// follow, and lead again once elected.
    SteppedDown,
}

/// Leads or follows until `shutdown` resolves.
pub(crate) async fn run(
    ctx: Context,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    tokio::pin!(shutdown);
    let mut followed = false;
    loop {
        let node = ctx.identity.node.clone();
        let ttl = ctx.ttl();
        // The lease runs from the database's clock as read after this instant: counting
        // from here, this server's own clock never believes in it longer than it lasts.
        let asked = Instant::now();
        let acquired = ctx
            .blocking(move |store| store.acquire_lease(&node, ttl, lease_clock(store)?))
            .await;
        match acquired {
            Ok(lease) => {
                if followed {
                    ::metrics::counter!("lqsm_failovers_total").increment(1);
                    tracing::info!(epoch = lease.epoch, "took the lease over: leading");
                }
                match lead(&ctx, lease, asked, &mut shutdown).await? {
                    Led::ShutDown => return Ok(()),
                    Led::SteppedDown => {}
                }
            }
            Err(StoreError::LeaseHeld { .. }) if ctx.shared() => {}
            Err(e) if ctx.shared() => {
                tracing::warn!(error = %e, "could not take the store's lease; following");
                // A store that reads but cannot write shows the lease free at once:
                // without a pause this loop would retry the write as fast as it fails.
                tokio::select! {
                    () = shutdown.as_mut() => return Ok(()),
                    () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
        followed = true;
        if !follow(&ctx, &mut shutdown).await {
            return Ok(());
        }
    }
}

/// Follows until the lease is free to take (true) or the server shuts down (false).
async fn follow(
    ctx: &Context,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> bool {
    ::metrics::gauge!("lqsm_leader").set(0.0);
    ctx.switch.set(Some(Arc::new(Follower::new(ctx.reads()))));
    if !matches!(*ctx.role.borrow(), Role::Follower { .. }) {
        ctx.role.send_replace(Role::Follower { leader: None });
    }
    ctx.ready.store(true, Ordering::Release);
    let mut ticks = tokio::time::interval(FOLLOW_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.as_mut() => return false,
            _ = ticks.tick() => {}
        }
        let seen = ctx
            .blocking(|store| {
                let now = lease_clock(store)?;
                Ok((now, store.lease()?, store.servers()?))
            })
            .await;
        let (now, lease, servers) = match seen {
            Ok(seen) => seen,
            Err(e) => {
                // Keep handing calls to the last leader known: it may well still lead.
                tracing::warn!(error = %e, "could not read the store's lease");
                continue;
            }
        };
        ctx.lease.send_replace(lease.clone());
        let Some(lease) = lease.filter(|l| l.is_live(now) && l.holder != ctx.identity.node) else {
            // Lapsed, given up, or this server's own from before a restart: take it.
            return true;
        };
        let leader = servers
            .into_iter()
            .find(|s| s.node == lease.holder)
            .map(|s| s.address);
        let role = Role::Follower { leader };
        if *ctx.role.borrow() != role {
            tracing::info!(leader = %lease.holder, epoch = lease.epoch, ?role, "following");
            ctx.role.send_replace(role);
        }
    }
}

/// Restores the state, leads until the lease is lost or the server shuts down.
async fn lead(
    ctx: &Context,
    lease: Lease,
    asked: Instant,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<Led, ServerError> {
    publish_lease(&lease);
    ctx.lease.send_replace(Some(lease.clone()));
    ctx.role.send_replace(Role::Starting);
    ctx.switch.set(None);
    ctx.ready.store(false, Ordering::Release);
    let (lost_tx, mut lost) = tokio::sync::oneshot::channel::<StoreError>();
    let renewing = tokio::spawn(renew(
        ctx.store.clone(),
        lease.clone(),
        asked,
        ctx.ttl(),
        ctx.renew_every(),
        ctx.lease.clone(),
        lost_tx,
    ));
    let restoring = {
        let store = ctx.store.clone();
        let config = ctx.config.clone();
        let epoch = lease.epoch;
        tokio::task::spawn_blocking(move || restore_to_lead(store.as_ref(), &config, epoch))
    };
    // A shutdown during a long restore gives the lease up at once rather than after it.
    let restored = tokio::select! {
        restored = restoring => restored
            .unwrap_or_else(|e| Err(ServerError::Config(format!("restore task failed: {e}")))),
        () = shutdown.as_mut() => {
            renewing.abort();
            let _ = renewing.await;
            resign(ctx, lease).await;
            return Ok(Led::ShutDown);
        }
    };
    let rm = match restored {
        Ok(rm) => rm,
        Err(ServerError::Store(e)) if ctx.shared() => {
            renewing.abort();
            tracing::warn!(error = %e, "could not restore the state to lead; following");
            return Ok(Led::SteppedDown);
        }
        Err(e) => {
            renewing.abort();
            return Err(e);
        }
    };
    let settings = resource_manager::ActorSettings {
        longest_poll: Duration::from_millis(ctx.config.scheduler.max_poll_wait_ms),
        log_cap: ctx.config.limits.max_log_bytes,
    };
    let published = view::Published::default();
    let spawned = resource_manager::spawn(
        rm,
        ctx.store.clone(),
        lease.epoch,
        settings,
        published.clone(),
        ctx.config.wall_clock.clone(),
        ctx.autoscale
            .as_ref()
            .map(|a| crate::autoscale::Scaling::new(&a.setup, ctx.config.policies.clone())),
    );
    let mut actor = spawned.actor;
    // Only the leader scales: the task ends with this spell of leading.
    let scaling = ctx.autoscale.as_ref().map(|a| {
        tokio::spawn(crate::autoscale::lead(
            spawned.runtime.clone(),
            a.setup.clone(),
            a.local.clone(),
            a.reach.clone(),
        ))
    });
    ctx.switch.set(Some(Arc::new(InProcess::new(
        spawned.runtime,
        published,
        ctx.reads(),
    ))));
    ctx.role.send_replace(Role::Leader);
    ctx.ready.store(true, Ordering::Release);
    // Set once it dispatches (restored, actor running), not when the lease was taken.
    ::metrics::gauge!("lqsm_leader").set(1.0);
    tracing::info!(epoch = lease.epoch, node = %ctx.identity.node, "leading");
    let outcome = tokio::select! {
        () = shutdown.as_mut() => None,
        ended = &mut actor => Some(match ended {
            Ok(Ok(())) => StoreError::Engine("the resource manager stopped".into()),
            Ok(Err(e)) => e,
            Err(e) => StoreError::Engine(format!("the resource manager task failed: {e}")),
        }),
        why = &mut lost => Some(why.unwrap_or_else(|_| StoreError::Engine("the lease renewal stopped".into()))),
    };
    // Whatever ended it, the actor stops: the commit in flight lands (or is fenced), and
    // nothing more is dispatched under this lease.
    if let Some(task) = scaling {
        task.abort();
        let _ = task.await;
    }
    spawned.stop.notify_one();
    ctx.switch.set(None);
    // A commit stuck on an unreachable database would hold the actor: it is given up
    // after STOP_GRACE (its callers are answered 503; if it lands after all, it landed
    // at this epoch, before any successor's, and the successor restores it).
    let ended = if actor.is_finished() {
        None
    } else {
        match tokio::time::timeout(STOP_GRACE, &mut actor).await {
            Ok(ended) => Some(ended),
            Err(_) => {
                tracing::warn!(
                    "the resource manager did not stop in time (a commit is stuck); abandoning it"
                );
                actor.abort();
                None
            }
        }
    };
    renewing.abort();
    let _ = renewing.await;
    ::metrics::gauge!("lqsm_leader").set(0.0);
    match outcome {
        None => {
            resign(ctx, lease).await;
            match ended {
                Some(Ok(Err(e))) => Err(e.into()),
                _ => Ok(Led::ShutDown),
            }
        }
        Some(why) if ctx.shared() => {
            tracing::error!(error = %why, epoch = lease.epoch, "stepping down: following from now on");
            ctx.role.send_replace(Role::Follower { leader: None });
            Ok(Led::SteppedDown)
        }
        Some(why) => {
            tracing::error!(error = %why, "the resource manager stopped; shutting down");
            Err(why.into())
        }
    }
}

/// Gives the lease up, so that a follower takes over at once; waits at most
/// [`STOP_GRACE`] for the store (a stuck database must not hold the shutdown).
async fn resign(ctx: &Context, lease: Lease) {
    let store = ctx.store.clone();
    let resigning = tokio::task::spawn_blocking(move || store.resign_lease(&lease));
    match tokio::time::timeout(STOP_GRACE, resigning).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not give the store's lease up"),
        Ok(Err(e)) => tracing::warn!(error = %e, "giving the store's lease up failed"),
        Err(_) => tracing::warn!(
            "the store did not answer in time to give the lease up; it lapses by itself"
        ),
    }
}

/// Restores the core from the store, upgrades old records, and makes what starting
/// changed durable at `epoch` before anything is served.
fn restore_to_lead(
    store: &dyn Store,
    config: &ServerConfig,
    epoch: lqsm_store::Epoch,
) -> Result<lqsm_core::ResourceManager, ServerError> {
    let (mut rm, upgrade) = crate::restore_and_check(store, config)?;
    if let Upgrade::After(after) = upgrade {
        let started = Instant::now();
        let jobs = crate::upgrade_records(store, &rm, epoch, after)?;
        tracing::info!(
            jobs,
            ms = started.elapsed().as_millis() as u64,
            "rewrote the stored records in the current format, with their index"
        );
    }
    let effects = rm.take_effects();
    let batch = resource_manager::write_batch(&mut rm, &effects, epoch);
    if !batch.is_empty() {
        store.commit(&batch)?;
    }
    crate::return_freed_memory();
    Ok(rm)
}

/// Renews `lease` every `every` until it is lost, telling `lost` why. It is given up by
/// this server's monotonic clock a fifth of its time to live before it could lapse
/// (counting from when the last successful renewal was sent), so that the leader stops
/// before any other server can take over.
async fn renew(
    store: Arc<dyn Store>,
    mut lease: Lease,
    asked: Instant,
    ttl: Duration,
    every: Duration,
    updates: watch::Sender<Option<Lease>>,
    lost: tokio::sync::oneshot::Sender<StoreError>,
) {
    let margin = ttl / 5;
    let mut valid_until = asked + ttl - margin;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        loop {
            let sent = Instant::now();
            let attempt = {
                let store = store.clone();
                let current = lease.clone();
                tokio::task::spawn_blocking(move || {
                    store.renew_lease(&current, ttl, lease_clock(store.as_ref())?)
                })
            };
            let renewed = match tokio::time::timeout_at(valid_until.into(), attempt).await {
                Ok(Ok(renewed)) => renewed,
                Ok(Err(e)) => Err(StoreError::Engine(format!("renewal task: {e}"))),
                Err(_) => {
                    let _ = lost.send(StoreError::Engine(format!(
                        "the lease of epoch {} could not be renewed in time",
                        lease.epoch
                    )));
                    return;
                }
            };
            match renewed {
                Ok(renewed) => {
                    publish_lease(&renewed);
                    updates.send_replace(Some(renewed.clone()));
                    lease = renewed;
                    valid_until = sent + ttl - margin;
                    break;
                }
                Err(e @ StoreError::LeaseLost { .. }) => {
                    let _ = lost.send(e);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the store's lease could not be renewed; retrying");
                    if Instant::now() + RENEW_RETRY >= valid_until {
                        let _ = lost.send(e);
                        return;
                    }
                    tokio::time::sleep(RENEW_RETRY).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_name_announced_lately_from_another_address_is_refused() {
        let me = Identity {
            node: "a".into(),
            address: "http://10.0.0.1:7420".into(),
        };
        let seen = |node: &str, address: &str, seen_at_ms: u64| ServerInfo {
            node: node.into(),
            address: address.into(),
            seen_at_ms,
        };
        let second = Duration::from_secs(1);
        let other = [seen("a", "http://10.0.0.2:7420", 10_000)];
        let refusal = node_in_use(&other, &me, 11_000, second).expect("refused");
        assert!(
            refusal.contains("node `a` is in use by the server at http://10.0.0.2:7420"),
            "{refusal}"
        );
        // Long silent: that server is gone (renamed, moved), the name is free.
        assert_eq!(node_in_use(&other, &me, 14_000, second), None);
        // Its own earlier announcement (a restart) and other names are fine.
        assert_eq!(
            node_in_use(
                &[seen("a", "http://10.0.0.1:7420", 10_900)],
                &me,
                11_000,
                second
            ),
            None
        );
        assert_eq!(
            node_in_use(
                &[seen("b", "http://10.0.0.2:7420", 10_900)],
                &me,
                11_000,
                second
            ),
            None
        );
    }
}
