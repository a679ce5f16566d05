//! `lqsm top`: the cluster, its queues and its workers, refreshed live in the terminal.
//!
//! Three parts, kept apart so that the view can be tested without a terminal:
//! - the [`Model`]: what the server answered last (a [`Snapshot`]), the rates derived
//!   from successive snapshots, and the UI's own state (sort, filter, selected row);
//! - drawing, a pure function of the model into a ratatui buffer (`impl Widget for
//!   &Model`), and key handling, a pure function [`on_key`] from a model and a key to
//!   the next model;
//! - a thin loop that fetches snapshots in the background, feeds them and the keys to
//!   the model, and draws it.

use crate::units::{show_cores, show_mib};
use crate::{Output, print};
use lqsm_api as api;
use lqsm_client::Client;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, StatefulWidget, Table, TableState, Widget};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// `lqsm top`.
#[derive(clap::Args, Clone)]
pub struct TopArgs {
    /// How often to ask the server again (e.g. 1s, 500ms, 5s).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    interval: Duration,
    /// Print one frame as plain text and exit (what happens anyway when stdout is not a
    /// terminal, or with `-o json`, which prints what the frame was drawn from).
    #[arg(long)]
    once: bool,
}

/// An interval of at least 100 ms: asking more often than that loads the server for
/// figures that cannot change faster than a person reads them.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = crate::units::parse_duration(text)?;
    if interval < Duration::from_millis(100) {
        return Err(format!("`{text}` is too short: at least 100ms"));
    }
    Ok(interval)
}

/// The width of a frame printed to something that is not a terminal.
const PLAIN_WIDTH: u16 = 120;

/// Cells of a queue's share bar, between its brackets; half as many when the
/// terminal is too narrow to leave [`MIN_NAME_WIDTH`] for the queues' names.
const BAR_CELLS: usize = 20;

/// The narrowest the queue column is allowed before the bars shrink.
const MIN_NAME_WIDTH: u16 = 24;

/// What one refresh fetched from the server.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Snapshot {
    /// `GET /v1/cluster`; `None` when the token may not read the whole cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<api::ClusterSummary>,
    /// `GET /v1/queues`: the tree, as much of it as the token may read.
    pub queues: api::QueueView,
    /// `GET /v1/workers`; `None` when the token may not read the whole cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<Vec<api::WorkerView>>,
}

/// Asks the server for the three views at once. A token limited to some queues may
/// read those but not the cluster's summary or its workers (403): the view then
/// shows its queues alone.
async fn fetch(client: &Client) -> Result<Snapshot, lqsm_client::ClientError> {
    fn unless_forbidden<T>(
        answer: Result<T, lqsm_client::ClientError>,
    ) -> Result<Option<T>, lqsm_client::ClientError> {
        match answer {
            Ok(view) => Ok(Some(view)),
            Err(e) if e.status() == Some(403) => Ok(None),
            Err(e) => Err(e),
        }
    }
    let (cluster, queues, workers) =
        tokio::join!(client.cluster(), client.queues(), client.workers());
    Ok(Snapshot {
        cluster: unless_forbidden(cluster)?,
        queues: queues?,
        workers: unless_forbidden(workers)?,
    })
}

impl Snapshot {
    /// What shares are shares of: the cluster's capacity, or, without the cluster's
    /// summary, what the root's guarantee (the whole cluster) amounts to.
    fn total(&self) -> &api::ResourceFigures {
        match &self.cluster {
            Some(c) => &c.total,
            None => &self.queues.guaranteed,
        }
    }

    /// The workers shown, by name.
    fn workers(&self) -> Vec<&api::WorkerView> {
        let mut all: Vec<&api::WorkerView> = self.workers.iter().flatten().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        all
    }
}

/// The cumulative job counters rates are derived from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Jobs accepted.
    pub submitted: u64,
    /// Jobs finished for good: succeeded, failed, cancelled or expired.
    pub completed: u64,
}

impl Counters {
    /// The counters of every queue the snapshot shows figures for. The root's
    /// counters cover the whole tree, except when the token may read only some queues:
    /// then the root (and any queue shown only to place others) carries zeros, and the
    /// readable subtrees below it are added up instead.
    fn of(root: &api::QueueView) -> Counters {
        if !root.placement_only {
            let c = &root.counts;
            return Counters {
                submitted: c.submitted,
                completed: c.succeeded + c.failed + c.cancelled + c.expired,
            };
        }
        root.children
            .iter()
            .map(Counters::of)
            .fold(Counters::default(), |a, b| Counters {
                submitted: a.submitted + b.submitted,
                completed: a.completed + b.completed,
            })
    }
}

/// Jobs per second between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    /// Submissions per second.
    pub submitted: f64,
    /// Completions per second.
    pub completed: f64,
}

/// The column the queue table is sorted by (among siblings: the tree stays a tree).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortKey {
    /// By path, A to Z.
    #[default]
    Path,
    /// By share of the cluster used, most first.
    Use,
    /// By jobs pending, most first.
    Pending,
    /// By attempts running, most first.
    Running,
}

impl SortKey {
    /// The next key `s` moves to.
    fn next(self) -> SortKey {
        match self {
            SortKey::Path => SortKey::Use,
            SortKey::Use => SortKey::Pending,
            SortKey::Pending => SortKey::Running,
            SortKey::Running => SortKey::Path,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SortKey::Path => "path",
            SortKey::Use => "use",
            SortKey::Pending => "pending",
            SortKey::Running => "running",
        }
    }
}

/// What the person looking has asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UiState {
    /// The queue table's sort column.
    pub sort: SortKey,
    /// Whether the sort is the other way round.
    pub reverse: bool,
    /// Only queues whose path holds this (empty: every queue).
    pub filter: String,
    /// Whether keys go into the filter (after `/`, until Enter or Esc).
    pub editing_filter: bool,
    /// The highlighted row of the queue table.
    pub selected: usize,
}

/// Everything a frame is drawn from.
#[derive(Clone, Debug)]
pub struct Model {
    /// The server(s) as given, for the header.
    server: String,
    /// Whether keys are read (a live view) or one frame is printed.
    interactive: bool,
    /// The latest answer, if any came.
    data: Option<Snapshot>,
    /// Counters of the latest answer and when it came, to derive the next rates.
    last_sample: Option<(Counters, Instant)>,
    /// Rates between the last two answers; `None` until there are two, or when a
    /// counter went down between them (a restarted server counts again from the jobs
    /// it kept).
    rates: Option<Rates>,
    /// Why the latest refresh failed (the data shown is then older).
    error: Option<String>,
    /// The UI's state.
    pub ui: UiState,
    /// Set by `q` or Ctrl-C.
    pub quit: bool,
}

impl Model {
    /// A model with nothing fetched yet.
    pub fn new(server: &str, interactive: bool) -> Model {
        Model {
            server: server.to_owned(),
            interactive,
            data: None,
            last_sample: None,
            rates: None,
            error: None,
            ui: UiState::default(),
            quit: false,
        }
    }

    /// Takes in a snapshot that arrived `at`; rates come from the counters' growth
    /// since the previous one.
    pub fn absorb(&mut self, snapshot: Snapshot, at: Instant) {
        let counters = Counters::of(&snapshot.queues);
        self.rates = self.last_sample.and_then(|(before, then)| {
            let seconds = at.saturating_duration_since(then).as_secs_f64();
            let grew =
                counters.submitted >= before.submitted && counters.completed >= before.completed;
            (seconds > 0.0 && grew).then(|| Rates {
                submitted: (counters.submitted - before.submitted) as f64 / seconds,
                completed: (counters.completed - before.completed) as f64 / seconds,
            })
        });
        self.last_sample = Some((counters, at));
        self.data = Some(snapshot);
        self.error = None;
    }

    /// Notes a failed refresh; what was fetched before stays on screen.
    pub fn failed(&mut self, error: String) {
        self.error = Some(error);
    }

    /// The rates derived so far.
    pub fn rates(&self) -> Option<Rates> {
        self.rates
    }
}

/// The next model after a key press.
pub fn on_key(mut model: Model, key: KeyEvent) -> Model {
    if key.kind == KeyEventKind::Release {
        return model;
    }
    if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
        model.quit = true;
        return model;
    }
    let ui = &mut model.ui;
    if ui.editing_filter {
        match key.code {
            KeyCode::Esc => {
                ui.filter.clear();
                ui.editing_filter = false;
            }
            KeyCode::Enter => ui.editing_filter = false,
            KeyCode::Backspace => {
                ui.filter.pop();
            }
            KeyCode::Char(c) => ui.filter.push(c),
            _ => {}
        }
        ui.selected = 0;
        return model;
    }
    let last_row = queue_rows(&model).len().saturating_sub(1);
    let ui = &mut model.ui;
    match key.code {
        KeyCode::Char('q') => model.quit = true,
        KeyCode::Char('s') => ui.sort = ui.sort.next(),
        KeyCode::Char('r') => ui.reverse = !ui.reverse,
        KeyCode::Char('/') => ui.editing_filter = true,
        KeyCode::Esc => {
            ui.filter.clear();
            ui.selected = 0;
        }
        KeyCode::Down | KeyCode::Char('j') => ui.selected = (ui.selected + 1).min(last_row),
        KeyCode::Up | KeyCode::Char('k') => ui.selected = ui.selected.saturating_sub(1),
        KeyCode::PageDown => ui.selected = (ui.selected + 10).min(last_row),
        KeyCode::PageUp => ui.selected = ui.selected.saturating_sub(10),
        KeyCode::Home | KeyCode::Char('g') => ui.selected = 0,
        KeyCode::End | KeyCode::Char('G') => ui.selected = last_row,
        _ => {}
    }
    model
}

/// One line of the queue table, before it is drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueRow {
    /// The queue's path.
    pub path: String,
    /// Its depth below the root (0 for the root).
    pub depth: usize,
    /// Its dominant share of the cluster in use (0..=1).
    pub used: f64,
    /// Its guarantee, as a fraction of the cluster.
    pub guarantee: f64,
    /// Its ceiling, as a fraction of the cluster.
    pub max: f64,
    /// Jobs pending in its subtree.
    pub pending: u64,
    /// Attempts running in its subtree.
    pub running: u64,
    /// Its state.
    pub state: api::QueueState,
    /// Shown only to place the queues below it: no figures of its own.
    pub placement_only: bool,
}

/// The largest of the fractions of the cluster's cpu, memory and gpus that `used` is:
/// a queue's share as Dominant Resource Fairness counts it.
fn dominant_share(used: &api::ResourceFigures, total: &api::ResourceFigures) -> f64 {
    let fraction = |used: f64, total: f64| if total > 0.0 { used / total } else { 0.0 };
    fraction(used.cpu, total.cpu)
        .max(fraction(used.memory_mib as f64, total.memory_mib as f64))
        .max(fraction(f64::from(used.gpu), f64::from(total.gpu)))
}

/// The queue table's rows: the tree in depth-first order, siblings in the chosen order,
/// then only the queues whose path holds the filter.
pub fn queue_rows(model: &Model) -> Vec<QueueRow> {
    let Some(data) = &model.data else {
        return Vec::new();
    };
    let total = data.total();
    let ui = &model.ui;
    let mut rows = Vec::new();
    walk(&data.queues, 0, total, ui, &mut rows);
    if !ui.filter.is_empty() {
        rows.retain(|r| r.path.contains(&ui.filter));
    }
    rows
}

fn walk(
    q: &api::QueueView,
    depth: usize,
    total: &api::ResourceFigures,
    ui: &UiState,
    rows: &mut Vec<QueueRow>,
) {
    rows.push(QueueRow {
        path: q.path.clone(),
        depth,
        used: dominant_share(&q.used, total),
        guarantee: q.abs_guarantee,
        max: q.abs_max,
        pending: q.pending,
        running: q.running,
        state: q.state,
        placement_only: q.placement_only,
    });
    let mut children: Vec<&api::QueueView> = q.children.iter().collect();
    children.sort_by(|a, b| {
        // Figures read best largest first; paths A to Z. Ties go by path, so that the
        // order does not flicker between refreshes.
        let by_key = match ui.sort {
            SortKey::Path => std::cmp::Ordering::Equal,
            SortKey::Use => {
                dominant_share(&b.used, total).total_cmp(&dominant_share(&a.used, total))
            }
            SortKey::Pending => b.pending.cmp(&a.pending),
            SortKey::Running => b.running.cmp(&a.running),
        };
        let order = by_key.then_with(|| a.path.cmp(&b.path));
        if ui.reverse { order.reverse() } else { order }
    });
    for child in children {
        walk(child, depth + 1, total, ui, rows);
    }
}

/// A share bar of `cells` cells spanning 0 to the queue's ceiling: `#` is use within
/// the guarantee, `+` use beyond it, and `|` (between two cells, so it never hides
/// one) marks the guarantee. The closing bracket is the ceiling.
pub fn share_bar(used: f64, guarantee: f64, max: f64, cells: usize) -> String {
    let position = |fraction: f64| -> usize {
        if max <= 0.0 || !fraction.is_finite() {
            return 0;
        }
        ((fraction / max * cells as f64).round().max(0.0) as usize).min(cells)
    };
    let mut filled = position(used);
    // Some use, however small, shows as one cell rather than none.
    if used > 0.0 && filled == 0 && cells > 0 {
        filled = 1;
    }
    let mark = position(guarantee);
    let mut bar = String::with_capacity(cells + 3);
    bar.push('[');
    for cell in 0..cells {
        if cell == mark {
            bar.push('|');
        }
        bar.push(match (cell < filled, cell < mark) {
            (true, true) => '#',
            (true, false) => '+',
            (false, _) => ' ',
        });
    }
    if mark == cells {
        bar.push('|');
    }
    bar.push(']');
    bar
}

/// A fraction as a whole percentage; a small non-zero one says so instead of `0%`.
fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    if p > 0.0 && p < 0.5 {
        "<1%".to_owned()
    } else {
        format!("{}%", p.round() as i64)
    }
}

/// `text` cut to `width` characters, an ellipsis showing where it was cut.
pub fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// The header: who answers, what the cluster holds and uses, and the job rates.
fn header_lines(model: &Model) -> Vec<Line<'static>> {
    let Some(data) = &model.data else {
        return vec![Line::from(format!(
            "lqsm top  {}  waiting for the first answer",
            model.server
        ))];
    };
    let Some(c) = &data.cluster else {
        return vec![
            Line::from(format!("lqsm top  {}", model.server)),
            Line::from(
                "this token reads only some queues: the cluster and its workers need one whose queues are `*`",
            ),
            rates_line(model, data),
        ];
    };
    let mut lines = vec![Line::from(format!(
        "lqsm top  {}  {}",
        model.server,
        leadership(model, c)
    ))];
    let mut resources = format!(
        "cpu {} / {} ({})   memory {} / {} ({})",
        show_cores(c.used.cpu),
        show_cores(c.total.cpu),
        percent(if c.total.cpu > 0.0 {
            c.used.cpu / c.total.cpu
        } else {
            0.0
        }),
        show_mib(c.used.memory_mib),
        show_mib(c.total.memory_mib),
        percent(if c.total.memory_mib > 0 {
            c.used.memory_mib as f64 / c.total.memory_mib as f64
        } else {
            0.0
        }),
    );
    if c.total.gpu > 0 {
        resources.push_str(&format!("   gpu {} / {}", c.used.gpu, c.total.gpu));
    }
    lines.push(Line::from(resources));
    let workers = |state| c.workers.get(&state).copied().unwrap_or(0);
    let jobs = |state| c.jobs.get(&state).copied().unwrap_or(0);
    lines.push(Line::from(format!(
        "workers {} active, {} draining, {} lost   queues {}   jobs {} pending, {} running",
        workers(api::WorkerState::Active),
        workers(api::WorkerState::Draining),
        workers(api::WorkerState::Lost),
        c.queues,
        jobs(api::JobState::Pending),
        jobs(api::JobState::Scheduled) + jobs(api::JobState::Running),
    )));
    lines.push(rates_line(model, data));
    lines
}

/// Submissions and completions per second, and in all.
fn rates_line(model: &Model, data: &Snapshot) -> Line<'static> {
    let counters = Counters::of(&data.queues);
    let rates = match model.rates {
        Some(r) => format!(
            "{:.1} submitted/s, {:.1} completed/s",
            r.submitted, r.completed
        ),
        None => "rates need two refreshes".to_owned(),
    };
    Line::from(format!(
        "jobs/s  {rates}   (in all: {} submitted, {} completed)",
        counters.submitted, counters.completed
    ))
}

/// Who leads, as far as the cluster view says.
fn leadership(model: &Model, c: &api::ClusterSummary) -> String {
    let Some(store) = &c.store else {
        return "(the server does not say who leads)".to_owned();
    };
    let leader = store.servers.iter().find(|s| s.leader);
    match leader {
        // One server on its own store: the one answering.
        None if store.servers.is_empty() => format!(
            "this server leads, as `{}` ({} store)",
            store.leader, store.backend
        ),
        None => format!("led by `{}` (epoch {})", store.leader, store.epoch),
        Some(s) => {
            let asked = model.server.trim_end_matches('/');
            let whom = if s.address.trim_end_matches('/') == asked {
                format!("this server leads, as `{}`", s.node)
            } else {
                format!("led by `{}` at {}", s.node, s.address)
            };
            format!(
                "{whom} (epoch {}, {} servers)",
                store.epoch,
                store.servers.len()
            )
        }
    }
}

const QUEUE_HEADER: [&str; 6] = [
    "QUEUE",
    "SHARE  | guar. ] max",
    "USE/GUAR/MAX",
    "PENDING",
    "RUNNING",
    "STATE",
];
const WORKER_HEADER: [&str; 6] = [
    "NAME",
    "STATE",
    "LABELS",
    "CPU USED/CAP",
    "MEMORY USED/CAP",
    "ATTEMPTS",
];

/// Widths of the queue table's columns after the first, for bars of `cells` cells.
fn queue_widths(cells: usize) -> [u16; 5] {
    [cells as u16 + 3, 14, 8, 8, 8]
}

/// The gap between two columns of a table.
const COLUMN_SPACING: u16 = 1;

/// The bars' cells and the queue column's width in a table `width` columns wide
/// (borders included).
fn queue_layout(width: u16) -> (usize, u16) {
    let name_width = |cells: usize| {
        let widths = queue_widths(cells);
        let fixed = widths.iter().sum::<u16>() + COLUMN_SPACING * widths.len() as u16;
        // The borders take a column on each side.
        width.saturating_sub(2 + fixed)
    };
    if name_width(BAR_CELLS) >= MIN_NAME_WIDTH {
        (BAR_CELLS, name_width(BAR_CELLS))
    } else {
        (BAR_CELLS / 2, name_width(BAR_CELLS / 2).max(8))
    }
}

fn styled_bar(row: &QueueRow, cells: usize) -> Line<'static> {
    let bar = share_bar(row.used, row.guarantee, row.max, cells);
    let full = row.max > 0.0 && row.used >= row.max;
    let spans: Vec<Span<'static>> = bar
        .chars()
        .map(|ch| {
            let style = match ch {
                '#' | '+' if full => Style::new().fg(Color::Red),
                '#' => Style::new().fg(Color::Green),
                '+' => Style::new().fg(Color::Yellow),
                '|' => Style::new().add_modifier(Modifier::BOLD),
                _ => Style::new(),
            };
            Span::styled(ch.to_string(), style)
        })
        .collect();
    Line::from(spans)
}

fn queue_table(model: &Model, area: Rect, buf: &mut Buffer) {
    let rows = queue_rows(model);
    let ui = &model.ui;
    let (cells, name_width) = queue_layout(area.width);
    let filtered = !ui.filter.is_empty();
    let lines: Vec<Row> = rows
        .iter()
        .map(|r| {
            // A filter breaks the tree apart, so its rows show whole paths.
            let label = if filtered {
                r.path.clone()
            } else {
                let name = r.path.rsplit('.').next().unwrap_or(&r.path);
                format!("{}{name}", "  ".repeat(r.depth))
            };
            let label = fit(&label, usize::from(name_width));
            if r.placement_only {
                return Row::new(vec![
                    Line::from(label),
                    Line::from(""),
                    Line::from(format!("-/{}/{}", percent(r.guarantee), percent(r.max))),
                    Line::from("-").right_aligned(),
                    Line::from("-").right_aligned(),
                    Line::from(r.state.to_string()),
                ]);
            }
            Row::new(vec![
                Line::from(label),
                styled_bar(r, cells),
                Line::from(format!(
                    "{}/{}/{}",
                    percent(r.used),
                    percent(r.guarantee),
                    percent(r.max)
                )),
                Line::from(r.pending.to_string()).right_aligned(),
                Line::from(r.running.to_string()).right_aligned(),
                Line::from(r.state.to_string()),
            ])
        })
        .collect();
    let mut title = format!(
        " queues ({}) by {} {} ",
        rows.len(),
        ui.sort.name(),
        if ui.reverse { "reversed" } else { "" }
    )
    .replace("  ", " ");
    if filtered {
        title.push_str(&format!("matching \"{}\" ", ui.filter));
    }
    let mut constraints = vec![Constraint::Length(name_width)];
    constraints.extend(queue_widths(cells).iter().map(|w| Constraint::Length(*w)));
    let table = Table::new(lines, constraints)
        .column_spacing(COLUMN_SPACING)
        .header(header_row(&QUEUE_HEADER))
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default();
    if model.interactive && !rows.is_empty() {
        state.select(Some(ui.selected.min(rows.len() - 1)));
    }
    StatefulWidget::render(table, area, buf, &mut state);
}

fn header_row(names: &[&'static str]) -> Row<'static> {
    Row::new(names.iter().map(|n| Line::from(*n))).style(Style::new().add_modifier(Modifier::BOLD))
}

fn worker_table(model: &Model, area: Rect, buf: &mut Buffer) {
    let workers = model.data.as_ref().map_or_else(Vec::new, Snapshot::workers);
    let with_gpus = workers.iter().any(|w| w.capacity.gpu > 0);
    let rows: Vec<Row> = workers
        .iter()
        .map(|w| {
            let labels = w
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let mut cells = vec![
                w.name.clone(),
                w.state.to_string(),
                labels,
                format!("{}/{}", show_cores(w.used.cpu), show_cores(w.capacity.cpu)),
                format!(
                    "{}/{}",
                    show_mib(w.used.memory_mib),
                    show_mib(w.capacity.memory_mib)
                ),
            ];
            if with_gpus {
                cells.push(format!("{}/{}", w.used.gpu, w.capacity.gpu));
            }
            cells.push(w.attempts.to_string());
            let style = match w.state {
                api::WorkerState::Active => Style::new(),
                api::WorkerState::Draining => Style::new().fg(Color::Yellow),
                api::WorkerState::Lost => Style::new().fg(Color::Red),
            };
            Row::new(cells).style(style)
        })
        .collect();
    let mut header: Vec<&'static str> = WORKER_HEADER[..5].to_vec();
    let mut widths = vec![
        Constraint::Fill(1),
        Constraint::Length(9),
        Constraint::Fill(1),
        Constraint::Length(13),
        Constraint::Length(19),
    ];
    if with_gpus {
        header.push("GPU");
        widths.push(Constraint::Length(7));
    }
    header.push(WORKER_HEADER[5]);
    widths.push(Constraint::Length(8));
    let table = Table::new(rows, widths)
        .column_spacing(COLUMN_SPACING)
        .header(header_row(&header))
        .block(
            Block::bordered().title(match model.data.as_ref().map(|d| &d.workers) {
                Some(None) => " workers (not readable with this token) ".to_owned(),
                _ => format!(" workers ({}) ", workers.len()),
            }),
        );
    Widget::render(table, area, buf);
}

/// The last line of a live view: the filter being typed, the keys, and a failed
/// refresh.
fn footer(model: &Model) -> Line<'static> {
    let ui = &model.ui;
    let mut spans = Vec::new();
    if let Some(error) = &model.error {
        spans.push(Span::styled(
            format!("refresh failed: {error}  "),
            Style::new().fg(Color::Red),
        ));
    }
    if ui.editing_filter {
        spans.push(Span::raw(format!(
            "filter: {}_   (Enter keeps it, Esc clears)",
            ui.filter
        )));
    } else {
        spans.push(Span::raw(
            "s sort  r reverse  / filter  Esc clear  j/k ↑/↓ scroll  q quit",
        ));
    }
    Line::from(spans)
}

/// Rows a queue table or a worker table takes beside its rows: two borders, a header.
const TABLE_FRAME: u16 = 3;

impl Widget for &Model {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let header = header_lines(self);
        let workers = self.data.as_ref().map_or(0, |d| d.workers().len()) as u16;
        let workers_height = if self.interactive {
            (workers + TABLE_FRAME).min((area.height / 3).max(TABLE_FRAME + 1))
        } else {
            workers + TABLE_FRAME
        };
        let footer_height = u16::from(self.interactive);
        let [top, queues, workers_area, bottom] = Layout::vertical([
            Constraint::Length(header.len() as u16),
            Constraint::Min(TABLE_FRAME),
            Constraint::Length(workers_height),
            Constraint::Length(footer_height),
        ])
        .areas(area);
        Paragraph::new(header).render(top, buf);
        queue_table(self, queues, buf);
        worker_table(self, workers_area, buf);
        if self.interactive {
            Paragraph::new(footer(self)).render(bottom, buf);
        }
    }
}

/// The height a printed frame needs to show every row.
fn plain_height(model: &Model) -> u16 {
    let header = header_lines(model).len();
    let queues = queue_rows(model).len();
    let workers = model.data.as_ref().map_or(0, |d| d.workers().len());
    let rows = header + queues + workers + 2 * usize::from(TABLE_FRAME);
    u16::try_from(rows).unwrap_or(u16::MAX)
}

/// A buffer's text, one line per row, without trailing blanks.
pub fn buffer_text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let mut line = String::new();
        for x in area.left()..area.right() {
            if let Some(cell) = buf.cell((x, y)) {
                line.push_str(cell.symbol());
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One frame as plain text, `width` columns wide and as tall as its rows need.
pub fn plain_frame(model: &Model, width: u16) -> String {
    let area = Rect::new(0, 0, width, plain_height(model));
    let mut buf = Buffer::empty(area);
    model.render(area, &mut buf);
    buffer_text(&buf)
}

/// Runs `lqsm top`.
pub fn top(client: Client, server: &str, args: &TopArgs, output: Output) -> anyhow::Result<u8> {
    let runtime = crate::runtime()?;
    let stdout = std::io::stdout();
    if args.once || output == Output::Json || !stdout.is_terminal() {
        let snapshot = runtime.block_on(fetch(&client))?;
        let width = if stdout.is_terminal() {
            ratatui::crossterm::terminal::size().map_or(PLAIN_WIDTH, |(w, _)| w)
        } else {
            PLAIN_WIDTH
        };
        if output == Output::Json {
            print(output, "", &snapshot);
            return Ok(0);
        }
        let mut model = Model::new(server, false);
        model.absorb(snapshot, Instant::now());
        print(output, &plain_frame(&model, width), &());
        return Ok(0);
    }
    live(&runtime, client, server, args.interval)?;
    Ok(0)
}

/// What the background fetcher hands the drawing loop: an answer and when it came, or
/// why none came.
type Fetched = (Instant, Result<Snapshot, String>);

/// Fetches a snapshot every `interval` until the receiver is gone.
async fn fetch_every(client: Client, interval: Duration, tx: std::sync::mpsc::Sender<Fetched>) {
    let mut ticks = tokio::time::interval(interval);
    // A slow answer delays the next question instead of bunching them up.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = fetch(&client).await.map_err(|e| e.to_string());
        if tx.send((Instant::now(), result)).is_err() {
            return;
        }
    }
}

/// Puts the terminal back as it was when dropped: on return, on error, and while a
/// panic unwinds (ratatui's panic hook restores it before the message is printed).
struct RestoreTerminal;

impl Drop for RestoreTerminal {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// How long the loop waits for a key before it looks for a new snapshot.
const KEY_WAIT: Duration = Duration::from_millis(50);

/// The live view: draws whenever a snapshot or a key changed the model.
fn live(
    runtime: &tokio::runtime::Runtime,
    client: Client,
    server: &str,
    interval: Duration,
) -> anyhow::Result<()> {
    // An answer slower than this shows as a failed refresh rather than a frozen view.
    let client = client.with_request_timeout(interval.max(Duration::from_secs(5)));
    let (tx, rx) = std::sync::mpsc::channel();
    let fetcher = runtime.spawn(fetch_every(client, interval, tx));
    // Made first, so that a terminal set up halfway (raw mode on, the alternate
    // screen refused) is put back too.
    let _restore = RestoreTerminal;
    let mut terminal = ratatui::try_init()?;
    let mut model = Model::new(server, true);
    let mut changed = true;
    while !model.quit {
        for (at, result) in rx.try_iter() {
            match result {
                Ok(snapshot) => model.absorb(snapshot, at),
                Err(error) => model.failed(error),
            }
            changed = true;
        }
        if changed {
            terminal.draw(|frame| frame.render_widget(&model, frame.area()))?;
            changed = false;
        }
        if event::poll(KEY_WAIT)? {
            match event::read()? {
                Event::Key(key) => {
                    model = on_key(model, key);
                    changed = true;
                }
                Event::Resize(..) => changed = true,
                _ => {}
            }
        }
    }
    fetcher.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn queue(path: &str, pending: u64, running: u64, cpu_used: f64) -> api::QueueView {
        serde_json::from_value(serde_json::json!({
            "path": path, "state": "running", "capacity": 50.0, "max_capacity": 100.0,
            "abs_guarantee": 0.5, "abs_max": 1.0,
            "guaranteed": {"cpu": 4.0, "memory_mib": 8192, "gpu": 0},
            "used": {"cpu": cpu_used, "memory_mib": 0, "gpu": 0},
            "pending": pending, "running": running,
            "counts": {"submitted": 0, "succeeded": 0, "failed": 0, "cancelled": 0,
                       "expired": 0, "mean_wait_ms": 0, "mean_run_ms": 0},
            "settings": {},
        }))
        .expect("a queue view")
    }

    fn worker(name: &str, state: &str, cpu_used: f64) -> api::WorkerView {
        serde_json::from_value(serde_json::json!({
            "id": uuid::Uuid::from_u128(name.len() as u128),
            "name": name, "state": state,
            "capacity": {"cpu": 8.0, "memory_mib": 16384, "gpu": 0},
            "used": {"cpu": cpu_used, "memory_mib": 2048, "gpu": 0},
            "attempts": 3, "labels": {"zone": "a"},
        }))
        .expect("a worker view")
    }

    /// A cluster of 8 cores: root (4 used) with etl (3 used, 2 pending) and ml (1 used,
    /// 9 pending, guarantee 25%, ceiling 50%), and a worker.
    fn snapshot() -> Snapshot {
        let mut root = queue("root", 11, 4, 4.0);
        root.abs_guarantee = 1.0;
        root.counts.submitted = 100;
        root.counts.succeeded = 80;
        root.counts.failed = 5;
        let etl = queue("root.etl", 2, 3, 3.0);
        let mut ml = queue("root.ml", 9, 1, 1.0);
        ml.abs_guarantee = 0.25;
        ml.abs_max = 0.5;
        root.children = vec![ml, etl];
        let cluster = serde_json::from_value(serde_json::json!({
            "workers": {"active": 1, "draining": 0},
            "total": {"cpu": 8.0, "memory_mib": 16384, "gpu": 0},
            "used": {"cpu": 4.0, "memory_mib": 2048, "gpu": 0},
            "jobs": {"pending": 11, "running": 4, "succeeded": 80},
            "queues": 3,
            "store": {"backend": "embedded", "leader": "box:7420", "epoch": 1,
                      "lease_expires_at_ms": 0},
        }))
        .expect("a cluster summary");
        Snapshot {
            cluster: Some(cluster),
            queues: root,
            workers: Some(vec![worker("w1", "active", 4.0)]),
        }
    }

    fn model_with(snapshot: Snapshot) -> Model {
        let mut model = Model::new("http://127.0.0.1:7420", false);
        model.absorb(snapshot, Instant::now());
        model
    }

    /// The model drawn on a `width` x `height` test terminal, as text.
    fn drawn(model: &Model, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("a terminal");
        terminal
            .draw(|frame| frame.render_widget(model, frame.area()))
            .expect("drawn");
        buffer_text(terminal.backend().buffer())
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn paths(model: &Model) -> Vec<String> {
        queue_rows(model).into_iter().map(|r| r.path).collect()
    }

    #[test]
    fn a_frame_shows_the_header_the_queue_tree_and_the_workers() {
        let model = model_with(snapshot());
        let expected = "\
lqsm top  http://127.0.0.1:7420  this server leads, as `box:7420` (embedded store)
cpu 4 / 8 (50%)   memory 2.0 GiB / 16.0 GiB (13%)
workers 1 active, 0 draining, 0 lost   queues 3   jobs 11 pending, 4 running
jobs/s  rates need two refreshes   (in all: 100 submitted, 85 completed)
┌ queues (3) by path ──────────────────────────────────────────────────────────────────────────┐
│QUEUE                        SHARE  | guar. ] max    USE/GUAR/MAX   PENDING  RUNNING  STATE   │
│root                         [##########          |] 50%/100%/100%        11        4 running │
│  etl                        [########  |          ] 38%/50%/100%          2        3 running │
│  ml                         [#####     |          ] 13%/25%/50%           9        1 running │
└──────────────────────────────────────────────────────────────────────────────────────────────┘
┌ workers (1) ─────────────────────────────────────────────────────────────────────────────────┐
│NAME                 STATE     LABELS               CPU USED/CAP  MEMORY USED/CAP     ATTEMPTS│
│w1                   active    zone=a               4/8           2.0 GiB/16.0 GiB    3       │
└──────────────────────────────────────────────────────────────────────────────────────────────┘
";
        assert_eq!(drawn(&model, 96, 14), expected);
    }

    #[test]
    fn share_bars_at_nothing_half_over_the_guarantee_and_at_the_ceiling() {
        assert_eq!(share_bar(0.0, 0.5, 1.0, 10), "[     |     ]");
        assert_eq!(share_bar(0.25, 0.5, 1.0, 10), "[###  |     ]");
        assert_eq!(share_bar(0.5, 0.5, 1.0, 10), "[#####|     ]");
        assert_eq!(share_bar(0.75, 0.5, 1.0, 10), "[#####|+++  ]");
        assert_eq!(share_bar(1.0, 0.5, 1.0, 10), "[#####|+++++]");
        // Beyond the ceiling (a guarantee that shrank under running work) stays full.
        assert_eq!(share_bar(1.5, 0.5, 1.0, 10), "[#####|+++++]");
        // The bar spans the queue's own ceiling, not the whole cluster.
        assert_eq!(share_bar(0.25, 0.25, 0.5, 10), "[#####|     ]");
        // No guarantee: all use is beyond it; the whole cluster guaranteed: none is.
        assert_eq!(share_bar(0.1, 0.0, 1.0, 10), "[|+         ]");
        assert_eq!(share_bar(1.0, 1.0, 1.0, 10), "[##########|]");
        // A sliver of use still shows.
        assert_eq!(share_bar(0.001, 0.5, 1.0, 10), "[#    |     ]");
    }

    #[test]
    fn bars_in_the_table_at_nothing_the_guarantee_beyond_it_and_the_ceiling() {
        let mut data = snapshot();
        if let Some(c) = data.cluster.as_mut() {
            c.total.cpu = 16.0;
        }
        // Each leaf is guaranteed an eighth of the cluster and may use a quarter.
        let leaf = |name: &str, cpu: f64| {
            let mut q = queue(&format!("root.{name}"), 0, 0, cpu);
            q.abs_guarantee = 0.125;
            q.abs_max = 0.25;
            q
        };
        data.queues.used.cpu = 9.0;
        data.queues.children = vec![
            leaf("a_idle", 0.0),
            leaf("b_half", 2.0),
            leaf("c_over", 3.0),
            leaf("d_full", 4.0),
        ];
        let mut model = model_with(data);
        model.ui.filter = "_".to_owned();
        let mut terminal = Terminal::new(TestBackend::new(96, 16)).expect("a terminal");
        terminal
            .draw(|frame| frame.render_widget(&model, frame.area()))
            .expect("drawn");
        let buffer = terminal.backend().buffer();
        let text = buffer_text(buffer);
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("│root."))
            .map(|l| &l[l.find('[').unwrap_or(0)..l.find(" running").unwrap_or(l.len())])
            .collect();
        assert_eq!(
            rows,
            [
                "[          |          ] 0%/13%/25%            0        0",
                "[##########|          ] 13%/13%/25%           0        0",
                "[##########|+++++     ] 19%/13%/25%           0        0",
                "[##########|++++++++++] 25%/13%/25%           0        0",
            ],
            "{text}"
        );
        // Use beyond the guarantee is yellow, and a queue at its ceiling all red.
        let bar_start = 1 + queue_layout(96).1 + COLUMN_SPACING;
        let colour = |y: u16, cell: u16| buffer[(bar_start + 1 + cell, y)].fg;
        let row_y = |name: &str| {
            text.lines()
                .position(|l| l.contains(name))
                .and_then(|y| u16::try_from(y).ok())
                .unwrap_or(0)
        };
        assert_eq!(colour(row_y("c_over"), 0), Color::Green, "{text}");
        assert_eq!(colour(row_y("c_over"), 11), Color::Yellow, "{text}");
        assert_eq!(colour(row_y("d_full"), 0), Color::Red, "{text}");
        assert_eq!(colour(row_y("d_full"), 20), Color::Red, "{text}");
    }

    #[test]
    fn a_token_that_reads_some_queues_sees_those_without_the_cluster_or_workers() {
        let mut data = snapshot();
        data.cluster = None;
        data.workers = None;
        // The root places the readable queues and has no figures of its own.
        data.queues.placement_only = true;
        data.queues.counts = api::QueueCounts::default();
        data.queues.guaranteed.cpu = 8.0;
        data.queues.children[0].counts.submitted = 7;
        let model = model_with(data);
        let frame = drawn(&model, 96, 14);
        assert!(frame.contains("need one whose queues are `*`"), "{frame}");
        assert!(
            frame.contains("(in all: 7 submitted, 0 completed)"),
            "{frame}"
        );
        let root_row = frame.lines().find(|l| l.starts_with("│root")).unwrap_or("");
        assert!(
            root_row.contains("  -/100%/100%") && !root_row.contains('['),
            "no share bar nor figures of its own: {frame}"
        );
        // Shares are of what the root's guarantee amounts to: the whole cluster.
        assert!(
            frame.contains("[#####     |          ] 13%/25%/50%"),
            "{frame}"
        );
        assert!(
            frame.contains("workers (not readable with this token)"),
            "{frame}"
        );
    }

    #[test]
    fn sort_cycles_through_the_columns_and_reverses_among_siblings() {
        let mut model = model_with(snapshot());
        assert_eq!(paths(&model), ["root", "root.etl", "root.ml"]);
        model = on_key(model, key(KeyCode::Char('s')));
        assert_eq!(model.ui.sort, SortKey::Use);
        assert_eq!(paths(&model), ["root", "root.etl", "root.ml"]);
        model = on_key(model, key(KeyCode::Char('s')));
        assert_eq!(model.ui.sort, SortKey::Pending);
        assert_eq!(paths(&model), ["root", "root.ml", "root.etl"]);
        model = on_key(model, key(KeyCode::Char('r')));
        assert_eq!(paths(&model), ["root", "root.etl", "root.ml"]);
        model = on_key(model, key(KeyCode::Char('s')));
        assert_eq!(model.ui.sort, SortKey::Running);
        assert_eq!(paths(&model), ["root", "root.ml", "root.etl"]);
        model = on_key(model, key(KeyCode::Char('s')));
        assert_eq!(model.ui.sort, SortKey::Path);
        let frame = drawn(&model, 96, 14);
        assert!(frame.contains("queues (3) by path reversed"), "{frame}");
        assert!(
            frame.find("  ml").unwrap_or(0) < frame.find("  etl").unwrap_or(0),
            "{frame}"
        );
    }

    #[test]
    fn typing_a_filter_keeps_the_matching_queues_and_esc_clears_it() {
        let mut model = model_with(snapshot());
        for code in [KeyCode::Char('/'), KeyCode::Char('m'), KeyCode::Char('q')] {
            model = on_key(model, key(code));
        }
        // While the filter is typed, `q` is a letter of it.
        assert!(!model.quit);
        assert_eq!(paths(&model), Vec::<String>::new());
        model = on_key(model, key(KeyCode::Backspace));
        model = on_key(model, key(KeyCode::Enter));
        assert_eq!(paths(&model), ["root.ml"]);
        let frame = drawn(&model, 96, 14);
        assert!(
            frame.contains("queues (1) by path matching \"m\""),
            "{frame}"
        );
        assert!(
            frame.contains("│root.ml "),
            "whole paths once filtered: {frame}"
        );
        assert!(!frame.contains("etl"), "{frame}");
        model = on_key(model, key(KeyCode::Esc));
        assert_eq!(paths(&model), ["root", "root.etl", "root.ml"]);
    }

    #[test]
    fn keys_scroll_within_the_rows_and_q_or_ctrl_c_quit() {
        let mut model = model_with(snapshot());
        for _ in 0..5 {
            model = on_key(model, key(KeyCode::Char('j')));
        }
        assert_eq!(model.ui.selected, 2);
        model = on_key(model, key(KeyCode::Up));
        assert_eq!(model.ui.selected, 1);
        assert!(!model.quit);
        let quit = on_key(model.clone(), key(KeyCode::Char('q')));
        assert!(quit.quit);
        let ctrl_c = on_key(
            model,
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
        );
        assert!(ctrl_c.quit);
    }

    #[test]
    fn a_live_frame_ends_with_the_keys_the_filter_being_typed_and_a_failed_refresh() {
        let mut model = Model::new("http://127.0.0.1:7420", true);
        let waiting = drawn(&model, 96, 14);
        assert!(
            waiting.starts_with("lqsm top  http://127.0.0.1:7420  waiting for the first answer"),
            "{waiting}"
        );
        model.absorb(snapshot(), Instant::now());
        let frame = drawn(&model, 96, 14);
        let last = frame.lines().last().unwrap_or("");
        assert!(last.starts_with("s sort  r reverse  / filter"), "{frame}");
        model = on_key(model, key(KeyCode::Char('/')));
        model = on_key(model, key(KeyCode::Char('e')));
        let frame = drawn(&model, 96, 14);
        let last = frame.lines().last().unwrap_or("");
        assert!(last.starts_with("filter: e_"), "{frame}");
        model.failed("cannot reach the LQSM server".to_owned());
        let frame = drawn(&model, 96, 14);
        // What was fetched before stays.
        assert!(frame.contains("│root.etl "), "{frame}");
        let last = frame.lines().last().unwrap_or("");
        assert!(
            last.starts_with("refresh failed: cannot reach the LQSM server"),
            "{frame}"
        );
        // The next answer clears it.
        model.absorb(snapshot(), Instant::now());
        assert!(!drawn(&model, 96, 14).contains("refresh failed"));
    }

    #[test]
    fn a_terminal_of_any_size_is_drawn_without_a_panic() {
        let mut model = Model::new("http://127.0.0.1:7420", true);
        model.absorb(snapshot(), Instant::now());
        model.ui.selected = 2;
        for (width, height) in [(1, 1), (8, 3), (20, 5), (40, 10), (200, 4), (300, 80)] {
            let frame = drawn(&model, width, height);
            assert_eq!(frame.lines().count(), usize::from(height), "{frame}");
        }
        assert!(plain_frame(&model, 0).lines().all(str::is_empty));
    }

    #[test]
    fn long_paths_are_cut_with_an_ellipsis() {
        let mut data = snapshot();
        let long = "root.a_queue_name_far_too_long_for_its_column_to_hold";
        data.queues.children.push(queue(long, 0, 0, 0.0));
        let mut model = model_with(data);
        model.ui.filter = "far_too".to_owned();
        let frame = drawn(&model, 80, 14);
        // 80 columns: the bars shrink to 10 cells to leave the names 21.
        assert!(
            frame.contains("│root.a_queue_name_far… [     |     ] 0%/50%/100%"),
            "{frame}"
        );
        assert_eq!(fit("root.etl", 8), "root.etl");
        assert_eq!(fit("root.etl", 7), "root.e…");
    }

    #[test]
    fn rates_come_from_the_growth_of_the_counters_between_refreshes() {
        let t0 = Instant::now();
        let mut model = Model::new("http://x", false);
        model.absorb(snapshot(), t0);
        assert_eq!(model.rates(), None);
        let mut later = snapshot();
        later.queues.counts.submitted += 30;
        later.queues.counts.succeeded += 10;
        later.queues.counts.expired += 2;
        model.absorb(later, t0 + Duration::from_secs(2));
        assert_eq!(
            model.rates(),
            Some(Rates {
                submitted: 15.0,
                completed: 6.0
            })
        );
        // Counters that went down (a restarted server counts again) give no rate.
        model.absorb(snapshot(), t0 + Duration::from_secs(3));
        assert_eq!(model.rates(), None);
        let frame = drawn(&model, 96, 14);
        assert!(frame.contains("rates need two refreshes"), "{frame}");
    }

    #[test]
    fn a_printed_frame_is_as_tall_as_its_rows() {
        let model = model_with(snapshot());
        let text = plain_frame(&model, 96);
        assert_eq!(text.lines().count(), 4 + 3 + 3 + 1 + 3);
        assert!(text.lines().last().unwrap_or("").starts_with('└'), "{text}");
    }
}
