//! Framing over rumqttd's protocol codec: which MQTT version a CONNECT speaks, which packet types a
//! client may send, and a guard so that no malformed frame can panic a connection task.
//!
//! rumqttd's `v4`/`v5` readers and writers are used as they are; mqgate only decides what reaches
//! them. They assume a well-behaved peer in a few places (`unreachable!` on packet types a server
//! never receives, on CONNACK codes the other version has, on properties in a 3.1.1 packet), so
//! frames are screened by type first, 3.1.1 packets lose their (5.0-only) properties before they
//! are written, and both directions run under `catch_unwind` as a last fence.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{self, Packet, Protocol};

/// The MQTT version a connection speaks (fixed by its CONNECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Larger than the configured maximum packet size.
    #[error("packet larger than {0} bytes")]
    TooLarge(usize),
    /// A packet type a client may not send here (or not at this point).
    #[error("unexpected packet type {0}")]
    UnexpectedType(u8),
    /// The CONNECT names a protocol mqgate does not speak (level given).
    #[error("unsupported protocol level {0}")]
    UnsupportedLevel(u8),
    /// rumqttd's codec refused the bytes.
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// rumqttd's codec panicked on the bytes (caught here).
    #[error("codec fault")]
    CodecFault,
}

/// Client-to-server packet types after CONNECT: PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP,
/// SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT.
const CLIENT_TYPES: [u8; 9] = [3, 4, 5, 6, 7, 8, 10, 12, 14];
/// CONNECT.
const CONNECT: u8 = 1;

/// A connection's codec once its version is known.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    /// The version spoken.
    pub version: Version,
    max_packet: usize,
}

impl Codec {
    /// A codec for `version` refusing packets over `max_packet` bytes.
    pub fn new(version: Version, max_packet: usize) -> Self {
        Codec {
            version,
            max_packet,
        }
    }

    /// How many more bytes the frame that `buf` begins needs before it is complete, as its fixed
    /// header tells so far (rumqttd's own framing check; the fixed header is the same in 3.1.1
    /// and 5.0); 0 when the frame is complete, malformed or over the packet bound (the decoder
    /// refuses those).
    ///
    /// The reader reserves this much room at once: a large packet arriving in pieces would
    /// otherwise be copied into a larger buffer at every read (quadratic in its size).
    pub fn missing(&self, buf: &[u8]) -> usize {
        match protocol::v4::check(buf.iter(), self.max_packet) {
            Err(protocol::Error::InsufficientBytes(n)) => n,
            _ => 0,
        }
    }

    /// The next complete packet in `buf` after CONNECT, `None` when more bytes are needed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Packet>, FrameError> {
        self.decode_typed(buf, |t| CLIENT_TYPES.contains(&t))
    }

    /// The CONNECT in `buf`, `None` when more bytes are needed.
    pub fn decode_connect(&self, buf: &mut BytesMut) -> Result<Option<Packet>, FrameError> {
        self.decode_typed(buf, |t| t == CONNECT)
    }

    fn decode_typed(
        &self,
        buf: &mut BytesMut,
        allowed: impl Fn(u8) -> bool,
    ) -> Result<Option<Packet>, FrameError> {
        let Some(&byte1) = buf.first() else {
            return Ok(None);
        };
        if !allowed(byte1 >> 4) {
            return Err(FrameError::UnexpectedType(byte1 >> 4));
        }
        let max = self.max_packet;
        let read = catch_unwind(AssertUnwindSafe(|| match self.version {
            Version::V4 => V4.read_mut(buf, max),
            Version::V5 => V5.read_mut(buf, max),
        }));
        match read {
            Ok(Ok(packet)) => Ok(Some(packet)),
            Ok(Err(protocol::Error::InsufficientBytes(_))) => Ok(None),
            Ok(Err(protocol::Error::PayloadSizeLimitExceeded(_))) => Err(FrameError::TooLarge(max)),
            Ok(Err(e)) => Err(FrameError::Malformed(e.to_string())),
            Err(_) => Err(FrameError::CodecFault),
        }
    }

    /// Appends `packet` to `out` in this connection's version.
    pub fn encode(&self, packet: Packet, out: &mut BytesMut) -> Result<(), FrameError> {
        let mark = out.len();
        let written = catch_unwind(AssertUnwindSafe(|| match self.version {
            Version::V4 => V4.write(without_properties(packet), out),
            Version::V5 => V5.write(packet, out),
        }));
        match written {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                out.truncate(mark);
                Err(FrameError::Malformed(e.to_string()))
            }
            Err(_) => {
                out.truncate(mark);
                Err(FrameError::CodecFault)
            }
        }
    }
}

/// Reads the protocol level of the CONNECT at the start of `buf` without consuming it: `None`
/// until enough bytes are there. Refuses anything that is not a CONNECT, and frames over `max`.
pub fn sniff_version(buf: &[u8], max: usize) -> Result<Option<Version>, FrameError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    if byte1 >> 4 != CONNECT {
        return Err(FrameError::UnexpectedType(byte1 >> 4));
    }
    let Some((len, len_bytes)) = remaining_length(&buf[1..])? else {
        return Ok(None);
    };
    if len > max {
        return Err(FrameError::TooLarge(max));
    }
    // Variable header: protocol name (u16 length + bytes), then the level byte.
    let header = &buf[1 + len_bytes..];
    if header.len() < 2 {
        return Ok(None);
    }
    let name_len = usize::from(u16::from_be_bytes([header[0], header[1]]));
    let Some(&level) = header.get(2 + name_len) else {
        return Ok(None);
    };
    match (&header[2..2 + name_len], level) {
        (b"MQTT", 4) => Ok(Some(Version::V4)),
        (b"MQTT", 5) => Ok(Some(Version::V5)),
        (_, level) => Err(FrameError::UnsupportedLevel(level)),
    }
}

/// MQTT's variable-length "remaining length": value and the bytes it took, `None` if incomplete.
fn remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
    let mut value = 0usize;
    for (i, b) in bytes.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        return Err(FrameError::Malformed(
            "remaining length over 4 bytes".into(),
        ));
    }
    Ok(None)
}

/// The same packet without 5.0 properties (3.1.1 has none, and rumqttd's 3.1.1 writer refuses them).
fn without_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Connect(c, _, will, _, login) => Packet::Connect(c, None, will, None, login),
        Packet::ConnAck(a, _) => Packet::ConnAck(a, None),
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(a, _) => Packet::PubAck(a, None),
        Packet::Subscribe(s, _) => Packet::Subscribe(s, None),
        Packet::SubAck(a, _) => Packet::SubAck(a, None),
        Packet::PubRec(r, _) => Packet::PubRec(r, None),
        Packet::PubRel(r, _) => Packet::PubRel(r, None),
        Packet::PubComp(c, _) => Packet::PubComp(c, None),
        Packet::Unsubscribe(u, _) => Packet::Unsubscribe(u, None),
        Packet::UnsubAck(a, _) => Packet::UnsubAck(a, None),
        Packet::Disconnect(d, _) => Packet::Disconnect(d, None),
        p @ (Packet::PingReq(_) | Packet::PingResp(_)) => p,
    }
}

/// QoS (0–2) and packet id of a publish.
pub fn qos_and_pkid(publish: &protocol::Publish) -> (u8, u16) {
    (publish.qos() as u8, publish.pkid())
}

/// A publish at `qos` (0–2; anything else is 0) with packet id `pkid`.
pub fn publish_with_qos(
    topic: bytes::Bytes,
    payload: bytes::Bytes,
    retain: bool,
    qos: u8,
    pkid: u16,
) -> protocol::Publish {
    let qos = protocol::qos(qos).unwrap_or(protocol::QoS::AtMostOnce);
    protocol::Publish::with_qos(topic, payload, retain, qos, pkid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_and_pkid_read_without_copying() {
        let p = publish_with_qos("t/x".into(), "p".into(), false, 2, 42);
        assert_eq!(qos_and_pkid(&p), (2, 42));
        assert_eq!(
            qos_and_pkid(&protocol::Publish::new("t/x", "p", false)),
            (0, 0)
        );
        let odd = publish_with_qos("t/x".into(), "p".into(), false, 3, 1);
        assert_eq!(qos_and_pkid(&odd).0, 0, "no QoS 3");
    }

    #[test]
    fn missing_reads_the_announced_frame_length() {
        let c = Codec::new(Version::V4, 1 << 20);
        // An incomplete fixed header: what the header itself still lacks.
        assert_eq!(c.missing(&[]), 2);
        assert_eq!(c.missing(&[0x82]), 1, "no length yet");
        assert_eq!(c.missing(&[0x82, 0x80]), 1, "length continues");
        // 1 MiB - 10: 0xF6 0xFF 0x3F, three length bytes.
        let len = (1usize << 20) - 10;
        let head = [0x82, 0xF6, 0xFF, 0x3F, 0, 1];
        assert_eq!(c.missing(&head), 1 + 3 + len - head.len());
        assert_eq!(c.missing(&[0xC0, 0]), 0, "complete");
        assert_eq!(c.missing(&[0x30, 5, 1, 2]), 3);
        // Over the bound or a fifth length byte: nothing reserved (the decoder refuses it).
        assert_eq!(c.missing(&[0x82, 0xFF, 0xFF, 0xFF, 0x7F]), 0);
        assert_eq!(c.missing(&[0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), 0);
    }

    fn connect_bytes(name: &[u8], level: u8) -> Vec<u8> {
        let mut body = vec![0, name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, 0b10, 0, 60, 0, 1, b'x']);
        let mut v = vec![0x10, body.len() as u8];
        v.extend(body);
        v
    }

    #[test]
    fn the_connect_level_picks_the_version_and_others_are_refused() {
        let v4 = connect_bytes(b"MQTT", 4);
        assert_eq!(sniff_version(&v4, 1024).unwrap(), Some(Version::V4));
        assert_eq!(
            sniff_version(&connect_bytes(b"MQTT", 5), 1024).unwrap(),
            Some(Version::V5)
        );
        assert!(matches!(
            sniff_version(&connect_bytes(b"MQIsdp", 3), 1024),
            Err(FrameError::UnsupportedLevel(3))
        ));
        assert_eq!(sniff_version(&v4[..5], 1024).unwrap(), None);
        assert!(sniff_version(&[0x30, 0], 1024).is_err());
    }

    #[test]
    fn a_packet_type_no_client_sends_is_refused_before_the_codec_sees_it() {
        let codec = Codec::new(Version::V5, 1024);
        // CONNACK with a body: rumqttd's 5.0 reader has no arm for it.
        let mut buf = BytesMut::from(&[0x20u8, 2, 0, 0][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::UnexpectedType(2))
        ));
    }

    #[test]
    fn oversized_frames_are_refused_from_their_header() {
        let codec = Codec::new(Version::V4, 16);
        let mut buf = BytesMut::from(&[0x30u8, 0x80, 0x01][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge(16))
        ));
    }

    #[test]
    fn qos_and_packet_id_survive_the_portable_form() {
        let p = publish_with_qos("a/b".into(), "x".into(), true, 1, 7);
        assert_eq!(qos_and_pkid(&p), (1, 7));
        assert!(p.retain);
    }
}
