//! The dispatch `#[fdserver]` generates allocates nothing per message beyond the argument values
//! themselves: a server runs in-process with `fdserver::serve` on a thread of its own, and a
//! counting allocator counts that thread's allocations between two messages far apart.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::thread;

use fdserver::{fdserver, Channel, MessageBuf};
use fdserver_tests::{serial, watchdog, SECS};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; the counter is a const-initialised thread-local Cell
// (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

const WARM: u32 = 10;
const LAST: u32 = 1010;

#[derive(Default)]
struct Meter {
    calls: u32,
    at_warm: u64,
    at_last: u64,
}

impl Meter {
    fn sample(&mut self) {
        self.calls += 1;
        if self.calls == WARM {
            self.at_warm = allocs();
        } else if self.calls == LAST {
            self.at_last = allocs();
        }
    }
}

#[fdserver]
impl Meter {
    fn add(&mut self, a: i32, b: i32) -> i32 {
        self.sample();
        a + b
    }

    fn mixed(&mut self, flag: bool, n: Option<u64>, x: f64) -> (bool, Option<u64>, f64, char) {
        self.sample();
        (!flag, n, x * 2.0, 'é')
    }

    fn echo(&mut self, s: String) -> String {
        self.sample();
        s
    }

    /// The seed's typed `hello`, with borrowed arguments: only its result allocates.
    fn hello(&mut self, first_name: &str, last_name: &str) -> (String, u32) {
        self.sample();
        (
            format!("Hello {first_name} {last_name}, how are you?"),
            1234,
        )
    }

    /// A borrowed scalar: received into a buffer kept from one message to the next.
    fn len(&mut self, data: &[u8], name: &str) -> (usize, usize) {
        self.sample();
        (data.len(), name.len())
    }
}

/// Serves `Meter` on a thread, sends `LAST` requests, returns the server's allocations per
/// message between the `WARM`th and the `LAST`th request.
fn per_message(request: &[&str]) -> f64 {
    per_message_with(request, None)
}

/// [`per_message`], each request followed by the scalar `scalar`.
fn per_message_with(request: &[&str], scalar: Option<&[u8]>) -> f64 {
    let (mut client, server_end) = Channel::pair().unwrap();
    let server = thread::spawn(move || {
        let mut meter = Meter::default();
        fdserver::serve(&mut meter, server_end).unwrap();
        meter
    });
    let mut buf = MessageBuf::new();
    for _ in 0..LAST {
        client.write_array(request).unwrap();
        if let Some(data) = scalar {
            client.write_scalar(data).unwrap();
        }
        client.read_reply(&mut buf).unwrap();
    }
    drop(client);
    let meter = server.join().unwrap();
    assert_eq!(meter.calls, LAST);
    (meter.at_last - meter.at_warm) as f64 / f64::from(LAST - WARM)
}

#[test]
fn dispatch_allocates_nothing_per_message() {
    // One `serve` loop per process at a time.
    let _serial = serial();
    let _wd = watchdog("dispatch_allocates_nothing_per_message", SECS(30));
    assert_eq!(per_message(&["add", "40", "2"]), 0.0);
    assert_eq!(per_message(&["mixed", "true", "7", "1.5"]), 0.0);
    // A `String` argument is one allocation: the argument value itself.
    assert_eq!(per_message(&["echo", "some text"]), 1.0);
}

#[test]
fn borrowed_arguments_allocate_nothing() {
    let _serial = serial();
    let _wd = watchdog("borrowed_arguments_allocate_nothing", SECS(30));
    // `hello(&str, &str)`: the greeting it returns is the only allocation (3 with `String`s).
    assert_eq!(per_message(&["hello", "Joe", "Dalton"]), 1.0);
    // A `&[u8]` of 32 KiB: read into a pooled buffer, nothing allocated once warm.
    assert_eq!(per_message_with(&["len", "n"], Some(&[7; 32 << 10])), 0.0);
}
