//! `lqsm submit` and `lqsm job ...`.

use crate::units::{
    parse_duration, parse_mib, parse_pair, parse_resource, show_cores, show_mib, show_ms, table,
};
use crate::{Output, print};
use indicatif::{ProgressBar, ProgressStyle};
use lqsm_api as api;
use lqsm_client::{Client, JobFilter};
use std::time::{Duration, UNIX_EPOCH};
use uuid::Uuid;

/// What a job runs and asks for: the options `lqsm submit` and `lqsm schedule create`
/// share.
#[derive(clap::Args)]
pub struct JobArgs {
    /// Leaf queue to submit to.
    #[arg(short, long, default_value = "root.default")]
    queue: String,
    /// Run this registered function instead of a command.
    #[arg(long)]
    function: Option<String>,
    /// The function's arguments, as JSON.
    #[arg(long, requires = "function")]
    args: Option<String>,
    /// CPU cores per attempt.
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory per attempt, e.g. 512M, 2G.
    #[arg(long, value_parser = parse_mib)]
    memory: Option<u64>,
    /// GPUs per attempt.
    #[arg(long)]
    gpus: Option<u32>,
    /// A custom resource per attempt, NAME=N (repeatable), e.g. licence=1; a worker
    /// offering it (`lqsm worker --resource licence=2`) runs the job.
    #[arg(long = "resource", value_parser = parse_resource)]
    resources: Vec<(String, u64)>,
    /// Size cpu and memory from what this program or handler used in the queue (95th
    /// percentile × margin, `lqsm queue usage`); --cpus/--memory hold until enough
    /// attempts were observed.
    #[arg(long)]
    auto_resources: bool,
    /// Higher runs first.
    #[arg(long, allow_negative_numbers = true)]
    priority: Option<i32>,
    /// Retries after a failure (attempts in all = retries + 1).
    #[arg(long)]
    retries: Option<u32>,
    /// Longest an attempt may run, e.g. 30s, 10m.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Warn an attempt after this long (a command gets the worker's soft-timeout signal,
    /// SIGUSR1 by default), before --timeout kills it.
    #[arg(long, value_parser = parse_duration)]
    soft_timeout: Option<Duration>,
    /// A label the worker must carry, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_pair)]
    labels: Vec<(String, String)>,
    /// A tag (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// A key the queue's per-key rate limits apply to, NAME=VALUE (repeatable), e.g.
    /// customer=acme.
    #[arg(long = "key", value_parser = parse_pair)]
    keys: Vec<(String, String)>,
    /// An environment variable of the command, NAME=VALUE (repeatable).
    #[arg(long = "env", value_parser = parse_pair)]
    env: Vec<(String, String)>,
    /// A secret environment variable of the command, NAME=VALUE (repeatable): the
    /// worker gives it to the command, every view of the job shows `***` for it, and
    /// its value is masked in the job's logs. Better read from a file or a variable
    /// than typed: `--secret-env TOKEN="$(cat token)"`.
    // Read as text and split later: a value clap refuses is repeated in its error.
    #[arg(long = "secret-env", value_name = "NAME=VALUE")]
    secret_env: Vec<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
}

/// Options of `lqsm submit`.
#[derive(clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Start no sooner than this from now, e.g. 5m.
    #[arg(long, value_parser = parse_duration, conflicts_with = "at")]
    delay: Option<Duration>,
    /// Start no sooner than this instant (RFC 3339, e.g. 2026-12-01T09:00:00Z).
    #[arg(long, value_parser = parse_instant)]
    at: Option<u64>,
    /// Give up if not started within this long, e.g. 1h.
    #[arg(long, value_parser = parse_duration)]
    expires: Option<Duration>,
    /// Same key in the same queue: the same job.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Wait for the job and exit with its exit code (1 if it failed otherwise).
    #[arg(long)]
    wait: bool,
    /// Submit this many copies.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Run it once on every active worker that matches it (a broadcast): one job per
    /// worker, together a workflow (`lqsm workflow get ID`).
    #[arg(long, conflicts_with = "count")]
    broadcast: bool,
    /// With --broadcast: also run it on each matching worker that registers later, until
    /// --expires passes or the broadcast is cancelled (`lqsm workflow cancel ID`).
    #[arg(long, requires = "broadcast")]
    new_workers: bool,
}

fn parse_instant(text: &str) -> Result<u64, String> {
    let t = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("`{text}` is not an instant like 2026-12-01T09:00:00Z: {e}"))?;
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| format!("`{text}` is before 1970"))
}

impl JobArgs {
    /// The job these options describe, with no times or identity of its own (those are
    /// each submission's).
    pub fn job(&self) -> anyhow::Result<api::SubmitJob> {
        let secret_env = self
            .secret_env
            .iter()
            .map(|text| {
                parse_pair(text).map_err(|_| {
                    anyhow::anyhow!(
                        "--secret-env must be NAME=VALUE (the text given is not repeated here: it may hold the secret)"
                    )
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let kind = match (&self.function, self.command.is_empty()) {
            (Some(_), true) if !self.env.is_empty() || !self.secret_env.is_empty() => {
                anyhow::bail!("--env and --secret-env are for commands, not --function")
            }
            (Some(handler), true) => {
                // Checked to be JSON, then sent as typed.
                let args = match &self.args {
                    Some(text) => api::RawJson::parse(text.trim())
                        .map_err(|e| anyhow::anyhow!("--args is not JSON: {e}"))?,
                    None => api::RawJson::null(),
                };
                api::JobKind::Function {
                    handler: handler.clone(),
                    args,
                }
            }
            (None, false) => api::JobKind::Command {
                argv: self.command.clone(),
                env: self.env.iter().chain(&secret_env).cloned().collect(),
                cwd: None,
            },
            (Some(_), false) => {
                anyhow::bail!("give either --function or a command after `--`, not both")
            }
            (None, true) => anyhow::bail!(
                "nothing to run: give a command after `--` (e.g. `-- echo hi`) or --function NAME"
            ),
        };
        let mut job = api::SubmitJob::new(&self.queue, kind);
        let asks_resources = self.cpus.is_some()
            || self.memory.is_some()
            || self.gpus.is_some()
            || !self.resources.is_empty();
        if asks_resources {
            job.resources = Some(api::Resources {
                cpu: self.cpus,
                memory_mib: self.memory,
                gpu: self.gpus,
                custom: self.resources.iter().cloned().collect(),
            });
        }
        job.auto_resources = self.auto_resources;
        job.priority = self.priority;
        job.timeout_ms = self.timeout.map(|d| d.as_millis() as u64);
        job.soft_timeout_ms = self.soft_timeout.map(|d| d.as_millis() as u64);
        job.retry = self.retries.map(|r| api::RetrySpec {
            max_attempts: Some(r.saturating_add(1)),
            ..api::RetrySpec::default()
        });
        job.selector = self.labels.iter().cloned().collect();
        job.tags = self.tags.clone();
        job.keys = self.keys.iter().cloned().collect();
        if let Some((name, _)) = secret_env
            .iter()
            .find(|(name, _)| self.env.iter().any(|(plain, _)| plain == name))
        {
            anyhow::bail!("`{name}` is given both with --env and with --secret-env");
        }
        job.secret_env = secret_env.into_iter().map(|(name, _)| name).collect();
        Ok(job)
    }
}

impl SubmitArgs {
    fn job(&self) -> anyhow::Result<api::SubmitJob> {
        let mut job = self.job.job()?;
        job.delay_ms = self.delay.map(|d| d.as_millis() as u64);
        job.not_before_ms = self.at;
        job.expires_at_ms = self.expires.map(|d| api::epoch_ms() + d.as_millis() as u64);
        job.idempotency_key = self.idempotency_key.clone();
        Ok(job)
    }
}

/// `lqsm submit`.
pub async fn submit(client: &Client, args: &SubmitArgs, output: Output) -> anyhow::Result<u8> {
    let job = args.job()?;
    anyhow::ensure!(args.count >= 1, "--count must be at least 1");
    if args.broadcast {
        let submitted = client.broadcast(&job, args.new_workers).await?;
        if !args.wait {
            let mut human = format!(
                "broadcast {} on {} workers\n",
                submitted.id,
                submitted.nodes.len()
            );
            for node in &submitted.nodes {
                human.push_str(&format!("  {}  {}\n", node.id, node.name));
            }
            print(output, &human, &submitted);
            return Ok(0);
        }
        let view = client
            .wait_workflow(submitted.id, Duration::from_secs(24 * 3600))
            .await?;
        print(output, &crate::workflows::draw(&view), &view);
        return Ok(u8::from(view.state != api::WorkflowState::Succeeded));
    }
    if args.count == 1 {
        let submitted = client.submit(&job).await?;
        if !args.wait {
            let human = submitted.id.to_string();
            print(
                output,
                &human,
                &serde_json::json!({ "id": submitted.id, "created": submitted.created }),
            );
            return Ok(0);
        }
        let view = wait_for(client, submitted.id, None).await?;
        print(output, &describe(&view), &view);
        return Ok(exit_code(&view));
    }
    let bar = ProgressBar::new(args.count as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} submitted ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if output == Output::Json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut ids = Vec::with_capacity(args.count);
    let mut left = args.count;
    while left > 0 {
        let n = left.min(1000);
        let batch: Vec<api::SubmitJob> = (0..n).map(|_| job.clone()).collect();
        let result = client.submit_batch(&batch).await?;
        for item in result.results {
            match (item.id, item.error) {
                (Some(id), _) => ids.push(id),
                (None, Some(e)) => anyhow::bail!("{}", e.message),
                (None, None) => {
                    anyhow::bail!("the server answered an item with neither id nor error")
                }
            }
        }
        left -= n;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    if args.wait {
        let mut worst = 0;
        for id in &ids {
            let view = wait_for(client, *id, None).await?;
            worst = worst.max(exit_code(&view));
        }
        print(output, &format!("{} jobs finished", ids.len()), &ids);
        return Ok(worst);
    }
    let human = ids
        .iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    print(output, &human, &serde_json::json!({ "ids": ids }));
    Ok(0)
}

/// Waits until the job is finished (or `limit` passes).
async fn wait_for(
    client: &Client,
    id: Uuid,
    limit: Option<Duration>,
) -> anyhow::Result<api::JobView> {
    let started = std::time::Instant::now();
    loop {
        let left = limit.map_or(Duration::from_secs(300), |l| {
            l.saturating_sub(started.elapsed())
        });
        let view = client.wait(id, left.min(Duration::from_secs(300))).await?;
        if view.state.is_terminal() || limit.is_some_and(|l| started.elapsed() >= l) {
            return Ok(view);
        }
    }
}

/// The exit code of a finished job: a command's own code, else 0 for success, 1 otherwise.
fn exit_code(view: &api::JobView) -> u8 {
    match (view.state, view.exit_code) {
        (_, Some(code)) => u8::try_from(code.clamp(0, 255)).unwrap_or(1),
        (api::JobState::Succeeded, None) => 0,
        _ => 1,
    }
}

/// `rate limited until 2026-11-30T17:00:00.250Z (in 250ms)`.
pub fn rate_limited_until(until_ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(until_ms);
    format!(
        "rate limited until {} (in {})",
        humantime::format_rfc3339_millis(at),
        show_ms(until_ms.saturating_sub(api::epoch_ms()))
    )
}

fn ago(ms: u64) -> String {
    format!("{} ago", show_ms(api::epoch_ms().saturating_sub(ms)))
}

/// A job as a person reads it.
fn describe(view: &api::JobView) -> String {
    let what = match &view.kind {
        api::JobKind::Command { argv, .. } => argv.join(" "),
        api::JobKind::Function { handler, .. } => format!("{handler}(…)"),
    };
    let mut lines = vec![
        format!("id:         {}", view.id),
        format!("queue:      {}", view.queue),
        format!("state:      {}", view.state),
        format!("runs:       {what}"),
    ];
    if let Some(until) = view.rate_limited_until_ms {
        lines.push(format!("waiting:    {}", rate_limited_until(until)));
    }
    if let Some(progress) = &view.progress {
        lines.push(format!("progress:   {progress}"));
    }
    if let (Some(workflow), Some(name)) = (view.workflow, &view.name) {
        lines.push(format!("workflow:   {workflow} (node {name})"));
    }
    if !view.after.is_empty() {
        let shown: Vec<String> = view.after.iter().take(3).map(Uuid::to_string).collect();
        let more = view.after.len().saturating_sub(3);
        let when = view.run_when.unwrap_or(api::RunWhen::AllSucceeded);
        lines.push(format!(
            "after:      {}{} ({when})",
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    if !view.keys.is_empty() {
        let keys: Vec<String> = view.keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
        lines.push(format!("keys:       {}", keys.join(", ")));
    }
    lines.extend([
        format!(
            "resources:  {} cpu, {}{}",
            show_cores(view.resources.cpu),
            show_mib(view.resources.memory_mib),
            if view.resources.gpu > 0 {
                format!(", {} gpu", view.resources.gpu)
            } else {
                String::new()
            }
        ),
        format!(
            "submitted:  {} by {}",
            ago(view.submitted_at_ms),
            if view.submitted_by.is_empty() {
                "(not recorded by this server)"
            } else {
                &view.submitted_by
            }
        ),
        format!(
            "attempts:   {} of {}",
            view.attempts.len(),
            view.max_attempts
        ),
    ]);
    if let Some(of) = view.retry_of {
        lines.push(format!("retry of:   {of}"));
    }
    for a in &view.attempts {
        let ran = match (a.started_at_ms, a.finished_at_ms) {
            (Some(s), Some(f)) => format!(", ran {}", show_ms(f.saturating_sub(s))),
            (Some(_), None) => ", running".into(),
            _ => String::new(),
        };
        let outcome = a.outcome.map_or("in progress", api::AttemptOutcome::as_str);
        let message = a
            .message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        lines.push(format!(
            "  #{} on {}{ran} — {outcome}{message}",
            a.number, a.worker
        ));
    }
    if let Some(code) = view.exit_code {
        lines.push(format!("exit code:  {code}"));
    }
    if let Some(result) = &view.result {
        lines.push(format!("result:     {result}"));
    }
    if let Some(reason) = &view.reason {
        lines.push(format!("reason:     {reason}"));
    }
    lines.join("\n") + "\n"
}

/// `lqsm job ...`.
#[derive(clap::Subcommand)]
pub enum JobCommand {
    /// Show a job.
    Get {
        /// The job's id.
        id: Uuid,
    },
    /// List jobs, newest first (a page at a time; says how to see more).
    List {
        /// Only this queue (and below).
        #[arg(short, long)]
        queue: Option<String>,
        /// Only this state (pending, scheduled, running, succeeded, failed, cancelled,
        /// expired).
        #[arg(long)]
        state: Option<api::JobState>,
        /// Only jobs with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only jobs submitted with this token name (`anonymous` on a server without
        /// tokens). A page may then hold fewer than `--limit` while more follow.
        #[arg(long)]
        submitter: Option<String>,
        /// Oldest first instead.
        #[arg(long)]
        oldest: bool,
        /// At most this many per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this job (the cursor a previous listing printed).
        #[arg(long, conflicts_with = "all")]
        cursor: Option<String>,
        /// Every matching job, page after page.
        #[arg(long)]
        all: bool,
    },
    /// Cancel a job (a running one is killed on its worker), or every unfinished job of a
    /// queue (and below), a tag or a state: `lqsm job cancel --queue root.etl --tag nightly`.
    Cancel {
        /// The job's id.
        #[arg(required_unless_present_any = ["queue", "tag", "state"], conflicts_with_all = ["queue", "tag", "state", "reason"])]
        id: Option<Uuid>,
        /// Every unfinished job of this queue and the queues under it (`root` for all).
        #[arg(short, long)]
        queue: Option<String>,
        /// Every unfinished job with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Every job in this state (pending, scheduled or running).
        #[arg(long)]
        state: Option<api::JobState>,
        /// Why (kept with each job).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Run a finished job again: a new job with the same settings, linked to the old one.
    Retry {
        /// The finished job's id.
        id: Uuid,
    },
    /// Wait for a job to finish; exits with its exit code.
    Wait {
        /// The job's id.
        id: Uuid,
        /// Give up after this long, e.g. 30s.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// Print the captured output of a job (while it runs, what its worker uploaded so
    /// far).
    Logs {
        /// The job's id.
        id: Uuid,
        /// Keep printing the output as it grows, until the job finishes (with `-o json`,
        /// one `JobLogs` per line).
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

/// How often `lqsm job logs --follow` asks for more output (workers upload it about
/// once a second).
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// Prints the output of job `id` as it grows, until the job has finished and its
/// report's output is printed to the end.
async fn follow_logs(client: &Client, id: Uuid, output: Output) -> anyhow::Result<()> {
    use std::io::Write;
    let mut offset = 0;
    let mut attempt = None;
    let mut finished = false;
    let mut told_cut = false;
    loop {
        let logs = client.logs_from(id, offset).await?;
        if logs.attempt.is_some() && attempt.is_some() && logs.attempt != attempt {
            // Another attempt: its output counts from its own first byte.
            if let (Output::Human, Some(n)) = (output, logs.attempt) {
                eprintln!("[lqsm: attempt {n}]");
            }
            attempt = logs.attempt;
            offset = 0;
            continue;
        }
        attempt = logs.attempt.or(attempt);
        match output {
            Output::Human => {
                if logs.missed {
                    eprintln!("[lqsm: output skipped: no longer kept by the server]");
                }
                if logs.next_offset < offset && !told_cut {
                    told_cut = true;
                    eprintln!(
                        "[lqsm: the output was cut to its tail: `lqsm job logs {id}` shows what is kept]"
                    );
                }
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(logs.text.as_bytes())?;
                stdout.flush()?;
            }
            Output::Json => {
                #[allow(clippy::print_stdout)] // Printing is this binary's job.
                {
                    println!("{}", serde_json::to_string(&logs)?);
                }
            }
        }
        offset = offset.max(logs.next_offset);
        if finished {
            return Ok(());
        }
        if !logs.running {
            // One more read once the job is seen finished: its report may have come
            // after this answer.
            finished = client.job(id).await?.state.is_terminal();
            if finished {
                continue;
            }
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

/// Runs `lqsm job ...`.
pub async fn job(client: &Client, cmd: &JobCommand, output: Output) -> anyhow::Result<u8> {
    match cmd {
        JobCommand::Get { id } => {
            let view = client.job(*id).await?;
            print(output, &describe(&view), &view);
        }
        JobCommand::List {
            queue,
            state,
            tag,
            submitter,
            oldest,
            limit,
            cursor,
            all,
        } => {
            let filter = JobFilter {
                queue: queue.clone(),
                state: *state,
                tag: tag.clone(),
                submitter: submitter.clone(),
                order: if *oldest {
                    api::ListOrder::Oldest
                } else {
                    api::ListOrder::Newest
                },
            };
            let mut page = client
                .list_jobs(&filter, cursor.as_deref(), Some(*limit))
                .await?;
            while *all && let Some(next) = page.next_cursor.take() {
                let more = client.list_jobs(&filter, Some(&next), Some(*limit)).await?;
                page.jobs.extend(more.jobs);
                page.next_cursor = more.next_cursor;
            }
            let rows: Vec<Vec<String>> = page
                .jobs
                .iter()
                .map(|j| {
                    vec![
                        j.id.to_string(),
                        j.queue.clone(),
                        j.state.to_string(),
                        j.attempts.len().to_string(),
                        ago(j.submitted_at_ms),
                    ]
                })
                .collect();
            print(
                output,
                &table(&["ID", "QUEUE", "STATE", "ATTEMPTS", "SUBMITTED"], &rows),
                &page,
            );
            if let (Output::Human, Some(next)) = (output, &page.next_cursor) {
                eprintln!(
                    "more jobs match: `lqsm job list --cursor {next}` for the next page, `--all` for every one"
                );
            }
        }
        JobCommand::Cancel {
            id,
            queue,
            tag,
            state,
            reason,
        } => match id {
            Some(id) => {
                let view = client.cancel(*id).await?;
                print(output, &describe(&view), &view);
            }
            None => {
                let selection = api::CancelJobs {
                    queue: queue.clone(),
                    tag: tag.clone(),
                    state: *state,
                    reason: reason.clone(),
                };
                let done = client.cancel_jobs(&selection).await?;
                print(output, &format!("cancelled {} jobs", done.cancelled), &done);
            }
        },
        JobCommand::Retry { id } => {
            let submitted = client.retry(*id).await?;
            print(
                output,
                &format!("{} (runs {id} again)", submitted.id),
                &submitted,
            );
        }
        JobCommand::Wait { id, timeout } => {
            let view = wait_for(client, *id, *timeout).await?;
            print(output, &describe(&view), &view);
            if !view.state.is_terminal() {
                anyhow::bail!("job {id} is still {} after the timeout", view.state);
            }
            return Ok(exit_code(&view));
        }
        JobCommand::Logs { id, follow: true } => follow_logs(client, *id, output).await?,
        JobCommand::Logs { id, follow: false } => {
            let logs = client.logs(*id).await?;
            print(
                output,
                &logs,
                &serde_json::json!({ "id": id, "logs": logs }),
            );
        }
    }
    Ok(0)
}
