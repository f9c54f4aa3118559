# Drives fdserver servers from Ruby with the MessageChannel in message_channel.rb, as a
# Passenger-era program would: `examples/hello --serve-fd 3`, and the typed servers of
# `fdserver-tests/src/bin/ruby-peer.rs`. Run by
# `runtime_interop::ruby_message_channel_drives_hello_and_typed_servers`.
#
# usage: ruby drive.rb HELLO_BIN RUBY_PEER_BIN [json]
#   json: the peer was built with the `serde` feature (its `echo_doc` takes a Json<T>).
# Prints one line per check and "ALL OK" at the end; exits 1 if any check failed.
require_relative 'message_channel'
require 'json'
require 'tempfile'
require 'timeout'

$fails = 0
$servers = []

def check(label, got, want)
  ok = want.is_a?(Proc) ? want.call(got) : got == want
  puts "#{ok ? 'ok  ' : 'FAIL'} #{label}: #{got.inspect[0, 200]}"
  $fails += 1 unless ok
end

# Reads one reply, unwrapping the large-reply form ["ok_scalar"] + a scalar holding the body.
def read_reply(ch)
  r = ch.read
  if r == ['ok_scalar']
    r = ch.read_scalar.split("\0", -1)[0...-1].map { |e| e.force_encoding('UTF-8') }
  end
  r
end

# A list (Vec<T>) travels as a scalar: each item followed by NUL.
def list(items)
  items.map { |i| "#{i}\0" }.join
end

def start(*argv)
  pid, ch = spawn_server(*argv)
  $servers << pid
  [pid, ch]
end

# The server's exit status (it must exit within 10 s).
def exit_status(pid)
  Timeout.timeout(10) { Process.wait(pid) }
  $servers.delete(pid)
  $?
end

hello, peer, json = ARGV
begin
  # --- examples/hello --serve-fd 3: Passenger's own exchange
  pid, ch = start(hello, '--serve-fd', '3')
  ch.write('hello', 'Joe', 'Dalton')
  check('hello', ch.read, ['ok', 'Hello Joe Dalton, how are you?', '1234'])
  ch.write('hello', 'Jöe', '')
  check('hello: UTF-8 and an empty element', ch.read, ['ok', 'Hello Jöe , how are you?', '1234'])
  ch.write('nope')
  check('unknown message', ch.read, ->(r) { r[0] == 'error' && r[1] == 'unknown_message' })
  ch.write('hello', 'Joe')
  check('wrong argument count', ch.read, ->(r) { r[0] == 'error' && r[1] == 'bad_arguments' })
  ch.write('hello', 'A', 'B')
  check('still serving', ch.read, ->(r) { r[0] == 'ok' })
  ch.close
  check('hello exits 0 at end of stream', exit_status(pid).exitstatus, 0)

  # --- the typed server
  pid, ch = start(peer, '--serve-fd', '3')
  ch.write('hello', 'Joe', 'Dalton')
  check('typed hello (borrowed &str)', read_reply(ch), ['ok', 'Hello Joe Dalton, how are you?', '1234'])
  ch.write('blob'); ch.write_scalar('x' * 100_000)
  check('scalar argument (&[u8])', read_reply(ch), ['ok', '100000'])
  ch.write('bytes', (1 << 20).to_s)
  r = ch.read
  s = r == ['ok'] ? ch.read_scalar : nil
  check('Vec<u8> result: ["ok"] then a 1 MiB scalar', [r, s && s.bytesize], [['ok'], 1 << 20])
  ch.write('big', '10')
  check('small String result stays inline', ch.read, ['ok', 'x' * 10])
  ch.write('big', (1 << 20).to_s)
  r = ch.read
  check('1 MiB String result is announced as ok_scalar', r, ['ok_scalar'])
  body = ch.read_scalar
  check('ok_scalar: the scalar is the reply body', body && [body.bytesize, body[0, 4], body[-1]], [3 + (1 << 20) + 1, "ok\0x", "\0"])
  ch.write('sum'); ch.write_scalar(list([1, 2, 3]))
  check('Vec<u32> argument as a list scalar', read_reply(ch), ['ok', '6'])
  ch.write('words', '7'); ch.write_scalar(list(['a', '', 'c']))
  check('Vec<String> and Option arguments', read_reply(ch), ['ok', '3', '7'])
  ch.write('words', ''); ch.write_scalar(list([]))
  check('an empty list and None', read_reply(ch), ['ok', '0', ''])
  ch.write('bigvec', '3')
  r = ch.read
  s = r == ['ok'] ? ch.read_scalar : nil
  check('Vec<String> result: ["ok"] then a list scalar', [r, s && s.split("\0", -1)[0...-1]], [['ok'], %w[item0 item1 item2]])
  ch.write('blen', 'os'); ch.write_scalar("a\0b")
  check('&[u8] with a NUL, and &OsStr', read_reply(ch), ['ok', '3', '2'])

  # Descriptors both ways (send_io / recv_io).
  tf = Tempfile.new('fdserver-ruby'); tf.write('12345'); tf.flush
  ch.write('fdlen'); File.open(tf.path) { |f| ch.send_io(f) }
  check('descriptor argument (File)', read_reply(ch), ['ok', '5'])
  ch.write('open', tf.path)
  check('descriptor result: ["ok"]', ch.read, ['ok'])
  io = ch.recv_io(File)
  check('descriptor result: the file', io.read, '12345')
  io.close
  ch.write('big_and_file', (100_000).to_s, tf.path)
  r = read_reply(ch)
  check('(String, File) result: ok_scalar, the body', r && [r[0], r[1].bytesize], ['ok', 100_000])
  io = ch.recv_io(File)
  check('(String, File) result: then the descriptor', io.read, '12345')
  io.close

  # Errors.
  ch.write('open', '/nonexistent')
  check('io error: kind and errno after the text', read_reply(ch), ['error', 'io', 'No such file or directory (os error 2)', 'not_found', '2'])
  ch.write('io_kind', 'custom_denied')
  check('io error without an errno', read_reply(ch), ['error', 'io', 'custom nope', 'permission_denied', ''])
  ch.write('strerr')
  check('String error', read_reply(ch), ['error', 'failed', 'plain string error'])
  ch.write('sum'); ch.write_scalar("1\0x\0")
  check('a bad list item: bad_arguments', read_reply(ch), ->(x) { x[0] == 'error' && x[1] == 'bad_arguments' })
  if json == 'json'
    doc = { 'name' => 'd', 'tags' => ['x'], 'shapes' => [{ 'Circle' => { 'r' => 1.5 } }, { 'Rect' => [2, 3] }, 'Empty'], 'meta' => { 'k' => -5, 'n' => nil }, 'nested' => nil }
    ch.write('echo_doc'); ch.write_scalar(JSON.generate(doc))
    r = ch.read
    check('Json<T> argument and result: JSON scalars', r == ['ok'] ? JSON.parse(ch.read_scalar) : r, doc)
    ch.write('echo_doc'); ch.write_scalar('{"name": 3}')
    check('bad JSON: bad_arguments', read_reply(ch), ->(x) { x[0] == 'error' && x[1] == 'bad_arguments' })
  else
    puts 'skip Json<T> checks: the peer was built without the serde feature'
  end
  ch.write('hello', 'a', 'b')
  check('still serving after the errors', read_reply(ch), ['ok', 'Hello a b, how are you?', '1234'])

  # Data where a descriptor is due: the stream cannot be trusted any more.
  ch.write('fdlen'); ch.io.write("\0")
  r = ch.read
  check('data instead of a descriptor: a protocol error', r, ->(x) { x && x[0] == 'error' && x[1] == 'protocol' })
  check('then end of stream', ch.read, nil)
  check('and exit status 1', exit_status(pid).exitstatus, 1)

  # A scalar over the server's limit.
  pid, ch = start(peer, '--serve-fd', '3', '--max-scalar', '1000')
  ch.write('blob'); ch.write_scalar('y' * 2000)
  check('scalar over the limit: a protocol error', ch.read, ->(x) { x && x[0] == 'error' && x[1] == 'protocol' && x[2].include?('limit of 1000') })
  check('then end of stream', ch.read, nil)
  check('and exit status 1', exit_status(pid).exitstatus, 1)

  # SIGTERM while the server's reply is blocked on a peer that does not read: it exits at once.
  pid, ch = start(peer, '--serve-fd', '3')
  ch.write('bytes', (8 << 20).to_s)
  check('the reply has started', ch.readable?(MessageChannel::READ_TIMEOUT), true)
  Process.kill('TERM', pid)
  check('SIGTERM with a blocked reply: exit status 0', exit_status(pid).exitstatus, 0)
  ch.close

  # A #[derive(WireError)] enum.
  pid, ch = start(peer, '--serve-fd', '3', 'bank')
  ch.write('withdraw', 'joe', '500')
  check('WireError struct variant', read_reply(ch), ['error', 'insufficient_funds', 'only 100 available', '100'])
  ch.write('withdraw', 'bob', '1')
  check('WireError tuple variant', read_reply(ch), ['error', 'no_such_account', 'no account "bob"', 'bob'])
  ch.write('withdraw', 'frozen', '1')
  check('WireError unit variant', read_reply(ch), ['error', 'frozen', 'account frozen'])
  ch.write('withdraw', 'joe', '30')
  check('and a success', read_reply(ch), ['ok', '70'])
  ch.close
  check('bank exits 0 at end of stream', exit_status(pid).exitstatus, 0)
ensure
  # Whatever failed: no server is left behind.
  $servers.each do |p|
    begin
      Process.kill('KILL', p)
      Process.wait(p)
    rescue Errno::ESRCH, Errno::ECHILD
    end
  end
end

puts($fails == 0 ? 'ALL OK' : "#{$fails} FAILED")
exit($fails == 0 ? 0 : 1)
