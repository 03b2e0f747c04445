//! Cluster metadata: the records of the controller log, and the image every shard keeps.
//!
//! Lives on every shard (each holds its own [`MetadataImage`]); the controller on shard 0 is the
//! only writer, and it applies each committed record batch on every shard before answering.

pub mod configs;
pub mod controller;
pub mod image;
pub mod names;

pub use image::{MetadataImage, MetadataRecord, TopicMeta};
