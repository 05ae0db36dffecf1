//! Gossip messages and their encoding.

use kv_core::NodeId;
use kv_core::codec::{DecodeError, Reader, put_varint};

use crate::error::Result;
use crate::member::{Meta, Status, Update};

const VERSION: u8 = 1;

/// What a message asks or answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// "Are you alive?" (a probe).
    Ping {
        /// Matches the ack to the probe.
        seq: u64,
    },
    /// "I am alive", answering a ping.
    Ack {
        /// The ping's sequence number.
        seq: u64,
    },
    /// "Please probe `target` for me and forward its ack" (indirect probe).
    PingReq {
        /// The requester's probe sequence number.
        seq: u64,
        /// Who to probe.
        target: NodeId,
        /// Where it is.
        target_addr: String,
    },
    /// "Here is what I know; tell me what you know": a new node asking a
    /// seed to admit it (its updates hold itself), or a periodic push-pull
    /// (its updates hold every member it knows).
    Join,
    /// The answer to a join: every member the sender knows, as updates.
    JoinReply,
    /// "My probes of `target` failed": sent by the suspecting member itself
    /// to the suspect (so it can refute at once) and to a few others, for
    /// whom it counts as an independent confirmation (Lifeguard).
    Suspect {
        /// The suspected member.
        target: NodeId,
        /// The incarnation suspected.
        incarnation: u64,
    },
}

/// One message between members, carrying piggybacked updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// Where the sender can be reached.
    pub from_addr: String,
    /// What it is.
    pub body: Body,
    /// News about members (infection-style dissemination).
    pub updates: Vec<Update>,
}

/// A message to send, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The destination address.
    pub to: String,
    /// The message.
    pub message: Message,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The largest incarnation a message may carry: a member raises its
/// incarnation once per refutation, so no honest member comes near it, and
/// a forged one near `u64::MAX` would leave the real member unable to
/// refute (its next incarnation would overflow).
pub const MAX_INCARNATION: u64 = 1 << 48;

fn read_incarnation(r: &mut Reader<'_>) -> std::result::Result<u64, DecodeError> {
    let at = r.position();
    let incarnation = r.varint("incarnation")?;
    if incarnation > MAX_INCARNATION {
        return Err(DecodeError::Invalid {
            offset: at,
            what: "incarnation (above 2^48)",
        });
    }
    Ok(incarnation)
}

fn read_str(r: &mut Reader<'_>, what: &'static str) -> std::result::Result<String, DecodeError> {
    let at = r.position();
    let len = r.count(what, 1)?;
    let bytes = r.bytes(len, what)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Invalid { offset: at, what })
}

impl Message {
    /// The compact binary form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 32 * self.updates.len());
        out.push(VERSION);
        let (kind, seq) = match &self.body {
            Body::Ping { seq } => (1, Some(*seq)),
            Body::Ack { seq } => (2, Some(*seq)),
            Body::PingReq { seq, .. } => (3, Some(*seq)),
            Body::Join => (4, None),
            Body::JoinReply => (5, None),
            Body::Suspect { .. } => (6, None),
        };
        out.push(kind);
        put_varint(&mut out, self.from.0);
        put_str(&mut out, &self.from_addr);
        if let Some(seq) = seq {
            put_varint(&mut out, seq);
        }
        if let Body::PingReq {
            target,
            target_addr,
            ..
        } = &self.body
        {
            put_varint(&mut out, target.0);
            put_str(&mut out, target_addr);
        }
        if let Body::Suspect {
            target,
            incarnation,
        } = &self.body
        {
            put_varint(&mut out, target.0);
            put_varint(&mut out, *incarnation);
        }
        put_varint(&mut out, self.updates.len() as u64);
        for u in &self.updates {
            put_varint(&mut out, u.id.0);
            put_str(&mut out, &u.addr);
            put_varint(&mut out, u.incarnation);
            out.push(u.status.code());
            match &u.meta.zone {
                Some(zone) => {
                    out.push(1);
                    put_str(&mut out, zone);
                }
                None => out.push(0),
            }
            put_varint(&mut out, u64::from(u.meta.weight));
            out.push(u8::from(u.meta.unhealthy));
        }
        out
    }

    /// Decodes a message; garbage gives an error, never a panic.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`](crate::Error::Decode) for bytes that are not a whole message.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        r.version(VERSION, "version")?;
        let kind_at = r.position();
        let kind = r.u8("kind")?;
        let from = NodeId(r.varint("sender")?);
        let from_addr = read_str(&mut r, "sender address")?;
        let body = match kind {
            1 => Body::Ping {
                seq: r.varint("seq")?,
            },
            2 => Body::Ack {
                seq: r.varint("seq")?,
            },
            3 => Body::PingReq {
                seq: r.varint("seq")?,
                target: NodeId(r.varint("target")?),
                target_addr: read_str(&mut r, "target address")?,
            },
            4 => Body::Join,
            5 => Body::JoinReply,
            6 => Body::Suspect {
                target: NodeId(r.varint("target")?),
                incarnation: read_incarnation(&mut r)?,
            },
            _ => {
                return Err(DecodeError::Invalid {
                    offset: kind_at,
                    what: "message kind",
                }
                .into());
            }
        };
        // An update takes at least six bytes.
        let count = r.count("update count", 6)?;
        let mut updates = Vec::with_capacity(count);
        for _ in 0..count {
            let id = NodeId(r.varint("member id")?);
            let addr = read_str(&mut r, "member address")?;
            let incarnation = read_incarnation(&mut r)?;
            let status_at = r.position();
            let status = Status::from_code(r.u8("status")?).ok_or(DecodeError::Invalid {
                offset: status_at,
                what: "status",
            })?;
            let zone_at = r.position();
            let zone = match r.u8("zone flag")? {
                0 => None,
                1 => Some(read_str(&mut r, "zone")?),
                _ => {
                    return Err(DecodeError::Invalid {
                        offset: zone_at,
                        what: "zone flag",
                    }
                    .into());
                }
            };
            let weight_at = r.position();
            let weight = u32::try_from(r.varint("weight")?).map_err(|_| DecodeError::Invalid {
                offset: weight_at,
                what: "weight",
            })?;
            let flag_at = r.position();
            let unhealthy = match r.u8("health flag")? {
                0 => false,
                1 => true,
                _ => {
                    return Err(DecodeError::Invalid {
                        offset: flag_at,
                        what: "health flag",
                    }
                    .into());
                }
            };
            updates.push(Update {
                id,
                addr,
                incarnation,
                status,
                meta: Meta {
                    zone,
                    weight,
                    unhealthy,
                },
            });
        }
        r.finish()?;
        Ok(Message {
            from,
            from_addr,
            body,
            updates,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_body_round_trips() {
        let bodies = [
            Body::Ping { seq: 1 },
            Body::Ack { seq: 2 },
            Body::PingReq {
                seq: 3,
                target: NodeId(4),
                target_addr: "t".into(),
            },
            Body::Join,
            Body::JoinReply,
            Body::Suspect {
                target: NodeId(0),
                incarnation: 11,
            },
        ];
        for body in bodies {
            let m = Message {
                from: NodeId(6321),
                from_addr: String::new(),
                body,
                updates: vec![],
            };
            let bytes = m.encode();
            assert_eq!(
                Message::decode(&bytes).map_err(|e| e.to_string()),
                Ok(m),
                "{bytes:02x?}"
            );
        }
    }
}
