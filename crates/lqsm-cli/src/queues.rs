//! `lqsm queue ...`, `lqsm workers ...` and `lqsm cluster`.

use crate::units::{show_cores, show_mib, table};
use crate::{Output, print};
use lqsm_api as api;
use lqsm_client::Client;
use uuid::Uuid;

/// A queue's settings on the command line; absent flags leave a setting alone.
#[derive(clap::Args, Clone)]
pub struct SettingsArgs {
    /// Guaranteed share, percent of the parent's.
    #[arg(long)]
    capacity: Option<f64>,
    /// Elastic ceiling, percent of the parent's.
    #[arg(long)]
    max_capacity: Option<f64>,
    /// Tie-breaking weight.
    #[arg(long)]
    weight: Option<u32>,
    /// Most attempts running at once (0: no limit).
    #[arg(long)]
    max_running: Option<u32>,
    /// Most jobs pending (0: no limit).
    #[arg(long)]
    max_pending: Option<u64>,
    /// Ordering policy (priority-fifo, fifo, smallest-first).
    #[arg(long)]
    ordering: Option<String>,
    /// Placement policy (best-fit, spread).
    #[arg(long)]
    placement: Option<String>,
    /// Admission policy (accept-all, require-capable-worker).
    #[arg(long)]
    admission: Option<String>,
    /// Whether preemption may take attempts back from it.
    #[arg(long)]
    preemptable: Option<bool>,
    /// A leaf's priority preemption inside it: a higher-ranked job waiting past the
    /// cluster's preemption delay takes the place of lower-ranked running ones.
    #[arg(long)]
    priority_preemption: Option<bool>,
    /// Most job starts per second, minute or hour, e.g. 100/s, 10/m (0: no limit);
    /// retries count.
    #[arg(long)]
    rate_limit: Option<String>,
    /// Starts allowed at once after a quiet spell (default 1), with --rate-limit.
    #[arg(long, requires = "rate_limit")]
    burst: Option<u32>,
    /// A limit per job key, NAME=RATE[:BURST] (repeatable), e.g. customer=5/s: each
    /// value of the key (`lqsm submit --key customer=acme`) gets its own. Replaces the
    /// queue's key limits; NAME=0 removes them.
    #[arg(long = "key-limit", value_parser = parse_key_limit)]
    key_limits: Vec<(String, api::RateLimitSpec)>,
    /// A leaf's fair sharing among the values of a job key: `user` (the submitter) or a
    /// key of the jobs (`tenant`); the value holding least goes next, inside each
    /// priority. "" removes it.
    #[arg(long)]
    fairness_key: Option<String>,
    /// The most one value of the fairness key may hold, as a multiple of the queue's
    /// guarantee (YARN's user-limit-factor); 0 removes it.
    #[arg(long)]
    user_limit_factor: Option<f64>,
    /// Make children on demand (a parent such as root.users): the first submit to
    /// `<path>.<name>` creates that leaf with these settings, as JSON: a queue's settings
    /// plus `idle_ms` (removed after this long without unfinished jobs, default 600000)
    /// and `max_queues` (default 1000; 0 removes the template), e.g.
    /// '{"capacity": 5, "max_capacity": 50, "idle_ms": 600000, "max_queues": 200}'.
    #[arg(long, value_parser = parse_template)]
    template: Option<api::QueueTemplateSpec>,
    /// A leaf's right-sizing, as JSON: jobs that name no resources request what their
    /// program or handler used (95th percentile × margin), e.g. '{}' for the defaults
    /// or '{"margin": 1.3, "max": {"cpu": 4, "memory_mib": 8192}}'; '{"margin": 0}'
    /// turns it off.
    #[arg(long, value_parser = parse_auto_resources)]
    auto_resources: Option<api::AutoResourcesSpec>,
}

fn parse_auto_resources(text: &str) -> Result<api::AutoResourcesSpec, String> {
    serde_json::from_str(text).map_err(|e| format!("not right-sizing settings: {e}"))
}

fn parse_template(text: &str) -> Result<api::QueueTemplateSpec, String> {
    serde_json::from_str(text).map_err(|e| format!("not a queue template: {e}"))
}

/// `customer=5/s` or `customer=5/s:10` (a burst of 10).
fn parse_key_limit(text: &str) -> Result<(String, api::RateLimitSpec), String> {
    let (name, limit) = crate::units::parse_pair(text)?;
    let (rate, burst) = match limit.split_once(':') {
        Some((rate, burst)) => {
            let burst = burst
                .parse()
                .map_err(|_| format!("`{text}`: the burst `{burst}` must be a whole number"))?;
            (rate.to_owned(), Some(burst))
        }
        None => (limit, None),
    };
    Ok((name, api::RateLimitSpec { rate, burst }))
}

impl SettingsArgs {
    fn settings(&self) -> api::QueueSettings {
        api::QueueSettings {
            capacity: self.capacity,
            max_capacity: self.max_capacity,
            weight: self.weight,
            max_running: self.max_running,
            max_pending: self.max_pending,
            defaults: None,
            ordering: self.ordering.clone(),
            placement: self.placement.clone(),
            admission: self.admission.clone(),
            preemptable: self.preemptable,
            priority_preemption: self.priority_preemption,
            rate_limit: self.rate_limit.as_ref().map(|rate| api::RateLimitSpec {
                rate: rate.clone(),
                burst: self.burst,
            }),
            key_limits: (!self.key_limits.is_empty())
                .then(|| self.key_limits.iter().cloned().collect()),
            fairness_key: self.fairness_key.clone(),
            user_limit_factor: self.user_limit_factor,
            template: self.template.clone(),
            auto_resources: self.auto_resources.clone(),
        }
    }
}

/// `lqsm queue ...`.
#[derive(clap::Subcommand)]
pub enum QueueCommand {
    /// Create a queue under an existing parent.
    Create {
        /// Its path, e.g. root.etl.
        path: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Change a queue's settings.
    Update {
        /// Its path.
        path: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// The queue tree with live figures.
    List,
    /// One queue in detail.
    Show {
        /// Its path.
        path: String,
    },
    /// What a leaf's attempts used against what they asked for, by program or handler,
    /// and what right-sizing (`--auto-resources`) requests for each.
    Usage {
        /// The leaf's path.
        path: String,
    },
    /// Accept nothing new; keep running what it holds.
    Stop {
        /// Its path.
        path: String,
    },
    /// Accept and run jobs again.
    Start {
        /// Its path.
        path: String,
    },
    /// Accept and start nothing new; let running jobs finish.
    Drain {
        /// Its path.
        path: String,
    },
    /// Delete a queue (with --force, cancelling its unfinished jobs).
    Delete {
        /// Its path.
        path: String,
        /// Cancel its unfinished jobs.
        #[arg(long)]
        force: bool,
    },
    /// Create many queues from a file: TOML `[[queues]]` tables as in the server's
    /// config, or JSON (`{"queues": [...]}` or an array), each `path` plus settings,
    /// parents first. Queues that exist with the same settings are left alone, so
    /// importing a file twice is harmless.
    Import {
        /// The file (`.json` is read as JSON, anything else as TOML).
        file: std::path::PathBuf,
    },
}

/// Queues sent per request by `lqsm queue import` (the server takes up to 10,000).
const IMPORT_CHUNK: usize = 5_000;

/// Reads the queues of an import file.
fn read_import_file(file: &std::path::Path) -> anyhow::Result<Vec<api::CreateQueue>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", file.display()))?;
    let is_json = file.extension().is_some_and(|e| e == "json");
    let document: serde_json::Value = if is_json {
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("`{}` is not valid JSON: {e}", file.display()))?
    } else {
        let table: toml::Table = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("`{}` is not valid TOML: {e}", file.display()))?;
        serde_json::to_value(table)?
    };
    let items = match document {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(mut map) => match map.remove("queues") {
            Some(serde_json::Value::Array(items)) => items,
            _ => anyhow::bail!(
                "`{}` has no list of queues: give `[[queues]]` tables (TOML) or a `queues` array (JSON)",
                file.display()
            ),
        },
        _ => anyhow::bail!("`{}` must hold a list of queues", file.display()),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            serde_json::from_value(item)
                .map_err(|e| anyhow::anyhow!("queue {} of `{}`: {e}", i + 1, file.display()))
        })
        .collect()
}

/// Runs `lqsm queue import FILE`: sends the queues in chunks, in file order.
async fn import(client: &Client, file: &std::path::Path, output: Output) -> anyhow::Result<u8> {
    let queues = read_import_file(file)?;
    let progress = match output {
        Output::Human => indicatif::ProgressBar::new(queues.len() as u64),
        Output::Json => indicatif::ProgressBar::hidden(),
    };
    let mut results = Vec::with_capacity(queues.len());
    for chunk in queues.chunks(IMPORT_CHUNK) {
        let answer = client.create_queues(chunk).await?;
        progress.inc(chunk.len() as u64);
        results.extend(answer.results);
    }
    progress.finish_and_clear();
    let created = results.iter().filter(|r| r.created).count();
    let refused: Vec<&api::QueueBatchItem> = results.iter().filter(|r| r.error.is_some()).collect();
    let unchanged = results.len() - created - refused.len();
    let mut human = format!(
        "created {created}, unchanged {unchanged}, refused {}",
        refused.len()
    );
    for item in refused.iter().take(10) {
        if let Some(error) = &item.error {
            human.push_str(&format!("\n  {}: {}", item.path, error.message));
        }
    }
    if refused.len() > 10 {
        human.push_str(&format!(
            "\n  ... and {} more (-o json lists all)",
            refused.len() - 10
        ));
    }
    let summary = serde_json::json!({
        "created": created,
        "unchanged": unchanged,
        "refused": refused,
    });
    print(output, &human, &summary);
    Ok(if refused.is_empty() { 0 } else { 1 })
}

fn percent(f: f64) -> String {
    let p = f * 100.0;
    if (p - p.round()).abs() < 0.05 {
        format!("{}%", p.round() as i64)
    } else {
        format!("{p:.1}%")
    }
}

/// One line per queue, drawn as a tree.
fn tree(root: &api::QueueView) -> String {
    fn walk(
        q: &api::QueueView,
        prefix: &str,
        last: bool,
        is_root: bool,
        rows: &mut Vec<Vec<String>>,
    ) {
        let name = q.path.rsplit('.').next().unwrap_or(&q.path);
        let label = if is_root {
            name.to_owned()
        } else {
            format!("{prefix}{}{name}", if last { "└─ " } else { "├─ " })
        };
        // A queue shown only to place the token's queues has no figures of its own.
        let figures = if q.placement_only {
            vec![
                format!("- / {}", show_cores(q.guaranteed.cpu)),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
            ]
        } else {
            vec![
                format!(
                    "{} / {}",
                    show_cores(q.used.cpu),
                    show_cores(q.guaranteed.cpu)
                ),
                show_mib(q.used.memory_mib),
                q.pending.to_string(),
                q.running.to_string(),
            ]
        };
        let mut row = vec![
            label,
            q.state.to_string(),
            percent(q.abs_guarantee),
            percent(q.abs_max),
        ];
        row.extend(figures);
        rows.push(row);
        let child_prefix = if is_root {
            String::new()
        } else {
            format!("{prefix}{}", if last { "   " } else { "│  " })
        };
        for (i, c) in q.children.iter().enumerate() {
            walk(c, &child_prefix, i + 1 == q.children.len(), false, rows);
        }
    }
    let mut rows = Vec::new();
    walk(root, "", true, true, &mut rows);
    table(
        &[
            "QUEUE",
            "STATE",
            "GUARANTEE",
            "MAX",
            "CPU USED / GUAR.",
            "MEMORY",
            "PENDING",
            "RUNNING",
        ],
        &rows,
    )
}

fn show_limit(limit: &api::RateLimitSpec) -> String {
    format!("{} (burst {})", limit.rate, limit.burst.unwrap_or(1))
}

/// The rate limit lines of a queue's detail; empty when it has none.
fn rate_limit_lines(q: &api::QueueView) -> String {
    let s = &q.settings;
    let mut out = String::new();
    if let Some(limit) = &s.rate_limit {
        out.push_str(&format!("rate limit:   {}\n", show_limit(limit)));
    }
    if let Some(limits) = s.key_limits.as_ref().filter(|l| !l.is_empty()) {
        let each: Vec<String> = limits
            .iter()
            .map(|(name, limit)| format!("{name} {}", show_limit(limit)))
            .collect();
        out.push_str(&format!("key limits:   {} (per value)\n", each.join(", ")));
    }
    if let Some(until) = q.rate_limited_until_ms {
        out.push_str(&format!(
            "waiting:      next job {}\n",
            crate::jobs::rate_limited_until(until)
        ));
    }
    out
}

fn detail(q: &api::QueueView) -> String {
    let s = &q.settings;
    let or_none = |v: Option<u64>| match v {
        Some(0) | None => "none".to_owned(),
        Some(n) => n.to_string(),
    };
    format!(
        "queue:        {}\nstate:        {}\ncapacity:     {}% of parent ({} of cluster), max {}% ({})\nused:         {} cpu, {}\npending:      {}\nrunning:      {}\nmax running:  {}\nmax pending:  {}\npolicies:     ordering {}, placement {}, admission {}\npreemptable:  {}, priority preemption inside: {}\nsubmitted:    {}  succeeded {}  failed {}  cancelled {}  expired {}\nmean wait:    {} ms, mean run {} ms\n",
        q.path,
        q.state,
        q.capacity,
        percent(q.abs_guarantee),
        q.max_capacity,
        percent(q.abs_max),
        show_cores(q.used.cpu),
        show_mib(q.used.memory_mib),
        q.pending,
        q.running,
        or_none(s.max_running.map(u64::from)),
        or_none(s.max_pending),
        s.ordering.as_deref().unwrap_or("-"),
        s.placement.as_deref().unwrap_or("-"),
        s.admission.as_deref().unwrap_or("-"),
        s.preemptable.unwrap_or(true),
        s.priority_preemption.unwrap_or(false),
        q.counts.submitted,
        q.counts.succeeded,
        q.counts.failed,
        q.counts.cancelled,
        q.counts.expired,
        q.counts.mean_wait_ms,
        q.counts.mean_run_ms,
    ) + &rate_limit_lines(q)
        + &fairness_lines(q)
        + &on_demand_lines(q)
}

/// A template's line, and a queue made on demand's: idle since, removed, its note.
fn on_demand_lines(q: &api::QueueView) -> String {
    let mut out = String::new();
    if let Some(t) = &q.settings.template {
        out.push_str(&format!(
            "template:     children made on demand, at most {}: capacity {}%, max {}%, removed after {} idle\n",
            t.max_queues.unwrap_or(0),
            t.settings.capacity.unwrap_or(0.0),
            t.settings.max_capacity.unwrap_or(100.0),
            crate::units::show_ms(t.idle_ms.unwrap_or(0)),
        ));
    }
    if q.on_demand {
        let when = match (q.removed_at_ms, q.idle_since_ms) {
            (Some(at), _) => format!("removed {} (idle); a submit makes it again", ago(at)),
            (None, Some(since)) => format!("idle since {}", ago(since)),
            (None, None) => "in use".to_owned(),
        };
        out.push_str(&format!("made on demand: {when}\n"));
    }
    if let Some(note) = &q.note {
        out.push_str(&format!("note:         {note}\n"));
    }
    if let Some(auto) = &q.settings.auto_resources {
        let bound = auto.max.as_ref().map_or_else(String::new, |max| {
            format!(
                ", at most {} cpu, {}",
                show_cores(max.cpu.unwrap_or(0.0)),
                show_mib(max.memory_mib.unwrap_or(0))
            )
        });
        out.push_str(&format!(
            "right-sizing: p95 x {} after {} attempts{bound} (lqsm queue usage {})\n",
            auto.margin.unwrap_or(0.0),
            auto.min_samples.unwrap_or(0),
            q.path
        ));
    }
    out
}

/// A leaf's fair sharing: its key, its user limit, and who holds most.
fn fairness_lines(q: &api::QueueView) -> String {
    let s = &q.settings;
    let Some(key) = &s.fairness_key else {
        return String::new();
    };
    let limit = match s.user_limit_factor {
        Some(factor) => format!(", each at most {factor}x the guarantee"),
        None => String::new(),
    };
    let mut out = format!("fair among:   {key}{limit}\n");
    for u in &q.users {
        let name = if u.name.is_empty() { "(none)" } else { &u.name };
        out.push_str(&format!(
            "  {name:<20} {} running, {} cpu, {} ({} of cluster)\n",
            u.running,
            show_cores(u.used.cpu),
            show_mib(u.used.memory_mib),
            percent(u.share),
        ));
    }
    out
}

/// `lqsm queue usage`: requested against used, one line per name.
fn usage_table(usage: &api::QueueUsage) -> String {
    let rows: Vec<Vec<String>> = usage
        .names
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                u.attempts.to_string(),
                format!(
                    "{} cpu, {}",
                    show_cores(u.requested.cpu),
                    show_mib(u.requested.memory_mib)
                ),
                format!(
                    "{} / {} / {}",
                    show_mib(u.memory_p50_mib),
                    show_mib(u.memory_p95_mib),
                    show_mib(u.memory_max_mib)
                ),
                format!(
                    "{} / {}",
                    show_cores(round_cores(u.cpu_p50)),
                    show_cores(round_cores(u.cpu_p95))
                ),
                u.auto_request.as_ref().map_or_else(
                    || "-".to_owned(),
                    |r| format!("{} cpu, {}", show_cores(r.cpu), show_mib(r.memory_mib)),
                ),
            ]
        })
        .collect();
    let state = if usage.auto_resources {
        "right-sizes jobs that name no resources"
    } else {
        "does not right-size (jobs may ask with --auto-resources)"
    };
    let mut out = format!("{}: {state}\n", usage.path);
    if rows.is_empty() {
        out.push_str("no measured attempts yet (only commands are measured)\n");
        return out;
    }
    out.push_str(&table(
        &[
            "NAME",
            "ATTEMPTS",
            "REQUESTED",
            "PEAK MEMORY P50 / P95 / MAX",
            "CPU P50 / P95",
            "AUTO REQUEST",
        ],
        &rows,
    ));
    out
}

/// Cores to three decimals, as a request can hold.
fn round_cores(cores: f64) -> f64 {
    (cores * 1000.0).round() / 1000.0
}

/// Runs `lqsm queue ...`.
pub async fn queue(client: &Client, cmd: &QueueCommand, output: Output) -> anyhow::Result<u8> {
    let view = match cmd {
        QueueCommand::Create { path, settings } => {
            let req = api::CreateQueue {
                path: path.clone(),
                settings: settings.settings(),
            };
            client.create_queue(&req).await?
        }
        QueueCommand::Import { file } => return import(client, file, output).await,
        QueueCommand::Update { path, settings } => {
            client.update_queue(path, &settings.settings()).await?
        }
        QueueCommand::List => {
            let root = client.queues().await?;
            print(output, &tree(&root), &root);
            return Ok(0);
        }
        QueueCommand::Show { path } => client.queue(path).await?,
        QueueCommand::Usage { path } => {
            let usage = client.queue_usage(path).await?;
            print(output, &usage_table(&usage), &usage);
            return Ok(0);
        }
        QueueCommand::Stop { path } => client.stop_queue(path).await?,
        QueueCommand::Start { path } => client.start_queue(path).await?,
        QueueCommand::Drain { path } => client.drain_queue(path).await?,
        QueueCommand::Delete { path, force } => {
            client.delete_queue(path, *force).await?;
            print(
                output,
                &format!("deleted {path}"),
                &serde_json::json!({ "deleted": path }),
            );
            return Ok(0);
        }
    };
    print(output, &detail(&view), &view);
    Ok(0)
}

/// `lqsm workers ...`.
#[derive(clap::Subcommand)]
pub enum WorkersCommand {
    /// Every worker the cluster knows.
    List,
    /// Take a worker out of scheduling; it finishes what it runs.
    Drain {
        /// The worker's id.
        id: Uuid,
    },
    /// Put a drained worker back to work.
    Undrain {
        /// The worker's id.
        id: Uuid,
    },
}

fn worker_rows(workers: &[api::WorkerView]) -> Vec<Vec<String>> {
    workers
        .iter()
        .map(|w| {
            vec![
                w.name.clone(),
                w.id.to_string(),
                if w.quiet {
                    format!("{} (quiet)", w.state)
                } else {
                    w.state.to_string()
                },
                format!(
                    "{} / {}",
                    show_cores(w.used.cpu),
                    show_cores(w.capacity.cpu)
                ),
                format!(
                    "{} / {}",
                    show_mib(w.used.memory_mib),
                    show_mib(w.capacity.memory_mib)
                ),
                w.attempts.to_string(),
            ]
        })
        .collect()
}

const WORKER_HEADER: [&str; 6] = [
    "NAME",
    "ID",
    "STATE",
    "CPU USED / CAP.",
    "MEMORY USED / CAP.",
    "ATTEMPTS",
];

/// Runs `lqsm workers ...`.
pub async fn workers(client: &Client, cmd: &WorkersCommand, output: Output) -> anyhow::Result<u8> {
    match cmd {
        WorkersCommand::List => {
            let workers = client.workers().await?;
            print(
                output,
                &table(&WORKER_HEADER, &worker_rows(&workers)),
                &workers,
            );
        }
        WorkersCommand::Drain { id } => {
            let view = client.drain_worker(*id).await?;
            let rows = worker_rows(std::slice::from_ref(&view));
            print(output, &table(&WORKER_HEADER, &rows), &view);
        }
        WorkersCommand::Undrain { id } => {
            let view = client.undrain_worker(*id).await?;
            let rows = worker_rows(std::slice::from_ref(&view));
            print(output, &table(&WORKER_HEADER, &rows), &view);
        }
    }
    Ok(0)
}

/// Runs `lqsm cluster`.
/// `lqsm cluster`.
#[derive(clap::Args, Clone)]
pub struct ClusterArgs {
    /// List the autoscaler's recent events (decisions with their reasons, workers
    /// started and stopped, provider failures).
    #[arg(long)]
    events: bool,
}

fn ago(at_ms: u64) -> String {
    lqsm_api::human_duration(std::time::Duration::from_millis(
        lqsm_api::epoch_ms().saturating_sub(at_ms),
    ))
}

/// The autoscale section of `lqsm cluster`: a line per pool, then the events if asked.
fn autoscale_text(view: &api::AutoscaleView, events: bool) -> String {
    let mut text = String::new();
    if !view.enabled {
        text.push_str("autoscale: off\n");
        return text;
    }
    text.push_str(&format!(
        "autoscale: every {:.1} s, {} pool(s)\n",
        view.interval_ms as f64 / 1000.0,
        view.pools.len()
    ));
    for pool in &view.pools {
        let desired = pool
            .desired
            .map_or_else(|| "-".to_owned(), |d| d.to_string());
        text.push_str(&format!(
            "  pool {} ({}): {} taking work, {} draining, {} starting, desired {desired} in [{}, {}], backlog {}, running {}\n",
            pool.name,
            pool.provider,
            pool.current,
            pool.draining,
            pool.pending,
            pool.min,
            pool.max,
            pool.backlog,
            pool.running
        ));
        if let Some(last) = &pool.last_decision {
            text.push_str(&format!(
                "    last: {} {} ago: {}\n",
                last.kind,
                ago(last.at_ms),
                last.reason
            ));
        }
    }
    if events {
        text.push_str("events:\n");
        if view.events.is_empty() {
            text.push_str("  none\n");
        }
        for e in &view.events {
            text.push_str(&format!(
                "  {} ago  {}  {}  {} -> {}  {}\n",
                ago(e.at_ms),
                e.pool,
                e.kind,
                e.from,
                e.to,
                e.reason
            ));
        }
    }
    text
}

pub async fn cluster(client: &Client, args: &ClusterArgs, output: Output) -> anyhow::Result<u8> {
    let c = client.cluster().await?;
    fn counts<K: std::fmt::Display>(
        m: &std::collections::BTreeMap<K, impl std::fmt::Display>,
    ) -> String {
        if m.is_empty() {
            "none".to_owned()
        } else {
            m.iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
    let mut human = format!(
        "workers:   {}\ncapacity:  {} cpu, {}, {} gpu\nused:      {} cpu, {}, {} gpu\njobs:      {}\nqueues:    {}\n",
        counts(&c.workers),
        show_cores(c.total.cpu),
        show_mib(c.total.memory_mib),
        c.total.gpu,
        show_cores(c.used.cpu),
        show_mib(c.used.memory_mib),
        c.used.gpu,
        counts(&c.jobs),
        c.queues,
    );
    if let Some(store) = &c.store {
        let lapses_in = store
            .lease_expires_at_ms
            .saturating_sub(lqsm_api::epoch_ms());
        human.push_str(&format!(
            "store:     {}, written by `{}` (epoch {}, lease renewed, lapses in {:.1} s)\n",
            store.backend,
            store.leader,
            store.epoch,
            lapses_in as f64 / 1000.0
        ));
        for server in &store.servers {
            let seen_ago = lqsm_api::epoch_ms().saturating_sub(server.seen_at_ms);
            human.push_str(&format!(
                "server:    {} at {}{} (seen {:.1} s ago)\n",
                server.node,
                server.address,
                if server.leader { ", leading" } else { "" },
                seen_ago as f64 / 1000.0
            ));
        }
    }
    // A server of a release without the autoscaler answers 404: show the rest.
    let autoscale = match client.autoscale().await {
        Ok(view) => Some(view),
        Err(e) if e.status() == Some(404) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(view) = &autoscale {
        human.push_str(&autoscale_text(view, args.events));
    }
    // Scripts reading `lqsm cluster -o json` keep the summary's shape, with the
    // autoscaler in one more field.
    print(output, &human, &merged(&c, autoscale.as_ref()));
    Ok(0)
}

/// The cluster summary's JSON with an `autoscale` field added.
fn merged(c: &api::ClusterSummary, autoscale: Option<&api::AutoscaleView>) -> serde_json::Value {
    let mut value = serde_json::to_value(c).unwrap_or_default();
    if let (Some(fields), Some(view)) = (value.as_object_mut(), autoscale) {
        fields.insert(
            "autoscale".to_owned(),
            serde_json::to_value(view).unwrap_or_default(),
        );
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(path: &str, placement_only: bool, pending: u64) -> api::QueueView {
        let mut view: api::QueueView = serde_json::from_value(serde_json::json!({
            "path": path, "state": "running", "capacity": 50.0, "max_capacity": 100.0,
            "abs_guarantee": 0.5, "abs_max": 1.0,
            "guaranteed": {"cpu": 2.0, "memory_mib": 1024, "gpu": 0},
            "used": {"cpu": 0.0, "memory_mib": 0, "gpu": 0},
            "pending": pending, "running": 0,
            "counts": {"submitted": 0, "succeeded": 0, "failed": 0, "cancelled": 0,
                       "expired": 0, "mean_wait_ms": 0, "mean_run_ms": 0},
            "settings": {},
        }))
        .expect("a queue view");
        view.placement_only = placement_only;
        view
    }

    #[test]
    fn a_queue_shown_only_to_place_others_shows_no_figures_of_its_own() {
        let mut root = queue("root", true, 0);
        root.children = vec![queue("root.etl", false, 7)];
        let drawn = tree(&root);
        let rows: Vec<&str> = drawn.lines().collect();
        let root_row: Vec<&str> = rows[1].split_whitespace().collect();
        assert_eq!(root_row[root_row.len() - 3..], ["-", "-", "-"], "{drawn}");
        let leaf_row: Vec<&str> = rows[2].split_whitespace().collect();
        assert_eq!(leaf_row[leaf_row.len() - 2..], ["7", "0"], "{drawn}");
    }
}
