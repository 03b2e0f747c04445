//! `spate-net`: the Kafka wire.
//!
//! * [`frame`]: length-prefixed frames with a maximum size, read into zero-copy [`bytes::Bytes`].
//! * [`header`]: the request header (peeked by hand for ApiVersions, otherwise decoded by
//!   kafka-protocol) and response framing.
//! * [`conn`]: one pipelined connection: requests are dispatched in order, completed
//!   concurrently, and answered in request order, with an in-flight limit and an idle timeout.
//! * [`wakers`]: a leak-free set of parked tasks (shutdown, high-watermark waits).
//!
//! **Architecture invariant:** nothing here decides anything about topics or partitions; the
//! broker hands a [`conn::Dispatch`] to [`conn::serve`].

pub mod conn;
pub mod frame;
pub mod header;
pub mod wakers;
