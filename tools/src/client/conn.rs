//! One synchronous connection to one broker: framing, request/response headers, and the
//! versions both sides speak (ApiVersions first, then the highest common version per API).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes, VersionRange};

/// Largest response frame accepted; a bigger size prefix means a confused peer.
pub const RESPONSE_FRAME_BYTES_MAX: usize = 256 << 20;

/// The client id every request carries (brokers log it; `group describe` shows it).
pub const CLIENT_ID: &str = "spate-cli";

/// Versions this client never uses even when the codec and the broker both can: Produce v13
/// and Fetch v13+ address topics by id only, and this client addresses them by name.
fn client_version_max(key: ApiKey) -> Option<i16> {
    match key {
        ApiKey::Produce | ApiKey::Fetch => Some(12),
        _ => None,
    }
}

pub struct Conn {
    stream: TcpStream,
    addr: String,
    correlation_id: i32,
    /// The broker's supported range per API key.
    broker_versions: HashMap<i16, VersionRange>,
}

impl Conn {
    /// Connects and negotiates versions (ApiVersions).
    pub fn connect(addr: &str, timeout: Duration) -> Result<Conn> {
        let addrs: Vec<_> = addr
            .to_socket_addrs()
            .with_context(|| format!("resolving {addr}"))?
            .collect();
        let mut last = None;
        let mut stream = None;
        for sa in &addrs {
            match TcpStream::connect_timeout(sa, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(e).with_context(|| format!("connecting to {addr}")),
            (None, None) => bail!("{addr} resolves to no address"),
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut conn = Conn {
            stream,
            addr: addr.to_string(),
            correlation_id: 0,
            broker_versions: HashMap::new(),
        };
        conn.negotiate()
            .with_context(|| format!("ApiVersions with {addr}"))?;
        Ok(conn)
    }

    /// How long a response may take (JoinGroup waits for a whole rebalance).
    pub fn set_read_timeout(&mut self, timeout: Duration) -> Result<()> {
        Ok(self.stream.set_read_timeout(Some(timeout))?)
    }

    fn negotiate(&mut self) -> Result<()> {
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("spate"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let frame = self.round_trip(ApiKey::ApiVersions, 3, &req)?;
        // A broker that does not know v3 answers UNSUPPORTED_VERSION in a v0 body.
        let resp = match ApiVersionsResponse::decode(&mut frame.clone(), 3) {
            Ok(r) if r.error_code == 0 => r,
            _ => {
                let v0 = ApiVersionsResponse::decode(&mut frame.clone(), 0)
                    .map_err(|e| anyhow!("undecodable ApiVersions response: {e}"))?;
                if v0.error_code != 35 {
                    bail!("ApiVersions failed with error code {}", v0.error_code);
                }
                let frame =
                    self.round_trip(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default())?;
                ApiVersionsResponse::decode(&mut frame.clone(), 0)
                    .map_err(|e| anyhow!("undecodable ApiVersions v0 response: {e}"))?
            }
        };
        if resp.error_code != 0 {
            bail!("ApiVersions failed with error code {}", resp.error_code);
        }
        self.broker_versions = resp
            .api_keys
            .iter()
            .map(|k| {
                (
                    k.api_key,
                    VersionRange {
                        min: k.min_version,
                        max: k.max_version,
                    },
                )
            })
            .collect();
        Ok(())
    }

    /// The highest version of `R` that the codec, this client and the broker all speak.
    pub fn version<R: Request>(&self) -> Result<i16> {
        let key = api_key::<R>()?;
        let Some(broker) = self.broker_versions.get(&R::KEY) else {
            bail!(
                "the broker at {} does not implement {key:?} (API key {})",
                self.addr,
                R::KEY
            );
        };
        let mut common = R::VERSIONS.intersect(broker);
        if let Some(max) = client_version_max(key) {
            common.max = common.max.min(max);
        }
        if common.is_empty() {
            bail!(
                "no common version of {key:?}: the broker at {} speaks {}, this client {}",
                self.addr,
                broker,
                R::VERSIONS
            );
        }
        Ok(common.max)
    }

    /// Sends `req` at the highest common version and returns the decoded response.
    pub fn send<R: Request>(&mut self, req: &R) -> Result<R::Response> {
        let v = self.version::<R>()?;
        self.send_at(req, v)
    }

    /// Sends `req` at `version` (built for that version) and returns the decoded response.
    pub fn send_at<R: Request>(&mut self, req: &R, version: i16) -> Result<R::Response> {
        let key = api_key::<R>()?;
        let mut frame = self
            .round_trip(key, version, req)
            .with_context(|| format!("{key:?} v{version} to {}", self.addr))?;
        R::Response::decode(&mut frame, version).map_err(|e| {
            anyhow!(
                "decoding {key:?} v{version} response from {}: {e}",
                self.addr
            )
        })
    }

    /// Sends a request that gets no response (Produce with acks=0).
    pub fn send_oneway<R: Request>(&mut self, req: &R, version: i16) -> Result<()> {
        let key = api_key::<R>()?;
        self.write_request(key, version, req)
            .with_context(|| format!("{key:?} v{version} to {}", self.addr))?;
        Ok(())
    }

    fn write_request<M: Encodable>(&mut self, key: ApiKey, version: i16, body: &M) -> Result<i32> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let header_version = key.request_header_version(version);
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, header_version)
            .map_err(|e| anyhow!("encoding the request header: {e}"))?;
        body.encode(&mut buf, version)
            .map_err(|e| anyhow!("encoding the request: {e}"))?;
        let size = (buf.len() - 4) as i32;
        buf[0..4].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&buf)?;
        Ok(self.correlation_id)
    }

    /// Writes one request and reads its response body (after the response header).
    fn round_trip<M: Encodable>(&mut self, key: ApiKey, version: i16, body: &M) -> Result<Bytes> {
        let correlation_id = self.write_request(key, version, body)?;
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .map_err(|e| read_error(e, "the response size"))?;
        let size = i32::from_be_bytes(size);
        if size < 4 || size as usize > RESPONSE_FRAME_BYTES_MAX {
            bail!("response frame of {size} bytes (a confused peer or not Kafka)");
        }
        let mut body = vec![0u8; size as usize];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| read_error(e, "the response"))?;
        let mut frame = Bytes::from(body);
        let header = ResponseHeader::decode(&mut frame, key.response_header_version(version))
            .map_err(|e| anyhow!("decoding the response header: {e}"))?;
        if header.correlation_id != correlation_id {
            bail!(
                "response correlation id {} for request {correlation_id}",
                header.correlation_id
            );
        }
        Ok(frame)
    }
}

fn read_error(e: std::io::Error, what: &str) -> anyhow::Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            anyhow!("timed out waiting for {what}")
        }
        std::io::ErrorKind::UnexpectedEof => anyhow!("the broker closed the connection"),
        _ => anyhow!("reading {what}: {e}"),
    }
}

fn api_key<R: Request>() -> Result<ApiKey> {
    ApiKey::try_from(R::KEY).map_err(|_| anyhow!("unknown API key {}", R::KEY))
}
