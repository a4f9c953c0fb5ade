//! The failover client against real sockets on loopback: a server that answers, one
//! that refuses connections (a closed port), and one that takes a request and hangs up
//! without answering.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Request, Uri};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::*;

/// A loopback listener run by this test; stopped when dropped.
struct Listener {
    url: Uri,
    /// Requests it has read.
    seen: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

/// A server that answers every request with its name, the method and the path.
async fn answering(name: &'static str) -> Listener {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                counter.fetch_add(1, Ordering::SeqCst);
                let body = serde_json::json!({
                    "server": name,
                    "method": req.method().as_str(),
                    "path": req.uri().path(),
                });
                async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(Bytes::from(body.to_string())),
                    ))
                }
            });
            connections.spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    Listener {
        url: url.parse().unwrap(),
        seen,
        task,
    }
}

/// A server that reads each request's head, then closes the connection unanswered.
async fn hanging_up() -> Listener {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            if !head.is_empty() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            drop(tcp);
        }
    });
    Listener {
        url: url.parse().unwrap(),
        seen,
        task,
    }
}

/// A server that accepts connections and never says anything, like a hung process:
/// an `https://` URL for it waits on the TLS handshake.
async fn silent() -> Listener {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(tcp);
        }
    });
    Listener {
        url: url.parse().unwrap(),
        seen,
        task,
    }
}

/// A loopback URL nothing listens on: connections to it are refused.
fn refusing() -> Uri {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url.parse().unwrap()
}

fn client_over(urls: &[&Uri]) -> (kube::Client, Servers) {
    let servers = Servers::new(urls.iter().map(|u| (*u).clone())).unwrap();
    let config = kube::Config::new(urls[0].clone());
    (client(&config, servers.clone()).unwrap(), servers)
}

async fn send(client: &kube::Client, method: &str) -> Result<Value, kube::Error> {
    let request = Request::builder()
        .method(method)
        .uri("/api/v1/namespaces/default/configmaps")
        .body(b"{}".to_vec())
        .unwrap();
    client.request::<Value>(request).await
}

#[tokio::test]
async fn a_get_moves_to_the_next_server_when_one_refuses_and_stays_there() {
    let live = answering("b").await;
    let dead = refusing();
    let (client, servers) = client_over(&[&dead, &live.url]);

    let answer = send(&client, "GET").await.unwrap();
    assert_eq!(answer["server"], "b");
    assert_eq!(answer["path"], "/api/v1/namespaces/default/configmaps");
    assert_eq!(servers.current(), live.url);
    assert_eq!(servers.snapshot().failovers, 1);

    send(&client, "GET").await.unwrap();
    assert_eq!(live.seen(), 2);
    assert_eq!(
        servers.snapshot().failovers,
        1,
        "the next request went straight to the server that answered"
    );
}

#[tokio::test]
async fn a_post_is_sent_again_only_when_nothing_was_sent() {
    let live = answering("b").await;
    let dead = refusing();
    let (client, _) = client_over(&[&dead, &live.url]);
    let answer = send(&client, "POST").await.unwrap();
    assert_eq!(
        (answer["server"].as_str(), answer["method"].as_str()),
        (Some("b"), Some("POST")),
        "a refused connection sent nothing, so the POST is safe to send again"
    );

    let breaking = hanging_up().await;
    let live = answering("b").await;
    let (client, servers) = client_over(&[&breaking.url, &live.url]);
    assert!(
        send(&client, "POST").await.is_err(),
        "the first server may have acted on it: not sent twice"
    );
    assert_eq!((breaking.seen(), live.seen()), (1, 0));
    assert_eq!(servers.current(), live.url, "but the client moved on");
    let answer = send(&client, "POST").await.unwrap();
    assert_eq!(answer["server"], "b");
}

#[tokio::test]
async fn a_get_is_sent_again_when_the_connection_breaks_before_an_answer() {
    let breaking = hanging_up().await;
    let live = answering("b").await;
    let (client, servers) = client_over(&[&breaking.url, &live.url]);
    let answer = send(&client, "GET").await.unwrap();
    assert_eq!(answer["server"], "b");
    assert_eq!((breaking.seen(), live.seen()), (1, 1));
    assert_eq!(servers.current(), live.url);
}

#[tokio::test]
async fn a_server_that_never_finishes_the_handshake_is_skipped_like_a_refusal() {
    let hung = silent().await;
    let live = answering("b").await;
    let servers = Servers::new([hung.url.clone(), live.url.clone()]).unwrap();
    let mut config = kube::Config::new(hung.url.clone());
    config.connect_timeout = Some(std::time::Duration::from_millis(300));
    let client = client(&config, servers.clone()).unwrap();
    let answer = send(&client, "POST").await.unwrap();
    assert_eq!(
        answer["server"], "b",
        "nothing was sent before the handshake timed out"
    );
    assert_eq!((hung.seen(), servers.current()), (1, live.url.clone()));
}

#[tokio::test]
async fn with_every_server_down_each_is_tried_once_and_the_error_returned() {
    let (a, b) = (refusing(), refusing());
    let (client, servers) = client_over(&[&a, &b]);
    assert!(send(&client, "GET").await.is_err());
    let snapshot = servers.snapshot();
    assert_eq!((snapshot.failovers, snapshot.current()), (2, &a));
}

#[tokio::test]
async fn servers_learned_at_run_time_are_used() {
    let live = answering("c").await;
    let dead = refusing();
    let (client, servers) = client_over(&[&dead]);
    assert!(send(&client, "GET").await.is_err());
    let changes = servers.subscribe();
    assert!(servers.set([dead.clone(), live.url.clone()]));
    assert!(changes.has_changed().unwrap());
    let answer = send(&client, "GET").await.unwrap();
    assert_eq!(answer["server"], "c");
}

#[test]
fn the_set_keeps_its_current_server_and_never_empties() {
    let [a, b, c]: [Uri; 3] =
        ["https://a:1", "https://b:2", "https://c:3"].map(|u| u.parse().unwrap());
    let servers = Servers::new([a.clone(), b.clone(), a.clone()]).unwrap();
    assert_eq!(servers.urls(), [a.clone(), b.clone()], "duplicates dropped");
    assert!(Servers::new([]).is_err());

    assert!(servers.failed(&a));
    assert!(
        !servers.failed(&a),
        "a second failure on the same server moves the client once"
    );
    assert_eq!(servers.current(), b);

    assert!(servers.set([c.clone(), b.clone()]));
    assert_eq!(servers.current(), b, "still listed, so still current");
    assert!(!servers.set([]), "an empty set is ignored");
    assert_eq!(servers.urls(), [c.clone(), b.clone()]);
    assert!(servers.set([a.clone()]));
    assert_eq!(
        servers.current(),
        a,
        "the current server went: the first is next"
    );
    assert!(!servers.failed(&a), "a lone server has nowhere to go");
}

#[test]
fn server_lists_are_read_as_written() {
    let urls =
        parse_servers(" https://10.0.0.1:6443/ ,https://[::1]:6443,, https://h/base").unwrap();
    let urls: Vec<String> = urls.iter().map(Uri::to_string).collect();
    assert_eq!(
        urls,
        [
            "https://10.0.0.1:6443/",
            "https://[::1]:6443/",
            "https://h/base"
        ]
    );
    assert!(
        parse_servers("10.0.0.1:6443").is_err(),
        "a scheme is needed"
    );
    assert!(parse_servers(" , ").is_err());
    let on = |server: &str, path: &str| {
        on_server(&server.parse().unwrap(), &path.parse().unwrap())
            .unwrap()
            .to_string()
    };
    assert_eq!(
        on("https://b:2", "/api/v1/pods?watch=1"),
        "https://b:2/api/v1/pods?watch=1"
    );
    assert_eq!(on("https://b:2/k8s", "/api"), "https://b:2/k8s/api");
}
