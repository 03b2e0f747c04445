//! InitProducerId (key 22), v0–v5, for idempotent producers: an id from the controller,
//! allocated durably a block at a time, and epoch 0 — or, when the producer sends its current
//! id and epoch (v3+, KIP-360), the same id with the next epoch. Transactional producers need
//! a transaction coordinator, which does not exist yet: COORDINATOR_NOT_AVAILABLE.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use crate::kafka::Ctx;
use crate::metadata::controller::{ControllerRequest, ControllerResponse};

pub async fn handle(ctx: &Ctx, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let fail = |e: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(e.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if req.transactional_id.is_some() {
        return fail(ResponseError::CoordinatorNotAvailable);
    }
    let existing = (req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
    match ctx
        .shard
        .controller(ControllerRequest::InitProducerId { existing })
        .await
    {
        Ok(ControllerResponse::ProducerId(Ok((id, epoch)))) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
        Ok(ControllerResponse::ProducerId(Err(e))) | Err(e) => fail(e.code),
        Ok(_) => fail(ResponseError::UnknownServerError),
    }
}
