//! A raw MQTT client: packets written byte by byte on a TCP socket, so that tests can send what a
//! client library refuses to (shared filters with no PUBACK ever, thousands of filters, topics a
//! library would check), and read the broker's answers as bytes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound for answers that should come at once.
pub const WAIT: Duration = Duration::from_secs(10);

/// MQTT's variable-length remaining length, then the body.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        v.push(b);
        if len == 0 {
            break;
        }
    }
    v.extend_from_slice(body);
    v
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A received packet: first byte and body.
#[derive(Debug)]
pub struct Received {
    /// Type and flags.
    pub first: u8,
    /// Everything after the remaining length.
    pub body: Vec<u8>,
}

/// One raw connection.
pub struct Raw {
    /// The socket.
    pub s: TcpStream,
    /// 5.0 (properties in every packet that has them) or 3.1.1.
    pub v5: bool,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects and sends CONNECT (`clean` session flag, keep-alive 60 s); returns the CONNACK
    /// return/reason code (`None` if the broker closed without one).
    pub async fn connect(
        addr: SocketAddr,
        id: &str,
        secret: &str,
        v5: bool,
        clean: bool,
    ) -> (Raw, Option<u8>) {
        Self::connect_with_will(addr, id, secret, v5, clean, None).await
    }

    /// [`Raw::connect`] with a retained QoS 0 will (`topic`, `payload`).
    pub async fn connect_with_will(
        addr: SocketAddr,
        id: &str,
        secret: &str,
        v5: bool,
        clean: bool,
        will: Option<(&str, &[u8])>,
    ) -> (Raw, Option<u8>) {
        let s = TcpStream::connect(addr).await.unwrap();
        let mut raw = Raw {
            s,
            v5,
            buf: Vec::new(),
        };
        let mut body = Vec::new();
        string(&mut body, b"MQTT");
        body.push(if v5 { 5 } else { 4 });
        let will_flags = if will.is_some() { 0b0010_0100 } else { 0 };
        body.push(0b1100_0000 | will_flags | if clean { 0b10 } else { 0 });
        body.extend_from_slice(&60u16.to_be_bytes());
        if v5 {
            body.push(0);
        }
        string(&mut body, id.as_bytes());
        if let Some((topic, payload)) = will {
            if v5 {
                body.push(0);
            }
            string(&mut body, topic.as_bytes());
            string(&mut body, payload);
        }
        for f in [id, secret] {
            string(&mut body, f.as_bytes());
        }
        raw.send(&frame(0x10, &body)).await;
        let code = match raw.next().await {
            Some(p) if p.first == 0x20 => p.body.get(1).copied(),
            _ => None,
        };
        (raw, code)
    }

    /// Writes bytes (errors ignored: the broker may have closed).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes).await;
    }

    /// SUBSCRIBE bytes with `filters` at QoS `qos`.
    pub fn subscribe_bytes(&self, pkid: u16, filters: &[String], qos: u8) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        if self.v5 {
            body.push(0);
        }
        for f in filters {
            string(&mut body, f.as_bytes());
            body.push(qos);
        }
        frame(0x82, &body)
    }

    /// PUBLISH bytes (QoS 0 or 1).
    pub fn publish_bytes(
        &self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
        pkid: u16,
    ) -> Vec<u8> {
        let mut body = Vec::new();
        string(&mut body, topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        if self.v5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        frame(0x30 | (qos << 1) | u8::from(retain), &body)
    }

    /// Subscribes and returns the SUBACK's codes.
    pub async fn subscribe(&mut self, pkid: u16, filters: &[&str], qos: u8) -> Vec<u8> {
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let bytes = self.subscribe_bytes(pkid, &filters, qos);
        self.send(&bytes).await;
        let ack = self.next_of(0x90).await.expect("no SUBACK");
        // Packet id, then (5.0) the properties length (0 here), then the codes.
        ack.body[if self.v5 { 3 } else { 2 }..].to_vec()
    }

    /// Publishes at QoS 0.
    pub async fn publish(&mut self, topic: &str, payload: &[u8]) {
        let bytes = self.publish_bytes(topic, payload, 0, false, 0);
        self.send(&bytes).await;
    }

    /// PINGREQ, then waits for PINGRESP.
    pub async fn ping(&mut self) {
        self.send(&[0xC0, 0]).await;
        self.next_of(0xD0).await.expect("no PINGRESP");
    }

    /// The next packet whose first byte's type is `first`'s (others skipped); `None` on close.
    pub async fn next_of(&mut self, first: u8) -> Option<Received> {
        loop {
            let p = self.next().await?;
            if p.first & 0xF0 == first & 0xF0 {
                return Some(p);
            }
        }
    }

    /// The next packet, `None` when the broker closed the connection (bounded by [`WAIT`]).
    pub async fn next(&mut self) -> Option<Received> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) = self.parse() {
                    return Some(p);
                }
                let mut chunk = [0u8; 8192];
                match self.s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("the broker neither answered nor closed")
    }

    fn parse(&mut self) -> Option<Received> {
        let first = *self.buf.first()?;
        let (mut len, mut i) = (0usize, 1);
        loop {
            let b = *self.buf.get(i)?;
            len |= usize::from(b & 0x7f) << (7 * (i - 1));
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if self.buf.len() < i + len {
            return None;
        }
        let body = self.buf[i..i + len].to_vec();
        self.buf.drain(..i + len);
        Some(Received { first, body })
    }

    /// Waits until the broker closes the connection; returns the packets it sent until then.
    pub async fn closed(&mut self) -> Vec<Received> {
        let mut seen = Vec::new();
        while let Some(p) = self.next().await {
            seen.push(p);
        }
        seen
    }
}
