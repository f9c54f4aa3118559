use fdserver::{Context, Message, RemoteError, Server, ServerHandle};
use fdserver_tests::{watchdog, SECS};

struct Echo;
impl Server for Echo {
    type Client = ServerHandle;
    fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
        ctx.reply(msg.args())?;
        Ok(())
    }
}

#[test]
fn echo_round_trip() {
    let _wd = watchdog("echo_round_trip", SECS(20));
    let mut s = Echo.start().unwrap();
    assert_eq!(s.call(["x", "a", "b"]).unwrap(), ["a", "b"]);
    let st = s.stop().unwrap();
    assert!(st.status.success());
}
