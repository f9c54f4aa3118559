//! Row 7: serde values, JSON (`fdserver::Json<T>`, what fdserver ships) against a binary codec
//! (postcard, through a `Postcard<T>` wrapper written here the way a user would), on a realistic
//! value: a struct with a few fields and a 100-element vector. 7c times the codec alone (encode
//! and decode one value), 7 a typed call that sends the value and gets it back.

use std::borrow::Cow;

use fdserver::args::{ArgError, Encoded, Form, FromArg, Received, ToArg};
use fdserver::Json;
use serde::{Deserialize, Serialize};

/// The realistic value.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Report {
    pub name: String,
    pub id: u64,
    pub ratio: f64,
    pub done: bool,
    pub samples: Vec<u32>,
}

impl Report {
    pub fn sample() -> Report {
        Report {
            name: "wordindex nightly".into(),
            id: 9_007_199_254_740_993,
            ratio: 0.731,
            done: true,
            // Varied magnitudes, as real counts are.
            samples: (0..100u32)
                .map(|i| i.wrapping_mul(2_654_435_761) >> (i % 29))
                .collect(),
        }
    }
}

/// A value carried as postcard in a scalar (the comparison codec).
#[derive(Debug, Clone, PartialEq)]
pub struct Postcard<T>(pub T);

impl<'a, T: Deserialize<'a>> FromArg<'a> for Postcard<T> {
    const FORM: Form = Form::Scalar;
    fn from_arg(arg: Received<'a>) -> Result<Self, ArgError> {
        postcard::from_bytes(arg.scalar_bytes()?)
            .map(Postcard)
            .map_err(|e| ArgError::new(format_args!("postcard: {e}")))
    }
}

impl<T: Serialize> ToArg for Postcard<T> {
    const FORM: Form = Form::Scalar;
    fn to_arg(&self) -> Encoded<'_> {
        match postcard::to_allocvec(&self.0) {
            Ok(v) => Encoded::Scalar(Cow::Owned(v)),
            Err(e) => Encoded::Invalid(ArgError::new(format_args!("postcard: {e}"))),
        }
    }
}

/// The server: echoes the value in each encoding.
pub struct SerdeServer;

#[fdserver::fdserver]
impl SerdeServer {
    fn json(&mut self, report: Json<Report>) -> Json<Report> {
        report
    }

    fn binary(&mut self, report: Postcard<Report>) -> Postcard<Report> {
        report
    }

    fn allocs(&self) -> u64 {
        crate::count_alloc::allocs()
    }

    #[fdserver(initialize)]
    fn init(&mut self) -> std::io::Result<()> {
        crate::os::die_with_parent();
        Ok(())
    }
}

pub fn start() -> SerdeServerClient {
    SerdeServer.start().expect("start serde server")
}

/// The typed JSON call. The value is cloned first, as the postcard side must (its stub takes
/// `Postcard<Report>` by value), so that both sides do the same work besides the codec.
#[inline(never)]
pub fn json_call(c: &mut SerdeServerClient, r: &Report) -> Report {
    let r = r.clone();
    c.json(&r).expect("json call").0
}

#[inline(never)]
pub fn binary_call(c: &mut SerdeServerClient, r: &Report) -> Report {
    c.binary(Postcard(r.clone())).expect("binary call").0
}

#[inline(never)]
pub fn json_codec(r: &Report) -> Report {
    let bytes = serde_json::to_vec(r).expect("json encode");
    serde_json::from_slice(&bytes).expect("json decode")
}

#[inline(never)]
pub fn binary_codec(r: &Report) -> Report {
    let bytes = postcard::to_allocvec(r).expect("postcard encode");
    postcard::from_bytes(&bytes).expect("postcard decode")
}

/// Encoded sizes: (JSON, postcard).
pub fn sizes(r: &Report) -> (usize, usize) {
    (
        serde_json::to_vec(r).expect("json").len(),
        postcard::to_allocvec(r).expect("postcard").len(),
    )
}
