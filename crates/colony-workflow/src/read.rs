//! Reading a file colony was pointed at (a workflow, a pools file, a tokens file), bounded:
//! only a regular file, only up to a size, only UTF-8 text.
//!
//! `std::fs::read_to_string` reads whatever the path gives: `/dev/zero` grows without end, a
//! FIFO blocks forever, a directory gives a cryptic error. [`read_bounded`] refuses them
//! before reading, and never holds more than `max_bytes + 1` bytes.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

/// Why a file was not read; each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {}: it is {what}, not a regular file", path.display())]
    NotRegular { path: PathBuf, what: &'static str },
    #[error(
        "cannot read {}: it is {size} bytes long, more than the limit of {limit} bytes",
        path.display()
    )]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error(
        "cannot read {}: it is not UTF-8 text (invalid byte at line {line}, column {column})",
        path.display()
    )]
    NotUtf8 {
        path: PathBuf,
        /// 1-based.
        line: u64,
        /// 1-based, in characters.
        column: u64,
    },
}

/// The text of the regular file at `path`, refused if it is anything else (a directory, a
/// device such as `/dev/zero`, a FIFO, a socket), longer than `max_bytes`, or not UTF-8 (the
/// error then says the line and column of the first bad byte).
pub fn read_bounded(path: &Path, max_bytes: u64) -> Result<String, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    // Checked before opening: opening a FIFO for reading blocks until a writer comes.
    regular(path, &std::fs::metadata(path).map_err(io)?, max_bytes)?;
    let file = std::fs::File::open(path).map_err(io)?;
    // And again on what was opened, in case the path changed in between.
    regular(path, &file.metadata().map_err(io)?, max_bytes)?;
    let mut bytes = Vec::new();
    // One byte more than allowed tells a file that grew since its size was read.
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(ReadError::TooLarge {
            path: path.to_owned(),
            size: bytes.len() as u64,
            limit: max_bytes,
        });
    }
    String::from_utf8(bytes).map_err(|e| {
        let (line, column) = position(&e.as_bytes()[..e.utf8_error().valid_up_to()]);
        ReadError::NotUtf8 {
            path: path.to_owned(),
            line,
            column,
        }
    })
}

fn regular(path: &Path, metadata: &std::fs::Metadata, max_bytes: u64) -> Result<(), ReadError> {
    use std::os::unix::fs::FileTypeExt as _;
    let kind = metadata.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("a device")
    } else {
        Some("not a file")
    };
    if let Some(what) = what {
        return Err(ReadError::NotRegular {
            path: path.to_owned(),
            what,
        });
    }
    if metadata.len() > max_bytes {
        return Err(ReadError::TooLarge {
            path: path.to_owned(),
            size: metadata.len(),
            limit: max_bytes,
        });
    }
    Ok(())
}

/// The 1-based line and column just after `valid`, a prefix of valid UTF-8.
pub(crate) fn position(valid: &[u8]) -> (u64, u64) {
    let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = valid.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let column = std::str::from_utf8(&valid[line_start..])
        .map_or(valid.len() - line_start, |s| s.chars().count()) as u64
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_small_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.yaml");
        std::fs::write(&path, "name: x\n").unwrap();
        assert_eq!(read_bounded(&path, 100).unwrap(), "name: x\n");
        // Exactly at the limit is allowed.
        assert_eq!(read_bounded(&path, 8).unwrap(), "name: x\n");
    }

    #[test]
    fn refuses_devices_directories_and_fifos() {
        let e = read_bounded(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(matches!(e, ReadError::NotRegular { .. }), "{e}");
        assert!(e.to_string().contains("/dev/zero"), "{e}");
        assert!(e.to_string().contains("a device"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = read_bounded(dir.path(), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Opening it would block until a writer came: it must be refused before that.
        let e = read_bounded(&fifo, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
    }

    #[test]
    fn refuses_a_file_over_the_limit_naming_size_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yaml");
        std::fs::write(&path, vec![b'a'; 1001]).unwrap();
        let e = read_bounded(&path, 1000).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("big.yaml"), "{text}");
        assert!(text.contains("1001 bytes"), "{text}");
        assert!(text.contains("limit of 1000 bytes"), "{text}");
    }

    #[test]
    fn invalid_utf8_is_reported_with_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.yaml");
        let mut bytes = b"name: x\ntasks: [{id: \xc3\xa9a".to_vec();
        bytes.push(0xff);
        bytes.extend_from_slice(b"}]\n");
        std::fs::write(&path, bytes).unwrap();
        let e = read_bounded(&path, 1000).unwrap_err();
        match &e {
            // Line 2, after `tasks: [{id: éa` (15 characters).
            ReadError::NotUtf8 { line, column, .. } => assert_eq!((*line, *column), (2, 16)),
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("line 2, column 16"), "{e}");
    }
}
