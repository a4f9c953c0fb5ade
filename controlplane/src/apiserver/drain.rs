//! Reading the rest of a request body before answering, so that an early answer
//! reaches the client.
//!
//! Many answers come before the body is read: a 401 from authentication, a 400 for a
//! bad namespace in the path, a 404 for a kind nobody serves. hyper then reads at most
//! what is already buffered and closes the connection. A TCP socket closed with unread
//! data sends a reset, not a FIN, and a client still writing its body (or about to read
//! the answer) gets "connection reset" or, over TLS, "EOF occurred in violation of
//! protocol", and never sees the Status that said what was wrong. Go's net/http, and so
//! kube-apiserver, reads what is left of a body after the handler for the same reason.
//!
//! This layer does that before the answer goes out: when the handler has let go of a
//! body it did not read to the end, what is left is read and thrown away, up to the
//! server's body limit and for at most [`DRAIN_TIME`]. A body that is still longer, or
//! slower, is left to hyper, which closes the connection as before. Requests without a
//! body (every GET), and HTTP/2 requests (an early answer there resets one stream, not
//! the connection), pass through untouched.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

/// The longest a client gets to send the rest of a body nobody reads.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// The request body, shared by the handler (which reads it, or drops it) and this
/// layer (which reads the rest once the handler has dropped it).
struct Shared(Arc<Mutex<Body>>);

impl HttpBody for Shared {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut body = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Pin::new(&mut *body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .size_hint()
    }
}

/// The middleware (`axum::middleware::from_fn_with_state(limit, drain::unread_body)`),
/// outermost, so that it also covers answers from authentication and routing. `limit`
/// is the most it reads: the server's body limit.
pub async fn unread_body(State(limit): State<usize>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    // HTTP/2 ends one stream with a reset and keeps the connection: nothing to drain.
    if body.is_end_stream() || parts.version >= axum::http::Version::HTTP_2 {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let shared = Arc::new(Mutex::new(body));
    let response = next
        .run(Request::from_parts(
            parts,
            Body::new(Shared(Arc::clone(&shared))),
        ))
        .await;
    // Still held elsewhere (a response that streams from the request): not ours to read.
    if let Ok(body) = Arc::try_unwrap(shared) {
        let body = body.into_inner().unwrap_or_else(PoisonError::into_inner);
        if !body.is_end_stream() {
            let _ = tokio::time::timeout(DRAIN_TIME, discard(body, limit)).await;
        }
    }
    response
}

/// Reads `body` to its end, or until more than `limit` bytes or an error.
async fn discard(mut body: Body, limit: usize) {
    let mut read = 0usize;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        match frame {
            Ok(frame) => {
                read += frame.data_ref().map_or(0, Bytes::len);
                if read > limit {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::post;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves a handler that answers 400 without reading the body, behind the layer.
    async fn serve() -> std::net::SocketAddr {
        let app = Router::new()
            .route("/early", post(|| async { StatusCode::BAD_REQUEST }))
            .route(
                "/read",
                post(|body: Bytes| async move { body.len().to_string() }),
            )
            .layer(axum::middleware::from_fn_with_state(
                1024 * 1024,
                unread_body,
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// Reads one response (headers and a Content-Length body) from `stream`.
    async fn response(stream: &mut tokio::net::TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return text;
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                .await
                .expect("an answer within 10 s")
                .expect("no reset");
            assert!(n > 0, "the connection closed after {text:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[tokio::test]
    async fn an_early_answer_reads_the_rest_of_the_body_and_keeps_the_connection() {
        let addr = serve().await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = vec![b'x'; 256 * 1024];
        let head = format!(
            "POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // The body comes in two writes, the second after the server has had a chance
        // to answer: without the layer, hyper answers, finds the body unread and
        // closes the connection.
        stream.write_all(&body[..1024]).await.unwrap();
        tokio::task::yield_now().await;
        stream.write_all(&body[1024..]).await.unwrap();
        let first = response(&mut stream).await;
        assert!(first.starts_with("HTTP/1.1 400"), "{first}");
        // The same connection serves the next request: the body was read to its end.
        stream
            .write_all(b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            .await
            .unwrap();
        let second = response(&mut stream).await;
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
        assert!(second.ends_with("\r\n\r\n3"), "{second}");
    }
}
