//! Shards, mesh and controller together, deterministically: a metadata change sent from any
//! shard goes through the controller on shard 0, is persisted, and is applied on every shard
//! before the caller gets its answer; a restart replays it.

use std::sync::{Arc, Mutex};

use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use spate_broker::config::{Args, Config};
use spate_broker::metadata::controller::{ControllerRequest, ControllerResponse, CreateTopicSpec};
use spate_broker::metadata::{MetadataImage, MetadataRecord};
use spate_broker::shard::{mesh, Shard};
use spate_storage::metastore::MetaStore;

const SHARDS: usize = 3;

fn spec(name: &str, partitions: i32) -> CreateTopicSpec {
    CreateTopicSpec {
        name: name.into(),
        num_partitions: partitions,
        replication_factor: 1,
        assignments: vec![],
        configs: vec![("retention.ms".into(), Some("1234".into()))],
    }
}

/// Runs `SHARDS` executors; shard `caller` creates `topic`; returns every shard's view of it
/// as (shard id, partition shards) once all shards are done.
fn run_cluster(
    data_dir: &std::path::Path,
    store: MetaStore,
    image: MetadataImage,
    caller: usize,
    topic: &'static str,
) -> Vec<(usize, Option<Vec<u32>>)> {
    let mut config = Config::resolve(Args::default()).unwrap();
    config.smp = SHARDS;
    config.data_dir = data_dir.to_path_buf();
    let sentinel = spate_storage::dma::prepare_sentinel(data_dir).unwrap();
    let builder = mesh::builder(SHARDS);
    let views = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (views2, done2) = (views.clone(), done.clone());
    LocalExecutorPoolBuilder::new(PoolPlacement::Unbound(SHARDS))
        .io_memory(256 << 10)
        .on_all_shards(move || async move {
            let (id, mesh, io) = mesh::join(builder).await.unwrap();
            let shard = std::rc::Rc::new(Shard::new(
                config,
                image,
                mesh,
                store,
                sentinel,
                spate_broker::consensus::LeaderEpochs::new(),
                Default::default(),
            ));
            mesh::start(shard.clone(), io);
            if id == caller {
                let resp = shard
                    .controller(ControllerRequest::CreateTopics {
                        topics: vec![spec(topic, 4), spec(topic, 1), spec("bad/name", 1)],
                        validate_only: false,
                    })
                    .await
                    .unwrap();
                let ControllerResponse::CreateTopics(results) = resp else {
                    panic!("wrong response type")
                };
                assert!(
                    results[0].is_err(),
                    "duplicate names in one request are rejected"
                );
                assert!(results[2].is_err());
                let resp = shard
                    .controller(ControllerRequest::CreateTopics {
                        topics: vec![spec(topic, 4)],
                        validate_only: false,
                    })
                    .await
                    .unwrap();
                let ControllerResponse::CreateTopics(results) = resp else {
                    panic!("wrong response type")
                };
                assert_eq!(results[0].as_ref().unwrap().num_partitions, 4);
            }
            done2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Keep serving the mesh until every shard is done.
            while done2.load(std::sync::atomic::Ordering::SeqCst) < SHARDS {
                glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            }
            let img = shard.image.borrow();
            views2.lock().unwrap().push((
                id,
                img.topics.get(topic).map(|t| t.partition_shards.clone()),
            ));
        })
        .unwrap()
        .join_all();
    let mut v = views.lock().unwrap().clone();
    v.sort();
    v
}

/// Partition logs need O_DIRECT: keep test data on the real disk (the target dir), not tmpfs.
fn data_dir() -> tempfile::TempDir {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/broker-tests");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

#[test]
fn a_change_from_any_shard_is_applied_everywhere_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec, thread) = MetaStore::open(dir.path()).unwrap();
    assert!(rec.controller_log.is_empty());
    let data = data_dir();
    let views = run_cluster(
        data.path(),
        store.clone(),
        MetadataImage::new(SHARDS),
        2,
        "orders",
    );
    assert_eq!(views.len(), SHARDS);
    for (shard, partitions) in &views {
        let partitions = partitions
            .as_ref()
            .unwrap_or_else(|| panic!("shard {shard} lacks the topic"));
        // Least-loaded placement over 3 empty shards.
        assert_eq!(partitions, &vec![0, 1, 2, 0]);
    }
    store.stop();
    thread.join();

    // Restart: the controller log replays into the same image.
    let (store, rec, thread) = MetaStore::open(dir.path()).unwrap();
    let mut image = MetadataImage::new(SHARDS);
    for (index, data) in &rec.controller_log {
        let records: Vec<MetadataRecord> = serde_json::from_slice(data).unwrap();
        image.apply(*index, &records);
    }
    let t = &image.topics["orders"];
    assert_eq!(t.partition_shards, vec![0, 1, 2, 0]);
    assert_eq!(t.configs["retention.ms"], "1234");
    store.stop();
    thread.join();
}
