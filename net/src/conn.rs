//! One pipelined Kafka connection.
//!
//! A reader task reads frames and hands each to the broker's [`Dispatch`] *in order*; dispatch
//! returns a [`Completion`] future once the request is queued where it will be served (stage one
//! of Redpanda's two-stage processing). Completions go into a bounded queue of
//! `inflight_requests_max`; the writer awaits them in that order and writes the responses, so
//! responses always leave in request order while many requests are in flight. A client that
//! never reads its responses fills the queue and then stops being read: memory stays bounded.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use tracing::{debug, warn};

use crate::frame::{read_frame, FrameError};

/// What the broker answers to one request.
pub enum Reply {
    /// A complete response frame (size prefix included).
    Frame(Bytes),
    /// No response (acks=0 produce).
    Nothing,
    /// Close the connection after the responses before this one (garbage, unknown API key).
    Close(String),
}

/// Stage two of a request: resolves to its reply.
pub type Completion = Pin<Box<dyn Future<Output = Reply>>>;

/// The broker's side of a connection.
pub trait Dispatch {
    /// Stage one: called for each request frame in arrival order; returns when the request has
    /// been queued for service, yielding the future of its reply.
    fn dispatch(&self, frame: Bytes) -> Pin<Box<dyn Future<Output = Completion> + '_>>;
}

/// Limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Largest request frame accepted (Kafka's `socket.request.max.bytes`).
    pub frame_bytes_max: usize,
    /// Requests read ahead of the oldest unanswered one.
    pub inflight_requests_max: usize,
    /// Close the connection when no request arrives, or a response cannot be written, for this
    /// long (Kafka's `connections.max.idle.ms`).
    pub idle_timeout: Duration,
}

/// A one-shot, shard-local broadcast: "stop reading new requests".
#[derive(Default)]
pub struct Shutdown {
    fired: Cell<bool>,
    waiters: crate::wakers::WakerSet,
}

impl Shutdown {
    pub fn fire(&self) {
        self.fired.set(true);
        self.waiters.wake_all();
    }

    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Resolves once [`Shutdown::fire`] has been called. Holds one waker slot however often
    /// it is polled (it sits in a `select` with every read of a connection).
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        self.waiters.wait_until(move || self.fired.get())
    }

    /// Futures waiting right now (for tests).
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }
}

/// Logs at most a few warnings per second per shard, counting the ones it drops.
pub struct RateLimitedLog {
    window_start: Cell<Instant>,
    in_window: Cell<u32>,
    suppressed: Cell<u64>,
}

impl RateLimitedLog {
    const PER_SECOND_MAX: u32 = 10;

    pub fn new() -> Self {
        RateLimitedLog {
            window_start: Cell::new(Instant::now()),
            in_window: Cell::new(0),
            suppressed: Cell::new(0),
        }
    }

    /// Returns how many earlier events were suppressed if this one may be logged.
    pub fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        if now.duration_since(self.window_start.get()) >= Duration::from_secs(1) {
            self.window_start.set(now);
            self.in_window.set(0);
        }
        if self.in_window.get() < Self::PER_SECOND_MAX {
            self.in_window.set(self.in_window.get() + 1);
            Some(self.suppressed.replace(0))
        } else {
            self.suppressed.set(self.suppressed.get() + 1);
            None
        }
    }
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        Self::new()
    }
}

thread_local! {
    static CONN_LOG: RateLimitedLog = RateLimitedLog::new();
}

fn log_conn_event(peer: SocketAddr, what: &str) {
    CONN_LOG.with(|l| {
        if let Some(suppressed) = l.admit() {
            warn!(%peer, suppressed, "closing connection: {what}");
        }
    });
}

/// Read and write halves of one glommio stream. The stream keeps separate read and write
/// readiness sources, so one task may read while another writes.
struct Half(Rc<RefCell<TcpStream>>);

impl AsyncRead for Half {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Half {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

enum ReadOutcome {
    Frame(Bytes),
    Stop,
}

/// Serves one connection until the peer closes it, it misbehaves, it idles out, or `shutdown`
/// fires (then the requests already read are still answered).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    dispatch: &dyn Dispatch,
    limits: ConnLimits,
    shutdown: &Shutdown,
) {
    let _ = stream.set_nodelay(true);
    let stream = Rc::new(RefCell::new(stream));
    let mut reader = Half(stream.clone());
    let mut writer = Half(stream);
    let (tx, rx) = glommio::channels::local_channel::new_bounded::<Completion>(
        limits.inflight_requests_max.max(1),
    );

    let read_side = async move {
        loop {
            let next = futures_lite::future::or(
                async {
                    match glommio::timer::timeout(limits.idle_timeout, async {
                        Ok(read_frame(&mut reader, limits.frame_bytes_max).await)
                    })
                    .await
                    {
                        Ok(Ok(frame)) => ReadOutcome::Frame(frame),
                        Ok(Err(FrameError::Closed)) => {
                            debug!(%peer, "connection closed by peer");
                            ReadOutcome::Stop
                        }
                        Ok(Err(e)) => {
                            log_conn_event(peer, &e.to_string());
                            ReadOutcome::Stop
                        }
                        Err(_) => {
                            log_conn_event(peer, "idle timeout");
                            ReadOutcome::Stop
                        }
                    }
                },
                async {
                    shutdown.wait().await;
                    ReadOutcome::Stop
                },
            )
            .await;
            let frame = match next {
                ReadOutcome::Frame(f) => f,
                ReadOutcome::Stop => break,
            };
            let completion = dispatch.dispatch(frame).await;
            if tx.send(completion).await.is_err() {
                break;
            }
        }
        // Dropping `tx` lets the writer drain what is in flight and finish.
        drop(tx);
        futures_lite::future::pending::<()>().await;
    };

    let write_side = async move {
        while let Some(completion) = rx.recv().await {
            match completion.await {
                Reply::Frame(bytes) => {
                    let written = glommio::timer::timeout(limits.idle_timeout, async {
                        writer.write_all(&bytes).await?;
                        Ok(())
                    })
                    .await;
                    if let Err(e) = written {
                        log_conn_event(peer, &format!("response not written: {e}"));
                        return;
                    }
                }
                Reply::Nothing => {}
                Reply::Close(reason) => {
                    log_conn_event(peer, &reason);
                    return;
                }
            }
        }
        let _ = writer.close().await;
    };

    futures_lite::future::or(write_side, read_side).await;
}
