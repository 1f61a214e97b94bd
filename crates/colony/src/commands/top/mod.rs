//! `colony top`: a running server, live in the terminal. It polls the read API
//! ([`api::Client`]), keeps what it learned in a [`view::View`], and draws that with a pure
//! function ([`draw`]); `--once`, or a stdout that is not a terminal, prints one frame as text.
//! The pools panel shows each pool's agents over the server's history
//! (`/v1/pools/history`: all of it on the first poll, then what is new), desired against
//! actual, and the newest decision on its size. Pointed at a cluster's control plane
//! (`colony serve --nats`), it shows the cluster instead ([`cluster`]): its nodes, and each
//! role's backlog and agents over time.
//!
//! ```text
//! colony top --server http://127.0.0.1:7070 --interval-ms 500
//! colony top --once | grep succeeded
//! ```

mod api;
mod cluster;
mod draw;
mod view;

use crate::Failure;
use anyhow::Context;
use ratatui::{
    DefaultTerminal,
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
};
use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};
use view::View;

/// Failed and dead-lettered tasks asked for on each poll.
const FAILURES: usize = 10;
/// How long one request may take before the poll counts as failed.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How often keys are looked for while waiting.
const KEYS_EVERY: Duration = Duration::from_millis(50);

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The base URL of a running `colony serve` (a runtime's), or of `colony serve --nats`
    /// (a cluster's: its nodes and roles are shown).
    #[arg(
        long,
        env = "COLONY_SERVER",
        default_value = "http://127.0.0.1:7070",
        value_name = "URL"
    )]
    server: String,
    /// Bearer token, for a server started with --tokens (the read scope is enough).
    #[arg(long, env = "COLONY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Milliseconds between polls.
    #[arg(
        long,
        default_value_t = 1_000,
        value_name = "MS",
        value_parser = clap::value_parser!(u64).range(100..=3_600_000)
    )]
    interval_ms: u64,
    /// Print one frame as plain text and exit; what happens anyway when stdout is not a
    /// terminal.
    #[arg(long)]
    once: bool,
}

pub(crate) fn run(args: &Args) -> Result<(), Failure> {
    let server = server_url(&args.server).map_err(Failure::input)?;
    let interval = Duration::from_millis(args.interval_ms);
    let token = args.token.clone().filter(|t| !t.trim().is_empty());
    let client = api::Client::new(&server, token, TIMEOUT)
        .context("cannot set up an HTTP client")
        .map_err(Failure::work)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::work)?;
    let live = !args.once && std::io::stdout().is_terminal();
    // The first poll decides whether there is anything to watch: a wrong URL or a missing
    // token ends here with one line, before the terminal is taken over. A cluster's server
    // (which has no runtime's counters) gets the cluster's view.
    let start = Instant::now();
    let first = runtime.block_on(async {
        match client.snapshot(FAILURES, None).await {
            Err(api::Error::Answer { .. }) if client.is_cluster().await => {
                client.cluster(None).await.map(Err)
            }
            other => other.map(Ok),
        }
    });
    match first.map_err(Failure::work)? {
        Ok(first) => {
            let mut view = View::new(&server, interval, live);
            view.record(Duration::ZERO, Ok(first));
            show(&runtime, live, view, start, |since| {
                client.snapshot(FAILURES, since)
            })
        }
        Err(first) => {
            let mut view = cluster::ClusterView::new(&server, interval, live);
            view.record(Duration::ZERO, Ok(first));
            show(&runtime, live, view, start, |since| client.cluster(since))
        }
    }
}

/// What `colony top` draws: a runtime's server, or a cluster's.
trait Screen {
    type Snapshot;
    fn interval(&self) -> Duration;
    fn tick(&mut self, now: Duration);
    fn record(&mut self, at: Duration, poll: Result<Self::Snapshot, String>);
    /// What the next poll asks the history for: what came after the last answer.
    fn since(&self) -> Option<u64>;
}

impl Screen for View {
    type Snapshot = api::Snapshot;
    fn interval(&self) -> Duration {
        self.poll.interval
    }
    fn tick(&mut self, now: Duration) {
        View::tick(self, now);
    }
    fn record(&mut self, at: Duration, poll: Result<api::Snapshot, String>) {
        View::record(self, at, poll);
    }
    fn since(&self) -> Option<u64> {
        self.pools_since()
    }
}

impl Screen for cluster::ClusterView {
    type Snapshot = cluster::Snapshot;
    fn interval(&self) -> Duration {
        self.poll.interval
    }
    fn tick(&mut self, now: Duration) {
        cluster::ClusterView::tick(self, now);
    }
    fn record(&mut self, at: Duration, poll: Result<cluster::Snapshot, String>) {
        cluster::ClusterView::record(self, at, poll);
    }
    fn since(&self) -> Option<u64> {
        cluster::ClusterView::since(self)
    }
}

/// Prints one frame of `view` (not `live`), or takes over the terminal and watches, polling
/// with `ask`.
fn show<S, F, Fut>(
    runtime: &tokio::runtime::Runtime,
    live: bool,
    mut view: S,
    start: Instant,
    ask: F,
) -> Result<(), Failure>
where
    S: Screen,
    for<'a> &'a S: ratatui::widgets::Widget,
    F: Fn(Option<u64>) -> Fut,
    Fut: std::future::Future<Output = Result<S::Snapshot, api::Error>>,
{
    if !live {
        return print(&draw::text(&view, draw::TEXT_WIDTH, draw::TEXT_HEIGHT));
    }
    // `init` also restores the terminal on a panic; `restore` below covers every other exit.
    let mut terminal = ratatui::init();
    let watched = runtime.block_on(watch(&mut terminal, &mut view, start, ask));
    ratatui::restore();
    watched
        .context("the terminal failed")
        .map_err(Failure::work)
}

/// Writes a frame to stdout; a reader that stopped early (`| head`) is no failure.
fn print(frame: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(frame.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::work(e)),
        _ => Ok(()),
    }
}

/// The server's base URL, checked: http or https, a host, nothing after the path.
fn server_url(server: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(server)
        .with_context(|| format!("--server {server:?} is not a URL: expected http://HOST:PORT"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        anyhow::bail!("--server {server:?} is not an http:// or https:// URL with a host");
    }
    if url.query().is_some() || url.fragment().is_some() {
        anyhow::bail!("--server {server:?} has a query or fragment: give the base URL only");
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// What ended a wait.
enum Wake<T> {
    /// A poll's answer; boxed, as a snapshot is large and the other wakes are small.
    Polled(Instant, Box<Result<T, api::Error>>),
    Input(Input),
    Tick,
}

#[derive(Debug, PartialEq, Eq)]
enum Input {
    Quit,
    Redraw,
}

/// The TUI's loop: draw, then wait for the next poll, a key, or the clock's next second.
async fn watch<S, F, Fut>(
    terminal: &mut DefaultTerminal,
    view: &mut S,
    start: Instant,
    ask: F,
) -> std::io::Result<()>
where
    S: Screen,
    for<'a> &'a S: ratatui::widgets::Widget,
    F: Fn(Option<u64>) -> Fut,
    Fut: std::future::Future<Output = Result<S::Snapshot, api::Error>>,
{
    let interval = view.interval();
    // Polls at `at` (at once if that is past), asking for the history after `since`;
    // answers when the poll was asked for.
    let poll_at = |at: Instant, since: Option<u64>| {
        let asking = ask(since);
        async move {
            tokio::time::sleep_until(at.into()).await;
            (Instant::now(), asking.await)
        }
    };
    let mut poll = Box::pin(poll_at(start + interval, view.since()));
    let mut clock = tokio::time::interval(Duration::from_secs(1));
    loop {
        view.tick(start.elapsed());
        terminal.draw(|frame| frame.render_widget(&*view, frame.area()))?;
        let wake = tokio::select! {
            (at, result) = &mut poll => Wake::Polled(at, Box::new(result)),
            input = next_input() => Wake::Input(input?),
            _ = clock.tick() => Wake::Tick,
        };
        match wake {
            Wake::Polled(at, result) => {
                view.record(at - start, (*result).map_err(|e| e.to_string()));
                poll = Box::pin(poll_at(at + interval, view.since()));
            }
            Wake::Input(Input::Quit) => return Ok(()),
            Wake::Input(Input::Redraw) | Wake::Tick => {}
        }
    }
}

/// The next key or resize that matters. Crossterm's reads block, so this looks without
/// waiting and sleeps between looks.
async fn next_input() -> std::io::Result<Input> {
    loop {
        while event::poll(Duration::ZERO)? {
            if let Some(input) = input(&event::read()?) {
                return Ok(input);
            }
        }
        tokio::time::sleep(KEYS_EVERY).await;
    }
}

fn input(event: &Event) -> Option<Input> {
    if let Event::Resize(..) = event {
        return Some(Input::Redraw);
    }
    let key = event.as_key_press_event()?;
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc => Some(Input::Quit),
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Some(Input::Quit),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::crossterm::event::{KeyEvent, KeyEventKind, KeyEventState};

    fn key(code: KeyCode, modifiers: KeyModifiers, kind: KeyEventKind) -> Event {
        Event::Key(KeyEvent {
            code,
            modifiers,
            kind,
            state: KeyEventState::NONE,
        })
    }

    #[test]
    fn q_esc_and_ctrl_c_quit() {
        let press = KeyEventKind::Press;
        let none = KeyModifiers::NONE;
        assert_eq!(
            input(&key(KeyCode::Char('q'), none, press)),
            Some(Input::Quit)
        );
        assert_eq!(input(&key(KeyCode::Esc, none, press)), Some(Input::Quit));
        assert_eq!(
            input(&key(KeyCode::Char('c'), KeyModifiers::CONTROL, press)),
            Some(Input::Quit)
        );
        assert_eq!(input(&key(KeyCode::Char('c'), none, press)), None);
        assert_eq!(
            input(&key(KeyCode::Char('q'), none, KeyEventKind::Release)),
            None
        );
        assert_eq!(input(&Event::Resize(80, 24)), Some(Input::Redraw));
    }

    #[test]
    fn server_urls_are_checked() {
        assert_eq!(
            server_url("http://127.0.0.1:7070/").unwrap(),
            "http://127.0.0.1:7070"
        );
        assert_eq!(
            server_url("https://colony.example/base/").unwrap(),
            "https://colony.example/base"
        );
        for bad in ["127.0.0.1:7070", "ftp://h", "http://h/?x=1", "nonsense"] {
            assert!(server_url(bad).is_err(), "{bad}");
        }
    }
}
