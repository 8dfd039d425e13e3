//! The one place that knows the on-disk and on-wire byte format.
//!
//! bincode 2 is used through its serde bridge. The bincode project has stopped (3.0.0 is an empty
//! tombstone), so everything goes through these two functions and a later swap touches one file.
//! bincode is not self-describing: types encoded here must not use `#[serde(untagged)]`, `flatten` or
//! `skip_serializing_if`.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encoding or decoding failed (corrupt or incompatible bytes).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CodecError {
    /// Encoding failed.
    #[error("encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// Decoding failed.
    #[error("decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// Encodes a value.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, config())?)
}

/// Decodes a value; trailing bytes are ignored.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(bincode::serde::decode_from_slice(bytes, config())?.0)
}
