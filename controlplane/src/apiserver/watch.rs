//! The watch endpoint: a chunked stream of one JSON event per line, resumed from a
//! resourceVersion, with selectors, bookmarks and a timeout.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use serde_json::{Value, json};

use super::Target;
use super::crud::Selectors;
use super::request::Query;
use crate::error::{ApiError, ApiResult};
use crate::objects;
use crate::state::{ApiServer, SharedApi};
use crate::store::{Event, EventType, ListRequest, StoreError, WatchStream};

/// Events buffered per watch between the store and the socket; a slower client makes
/// the store stream fall back to reading the log rather than growing memory.
const WATCH_BUFFER: usize = 64;

/// Translates a store event into what this watcher sees, given its selectors: an object
/// that starts matching is ADDED, one that stops matching is DELETED.
fn translate(event: &Event, selectors: &Selectors) -> Option<(&'static str, Arc<Value>)> {
    let now = selectors.matches(&event.object);
    let before = event.prev.as_deref().is_some_and(|p| selectors.matches(p));
    match event.kind {
        EventType::Added if now => Some(("ADDED", event.object.clone())),
        EventType::Modified if now && before => Some(("MODIFIED", event.object.clone())),
        EventType::Modified if now => Some(("ADDED", event.object.clone())),
        EventType::Modified if before => Some(("DELETED", event.object.clone())),
        EventType::Deleted if now || before => Some(("DELETED", event.object.clone())),
        _ => None,
    }
}

/// One watch event as it goes on the wire, serialized straight from the object it
/// borrows (building it with `json!` would first copy the whole object). The fields
/// are in the order `json!` put them in.
#[derive(serde::Serialize)]
struct WatchEvent<'a> {
    object: &'a Value,
    #[serde(rename = "type")]
    kind: &'a str,
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut out = serde_json::to_vec(&WatchEvent { object, kind }).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// How change events are written: objects as they are, or as one-row Tables when the
/// client asked for Tables (the columns only in the first).
struct Encoder {
    info: &'static skiff_api::resources::ResourceInfo,
    table: Option<(&'static str, &'static str)>,
    columns_sent: bool,
}

impl Encoder {
    fn event(&mut self, kind: &str, object: &Value) -> Bytes {
        let Some((version, include)) = self.table else {
            return line(kind, &super::crud::served(self.info, object));
        };
        let rv = object
            .pointer("/metadata/resourceVersion")
            .cloned()
            .unwrap_or_default();
        let table = super::tables::table(
            self.info,
            &[object],
            json!({"resourceVersion": rv}),
            include,
            version,
            !self.columns_sent,
        );
        self.columns_sent = true;
        line(kind, &table)
    }
}

fn bookmark(info: &skiff_api::resources::ResourceInfo, rev: u64) -> Bytes {
    line(
        "BOOKMARK",
        &json!({
            "kind": info.kind,
            "apiVersion": info.api_version(),
            "metadata": {"resourceVersion": rev.to_string()},
        }),
    )
}

fn error_line(err: ApiError) -> Bytes {
    line("ERROR", &err.status())
}

/// Where a watch starts and whether it first replays current state as ADDED events.
enum Start {
    /// Send the current state (synthetic ADDED), then changes after it.
    ListThenWatch,
    /// Send changes after this revision.
    After(u64),
}

pub(crate) async fn serve(
    api: &SharedApi,
    target: &Target,
    query: &Query,
    headers: &axum::http::HeaderMap,
) -> ApiResult<Response> {
    let info = target.info;
    let mut encoder = Encoder {
        info,
        table: match super::tables::wants_table(headers) {
            Some(version) => Some((version, super::tables::include_object(query)?)),
            None => None,
        },
        columns_sent: false,
    };
    // WatchList (client-go's streaming list): the current objects as ADDED, then a
    // BOOKMARK annotated k8s.io/initial-events-end, then changes; as Kubernetes, only
    // with resourceVersionMatch=NotOlderThan and bookmarks allowed.
    let send_initial = match query.get("sendInitialEvents") {
        None | Some("false") => false,
        Some("true") => {
            if query.get("resourceVersionMatch") != Some("NotOlderThan")
                || !query.flag("allowWatchBookmarks")
            {
                return Err(ApiError::Invalid(
                    crate::error::Subject::new(info, ""),
                    vec![skiff_api::validation::FieldError {
                        field: "sendInitialEvents".into(),
                        reason: skiff_api::validation::FieldErrorType::Forbidden,
                        message: "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan and allowWatchBookmarks".into(),
                    }],
                ));
            }
            true
        }
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "invalid sendInitialEvents {other:?}"
            )));
        }
    };
    let selectors = match &target.name {
        // The legacy single-object watch path, same as fieldSelector=metadata.name=NAME.
        Some(name) => Selectors::from_query(
            info,
            &query.with("fieldSelector", format!("metadata.name={name}")),
        )?,
        None => Selectors::from_query(info, query)?,
    };
    let start = match query.get("resourceVersion") {
        _ if send_initial => Start::ListThenWatch,
        None | Some("0") => Start::ListThenWatch,
        Some(rv) => Start::After(
            objects::parse_revision(rv)
                .ok_or_else(|| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let timeout = query
        .number::<u64>("timeoutSeconds")?
        .map(Duration::from_secs);
    let prefix = info.namespace_prefix(target.namespace.as_deref());

    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(WATCH_BUFFER);
    // Set up synchronously so a compacted revision is reported before the stream starts.
    let (initial, stream) = match start {
        Start::ListThenWatch => {
            let filter = |obj: &Value| selectors.matches(obj);
            let page = api.store.list(ListRequest::all(&prefix, &filter)).await?;
            let mut initial: Vec<Bytes> = page
                .items
                .iter()
                .map(|s| encoder.event("ADDED", &s.object))
                .collect();
            if send_initial {
                initial.push(line(
                    "BOOKMARK",
                    &json!({
                        "kind": info.kind,
                        "apiVersion": info.api_version(),
                        "metadata": {
                            "resourceVersion": page.rev.to_string(),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    }),
                ));
            }
            (initial, api.store.watch(&prefix, page.rev).await)
        }
        Start::After(rev) => (Vec::new(), api.store.watch(&prefix, rev).await),
    };
    let api = api.clone();
    tokio::spawn(async move {
        let run = async {
            for item in initial {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
            match stream {
                Ok(stream) => {
                    pump(&api, info, stream, selectors, bookmarks, &mut encoder, &tx).await
                }
                // Kubernetes reports an expired revision inside a 200 watch stream, which is
                // what makes clients re-list.
                Err(e) => {
                    let _ = tx.send(error_line(ApiError::from(e))).await;
                }
            }
        };
        match timeout {
            Some(t) => {
                let _ = tokio::time::timeout(t, run).await;
            }
            None => run.await,
        }
    });
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>),
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .map_err(ApiError::internal)
}

async fn pump(
    api: &ApiServer,
    info: &'static skiff_api::resources::ResourceInfo,
    mut stream: WatchStream,
    selectors: Selectors,
    bookmarks: bool,
    encoder: &mut Encoder,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
) {
    let mut ticker = tokio::time::interval(api.config.bookmark_interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            next = stream.next() => match next {
                Some(Ok(event)) => {
                    if let Some((kind, obj)) = translate(&event, &selectors)
                        && tx.send(encoder.event(kind, &obj)).await.is_err()
                    {
                        return;
                    }
                }
                Some(Err(e)) => {
                    let _ = tx.send(error_line(store_error(e))).await;
                    return;
                }
                None => return,
            },
            _ = ticker.tick(), if bookmarks => {
                if tx.send(bookmark(info, stream.progress())).await.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
            _ = api.shutdown.cancelled() => return,
        }
    }
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::from(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_line_is_what_json_made_of_it() {
        let object = json!({"kind": "Pod", "metadata": {"name": "a", "labels": {"x": "y"}}, "status": {"phase": "Running"}});
        let expected = serde_json::to_vec(&json!({"type": "MODIFIED", "object": object})).unwrap();
        let got = line("MODIFIED", &object);
        assert_eq!(got.last(), Some(&b'\n'));
        assert_eq!(&got[..got.len() - 1], &expected[..]);
    }
}
