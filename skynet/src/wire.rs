//! The frame format, with no I/O: building frames into buffers and parsing them from bytes.
//!
//! Every frame starts with a fixed 13-byte header so a reader can check the length against its
//! limit *before* it allocates, and can still answer an oversized request by id:
//!
//! ```text
//! u32 length   (big endian) bytes after this field: 9 + body length
//! u8  kind     1 = request, 2 = response, 3 = cancel
//! u64 id       (big endian) request id, chosen by the caller, unique per connection
//! ... body
//! ```
//!
//! `docs/protocol.md` is the full reference.

use std::time::Duration;

use crate::codec::Encoding;
use crate::trace::TraceId;

/// The newest request body version, carried in every request body. Version 2 adds a flags
/// byte and an optional trace id to version 1's head.
pub(crate) const VERSION: u8 = 2;
/// The oldest request body version still accepted.
pub(crate) const MIN_VERSION: u8 = 1;
/// Version 2 flag: a 16-byte trace id follows the flags byte.
const FLAG_TRACE_ID: u8 = 0x01;
/// Bytes in a frame header (length, kind, id).
pub(crate) const HEADER_LEN: usize = 13;
/// The smallest legal value of the length field (kind + id).
const MIN_LENGTH: u32 = 9;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// A call: caller to service.
    Request,
    /// The outcome of a call: service to caller.
    Response,
    /// The caller no longer wants the answer: service should stop the handler.
    Cancel,
}

impl FrameKind {
    const fn to_wire(self) -> u8 {
        match self {
            FrameKind::Request => 1,
            FrameKind::Response => 2,
            FrameKind::Cancel => 3,
        }
    }

    const fn from_wire(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(FrameKind::Request),
            2 => Some(FrameKind::Response),
            3 => Some(FrameKind::Cancel),
            _ => None,
        }
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// What the frame carries.
    pub kind: FrameKind,
    /// The call this frame belongs to.
    pub id: u64,
    /// Bytes of body that follow the header.
    pub body_len: usize,
}

/// A frame header that cannot be accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum HeaderError {
    /// The length field is smaller than the header itself.
    #[error("frame length {0} is shorter than a header")]
    TooShort(u32),
    /// The kind byte is not one this version knows.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The body is larger than this side accepts; the body is still on the stream.
    #[error("frame body of {body_len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The kind of the oversized frame.
        kind: FrameKind,
        /// The call it belongs to, so it can be answered.
        id: u64,
        /// Bytes announced.
        body_len: usize,
        /// This side's limit.
        limit: usize,
    },
}

/// Parses a header and checks the body length against `limit`.
pub(crate) fn parse_header(bytes: &[u8; HEADER_LEN], limit: usize) -> Result<Header, HeaderError> {
    let length = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if length < MIN_LENGTH {
        return Err(HeaderError::TooShort(length));
    }
    let kind = FrameKind::from_wire(bytes[4]).ok_or(HeaderError::UnknownKind(bytes[4]))?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[5..13]);
    let id = u64::from_be_bytes(id);
    let body_len = (length - MIN_LENGTH) as usize;
    if body_len > limit {
        return Err(HeaderError::TooLarge {
            kind,
            id,
            body_len,
            limit,
        });
    }
    Ok(Header { kind, id, body_len })
}

/// Starts a frame in `out`; returns the offset to hand to [`finish_frame`] once the body is
/// written.
fn start_frame(out: &mut Vec<u8>, kind: FrameKind, id: u64) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(kind.to_wire());
    out.extend_from_slice(&id.to_be_bytes());
    start
}

/// Writes the length field of the frame that begins at `start`. Returns the body length.
fn finish_frame(out: &mut [u8], start: usize) -> usize {
    let length = out.len() - start - 4;
    // Bodies are bounded far below 4 GiB by the callers' limits; saturate rather than wrap so a
    // bug shows up as an oversized-frame rejection instead of a desynchronised stream.
    let field = u32::try_from(length).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&field.to_be_bytes());
    length - MIN_LENGTH as usize
}

/// The routing part of a request: everything but the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RequestHead<'a> {
    /// Encoding of the payload; the reply uses the same one.
    pub encoding: Encoding,
    /// Time the caller still waits, measured from when it sent the request. `None`: no deadline.
    pub deadline: Option<Duration>,
    /// Service name, 1 to 255 bytes of UTF-8.
    pub service: &'a str,
    /// Method name, 1 to 255 bytes of UTF-8.
    pub method: &'a str,
    /// The chain of calls this call belongs to. A head without one is written as version 1,
    /// which every version of the protocol reads.
    pub trace_id: Option<TraceId>,
}

/// A request body that cannot be accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum RequestError {
    /// The body ended before the fixed fields did.
    #[error("request body truncated")]
    Truncated,
    /// A protocol version this side does not speak.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// Flag bits this side does not know, so it cannot tell where the names start.
    #[error("unknown request flags {0:#04x}")]
    Flags(u8),
    /// An encoding byte this side does not know.
    #[error("unknown payload encoding {0}")]
    Encoding(u8),
    /// A service or method name that is empty or not UTF-8.
    #[error("service and method names must be non-empty UTF-8")]
    Name,
}

/// A name on the wire is one length byte then the bytes; longer names cannot be sent.
pub(crate) const MAX_NAME_LEN: usize = 255;

/// Appends a whole request frame; `payload` writes the encoded argument after the head.
/// Returns the body length so the caller can check it against its own limit.
pub(crate) fn write_request<E>(
    out: &mut Vec<u8>,
    id: u64,
    head: &RequestHead<'_>,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<usize, E> {
    debug_assert!(head.service.len() <= MAX_NAME_LEN && head.method.len() <= MAX_NAME_LEN);
    let start = start_frame(out, FrameKind::Request, id);
    out.push(if head.trace_id.is_some() { 2 } else { 1 });
    out.push(head.encoding.to_wire());
    let micros = head.deadline.map_or(0, |d| {
        u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
    });
    out.extend_from_slice(&micros.to_be_bytes());
    if let Some(trace) = head.trace_id {
        out.push(FLAG_TRACE_ID);
        out.extend_from_slice(&trace.as_u128().to_be_bytes());
    }
    for name in [head.service, head.method] {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    }
    payload(out)?;
    Ok(finish_frame(out, start))
}

/// Sets the id of the frame at the start of `frame`, written earlier with a placeholder.
pub(crate) fn set_request_id(frame: &mut [u8], id: u64) {
    if let Some(field) = frame.get_mut(5..HEADER_LEN) {
        field.copy_from_slice(&id.to_be_bytes());
    }
}

/// Splits a request body into its head and payload.
pub(crate) fn parse_request(body: &[u8]) -> Result<(RequestHead<'_>, &[u8]), RequestError> {
    let [version, encoding, rest @ ..] = body else {
        return Err(RequestError::Truncated);
    };
    if !(MIN_VERSION..=VERSION).contains(version) {
        return Err(RequestError::Version(*version));
    }
    let encoding = Encoding::from_wire(*encoding).ok_or(RequestError::Encoding(*encoding))?;
    let (micros, mut rest) = rest
        .split_first_chunk::<8>()
        .ok_or(RequestError::Truncated)?;
    let micros = u64::from_be_bytes(*micros);
    let deadline = (micros != 0).then(|| Duration::from_micros(micros));
    let mut trace_id = None;
    if *version >= 2 {
        let (&flags, after) = rest.split_first().ok_or(RequestError::Truncated)?;
        if flags & !FLAG_TRACE_ID != 0 {
            return Err(RequestError::Flags(flags));
        }
        rest = after;
        if flags & FLAG_TRACE_ID != 0 {
            let (raw, after) = rest
                .split_first_chunk::<16>()
                .ok_or(RequestError::Truncated)?;
            trace_id = Some(TraceId::from_u128(u128::from_be_bytes(*raw)));
            rest = after;
        }
    }
    let (service, rest) = take_name(rest)?;
    let (method, payload) = take_name(rest)?;
    Ok((
        RequestHead {
            encoding,
            deadline,
            service,
            method,
            trace_id,
        },
        payload,
    ))
}

fn take_name(bytes: &[u8]) -> Result<(&str, &[u8]), RequestError> {
    let (&len, rest) = bytes.split_first().ok_or(RequestError::Truncated)?;
    let (name, rest) = rest
        .split_at_checked(len as usize)
        .ok_or(RequestError::Truncated)?;
    let name = std::str::from_utf8(name).map_err(|_| RequestError::Name)?;
    if name.is_empty() {
        return Err(RequestError::Name);
    }
    Ok((name, rest))
}

/// The outcome class of a call, first byte of a response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum Status {
    /// The handler returned `Ok`; the payload is the encoded response.
    Ok,
    /// The handler returned `Err`; the payload is the service's encoded error value.
    ServiceError,
    /// No such service or method here; the payload is a UTF-8 message.
    NotFound,
    /// The deadline passed before the handler finished; UTF-8 message.
    DeadlineExceeded,
    /// The request could not be decoded or is malformed; UTF-8 message.
    BadRequest,
    /// The request exceeded the receiver's frame limit; UTF-8 message.
    TooLarge,
    /// The handler panicked or the reply could not be encoded; UTF-8 message.
    Internal,
    /// The node is over its concurrency limit; the call was not run; UTF-8 message. Safe to
    /// retry elsewhere.
    Unavailable,
    /// The node is stopping: it refuses every new call to its services from the moment its
    /// shutdown begins; the call was not run; UTF-8 message. Safe to retry elsewhere.
    Stopping,
}

impl Status {
    const fn to_wire(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::ServiceError => 1,
            Status::NotFound => 2,
            Status::DeadlineExceeded => 3,
            Status::BadRequest => 4,
            Status::TooLarge => 5,
            Status::Internal => 6,
            Status::Unavailable => 7,
            Status::Stopping => 8,
        }
    }

    const fn from_wire(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Status::Ok,
            1 => Status::ServiceError,
            2 => Status::NotFound,
            3 => Status::DeadlineExceeded,
            4 => Status::BadRequest,
            5 => Status::TooLarge,
            6 => Status::Internal,
            7 => Status::Unavailable,
            8 => Status::Stopping,
            _ => return None,
        })
    }
}

/// Appends a whole response frame; `payload` writes the body after status and encoding.
pub(crate) fn write_response<E>(
    out: &mut Vec<u8>,
    id: u64,
    status: Status,
    encoding: Encoding,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<usize, E> {
    let start = start_frame(out, FrameKind::Response, id);
    out.push(status.to_wire());
    out.push(encoding.to_wire());
    payload(out)?;
    Ok(finish_frame(out, start))
}

/// Appends a response frame whose payload is a UTF-8 message.
pub(crate) fn write_response_message(out: &mut Vec<u8>, id: u64, status: Status, message: &str) {
    let written: Result<usize, std::convert::Infallible> =
        write_response(out, id, status, Encoding::Json, |out| {
            out.extend_from_slice(message.as_bytes());
            Ok(())
        });
    let _ = written;
}

/// A response body that cannot be understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ResponseError {
    /// The body is shorter than status and encoding.
    #[error("response body truncated")]
    Truncated,
    /// A status byte this side does not know.
    #[error("unknown response status {0}")]
    Status(u8),
    /// An encoding byte this side does not know.
    #[error("unknown payload encoding {0}")]
    Encoding(u8),
}

/// Splits a response body into status, encoding and payload.
pub(crate) fn parse_response(body: &[u8]) -> Result<(Status, Encoding, &[u8]), ResponseError> {
    let [status, encoding, payload @ ..] = body else {
        return Err(ResponseError::Truncated);
    };
    let status = Status::from_wire(*status).ok_or(ResponseError::Status(*status))?;
    let encoding = Encoding::from_wire(*encoding).ok_or(ResponseError::Encoding(*encoding))?;
    Ok((status, encoding, payload))
}

/// Appends a cancel frame for call `id`.
pub(crate) fn write_cancel(out: &mut Vec<u8>, id: u64) {
    let start = start_frame(out, FrameKind::Cancel, id);
    finish_frame(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(frame: &[u8], limit: usize) -> Result<Header, HeaderError> {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&frame[..HEADER_LEN]);
        parse_header(&h, limit)
    }

    #[test]
    fn request_round_trips() {
        let head = RequestHead {
            encoding: Encoding::Json,
            deadline: Some(Duration::from_millis(1500)),
            service: "widgets",
            method: "get",
            trace_id: None,
        };
        let mut out = Vec::new();
        let body_len = write_request::<()>(&mut out, 42, &head, |o| {
            o.extend_from_slice(b"{}");
            Ok(())
        })
        .expect("write");
        let header = header_of(&out, 1024).expect("header");
        assert_eq!(header.kind, FrameKind::Request);
        assert_eq!(header.id, 42);
        assert_eq!(header.body_len, body_len);
        assert_eq!(out.len(), HEADER_LEN + body_len);
        let (parsed, payload) = parse_request(&out[HEADER_LEN..]).expect("parse");
        assert_eq!(parsed, head);
        assert_eq!(payload, b"{}");
    }

    #[test]
    fn oversized_body_is_refused_from_the_header_alone() {
        let mut out = Vec::new();
        write_response::<()>(&mut out, 7, Status::Ok, Encoding::Bincode, |o| {
            o.extend_from_slice(&[0; 100]);
            Ok(())
        })
        .expect("write");
        let err = header_of(&out, 50).expect_err("too large");
        assert_eq!(
            err,
            HeaderError::TooLarge {
                kind: FrameKind::Response,
                id: 7,
                body_len: 102,
                limit: 50
            }
        );
    }

    #[test]
    fn malformed_headers_and_bodies_are_typed_errors() {
        let mut h = [0u8; HEADER_LEN];
        assert_eq!(parse_header(&h, 10), Err(HeaderError::TooShort(0)));
        h[3] = 9;
        h[4] = 99;
        assert_eq!(parse_header(&h, 10), Err(HeaderError::UnknownKind(99)));
        assert_eq!(parse_request(&[]), Err(RequestError::Truncated));
        assert_eq!(parse_request(&[3, 0]), Err(RequestError::Version(3)));
        assert_eq!(parse_request(&[0, 0]), Err(RequestError::Version(0)));
        assert_eq!(parse_request(&[1, 9]), Err(RequestError::Encoding(9)));
        assert_eq!(parse_request(&[1, 0, 0]), Err(RequestError::Truncated));
        let mut body = vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_request(&body), Err(RequestError::Name));
        body[10] = 5;
        body.extend_from_slice(b"ab");
        assert_eq!(parse_request(&body), Err(RequestError::Truncated));
        assert_eq!(parse_response(&[0]), Err(ResponseError::Truncated));
        assert_eq!(parse_response(&[77, 0]), Err(ResponseError::Status(77)));
    }

    #[test]
    fn zero_deadline_is_not_confused_with_none() {
        let head = RequestHead {
            encoding: Encoding::Bincode,
            deadline: Some(Duration::ZERO),
            service: "s",
            method: "m",
            trace_id: None,
        };
        let mut out = Vec::new();
        write_request::<()>(&mut out, 1, &head, |_| Ok(())).expect("write");
        let (parsed, _) = parse_request(&out[HEADER_LEN..]).expect("parse");
        assert_eq!(parsed.deadline, Some(Duration::from_micros(1)));
    }

    #[test]
    fn the_example_in_protocol_md_is_exact() {
        let head = RequestHead {
            encoding: Encoding::Json,
            deadline: Some(Duration::from_millis(1500)),
            service: "echo",
            method: "say",
            trace_id: None,
        };
        let mut out = Vec::new();
        write_request::<()>(&mut out, 7, &head, |o| {
            o.extend_from_slice(br#""hi""#);
            Ok(())
        })
        .expect("write");
        let expected: &[u8] = &[
            0, 0, 0, 0x20, 1, 0, 0, 0, 0, 0, 0, 0, 7, 1, 1, 0, 0, 0, 0, 0, 0x16, 0xe3, 0x60, 4,
            b'e', b'c', b'h', b'o', 3, b's', b'a', b'y', b'"', b'h', b'i', b'"',
        ];
        assert_eq!(out, expected);
        let mut out = Vec::new();
        write_response::<()>(&mut out, 7, Status::Ok, Encoding::Json, |o| {
            o.extend_from_slice(br#"{"text":"hi"}"#);
            Ok(())
        })
        .expect("write");
        assert_eq!(
            &out[..15],
            &[0, 0, 0, 0x18, 2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 1]
        );
    }

    #[test]
    fn trace_ids_ride_in_version_2_heads() {
        let trace = TraceId::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let head = RequestHead {
            encoding: Encoding::Json,
            deadline: Some(Duration::from_millis(1500)),
            service: "echo",
            method: "say",
            trace_id: Some(trace),
        };
        let mut out = Vec::new();
        let body_len = write_request::<()>(&mut out, 7, &head, |o| {
            o.extend_from_slice(br#""hi""#);
            Ok(())
        })
        .expect("write");
        // The example of docs/protocol.md: version 1's, plus the version, flags and trace id.
        let expected: &[u8] = &[
            0, 0, 0, 0x31, 1, 0, 0, 0, 0, 0, 0, 0, 7, 2, 1, 0, 0, 0, 0, 0, 0x16, 0xe3, 0x60, 1,
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55,
            0x66, 0x77, 4, b'e', b'c', b'h', b'o', 3, b's', b'a', b'y', b'"', b'h', b'i', b'"',
        ];
        assert_eq!(out, expected);
        assert_eq!(body_len, out.len() - HEADER_LEN);
        let (parsed, payload) = parse_request(&out[HEADER_LEN..]).expect("parse");
        assert_eq!(parsed, head);
        assert_eq!(payload, br#""hi""#);

        // Version 2 with no flag set carries no trace id.
        let mut body = vec![2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, b's', 1, b'm'];
        let (parsed, payload) = parse_request(&body).expect("parse");
        assert_eq!(
            (parsed.trace_id, parsed.service, parsed.method),
            (None, "s", "m")
        );
        assert!(payload.is_empty());
        body[10] = 0x02;
        assert_eq!(parse_request(&body), Err(RequestError::Flags(0x02)));
        body[10] = 0x01;
        assert_eq!(parse_request(&body), Err(RequestError::Truncated));
        assert_eq!(
            parse_request(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(RequestError::Truncated)
        );
    }

    #[test]
    fn heads_without_a_trace_id_stay_version_1() {
        let head = RequestHead {
            encoding: Encoding::Bincode,
            deadline: None,
            service: "s",
            method: "m",
            trace_id: None,
        };
        let mut out = Vec::new();
        write_request::<()>(&mut out, 1, &head, |_| Ok(())).expect("write");
        assert_eq!(out[HEADER_LEN], 1);
        assert_eq!(parse_request(&out[HEADER_LEN..]).expect("parse").0, head);
    }

    #[test]
    fn cancel_frame_is_header_only() {
        let mut out = Vec::new();
        write_cancel(&mut out, 9);
        assert_eq!(out.len(), HEADER_LEN);
        let header = header_of(&out, 0).expect("header");
        assert_eq!(
            (header.kind, header.id, header.body_len),
            (FrameKind::Cancel, 9, 0)
        );
    }
}
