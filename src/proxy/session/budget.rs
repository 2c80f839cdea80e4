//! How much of its Fetch answers one client connection may have in klink's
//! memory. Answers wait in klink until the client reads them; a client that
//! reads slowly while it keeps asking would otherwise pile up to 128
//! answers of up to `max_frame_bytes` each. Each Fetch reserves what it
//! asks for at most (its `max_bytes`, v3 on; the whole budget before v3,
//! whose answers have no overall bound) before it is forwarded, and gives
//! it back once its answer is handed to the socket: past the budget klink
//! stops reading the client's requests, as a broker does.
//!
//! The bound per connection is the budget, except that a broker returns a
//! first record batch bigger than `max_bytes` whole (so that a consumer
//! always makes progress): one answer may exceed it, up to
//! `max_frame_bytes`.

use std::sync::Arc;

use kafka_protocol::messages::ApiKey;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::wire::{Frame, RequestHeader, fetch_max_bytes};

/// Permits count KiB, so that a budget of up to 4 TiB fits the semaphore's
/// `u32` acquisitions.
const UNIT: u64 = 1024;

pub(super) struct FetchBudget {
    permits: Arc<Semaphore>,
    units: u32,
}

/// A Fetch's share of the budget, given back when dropped.
pub(super) type Reserved = OwnedSemaphorePermit;

impl FetchBudget {
    pub(super) fn new(bytes: u32) -> FetchBudget {
        let units = u64::from(bytes).div_ceil(UNIT).max(1) as u32;
        FetchBudget {
            permits: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// Waits until the answer to `frame` fits in the budget, when it is a
    /// Fetch; `None` for other requests (their answers are small) and for a
    /// frame whose header does not parse (the session refuses it).
    pub(super) async fn reserve(&self, frame: &Frame) -> Option<Reserved> {
        let payload = frame.payload();
        if payload.get(..2) != Some(&(ApiKey::Fetch as i16).to_be_bytes()[..]) {
            return None;
        }
        let header = RequestHeader::parse(&payload).ok()?;
        let units = match fetch_max_bytes(&payload, &header) {
            Some(bytes) => u64::try_from(bytes).unwrap_or(0).div_ceil(UNIT).max(1),
            None => u64::from(self.units),
        };
        // A Fetch asking for more than the whole budget takes all of it:
        // it waits for the others, then goes alone.
        let units = units.min(u64::from(self.units)) as u32;
        self.permits.clone().acquire_many_owned(units).await.ok()
    }

    #[cfg(test)]
    fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::messages::{FetchRequest, MetadataRequest, RequestHeader as Header};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use super::*;

    fn frame(api: ApiKey, version: i16, body: &impl Encodable) -> Frame {
        let mut buf = BytesMut::from(&[0u8; 4][..]);
        Header::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_client_id(Some(StrBytes::from_static_str("slow")))
            .encode(&mut buf, api.request_header_version(version))
            .expect("header");
        body.encode(&mut buf, version).expect("body");
        let length = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&length.to_be_bytes());
        Frame::from_prefixed(buf.freeze())
    }

    fn fetch(max_bytes: i32) -> Frame {
        frame(
            ApiKey::Fetch,
            12,
            &FetchRequest::default().with_max_bytes(max_bytes),
        )
    }

    #[tokio::test]
    async fn fetches_wait_for_room_and_other_requests_do_not() {
        let budget = FetchBudget::new(4 * 1024 * 1024);
        let first = budget.reserve(&fetch(3 * 1024 * 1024)).await;
        assert!(first.is_some());
        assert_eq!(budget.available(), 1024);
        let metadata = frame(ApiKey::Metadata, 9, &MetadataRequest::default());
        assert!(budget.reserve(&metadata).await.is_none(), "not a Fetch");
        // A second 3 MiB fetch waits until the first answer is written.
        let three_mib = fetch(3 * 1024 * 1024);
        let second = budget.reserve(&three_mib);
        tokio::pin!(second);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), &mut second);
        assert!(waited.await.is_err(), "reserved past the budget");
        drop(first);
        let second = second.await;
        assert!(second.is_some());
        assert_eq!(budget.available(), 1024);
    }

    #[tokio::test]
    async fn a_fetch_asking_more_than_the_budget_goes_alone_and_an_unknown_ask_takes_it_all() {
        let budget = FetchBudget::new(1024 * 1024);
        let big = budget.reserve(&fetch(i32::MAX)).await;
        assert!(big.is_some(), "capped at the budget, so it can be had");
        assert_eq!(budget.available(), 0);
        drop(big);
        // Too short to say what it asks for (as a Fetch before v3, which
        // has no overall max_bytes): the whole budget.
        let whole = fetch(1024);
        let cut = Frame::from_prefixed(whole.wire_bytes().slice(..whole.len() - 20));
        let unknown = budget.reserve(&cut).await;
        assert!(unknown.is_some());
        assert_eq!(budget.available(), 0);
        drop(unknown);
        let odd = budget.reserve(&fetch(-5)).await;
        assert_eq!(
            budget.available(),
            1023,
            "a negative max_bytes counts one unit"
        );
        drop(odd);
    }
}
