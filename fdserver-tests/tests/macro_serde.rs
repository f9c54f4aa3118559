//! serde values (issue 14, item 3), with the `serde` feature: any `Serialize + Deserialize`
//! type as a parameter or a result, as `fdserver::Json<T>`, carried as a JSON scalar message.
#![cfg(feature = "serde")]

use std::collections::{BTreeMap, HashMap, HashSet};

use fdserver::{Json, MessageBuf, RemoteErrorKind};
use fdserver_tests::{watchdog, SECS};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Shape {
    Circle { r: f64 },
    Square(f64),
    Empty,
    Group(Vec<Shape>),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Drawing {
    name: String,
    shapes: Vec<Shape>,
    tags: BTreeMap<String, Vec<u32>>,
    owner: Option<Owner>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Owner {
    id: u64,
    roles: HashSet<String>,
}

/// Borrows from the received scalar.
#[derive(Deserialize, Debug)]
struct Query<'a> {
    word: &'a str,
}

struct Store {
    drawings: HashMap<String, Drawing>,
}

#[fdserver::fdserver]
impl Store {
    fn put(&mut self, drawing: Json<Drawing>) -> usize {
        self.drawings.insert(drawing.name.clone(), drawing.0);
        self.drawings.len()
    }

    #[fdserver(name = "get")]
    fn name_of(&mut self, name: &str) -> Option<String> {
        self.drawings.get(name).map(|d| d.name.clone())
    }

    fn fetch(&mut self, name: &str) -> Json<Option<Drawing>> {
        Json(self.drawings.get(name).cloned())
    }

    fn all(&self) -> (usize, Json<BTreeMap<String, Drawing>>) {
        let all: BTreeMap<_, _> = self.drawings.clone().into_iter().collect();
        (all.len(), Json(all))
    }

    fn find(&mut self, query: Json<Query<'_>>, limit: u32) -> Json<Vec<(String, u32)>> {
        Json(
            self.drawings
                .keys()
                .filter(|k| k.contains(query.word))
                .take(limit as usize)
                .map(|k| (k.clone(), k.len() as u32))
                .collect(),
        )
    }

    fn tuple_keys(&mut self, n: u32) -> Json<HashMap<(u32, u32), u32>> {
        Json(HashMap::from([((n, n), n)]))
    }

    fn echo_map(&mut self, map: Json<HashMap<(u32, u32), u32>>) -> usize {
        map.len()
    }
}

fn drawing(name: &str, n: u32) -> Drawing {
    Drawing {
        name: name.into(),
        shapes: vec![
            Shape::Circle { r: 1.5 },
            Shape::Square(2.0),
            Shape::Empty,
            Shape::Group(vec![Shape::Square(0.5), Shape::Group(vec![])]),
        ],
        tags: BTreeMap::from([
            ("sizes".into(), (0..n).collect()),
            ("é\u{0}nul".into(), vec![]),
        ]),
        owner: Some(Owner {
            id: u64::MAX,
            roles: HashSet::from(["admin".into(), "".into()]),
        }),
    }
}

#[test]
fn nested_structs_enums_and_maps_round_trip() {
    let _wd = watchdog("nested_structs_enums_and_maps_round_trip", SECS(30));
    let mut store = Store {
        drawings: HashMap::new(),
    }
    .start()
    .unwrap();
    let a = drawing("alpha", 100);
    let b = Drawing {
        owner: None,
        ..drawing("beta", 200_000) // a JSON document well over 64 KiB, both ways
    };
    assert_eq!(store.put(&a).unwrap(), 1);
    assert_eq!(store.put(&b).unwrap(), 2);
    assert_eq!(store.name_of("alpha").unwrap().as_deref(), Some("alpha"));
    assert_eq!(store.fetch("alpha").unwrap().into_inner(), Some(a.clone()));
    assert_eq!(*store.fetch("none").unwrap(), None);
    let (n, all) = store.all().unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        all.0,
        BTreeMap::from([("alpha".into(), a), ("beta".into(), b)])
    );
    assert_eq!(
        store.find(&Query { word: "ph" }, 5).unwrap().0,
        [("alpha".to_string(), 5)]
    );
    store.stop().unwrap();
}

// `Query` is only deserialised by the server; the client sends it, so it must serialise too.
impl Serialize for Query<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Query", 1)?;
        st.serialize_field("word", self.word)?;
        st.end()
    }
}

#[test]
fn json_errors_are_clear() {
    let _wd = watchdog("json_errors_are_clear", SECS(30));
    let mut store = Store {
        drawings: HashMap::new(),
    }
    .start()
    .unwrap();
    // A value JSON cannot carry fails the call before anything is sent...
    let e = store.echo_map(&HashMap::from([((1, 2), 3)])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "call \"echo_map\": parameter `map` cannot be sent: JSON: key must be a string"
    );
    // ...and a result JSON cannot carry is an error reply after the handler ran, saying why.
    let e = store.tuple_keys(1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "server error: failed: tuple_keys: reply value 1 cannot be sent: JSON: key must be a string"
    );
    // Bad JSON from a raw peer: bad_arguments naming the parameter; the server keeps serving.
    let ch = store.channel();
    ch.write_array(["put"]).unwrap();
    ch.write_scalar(br#"{"name": 3}"#).unwrap();
    let e = ch.read_reply(&mut MessageBuf::new()).unwrap_err();
    let r = e.as_remote().unwrap();
    assert_eq!(r.kind(), &RemoteErrorKind::BadArguments);
    assert!(
        r.message().starts_with(
            "put: parameter `drawing`: JSON: invalid type: integer `3`, expected a string"
        ),
        "{}",
        r.message()
    );
    // The wire form a Ruby peer writes: the JSON text as a scalar after the array.
    ch.write_array(["put"]).unwrap();
    ch.write_scalar(
        br#"{"name":"raw","shapes":[{"Circle":{"r":1.0}},"Empty"],"tags":{},"owner":null}"#,
    )
    .unwrap();
    let mut buf = MessageBuf::new();
    assert_eq!(
        ch.read_reply(&mut buf).unwrap().to_strings().unwrap(),
        ["ok", "1"]
    );
    ch.write_array(["fetch", "raw"]).unwrap();
    ch.read_reply(&mut buf).unwrap();
    assert_eq!(
        ch.read_scalar().unwrap().unwrap(),
        br#"{"name":"raw","shapes":[{"Circle":{"r":1.0}},"Empty"],"tags":{},"owner":null}"#
    );
    store.stop().unwrap();
}
