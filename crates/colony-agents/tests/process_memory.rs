//! A `process` agent that writes a huge line: the attempt fails with the limit named, and
//! colony's memory stays bounded. Alone in its test binary, so that the peak resident size it
//! reads is its own.

use bytes::Bytes;
use colony_agents::{
    Agent, Execution, Task,
    process::{MAX_LINE, Process, ProcessOptions},
};
use colony_core::{AgentId, TaskId};

mod common;
use common::peak_rss;

/// Says hello, then answers its first task with 200 MB on stderr and 200 MB on stdout, neither
/// with a newline, and waits.
const FLOOD: &str = r#"
import json, sys, time
print(json.dumps({"type": "hello", "protocol": 1}), flush=True)
sys.stdin.readline()
chunk = "x" * (1 << 20)
for _ in range(200):
    sys.stderr.write(chunk)
sys.stderr.flush()
for _ in range(200):
    sys.stdout.write(chunk)
sys.stdout.flush()
time.sleep(60)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_line_fails_the_attempt_and_memory_stays_bounded() {
    let mut options = ProcessOptions::new("python3");
    options.args = vec!["-c".into(), FLOOD.into()];
    let process = Process::new(options);
    let before = peak_rss();
    let task = Task::new(TaskId(1), 1, AgentId(0), Bytes::from_static(b"{}"));
    let Execution::Running(attempt) = process.handle(task) else {
        panic!("a process attempt waits")
    };
    let err = tokio::time::timeout(std::time::Duration::from_secs(60), attempt)
        .await
        .expect("the attempt ends, it does not wait for a newline")
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&format!("a line over {MAX_LINE} bytes")) && message.contains("stopped"),
        "{message}"
    );
    let grown = peak_rss().saturating_sub(before);
    // One line's worth at most (16 MiB), with room for the buffer's growth; the unbounded
    // reader held the whole 200 MB line, twice while it grew.
    assert!(
        grown < 100 << 20,
        "peak memory grew by {} MB for 400 MB of output",
        grown >> 20
    );
    eprintln!("peak memory grew by {} MB", grown >> 20);
}
