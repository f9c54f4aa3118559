# A minimal Ruby MessageChannel, written from Phusion Passenger's wire format (see the README's
# "The wire format"): an array message is a u16 big-endian body length, then each element
# followed by NUL; a scalar message is a u32 big-endian length, then the bytes; a descriptor
# travels with UNIXSocket#send_io / #recv_io (one data byte carrying SCM_RIGHTS).
#
# Every read waits at most READ_TIMEOUT seconds, so a server that never answers fails the run
# instead of hanging it.
require 'socket'

class MessageChannel
  READ_TIMEOUT = 20

  attr_reader :io

  def initialize(io)
    @io = io
  end

  def write(*args)
    body = args.map { |a| a.to_s.b + "\0" }.join.b
    raise ArgumentError, "body too large (#{body.bytesize})" if body.bytesize > 0xFFFF
    write_all([body.bytesize].pack('n') + body)
  end

  # An array message, or nil at end of stream (Passenger's behaviour).
  def read
    header = read_exact(2) or return nil
    size = header.unpack1('n')
    return [] if size == 0
    body = read_exact(size) or return nil
    raise "array message without its final NUL: #{body.inspect}" unless body.end_with?("\0")
    body.split("\0", -1)[0...-1].map { |e| e.force_encoding('UTF-8') }
  end

  def write_scalar(data)
    write_all([data.bytesize].pack('N') + data.b)
  end

  def read_scalar(max_size = nil)
    header = read_exact(4) or return nil
    size = header.unpack1('N')
    raise SecurityError, "scalar of #{size} bytes over #{max_size}" if max_size && size > max_size
    return ''.b if size == 0
    read_exact(size)
  end

  def send_io(io)
    @io.send_io(io)
  end

  def recv_io(klass = IO)
    wait_readable
    @io.recv_io(klass)
  end

  def close
    @io.close
  end

  # Whether a read would not block now (data, or end of stream).
  def readable?(timeout = 0)
    !IO.select([@io], nil, nil, timeout).nil?
  end

  private

  def wait_readable
    raise "no reply within #{READ_TIMEOUT} s" unless readable?(READ_TIMEOUT)
  end

  def write_all(data)
    @io.write(data)
  end

  # Exactly n bytes, never more (so descriptors between messages are not swallowed); nil at
  # end of stream.
  def read_exact(n)
    buf = ''.b
    while buf.bytesize < n
      wait_readable
      begin
        chunk = @io.sysread(n - buf.bytesize)
      rescue EOFError, Errno::ECONNRESET
        return nil
      end
      buf << chunk
    end
    buf
  end
end

# Spawns `argv` with one end of a socket pair as its descriptor 3; returns [pid, channel].
def spawn_server(*argv)
  parent, child = UNIXSocket.pair
  pid = Process.spawn(*argv, 3 => child, close_others: true)
  child.close
  [pid, MessageChannel.new(parent)]
end
