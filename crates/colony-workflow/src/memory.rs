//! A workflow's memory: `<output>/memory.db` unless its `memory:` section says otherwise (a
//! file, a ChromaDB server, spread over several stores, or one in NATS), namespace
//! `workflow/<name>`, shared
//! by every run of the workflow. A task with `remember: true` stores its output there once
//! it succeeded (its id the task's, embedded lexically or by the section's endpoint); a task
//! with `recall:` searches it before it runs (its query's words and nearness, fused) and
//! finds what came back in its input, as `recall`. Every call of the store runs on a
//! blocking thread.

use bytes::Bytes;
use colony_core::task::TaskSpec;
use colony_memory::{
    Document, Embedder, Error, Lexical, Namespace, Opening, Place, Query, Remote, RemoteOptions,
};
use serde_json::{Value, json};
use std::{path::Path, sync::Arc};

/// Dimensions of the lexical embeddings the workflow's memory holds by default.
const DIMENSION: usize = 384;

pub(crate) struct Memory {
    store: Box<dyn colony_memory::Memory>,
    namespace: Namespace,
    embedder: Box<dyn Embedder>,
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
    let settings = workflow.memory.clone();
    let opening = Opening {
        place: settings
            .place
            .clone()
            .unwrap_or_else(|| Place::File(output.join("memory.db"))),
        shards: settings.shards.max(1),
        create: true,
        approximate: true,
    };
    let name = workflow.name.clone();
    // Both made on a blocking thread: an endpoint's client and a server's start threads
    // and wait for them, and a file is opened.
    let (store, embedder) = tokio::task::spawn_blocking(move || {
        let embedder: Box<dyn Embedder> = match &settings.embedder {
            None => Box::new(Lexical::new(DIMENSION)?),
            Some(e) => {
                let mut options = RemoteOptions::new(&e.base_url, &e.model, e.dimension);
                if let Some(var) = &e.api_key_env {
                    options.api_key = Some(std::env::var(var).map_err(|_| {
                        Error::Setting(format!(
                            "the embedder's api-key-env {var}: that variable is not set (or not UTF-8)"
                        ))
                    })?);
                }
                Box::new(Remote::new(options)?)
            }
        };
        // The folder a file is named in is made, as the output folder is.
        if let Place::File(path) = &opening.place
            && let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::Setting(format!("{}: {e}", parent.display())))?;
        }
        let store: Box<dyn colony_memory::Memory> = match &settings.nats {
            Some(nats) => Box::new(
                colony_cluster::memory::NatsMemory::open(nats, true, true, "memory: db")
                    .map_err(|e| Error::Setting(e.to_string()))?,
            ),
            None => colony_memory::open(&opening)?,
        };
        Ok::<_, Error>((store, embedder))
    })
    .await
    .map_err(|e| fail(e.to_string()))?
    .map_err(|e| fail(e.to_string()))?;
    Ok(Some(Arc::new(Memory {
        store,
        namespace,
        embedder,
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
            let vector = me.embedder.embed(&[&query])?.pop();
            let q = Query {
                text: Some(query),
                vector,
                k,
                embedder: Some(me.embedder.kind().to_owned()),
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

    /// Stores the output of task `task` as document `task`, embedded as the memory embeds.
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
            let embedding = me.embedder.embed(&[&text])?.pop();
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
                .put_embedded(&me.namespace, vec![doc], me.embedder.kind())
        })
        .await
        .map_err(|e| format!("its output could not be remembered: {e}"))?
        .map_err(|e| format!("its output could not be remembered: {e}"))
    }
}
