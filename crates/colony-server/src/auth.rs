//! Who may do what: bearer tokens with scopes, stored hashed, compared in constant time; and
//! how many requests a caller may make per second.
//!
//! A token is `colony_` and 64 hex digits from the operating system's random source. The
//! tokens file keeps one line per token, `NAME SCOPE sha256:HEX`, never the token itself:
//! a copy of the file lets nobody in. Scopes nest: `admin` may do what `submit` may, which may
//! do what `read` may.
//!
//! A browser cannot put a bearer token on the requests of a page, so the dashboard's login
//! form puts it in an HTTP-only, same-site cookie instead. A cookie is worth `read` at most,
//! whatever its token's scope: a page can be made to send cookies, and nothing sent that way
//! may change state.

use crate::{App, problem};
use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use std::{
    fmt,
    io::Write,
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
};
use subtle::ConstantTimeEq;

/// What a token allows. Ordered: each scope includes those before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Read tasks, agents, counters, events and metrics.
    Read,
    /// Also submit and cancel tasks.
    Submit,
    /// Also kill agents and resize pools.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Scope::Read),
            "submit" => Ok(Scope::Submit),
            "admin" => Ok(Scope::Admin),
            _ => Err(format!("scope {s:?} is not one of read, submit, admin")),
        }
    }
}

/// A problem with a tokens file, naming the file and the line.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read tokens file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not a regular file, over [`Tokens::MAX_FILE`], not text, or not readable.
    // Its message names the file and the problem; not a `source` too, or it would be said
    // twice where errors are shown with their causes.
    #[error("tokens file: {0}")]
    File(colony_workflow::ReadError),
    #[error("cannot write tokens file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {problem}")]
    Line {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("{path} is writable by others (mode {mode:o}), who could add tokens: chmod go-w it")]
    Writable { path: PathBuf, mode: u32 },
    #[error("{path} has no tokens: every request would be refused")]
    Empty { path: PathBuf },
    #[error("a token named {name:?} is already in {path}")]
    Duplicate { name: String, path: PathBuf },
    #[error("token name {0:?} is not allowed: use 1 to 64 letters, digits, '-', '_' or '.'")]
    Name(String),
}

#[derive(Clone)]
struct Entry {
    name: Arc<str>,
    scope: Scope,
    hash: [u8; 32],
}

/// The tokens a server accepts.
#[derive(Clone)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|e| &*e.name).collect();
        f.debug_struct("Tokens").field("names", &names).finish()
    }
}

/// Who a request comes from: a token's name and scope.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: Arc<str>,
    pub scope: Scope,
}

impl Tokens {
    /// Largest tokens file read: 10,000 tokens' lines and room for comments.
    pub const MAX_FILE: u64 = 1 << 20;

    /// Reads a tokens file: a regular file of at most [`Tokens::MAX_FILE`] bytes.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text =
            colony_workflow::read_bounded(path, Self::MAX_FILE).map_err(TokensError::File)?;
        // Whoever may write the file may add an admin token.
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode();
            if mode & 0o022 != 0 {
                return Err(TokensError::Writable {
                    path: path.to_owned(),
                    mode: mode & 0o777,
                });
            }
        }
        let tokens = Self::parse(&text, path)?;
        if tokens.entries.is_empty() {
            return Err(TokensError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(tokens)
    }

    /// Refuses what is not a regular file of at most [`Tokens::MAX_FILE`] bytes.
    fn regular(path: &Path, meta: &std::fs::Metadata) -> Result<(), TokensError> {
        use colony_workflow::ReadError;
        if !meta.is_file() {
            let what = if meta.is_dir() {
                "a directory"
            } else {
                "a device, FIFO or socket"
            };
            return Err(TokensError::File(ReadError::NotRegular {
                path: path.to_owned(),
                what,
            }));
        }
        if meta.len() > Self::MAX_FILE {
            return Err(TokensError::File(ReadError::TooLarge {
                path: path.to_owned(),
                size: meta.len(),
                limit: Self::MAX_FILE,
            }));
        }
        Ok(())
    }

    fn parse(text: &str, path: &Path) -> Result<Self, TokensError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |problem: String| TokensError::Line {
                path: path.to_owned(),
                line: i + 1,
                problem,
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, scope, hash] = fields[..] else {
                return Err(bad(format!(
                    "expected `NAME SCOPE sha256:HEX`, found {} fields",
                    fields.len()
                )));
            };
            check_name(name).map_err(|e| bad(e.to_string()))?;
            let scope = scope.parse::<Scope>().map_err(bad)?;
            let hash = hash
                .strip_prefix("sha256:")
                .and_then(unhex)
                .ok_or_else(|| bad("the hash is not `sha256:` and 64 hex digits".into()))?;
            if entries.iter().any(|e| &*e.name == name) {
                return Err(bad(format!("a token named {name:?} comes earlier")));
            }
            entries.push(Entry {
                name: name.into(),
                scope,
                hash,
            });
        }
        Ok(Self { entries })
    }

    /// Makes a new token, appends its hash to the tokens file (created, readable by its
    /// owner only, if missing) and returns the token: the only time it is ever shown.
    pub fn create(path: &Path, name: &str, scope: Scope) -> Result<String, TokensError> {
        check_name(name)?;
        let write = |source| TokensError::Write {
            path: path.to_owned(),
            source,
        };
        // Checked before opening (a FIFO or a device is no tokens file), and again on what
        // was opened, in case the path changed in between.
        if let Ok(meta) = std::fs::metadata(path) {
            Self::regular(path, &meta)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).read(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(write)?;
        Self::regular(path, &file.metadata().map_err(write)?)?;
        // Two creates at once must not both find a name free: one waits for the other.
        file.lock().map_err(write)?;
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(&mut file, Self::MAX_FILE + 1),
            &mut text,
        )
        .map_err(|source| TokensError::Read {
            path: path.to_owned(),
            source,
        })?;
        if text.len() as u64 > Self::MAX_FILE {
            return Err(TokensError::File(colony_workflow::ReadError::TooLarge {
                path: path.to_owned(),
                size: text.len() as u64,
                limit: Self::MAX_FILE,
            }));
        }
        let existing = Self::parse(&text, path)?;
        if existing.entries.iter().any(|e| &*e.name == name) {
            return Err(TokensError::Duplicate {
                name: name.to_owned(),
                path: path.to_owned(),
            });
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| {
            write(std::io::Error::other(format!(
                "no randomness from the system: {e}"
            )))
        })?;
        let token = format!("colony_{}", hex(&secret));
        // A file edited by hand may end without a newline: the new line starts on its own.
        let start = if text.is_empty() || text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        let line = format!("{start}{name} {scope} sha256:{}\n", hex(&hash(&token)));
        file.write_all(line.as_bytes()).map_err(write)?;
        file.sync_all().map_err(write)?;
        Ok(token)
    }

    /// The caller a token belongs to. Every stored hash is compared, each in constant time,
    /// so the time taken says nothing of which, if any, matched.
    pub fn verify(&self, token: &str) -> Option<Caller> {
        let presented = hash(token);
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.hash.ct_eq(&presented)) {
                found = Some(Caller {
                    name: entry.name.clone(),
                    scope: entry.scope,
                });
            }
        }
        found
    }
}

fn check_name(name: &str) -> Result<(), TokensError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(TokensError::Name(name.to_owned()))
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The cookie the dashboard's login sets.
pub(crate) const COOKIE: &str = "colony_token";

/// The token a request carries: its bearer token, or else its cookie (worth `read` at most).
fn presented(headers: &HeaderMap) -> Option<(&str, bool)> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?;
        return Some((token.trim(), false));
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .map(|token| (token, true))
}

/// Who the rate limit counts a request against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Client {
    Token(Arc<str>),
    Address(IpAddr),
}

/// Requests per second per client (token, or address when there is no auth); when it was
/// made, and the second of its last sweep of forgotten clients.
pub(crate) struct Limiter(
    governor::DefaultKeyedRateLimiter<Client>,
    governor::clock::DefaultClock,
    std::time::Instant,
    std::sync::atomic::AtomicU64,
);

impl Limiter {
    /// Clients remembered at most (see [`limited`]).
    const CLIENTS: usize = 100_000;

    pub(crate) fn new(per_second: NonZeroU32) -> Self {
        Self(
            governor::RateLimiter::keyed(governor::Quota::per_second(per_second)),
            governor::clock::DefaultClock::default(),
            std::time::Instant::now(),
            std::sync::atomic::AtomicU64::new(0),
        )
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Limiter")
    }
}

/// Unknown tokens an address may present in a row before it is refused (see [`Failures`]).
pub const FAILED_AUTH_BURST: usize = 10;
/// How many of an address's failures are forgotten each second.
pub const FAILED_AUTH_PER_SECOND: u32 = 1;

/// Failed authentications per address, limited whatever `--rate-limit` says: an address
/// that presented [`FAILED_AUTH_BURST`] unknown tokens in a row has its unknown tokens
/// refused with 429 until its failures drain at [`FAILED_AUTH_PER_SECOND`]. Known tokens
/// still pass (see [`verify`]), so that junk from one client does not lock out the others
/// behind the same address. Guessing a token (256 random bits) is hopeless anyway; this keeps
/// the attempts from costing the server.
///
/// IPv6 addresses count per /64, the block one host usually holds, so that one host cannot
/// make itself a fresh address per guess.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    buckets: std::sync::Mutex<std::collections::HashMap<IpAddr, Bucket>>,
    /// Addresses tracked: the lookup on every authenticated request is skipped while 0.
    tracked: std::sync::atomic::AtomicUsize,
    /// When a full table was last swept.
    last_sweep: std::sync::Mutex<Option<std::time::Instant>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures not yet drained, as of `at`.
    level: f64,
    at: std::time::Instant,
}

impl Bucket {
    fn now(self, now: std::time::Instant) -> f64 {
        (self.level - now.duration_since(self.at).as_secs_f64() * Failures::PER_SECOND).max(0.0)
    }
}

impl Failures {
    const BURST: f64 = FAILED_AUTH_BURST as f64;
    const PER_SECOND: f64 = FAILED_AUTH_PER_SECOND as f64;
    /// Addresses remembered at most; past it, those whose failures have drained are
    /// forgotten, and new ones are not tracked until there is room.
    const ADDRESSES: usize = 100_000;

    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mask = !0u128 << 64;
                    IpAddr::V6((u128::from(v6) & mask).into())
                }
            },
            v4 => v4,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<IpAddr, Bucket>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `ip` must wait before it may present a token again; `None` if it may now.
    pub(crate) fn locked(&self, ip: IpAddr) -> Option<std::time::Duration> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.tracked.load(Relaxed) == 0 {
            return None;
        }
        let bucket = *self.lock().get(&Self::key(ip))?;
        let level = bucket.now(std::time::Instant::now());
        (level + 1.0 > Self::BURST).then(|| {
            std::time::Duration::from_secs_f64((level + 1.0 - Self::BURST) / Self::PER_SECOND)
        })
    }

    /// Whether a sweep of a full table is due (at most one a second); if so, it is noted.
    fn swept(&self, now: std::time::Instant) -> bool {
        let mut last = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|at| now.duration_since(at) >= std::time::Duration::from_secs(1));
        if due {
            *last = Some(now);
        }
        due
    }

    /// `ip` presented a token this server does not know.
    pub(crate) fn failed(&self, ip: IpAddr) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = std::time::Instant::now();
        let mut buckets = self.lock();
        // A full table is swept at most once a second: a flood of new addresses must not
        // make every failure a walk over all of them.
        if buckets.len() >= Self::ADDRESSES && self.swept(now) {
            buckets.retain(|_, b| b.now(now) > 0.0);
        }
        let key = Self::key(ip);
        if buckets.len() < Self::ADDRESSES || buckets.contains_key(&key) {
            let bucket = buckets.entry(key).or_insert(Bucket {
                level: 0.0,
                at: now,
            });
            *bucket = Bucket {
                level: bucket.now(now) + 1.0,
                at: now,
            };
        }
        self.tracked.store(buckets.len(), Relaxed);
    }
}

/// The refusal of an address over its budget of failed authentications.
fn too_many_failures(wait: std::time::Duration) -> Response {
    let mut response = problem(
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-failures",
        format!(
            "too many unknown tokens from this address; try again in {}s",
            wait.as_secs() + 1
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, (wait.as_secs() + 1).into());
    response
}

/// Who a request came from, as the connection says.
fn address(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

/// The caller `token` belongs to, counting an unknown one against `address`; the 429 if the
/// token is unknown and the address is over its budget of failures.
///
/// A known token always passes, even from an address over its budget: the budget slows
/// guessing (hopeless anyway against 256-bit tokens), and checking it first would let anyone
/// behind the same address (a TLS proxy in front, a NAT, a shared /64) lock every user out
/// with ten junk tokens a second.
#[allow(clippy::result_large_err)]
pub(crate) fn verify(
    app: &Gate,
    tokens: &Tokens,
    address: IpAddr,
    token: &str,
) -> Result<Option<Caller>, Response> {
    let caller = tokens.verify(token);
    if caller.is_none() {
        if let Some(wait) = app.failures.locked(address) {
            return Err(too_many_failures(wait));
        }
        app.failures.failed(address);
    }
    Ok(caller)
}

/// Who may call a server and how often: what the middleware in front of its routes needs.
/// Cheap to clone; every server (the runtime's, the cluster's) has one.
#[derive(Clone, Debug)]
pub(crate) struct Gate(Arc<Guarded>);

#[derive(Debug)]
pub(crate) struct Guarded {
    pub(crate) tokens: Option<Tokens>,
    pub(crate) limiter: Option<Limiter>,
    /// Unknown tokens per address, limited whatever `limiter` says.
    pub(crate) failures: Failures,
    pub(crate) tls: bool,
}

impl Gate {
    pub(crate) fn new(
        tokens: Option<Tokens>,
        rate_limit: Option<std::num::NonZeroU32>,
        tls: bool,
    ) -> Self {
        Self(Arc::new(Guarded {
            tokens,
            limiter: rate_limit.map(Limiter::new),
            failures: Failures::default(),
            tls,
        }))
    }
}

impl std::ops::Deref for Gate {
    type Target = Guarded;
    fn deref(&self) -> &Guarded {
        &self.0
    }
}

impl axum::extract::FromRef<Arc<App>> for Gate {
    fn from_ref(app: &Arc<App>) -> Gate {
        app.gate.clone()
    }
}

/// The middleware in front of every route, before any scope is asked for: what a browser
/// could be made to send from another site is refused.
///
/// - Without tokens the server trusts anything that reaches it on loopback, so it answers
///   only requests addressed to a loopback name: a page whose own name was rebound to
///   127.0.0.1 (DNS rebinding) sends its own name as `Host`, and is refused.
/// - A request that changes state and that the browser says comes from another site
///   (`Sec-Fetch-Site`, or an `Origin` other than the server) is refused, with or without
///   tokens: a page cannot make a logged-in browser act for it.
pub(crate) async fn guard(State(app): State<Gate>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if app.tokens.is_none()
        && let Some(host) = host
        && !is_loopback_name(host)
    {
        return problem(
            StatusCode::MISDIRECTED_REQUEST,
            "not-loopback-host",
            format!(
                "this server has no tokens and answers only requests to localhost, 127.0.0.1 or [::1], not {host:?}"
            ),
        );
    }
    let method = request.method();
    let safe = method == axum::http::Method::GET
        || method == axum::http::Method::HEAD
        || method == axum::http::Method::OPTIONS;
    if !safe {
        let site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        // `null` says nothing: the dashboard's own forms send it, under its no-referrer
        // policy. `Sec-Fetch-Site`, which every current browser sends, tells those apart.
        let foreign_origin = match (origin, host) {
            (Some("null"), _) => site != "same-origin",
            (Some(origin), Some(host)) => origin
                .split_once("://")
                .is_none_or(|(_, authority)| !authority.eq_ignore_ascii_case(host)),
            _ => false,
        };
        if !matches!(site, "same-origin" | "none") || foreign_origin {
            return problem(
                StatusCode::FORBIDDEN,
                "cross-site",
                "a request that changes state may not come from another site's page",
            );
        }
    }
    next.run(request).await
}

/// Whether `host` (a `Host` header: a name or address, perhaps with a port) names this
/// machine's loopback interface.
fn is_loopback_name(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:7070`.
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The middleware in front of every route that needs `scope`: authenticates, authorizes,
/// then counts the request against its client's rate.
pub(crate) async fn require(
    scope: Scope,
    State(app): State<Gate>,
    mut request: Request,
    next: Next,
) -> Response {
    let address = address(&request);
    let caller = match &app.tokens {
        None => None,
        Some(tokens) => {
            // Refusals count against the address's rate, so that guessing costs time too.
            let refuse = |message: &str| {
                limited(&app, &Client::Address(address)).unwrap_or_else(|| unauthorized(message))
            };
            let Some((token, cookie)) = presented(request.headers()) else {
                return refuse("this route needs a bearer token: Authorization: Bearer colony_...");
            };
            let mut caller = match verify(&app, tokens, address, token) {
                Ok(Some(caller)) => caller,
                Ok(None) => return refuse("the token is not one this server knows"),
                Err(locked) => return locked,
            };
            if cookie {
                caller.scope = caller.scope.min(Scope::Read);
            }
            if caller.scope < scope {
                return problem(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "token {:?} has scope {}{}; this route needs {scope}",
                        caller.name,
                        caller.scope,
                        if cookie { " (from a cookie)" } else { "" }
                    ),
                );
            }
            Some(caller)
        }
    };
    let client = match &caller {
        Some(c) => Client::Token(c.name.clone()),
        None => Client::Address(address),
    };
    if let Some(response) = limited(&app, &client) {
        return response;
    }
    if let Some(caller) = caller {
        request.extensions_mut().insert(caller);
    }
    next.run(request).await
}

/// The 429 for a client over its rate, if the server has a rate and the client is over it.
fn limited(app: &Gate, client: &Client) -> Option<Response> {
    use governor::clock::Clock;
    let limiter = app.limiter.as_ref()?;
    let client = match client {
        Client::Address(ip) => &Client::Address(Failures::key(*ip)),
        token => token,
    };
    let checked = limiter.0.check_key(client);
    // Clients are remembered until their budget refills: forgotten past a bound, so that
    // many addresses cannot grow the table without end.
    // Looked at once a second, not per request: counting the clients locks every shard of
    // the table, and a sweep walks every client.
    let second = limiter.2.elapsed().as_secs() + 1;
    if limiter.3.swap(second, std::sync::atomic::Ordering::Relaxed) != second
        && limiter.0.len() > Limiter::CLIENTS
    {
        limiter.0.retain_recent();
        limiter.0.shrink_to_fit();
    }
    let not_until = checked.err()?;
    let wait = not_until.wait_time_from(limiter.1.now());
    let mut response = problem(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        format!("over this server's request rate; try again in {wait:?}"),
    );
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, secs.max(1).into());
    Some(response)
}

fn unauthorized(message: &str) -> Response {
    let mut response = problem(StatusCode::UNAUTHORIZED, "unauthorized", message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// The dashboard's login form: `token=colony_...`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Login {
    token: String,
}

/// `POST /login`: checks the token and sets it as the dashboard's cookie. Every attempt
/// counts against the address's rate (`--rate-limit`), and unknown tokens against its budget
/// of failures, as on every other route.
pub(crate) async fn login(
    State(app): State<Gate>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    form: Result<axum::Form<Login>, axum::extract::rejection::FormRejection>,
) -> Response {
    if let Some(response) = limited(&app, &Client::Address(peer.ip())) {
        return response;
    }
    let Ok(axum::Form(login)) = form else {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad-body",
            "expected a form with one field, token",
        );
    };
    let Some(tokens) = &app.tokens else {
        return axum::response::Redirect::to("/").into_response();
    };
    let token = login.token.trim();
    let caller = match verify(&app, tokens, peer.ip(), token) {
        Ok(Some(caller)) => caller,
        Ok(None) => return unauthorized("the token is not one this server knows"),
        Err(locked) => return locked,
    };
    // The cookie holds the token: whoever reads it has the token, whatever a cookie is worth
    // here. Only a token worth no more than a cookie may go in one.
    if caller.scope > Scope::Read {
        return problem(
            StatusCode::FORBIDDEN,
            "not-a-read-token",
            format!(
                "token {:?} has scope {}: sign in to the dashboard with a read token (colony token create --scope read)",
                caller.name, caller.scope
            ),
        );
    }
    let secure = if app.tls { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{secure}");
    let mut response = axum::response::Redirect::to("/").into_response();
    match header::HeaderValue::from_str(&cookie) {
        Ok(value) => {
            response.headers_mut().insert(header::SET_COOKIE, value);
            response
        }
        Err(_) => problem(
            StatusCode::BAD_REQUEST,
            "bad-token",
            "the token holds characters no token has",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_token_verifies_with_its_scope_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let ci = Tokens::create(&path, "ci", Scope::Submit).unwrap();
        let ops = Tokens::create(&path, "ops", Scope::Admin).unwrap();
        assert!(ci.starts_with("colony_") && ci.len() == 7 + 64);
        assert_ne!(ci, ops);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&ci[7..]), "the file holds hashes only");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let tokens = Tokens::load(&path).unwrap();
        let caller = tokens.verify(&ci).unwrap();
        assert_eq!((&*caller.name, caller.scope), ("ci", Scope::Submit));
        assert_eq!(tokens.verify(&ops).unwrap().scope, Scope::Admin);
        assert!(tokens.verify("colony_0000").is_none());
        assert!(tokens.verify(&ci[..ci.len() - 1]).is_none());
        assert!(matches!(
            Tokens::create(&path, "ci", Scope::Read),
            Err(TokensError::Duplicate { .. })
        ));
        assert!(matches!(
            Tokens::create(&path, "a b", Scope::Read),
            Err(TokensError::Name(_))
        ));
    }

    #[test]
    fn a_bad_tokens_file_is_refused_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let good = format!("ci read sha256:{}", "ab".repeat(32));
        for (text, needle) in [
            (format!("# comment\n\n{good}\nops admin\n"), ":4: expected"),
            ("ci owner sha256:00\n".to_owned(), ":1: scope \"owner\""),
            ("ci read md5:00\n".to_owned(), ":1: the hash"),
            (format!("{good}\n{good}\n"), ":2: a token named \"ci\""),
            ("# nothing\n".to_owned(), "has no tokens"),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = Tokens::load(&path).unwrap_err().to_string();
            assert!(error.contains(needle), "{error}");
        }
        assert!(Tokens::load(&dir.path().join("missing")).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_tokens_file_that_is_no_regular_file_or_too_large_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success(), "mkfifo");
        for (path, needle) in [
            (Path::new("/dev/zero"), "not a regular file"),
            (dir.path(), "not a regular file"),
            (fifo.as_path(), "not a regular file"),
        ] {
            // A FIFO with no writer would block a plain read for ever; /dev/zero never ends.
            let error = Tokens::load(path).unwrap_err().to_string();
            assert!(error.contains(needle), "{}: {error}", path.display());
            assert!(error.contains(&path.display().to_string()), "{error}");
        }
        let big = dir.path().join("big");
        let line = format!("# {}\n", "x".repeat(1000));
        std::fs::write(&big, line.repeat(Tokens::MAX_FILE as usize / 1000)).unwrap();
        let error = Tokens::load(&big).unwrap_err().to_string();
        assert!(
            error.contains("more than the limit of 1048576 bytes"),
            "{error}"
        );
        // `colony token create` reads the file too, before it appends: bounded alike.
        for path in [
            Path::new("/dev/zero"),
            dir.path(),
            fifo.as_path(),
            big.as_path(),
        ] {
            let error = Tokens::create(path, "ci", Scope::Read)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("not a regular file") || error.contains("more than the limit"),
                "{}: {error}",
                path.display()
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_may_write_is_refused_and_a_hand_edit_is_kept_apart() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        // Edited by hand, without a final newline.
        std::fs::write(&path, format!("ci read sha256:{}", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let token = Tokens::create(&path, "ops", Scope::Admin).unwrap();
        let tokens = Tokens::load(&path).unwrap();
        assert_eq!(tokens.verify(&token).unwrap().scope, Scope::Admin);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let error = Tokens::load(&path).unwrap_err().to_string();
        assert!(error.contains("writable by others (mode 666)"), "{error}");
    }

    #[test]
    fn failures_lock_out_an_address_and_its_ipv6_block_only() {
        let failures = Failures::default();
        let host: IpAddr = "2001:db8:1:2::10".parse().unwrap();
        let neighbour: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:1:3::10".parse().unwrap();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..FAILED_AUTH_BURST {
            assert_eq!(failures.locked(host), None);
            failures.failed(host);
        }
        assert!(failures.locked(host).is_some());
        assert!(failures.locked(neighbour).is_some(), "the same /64");
        assert_eq!(failures.locked(elsewhere), None);
        assert_eq!(failures.locked(v4), None);
        for _ in 0..FAILED_AUTH_BURST {
            failures.failed("::ffff:192.0.2.7".parse().unwrap());
        }
        assert!(
            failures.locked(v4).is_some(),
            "a v4-mapped address is its v4 address"
        );
    }

    #[test]
    fn a_request_presents_its_bearer_token_or_else_its_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented(&headers), None);
        headers.insert(
            header::COOKIE,
            "a=1; colony_token=colony_c".parse().unwrap(),
        );
        assert_eq!(presented(&headers), Some(("colony_c", true)));
        headers.insert(header::AUTHORIZATION, "Bearer colony_b".parse().unwrap());
        assert_eq!(presented(&headers), Some(("colony_b", false)));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(presented(&headers), None);
    }
}
