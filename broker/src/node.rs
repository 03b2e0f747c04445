//! Node start-up and shutdown: the data dir, the metadata store, the shard pool.
//!
//! Start: lock the data dir → write the DMA sentinel → open the metadata store and replay the
//! controller log into an image → start one executor per shard; each shard reads the sentinel,
//! joins the mesh and binds the Kafka listener (SO_REUSEPORT).
//! Stop (SIGTERM/SIGINT): every shard stops accepting and reading, answers what it has read,
//! waits for its connections (bounded by `shutdown_timeout_ms`), then waits until every shard
//! has drained (still serving mesh requests meanwhile); then the metadata store flushes and
//! the process exits 0.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use glommio::net::TcpListener;
use spate_net::conn::{serve, ConnLimits};
use spate_storage::dma;
use spate_storage::metastore::MetaStore;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::admin::{AdminServer, AdminState};
use crate::config::Config;
use crate::kafka::KafkaConn;
use crate::metadata::{MetadataImage, MetadataRecord};
use crate::shard::{mesh, Shard};

/// Logs to stderr; `RUST_LOG` wins over the configured filter. glommio logs through `log`,
/// which the subscriber bridges (tracing-log), so its warnings show up here too.
pub fn init_tracing(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// An exclusive lock on the data dir, held for the life of the process.
struct DataDirLock(#[allow(dead_code)] File);

fn lock_data_dir(dir: &Path) -> Result<DataDirLock> {
    let path = dir.join(".lock");
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "data dir {} is in use by another spated process",
            dir.display()
        );
    }
    Ok(DataDirLock(file))
}

/// Kafka's cluster id form: a random UUID in URL-safe base64 without padding (22 chars).
fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut out = String::with_capacity(22);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(ALPHABET[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (6 - bits)) & 63) as usize] as char);
    }
    out
}

/// Replays the controller log into a fresh image.
fn replay(nr_shards: usize, log: &[(u64, bytes::Bytes)]) -> Result<MetadataImage> {
    let mut image = MetadataImage::new(nr_shards);
    for (index, data) in log {
        let records: Vec<MetadataRecord> = serde_json::from_slice(data)
            .with_context(|| format!("controller log entry {index} is not readable"))?;
        image.apply(*index, &records);
    }
    Ok(image)
}

/// Everything one shard needs to start (cloned into every executor).
#[derive(Clone)]
struct ShardBoot {
    config: Config,
    image: MetadataImage,
    store: MetaStore,
    mesh: mesh::MeshBuilderT,
    sentinel: PathBuf,
    stop: Arc<AtomicBool>,
    listening: Arc<AtomicUsize>,
    /// Shards that have opened their partitions.
    opened: Arc<AtomicUsize>,
    drained: Arc<AtomicUsize>,
    view: Arc<crate::view::NodeView>,
    /// Partition leader epochs, shared by the shards (see `crate::consensus`).
    epochs: Arc<crate::consensus::LeaderEpochs>,
    /// The Raft groups' metadata as the metadata store recovered it; each shard takes its
    /// partitions' groups out when it opens them.
    groups: crate::consensus::RecoveredGroups,
}

/// Whether `dir` is on tmpfs (no O_DIRECT: glommio falls back to buffered I/O there).
fn on_tmpfs(dir: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we pass; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(path.as_ptr(), &mut st) == 0 && st.f_type as i64 == TMPFS_MAGIC
    }
}

pub fn run(mut config: Config) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    // Absolute from here on: with a relative data dir (the default, ./data) every directory
    // fsync of the partition logs failed with EBADF.
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .with_context(|| format!("resolving data dir {}", config.data_dir.display()))?;
    if on_tmpfs(&config.data_dir) {
        warn!(
            data_dir = %config.data_dir.display(),
            "data dir is on tmpfs: no O_DIRECT (glommio uses buffered I/O) and nothing survives \
             a reboot; use ext4 or xfs for real data"
        );
    }
    let _lock = lock_data_dir(&config.data_dir)?;
    let sentinel = dma::prepare_sentinel(&config.data_dir)?;
    // Outside the reactor, once: one I/O never exceeds what the device takes at once.
    let max_io = dma::device_max_io(&config.data_dir);
    config.max_io_bytes = max_io.bytes;
    match &max_io.found {
        Some((kb, file)) => info!(
            max_io_bytes = max_io.bytes,
            max_sectors_kb = kb,
            source = %file.display(),
            "cap on one segment I/O: the device's max_sectors_kb (bounded to 4 KiB..=1 MiB)"
        ),
        None => info!(
            max_io_bytes = max_io.bytes,
            "cap on one segment I/O: the default (the data dir's block device is unknown)"
        ),
    }
    let (store, recovered, store_thread) = MetaStore::open(&config.data_dir.join("meta"))?;
    let mut image = replay(config.smp, &recovered.controller_log)?;
    if image.cluster_id.is_empty() {
        let records = vec![MetadataRecord::ClusterInit {
            cluster_id: new_cluster_id(),
        }];
        let index = futures_lite::future::block_on(
            store.append_controller(serde_json::to_vec(&records)?.into()),
        )?;
        image.apply(index, &records);
        info!(cluster_id = %image.cluster_id, "new cluster initialised");
    }
    info!(
        cluster_id = %image.cluster_id,
        node_id = config.node_id,
        topics = image.topics.len(),
        partitions = image.partition_count(),
        applied_index = image.applied_index,
        "metadata recovered"
    );

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handler")?;
    }

    let listening = Arc::new(AtomicUsize::new(0));
    let opened = Arc::new(AtomicUsize::new(0));
    let view = crate::view::NodeView::new(config.smp);
    let admin = AdminServer::start(
        config.admin_addr,
        AdminState {
            shards: config.smp,
            listening: listening.clone(),
            stopping: stop.clone(),
            view: view.clone(),
        },
    )?;
    let boot = ShardBoot {
        mesh: mesh::builder(config.smp),
        image,
        store: store.clone(),
        sentinel,
        stop,
        listening,
        opened,
        drained: Arc::new(AtomicUsize::new(0)),
        view,
        epochs: crate::consensus::LeaderEpochs::new(),
        groups: Arc::new(std::sync::Mutex::new(recovered.groups)),
        config: config.clone(),
    };
    let results = crate::rt::pool(&config)?
        .on_all_shards(move || shard_main(boot))
        .map_err(|e| anyhow::anyhow!("starting shards: {e}"))?
        .join_all();
    admin.stop();
    store.stop();
    store_thread.join();
    let mut failed = false;
    for r in results {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!("shard failed: {e:#}");
                failed = true;
            }
            Err(e) => {
                error!("shard thread failed: {e}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("one or more shards failed");
    }
    info!("spated stopped");
    Ok(())
}

async fn shard_main(boot: ShardBoot) -> Result<()> {
    dma::touch_sentinel(&boot.sentinel).await?;
    let (id, mesh, io) = mesh::join(boot.mesh).await?;
    let nr_shards = mesh.nr_shards();
    let config = boot.config;
    let shard = Rc::new(Shard::new(
        config.clone(),
        boot.image,
        mesh,
        boot.store,
        boot.sentinel.clone(),
        boot.epochs.clone(),
        boot.groups.clone(),
    ));
    mesh::start(shard.clone(), io);
    // Open (and recover) the partitions this shard owns before taking clients.
    let image = shard.image.borrow().clone();
    shard.partitions.reconcile(&image, nr_shards).await;
    info!(
        shard = id,
        partitions = shard.partitions.len(),
        "partitions open"
    );
    // No shard takes clients before every shard has opened its partitions: a request
    // landing on a ready shard is forwarded to the partition's owner, which must have it.
    boot.opened.fetch_add(1, Ordering::SeqCst);
    while boot.opened.load(Ordering::SeqCst) < nr_shards {
        if boot.stop.load(Ordering::Relaxed) {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    crate::groups::start_ticker(shard.clone());
    crate::view::start_publisher(shard.clone(), boot.view.clone());
    crate::view::start_lag_probe(shard.clone());
    crate::retention::start(shard.clone());

    let listener = TcpListener::bind(config.kafka_addr).map_err(|e| {
        anyhow::anyhow!(
            "shard {id}: binding Kafka listener on {}: {e}",
            config.kafka_addr
        )
    })?;
    if boot.listening.fetch_add(1, Ordering::SeqCst) + 1 == nr_shards {
        info!(
            addr = %config.kafka_addr,
            advertised = ?config.advertised_kafka_addr,
            shards = nr_shards,
            "spated ready: Kafka listener up on every shard"
        );
    }

    // Signals land in an atomic flag; each shard polls it and fires its local shutdown.
    let watcher = {
        let shard = shard.clone();
        let stop = boot.stop.clone();
        glommio::spawn_local(async move {
            while !stop.load(Ordering::Relaxed) {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            shard.shutdown.fire();
        })
    };
    watcher.detach();

    let limits = ConnLimits {
        frame_bytes_max: config.request_frame_bytes_max,
        inflight_requests_max: config.inflight_requests_per_connection_max,
        idle_timeout: config.connections_max_idle,
    };
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.shutdown.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                warn!(shard = id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = match stream.peer_addr() {
            Ok(p) => p,
            Err(_) => continue,
        };
        let shard = shard.clone();
        glommio::spawn_local(async move {
            shard.connections.set(shard.connections.get() + 1);
            shard.metrics.connections.inc();
            let conn = KafkaConn {
                shard: shard.clone(),
                peer,
            };
            serve(stream, peer, &conn, limits, &shard.shutdown).await;
            shard.connections.set(shard.connections.get() - 1);
            shard.metrics.connections.dec();
        })
        .detach();
    }
    drop(listener);

    let deadline = Instant::now() + config.shutdown_timeout;
    while shard.connections.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    if shard.connections.get() > 0 {
        warn!(
            shard = id,
            open = shard.connections.get(),
            "shutdown timeout: closing connections with requests in flight"
        );
    }
    // Keep serving other shards' mesh requests until every shard has drained.
    boot.drained.fetch_add(1, Ordering::SeqCst);
    while boot.drained.load(Ordering::SeqCst) < nr_shards {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    shard.partitions.close_all().await;
    shard.partitions.consensus.stop();
    info!(shard = id, "shard stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_look_like_kafkas() {
        let id = new_cluster_id();
        assert_eq!(id.len(), 22);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(id, new_cluster_id());
    }
}
