//! Which version of each API the client speaks, from the broker's
//! ApiVersions answer.

use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::VersionRange;

use crate::error::{Error, Kind, Result};
use crate::versions::UpstreamVersions;

/// The versions this client uses with one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub produce: i16,
    pub fetch: i16,
    pub metadata: i16,
    pub list_offsets: i16,
}

/// What the client can speak, newest preferred. Produce stops at v9 and
/// Fetch at v12: both still name topics (v13 switches to topic ids), and the
/// fetch scanner in this module reads v4-v12. ListOffsets starts at v1, the
/// first version with one offset per partition.
const PRODUCE: VersionRange = VersionRange { min: 3, max: 9 };
const FETCH: VersionRange = VersionRange { min: 4, max: 12 };
const METADATA: VersionRange = VersionRange { min: 1, max: 12 };
const LIST_OFFSETS: VersionRange = VersionRange { min: 1, max: 7 };

impl Versions {
    pub fn choose(broker: &UpstreamVersions) -> Result<Versions> {
        Ok(Versions {
            produce: pick(broker, ApiKey::Produce, PRODUCE)?,
            fetch: pick(broker, ApiKey::Fetch, FETCH)?,
            metadata: pick(broker, ApiKey::Metadata, METADATA)?,
            list_offsets: pick(broker, ApiKey::ListOffsets, LIST_OFFSETS)?,
        })
    }
}

/// The newest version both sides speak.
fn pick(broker: &UpstreamVersions, api: ApiKey, ours: VersionRange) -> Result<i16> {
    let theirs = broker.apis.get(&(api as i16)).ok_or_else(|| {
        Error::klink(
            Kind::Unsupported,
            format!("the broker does not offer {api:?}"),
        )
    })?;
    let max = ours.max.min(theirs.max);
    let min = ours.min.max(theirs.min);
    if min > max {
        return Err(Error::klink(
            Kind::Unsupported,
            format!(
                "no common {api:?} version: the broker speaks {}-{}, this client {}-{}",
                theirs.min, theirs.max, ours.min, ours.max
            ),
        ));
    }
    Ok(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(apis: &[(ApiKey, i16, i16)]) -> UpstreamVersions {
        UpstreamVersions {
            apis: apis
                .iter()
                .map(|&(k, min, max)| (k as i16, VersionRange { min, max }))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn newest_common_version_wins() {
        let v = Versions::choose(&broker(&[
            (ApiKey::Produce, 0, 11),
            (ApiKey::Fetch, 0, 7),
            (ApiKey::Metadata, 0, 12),
            (ApiKey::ListOffsets, 0, 9),
        ]))
        .expect("versions");
        assert_eq!(
            v,
            Versions {
                produce: 9,
                fetch: 7,
                metadata: 12,
                list_offsets: 7
            }
        );
    }

    #[test]
    fn a_missing_api_or_no_overlap_is_an_error() {
        let missing = broker(&[(ApiKey::Produce, 0, 9)]);
        assert!(Versions::choose(&missing).is_err());
        let too_new = broker(&[
            (ApiKey::Produce, 10, 13),
            (ApiKey::Fetch, 0, 12),
            (ApiKey::Metadata, 0, 12),
            (ApiKey::ListOffsets, 0, 7),
        ]);
        let e = Versions::choose(&too_new).expect_err("no overlap");
        assert!(e.context.contains("Produce"), "{e}");
    }
}
