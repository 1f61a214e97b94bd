//! A workflow's memory: `<output>/memory.db`, namespace `workflow/<name>`, shared by every
//! run of the workflow. A task with `remember: true` stores its output there once it
//! succeeded (its id the task's, embedded lexically); a task with `recall:` searches it
//! before it runs (its query's words and lexical nearness, fused) and finds what came back in
//! its input, as `recall`. Every call of the store runs on a blocking thread.

use bytes::Bytes;
use colony_core::task::TaskSpec;
use colony_memory::{
    Document, Embedder, Error, Lexical, Memory as _, Namespace, Query, SqliteMemory,
};
use serde_json::{Value, json};
use std::{path::Path, sync::Arc};

/// Dimensions of the lexical embeddings the workflow's memory holds.
const DIMENSION: usize = 384;

pub(crate) struct Memory {
    store: SqliteMemory,
    namespace: Namespace,
    lexical: Lexical,
    workflow: String,
}

/// The memory of `workflow`, when one of its tasks remembers or recalls.
pub(crate) async fn open(
    workflow: &crate::Workflow,
    output: &Path,
) -> Result<Option<Arc<Memory>>, colony_runtime::Error> {
    if !workflow
        .tasks
        .iter()
        .any(|t| t.remember || t.recall.is_some())
    {
        return Ok(None);
    }
    let fail = |e: String| colony_runtime::Error::Options(format!("the workflow's memory: {e}"));
    let namespace = Namespace::parse(&format!("workflow/{}", workflow.name))
        .map_err(|e| fail(e.to_string()))?;
    let path = output.join("memory.db");
    let lexical = Lexical::new(DIMENSION).map_err(|e| fail(e.to_string()))?;
    let name = workflow.name.clone();
    let store = tokio::task::spawn_blocking(move || SqliteMemory::open(&path))
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(e.to_string()))?;
    Ok(Some(Arc::new(Memory {
        store,
        namespace,
        lexical,
        workflow: name,
    })))
}

impl Memory {
    /// `spec` with the `k` documents best matching `query` in its input's `recall` field
    /// (`[{"id", "text", "score"}]`, best first; empty when nothing was remembered yet).
    pub(crate) async fn recall(
        self: &Arc<Self>,
        spec: TaskSpec,
        query: String,
        k: usize,
        max_payload: usize,
    ) -> Result<TaskSpec, String> {
        let me = self.clone();
        let hits = tokio::task::spawn_blocking(move || {
            let vector = me.lexical.embed(&[&query])?.pop();
            let q = Query {
                text: Some(query),
                vector,
                k,
                embedder: Some(me.lexical.kind().to_owned()),
                ..Query::default()
            };
            match me.store.search(&me.namespace, &q) {
                // Nothing remembered yet, or a query of no word: nothing recalled by text.
                Err(Error::UnknownNamespace(_)) => Ok(Vec::new()),
                Err(Error::Query(_)) => me.store.search(&me.namespace, &Query { text: None, ..q }),
                other => other,
            }
        })
        .await
        .map_err(|e| format!("recall: {e}"))?
        .map_err(|e| format!("recall: {e}"))?;
        let found: Vec<Value> = hits
            .into_iter()
            .map(|h| json!({"id": h.id, "text": h.text, "score": h.score}))
            .collect();
        let mut payload: Value = serde_json::from_slice(&spec.payload)
            .map_err(|e| format!("recall: the task's payload is not JSON: {e}"))?;
        match payload.get_mut("input") {
            Some(Value::Object(input)) => {
                input.insert("recall".into(), Value::Array(found));
            }
            Some(slot @ Value::Null) => *slot = json!({ "recall": found }),
            _ => {
                return Err(
                    "recall: the task's input is not a map, so there is no field to put what was recalled in"
                        .into(),
                );
            }
        }
        let payload = payload.to_string();
        if payload.len() > max_payload {
            return Err(format!(
                "recall: what was recalled makes the payload {} bytes, over the limit of {max_payload}: lower `k`",
                payload.len()
            ));
        }
        Ok(TaskSpec {
            payload: Bytes::from(payload),
            ..spec
        })
    }

    /// Stores the output of task `task` as document `task`, embedded lexically.
    pub(crate) async fn remember(
        self: &Arc<Self>,
        task: &str,
        output: &Bytes,
    ) -> Result<(), String> {
        // A JSON string (a command's text) as its text; anything else as written.
        let text = match serde_json::from_slice::<Value>(output) {
            Ok(Value::String(s)) => s,
            _ => String::from_utf8_lossy(output).into_owned(),
        };
        let me = self.clone();
        let id = task.to_owned();
        tokio::task::spawn_blocking(move || {
            let embedding = me.lexical.embed(&[&text])?.pop();
            let doc = Document {
                id: id.clone(),
                text,
                metadata: [
                    ("task".to_owned(), Value::String(id)),
                    ("workflow".to_owned(), Value::String(me.workflow.clone())),
                ]
                .into_iter()
                .collect(),
                embedding,
            };
            me.store
                .put_embedded(&me.namespace, vec![doc], me.lexical.kind())
        })
        .await
        .map_err(|e| format!("its output could not be remembered: {e}"))?
        .map_err(|e| format!("its output could not be remembered: {e}"))
    }
}
