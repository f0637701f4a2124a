//! Replays `tests/vectors/foolscap_messages.json` (stock foolscap's bytes; see
//! `tests/vectors/README.md`) through the pure-Rust framer and message reader: every captured
//! stream, whole and a byte at a time, and every generated message must give the listed
//! messages (kind, request ID, clid, method; the values themselves are checked from Python).

use _core::banana::{BananaError, Integer};
use _core::foolscap::decode::{read_message, Build, Built, Fault, Message};
use _core::foolscap::{Frame, Limits, MessageFramer};
use serde_json::Value as Json;

fn load() -> Json {
    let path = format!("{}/tests/vectors/foolscap_messages.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_json::from_str(&text).expect("valid JSON")
}

/// Builds nothing but counts: enough to check the message envelopes.
struct Count;

impl Build for Count {
    type Value = ();
    type Name = String;
    type Error = String;

    fn name(&mut self, raw: &[u8]) -> Built<String, String> {
        String::from_utf8(raw.to_vec()).map_err(|_| Fault::Violation("not UTF-8".into()))
    }
    fn int(&mut self, _: Integer) -> Built<(), String> {
        Ok(())
    }
    fn float(&mut self, _: f64) -> Built<(), String> {
        Ok(())
    }
    fn bytes(&mut self, _: &[u8]) -> Built<(), String> {
        Ok(())
    }
    fn text(&mut self, utf8: &[u8]) -> Built<(), String> {
        self.name(utf8).map(drop)
    }
    fn decimal(&mut self, _: &str) -> Built<(), String> {
        Ok(())
    }
    fn none(&mut self) -> Built<(), String> {
        Ok(())
    }
    fn boolean(&mut self, _: bool) -> Built<(), String> {
        Ok(())
    }
    fn new_list(&mut self) -> Built<(), String> {
        Ok(())
    }
    fn list_push(&mut self, _: &(), _: ()) -> Built<(), String> {
        Ok(())
    }
    fn tuple(&mut self, _: Vec<()>) -> Built<(), String> {
        Ok(())
    }
    fn new_set(&mut self) -> Built<(), String> {
        Ok(())
    }
    fn set_add(&mut self, _: &(), _: ()) -> Built<(), String> {
        Ok(())
    }
    fn frozenset(&mut self, _: Vec<()>) -> Built<(), String> {
        Ok(())
    }
    fn new_dict(&mut self) -> Built<(), String> {
        Ok(())
    }
    fn dict_insert(&mut self, _: &(), _: (), _: ()) -> Built<(), String> {
        Ok(())
    }
    fn copyable(&mut self, _: &str, _: Vec<(String, ())>) -> Built<(), String> {
        Ok(())
    }
    fn my_reference(&mut self, _: i64, _: Option<&str>, _: Option<&str>) -> Built<(), String> {
        Ok(())
    }
    fn your_reference(&mut self, _: i64) -> Built<(), String> {
        Ok(())
    }
    fn their_reference(&mut self, _: i64, _: &str) -> Built<(), String> {
        Ok(())
    }
}

/// Each event of `chunks` as the JSON's message (without values).
fn events(chunks: &[&[u8]], first_open_id: u64) -> Vec<Json> {
    let mut framer = MessageFramer::new(Limits::foolscap().banana);
    framer.set_objects(first_open_id).unwrap();
    let mut out = Vec::new();
    for chunk in chunks {
        framer
            .feed(chunk, |frame: Frame<'_>| -> Result<(), BananaError> {
                out.push(match frame {
                    Frame::Message { bytes, offset, first_object } => {
                        match read_message(bytes, offset, first_object, &Limits::foolscap(), &mut Count).unwrap() {
                            Message::Call { reqid, clid, method, .. } => {
                                serde_json::json!({"kind": "call", "reqid": reqid, "clid": clid, "method": method})
                            }
                            Message::Answer { reqid, .. } => serde_json::json!({"kind": "answer", "reqid": reqid}),
                            Message::Error { reqid, .. } => serde_json::json!({"kind": "error", "reqid": reqid}),
                            Message::CallAborted { reqid } => {
                                serde_json::json!({"kind": "call_aborted", "reqid": reqid})
                            }
                            Message::Violation { what, message, .. } => panic!("violation in {what}: {message}"),
                        }
                    }
                    Frame::Ping(n) => serde_json::json!({"kind": "ping", "n": n}),
                    Frame::Pong(n) => serde_json::json!({"kind": "pong", "n": n}),
                    Frame::PeerError(_) => panic!("no ERROR in the vectors"),
                    Frame::Refused { .. } => unreachable!("fed without call limits"),
                });
                Ok(())
            })
            .unwrap();
    }
    assert_eq!(framer.buffered(), 0);
    out
}

/// A message of the JSON without its values.
fn envelope(message: &Json) -> Json {
    let mut m = message.as_object().expect("a message is an object").clone();
    for key in ["args", "kwargs", "value", "failure"] {
        m.remove(key);
    }
    Json::Object(m)
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("hex")
}

#[test]
fn captured_streams() {
    let doc = load();
    let streams = doc["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 6);
    for stream in streams {
        let steps = stream["steps"].as_array().unwrap();
        let data: Vec<u8> = steps.iter().flat_map(|s| unhex(s["hex"].as_str().unwrap())).collect();
        let expect: Vec<Json> =
            steps.iter().flat_map(|s| s["messages"].as_array().unwrap().iter().map(envelope)).collect();
        assert_eq!(events(&[&data], 0), expect, "{}", stream["capture"]);
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(events(&bytes, 0), expect, "{} byte by byte", stream["capture"]);
        for step in steps {
            let first = step["first_open_id"].as_u64().unwrap();
            let got = events(&[&unhex(step["hex"].as_str().unwrap())], first);
            let want: Vec<Json> = step["messages"].as_array().unwrap().iter().map(envelope).collect();
            assert_eq!(got, want, "{}: {}", stream["capture"], step["step"]);
        }
    }
}

#[test]
fn generated_messages() {
    let doc = load();
    for case in doc["generated"].as_array().expect("generated") {
        let data = unhex(case["hex"].as_str().unwrap());
        let got = events(&[&data], case["first_open_id"].as_u64().unwrap());
        assert_eq!(got, [envelope(&case["message"])], "{}", case["name"]);
    }
}
