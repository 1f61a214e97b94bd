//! Opening a memory from its settings: a SQLite file or a ChromaDB server, spread over
//! several stores or not. What `colony memory`, `colony serve` and a workflow's `memory:`
//! share, so that one memory opens alike from each, and never with another number of
//! stores than it was made with.

use crate::{ChromaMemory, ChromaOptions, Error, Memory, Sharded, SqliteMemory};
use std::path::{Path, PathBuf};

/// Where a memory lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// A SQLite file; spread over N, the files `PATH.1-of-N` to `PATH.N-of-N`.
    File(PathBuf),
    /// A ChromaDB server; spread over N, the prefixes `PREFIX-1-of-N` to `PREFIX-N-of-N`.
    Chroma(ChromaOptions),
}

/// How to open a memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opening {
    pub place: Place,
    /// Stores it is spread over, 1 to [`crate::MAX_SHARDS`].
    pub shards: usize,
    /// Whether a file that is not there is made (a server's collections always are).
    pub create: bool,
    /// Whether large namespaces get an approximate index (a process that makes one search
    /// and ends is better without).
    pub approximate: bool,
}

fn setting(why: String) -> Error {
    Error::Setting(why)
}

impl ChromaOptions {
    /// The options a URL gives: `http://HOST:PORT` (or `https://`, or either after
    /// `chroma+`), with `?tenant=T&database=D&prefix=P&token-env=VAR` as needed; the token
    /// is read from that variable when it connects, not now.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        // A user and password are never echoed: everything before `@` is left out.
        let shown = match url.split_once('@') {
            Some((_, host)) => format!("http://…@{host}"),
            None => url.to_owned(),
        };
        let bad = |why: String| setting(format!("{shown}: {why}"));
        let parsed = reqwest::Url::parse(url.strip_prefix("chroma+").unwrap_or(url))
            .map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(bad("want http://HOST:PORT or https://HOST:PORT".into()));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad(
                "no user or password in the URL: a token goes in a variable named by token-env"
                    .into(),
            ));
        }
        if parsed.fragment().is_some() {
            return Err(bad("a URL with a #fragment".into()));
        }
        let mut base = parsed.clone();
        base.set_query(None);
        let mut options = ChromaOptions::new(base.as_str().trim_end_matches('/'));
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "tenant" => options.tenant = value.into_owned(),
                "database" => options.database = value.into_owned(),
                "prefix" => options.prefix = value.into_owned(),
                "token-env" => options.token_env = Some(value.into_owned()),
                other => {
                    return Err(bad(format!(
                        "unknown setting `{other}`: tenant, database, prefix or token-env"
                    )));
                }
            }
        }
        Ok(options)
    }
}

/// Opens the memory `opening` says.
pub fn open(opening: &Opening) -> Result<Box<dyn Memory>, Error> {
    let n = opening.shards;
    if n == 0 || n > crate::MAX_SHARDS {
        return Err(setting(format!(
            "{n} shards: allowed 1..={}",
            crate::MAX_SHARDS
        )));
    }
    match &opening.place {
        Place::Chroma(options) => {
            let longest = format!("{}-{n}-of-{n}", options.prefix);
            if n > 1 && longest.len() > 64 {
                return Err(setting(format!(
                    "chroma prefix {} is too long to be spread over {n} ({longest} passes 64 characters)",
                    options.prefix
                )));
            }
            let connect = |prefix: String| {
                let mut o = options.clone();
                o.prefix = prefix;
                ChromaMemory::connect(o)
            };
            let first = connect(options.prefix.clone())?;
            chroma_spread_over(&first, &options.prefix, n)?;
            if n == 1 {
                return Ok(Box::new(first));
            }
            let shards = (1..=n)
                .map(|i| {
                    Ok(Box::new(connect(format!("{}-{i}-of-{n}", options.prefix))?)
                        as Box<dyn Memory>)
                })
                .collect::<Result<Vec<_>, Error>>()?;
            Ok(Box::new(Sharded::new(shards)?))
        }
        Place::File(db) => {
            if db.file_name().is_none() {
                return Err(setting(format!(
                    "{}: a memory file needs a file name",
                    db.display()
                )));
            }
            spread_over(db, n)?;
            let file = |path: &Path| -> Result<Box<dyn Memory>, Error> {
                let store = open_file(path, opening.create)?;
                Ok(if opening.approximate {
                    Box::new(store)
                } else {
                    Box::new(store.with_approximate(None))
                })
            };
            if n == 1 {
                return file(db);
            }
            let shards = (1..=n)
                .map(|i| file(&shard_path(db, i, n)))
                .collect::<Result<Vec<_>, Error>>()?;
            Ok(Box::new(Sharded::new(shards)?))
        }
    }
}

/// The memory file at `path`: a new file becomes one when `create`; an existing file must
/// be a regular file and a memory, and is never changed otherwise.
pub fn open_file(path: &Path, create: bool) -> Result<SqliteMemory, Error> {
    let refuse = |e: Error| setting(format!("{}: {e}", path.display()));
    if !path.exists() {
        if !create {
            return Err(setting(format!("{}: no such memory file", path.display())));
        }
        // A path that cannot be a memory is the caller's to fix.
        return SqliteMemory::open(path).map_err(refuse);
    }
    // A device, a folder or a pipe is never opened as a database (SQLite would wait on a
    // pipe for a writer for ever).
    if !path.is_file() {
        return Err(setting(format!("{}: not a regular file", path.display())));
    }
    SqliteMemory::open_existing(path).map_err(refuse)
}

/// Shard `i` of `n` of the memory at `db`.
pub fn shard_path(db: &Path, i: usize, n: usize) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{i}-of-{n}"));
    db.with_file_name(name)
}

/// Refuses to open the memory at `db` as spread over `n` files when its files say another
/// number: its documents would be looked for in the wrong files.
fn spread_over(db: &Path, n: usize) -> Result<(), Error> {
    let Some(name) = db.file_name().and_then(|f| f.to_str()) else {
        return Ok(());
    };
    let dir = match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    let start = format!("{name}.");
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&start)) else {
            continue;
        };
        let Some((i, of)) = rest.split_once("-of-") else {
            continue;
        };
        if let (Ok(_), Ok(m)) = (i.parse::<usize>(), of.parse::<usize>())
            && m != n
        {
            return Err(setting(format!(
                "{} is spread over {m} files ({}), not {n}: give {m} shards",
                db.display(),
                shard_path(db, 1, m).display(),
            )));
        }
    }
    if n > 1 && db.is_file() {
        return Err(setting(format!(
            "{} is one file, not spread over {n}: give 1 shard",
            db.display()
        )));
    }
    Ok(())
}

/// Refuses to use the Chroma memory of `prefix` as spread over `n` stores when its
/// collections say another number, as [`spread_over`] does for files.
fn chroma_spread_over(chroma: &ChromaMemory, prefix: &str, n: usize) -> Result<(), Error> {
    let spread = format!("{prefix}-");
    let one = format!("{prefix}.");
    for name in chroma.collection_names()? {
        let counted = name
            .strip_prefix(&spread)
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(part, _)| part.split_once("-of-"))
            .and_then(|(i, m)| Some((i.parse::<usize>().ok()?, m.parse::<usize>().ok()?)));
        let m = match counted {
            Some((_, m)) => m,
            None if name.starts_with(&one) => 1,
            None => continue,
        };
        if m != n {
            return Err(setting(format!(
                "the Chroma memory of prefix {prefix} is spread over {m} (collection {name}), not {n}: give {m} shards"
            )));
        }
    }
    Ok(())
}
