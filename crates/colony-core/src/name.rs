//! Names that reach file paths, and paths joined under a root.
//!
//! A task's name becomes a result file, a log file and a worktree folder; a workflow's name
//! becomes its output folder. Such a name is a [`Name`], which exists only once checked: ASCII
//! letters, digits, `-` and `_`, at most [`Name::MAX_LEN`] bytes, so that it is one path
//! component on every file system and leaves room for a suffix under the 255-byte limit of a
//! file name. A path that comes from outside (a filled-in template, a file's setting) is put
//! under its root by [`join_under`], which refuses anything that would leave it.
//!
//! ```
//! use colony_core::name::{join_under, Name};
//! use std::path::Path;
//!
//! assert!(Name::parse("fix-bug_2").is_ok());
//! assert!(Name::parse("../../etc").is_err());
//! assert_eq!(
//!     join_under(Path::new("/out"), "a/./b").unwrap(),
//!     Path::new("/out/a/b")
//! );
//! assert!(join_under(Path::new("/out"), "a/../../x").is_err());
//! ```

use std::{
    fmt,
    path::{Component, Path, PathBuf},
};

/// A checked name: one safe path component (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

/// Why a name was refused; the message names the value and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the name is empty")]
    Empty,
    #[error("`{shown}` is {len} bytes long: a name may have at most {max}", max = Name::MAX_LEN)]
    TooLong { shown: String, len: usize },
    #[error("`{shown}` is not allowed: use letters, digits, `-` and `_`")]
    Forbidden { shown: String },
    #[error("`{path}` is an absolute path: it must be relative to {root}")]
    Absolute { path: String, root: String },
    #[error("`{path}` leaves {root}: `..` may not go above it")]
    Escapes { path: String, root: String },
}

impl Name {
    /// Longest name, in bytes: a name plus `.<attempt>.stderr` stays a legal file name.
    pub const MAX_LEN: usize = 128;

    /// Checks `name` against the rule: letters, digits, `-`, `_`; 1 to 128 bytes.
    pub fn parse(name: &str) -> Result<Self, Error> {
        if name.is_empty() {
            return Err(Error::Empty);
        }
        if name.len() > Self::MAX_LEN {
            return Err(Error::TooLong {
                shown: shorten(name),
                len: name.len(),
            });
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return Err(Error::Forbidden {
                shown: shorten(name),
            });
        }
        Ok(Self(name.to_owned()))
    }

    /// The name of a task known only by its runtime id: always valid.
    pub fn of_id(id: u64) -> Self {
        Self(id.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<Path> for Name {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

/// `root` joined with the relative path `path`, normalized lexically (`.` dropped, `..`
/// taken back), refused if `path` is absolute or any `..` would climb above `root`. Symbolic
/// links inside `root` are not followed: the check is on the text, before anything exists.
pub fn join_under(root: &Path, path: impl AsRef<Path>) -> Result<PathBuf, Error> {
    let path = path.as_ref();
    let refuse = |make: fn(String, String) -> Error| {
        Err(make(
            shorten(&path.to_string_lossy()),
            root.display().to_string(),
        ))
    };
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return refuse(|path, root| Error::Escapes { path, root });
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return refuse(|path, root| Error::Absolute { path, root });
            }
        }
    }
    let mut joined = root.to_path_buf();
    joined.extend(parts);
    Ok(joined)
}

/// At most 60 characters of `text`, for messages about huge values.
fn shorten(text: &str) -> String {
    crate::text::shorten(text, 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        assert_eq!(Name::parse("build-2_a").unwrap().as_str(), "build-2_a");
        for bad in ["..", ".", "a/b", "a b", "ä", "a\0b", "a.b"] {
            assert!(
                matches!(Name::parse(bad), Err(Error::Forbidden { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(Name::parse(""), Err(Error::Empty));
        let long = "x".repeat(300);
        let e = Name::parse(&long).unwrap_err();
        assert!(e.to_string().contains("300 bytes"), "{e}");
        assert!(e.to_string().len() < 200, "the value is cut: {e}");
        assert!(Name::parse(&"y".repeat(Name::MAX_LEN)).is_ok());
    }

    #[test]
    fn joins_stay_under_the_root() {
        let root = Path::new("/srv/out");
        assert_eq!(join_under(root, "a/b").unwrap(), Path::new("/srv/out/a/b"));
        assert_eq!(join_under(root, "a/../b").unwrap(), Path::new("/srv/out/b"));
        assert_eq!(join_under(root, "").unwrap(), Path::new("/srv/out"));
        assert!(matches!(
            join_under(root, "../x"),
            Err(Error::Escapes { .. })
        ));
        assert!(matches!(
            join_under(root, "a/../../x"),
            Err(Error::Escapes { .. })
        ));
        assert!(matches!(
            join_under(root, "/etc/passwd"),
            Err(Error::Absolute { .. })
        ));
    }
}
