//! `colony top` over a cluster's control plane (`colony serve --nats`): the live nodes and
//! each role's backlog from `GET /v1/cluster`, and each role's agents and tasks waiting over
//! the server's last fifteen minutes from `GET /v1/roles/history` (all of it on the first
//! poll, then what is new). The server runs no agents of its own, so the runtime's panels
//! (throughput, tiers, pools, runs, failures) have no counterpart here.

use super::{
    api::{Client, Error},
    draw::{clock, count_or_dash, squeeze, status_line},
    view::Polling,
};
use crate::output::thousands;
use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Color, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Cell, Padding, Paragraph, Row, Sparkline, Table, Widget},
};
use serde::Deserialize;
use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

/// Samples of each role kept here: the server's fifteen minutes at one every 2 s.
const SAMPLES: usize = 450;
/// Roles tracked at most; past them, the first by name.
const ROLES: usize = 64;

/// A live node, as `/v1/cluster` lists it. What a field the server does not send reads as
/// zero or empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) roles: Vec<String>,
    pub(crate) agents: u64,
    pub(crate) running: u64,
    pub(crate) ended: u64,
    pub(crate) fenced: u64,
    pub(crate) unhealthy: u64,
    pub(crate) draining: bool,
    pub(crate) at_ms: u64,
}

/// A role's backlog, as `/v1/cluster` lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct Role {
    pub(crate) role: String,
    pub(crate) waiting: u64,
    pub(crate) running: u64,
}

/// What `GET /v1/cluster` answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct Status {
    pub(crate) nodes: Vec<Node>,
    pub(crate) unfinished: u64,
    pub(crate) roles: Vec<Role>,
    pub(crate) leader: Option<String>,
    /// The server's clock as it answered (ms since the epoch); absent from servers before it.
    #[serde(rename = "now-ms")]
    pub(crate) now_ms: Option<u64>,
}

/// One role's columns of `GET /v1/roles/history`, aligned with its `t`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct RoleColumns {
    pub(crate) role: String,
    pub(crate) agents: Vec<Option<u64>>,
    pub(crate) waiting: Vec<Option<u64>>,
}

/// What `GET /v1/roles/history` answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct RolesHistory {
    pub(crate) until: u64,
    pub(crate) t: Vec<u64>,
    pub(crate) roles: Vec<RoleColumns>,
}

/// One poll of the cluster's server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) status: Status,
    /// `None` from a server without the roles' history.
    pub(crate) history: Option<RolesHistory>,
    /// The server's clock (ms since the epoch), for heartbeat ages: as it answered, or from
    /// a server that does not say it, its newest sample's; `None` when neither is known.
    pub(crate) now_ms: Option<u64>,
}

impl Client {
    /// The cluster's status, and its roles' history after `since` (all of it without).
    pub(crate) async fn cluster(&self, since: Option<u64>) -> Result<Snapshot, Error> {
        let history = match since {
            Some(since) => format!("/v1/roles/history?since={since}"),
            None => "/v1/roles/history".to_owned(),
        };
        let (status, history) = tokio::try_join!(
            self.get::<Status>("/v1/cluster"),
            self.get_if_served::<RolesHistory>(&history),
        )?;
        // Heartbeat ages against the server's clock; from a server that does not say it,
        // against its newest sample (up to a slot behind).
        let now_ms = status
            .now_ms
            .or_else(|| history.as_ref().map(|h| h.until).filter(|&t| t > 0));
        Ok(Snapshot {
            status,
            history,
            now_ms,
        })
    }
}

/// A role's samples, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Track {
    pub(crate) agents: VecDeque<Option<u64>>,
    pub(crate) waiting: VecDeque<Option<u64>>,
}

/// What `colony top` knows of the cluster.
#[derive(Clone, Debug)]
pub(crate) struct ClusterView {
    pub(crate) poll: Polling,
    /// The latest answer; it stays on screen while later polls fail.
    pub(crate) latest: Option<Snapshot>,
    /// Each role's agents and tasks waiting over the samples kept, by name.
    pub(crate) tracks: BTreeMap<String, Track>,
    /// Samples kept: each track is as long.
    pub(crate) samples: usize,
    /// The newest sample's time: the next poll asks for what came after it.
    pub(crate) until: Option<u64>,
}

impl ClusterView {
    pub(crate) fn new(server: impl Into<String>, interval: Duration, live: bool) -> Self {
        Self {
            poll: Polling::new(server, interval, live),
            latest: None,
            tracks: BTreeMap::new(),
            samples: 0,
            until: None,
        }
    }

    pub(crate) fn tick(&mut self, now: Duration) {
        self.poll.tick(now);
    }

    /// Takes in a poll asked for at `at`.
    pub(crate) fn record(&mut self, at: Duration, poll: Result<Snapshot, String>) {
        let mut snapshot = match poll {
            Ok(s) => s,
            Err(error) => {
                self.poll.failed(at, error);
                return;
            }
        };
        if let Some(history) = snapshot.history.take() {
            self.take(history);
        }
        if snapshot.now_ms.is_none() {
            snapshot.now_ms = self.until;
        }
        self.latest = Some(snapshot);
        self.poll.answered(at);
    }

    /// What the next poll asks the roles' history for.
    pub(crate) fn since(&self) -> Option<u64> {
        self.until
    }

    /// Appends the samples newer than those kept; a role first seen starts as gaps, one no
    /// longer in any sample kept is dropped.
    fn take(&mut self, history: RolesHistory) {
        // A server whose newest sample is older than what is kept here is another (started
        // again, or a second behind the same address): its history is read whole next.
        if history.until > 0 && self.until.is_some_and(|until| history.until < until) {
            self.tracks.clear();
            self.samples = 0;
            self.until = None;
            return;
        }
        let given: BTreeMap<&str, &RoleColumns> =
            history.roles.iter().map(|r| (r.role.as_str(), r)).collect();
        for name in given.keys() {
            if !self.tracks.contains_key(*name) && self.tracks.len() < ROLES {
                let gaps = || std::iter::repeat_n(None, self.samples).collect();
                let track = Track {
                    agents: gaps(),
                    waiting: gaps(),
                };
                self.tracks.insert((*name).to_owned(), track);
            }
        }
        // At most the samples kept are taken in: an answer longer than that (a hostile
        // server's) does not grow the tracks past them first.
        let skip = history.t.len().saturating_sub(SAMPLES);
        for (row, &t) in history.t.iter().enumerate().skip(skip) {
            // Never back: a server started again begins a history of its own.
            if self.until.is_some_and(|until| t <= until) {
                continue;
            }
            self.until = Some(t);
            self.samples += 1;
            for (name, track) in &mut self.tracks {
                let column = given.get(name.as_str());
                let at = |c: &Vec<Option<u64>>| c.get(row).copied().flatten();
                track.agents.push_back(column.and_then(|c| at(&c.agents)));
                track.waiting.push_back(column.and_then(|c| at(&c.waiting)));
            }
        }
        while self.samples > SAMPLES {
            self.samples -= 1;
            for track in self.tracks.values_mut() {
                track.agents.pop_front();
                track.waiting.pop_front();
            }
        }
        let seen = |c: &VecDeque<Option<u64>>| c.iter().any(Option::is_some);
        self.tracks
            .retain(|_, track| seen(&track.agents) || seen(&track.waiting));
    }
}

impl Widget for &ClusterView {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let nodes = self.latest.as_ref().map_or(0, |s| s.status.nodes.len());
        let nodes_height = u16::try_from(nodes + 3).unwrap_or(u16::MAX).clamp(4, 14);
        let [header, totals, nodes, roles, status] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Length(nodes_height),
            Constraint::Min(4),
            Constraint::Length(1),
        ])
        .areas(area);
        let title = Line::from(vec![
            " colony top ".bold().reversed(),
            " cluster at ".into(),
            Span::raw(self.poll.server.as_str()).bold(),
            "  watching ".dim(),
            clock(self.poll.watching).into(),
        ]);
        title.render(header, buf);
        // Said before any answer too: a first poll that failed says why.
        status_line(&self.poll).render(status, buf);
        let Some(latest) = &self.latest else {
            Paragraph::new(" waiting for the first answer".dim()).render(nodes, buf);
            return;
        };
        render_totals(&latest.status, totals, buf);
        render_nodes(latest, nodes, buf);
        self.render_roles(&latest.status, roles, buf);
    }
}

fn render_totals(status: &Status, area: Rect, buf: &mut Buffer) {
    let sum = |f: fn(&Node) -> u64| status.nodes.iter().map(f).sum::<u64>();
    let waiting: u64 = status.roles.iter().map(|r| r.waiting).sum();
    let cell = |label: &'static str, n: u64| vec![format!(" {label} ").dim(), thousands(n).bold()];
    let mut spans = Vec::new();
    spans.extend(cell("nodes", status.nodes.len() as u64));
    spans.extend(cell("agents", sum(|n| n.agents)));
    spans.extend(cell("running", sum(|n| n.running)));
    spans.extend(cell("waiting", waiting));
    spans.extend(cell("unfinished", status.unfinished));
    spans.push(" stream leader ".dim());
    spans.push(match &status.leader {
        Some(leader) => Span::raw(leader.as_str()).bold(),
        None => "none".red().bold(),
    });
    Line::from(spans).render(area, buf);
}

fn render_nodes(latest: &Snapshot, area: Rect, buf: &mut Buffer) {
    let block = Block::bordered()
        .padding(Padding::horizontal(1))
        .title(" Nodes ");
    if latest.status.nodes.is_empty() {
        Paragraph::new(" no live node".dim())
            .block(block)
            .render(area, buf);
        return;
    }
    let header = Row::new([
        "node", "roles", "agents", "running", "ended", "fenced", "state", "beat",
    ])
    .style(Style::new().bold());
    let rows = latest.status.nodes.iter().map(|n| {
        let state = if n.draining {
            Cell::from("draining".yellow())
        } else if n.unhealthy > 0 {
            Cell::from(format!("{} unhealthy", thousands(n.unhealthy)).yellow())
        } else {
            Cell::from("taking work".green())
        };
        let beat = match latest.now_ms {
            Some(now) if n.at_ms > 0 => {
                format!("{:.1}s ago", now.saturating_sub(n.at_ms) as f64 / 1e3)
            }
            _ => "-".to_owned(),
        };
        Row::new(vec![
            Cell::from(n.name.clone()),
            Cell::from(n.roles.join(", ")),
            Cell::from(thousands(n.agents)),
            Cell::from(thousands(n.running)),
            Cell::from(thousands(n.ended)),
            Cell::from(thousands(n.fenced)),
            state,
            Cell::from(beat),
        ])
    });
    Table::new(
        rows,
        [
            Constraint::Fill(2),
            Constraint::Fill(2),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Length(13),
            Constraint::Length(9),
        ],
    )
    .header(header)
    .block(block)
    .render(area, buf);
}

impl ClusterView {
    /// Each role: its backlog now, and its agents over the samples kept as a sparkline.
    fn render_roles(&self, status: &Status, area: Rect, buf: &mut Buffer) {
        let block = Block::bordered()
            .padding(Padding::horizontal(1))
            .title(" Roles: agents over the server's last 15 minutes ");
        let inner = block.inner(area);
        block.render(area, buf);
        let mut names: Vec<&str> = status.roles.iter().map(|r| r.role.as_str()).collect();
        names.extend(self.tracks.keys().map(String::as_str));
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            Paragraph::new(" no role yet".dim()).render(inner, buf);
            return;
        }
        for (i, name) in names.iter().enumerate() {
            let y = inner.y + 2 * u16::try_from(i).unwrap_or(u16::MAX);
            if y >= inner.bottom() {
                break;
            }
            let backlog = status.roles.iter().find(|r| r.role == *name);
            let track = self.tracks.get(*name);
            let last =
                |c: Option<&VecDeque<Option<u64>>>| c.and_then(|c| c.back().copied().flatten());
            let count = count_or_dash;
            let line = Line::from(vec![
                Span::raw(*name).bold(),
                "  agents ".dim(),
                count(last(track.map(|t| &t.agents))).bold(),
                "  waiting ".dim(),
                count(backlog.map(|r| r.waiting)).bold(),
                "  running ".dim(),
                count(backlog.map(|r| r.running)).bold(),
            ]);
            line.render(
                Rect {
                    y,
                    height: 1,
                    ..inner
                },
                buf,
            );
            if let Some(track) = track
                && y + 1 < inner.bottom()
            {
                sparkline(&track.agents, usize::from(inner.width)).render(
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
}

/// Values squeezed into `width` columns: each the most of its stretch of samples.
fn sparkline(values: &VecDeque<Option<u64>>, width: usize) -> Sparkline<'static> {
    let data: Vec<Option<u64>> = squeeze(values.len(), width)
        .map(|stretch| stretch.filter_map(|i| values[i]).max())
        .collect();
    let top = data.iter().flatten().copied().max().unwrap_or(1).max(1);
    Sparkline::default()
        .data(data)
        .max(top)
        .style(Style::new().fg(Color::Blue))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A role's name, its agents and its tasks waiting, a column each.
    type Columns<'a> = (&'a str, &'a [Option<u64>], &'a [Option<u64>]);

    fn history(t: &[u64], roles: &[Columns<'_>]) -> RolesHistory {
        RolesHistory {
            until: t.last().copied().unwrap_or(0),
            t: t.to_vec(),
            roles: roles
                .iter()
                .map(|(role, agents, waiting)| RoleColumns {
                    role: (*role).into(),
                    agents: agents.to_vec(),
                    waiting: waiting.to_vec(),
                })
                .collect(),
        }
    }

    fn snapshot(history: RolesHistory) -> Snapshot {
        Snapshot {
            status: Status {
                nodes: vec![
                    Node {
                        name: "gpu-1".into(),
                        roles: vec!["gpu".into()],
                        agents: 4,
                        running: 3,
                        ended: 1_200,
                        at_ms: 9_000,
                        ..Node::default()
                    },
                    Node {
                        name: "cpu-1".into(),
                        roles: vec!["cpu".into()],
                        agents: 64,
                        running: 60,
                        ended: 50_000,
                        fenced: 2,
                        draining: true,
                        at_ms: 8_000,
                        ..Node::default()
                    },
                ],
                unfinished: 900,
                roles: vec![
                    Role {
                        role: "cpu".into(),
                        waiting: 800,
                        running: 60,
                    },
                    Role {
                        role: "gpu".into(),
                        waiting: 37,
                        running: 3,
                    },
                ],
                leader: Some("n2".into()),
                now_ms: None,
            },
            now_ms: Some(history.until),
            history: Some(history),
        }
    }

    #[test]
    fn samples_are_appended_in_order_and_roles_come_and_go() {
        let mut view = ClusterView::new("http://h", Duration::from_secs(1), false);
        let first = history(
            &[1, 2],
            &[("cpu", &[Some(8), Some(9)], &[Some(1), Some(0)])],
        );
        view.record(Duration::ZERO, Ok(snapshot(first)));
        assert_eq!(view.since(), Some(2));
        // A role first seen starts as gaps; a sample at or before the cursor is skipped.
        let next = history(
            &[2, 3],
            &[
                ("cpu", &[Some(99), Some(10)], &[Some(99), Some(2)]),
                ("gpu", &[Some(99), Some(4)], &[Some(99), Some(5)]),
            ],
        );
        view.record(Duration::from_secs(1), Ok(snapshot(next)));
        assert_eq!(view.since(), Some(3));
        let cpu = &view.tracks["cpu"];
        assert_eq!(cpu.agents, [Some(8), Some(9), Some(10)]);
        assert_eq!(cpu.waiting, [Some(1), Some(0), Some(2)]);
        assert_eq!(view.tracks["gpu"].agents, [None, None, Some(4)]);
        // A server behind the cursor (started again): what is kept goes, and the next poll
        // reads its history whole.
        let mut again = view.clone();
        again.record(Duration::from_secs(1), Ok(snapshot(history(&[2], &[]))));
        assert_eq!((again.since(), again.samples), (None, 0));
        assert!(again.tracks.is_empty());
        // A failed poll keeps what was seen, and says why.
        view.record(Duration::from_secs(2), Err("down".into()));
        assert_eq!(view.poll.error.as_deref(), Some("down"));
        assert!(view.latest.is_some());
        // Once the oldest samples go, a role in none of those kept goes too.
        let later: Vec<u64> = (4..4 + SAMPLES as u64).collect();
        let gpu_only: Vec<Option<u64>> = later.iter().map(|_| Some(4)).collect();
        view.record(
            Duration::from_secs(3),
            Ok(snapshot(history(&later, &[("gpu", &gpu_only, &gpu_only)]))),
        );
        assert_eq!(view.poll.error, None);
        assert_eq!(view.samples, SAMPLES);
        assert_eq!(view.tracks.keys().collect::<Vec<_>>(), ["gpu"]);
        assert_eq!(view.tracks["gpu"].agents.len(), SAMPLES);
    }

    #[test]
    fn a_failed_poll_says_so_and_that_it_is_retried_even_before_an_answer() {
        let mut view = ClusterView::new("http://h", Duration::from_secs(2), true);
        view.record(Duration::from_secs(1), Err("connection refused".into()));
        let frame = super::super::draw::text(&view, 100, 22);
        assert!(
            frame.contains("poll failed: connection refused; retrying every 2s"),
            "{frame}"
        );
        assert!(frame.contains("waiting for the first answer"), "{frame}");
        let h = history(&[1], &[("cpu", &[Some(1)], &[Some(0)])]);
        view.record(Duration::from_secs(3), Ok(snapshot(h)));
        view.tick(Duration::from_secs(7));
        let frame = super::super::draw::text(&view, 100, 22);
        assert!(
            frame.contains("polling every 2s; last answer 4s ago"),
            "{frame}"
        );
        assert!(!frame.contains("poll failed"), "{frame}");
    }

    #[test]
    fn a_frame_shows_the_nodes_and_the_roles() {
        let mut view = ClusterView::new("http://127.0.0.1:7070", Duration::from_secs(1), false);
        let h = history(
            &[9_000, 10_000],
            &[
                ("cpu", &[Some(60), Some(64)], &[Some(700), Some(800)]),
                ("gpu", &[Some(4), Some(4)], &[Some(30), Some(37)]),
            ],
        );
        view.record(Duration::from_secs(5), Ok(snapshot(h)));
        let frame = super::super::draw::text(&view, 100, 22);
        insta::assert_snapshot!(frame);
    }
}
