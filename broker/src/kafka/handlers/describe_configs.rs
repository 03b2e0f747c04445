//! DescribeConfigs (key 32), v1–v4: topic and broker resources with Kafka's names, sources
//! and synonyms.

use std::collections::BTreeMap;

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::s;
use crate::kafka::Ctx;
use crate::metadata::configs::{self, source, ConfigType, TOPIC_CONFIGS};
use crate::metadata::controller::resource;
use crate::metadata::MetadataImage;

struct Entry {
    name: String,
    value: String,
    ty: ConfigType,
    source: i8,
    read_only: bool,
    doc: &'static str,
    synonyms: Vec<(String, String, i8)>,
}

/// The chain of places a topic config's value can come from, highest precedence first.
fn synonym_chain(
    img: &MetadataImage,
    def: &configs::TopicConfigDef,
    overrides: Option<&BTreeMap<String, String>>,
    node: i32,
) -> Vec<(String, String, i8)> {
    let mut out = Vec::new();
    if let Some(v) = overrides.and_then(|o| o.get(def.name)) {
        out.push((
            def.name.to_string(),
            v.clone(),
            source::DYNAMIC_TOPIC_CONFIG,
        ));
    }
    if let Some(v) = img
        .node_configs
        .get(&node)
        .and_then(|m| m.get(def.broker_synonym))
    {
        out.push((
            def.broker_synonym.to_string(),
            v.clone(),
            source::DYNAMIC_BROKER_CONFIG,
        ));
    }
    if let Some(v) = img.cluster_configs.get(def.broker_synonym) {
        out.push((
            def.broker_synonym.to_string(),
            v.clone(),
            source::DYNAMIC_DEFAULT_BROKER_CONFIG,
        ));
    }
    out.push((
        def.broker_synonym.to_string(),
        def.default.to_string(),
        source::DEFAULT_CONFIG,
    ));
    out
}

fn topic_entries(
    img: &MetadataImage,
    overrides: &BTreeMap<String, String>,
    node: i32,
) -> Vec<Entry> {
    img.effective_topic_configs(overrides, node)
        .into_iter()
        .map(|(def, value, src)| Entry {
            name: def.name.to_string(),
            value,
            ty: def.ty,
            source: src,
            read_only: false,
            doc: def.doc,
            synonyms: synonym_chain(img, def, Some(overrides), node),
        })
        .collect()
}

fn broker_entries(ctx: &Ctx, img: &MetadataImage, node: Option<i32>) -> Vec<Entry> {
    let cfg = &ctx.shard.config;
    let Some(node) = node else {
        // The cluster-default resource lists only what has been set dynamically.
        return img
            .cluster_configs
            .iter()
            .filter_map(|(k, v)| configs::by_broker_synonym(k).map(|d| (d, k, v)))
            .map(|(def, k, v)| Entry {
                name: k.clone(),
                value: v.clone(),
                ty: def.ty,
                source: source::DYNAMIC_DEFAULT_BROKER_CONFIG,
                read_only: false,
                doc: def.doc,
                synonyms: vec![(k.clone(), v.clone(), source::DYNAMIC_DEFAULT_BROKER_CONFIG)],
            })
            .collect();
    };
    let mut out: Vec<Entry> = configs::static_broker_configs(
        node,
        cfg.default_partitions,
        cfg.default_replication_factor,
        &cfg.advertised_kafka_addr,
    )
    .into_iter()
    .map(|(name, value, ty)| Entry {
        name: name.to_string(),
        synonyms: vec![(
            name.to_string(),
            value.clone(),
            source::STATIC_BROKER_CONFIG,
        )],
        value,
        ty,
        source: source::STATIC_BROKER_CONFIG,
        read_only: true,
        doc: "",
    })
    .collect();
    for def in TOPIC_CONFIGS {
        let chain = synonym_chain(img, def, None, node);
        let (value, src) = (chain[0].1.clone(), chain[0].2);
        out.push(Entry {
            name: def.broker_synonym.to_string(),
            value,
            ty: def.ty,
            source: src,
            read_only: false,
            doc: def.doc,
            synonyms: chain,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

pub fn handle(ctx: &Ctx, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let node = ctx.shard.config.node_id;
    let img = ctx.shard.image.borrow();
    let results = req
        .resources
        .iter()
        .map(|res| {
            let base = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let entries: Result<Vec<Entry>, (ResponseError, String)> = match res.resource_type {
                resource::TOPIC => match img.topics.get(res.resource_name.as_str()) {
                    Some(t) => Ok(topic_entries(&img, &t.configs, node)),
                    None => Err((
                        ResponseError::UnknownTopicOrPartition,
                        format!("Topic '{}' does not exist.", &*res.resource_name),
                    )),
                },
                resource::BROKER => {
                    if res.resource_name.is_empty() {
                        Ok(broker_entries(ctx, &img, None))
                    } else {
                        match res.resource_name.parse::<i32>() {
                            Ok(n) if n == node => Ok(broker_entries(ctx, &img, Some(n))),
                            _ => Err((
                                ResponseError::InvalidRequest,
                                format!("Unknown broker '{}'.", &*res.resource_name),
                            )),
                        }
                    }
                }
                other => Err((
                    ResponseError::InvalidRequest,
                    format!("Describing configs of resource type {other} is not supported."),
                )),
            };
            match entries {
                Err((code, msg)) => base
                    .with_error_code(code.code())
                    .with_error_message(Some(s(msg))),
                Ok(entries) => {
                    let wanted = res.configuration_keys.as_ref();
                    let configs = entries
                        .into_iter()
                        .filter(|e| {
                            wanted.is_none_or(|keys| keys.iter().any(|k| k.as_str() == e.name))
                        })
                        .map(|e| {
                            let synonyms = if req.include_synonyms {
                                e.synonyms
                                    .into_iter()
                                    .map(|(n, v, src)| {
                                        DescribeConfigsSynonym::default()
                                            .with_name(s(n))
                                            .with_value(Some(s(v)))
                                            .with_source(src)
                                    })
                                    .collect()
                            } else {
                                Vec::new()
                            };
                            let doc = (req.include_documentation && !e.doc.is_empty())
                                .then(|| StrBytes::from_static_str(e.doc));
                            DescribeConfigsResourceResult::default()
                                .with_name(s(e.name))
                                .with_value(Some(s(e.value)))
                                .with_read_only(e.read_only)
                                .with_config_source(e.source)
                                .with_is_sensitive(false)
                                .with_synonyms(synonyms)
                                .with_config_type(e.ty as i8)
                                .with_documentation(doc)
                        })
                        .collect();
                    base.with_error_message(None).with_configs(configs)
                }
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}
