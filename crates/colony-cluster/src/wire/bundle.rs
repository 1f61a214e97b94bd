//! Several tasks in one stream message: a bundle. The stream, the pull and the ack then cost
//! once for all of them, while each task keeps its own id, record, lease, attempts and
//! cancel. A bundle carries header [`COUNT`] (how many tasks) and, as its body, each task's
//! headers (as [`super::TaskMessage::headers`] writes them, one `Name: value` line each) and
//! payload, each behind its length (4 bytes, big-endian).
//!
//! Task `i` of the bundle at stream sequence `s` has id `(i + 1) * 10^13 + s`
//! ([`bundled_id`]): apart from every plain task's (its stream sequence, below 10^13), read
//! back by [`message_of`], and within the integers a JSON number keeps exactly (2^53).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The header saying a message is a bundle, and of how many tasks.
pub const COUNT: &str = "Colony-Bundle";
/// Most tasks one bundle carries.
pub const MAX_TASKS: usize = 512;
/// Ids at or above this name a bundled task; a plain task's (a stream sequence) is below.
pub const BUNDLED: u64 = 10_000_000_000_000;

/// The id of task `index` (from 0) of the bundle at stream sequence `sequence`, if both are
/// in range.
pub fn bundled_id(sequence: u64, index: usize) -> Option<u64> {
    (sequence < BUNDLED && index < MAX_TASKS).then(|| (index as u64 + 1) * BUNDLED + sequence)
}

/// The stream sequence of the message carrying task `id`, and its place in the bundle when
/// it is a bundled task's.
pub fn message_of(id: u64) -> (u64, Option<usize>) {
    match id / BUNDLED {
        0 => (id, None),
        n => (id % BUNDLED, usize::try_from(n - 1).ok()),
    }
}

/// Writes `tasks` (each its headers, the dedupe id left out, and payload) as a bundle's body.
pub fn encode<'a>(
    tasks: impl IntoIterator<Item = (&'a async_nats::HeaderMap, &'a Bytes)>,
) -> Bytes {
    let mut out = BytesMut::new();
    for (headers, payload) in tasks {
        put(&mut out, header_lines(headers).as_bytes());
        put(&mut out, payload);
    }
    out.freeze()
}

/// `headers` as `Name: value` lines, in order of name (a header map keeps no order of its
/// own, and the same tasks must make the same bundle), the dedupe id left out.
pub fn header_lines(headers: &async_nats::HeaderMap) -> String {
    let mut pairs: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(name, _)| !AsRef::<str>::as_ref(*name).eq_ignore_ascii_case("Nats-Msg-Id"))
        .flat_map(|(name, values)| values.iter().map(move |v| (name.as_ref(), v.as_str())))
        .collect();
    pairs.sort_unstable();
    let mut lines = String::new();
    for (name, value) in pairs {
        lines.push_str(name);
        lines.push_str(": ");
        lines.push_str(value);
        lines.push('\n');
    }
    lines
}

/// How many bytes [`encode`] adds around a task's headers and payload.
pub const FRAMING: usize = 8;

fn put(out: &mut BytesMut, bytes: &[u8]) {
    // Within a message's bounds (under 1 MiB), so the length always fits.
    out.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    out.put_slice(bytes);
}

/// How many tasks a message carries: 1 for a plain task's, else its [`COUNT`] header's, or
/// what is wrong with that.
pub fn count(headers: Option<&async_nats::HeaderMap>) -> Result<usize, String> {
    let Some(value) = headers.and_then(|h| h.get(COUNT)) else {
        return Ok(1);
    };
    value
        .as_str()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_TASKS).contains(n))
        .ok_or_else(|| {
            format!(
                "header {COUNT}: `{}` is not a number of tasks in 1..={MAX_TASKS}",
                value.as_str()
            )
        })
}

/// A bundle's tasks, each its headers and payload, as [`encode`] wrote them; `count` of them
/// exactly, or what is wrong with the body (a task past its end, bytes left over).
pub fn decode(
    count: usize,
    mut body: Bytes,
) -> Result<Vec<(async_nats::HeaderMap, Bytes)>, String> {
    let mut tasks = Vec::with_capacity(count.min(MAX_TASKS));
    for i in 0..count {
        let what =
            |part: &str| format!("task {i} of {count}: its {part} runs past the bundle's end");
        let lines = take(&mut body).ok_or_else(|| what("headers"))?;
        let payload = take(&mut body).ok_or_else(|| what("payload"))?;
        let lines = std::str::from_utf8(&lines)
            .map_err(|_| format!("task {i} of {count}: its headers are not UTF-8"))?;
        let mut headers = async_nats::HeaderMap::new();
        for line in lines.lines() {
            let bad = || {
                let line = colony_core::text::shorten(line, 80);
                format!("task {i} of {count}: header line `{line}` is not `Name: value`")
            };
            let (name, value) = line.split_once(": ").ok_or_else(bad)?;
            let name: async_nats::HeaderName = name.parse().map_err(|_| bad())?;
            let value: async_nats::HeaderValue = value.parse().map_err(|_| bad())?;
            headers.append(name, value);
        }
        tasks.push((headers, payload));
    }
    if !body.is_empty() {
        return Err(format!(
            "{} bytes past the last of its {count} tasks",
            body.len()
        ));
    }
    Ok(tasks)
}

fn take(body: &mut Bytes) -> Option<Bytes> {
    if body.len() < 4 {
        return None;
    }
    let n = body.get_u32() as usize;
    (body.len() >= n).then(|| body.split_to(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundled_id_names_its_message_and_place_apart_from_every_plain_one() {
        assert_eq!(message_of(41), (41, None));
        assert_eq!(message_of(BUNDLED - 1), (BUNDLED - 1, None));
        let id = bundled_id(41, 0).unwrap();
        assert_eq!(id, 10_000_000_000_041);
        assert_eq!(message_of(id), (41, Some(0)));
        let last = bundled_id(BUNDLED - 1, MAX_TASKS - 1).unwrap();
        assert_eq!(message_of(last), (BUNDLED - 1, Some(MAX_TASKS - 1)));
        // Every id a JSON number keeps exactly.
        assert!(last < 1 << 53);
        assert_eq!(bundled_id(BUNDLED, 0), None);
        assert_eq!(bundled_id(1, MAX_TASKS), None);
    }

    #[test]
    fn a_bundle_gives_back_each_task_as_written_and_names_what_is_wrong() {
        let mut a = async_nats::HeaderMap::new();
        a.insert("Nats-Msg-Id", "left-out");
        a.insert("Colony-Key", "k: with a colon");
        a.insert("Colony-Priority", "3");
        let b = async_nats::HeaderMap::new();
        let (pa, pb) = (Bytes::from_static(b"\x00\xffbinary\n"), Bytes::new());
        let body = encode([(&a, &pa), (&b, &pb)]);
        let tasks = decode(2, body.clone()).unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0].0.get("Nats-Msg-Id"), None);
        assert_eq!(
            tasks[0].0.get("Colony-Key").unwrap().as_str(),
            "k: with a colon"
        );
        assert_eq!(tasks[0].0.get("Colony-Priority").unwrap().as_str(), "3");
        assert_eq!(tasks[0].1, pa);
        assert_eq!(tasks[1].0.iter().count(), 0);
        assert_eq!(tasks[1].1, pb);

        // A header name a header cannot have is named, not a panic.
        for line in ["a:b: c", "a b: c", "é: c", "no colon"] {
            let mut lines = BytesMut::new();
            put(&mut lines, line.as_bytes());
            put(&mut lines, b"");
            let err = decode(1, lines.freeze()).unwrap_err();
            assert!(err.contains("is not `Name: value`"), "{line}: {err}");
        }
        let short = decode(3, body.clone()).unwrap_err();
        assert!(short.contains("task 2 of 3"), "{short}");
        let cut = decode(2, body.slice(..body.len() - 1)).unwrap_err();
        assert!(cut.contains("task 1 of 2"), "{cut}");
        let over = decode(1, body).unwrap_err();
        assert!(over.contains("past the last of its 1 tasks"), "{over}");

        // The same headers, put in another order, make the same bundle.
        let mut c = async_nats::HeaderMap::new();
        c.insert("Colony-Priority", "3");
        c.insert("Colony-Key", "k: with a colon");
        assert_eq!(header_lines(&a), header_lines(&c));
        assert_eq!(encode([(&a, &pa)]), encode([(&c, &pa)]));

        let mut h = async_nats::HeaderMap::new();
        assert_eq!(count(None), Ok(1));
        assert_eq!(count(Some(&h)), Ok(1));
        h.insert(COUNT, "64");
        assert_eq!(count(Some(&h)), Ok(64));
        for bad in ["0", "513", "x"] {
            h.insert(COUNT, bad);
            assert!(count(Some(&h)).unwrap_err().contains(COUNT));
        }
    }
}
