//! Phoenix frames (supabase-wire §5.2): the two JSON serializers and the
//! binary user-broadcast frames of vsn 2.0.0.

use serde::Serialize;
use serde_json::{Map, Value};

/// The serializer a socket speaks, chosen by its `vsn` URL parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vsn {
    /// `1.0.0`: JSON objects. Server frames carry no `join_ref`.
    V1,
    /// `2.0.0`: JSON arrays `[join_ref, ref, topic, event, payload]`.
    V2,
}

impl Vsn {
    /// Phoenix's own default when the parameter is absent is `1.0.0`.
    pub const DEFAULT: Vsn = Vsn::V1;

    pub fn parse(s: &str) -> Option<Vsn> {
        match s {
            "1.0.0" => Some(Vsn::V1),
            "2.0.0" => Some(Vsn::V2),
            _ => None,
        }
    }
}

/// One Phoenix message. Refs are kept as the JSON values the client sent
/// (normally strings, or null) so that they are echoed back unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub join_ref: Value,
    pub ref_: Value,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not valid JSON: {0}")]
    Json(String),
    #[error("frame is neither a 5-element array nor an object")]
    Shape,
    #[error("frame has no string {0}")]
    Missing(&'static str),
    #[error("frame's {0} is neither a string, a number nor null")]
    BadRef(&'static str),
}

#[derive(Serialize)]
struct V1Out<'a> {
    topic: &'a str,
    event: &'a str,
    payload: &'a Value,
    #[serde(rename = "ref")]
    ref_: &'a Value,
}

impl Frame {
    pub fn new(join_ref: Value, ref_: Value, topic: &str, event: &str, payload: Value) -> Frame {
        Frame {
            join_ref,
            ref_,
            topic: topic.to_string(),
            event: event.to_string(),
            payload,
        }
    }

    /// Encodes a server frame for the socket's serializer.
    pub fn encode(&self, vsn: Vsn) -> String {
        let out = match vsn {
            Vsn::V2 => serde_json::to_string(&(
                &self.join_ref,
                &self.ref_,
                &self.topic,
                &self.event,
                &self.payload,
            )),
            Vsn::V1 => serde_json::to_string(&V1Out {
                topic: &self.topic,
                event: &self.event,
                payload: &self.payload,
                ref_: &self.ref_,
            }),
        };
        // Serializing plain JSON values to a string cannot fail.
        out.unwrap_or_default()
    }

    /// Decodes a client text frame. Either shape is accepted whatever the
    /// socket's `vsn` (array → 2.0.0, object → 1.0.0); a missing payload is
    /// an empty object.
    pub fn decode(text: &str) -> Result<Frame, DecodeError> {
        let v: Value = serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
        let ref_of = |v: Option<&Value>, what| match v {
            None | Some(Value::Null) => Ok(Value::Null),
            Some(v @ (Value::String(_) | Value::Number(_))) => Ok(v.clone()),
            Some(_) => Err(DecodeError::BadRef(what)),
        };
        let str_of = |v: Option<&Value>, what| {
            v.and_then(Value::as_str)
                .map(str::to_string)
                .ok_or(DecodeError::Missing(what))
        };
        let payload_of = |v: Option<&Value>| match v {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v) => v.clone(),
        };
        match v {
            Value::Array(a) if a.len() == 5 => Ok(Frame {
                join_ref: ref_of(a.first(), "join_ref")?,
                ref_: ref_of(a.get(1), "ref")?,
                topic: str_of(a.get(2), "topic")?,
                event: str_of(a.get(3), "event")?,
                payload: payload_of(a.get(4)),
            }),
            Value::Object(m) => Ok(Frame {
                join_ref: ref_of(m.get("join_ref"), "join_ref")?,
                ref_: ref_of(m.get("ref"), "ref")?,
                topic: str_of(m.get("topic"), "topic")?,
                event: str_of(m.get("event"), "event")?,
                payload: payload_of(m.get("payload")),
            }),
            _ => Err(DecodeError::Shape),
        }
    }
}

/// A vsn 2.0.0 binary user broadcast from the client (kind 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryPush {
    pub join_ref: String,
    pub ref_: String,
    pub topic: String,
    pub event: String,
    pub metadata: Vec<u8>,
    /// 0 = binary payload, 1 = JSON payload.
    pub encoding: u8,
    pub payload: Vec<u8>,
}

pub const KIND_PUSH: u8 = 3;
pub const KIND_BROADCAST: u8 = 4;

impl BinaryPush {
    /// Layout: `kind=3`, five `u8` lengths (join_ref, ref, topic, event,
    /// metadata), `u8 encoding`, the five fields, then the payload.
    pub fn decode(bytes: &[u8]) -> Option<BinaryPush> {
        let (&kind, rest) = bytes.split_first()?;
        if kind != KIND_PUSH || rest.len() < 6 {
            return None;
        }
        let lens: Vec<usize> = rest[..5].iter().map(|&b| b as usize).collect();
        let encoding = rest[5];
        let mut body = &rest[6..];
        let mut take = |n: usize| -> Option<&[u8]> {
            if body.len() < n {
                return None;
            }
            let (head, tail) = body.split_at(n);
            body = tail;
            Some(head)
        };
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
        let join_ref = text(take(lens[0])?)?;
        let ref_ = text(take(lens[1])?)?;
        let topic = text(take(lens[2])?)?;
        let event = text(take(lens[3])?)?;
        let metadata = take(lens[4])?.to_vec();
        Some(BinaryPush {
            join_ref,
            ref_,
            topic,
            event,
            metadata,
            encoding,
            payload: body.to_vec(),
        })
    }

    /// The server → client broadcast (kind 4) that carries this push back
    /// (`broadcast.self`): `kind=4`, lengths of topic, event and metadata,
    /// `u8 encoding`, the three fields, then the payload. `None` when a
    /// field is longer than 255 bytes.
    pub fn to_broadcast(&self) -> Option<Vec<u8>> {
        let len = |b: &[u8]| u8::try_from(b.len()).ok();
        let mut out = Vec::with_capacity(
            5 + self.topic.len() + self.event.len() + self.metadata.len() + self.payload.len(),
        );
        out.push(KIND_BROADCAST);
        out.push(len(self.topic.as_bytes())?);
        out.push(len(self.event.as_bytes())?);
        out.push(len(&self.metadata)?);
        out.push(self.encoding);
        out.extend_from_slice(self.topic.as_bytes());
        out.extend_from_slice(self.event.as_bytes());
        out.extend_from_slice(&self.metadata);
        out.extend_from_slice(&self.payload);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reply() -> Frame {
        Frame::new(
            json!("6"),
            json!("6"),
            "realtime:room1",
            "phx_reply",
            json!({"status": "ok", "response": {}}),
        )
    }

    #[test]
    fn v2_encodes_arrays_in_wire_order() {
        assert_eq!(
            reply().encode(Vsn::V2),
            r#"["6","6","realtime:room1","phx_reply",{"status":"ok","response":{}}]"#
        );
        let push = Frame::new(
            Value::Null,
            Value::Null,
            "realtime:x",
            "postgres_changes",
            json!({"ids": [1]}),
        );
        assert_eq!(
            push.encode(Vsn::V2),
            r#"[null,null,"realtime:x","postgres_changes",{"ids":[1]}]"#
        );
    }

    #[test]
    fn v1_encodes_objects_without_join_ref() {
        assert_eq!(
            reply().encode(Vsn::V1),
            r#"{"topic":"realtime:room1","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"6"}"#
        );
    }

    #[test]
    fn decodes_both_serializers() {
        let v2 = Frame::decode(r#"["6","6","realtime:room1","phx_join",{"config":{}}]"#).unwrap();
        assert_eq!(v2.join_ref, json!("6"));
        assert_eq!(v2.ref_, json!("6"));
        assert_eq!(v2.topic, "realtime:room1");
        assert_eq!(v2.event, "phx_join");
        assert_eq!(v2.payload, json!({"config": {}}));

        let hb = Frame::decode(r#"[null,"7","phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!((hb.join_ref, hb.ref_), (Value::Null, json!("7")));

        let v1 = Frame::decode(
            r#"{"topic":"realtime:room1","event":"phx_join","payload":{"config":{}},"ref":"6","join_ref":"6"}"#,
        )
        .unwrap();
        assert_eq!(v1, v2);
        let v1hb =
            Frame::decode(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}"#)
                .unwrap();
        assert_eq!(v1hb.join_ref, Value::Null);
        // Numeric refs are kept as numbers so they echo back identically.
        let num = Frame::decode(r#"[null,7,"phoenix","heartbeat",null]"#).unwrap();
        assert_eq!(num.ref_, json!(7));
        assert_eq!(num.payload, json!({}));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for bad in [
            "",
            "not json",
            "[]",
            "[1,2,3,4]",
            "42",
            r#"[null,"1",5,"heartbeat",{}]"#,
            r#"[null,{},"phoenix","heartbeat",{}]"#,
            r#"{"topic":"phoenix"}"#,
            r#"{"event":"heartbeat"}"#,
        ] {
            assert!(Frame::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn round_trip_through_both_serializers() {
        let f = Frame::new(
            json!("3"),
            json!("4"),
            "realtime:a",
            "broadcast",
            json!({"k": [1, "x"]}),
        );
        assert_eq!(Frame::decode(&f.encode(Vsn::V2)).unwrap(), f);
        let back = Frame::decode(&f.encode(Vsn::V1)).unwrap();
        assert_eq!(back.join_ref, Value::Null);
        assert_eq!(
            (back.ref_, back.topic, back.event, back.payload),
            (f.ref_, f.topic, f.event, f.payload)
        );
    }

    #[test]
    fn binary_push_decodes_and_reflects_as_broadcast() {
        let mut b = vec![KIND_PUSH, 1, 1, 5, 2, 2, 1];
        b.extend_from_slice(b"3");
        b.extend_from_slice(b"9");
        b.extend_from_slice(b"rt:ab");
        b.extend_from_slice(b"ev");
        b.extend_from_slice(b"{}");
        b.extend_from_slice(br#"{"a":1}"#);
        let p = BinaryPush::decode(&b).unwrap();
        assert_eq!(
            (
                p.join_ref.as_str(),
                p.ref_.as_str(),
                p.topic.as_str(),
                p.event.as_str()
            ),
            ("3", "9", "rt:ab", "ev")
        );
        assert_eq!((p.metadata.as_slice(), p.encoding), (&b"{}"[..], 1));
        assert_eq!(p.payload, br#"{"a":1}"#);
        let out = p.to_broadcast().unwrap();
        let mut want = vec![KIND_BROADCAST, 5, 2, 2, 1];
        want.extend_from_slice(b"rt:ab");
        want.extend_from_slice(b"ev");
        want.extend_from_slice(b"{}");
        want.extend_from_slice(br#"{"a":1}"#);
        assert_eq!(out, want);
        // Truncated or foreign frames are refused.
        assert!(BinaryPush::decode(&b[..9]).is_none());
        assert!(BinaryPush::decode(&[4, 0, 0, 0, 0, 0]).is_none());
        assert!(BinaryPush::decode(&[]).is_none());
    }

    /// Regression (prop_parsers): without serde_json's `float_roundtrip`
    /// some floats decoded one ULP off, so an echoed payload changed.
    #[test]
    fn floats_survive_decode_and_encode_exactly() {
        let x = 1.944_454_041_241_531_8e-73_f64;
        let text = format!("[null,null,\"t\",\"e\",[{x:e}]]");
        let f = Frame::decode(&text).unwrap();
        assert_eq!(f.payload[0].as_f64(), Some(x));
        assert_eq!(
            Frame::decode(&f.encode(Vsn::V1)).unwrap().payload,
            f.payload
        );
    }
}
