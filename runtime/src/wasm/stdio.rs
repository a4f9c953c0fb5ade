//! Guest stdout and stderr: both WASI versions write straight into the run's [`OutputSink`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::{OutputSink, Stream};

/// How many bytes a guest may hand over per write (the WASI `check-write` permit). The sink
/// takes any amount synchronously, so this only sizes the guest's chunks; 64 KiB matches
/// wasmtime-wasi's own stdio.
const WRITE_PERMIT: usize = 64 * 1024;

/// One of a run's output streams, as given to `WasiCtxBuilder::stdout`/`stderr`.
///
/// Preview1 and preview2 both write through `p2_stream` (preview1 is implemented on top of
/// preview2); `async_stream` serves wasip3 hosts. Writes complete immediately: the sink
/// never blocks, so there is no buffering here and nothing to flush.
#[derive(Clone)]
pub(crate) struct SinkStream {
    sink: Arc<dyn OutputSink>,
    stream: Stream,
}

impl SinkStream {
    pub(crate) fn new(sink: Arc<dyn OutputSink>, stream: Stream) -> SinkStream {
        SinkStream { sink, stream }
    }
}

impl IsTerminal for SinkStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for SinkStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for SinkStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.sink.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for SinkStream {
    /// Always ready: writes never wait.
    async fn ready(&mut self) {}
}

impl AsyncWrite for SinkStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.sink.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
