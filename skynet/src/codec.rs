//! Payload encodings: the only module that knows which serializer is behind each [`Encoding`].
//!
//! bincode 2 is compact and fast for Rust callers; JSON lets dynamic callers (routers, initiators,
//! other languages) talk to the same typed service. Both decode on the service side because the
//! service knows its types. Keeping every serializer call here means a later change of the binary
//! format touches one file.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// How a call's payload is encoded on the wire. The reply uses the request's encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Encoding {
    /// bincode 2, standard configuration (varint integers, little endian).
    Bincode,
    /// UTF-8 JSON, as produced by `serde_json`.
    Json,
}

impl Encoding {
    /// The byte that names this encoding in the envelope.
    pub const fn to_wire(self) -> u8 {
        match self {
            Encoding::Bincode => 0,
            Encoding::Json => 1,
        }
    }

    /// Reads the envelope's encoding byte.
    pub const fn from_wire(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Encoding::Bincode),
            1 => Some(Encoding::Json),
            _ => None,
        }
    }
}

/// A payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CodecError {
    /// The bytes were not a valid encoding of the expected type.
    #[error("cannot decode {encoding:?} payload: {message}")]
    Decode {
        /// The encoding that was tried.
        encoding: Encoding,
        /// What the decoder reported.
        message: String,
    },
    /// The value could not be encoded.
    #[error("cannot encode {encoding:?} payload: {message}")]
    Encode {
        /// The encoding that was tried.
        encoding: Encoding,
        /// What the encoder reported.
        message: String,
    },
    /// The payload decoded, but bytes were left over after the value.
    #[error("{extra} trailing bytes after the {encoding:?} payload")]
    Trailing {
        /// The encoding that was tried.
        encoding: Encoding,
        /// How many bytes were left.
        extra: usize,
    },
}

/// An upper bound on what bincode may claim to allocate while decoding one payload. Frames are
/// already bounded by the transport's frame limit; this stops a hostile length prefix inside a
/// payload from asking for more than a frame could carry.
const BINCODE_DECODE_LIMIT: usize = 1 << 30;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<BINCODE_DECODE_LIMIT>()
}

/// Appends the encoding of `value` to `out`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    encoding: Encoding,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    match encoding {
        Encoding::Bincode => bincode::serde::encode_into_std_write(value, out, bincode_config())
            .map(drop)
            .map_err(|e| CodecError::Encode {
                encoding,
                message: e.to_string(),
            }),
        Encoding::Json => serde_json::to_writer(out, value).map_err(|e| CodecError::Encode {
            encoding,
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
/// Encodes `value` into a new buffer.
pub(crate) fn encode<T: Serialize + ?Sized>(
    encoding: Encoding,
    value: &T,
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(encoding, value, &mut out)?;
    Ok(out)
}

/// Decodes one whole value of type `T` from `bytes`; trailing bytes are an error.
pub(crate) fn decode<T: DeserializeOwned>(
    encoding: Encoding,
    bytes: &[u8],
) -> Result<T, CodecError> {
    match encoding {
        Encoding::Bincode => {
            let (value, used) = bincode::serde::decode_from_slice(bytes, bincode_config())
                .map_err(|e| CodecError::Decode {
                    encoding,
                    message: e.to_string(),
                })?;
            if used != bytes.len() {
                return Err(CodecError::Trailing {
                    encoding,
                    extra: bytes.len() - used,
                });
            }
            Ok(value)
        }
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| CodecError::Decode {
            encoding,
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        count: u32,
        tags: Vec<String>,
    }

    fn sample() -> Sample {
        Sample {
            name: "widget".into(),
            count: 7,
            tags: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn both_encodings_round_trip() {
        for encoding in [Encoding::Bincode, Encoding::Json] {
            let bytes = encode(encoding, &sample()).expect("encode");
            let back: Sample = decode(encoding, &bytes).expect("decode");
            assert_eq!(back, sample());
        }
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let err = decode::<Sample>(Encoding::Json, b"{not json").expect_err("must fail");
        assert!(matches!(err, CodecError::Decode { .. }), "{err}");
        let err = decode::<Sample>(Encoding::Bincode, &[0xff; 3]).expect_err("must fail");
        assert!(matches!(err, CodecError::Decode { .. }), "{err}");
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate() {
        // A varint length of u64::MAX for the first string: must fail fast, not try to allocate.
        let mut bytes = vec![0xff];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        let err = decode::<Sample>(Encoding::Bincode, &bytes).expect_err("must fail");
        assert!(matches!(err, CodecError::Decode { .. }), "{err}");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(Encoding::Bincode, &sample()).expect("encode");
        bytes.push(0);
        let err = decode::<Sample>(Encoding::Bincode, &bytes).expect_err("must fail");
        assert!(
            matches!(err, CodecError::Trailing { extra: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn encoding_bytes_round_trip() {
        for encoding in [Encoding::Bincode, Encoding::Json] {
            assert_eq!(Encoding::from_wire(encoding.to_wire()), Some(encoding));
        }
        assert_eq!(Encoding::from_wire(9), None);
    }
}
