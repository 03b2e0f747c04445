//! One module per noun; each verb is a function that prints its result and says whether
//! every item succeeded.

pub mod cluster;
pub mod consume;
pub mod group;
pub mod produce;
pub mod topic;
pub mod tune;

use std::time::Duration;

use crate::client::Client;
use crate::output::Format;

pub struct Ctx {
    pub client: Client,
    pub format: Format,
}

impl Ctx {
    pub fn new(brokers: Vec<String>, format: Format, timeout: Duration) -> Ctx {
        let brokers = brokers
            .into_iter()
            .map(|b| b.trim().to_string())
            .filter(|b| !b.is_empty())
            .collect();
        Ctx {
            client: Client::new(brokers, timeout),
            format,
        }
    }

    pub fn json(&self) -> bool {
        self.format == Format::Json
    }
}
