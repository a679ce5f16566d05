//! `lqsm schedule ...`: periodic schedules, each fire submitting one job tagged
//! `schedule:NAME`.

use crate::jobs::JobArgs;
use crate::units::{parse_duration, show_ms, table};
use crate::{Output, print};
use lqsm_api as api;
use lqsm_client::{Client, ClientError};
use std::time::{Duration, UNIX_EPOCH};

/// The shortest interval the server accepts.
const MIN_EVERY: Duration = Duration::from_secs(1);

/// `lqsm schedule ...`.
#[derive(clap::Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule: `lqsm schedule create nightly --cron "0 3 * * *" -- ./backup`,
    /// or `--every 5m`; its jobs are tagged `schedule:NAME`.
    Create(Box<CreateArgs>),
    /// List the schedules: trigger, next and last fire, jobs made, state.
    List,
    /// Show a schedule.
    Get {
        /// Its name.
        name: String,
    },
    /// Change a schedule's trigger or policies (what it did is kept; its job template is
    /// changed through `PATCH /v1/schedules/NAME`, or by deleting and creating it).
    Update(Box<UpdateArgs>),
    /// Pause a schedule: it fires nothing until resumed.
    Pause {
        /// Its name.
        name: String,
    },
    /// Resume a paused schedule at its next fire time (what came due meanwhile is not
    /// made up).
    Resume {
        /// Its name.
        name: String,
    },
    /// Delete a schedule; the jobs it made stay.
    Delete {
        /// Its name.
        name: String,
    },
}

/// What to do with fire times missed while no server could fire them.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Misfire {
    /// Fire none of them.
    Skip,
    /// Fire once for all of them (the server's default).
    #[value(alias = "run_once")]
    RunOnce,
    /// Fire each of them, the latest --catch-up-max (default 10).
    #[value(alias = "catch_up")]
    CatchUp,
}

impl Misfire {
    fn wire(self) -> &'static str {
        match self {
            Misfire::Skip => "skip",
            Misfire::RunOnce => "run_once",
            Misfire::CatchUp => "catch_up",
        }
    }
}

/// What to do with a fire while the previous fire's job has not finished.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Overlap {
    /// Submit it anyway (the server's default).
    Allow,
    /// Make no job for it.
    Skip,
}

impl Overlap {
    fn wire(self) -> &'static str {
        match self {
            Overlap::Allow => "allow",
            Overlap::Skip => "skip",
        }
    }
}

/// When a schedule fires and its policies: the options `create` and `update` share (in
/// an update each one given replaces the schedule's).
#[derive(clap::Args)]
pub struct TriggerArgs {
    /// When to fire: a cron expression of 5 fields (minute hour day-of-month month
    /// day-of-week), 6 with seconds first, or @hourly, @daily...
    #[arg(long, conflicts_with = "every")]
    cron: Option<String>,
    /// The IANA time zone --cron is read in, e.g. Europe/Paris (default UTC).
    #[arg(long = "tz", conflicts_with = "every", value_name = "ZONE")]
    timezone: Option<String>,
    /// Fire at a fixed interval instead, e.g. 30s, 5m, 1h (at least 1s), counted from
    /// the schedule's creation.
    #[arg(long, value_parser = parse_every, value_name = "DURATION")]
    every: Option<Duration>,
    /// Fire times missed while no server ran: skip, run-once (default) or catch-up.
    #[arg(long, value_enum)]
    misfire: Option<Misfire>,
    /// With --misfire catch-up: the most missed fires made up (default 10).
    #[arg(long, value_name = "N")]
    catch_up_max: Option<u32>,
    /// A fire while the previous fire's job is unfinished: allow (default) or skip.
    #[arg(long, value_enum)]
    overlap: Option<Overlap>,
}

impl TriggerArgs {
    fn every_ms(&self) -> Option<u64> {
        self.every
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Options of `lqsm schedule create`.
#[derive(clap::Args)]
pub struct CreateArgs {
    /// The schedule's name: 1 to 128 letters, digits, `.`, `_`, `-`.
    name: String,
    #[command(flatten)]
    trigger: TriggerArgs,
    #[command(flatten)]
    job: JobArgs,
}

/// Options of `lqsm schedule update`: each one given replaces the schedule's.
#[derive(clap::Args)]
pub struct UpdateArgs {
    /// The schedule's name.
    name: String,
    #[command(flatten)]
    trigger: TriggerArgs,
}

impl UpdateArgs {
    fn request(&self) -> api::UpdateSchedule {
        let t = &self.trigger;
        api::UpdateSchedule {
            cron: t.cron.clone(),
            timezone: t.timezone.clone(),
            every_ms: t.every_ms(),
            job: None,
            misfire: t.misfire.map(|m| m.wire().to_owned()),
            catch_up_max: t.catch_up_max,
            overlap: t.overlap.map(|o| o.wire().to_owned()),
        }
    }
}

/// An interval of `--every`: a duration of at least a second, in whole milliseconds.
fn parse_every(text: &str) -> Result<Duration, String> {
    let every = parse_duration(text)?;
    if every < MIN_EVERY {
        return Err(format!(
            "`{text}` is shorter than the shortest interval, 1s"
        ));
    }
    if !every.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(format!("`{text}` is not a whole number of milliseconds"));
    }
    Ok(every)
}

impl CreateArgs {
    fn request(&self) -> anyhow::Result<api::CreateSchedule> {
        let t = &self.trigger;
        if t.cron.is_none() && t.every.is_none() {
            anyhow::bail!(
                "--cron or --every: say when the schedule fires (e.g. --cron \"0 3 * * *\" or --every 5m)"
            );
        }
        if t.catch_up_max.is_some() && t.misfire != Some(Misfire::CatchUp) {
            anyhow::bail!("--catch-up-max goes with --misfire catch-up");
        }
        Ok(api::CreateSchedule {
            name: self.name.clone(),
            cron: t.cron.clone(),
            timezone: t.timezone.clone(),
            every_ms: t.every_ms(),
            job: self.job.job()?,
            misfire: t.misfire.map(|m| m.wire().to_owned()),
            catch_up_max: t.catch_up_max,
            overlap: t.overlap.map(|o| o.wire().to_owned()),
        })
    }
}

/// The command-line flag of a field of `CreateSchedule`, as the server names it (in
/// wire terms, or in the core's `trigger.*` terms).
fn flag_of(field: &str) -> Option<&'static str> {
    Some(match field {
        "name" => "NAME",
        "cron" | "trigger.expr" => "--cron",
        "timezone" | "trigger.timezone" => "--tz",
        "every_ms" | "trigger.interval_ms" => "--every",
        "misfire" => "--misfire",
        "catch_up_max" => "--catch-up-max",
        "overlap" => "--overlap",
        "job.queue" => "--queue",
        "job.kind.handler" | "job.kind" => "--function",
        "job.kind.args" => "--args",
        "job.kind.argv" => "the command after `--`",
        "job.resources" => "--cpus/--memory/--gpus/--resource",
        "job.priority" => "--priority",
        "job.timeout_ms" => "--timeout",
        "job.retry" | "job.retry.max_attempts" => "--retries",
        "job.selector" => "--label",
        "job.tags" => "--tag",
        "job.keys" => "--key",
        _ => return None,
    })
}

/// A refused creation told in the command line's terms: the flag at fault first, then
/// the server's own explanation (without the field names it starts with, which the
/// flag replaces).
fn refused(err: ClientError) -> anyhow::Error {
    let ClientError::Api { status, error } = &err else {
        return err.into();
    };
    let Some((field, flag)) = error
        .field
        .as_deref()
        .and_then(|field| Some((field, flag_of(field)?)))
    else {
        return err.into();
    };
    let mut message = error.message.as_str();
    while let Some(rest) = message
        .strip_prefix(field)
        .and_then(|m| m.strip_prefix(": "))
    {
        message = rest;
    }
    anyhow::anyhow!(
        "{flag}: {message} (field `{field}`; HTTP {status}, code `{}`)",
        error.code
    )
}

/// `2026-12-01 03:00:00 UTC`.
fn show_instant(ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replacen('T', " ", 1)
        .replace('Z', " UTC")
}

/// `2026-12-01 03:00:00 UTC (in 42.0s)`.
fn next_fire(view: &api::ScheduleView) -> String {
    match view.next_fire_ms {
        Some(ms) => format!(
            "{} (in {})",
            show_instant(ms),
            show_ms(ms.saturating_sub(api::epoch_ms()))
        ),
        None if view.paused => "- (paused)".to_owned(),
        None => "never".to_owned(),
    }
}

/// `2026-12-01 03:00:00 UTC (42.0s ago)`.
fn last_fire(view: &api::ScheduleView) -> String {
    match view.last_fire_ms {
        Some(ms) => format!(
            "{} ({} ago)",
            show_instant(ms),
            show_ms(api::epoch_ms().saturating_sub(ms))
        ),
        None => "-".to_owned(),
    }
}

/// An interval as people write it: `30s`, `5m`, `1h30m`, `1500ms`.
fn show_every(ms: u64) -> String {
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut s = ms / 1000;
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= size {
            out.push_str(&format!("{}{unit}", s / size));
            s %= size;
        }
    }
    out
}

/// `cron 0 3 * * * (Europe/Paris)` or `every 5m`.
fn trigger(view: &api::ScheduleView) -> String {
    match (&view.cron, view.every_ms) {
        (Some(cron), _) => format!(
            "cron {cron} ({})",
            view.timezone.as_deref().unwrap_or("UTC")
        ),
        (None, Some(ms)) => format!("every {}", show_every(ms)),
        (None, None) => "-".to_owned(),
    }
}

fn state(view: &api::ScheduleView) -> &'static str {
    if view.paused { "paused" } else { "active" }
}

/// A schedule as a person reads it.
fn describe(view: &api::ScheduleView) -> String {
    let runs = match &view.kind {
        api::JobKind::Command { argv, .. } => argv.join(" "),
        api::JobKind::Function { handler, .. } => format!("{handler}(…)"),
    };
    let misfire = match view.catch_up_max {
        Some(max) => format!("{} (at most {max})", view.misfire),
        None => view.misfire.clone(),
    };
    let mut lines = vec![
        format!("name:       {}", view.name),
        format!("state:      {}", state(view)),
        format!("trigger:    {}", trigger(view)),
        format!("queue:      {}", view.queue),
        format!("runs:       {runs}"),
        format!("misfire:    {misfire}"),
        format!("overlap:    {}", view.overlap),
        format!("created:    {}", show_instant(view.created_at_ms)),
        format!("next fire:  {}", next_fire(view)),
        format!("last fire:  {}", last_fire(view)),
        format!("fired:      {}", view.fired),
    ];
    if let Some(job) = view.last_job {
        lines.push(format!("last job:   {job}"));
    }
    if let Some(error) = &view.last_error {
        lines.push(format!("last error: {error}"));
    }
    lines.push(format!(
        "jobs:       lqsm job list --tag schedule:{}",
        view.name
    ));
    lines.join("\n") + "\n"
}

/// Runs `lqsm schedule ...`.
pub async fn schedule(
    client: &Client,
    cmd: &ScheduleCommand,
    output: Output,
) -> anyhow::Result<u8> {
    let view = match cmd {
        ScheduleCommand::Create(args) => {
            let request = args.request()?;
            client.create_schedule(&request).await.map_err(refused)?
        }
        ScheduleCommand::List => {
            let schedules = client.schedules().await?;
            let rows: Vec<Vec<String>> = schedules
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        trigger(s),
                        s.queue.clone(),
                        next_fire(s),
                        last_fire(s),
                        s.fired.to_string(),
                        state(s).to_owned(),
                        s.last_error.clone().unwrap_or_else(|| "-".to_owned()),
                    ]
                })
                .collect();
            let header = [
                "NAME",
                "TRIGGER",
                "QUEUE",
                "NEXT FIRE",
                "LAST FIRE",
                "FIRED",
                "STATE",
                "LAST ERROR",
            ];
            let human = if rows.is_empty() {
                "no schedules (create one with `lqsm schedule create NAME --every 5m -- CMD`)\n"
                    .to_owned()
            } else {
                table(&header, &rows)
            };
            print(output, &human, &schedules);
            return Ok(0);
        }
        ScheduleCommand::Get { name } => client.schedule(name).await?,
        ScheduleCommand::Update(args) => client
            .update_schedule(&args.name, &args.request())
            .await
            .map_err(refused)?,
        ScheduleCommand::Pause { name } => client.pause_schedule(name).await?,
        ScheduleCommand::Resume { name } => client.resume_schedule(name).await?,
        ScheduleCommand::Delete { name } => {
            client.delete_schedule(name).await?;
            print(
                output,
                &format!("deleted schedule {name} (the jobs it made stay)"),
                &serde_json::json!({ "deleted": name }),
            );
            return Ok(0);
        }
    };
    print(output, &describe(&view), &view);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_and_print_as_people_write_them() {
        assert_eq!(parse_every("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_every("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_every("500ms").is_err_and(|e| e.contains("1s")));
        assert!(parse_every("soon").is_err());
        assert_eq!(show_every(30_000), "30s");
        assert_eq!(show_every(5_400_000), "1h30m");
        assert_eq!(show_every(86_400_000), "1d");
        assert_eq!(show_every(1500), "1500ms");
    }

    #[test]
    fn instants_print_in_utc_and_server_fields_map_to_flags() {
        assert_eq!(show_instant(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(flag_of("trigger.expr"), Some("--cron"));
        assert_eq!(flag_of("every_ms"), Some("--every"));
        assert_eq!(flag_of("something.new"), None);
    }
}
