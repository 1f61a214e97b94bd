//! How a [`View`] looks: a pure function of it, drawn into any ratatui buffer, which is how
//! `--once` prints a frame and how the tests read one.

use super::{
    api::{Decision, DecisionLine, Runs, Snapshot},
    view::{Polling, PoolSample, PoolTrack, Pools, View},
};
use crate::output::thousands;
use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Color, Style, Stylize},
    text::{Line, Span},
    widgets::{
        Block, Cell, LineGauge, Padding, Paragraph, Row, Sparkline, SparklineBar, Table, Widget,
    },
};
use std::time::Duration;

/// The size of a frame printed as text.
pub(crate) const TEXT_WIDTH: u16 = 100;
pub(crate) const TEXT_HEIGHT: u16 = 30;

impl Widget for &View {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let tiers = self.latest.as_ref().map_or(0, |s| s.tiers.len());
        let tiers_height = u16::try_from(tiers + 3).unwrap_or(u16::MAX).clamp(4, 12);
        let [
            header,
            throughput,
            gauges,
            totals,
            tiers,
            pools,
            runs,
            failures,
            status,
        ] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(5),
            Constraint::Length(1),
            Constraint::Length(4),
            Constraint::Length(tiers_height),
            Constraint::Length(pools_height(&self.pools)),
            Constraint::Length(
                self.latest
                    .as_ref()
                    .and_then(|s| s.runs.as_ref())
                    .map_or(0, runs_height),
            ),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(area);
        self.header().render(header, buf);
        self.render_throughput(throughput, buf);
        match &self.latest {
            Some(snapshot) => {
                render_gauges(snapshot, gauges, buf);
                render_totals(snapshot, totals, buf);
                render_tiers(snapshot, tiers, buf);
                render_pools(&self.pools, pools, buf);
                if let Some(r) = &snapshot.runs {
                    render_runs(r, runs, buf);
                }
                match &snapshot.decisions {
                    // A server that runs decisions: failures and decisions side by side.
                    Some(decisions) => {
                        let [left, right] =
                            Layout::horizontal([Constraint::Fill(1), Constraint::Fill(1)])
                                .areas(failures);
                        render_failures(snapshot, left, buf);
                        render_decisions(decisions, right, buf);
                    }
                    None => render_failures(snapshot, failures, buf),
                }
            }
            None => {
                let waiting = format!("waiting for the first answer from {}", self.poll.server);
                Paragraph::new(waiting).render(gauges, buf);
            }
        }
        self.status().render(status, buf);
    }
}

impl View {
    fn header(&self) -> Line<'_> {
        let stats = self.latest.as_ref().map(|s| s.stats);
        let count = count_or_dash;
        Line::from(vec![
            " colony top ".bold().reversed(),
            "  ".into(),
            Span::raw(self.poll.server.as_str()).bold(),
            "   agents ".dim(),
            count(stats.map(|s| s.agents)).into(),
            "   capacity ".dim(),
            count(stats.map(|s| s.capacity)).into(),
            "   watching ".dim(),
            clock(self.poll.watching).into(),
        ])
    }

    fn render_throughput(&self, area: Rect, buf: &mut Buffer) {
        let block = Block::bordered()
            .padding(Padding::horizontal(1))
            .title(" Throughput ");
        let inner = block.inner(area);
        block.render(area, buf);
        let [line, chart] =
            Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(inner);
        let summary = match self.rate() {
            Some(rate) => {
                let peak = self.throughput.iter().copied().fold(0.0, f64::max);
                Line::from(vec![
                    Span::raw(per_second(rate)).bold().green(),
                    " tasks/s finished".into(),
                    format!(
                        "   peak {} over the last {} polls",
                        per_second(peak),
                        self.throughput.len()
                    )
                    .dim(),
                ])
            }
            None => Line::from(vec![
                "-".bold(),
                " tasks/s finished".into(),
                "   (a rate needs two polls)".dim(),
            ]),
        };
        summary.render(line, buf);
        // The newest samples that fit; hundredths keep rates below one task/s visible.
        let start = self
            .throughput
            .len()
            .saturating_sub(usize::from(chart.width));
        let samples: Vec<u64> = self.throughput[start..]
            .iter()
            .map(|r| (r * 100.0).round() as u64)
            .collect();
        Sparkline::default()
            .data(&samples)
            .style(Style::new().fg(Color::Green))
            .render(chart, buf);
    }

    fn status(&self) -> Line<'_> {
        status_line(&self.poll)
    }
}

fn render_gauges(snapshot: &Snapshot, area: Rect, buf: &mut Buffer) {
    let stats = &snapshot.stats;
    let [queued, _, running] = Layout::horizontal([
        Constraint::Fill(1),
        Constraint::Length(2),
        Constraint::Fill(1),
    ])
    .areas(area);
    let gauge = |label: &str, n: u64, color: Color| {
        let ratio = if stats.capacity == 0 {
            0.0
        } else {
            (n as f64 / stats.capacity as f64).clamp(0.0, 1.0)
        };
        LineGauge::default()
            .label(Line::from(vec![
                format!(" {label} ").dim(),
                Span::raw(thousands(n)).bold(),
                " ".into(),
            ]))
            .ratio(ratio)
            .filled_symbol("━")
            .unfilled_symbol("─")
            .filled_style(Style::new().fg(color))
            .unfilled_style(Style::new().fg(Color::DarkGray))
    };
    gauge("queued", stats.queued, Color::Yellow).render(queued, buf);
    gauge("running", stats.running, Color::Cyan).render(running, buf);
}

fn render_totals(snapshot: &Snapshot, area: Rect, buf: &mut Buffer) {
    let s = &snapshot.stats;
    let cell = |label: &'static str, n: u64, bad: bool| {
        let value = Span::raw(thousands(n)).bold();
        let value = if bad && n > 0 { value.red() } else { value };
        Cell::from(Line::from(vec![format!("{label} ").dim(), value]))
    };
    let rows = [
        Row::new([
            cell("succeeded", s.succeeded, false),
            cell("failed", s.failed, true),
            cell("dead-lettered", s.dead_lettered, true),
            cell("cancelled", s.cancelled, false),
            cell("accepted", s.accepted, false),
        ]),
        Row::new([
            cell("retries", s.retries, false),
            cell("steals", s.steals, false),
            cell("restarts", s.restarts, true),
            cell("escalations", s.escalations, true),
            cell("health failures", s.health_failures, true),
        ]),
    ];
    Table::new(rows, [Constraint::Fill(1); 5])
        .block(
            Block::bordered()
                .padding(Padding::horizontal(1))
                .title(" Totals "),
        )
        .render(area, buf);
}

fn render_tiers(snapshot: &Snapshot, area: Rect, buf: &mut Buffer) {
    let number = |n: u64| Cell::from(Line::from(thousands(n)).right_aligned());
    let rows = snapshot.tiers.iter().map(|t| {
        let style = if t.down + t.critical + t.failed > 0 {
            Style::new().fg(Color::Red)
        } else if t.degraded > 0 {
            Style::new().fg(Color::Yellow)
        } else {
            Style::new()
        };
        Row::new([
            Cell::from(t.name.as_str()),
            number(t.agents),
            number(t.down),
            number(t.retired),
            number(t.degraded),
            number(t.critical),
            number(t.failed),
        ])
        .style(style)
    });
    let header = Row::new(
        [
            "tier", "agents", "down", "retired", "degraded", "critical", "failed",
        ]
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            let line = Line::from(h);
            Cell::from(if i == 0 { line } else { line.right_aligned() })
        }),
    )
    .bold();
    let widths = [
        Constraint::Min(12),
        Constraint::Length(11),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
    ];
    Table::new(rows, widths)
        .header(header)
        .block(
            Block::bordered()
                .padding(Padding::horizontal(1))
                .title(" Tiers "),
        )
        .render(area, buf);
}

/// Pools shown at most, two rows each; the title says how many there are.
const POOLS_SHOWN: usize = 4;

/// The pools panel's height: nothing from a server that keeps no history.
fn pools_height(pools: &Pools) -> u16 {
    if !pools.served {
        return 0;
    }
    let shown = pools.tracks.len().min(POOLS_SHOWN);
    2 + u16::try_from(2 * shown).unwrap_or(0).max(1)
}

/// Each pool: its numbers now and the newest decision on its size, then a sparkline of its
/// agents over the history kept, yellow where the autoscaler wanted more.
fn render_pools(pools: &Pools, area: Rect, buf: &mut Buffer) {
    if area.height == 0 {
        return;
    }
    let span = pools
        .tracks
        .first()
        .and_then(|t| Some(t.latest()?.t.saturating_sub(t.samples.front()?.t)))
        .unwrap_or(0);
    let mut title = format!(" Pools: agents over the last {} ", short_ago(span));
    if pools.tracks.len() > POOLS_SHOWN {
        title.push_str(&format!("(first {POOLS_SHOWN} of {}) ", pools.tracks.len()));
    }
    let block = Block::bordered()
        .padding(Padding::horizontal(1))
        .title(title);
    let inner = block.inner(area);
    block.render(area, buf);
    if pools.tracks.is_empty() {
        Paragraph::new(" no samples yet".dim()).render(inner, buf);
        return;
    }
    let rows = pools.tracks.iter().take(POOLS_SHOWN).enumerate();
    for (i, track) in rows {
        let y = inner.y + 2 * u16::try_from(i).unwrap_or(u16::MAX);
        if y >= inner.bottom() {
            break;
        }
        pool_line(track, inner.width).render(
            Rect {
                y,
                height: 1,
                ..inner
            },
            buf,
        );
        if y + 1 < inner.bottom() {
            pool_sparkline(track, usize::from(inner.width)).render(
                Rect {
                    y: y + 1,
                    height: 1,
                    ..inner
                },
                buf,
            );
        }
    }
}

fn pool_line(track: &PoolTrack, width: u16) -> Line<'_> {
    let now = track.latest().copied().unwrap_or_default();
    let count = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), thousands);
    let desired = match (now.agents, now.desired) {
        (Some(a), Some(d)) if d > a => count(now.desired).yellow().bold(),
        _ => count(now.desired).bold(),
    };
    let mut spans = vec![
        Span::raw(track.name.as_str()).bold(),
        "  agents ".dim(),
        count(now.agents).bold(),
        "  desired ".dim(),
        desired,
        "  backlog ".dim(),
        count(now.waiting).bold(),
        "  busy ".dim(),
        count(now.busy).bold(),
    ];
    let used: usize = spans.iter().map(Span::width).sum();
    let room = usize::from(width).saturating_sub(used + 3);
    if let Some(said) = decisions(track, now.t) {
        spans.push("   ".into());
        spans.push(truncate(&said, room).dim());
    }
    Line::from(spans)
}

/// The newest step on a pool's size and, if it came later, the step it was held from.
fn decisions(track: &PoolTrack, now: u64) -> Option<String> {
    let ago = |d: &Decision| short_ago(now.saturating_sub(d.t));
    let step = track.last_step.as_ref().map(|d| {
        let arrow = format!("{} → {}", count_or_dash(d.from), count_or_dash(d.to));
        let what = match d.kind.as_str() {
            "scale:up" => format!("grown {arrow}"),
            "scale:down" => format!("shrunk {arrow}"),
            _ => format!("resized by hand {arrow}"),
        };
        match &d.reason {
            Some(reason) => format!("{what} ({reason}) {} ago", ago(d)),
            None => format!("{what} {} ago", ago(d)),
        }
    });
    let held = track.held.as_ref().map(|d| {
        format!(
            "held from {} by {}",
            d.wanted.as_deref().unwrap_or("a step"),
            d.by.as_deref().unwrap_or("?")
        )
    });
    match (step, held) {
        (Some(step), Some(held)) => Some(format!("{step}; {held}")),
        (step, held) => step.or(held),
    }
}

/// The bottom line of either view: how it polls its server, the last poll's error while it
/// retries, or how long ago the last answer came.
pub(super) fn status_line(poll: &Polling) -> Line<'static> {
    let every = short(poll.interval);
    let server = &poll.server;
    if !poll.live {
        return Line::from(
            format!(" one poll of {server}; in a terminal, colony top keeps watching").dim(),
        );
    }
    let ago = poll.polled_at.map(|at| poll.watching.saturating_sub(at));
    match &poll.error {
        Some(error) => Line::from(vec![
            " q quit ".reversed(),
            " ".into(),
            format!("poll failed: {error}; retrying every {every}")
                .red()
                .bold(),
        ]),
        None => Line::from(vec![
            " q quit ".reversed(),
            format!(
                " polling every {every}; last answer {} ago",
                ago.map_or_else(|| "-".to_owned(), short)
            )
            .dim(),
        ]),
    }
}

pub(super) fn count_or_dash(n: Option<u64>) -> String {
    n.map_or_else(|| "-".to_owned(), thousands)
}

/// `12s`, `4m 10s`, `1h 2m`, from milliseconds.
fn short_ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, s / 60 % 60),
    }
}

/// The agents over the samples kept, squeezed into `width` columns when there are more: each
/// column the most agents of its stretch of samples, yellow where the autoscaler wanted more
/// than that.
fn pool_sparkline(track: &PoolTrack, width: usize) -> Sparkline<'static> {
    let samples: Vec<&PoolSample> = track.samples.iter().collect();
    let mut top = 1;
    let bars: Vec<SparklineBar> = squeeze(samples.len(), width)
        .map(|stretch| {
            let stretch = &samples[stretch];
            let agents = stretch.iter().filter_map(|s| s.agents).max();
            let desired = stretch.iter().filter_map(|s| s.desired).max();
            top = top.max(agents.unwrap_or(0)).max(desired.unwrap_or(0));
            let short = desired.is_some_and(|d| agents.is_none_or(|a| d > a));
            let color = if short { Color::Yellow } else { Color::Blue };
            SparklineBar::from(agents).style(Style::new().fg(color))
        })
        .collect();
    Sparkline::default().data(bars).max(top)
}

/// `n` samples squeezed into at most `width` columns: the stretch of samples each column
/// stands for, oldest first, each one sample when they fit.
pub(super) fn squeeze(n: usize, width: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let columns = n.min(width);
    (0..columns).map(move |c| c * n / columns..(c + 1) * n / columns)
}

/// A bordered panel titled `title`: drawn saying "none" when `empty` (and `None` given back),
/// else given back to be filled.
fn panel(title: &'static str, empty: bool, area: Rect, buf: &mut Buffer) -> Option<Block<'static>> {
    let block = Block::bordered()
        .padding(Padding::horizontal(1))
        .title(title);
    if empty {
        Paragraph::new(" none".dim()).block(block).render(area, buf);
        return None;
    }
    Some(block)
}

/// Runs listed, and waves of the newest run shown, at most.
const RUNS_SHOWN: usize = 3;
const WAVES_SHOWN: usize = super::api::WAVES_POLLED;

/// The runs panel's height: its border, a line per run, a line per wave of the newest.
fn runs_height(runs: &Runs) -> u16 {
    let waves = runs.waves();
    let lines = runs.runs.len().clamp(1, RUNS_SHOWN)
        + waves.min(WAVES_SHOWN)
        + usize::from(waves > WAVES_SHOWN);
    u16::try_from(lines + 2).unwrap_or(u16::MAX)
}

/// A task's state as one mark: waiting `·`, started `>`, succeeded `✓`, failed `✗`, skipped
/// `-`, cancelled `/`.
fn mark(state: &str) -> Span<'static> {
    match state {
        "succeeded" => "✓".green(),
        "failed" => "✗".red(),
        "started" => ">".blue(),
        "skipped" => "-".dim(),
        "cancelled" => "/".dim(),
        _ => "·".dim(),
    }
}

/// The workflow runs: one line each, then the newest run's tasks wave by wave.
fn render_runs(runs: &Runs, area: Rect, buf: &mut Buffer) {
    let Some(block) = panel(" Workflow runs ", runs.runs.is_empty(), area, buf) else {
        return;
    };
    let width = usize::from(block.inner(area).width);
    let mut lines: Vec<Line> = Vec::new();
    for r in runs.runs.iter().take(RUNS_SHOWN) {
        let ended = r
            .succeeded
            .saturating_add(r.failed)
            .saturating_add(r.skipped)
            .saturating_add(r.cancelled);
        let state = match r.state.as_str() {
            "succeeded" => r.state.clone().green(),
            "running" => r.state.clone().blue(),
            _ => r.state.clone().red(),
        };
        let mut spans = vec![
            format!("#{} ", r.id).bold(),
            Span::raw(truncate(&r.name, 24)),
            "  ".into(),
            state,
            format!("  {}/{} ended", thousands(ended), thousands(r.tasks)).into(),
        ];
        if r.failed > 0 {
            spans.push(format!("  {} failed", thousands(r.failed)).red());
        }
        if let Some(cost) = r.cost_usd.filter(|c| *c > 0.0) {
            spans.push(format!("  ${cost:.4}").into());
        }
        lines.push(Line::from(spans));
    }
    let waves = runs.waves();
    for wave in 0..waves.min(WAVES_SHOWN) {
        let mut spans: Vec<Span> = vec![format!("w{wave} ").dim()];
        let mut used = 4;
        for t in runs.newest.iter().filter(|t| t.wave == wave) {
            let id = truncate(&t.id, 24);
            let needed = id.chars().count() + 2;
            if used + needed > width {
                spans.push("…".dim());
                break;
            }
            used += needed;
            spans.push(mark(&t.state));
            spans.push(Span::raw(format!("{id} ")));
        }
        lines.push(Line::from(spans));
    }
    if waves > WAVES_SHOWN {
        lines.push(Line::from(
            format!("and {} more waves", waves - WAVES_SHOWN).dim(),
        ));
    }
    Paragraph::new(lines).block(block).render(area, buf);
}

fn render_failures(snapshot: &Snapshot, area: Rect, buf: &mut Buffer) {
    let Some(block) = panel(
        " Latest failed and dead-lettered tasks ",
        snapshot.failures.is_empty(),
        area,
        buf,
    ) else {
        return;
    };
    let id_width = snapshot
        .failures
        .iter()
        .map(|t| t.id.to_string().len())
        .max()
        .unwrap_or(0)
        .max(2) as u16;
    let fixed = id_width + 13 + 8 + 3;
    let error_width = usize::from(block.inner(area).width.saturating_sub(fixed));
    let rows = snapshot.failures.iter().map(|t| {
        Row::new([
            Cell::from(Line::from(t.id.to_string()).right_aligned()),
            Cell::from(t.state.as_str()).red(),
            Cell::from(Line::from(t.attempts.to_string()).right_aligned()),
            Cell::from(truncate(t.error.as_deref().unwrap_or("-"), error_width)),
        ])
    });
    let header = Row::new([
        Cell::from(Line::from("id").right_aligned()),
        Cell::from("state"),
        Cell::from(Line::from("attempts").right_aligned()),
        Cell::from("error"),
    ])
    .bold();
    let widths = [
        Constraint::Length(id_width),
        Constraint::Length(13),
        Constraint::Length(8),
        Constraint::Fill(1),
    ];
    Table::new(rows, widths)
        .header(header)
        .block(block)
        .render(area, buf);
}

fn render_decisions(decisions: &[DecisionLine], area: Rect, buf: &mut Buffer) {
    let Some(block) = panel(
        " Latest decisions by vote ",
        decisions.is_empty(),
        area,
        buf,
    ) else {
        return;
    };
    let id_width = decisions
        .iter()
        .map(|d| d.id.to_string().len())
        .max()
        .unwrap_or(0)
        .max(2) as u16;
    let fixed = id_width + 8 + 10 + 5 + 4 + 4;
    let value_width = usize::from(block.inner(area).width.saturating_sub(fixed));
    let share = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |x| format!("{:.0}%", x * 100.0));
    let rows = decisions.iter().map(|d| {
        let state = Cell::from(d.state.clone());
        let state = match d.state.as_str() {
            "decided" => state.green(),
            "failed" => state.red(),
            _ => state.blue(),
        };
        // The winner, or why there is none.
        let said = match (&d.value, &d.reason) {
            (Some(serde_json::Value::String(v)), _) => v.clone(),
            (Some(v), _) if !v.is_null() => v.to_string(),
            (_, Some(reason)) => reason.clone(),
            _ => "-".to_owned(),
        };
        Row::new([
            Cell::from(Line::from(d.id.to_string()).right_aligned()),
            state,
            Cell::from(truncate(&d.protocol, 10)),
            Cell::from(Line::from(d.voters.to_string()).right_aligned()),
            Cell::from(Line::from(share(d.support)).right_aligned()),
            Cell::from(truncate(&said, value_width)),
        ])
    });
    let header = Row::new([
        Cell::from(Line::from("id").right_aligned()),
        Cell::from("state"),
        Cell::from("protocol"),
        Cell::from(Line::from("vot").right_aligned()),
        Cell::from(Line::from("sup").right_aligned()),
        Cell::from("value or reason"),
    ])
    .bold();
    let widths = [
        Constraint::Length(id_width),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(5),
        Constraint::Length(4),
        Constraint::Fill(1),
    ];
    Table::new(rows, widths)
        .header(header)
        .block(block)
        .render(area, buf);
}

/// One line of at most `width` characters, ending in `…` when cut.
fn truncate(text: &str, width: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= width {
        return line;
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A rate for people: whole tasks from 100/s up, a decimal below.
fn per_second(rate: f64) -> String {
    if rate >= 100.0 {
        thousands(rate.round() as u64)
    } else {
        format!("{rate:.1}")
    }
}

/// `1:02:03`.
pub(super) fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// `500ms`, `1s`, `2.5s`.
fn short(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The frame as plain text, one line per row, trailing blanks trimmed.
pub(crate) fn text(view: impl Widget, width: u16, height: u16) -> String {
    let area = Rect::new(0, 0, width, height);
    let mut buf = Buffer::empty(area);
    view.render(area, &mut buf);
    let mut out = String::new();
    for y in 0..height {
        let mut line = String::new();
        let mut x = 0;
        while x < width {
            let symbol = buf[(x, y)].symbol();
            line.push_str(symbol);
            // A wide character covers the cells after it.
            x += u16::try_from(Span::raw(symbol).width().max(1)).unwrap_or(1);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::top::api::{FailedTask, PoolHistory, PoolSeries, Stats, Tier};
    use ratatui::{Terminal, backend::TestBackend};

    fn snapshot(succeeded: u64) -> Snapshot {
        let tier = |name: &str, agents, down, degraded| Tier {
            name: name.into(),
            agents,
            down,
            degraded,
            ..Tier::default()
        };
        Snapshot {
            stats: Stats {
                accepted: succeeded + 40,
                succeeded,
                failed: 3,
                dead_lettered: 2,
                cancelled: 1,
                retries: 17,
                steals: 250,
                restarts: 4,
                escalations: 0,
                health_failures: 1,
                queued: 30,
                running: 4,
                agents: 5_455,
                capacity: 111_752,
            },
            tiers: vec![
                tier("master", 3, 0, 0),
                tier("coordinator", 35, 0, 0),
                tier("supervisor", 417, 0, 0),
                tier("worker", 5_000, 2, 7),
            ],
            failures: vec![
                FailedTask {
                    id: 1042,
                    state: "dead-lettered".into(),
                    attempts: 3,
                    error: Some(format!("agent 17 crashed:\n{}", "x".repeat(200))),
                },
                FailedTask {
                    id: 977,
                    state: "failed".into(),
                    attempts: 1,
                    error: Some("timed out after 30s".into()),
                },
            ],
            pools: None,
            decisions: None,
            runs: None,
        }
    }

    /// The server's clock at sample `k`.
    fn at(k: u64) -> u64 {
        1_700_000_000_000 + k * 1_000
    }

    /// What the pools' history answers to poll `poll`: two minutes of samples first, then one
    /// a poll. Pool 0 is autoscaled and grows twice (the autoscaler asking first, so that it
    /// is short for a while); pool 1 keeps its size.
    fn pools(poll: u64) -> PoolHistory {
        let ks: Vec<u64> = if poll == 0 {
            (0..120).collect()
        } else {
            vec![119 + poll]
        };
        let scaled = |k: u64| match k {
            0..60 => 4,
            60..90 => 6,
            _ => 9,
        };
        let wanted = |k: u64| match k {
            0..55 => 4,
            55..85 => 6,
            _ => 9,
        };
        let series = |pool,
                      kind: &str,
                      role: &str,
                      agents: &dyn Fn(u64) -> Option<u64>,
                      desired: &dyn Fn(u64) -> Option<u64>| PoolSeries {
            pool,
            kind: Some(kind.into()),
            role: Some(role.into()),
            agents: ks.iter().map(|&k| agents(k)).collect(),
            desired: ks.iter().map(|&k| desired(k)).collect(),
            waiting: ks
                .iter()
                .map(|&k| Some(if k < 90 { 40 } else { 3 }))
                .collect(),
            busy: ks.iter().map(|&k| agents(k)).collect(),
        };
        let step = |k: u64, from, to, reason: &str| Decision {
            t: at(k) + 500,
            pool: 0,
            kind: "scale:up".into(),
            from: Some(from),
            to: Some(to),
            reason: Some(reason.into()),
            ..Decision::default()
        };
        let events = match poll {
            0 => vec![
                step(59, 4, 6, "high-utilisation"),
                step(89, 6, 9, "overload"),
            ],
            2 => vec![Decision {
                t: at(121) + 500,
                pool: 0,
                kind: "scale:blocked".into(),
                wanted: Some("forecast".into()),
                by: Some("cooldown".into()),
                ..Decision::default()
            }],
            _ => vec![],
        };
        PoolHistory {
            until: at(*ks.last().unwrap()) + 600,
            t: ks.iter().map(|&k| at(k)).collect(),
            pools: vec![
                series(0, "sim", "worker", &|k| Some(scaled(k)), &|k| {
                    Some(wanted(k))
                }),
                series(1, "command", "coder", &|_| Some(2), &|_| None),
            ],
            events,
        }
    }

    fn watched() -> View {
        let mut view = View::new("http://127.0.0.1:7070", Duration::from_secs(1), true);
        for (i, done) in [0, 1_000, 3_500, 4_000, 6_000].into_iter().enumerate() {
            let snapshot = Snapshot {
                pools: Some(Box::new(pools(i as u64))),
                ..snapshot(done)
            };
            view.record(Duration::from_secs(i as u64), Ok(snapshot));
        }
        view.tick(Duration::from_millis(4_300));
        view
    }

    #[test]
    fn decisions_are_shown_beside_the_failures_when_the_server_runs_them() {
        let mut view = View::new("http://127.0.0.1:7070", Duration::from_secs(1), true);
        let line = |id, state: &str, value: Option<serde_json::Value>, reason: Option<&str>| {
            DecisionLine {
                id,
                state: state.into(),
                protocol: "majority".into(),
                voters: 5,
                value,
                support: value_support(state),
                participation: Some(1.0),
                reason: reason.map(Into::into),
            }
        };
        fn value_support(state: &str) -> Option<f64> {
            (state == "decided").then_some(0.8)
        }
        let voted = Snapshot {
            decisions: Some(vec![
                line(90, "decided", Some("Paris".into()), None),
                line(80, "failed", None, Some("no-quorum")),
                line(70, "open", None, None),
                line(60, "decided", Some(serde_json::json!(42)), None),
            ]),
            ..snapshot(10)
        };
        view.record(Duration::ZERO, Ok(voted));
        let text = text(&view, TEXT_WIDTH, 40);
        let row = |needle: &str| row_of(&text, needle);
        assert!(
            row("Latest decisions by vote").contains("Latest failed"),
            "side by side"
        );
        assert!(
            row(" 90 ").contains("decided") && row(" 90 ").contains("Paris"),
            "{text}"
        );
        assert!(row(" 90 ").contains("80%"), "{text}");
        assert!(row(" 80 ").contains("no-quorum"), "{text}");
        assert!(row(" 70 ").contains("open"), "{text}");
        assert!(row(" 60 ").contains("42"), "{text}");
        // An older server, without decisions: the failures have the whole width.
        let mut old = View::new("http://127.0.0.1:7070", Duration::from_secs(1), true);
        old.record(Duration::ZERO, Ok(snapshot(10)));
        assert!(!text_of(&old).contains("decisions by vote"));
    }

    #[test]
    fn runs_show_their_progress_and_the_newest_run_its_tasks_wave_by_wave() {
        use super::super::api::{RunLine, RunTask, Runs};
        let task = |id: &str, wave, state: &str| RunTask {
            id: id.into(),
            wave,
            state: state.into(),
            ..RunTask::default()
        };
        let runs = Runs {
            runs: vec![
                RunLine {
                    id: 2,
                    name: "coding-swarm".into(),
                    state: "running".into(),
                    tasks: 4,
                    succeeded: 1,
                    failed: 1,
                    cost_usd: Some(0.125),
                    ..RunLine::default()
                },
                RunLine {
                    id: 1,
                    name: "quickstart".into(),
                    state: "succeeded".into(),
                    tasks: 6,
                    succeeded: 6,
                    ..RunLine::default()
                },
            ],
            newest: vec![
                task("plan", 0, "succeeded"),
                task("build-a", 1, "failed"),
                task("build-b", 1, "started"),
                task("review", 2, "waiting"),
            ],
            newest_waves: 7,
        };
        let mut view = View::new("http://127.0.0.1:7070", Duration::from_secs(1), true);
        view.record(
            Duration::ZERO,
            Ok(Snapshot {
                runs: Some(runs),
                ..snapshot(10)
            }),
        );
        let text = text(&view, TEXT_WIDTH, 40);
        let row = |needle: &str| row_of(&text, needle);
        assert!(text.contains("Workflow runs"), "{text}");
        let newest = row("#2 coding-swarm");
        assert!(
            newest.contains("running") && newest.contains("2/4 ended"),
            "{newest}"
        );
        assert!(
            newest.contains("1 failed") && newest.contains("$0.1250"),
            "{newest}"
        );
        assert!(row("#1 quickstart").contains("6/6 ended"), "{text}");
        assert!(row("w0 ").contains("✓plan"), "{text}");
        let wave = row("w1 ");
        assert!(
            wave.contains("✗build-a") && wave.contains(">build-b"),
            "{wave}"
        );
        assert!(row("w2 ").contains("·review"), "{text}");
        // The server said how many waves there are beyond those it sent.
        assert!(text.contains("and 3 more waves"), "{text}");
        // A server without runs: no panel.
        let mut none = View::new("http://127.0.0.1:7070", Duration::from_secs(1), true);
        none.record(Duration::ZERO, Ok(snapshot(10)));
        assert!(!text_of(&none).contains("Workflow runs"));
    }

    /// The first line of `text` that holds `needle`.
    fn row_of(text: &str, needle: &str) -> String {
        text.lines()
            .find(|r| r.contains(needle))
            .unwrap_or_else(|| panic!("no row has {needle:?}:\n{text}"))
            .to_owned()
    }

    fn text_of(view: &View) -> String {
        text(view, TEXT_WIDTH, TEXT_HEIGHT)
    }

    #[test]
    fn a_frame_shows_the_numbers_and_the_tiers() {
        let view = watched();
        let mut terminal = Terminal::new(TestBackend::new(TEXT_WIDTH, TEXT_HEIGHT)).unwrap();
        terminal
            .draw(|frame| frame.render_widget(&view, frame.area()))
            .unwrap();
        let buffer = terminal.backend().buffer();
        let rows: Vec<String> = (0..TEXT_HEIGHT)
            .map(|y| (0..TEXT_WIDTH).map(|x| buffer[(x, y)].symbol()).collect())
            .collect();
        let row = |needle: &str| {
            rows.iter()
                .find(|r| r.contains(needle))
                .unwrap_or_else(|| panic!("no row has {needle:?}:\n{}", rows.join("\n")))
        };
        assert!(row("colony top").contains("5,455"));
        assert!(row("colony top").contains("111,752"));
        assert!(row("tasks/s finished").contains("2,000"));
        assert!(row("succeeded").contains("6,000"));
        assert!(row("health failures").contains("steals 250"));
        assert!(row("queued").contains("running 4"));
        for tier in ["master", "coordinator", "supervisor"] {
            assert!(row(tier).contains('│'));
        }
        let worker: Vec<&str> = row("worker")
            .split(|c: char| c.is_whitespace() || c == '│')
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(worker, ["worker", "5,000", "2", "0", "7", "0", "0"]);
        assert!(row("1042").contains("dead-lettered"));
        assert!(
            row("1042").trim_end_matches([' ', '│']).ends_with('…'),
            "long errors are cut"
        );
        assert!(row("977").contains("timed out after 30s"));
        assert!(row(" Pools: ").contains("over the last 2m 3s"));
        let scaled = row("sim/worker");
        for part in ["agents 9", "desired 9", "backlog 3", "busy 9"] {
            assert!(scaled.contains(part), "{part} in {scaled}");
        }
        assert!(
            scaled.contains("grown 6 → 9 (overload) 33s ago; held from …"),
            "cut to the panel: {scaled}"
        );
        assert!(row("command/coder").contains("desired -"));
    }

    #[test]
    fn the_pool_sparkline_squeezes_the_history_and_marks_a_shortfall() {
        let view = watched();
        let track = &view.pools.tracks[0];
        assert_eq!(track.samples.len(), 124);
        // 124 samples in 62 columns: two a column, the larger of each pair.
        let area = Rect::new(0, 0, 62, 1);
        let mut buf = Buffer::empty(area);
        pool_sparkline(track, 62).render(area, &mut buf);
        let cell = |x: u16| &buf[(x, 0)];
        // 4 agents of at most 9 is the third of eight levels (3.6, rounded down); 9 is full.
        assert_eq!(cell(0).symbol(), "▃");
        assert_eq!(cell(61).symbol(), "█");
        assert_eq!(cell(0).fg, Color::Blue);
        // Samples 56 and 57 (column 28): the autoscaler wanted 6 of the 4 there were.
        assert_eq!(cell(28).fg, Color::Yellow);
        assert_eq!(cell(30).fg, Color::Blue, "samples 60 and 61 had their 6");
    }

    #[test]
    fn a_server_without_pool_history_shows_no_pools_panel() {
        let mut view = View::new("http://h:1", Duration::from_secs(1), false);
        view.record(Duration::ZERO, Ok(snapshot(10)));
        let text = text(&view, TEXT_WIDTH, TEXT_HEIGHT);
        assert!(!text.contains("Pools"), "{text}");
        assert!(text.contains("succeeded 10"));
    }

    #[test]
    fn a_frame_as_text() {
        insta::assert_snapshot!(text(&watched(), TEXT_WIDTH, TEXT_HEIGHT));
    }

    #[test]
    fn a_failed_poll_keeps_the_data_and_says_why() {
        let mut view = watched();
        view.record(
            Duration::from_secs(5),
            Err("cannot reach colony serve".into()),
        );
        let text = text(&view, TEXT_WIDTH, TEXT_HEIGHT);
        assert!(text.contains("poll failed: cannot reach colony serve; retrying every 1s"));
        assert!(text.contains("succeeded 6,000"));
    }

    #[test]
    fn before_any_answer_and_in_small_terminals_nothing_breaks() {
        let view = View::new("http://h:1", Duration::from_millis(500), false);
        assert!(text(&view, TEXT_WIDTH, TEXT_HEIGHT).contains("waiting for the first answer"));
        for (w, h) in [(1, 1), (10, 5), (40, 12), (200, 60)] {
            text(&watched(), w, h);
            text(&view, w, h);
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(truncate("a\nb  c", 10), "a b c");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(per_second(0.25), "0.2");
        assert_eq!(per_second(12_345.4), "12,345");
        assert_eq!(clock(Duration::from_secs(3_723)), "1:02:03");
        assert_eq!(short(Duration::from_millis(250)), "250ms");
        assert_eq!(short(Duration::from_millis(2_500)), "2.5s");
    }
}
